"""`yktool key emulate` where it cannot run: no /dev/uhid (this machine, any container), not
root, not a software key. Each refusal is one clear message and an exit code, nothing made."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CliCall
from yktool.fido.emulate_process import EmulatorFailed, emulated_key

YKTOOL = [sys.executable, "-m", "yktool"]


def test_without_uhid_it_refuses_naming_uhid_and_modprobe(cli: CliCall, tmp_path: Path) -> None:
    state = tmp_path / "k.json"
    r = cli("key", "emulate", "--device", f"sim:{state}", "--uhid", tmp_path / "uhid")
    assert r.exit_code == 3
    assert "uhid" in r.stderr and "modprobe uhid" in r.stderr
    assert "Traceback" not in r.output and r.stdout == ""
    assert not state.exists()  # nothing made: no key state, no socket


def test_without_uhid_json_gives_one_error_object(cli: CliCall, tmp_path: Path) -> None:
    r = cli("--json", "key", "emulate", "--device", f"sim:{tmp_path / 'k.json'}", "--uhid", tmp_path / "uhid")
    assert r.exit_code == 3
    err = json.loads(r.stdout)
    assert err["ok"] is False and err["error"] == "NoDevice" and "modprobe uhid" in err["hint"]


def test_as_a_normal_user_it_refuses_with_a_permission_error_and_the_way_out(tmp_path: Path) -> None:
    uhid = tmp_path / "uhid"
    uhid.write_bytes(b"")
    tmp_path.chmod(0o755)
    if os.geteuid() == 0:  # run it as nobody against a root-only node, like crw------- /dev/uhid
        uhid.chmod(0o600)
        as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    else:  # already a normal user: a node nobody may open
        uhid.chmod(0o000)
        as_user = []
    r = subprocess.run(
        [*as_user, *YKTOOL, "key", "emulate", "--device", f"sim:{tmp_path / 'k.json'}", "--uhid", str(uhid)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3, r.stderr
    assert "permission" in r.stderr and "root" in r.stderr
    assert "Traceback" not in r.stderr


def test_only_a_software_key_can_be_emulated(cli: CliCall, tmp_path: Path) -> None:
    r = cli("key", "emulate", "--device", "hid:/dev/hidraw0", "--uhid", tmp_path / "uhid")
    assert r.exit_code == 2
    assert "sim:PATH" in r.stderr and "Traceback" not in r.output


def test_the_global_device_names_the_key_too(cli: CliCall, tmp_path: Path) -> None:
    r = cli("--device", f"sim:{tmp_path / 'k.json'}", "key", "emulate", "--uhid", tmp_path / "uhid")
    assert r.exit_code == 3 and "uhid" in r.stderr  # got past the key check


def test_a_control_path_already_there_is_refused_before_anything(cli: CliCall, tmp_path: Path) -> None:
    taken = tmp_path / "ctl"
    taken.write_text("someone's file")
    r = cli("key", "emulate", "--device", f"sim:{tmp_path / 'k.json'}", "--control", taken, "--uhid", tmp_path / "uhid")
    assert r.exit_code == 2 and "already exists" in r.stderr
    assert taken.read_text() == "someone's file"


def test_help_has_examples_and_the_touch_policies(cli: CliCall) -> None:
    r = cli("key", "emulate", "--help")
    assert r.exit_code == 0
    for word in ("Examples", "--touch", "auto", "deny", "timeout", "ask", "--control", "fido2-token", "modprobe uhid"):
        assert word in r.stdout


def test_the_helper_reports_an_emulator_that_cannot_start(tmp_path: Path) -> None:
    stderr = tmp_path / "stderr"
    with stderr.open("w") as err, pytest.raises(EmulatorFailed, match="exit status 3"):
        with emulated_key(
            tmp_path / "k.json",
            yktool=[*YKTOOL],
            stderr=err,
            timeout=60,
            env={**os.environ, "YKTOOL_UHID": str(tmp_path / "uhid")},
        ):
            pass
