"""Running as root, yktool never follows a symbolic link a user planted in their own home: such a
link would have root append to, or hand over, a file the user must not touch (/root's
authorized_keys, /etc/shadow, a sudoers drop-in). Every target refuses (exit 4) and changes
nothing; a link root owns (a relocated /home) is still followed."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import CliResult
from tests.fixtures.fido import SimKey
from tests.ssh_support import SshWorld, snapshot, world

__all__ = ["world"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the links matter when yktool runs as root")


def _user_link(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    os.lchown(link, 1000, 1000)


def _refused(world: SshWorld, res: CliResult) -> None:
    assert res.exit_code == 4, res.output
    assert "symbolic link owned by uid 1000" in res.stderr and "will not follow it" in res.stderr


def _keygen(world: SshWorld) -> None:
    res = world.yk("ssh", "keygen", "--user", "alice")
    assert res.exit_code == 0, res.output


def test_authorized_keys_linked_to_roots_is_refused(world: SshWorld) -> None:
    _keygen(world)
    roots = world.root / "root/.ssh/authorized_keys"
    roots.parent.mkdir(parents=True)
    roots.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl admin\n")
    _user_link(world.ssh() / "authorized_keys", "/root/.ssh/authorized_keys")
    before = snapshot(world.root)
    _refused(world, world.yk("ssh", "authorize", "--user", "alice"))
    assert snapshot(world.root) == before


def test_ssh_folder_linked_elsewhere_is_refused_before_the_key_is_touched(world: SshWorld) -> None:
    (world.root / "etc/sudoers.d").mkdir(parents=True)
    _user_link(world.ssh(), "/etc/sudoers.d")
    before = snapshot(world.root)
    _refused(world, world.yk("ssh", "keygen", "--user", "alice"))
    assert snapshot(world.root) == before and not list((world.root / "etc/sudoers.d").iterdir())


def test_allowed_signers_and_gitconfig_links_are_refused(world: SshWorld) -> None:
    _keygen(world)
    (world.root / "etc/shadow").write_text("root:$6$secret:19000:0:99999:7:::\n")
    (world.root / "etc/shadow").chmod(0o600)
    _user_link(world.ssh() / "allowed_signers", "/etc/shadow")
    before = snapshot(world.root)
    _refused(world, world.yk("git", "signing", "--email", "alice@example.com", "--user", "alice"))
    assert snapshot(world.root) == before
    (world.ssh() / "allowed_signers").unlink()
    _user_link(world.home() / ".gitconfig", "/etc/shadow")
    before = snapshot(world.root)
    _refused(world, world.yk("git", "signing", "--email", "alice@example.com", "--user", "alice"))
    assert snapshot(world.root) == before


def test_pam_user_authfile_linked_to_shadow_is_refused(world: SshWorld, sim_key: SimKey) -> None:
    (world.root / "etc/shadow").write_text("root:$6$secret:19000:0:99999:7:::\n")
    (world.root / "etc/shadow").chmod(0o600)
    (world.root / "etc/hostname").write_text("ws1\n")
    _user_link(world.home() / ".config/Yubico/u2f_keys", "/etc/shadow")
    before = snapshot(world.root)
    _refused(world, world.yk("pam", "register", "--user", "alice", "--authfile", "~", device=sim_key("p")))
    assert snapshot(world.root) == before
    assert (world.root / "etc/shadow").stat().st_uid == 0


def test_a_link_root_owns_is_followed(world: SshWorld) -> None:
    # /home moved to /data/home by the admin: a root-owned link, as on many servers
    data = world.root / "data"
    data.mkdir()
    os.rename(world.root / "home", data / "home")
    os.symlink("/data/home", world.root / "home")
    _keygen(world)
    res = world.yk("ssh", "authorize", "--user", "alice")
    assert res.exit_code == 0, res.output
    assert (data / "home/alice/.ssh/authorized_keys").read_text().startswith("sk-ssh-ed25519@openssh.com ")
