"""pam_u2f through libfido2 (not `manual`): pamtester in a private mount namespace whose
/etc/pam.d is a scratch folder, the authfile `yktool pam register` wrote for the emulated keys."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CliCall
from tests.fixtures.fido import TEST_PIN, SimKey
from tests.vm.conftest import Keys
from tests.vm.support import PAM_ORIGIN as ORIGIN
from tests.vm.support import Key, pamtester, touches

CUE = "Please touch the device."


def register(cli: CliCall, key: Key, authfile: Path, nickname: str, *extra: str, input: str | None = None) -> None:
    with touches(key, f"yktool pam register ({nickname}{', +pin' if extra else ''})"):
        r = cli(
            "--device",
            key.spec,
            "pam",
            "register",
            "--user",
            "root",
            "--origin",
            ORIGIN,
            "--authfile",
            authfile,
            "--nickname",
            nickname,
            *extra,
            input=input,
        )
    assert r.exit_code == 0, r.output


def test_pam_u2f_accepts_primary_and_backup_and_refuses_the_rest(
    cli: CliCall, sim_key: SimKey, keys: Keys, tmp_path: Path
) -> None:
    authfile = tmp_path / "u2f_keys"
    primary = keys(sim_key("primary"))
    register(cli, primary, authfile, "primary")
    backup = keys(sim_key("backup"))
    register(cli, backup, authfile, "backup")
    assert len(authfile.read_text().strip().split(":")) == 3  # root, then both keys on one line
    backup.stop()
    assert backup.gone()

    with touches(primary, "pam_u2f auth, primary"):
        ok, out = pamtester(tmp_path, authfile)
    assert ok, out
    assert CUE in out  # the cue prompt reached the PAM conversation

    primary.control("policy deny")
    with touches(primary, "pam_u2f auth, primary, touch denied"):
        ok, out = pamtester(tmp_path, authfile)
    assert not ok, out
    primary.stop()
    assert primary.gone()

    ok, out = pamtester(tmp_path, authfile)
    assert not ok, out  # no key plugged in

    backup = keys(sim_key("backup"))
    with touches(backup, "pam_u2f auth, backup"):
        ok, out = pamtester(tmp_path, authfile)
    assert ok, out
    backup.stop()
    assert backup.gone()

    stranger = keys(sim_key("stranger"))
    with touches(stranger, "pam_u2f auth, unregistered key"):
        ok, out = pamtester(tmp_path, authfile)
    assert not ok, out


def test_pam_u2f_pin_credential_asks_for_the_pin_and_refuses_a_wrong_one(
    cli: CliCall, sim_key: SimKey, keys: Keys, tmp_path: Path
) -> None:
    authfile = tmp_path / "u2f_keys"
    key = keys(sim_key("pinned", pin=TEST_PIN))
    register(cli, key, authfile, "pinned", "--pin", input=f"{TEST_PIN}\n")
    assert "+pin" in authfile.read_text()

    with touches(key, "pam_u2f auth, +pin, wrong PIN"):
        ok, out = pamtester(tmp_path, authfile, input="98765\n")
    assert not ok, out
    assert "PIN" in out

    with touches(key, "pam_u2f auth, +pin"):
        ok, out = pamtester(tmp_path, authfile, input=f"{TEST_PIN}\n")
    assert ok, out
    assert "Please enter the PIN" in out
