"""`yktool key …` against the software key: in-process (the `cli` fixture) and as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ChildRecorder, CliCall
from yktool.fido import open_device
from yktool.fido.session import KeySession

PIN = "correct-horse-7"
WRONG = "wrong-pin-0"
YKTOOL = Path(sys.executable).parent / "yktool"

INFO_FIELDS = {
    "device",
    "path",
    "product",
    "software",
    "aaguid",
    "versions",
    "extensions",
    "algorithms",
    "options",
    "pin_protocols",
    "pin_set",
    "pin_retries",
    "pin_needs_replug",
    "min_pin_length",
    "usb_id",
    "usb_serial",
    "yubikey",
    "notes",
}


@pytest.fixture
def key(tmp_path: Path) -> Path:
    """The state file of a fresh software key (created on first open)."""
    return tmp_path / "key.json"


def dev(key: Path) -> str:
    return f"sim:{key}"


def set_pin(cli: CliCall, key: Path, pin: str = PIN) -> None:
    r = cli("--device", dev(key), "key", "pin", "set", "--pin-stdin", input=f"{pin}\n")
    assert r.exit_code == 0, r.output


def retries(key: Path) -> int:
    return KeySession(open_device(dev(key))).pin_retries()


# ---------------------------------------------------------------------------- info / list


def test_key_info_json_has_the_fields(cli: CliCall, key: Path) -> None:
    r = cli("--device", dev(key), "--json", "key", "info")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert set(data) == INFO_FIELDS | {"schema", "ok"}
    assert data["device"] == dev(key) and data["path"] == str(key)
    assert data["software"] is True
    assert data["product"] == "yktool software key"
    assert data["aaguid"] == KeySession(open_device(dev(key))).aaguid
    assert "FIDO_2_1" in data["versions"]
    assert {"hmac-secret", "credProtect"} <= set(data["extensions"])
    assert {"ES256", "EdDSA"} <= set(data["algorithms"])
    assert data["options"]["clientPin"] is False and data["pin_set"] is False
    assert data["pin_retries"] == 8
    assert data["yubikey"] is None  # not a YubiKey: no serial/firmware/form factor
    assert data["usb_id"] == "1209:0001"  # pid.codes test ids, not Yubico's


def test_key_info_text_says_software_key_and_pin_state(cli: CliCall, key: Path) -> None:
    set_pin(cli, key)
    r = cli("--device", dev(key), "key", "info")
    assert r.exit_code == 0, r.output
    assert "software key" in r.stdout
    assert "FIDO_2_1" in r.stdout and "hmac-secret" in r.stdout
    assert "PIN               set" in r.stdout
    assert "PIN retries left  8 of 8" in r.stdout


def test_key_list_names_the_sim_key(cli: CliCall, key: Path) -> None:
    r = cli("--device", dev(key), "--json", "key", "list")
    assert r.exit_code == 0, r.output
    (entry,) = json.loads(r.stdout)["keys"]
    assert set(entry) == INFO_FIELDS and entry["device"] == dev(key)
    r = cli("--device", dev(key), "key", "list")
    assert dev(key) in r.stdout and "software key" in r.stdout


def test_key_list_without_keys_says_so(cli: CliCall) -> None:
    # This machine has no hidraw devices: `auto` lists nothing, and says what to do.
    r = cli("--device", "auto", "--json", "key", "list")
    assert r.exit_code == 0 and json.loads(r.stdout)["keys"] == []
    r = cli("--device", "auto", "key", "list")
    assert "no FIDO2 key found" in r.stderr and "--device sim:PATH" in r.stderr


def test_key_info_without_a_key_is_exit_3(cli: CliCall) -> None:
    r = cli("--device", "auto", "key", "info")
    assert r.exit_code == 3
    assert "no FIDO2 key found" in r.stderr and "hint:" in r.stderr
    assert "Traceback" not in r.output


# ---------------------------------------------------------------------------- PIN


def test_pin_set_verify_change(cli: CliCall, key: Path) -> None:
    set_pin(cli, key)
    r = cli("--device", dev(key), "key", "pin", "verify", "--pin-stdin", input=f"{PIN}\n")
    assert r.exit_code == 0 and "8 attempts left" in r.stdout
    r = cli("--device", dev(key), "--json", "key", "pin", "change", "--pin-stdin", input=f"{PIN}\nnew-pin-1234\n")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout) == {"schema": 1, "ok": True, "pin_retries": 8}
    KeySession(open_device(dev(key))).verify_pin("new-pin-1234")
    assert PIN not in r.output and "new-pin-1234" not in r.output


def test_pin_set_twice_is_refused(cli: CliCall, key: Path) -> None:
    set_pin(cli, key)
    before = key.read_bytes()
    r = cli("--device", dev(key), "key", "pin", "set", "--pin-stdin", input="another-pin\n")
    assert r.exit_code == 4 and "already has a PIN" in r.stderr and "pin change" in r.stderr
    assert key.read_bytes() == before


@pytest.mark.parametrize(
    "args, stdin",
    [
        (("set",), "123\n"),
        (("change",), f"{PIN}\n12\n"),
        (("verify",), "12\n"),
    ],
)
def test_too_short_pin_is_exit_2_before_anything_is_sent(
    cli: CliCall, key: Path, args: tuple[str, ...], stdin: str
) -> None:
    if args[0] != "set":
        set_pin(cli, key)
    else:
        KeySession(open_device(dev(key)))  # plugged in: the state file exists
    before = key.read_bytes()
    r = cli("--device", dev(key), "key", "pin", *args, "--pin-stdin", input=stdin)
    assert r.exit_code == 2, r.output
    assert ("too short" in r.stderr or "cannot be the key's PIN" in r.stderr) and "nothing was sent" in r.stderr
    assert key.read_bytes() == before  # no retry spent, no PIN changed
    if args[0] != "set":
        assert retries(key) == 8


def test_wrong_pin_exit_codes_6_7_8(cli: CliCall, key: Path) -> None:
    set_pin(cli, key)

    def verify(pin: str) -> tuple[int, str]:
        r = cli("--device", dev(key), "key", "pin", "verify", "--pin-stdin", input=f"{pin}\n")
        assert "Traceback" not in r.output and pin not in r.output
        return r.exit_code, r.stderr

    code, err = verify(WRONG)
    assert code == 6 and "7 attempts left" in err and "hint:" in err
    code, err = verify(WRONG)
    assert code == 6 and "6 attempts left" in err
    code, err = verify(WRONG)  # third in a row
    assert code == 7 and "re-insert" in err and "key replug" in err
    code, err = verify(PIN)  # even the right one is not taken now
    assert code == 7
    assert cli("--device", dev(key), "key", "replug").exit_code == 0
    code, err = verify(PIN)
    assert code == 0  # and the right PIN restores the full count
    assert retries(key) == 8
    # 8 wrong in all (with replugs between the blocks of 3) block it for good
    codes = []
    for _ in range(12):
        code, err = verify(WRONG)
        codes.append(code)
        if code == 7:
            assert cli("--device", dev(key), "key", "replug").exit_code == 0
        if code == 8:
            break
    assert codes[-1] == 8, codes
    assert "reset" in err and "wipes every credential" in err
    code, err = verify(PIN)
    assert code == 8


def test_pin_missing_on_stdin_is_a_usage_error(cli: CliCall, key: Path) -> None:
    r = cli("--device", dev(key), "key", "pin", "set", "--pin-stdin", input="")
    assert r.exit_code == 2 and "nothing on standard input" in r.stderr
    assert not KeySession(open_device(dev(key))).pin_is_set


# ---------------------------------------------------------------------------- replug / reset


def test_reset_needs_yes_when_not_interactive(cli: CliCall, key: Path) -> None:
    set_pin(cli, key)
    before = key.read_bytes()
    r = cli("--device", dev(key), "key", "reset")
    assert r.exit_code == 4 and "wipes EVERY credential" in r.stderr and "--yes" in r.stderr
    assert key.read_bytes() == before


def test_reset_with_yes_wipes_pin_and_credentials(cli: CliCall, key: Path) -> None:
    set_pin(cli, key)
    s = KeySession(open_device(dev(key)), pin=PIN)
    cred = s.make_credential("io.systemd.cryptsetup")
    assert cli("--device", dev(key), "key", "replug").exit_code == 0  # opens the reset window
    r = cli("--device", dev(key), "--yes", "key", "reset")
    assert r.exit_code == 0, r.output
    assert "Touch your key" in r.stderr
    after = KeySession(open_device(dev(key)))
    assert not after.pin_is_set
    assert after.probe("io.systemd.cryptsetup", cred.credential_id) is False


@pytest.mark.parametrize("presence", ["deny", "timeout"])
def test_refused_touch_is_exit_9_and_changes_nothing(cli: CliCall, key: Path, presence: str) -> None:
    set_pin(cli, key)
    s = KeySession(open_device(dev(key)), pin=PIN)
    cred = s.make_credential("io.systemd.cryptsetup")
    cli("--device", dev(key), "key", "replug")
    before = key.read_bytes()
    r = cli("--device", dev(key), "--yes", "key", "reset", env={"YKTOOL_SIM_PRESENCE": presence})
    assert r.exit_code == 9, r.output
    assert "not touched" in r.stderr and "hint:" in r.stderr
    assert key.read_bytes() == before
    assert KeySession(open_device(dev(key))).probe("io.systemd.cryptsetup", cred.credential_id)


def test_reset_outside_the_window_is_refused(cli: CliCall, key: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import time

    set_pin(cli, key)
    before = key.read_bytes()
    real = time.time
    monkeypatch.setattr(time, "time", lambda: real() + 3600)  # an hour after it was plugged in
    r = cli("--device", dev(key), "--yes", "key", "reset")
    assert r.exit_code == 4, r.output
    assert "first seconds after it is plugged in" in r.stderr and "key replug" in r.stderr
    monkeypatch.undo()
    assert key.read_bytes() == before


@pytest.mark.parametrize("spec", ["hid:/dev/hidraw0", "auto"])
def test_replug_refuses_a_real_key(cli: CliCall, spec: str) -> None:
    r = cli("--device", spec, "key", "replug")
    assert r.exit_code == 4
    assert "only works on the software key" in r.stderr and "by hand" in r.stderr


def test_replug_of_a_missing_software_key_creates_nothing(cli: CliCall, key: Path) -> None:
    r = cli("--device", dev(key), "key", "replug")
    assert r.exit_code == 2 and "hint:" in r.stderr
    assert not key.exists()


def test_dry_run_reset_changes_nothing(cli: CliCall, key: Path) -> None:
    set_pin(cli, key)
    before = key.read_bytes()
    r = cli("--device", dev(key), "--dry-run", "key", "reset")
    assert r.exit_code == 0 and "Would reset" in r.stdout
    assert key.read_bytes() == before


# ---------------------------------------------------------------------------- a real process


def test_real_process_pin_flow_keeps_the_pin_out_of_argv_env_and_output(
    key: Path, child_recorder: ChildRecorder
) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("YKTOOL_")}

    def run(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(YKTOOL), "--device", dev(key), *args],
            input=stdin,
            text=True,
            capture_output=True,
            env=env,
            timeout=60,
            check=False,
        )

    r = run("key", "pin", "set", "--pin-stdin", stdin=f"{PIN}\n")
    assert r.returncode == 0, r.stderr
    r = run("--json", "key", "pin", "verify", "--pin-stdin", stdin=f"{WRONG}\n")
    assert r.returncode == 6 and "7 attempts left" in r.stderr
    error = json.loads(r.stdout)  # --json: the error as JSON on stdout too
    assert error["ok"] is False and error["error"] == "PinInvalid" and error["exit_code"] == 6
    r = run("--json", "key", "info")
    assert r.returncode == 0
    info = json.loads(r.stdout)
    assert info["pin_set"] is True and info["pin_retries"] == 7
    r = run("key", "pin", "verify", "--pin-stdin", stdin=f"{PIN}\n")
    assert r.returncode == 0 and "8 attempts left" in r.stdout
    for out in (r.stdout, r.stderr):
        assert PIN not in out
    assert len(child_recorder.children) == 4
    child_recorder.assert_no_secret(PIN, WRONG)
    assert PIN not in key.read_text()  # the state file keeps a hash, never the PIN


def test_key_list_goes_on_past_an_unreadable_key(cli: CliCall, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # No hidraw here: stand in for the HID enumeration with two software keys, one of them
    # behind a transport without CBOR (a U2F-only key cannot be read as FIDO2).
    from tests.test_session import U2fOnly
    from yktool.fido import devices

    good = open_device(dev(tmp_path / "a.json"))
    bad = U2fOnly(open_device(dev(tmp_path / "b.json")))
    monkeypatch.setattr(devices, "present_hid_keys", lambda: [good, bad])
    r = cli("--device", "auto", "--json", "key", "list")
    assert r.exit_code == 0, r.output
    (entry,) = json.loads(r.stdout)["keys"]
    assert entry["path"] == str(tmp_path / "a.json")
    assert "a key could not be read" in r.stderr and "could not be understood" in r.stderr


@pytest.mark.parametrize("sub", ["verify", "change"])
def test_pin_verify_or_change_without_a_pin_says_set_one(cli: CliCall, key: Path, sub: str) -> None:
    KeySession(open_device(dev(key)))
    before = key.read_bytes()
    r = cli("--device", dev(key), "key", "pin", sub, "--pin-stdin", input=f"{PIN}\n{PIN}\n")
    assert r.exit_code == 2 and "no PIN" in r.stderr and "key pin set" in r.stderr
    assert key.read_bytes() == before


def test_auto_with_two_keys_and_no_terminal_lists_them_with_the_flag(
    cli: CliCall, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from yktool.fido import devices

    paths = [tmp_path / "a.json", tmp_path / "b.json"]
    monkeypatch.setattr(devices, "present_hid_keys", lambda: [devices.open_sim(p) for p in paths])
    r = cli("--device", "auto", "key", "info")
    assert r.exit_code == 2, r.output
    assert all(f"--device sim:{p}" in r.stderr for p in paths) and "hint:" in r.stderr
