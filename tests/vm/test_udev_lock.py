"""The removal lock with a real remove event: systemd-udevd in the VM, the rule `yktool udev
install` wrote (into the guest's own /etc overlay), the emulated key unplugged (UHID_DESTROY).
logind has no seat here: a `loginctl` that records its call, bind-mounted over the guest's own,
is the one allowed stand-in."""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.fixtures.fido import SimKey
from tests.vm.conftest import Keys
from tests.vm.support import run


@pytest.fixture
def loginctl_calls(tmp_path: Path) -> Iterator[Path]:
    calls = tmp_path / "loginctl.calls"
    fake = tmp_path / "loginctl"
    fake.write_text(f'#!/bin/sh\necho "$*" >> {calls}\n')
    fake.chmod(0o755)
    real = shutil.which("loginctl") or "/usr/bin/loginctl"
    run(["mount", "--bind", fake, real], check=True)
    try:
        yield calls
    finally:
        run(["umount", real], check=True)


def lock_calls(calls: Path) -> list[str]:
    return calls.read_text().splitlines() if calls.exists() else []


def test_unplugging_the_key_locks_once_and_another_key_does_not(
        cli: CliCall, sim_key: SimKey, keys: Keys, loginctl_calls: Path) -> None:
    key = keys(sim_key("lock"))
    other = keys(sim_key("other"))
    r = cli("--json", "--device", key.spec, "udev", "install", "--nickname", "vm-lock")
    assert r.exit_code == 0, r.output
    rules = Path("/etc/udev/rules.d/85-yktool-lock.rules").read_text()
    assert f'ENV{{HID_UNIQ}}=="{key.serial}"' in rules
    run(["udevadm", "control", "--reload"], check=True)

    other.stop()
    assert other.gone()
    run(["udevadm", "settle", "--timeout=30"])
    time.sleep(4)  # the lock program's 2 s debounce, and then some
    assert lock_calls(loginctl_calls) == []  # another key's removal does not lock

    start = time.monotonic()
    key.stop()
    assert key.gone()
    while not lock_calls(loginctl_calls) and time.monotonic() - start < 30:
        time.sleep(0.1)
    waited = time.monotonic() - start
    assert lock_calls(loginctl_calls) == ["lock-sessions"], f"after {waited:.1f} s"
    time.sleep(3)
    assert lock_calls(loginctl_calls) == ["lock-sessions"]  # one removal, one lock
    print(f"removal to loginctl lock-sessions: {waited:.1f} s (debounce 2 s)")
