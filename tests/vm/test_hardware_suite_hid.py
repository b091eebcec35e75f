"""The hardware suite (hardware-tests/) run as a person runs it on a throwaway key, over USB-HID:
`pytest hardware-tests --hardware --device hid:/dev/hidrawN --allow-used-key --destructive`, with
RESET typed on its stdin. The key is the emulated one (`yktool key emulate`, touches approved by
the emulator), so libfido2, sysfs, udev and the kernel see a real hidraw node. Everything that
needs no YubiKey must pass; the YubiKey-only items skip, each with its reason.

One run covers both of the issue's commands: without --destructive the only change is the PIN
test skipping ("pass --destructive"), which the plain rehearsal (tests/test_hardware_gating.py)
shows on every run of the plain suite.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from tests.fixtures.fido import SimKey
from tests.vm.conftest import Keys
from tests.vm.ssh_support import LIBWRAP, SSHD, guest_accounts

REPO = Path(__file__).resolve().parents[2]

# Items only a YubiKey (or a key on USB) can run; each must skip with its reason here.
YUBIKEY_ONLY = {
    "test_key_session_hw.test_key_info_json_has_yubikey_facts": "not a YubiKey",
    "test_udev_hw.test_rule_matches_the_keys_usb_device_on_removal": "no USB device above",
}


def outcomes(report: Path) -> dict[str, tuple[str, str]]:
    """test id (module.name) -> (passed|skipped|failed, the skip or failure message)."""
    found = {}
    root = ET.parse(report).getroot()  # noqa: S314 - the report our own pytest run just wrote
    for case in root.iter("testcase"):
        test_id = f"{str(case.get('classname')).rsplit('.', 1)[-1]}.{case.get('name')}"
        kind, why = "passed", ""
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                kind = "skipped" if child.tag == "skipped" else "failed"
                why = child.get("message", "")
        found[test_id] = (kind, why)
    return found


def streamed(
    argv: list[str], answer: str, env: dict[str, str], capsys: pytest.CaptureFixture[str], timeout: float = 1500
) -> tuple[int, str]:
    """Run the suite with `answer` on its stdin (as typed); its output goes to the console as it comes
    (a run of minutes shows where it is) and is returned with the exit status."""
    lines = []
    with subprocess.Popen(
        argv, cwd=REPO, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    ) as proc:
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.write(answer)
        proc.stdin.close()
        timer = threading.Timer(timeout, proc.kill)
        timer.start()
        try:
            with capsys.disabled():
                for line in proc.stdout:
                    lines.append(line)
                    print(f"hardware-tests| {line}", end="", flush=True)
        finally:
            timer.cancel()
    return proc.returncode, "".join(lines)


def test_the_hardware_suite_runs_on_the_emulated_key_over_hid(
    keys: Keys, sim_key: SimKey, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key = keys(sim_key("throwaway"), touch="auto")
    report = tmp_path / "hardware.xml"
    # the machine a person runs it on has openssh-server: sshd on PATH, its account and /run/sshd
    env = {"PATH": f"{SSHD.parent}:{os.environ['PATH']}", "LD_LIBRARY_PATH": str(LIBWRAP)}
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-p",
        "no:cacheprovider",
        "-p",
        "no:xdist",
        "-p",
        "no:hypothesispytest",
        "-v",
        "-rs",
        "--durations=0",
        f"--basetemp={tmp_path / 'suite'}",
        f"--junitxml={report}",
        "hardware-tests",
        "--hardware",
        "--device",
        key.spec,
        "--allow-used-key",
        "--destructive",
    ]
    start = time.monotonic()
    with guest_accounts(tmp_path):
        returncode, out = streamed(argv, "RESET\n", {**os.environ, **env}, capsys)
    took = time.monotonic() - start
    assert report.exists(), out
    found = outcomes(report)
    passed = sorted(t for t, (kind, _) in found.items() if kind == "passed")
    skipped = {t: why for t, (kind, why) in found.items() if kind == "skipped"}
    with capsys.disabled():  # on the tier's console and log, passed or not
        print(
            f"\nhardware suite over HID: {len(passed)} passed, {len(skipped)} skipped, "
            f"{len(found) - len(passed) - len(skipped)} failed, in {took:.1f}s"
        )
        for test_id, why in sorted(skipped.items()):
            print(f"  skipped {test_id}: {why}")

    assert returncode == 0, out
    assert not [t for t, (kind, _) in found.items() if kind == "failed"], out
    # exactly the YubiKey-only items skip, each saying why; everything else ran and passed
    assert set(skipped) == set(YUBIKEY_ONLY), skipped
    for test_id, why in YUBIKEY_ONLY.items():
        assert why in skipped[test_id], skipped
    assert "test_pin_hw.test_pin_set_change_verify" in passed  # --destructive and the typed RESET
    assert len(passed) + len(skipped) == len(found) >= 15, found
    assert key.counts().get("approved", 0) >= 10, key.counts()  # the touches were the key's own
