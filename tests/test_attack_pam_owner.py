"""Attack: verify judged a config a user can rewrite (their own file, a root link into their folder, a
folder their group may write) by its content: whoever can write it decides the verdict, so it fails."""

from __future__ import annotations

import os

import pytest

from tests.fixtures.roots import FixtureRoot
from yktool.checks import CheckContext, Result, run_checks
from yktool.host import Host


def _results(fx: FixtureRoot, only: str) -> dict[str, Result]:
    return {r.id: r for r in run_checks(CheckContext(Host(fx.root)), only=[only])}


def _sudo(fx: FixtureRoot) -> str:
    return _results(fx, "pam.sudo")["pam.sudo"].status


def _shown(result: Result) -> str:
    return "\n".join(f"{e.source}: {e.value}" for e in result.evidence)


def test_the_hardened_sudo_stack_passes(hardened_root: FixtureRoot) -> None:
    assert _sudo(hardened_root) == "pass"


def test_the_hardened_ssh_settings_pass(hardened_root: FixtureRoot) -> None:
    assert {r.status for r in _results(hardened_root, "ssh").values() if r.id != "ssh.sk_key"} == {"pass"}


@pytest.mark.parametrize("how", ["user-owned-file", "root-link-into-users-folder", "group-writable-pam.d"])
def test_a_sudo_stack_a_user_can_rewrite_is_not_a_pass(hardened_root: FixtureRoot, how: str) -> None:
    # whoever can write the sudo stack is root (`auth sufficient pam_permit.so`): the key guards nothing
    root = hardened_root.root
    sudo = root / "etc/pam.d/sudo"
    if how == "user-owned-file":
        os.chown(sudo, 1000, 1000)
    elif how == "root-link-into-users-folder":
        home = root / "home/alice"
        home.mkdir(parents=True, exist_ok=True)
        os.chown(home, 1000, 1000)
        (home / "sudo").write_bytes(sudo.read_bytes())
        os.chown(home / "sudo", 1000, 1000)
        sudo.unlink()
        sudo.symlink_to("/home/alice/sudo")  # root's link, in root's /etc/pam.d: the walk follows it
    else:
        os.chown(root / "etc/pam.d", 0, 1000)
        os.chmod(root / "etc/pam.d", 0o775)  # noqa: S103 - the attack: a group can write pam.d
    result = _results(hardened_root, "pam.sudo")["pam.sudo"]
    assert result.status == "fail"
    named = {
        "user-owned-file": "/etc/pam.d/sudo: owner alice (uid 1000), group 1000, mode 0644",
        "root-link-into-users-folder": "/home/alice: owner alice (uid 1000)",
        "group-writable-pam.d": "/etc/pam.d: owner root (uid 0), group 1000, mode 0775",
    }[how]
    assert named in _shown(result)
    assert "chown root:root" in result.fix and "chmod go-w" in result.fix
    if how == "root-link-into-users-folder":
        assert "/etc/pam.d/sudo" in result.fix  # the link to replace is named


def test_an_included_pam_file_a_user_owns_fails_every_service_reading_it(hardened_root: FixtureRoot) -> None:
    # sudo, login and greetd all read common-auth: rewriting it opens all three
    os.chown(hardened_root.root / "etc/pam.d/common-auth", 1000, 1000)
    results = _results(hardened_root, "pam")
    for service in ("sudo", "login", "greetd"):
        assert results[f"pam.{service}"].status == "fail"
        assert "/etc/pam.d/common-auth: owner alice (uid 1000)" in _shown(results[f"pam.{service}"])


def test_an_sshd_config_a_user_can_rewrite_is_not_a_pass(hardened_root: FixtureRoot) -> None:
    # sshd does not check its config's owner: alice may turn PasswordAuthentication back on
    os.chown(hardened_root.root / "etc/ssh/sshd_config", 1000, 1000)
    result = _results(hardened_root, "ssh")
    for key in ("passwordauthentication", "permitrootlogin", "maxauthtries"):
        assert result[f"ssh.{key}"].status == "fail"
        assert "/etc/ssh/sshd_config: owner alice (uid 1000)" in _shown(result[f"ssh.{key}"])
        assert "chown root:root /etc/ssh/sshd_config; chmod go-w /etc/ssh/sshd_config" in result[f"ssh.{key}"].fix


def test_an_included_sshd_drop_in_a_user_owns_is_not_a_pass(hardened_root: FixtureRoot) -> None:
    # sshd_config's `Include /etc/ssh/sshd_config.d/*.conf` reads it in place: alice's file, alice's setting
    os.chown(hardened_root.root / "etc/ssh/sshd_config.d/10-hardening.conf", 1000, 1000)
    result = _results(hardened_root, "ssh.passwordauthentication")["ssh.passwordauthentication"]
    assert result.status == "fail"
    assert "/etc/ssh/sshd_config.d/10-hardening.conf: owner alice (uid 1000)" in _shown(result)


def test_an_include_folder_other_users_may_write_is_not_a_pass(hardened_root: FixtureRoot) -> None:
    # anyone may drop a 00-mine.conf there, and the Include glob reads it first
    os.chmod(hardened_root.root / "etc/ssh/sshd_config.d", 0o777)  # noqa: S103 - the attack
    result = _results(hardened_root, "ssh.passwordauthentication")["ssh.passwordauthentication"]
    assert result.status == "fail"
    assert "/etc/ssh/sshd_config.d: owner root (uid 0), group 0, mode 0777" in _shown(result)


def test_a_sticky_world_writable_folder_on_the_way_is_not_a_writer(hardened_root: FixtureRoot) -> None:
    # like NixOS's /nix/store (1775 root:nixbld): nobody but root may rename root's entries
    os.chown(hardened_root.root / "etc/ssh", 0, 1000)
    os.chmod(hardened_root.root / "etc/ssh", 0o1777)  # noqa: S103 - sticky, the safe kind
    assert _results(hardened_root, "ssh.passwordauthentication")["ssh.passwordauthentication"].status == "pass"
