"""The removal lock under the guest's real systemd-udevd: the rule `yktool udev install` wrote,
a real remove event (the emulator stopped: UHID_DESTROY), the lock program as udev runs it.

Everything lives in the guest only: the rule goes into /run/udev/rules.d, the program into the
guest's /usr overlay (its upper layer is the guest's tmpfs), and `loginctl` (the one allowed
stand-in: there is no seat) is a recording stub bind-mounted over the guest's /usr/bin/loginctl,
where the lock program finds it on udev's PATH-less environment (it falls back to /usr/bin:/bin).
`udevadm settle` waits until udev has run every RUN program of the queued events, so "did not
lock" is a settled fact, not a timeout.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from tests.vm.support import Key, plug, run
from yktool import udev
from yktool.cli import main_group  # imported before any plug(): the emulator's fork starts warm
from yktool.fido.softkey import SoftKey

DEBOUNCE = 2.0  # the lock program's default wait
LIVE_RULE = Path("/run/udev/rules.d/85-yktool-lock.rules")
LIVE_PROGRAM = Path(udev.PROGRAM_PATH)
LOGINCTL = Path("/usr/bin/loginctl")
STATE_DIR = Path("/run/yktool-lock")


@dataclass
class LockWorld:
    scratch: Path
    a: Path  # the registered key's state
    b: Path  # another key (another serial)
    calls: Path  # one line per loginctl call: "EPOCH UPTIME CALLER_START_TICKS ARGS"
    a_serial: str
    plugged_a: Key  # the key the rule was written for, still plugged in from the install

    def plug(self, state: Path) -> Key:
        return plug(state, self.scratch / "emulated")

    def lock_calls(self) -> list[tuple[float, float, str]]:
        """(when loginctl ran, when its caller (the lock program) started, args), epoch seconds."""
        if not self.calls.exists():
            return []
        out = []
        tick = os.sysconf("SC_CLK_TCK")
        for line in self.calls.read_text().splitlines():
            when, uptime, started, args = line.split(" ", 3)
            out.append((float(when), float(when) - (float(uptime) - int(started) / tick), args))
        return out

    def reset(self) -> None:
        """No call recorded, no lock remembered: each test starts from a fresh removal."""
        settle()
        self.calls.unlink(missing_ok=True)
        shutil.rmtree(STATE_DIR, ignore_errors=True)


def settle() -> None:
    run(["udevadm", "settle", "--timeout=60"], check=True)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LockWorld]:
    scratch = tmp_path_factory.mktemp("udev-lock")
    a, b = scratch / "a.json", scratch / "b.json"
    SoftKey(a), SoftKey(b)  # two keys, two serials
    calls = scratch / "loginctl.calls"
    stub = scratch / "loginctl"
    # records when it ran and when its caller, the lock program, started (/proc/PPID/stat's
    # start time in clock ticks since boot, against /proc/uptime)
    stub.write_text(
        '#!/bin/sh\nread -r up _ < /proc/uptime\nstarted=$(cut -d" " -f22 /proc/$PPID/stat)\n'
        f'echo "$(date +%s.%N) $up $started $*" >> {calls}\nexit 0\n'
    )
    stub.chmod(0o755)
    assert LOGINCTL.exists(), "the guest has no /usr/bin/loginctl to stand in for"
    root = scratch / "root"
    root.mkdir()
    key = plug(a, scratch / "emulated")
    try:
        # the rule as `yktool udev install` writes it for the plugged-in key, into a scratch root
        res = CliRunner().invoke(
            main_group, ["--root", str(root), "--device", key.spec, "--json", "udev", "install"], catch_exceptions=False
        )
        assert res.exit_code == 0, res.output
        serial = key.serial
    except BaseException:
        key.stop()
        raise
    written = (root / udev.RULE_PATH.lstrip("/")).read_text()
    assert f'ENV{{HID_UNIQ}}=="{serial}"' in written, written
    mounted = False
    try:
        LIVE_RULE.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(root / udev.RULE_PATH.lstrip("/"), LIVE_RULE)
        LIVE_PROGRAM.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / udev.PROGRAM_PATH.lstrip("/"), LIVE_PROGRAM)
        run(["mount", "--bind", stub, LOGINCTL], check=True)
        mounted = True
        settle()
        run(["udevadm", "control", "--reload"], check=True)
        w = LockWorld(scratch, a, b, calls, serial, key)
        w.reset()
        yield w
    finally:
        key.stop()
        settle()
        if mounted:
            run(["umount", LOGINCTL])
        LIVE_RULE.unlink(missing_ok=True)
        LIVE_PROGRAM.unlink(missing_ok=True)
        shutil.rmtree(STATE_DIR, ignore_errors=True)
        run(["udevadm", "control", "--reload"])


def test_removing_the_registered_key_locks_every_session_once(world: LockWorld) -> None:
    world.reset()
    key = world.plugged_a
    assert key.stop() == 0  # UHID_DESTROY: the kernel's "remove", as when the key is pulled
    gone = time.time()
    settle()
    calls = world.lock_calls()
    assert [args for _, _, args in calls] == ["lock-sessions"], calls
    locked, program_started, _ = calls[0]
    print(
        f"removal lock: the lock program ran {program_started - gone:.1f}s after the key left, "
        f"loginctl lock-sessions {locked - program_started:.1f}s later (debounce {DEBOUNCE:.0f}s)"
    )
    assert program_started - gone <= 2.0  # udev ran the lock program promptly
    assert DEBOUNCE <= locked - program_started <= DEBOUNCE + 10  # it waited out a re-plug, then locked


def test_removing_another_key_does_not_lock(world: LockWorld) -> None:
    world.plugged_a.stop()  # (when the first test did not run) before reset() settles and forgets
    world.reset()
    other = world.plug(world.b)
    assert other.serial != world.a_serial
    assert other.stop() == 0
    settle()  # every RUN program of the remove events has finished
    assert world.lock_calls() == []


def test_two_removals_inside_the_debounce_window_lock_once(world: LockWorld) -> None:
    """Two devices with the registered serial leave together: two remove events, handled in
    parallel by udev's workers, one lock. (Pulled, not stopped: two emulators shutting down at
    the same moment once hung one of them under a loaded TCG guest; a pull has no shutdown.)"""
    world.plugged_a.stop()
    world.reset()
    twin_state = world.scratch / "a-twin.json"
    shutil.copyfile(world.a, twin_state)
    first = world.plug(world.a)
    twin = world.plug(twin_state)
    assert first.serial == twin.serial == world.a_serial
    # both yanked out at once (SIGKILL: the kernel drops each device as its /dev/uhid closes)
    for k in (first, twin):
        os.kill(k.pid, signal.SIGKILL)
    for k in (first, twin):
        k.pull()
        assert k.gone(), k.hidraw
    settle()
    calls = world.lock_calls()
    assert [args for _, _, args in calls] == ["lock-sessions"], calls
