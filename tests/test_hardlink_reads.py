"""Running as root, yktool does not read a hard link a user made to a file that is not theirs
(attack left open in issue 12): where fs.protected_hardlinks is 0 the kernel lets a user give
/etc/shadow a second name in their own folder, and a root read through that name would show it
(`pam check` printed root's hash). The test makes the link as root, standing for that user."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from tests.conftest import CliCall
from tests.ssh_support import SshWorld, world
from tests.test_link_attacks import SHADOW, _pam_root, _shadow, _untouched
from yktool.errors import Refused
from yktool.host import Host

__all__ = ["world"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the hard links matter when yktool runs as root")


def test_a_hard_link_to_roots_file_in_a_users_folder_is_not_read(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shadow = _shadow(root)
    home = root / "home/u"
    home.mkdir(parents=True)
    os.chown(home, 1000, 1000)
    os.link(shadow, home / "notes")
    host = Host(root)
    with pytest.raises(Refused, match="hard link .* folder uid 1000 can add names to"):
        host.read_bytes("/home/u/notes")
    # in a folder every user can add names to (a /tmp): refused too
    shared = root / "tmp"
    shared.mkdir()
    shared.chmod(0o1777)
    os.link(shadow, shared / "x")
    with pytest.raises(Refused, match="every user"):
        host.read_bytes("/tmp/x")
    _untouched(shadow)


def test_hard_links_that_take_nothing_from_anyone_are_read(tmp_path: Path) -> None:
    """The user's own file under two names, and root's file under two names in root's folder."""
    root = tmp_path / "root"
    shadow = _shadow(root)
    os.link(shadow, root / "etc/shadow-")
    home = root / "home/u"
    home.mkdir(parents=True)
    os.chown(home, 1000, 1000)
    (home / "a").write_text("mine\n")
    os.chown(home / "a", 1000, 1000)
    os.link(home / "a", home / "b")
    host = Host(root)
    assert host.read_bytes("/home/u/b") == b"mine\n"
    assert host.read_bytes("/etc/shadow-") == SHADOW


def test_pam_check_never_reads_a_users_hard_link_to_shadow(world: SshWorld, cli: CliCall) -> None:
    shadow = _shadow(world.root)
    _pam_root(world.root)
    authfile = world.home() / ".config/Yubico/u2f_keys"
    authfile.parent.mkdir(parents=True, exist_ok=True)
    os.chown(authfile.parent, 1000, 1000)
    os.link(shadow, authfile)
    for fmt in ((), ("--json",)):
        res = cli("--root", world.root, *fmt, "pam", "check")
        assert "rootsecrethash" not in res.output and "Traceback" not in res.output, res.output
        assert res.exit_code == 1, res.output
    checked = cli("--root", world.root, "--json", "verify", "--only", "pam,3")
    assert "rootsecrethash" not in checked.output, checked.output
    _untouched(shadow)
