"""Attack: verify judges a PAM stack a user can rewrite (their own file, or a root link into their folder)."""

from __future__ import annotations

import os

import pytest

from tests.fixtures.roots import FixtureRoot
from yktool.checks import CheckContext, run_checks
from yktool.host import Host


def _sudo(fx: FixtureRoot) -> str:
    return {r.id: r for r in run_checks(CheckContext(Host(fx.root)), only=["pam.sudo"])}["pam.sudo"].status


def test_the_hardened_sudo_stack_passes(hardened_root: FixtureRoot) -> None:
    assert _sudo(hardened_root) == "pass"


@pytest.mark.xfail(strict=True, reason="pam checks never look at who may write the stack's files and folders")
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
    assert _sudo(hardened_root) != "pass"


@pytest.mark.xfail(strict=True, reason="ssh checks never look at who may write sshd_config or its Includes")
def test_an_sshd_config_a_user_can_rewrite_is_not_a_pass(hardened_root: FixtureRoot) -> None:
    # sshd does not check its config's owner: alice may turn PasswordAuthentication back on
    os.chown(hardened_root.root / "etc/ssh/sshd_config", 1000, 1000)
    result = {r.id: r for r in run_checks(CheckContext(Host(hardened_root.root)), only=["ssh"])}
    assert result["ssh.passwordauthentication"].status != "pass"
