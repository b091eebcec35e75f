"""Running as root, yktool never reads or writes through a link a user controls, not even one
swapped in while it waits for a touch or between making a folder and setting its owner (issue 12,
items 8-11). Each attack points at the root's /etc/shadow or at a folder outside the root; every
one must leave the target byte for byte as it was, and end in a refusal (exit 4) that names the
link, never a traceback."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CliCall, CliResult
from tests.flows_support import copy_scratch, demo_pin, spec
from tests.ssh_support import SshWorld, world
from yktool.demo import KEYS, PASSPHRASE, ROOT
from yktool.errors import Refused
from yktool.host import Host

__all__ = ["world"]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the links matter when yktool runs as root")

SHADOW = b"root:$6$rootsecrethash$abcdefghijklmnop:19000:0:99999:7:::\n"


def _user_link(link: Path, target: str, uid: int = 1000) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    os.symlink(target, link)
    os.lchown(link, uid, uid)


def _shadow(root: Path) -> Path:
    shadow = root / "etc/shadow"
    shadow.parent.mkdir(parents=True, exist_ok=True)
    shadow.write_bytes(SHADOW)
    shadow.chmod(0o600)
    return shadow


def _untouched(path: Path, data: bytes = SHADOW, mode: int = 0o600) -> None:
    st = path.lstat()
    assert (path.read_bytes(), st.st_mode & 0o7777, st.st_uid, st.st_gid) == (data, mode, 0, 0)


def _refused_naming_the_link(res: CliResult, link: str) -> None:
    assert res.exit_code == 4, res.output
    assert link in res.stderr and "will not follow it" in res.stderr, res.stderr
    assert "Traceback" not in res.output and "rootsecrethash" not in res.output


# ------------------------------------------------------------------ item 8: replace's git files
def _replace(cli: CliCall, scratch: Path, present: str, lost: str) -> CliResult:
    return cli(
        "--root",
        scratch / ROOT,
        "--device",
        spec(scratch, present),
        "--yes",
        "replace",
        "--lost",
        lost,
        "--new-device",
        spec(scratch, "new"),
        "--unlock-key-file",
        str(PASSPHRASE),
        "--new-pin-stdin",
        input=demo_pin(scratch) + "\n",
    )


def test_replace_never_writes_the_revocation_file_through_a_user_link(
    commissioned: Path, tmp_path: Path, cli: CliCall
) -> None:
    scratch = copy_scratch(commissioned, tmp_path / "demo")
    root = scratch / ROOT
    shadow = _shadow(root)
    _user_link(root / "home/alice/.ssh/revoked_signers", "/etc/shadow")
    (scratch / KEYS / "primary.json").unlink()  # key A is lost
    res = _replace(cli, scratch, "backup", "primary")
    _untouched(shadow)
    _refused_naming_the_link(res, "/home/alice/.ssh/revoked_signers")


def test_replace_never_merges_allowed_signers_through_a_user_link(
    commissioned: Path, tmp_path: Path, cli: CliCall
) -> None:
    # the backup key's git entry has no config file: its replacement is merged into
    # allowed_signers by the new-SSH step, before the revoke step looks at anything
    scratch = copy_scratch(commissioned, tmp_path / "demo")
    root = scratch / ROOT
    shadow = _shadow(root)
    signers = root / "home/alice/.ssh/allowed_signers"
    signers.unlink()
    _user_link(signers, "/etc/shadow")
    (scratch / KEYS / "backup.json").unlink()
    res = _replace(cli, scratch, "primary", "backup")
    _untouched(shadow)
    _refused_naming_the_link(res, "/home/alice/.ssh/allowed_signers")


# ------------------------------------------------------------------ item 9: a swap during the touch
def test_authfile_swapped_for_a_link_while_the_touch_is_awaited_is_refused(
    world: SshWorld, sim_key: Callable[..., str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from yktool.fido import devices

    shadow = _shadow(world.root)
    folder = world.home() / ".config/Yubico"
    folder.mkdir(parents=True)
    for d in (folder.parent, folder):
        os.chown(d, 1000, 1000)
    authfile = folder / "u2f_keys"
    authfile.write_bytes(b"")
    os.chown(authfile, 1000, 1000)
    authfile.chmod(0o600)
    # the key "blinks": the presence callback blocks until the test has swapped the file
    blinking, touched = threading.Event(), threading.Event()

    def presence() -> bool:
        blinking.set()
        assert touched.wait(60)
        return True

    monkeypatch.setattr(devices, "sim_presence_from_env", lambda: presence)
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["res"] = world.yk("pam", "register", "--user", "alice", "--authfile", "~", device=sim_key("p"))
        except BaseException as exc:  # noqa: BLE001 - reported by the main thread
            outcome["exc"] = exc
            touched.set()

    worker = threading.Thread(target=run)
    worker.start()
    try:
        assert blinking.wait(60), "the register never asked for a touch"
        authfile.unlink()  # ... exactly now, alice swaps her file for a link to /etc/shadow
        _user_link(authfile, "/etc/shadow")
    finally:
        touched.set()
        worker.join(120)
    assert "exc" not in outcome, outcome.get("exc")
    _untouched(shadow)
    _refused_naming_the_link(outcome["res"], "/home/alice/.config/Yubico/u2f_keys")
    assert authfile.is_symlink()  # the link itself is alice's business; nothing was written behind it


# ------------------------------------------------------------------ item 10: mkdir, chmod, chown
def _swap_new_ssh_folder_for_link(monkeypatch: pytest.MonkeyPatch, target: Path) -> list[str]:
    """Every os.mkdir of a folder named .ssh is followed, at once, by the user replacing the new
    folder with their link to `target` (an absolute path outside the root): the worst moment."""
    real_mkdir = os.mkdir
    swapped: list[str] = []

    def mkdir(path: Any, mode: int = 0o777, *, dir_fd: int | None = None) -> None:
        real_mkdir(path, mode, dir_fd=dir_fd)
        if os.path.basename(os.fspath(path)) == ".ssh":
            os.rmdir(path, dir_fd=dir_fd)
            os.symlink(str(target), path, dir_fd=dir_fd)
            os.chown(path, 1000, 1000, dir_fd=dir_fd, follow_symlinks=False)
            swapped.append(os.fspath(path))

    monkeypatch.setattr(os, "mkdir", mkdir)
    return swapped


def _outside(tmp_path: Path) -> Path:
    outside = tmp_path / "outside-the-root"  # stands for the machine's own /etc
    outside.mkdir()
    outside.chmod(0o755)
    return outside


def test_mkdir_never_chowns_a_link_swapped_in_for_the_new_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "root"
    (root / "home/u").mkdir(parents=True)
    os.chown(root / "home/u", 1000, 1000)
    outside = _outside(tmp_path)
    swapped = _swap_new_ssh_folder_for_link(monkeypatch, outside)
    with pytest.raises(Refused, match="became a link"):
        Host(root).mkdir("/home/u/.ssh", 0o700, (1000, 1000))
    assert swapped
    st = outside.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid) == (0o755, 0, 0)


def test_ssh_keygen_making_ssh_folder_never_leaves_the_root(
    world: SshWorld, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outside = _outside(tmp_path)
    swapped = _swap_new_ssh_folder_for_link(monkeypatch, outside)
    res = world.yk("ssh", "keygen", "--user", "alice")
    assert swapped
    assert res.exit_code == 4 and "became a link" in res.stderr, res.output
    st = outside.stat()
    assert (st.st_mode & 0o7777, st.st_uid, st.st_gid, list(outside.iterdir())) == (0o755, 0, 0, [])


# ------------------------------------------------------------------ item 11: reads
def _pam_root(root: Path) -> None:
    (root / "etc/pam.d").mkdir(parents=True, exist_ok=True)
    (root / "etc/pam.d/sudo").write_text("auth sufficient pam_u2f.so cue origin=pam://ws1\n")


def test_pam_check_never_reads_a_users_authfile_link(world: SshWorld, cli: CliCall) -> None:
    _shadow(world.root)
    _pam_root(world.root)
    _user_link(world.home() / ".config/Yubico/u2f_keys", "/etc/shadow")
    for fmt in ((), ("--json",)):
        res = cli("--root", world.root, *fmt, "pam", "check")
        assert res.exit_code == 1, res.output
        assert "rootsecrethash" not in res.output and "Traceback" not in res.output
    findings = json.loads(res.stdout)["findings"]
    link = [f for f in findings if f["code"] == "authfile-link"]
    assert link and "symbolic link owned by uid 1000" in link[0]["message"], findings
    assert "/home/alice/.config/Yubico/u2f_keys" in link[0]["message"]
    checked = cli("--root", world.root, "--json", "verify", "--only", "pam,3")
    assert checked.exit_code in (0, 1) and "rootsecrethash" not in checked.output, checked.output


def test_reads_refuse_a_users_link_anywhere_on_the_path(tmp_path: Path) -> None:
    root = tmp_path / "root"
    shadow = _shadow(root)
    (root / "home/u").mkdir(parents=True)
    os.chown(root / "home/u", 1000, 1000)
    _user_link(root / "home/u/.config", "/etc")  # a folder link, not the file itself
    host = Host(root)
    with pytest.raises(Refused, match="will not follow it"):
        host.read_bytes("/home/u/.config/shadow")
    with pytest.raises(Refused, match="will not follow it"):
        host.path("/home/u/.config/shadow")
    # a root-owned link in a folder the user can write is refused too: the user could swap it
    os.symlink("/etc/shadow", root / "home/u/rootlink")
    with pytest.raises(Refused, match="folder uid 1000 can change"):
        host.read_bytes("/home/u/rootlink")
    _untouched(shadow)


def test_links_root_keeps_in_its_own_folders_are_still_followed_chroot_style(tmp_path: Path) -> None:
    """NixOS's /etc -> /etc/static -> /nix/store chain, a relative link, and a root link in a sticky
    folder (only root can swap it): read and written as before, and never outside the root."""
    root = tmp_path / "root"
    store = root / "nix/store/abc-etc/etc"
    store.mkdir(parents=True)
    (store / "u2f_mappings").write_text("alice:x\n")
    (root / "etc").mkdir()
    os.symlink("/nix/store/abc-etc/etc", root / "etc/static")
    os.symlink("static/u2f_mappings", root / "etc/u2f_mappings")
    (root / "tmp").mkdir(mode=0o1777)
    (root / "tmp").chmod(0o1777)
    os.symlink("/etc/u2f_mappings", root / "tmp/link")
    host = Host(root)
    assert host.read_bytes("/etc/u2f_mappings") == host.read_bytes("/tmp/link") == b"alice:x\n"
    assert host.path("/etc/u2f_mappings") == store / "u2f_mappings"
    host.write_file("/etc/u2f_mappings", b"alice:y\n", 0o644)  # the link's target is replaced
    assert (store / "u2f_mappings").read_bytes() == b"alice:y\n" and (root / "etc/u2f_mappings").is_symlink()
