"""`yktool ssh authorize`: every existing byte kept, no duplicates, read back by ssh-keygen -l."""

from __future__ import annotations

import os
from pathlib import Path, PurePosixPath

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.fixtures.fido import SimKey
from tests.ssh_support import SshWorld, snapshot, world
from yktool.authorized_keys import key_blob_in, merge, parse_line, remove_key, revoke
from yktool.errors import Refused
from yktool.host import Host
from yktool.ssh.keys import ED25519_SK, SkPublicKey

__all__ = ["world"]
PIN = "4321"

# a lived-in authorized_keys: options with quoted spaces and commas, comments, blank lines,
# CRLF line endings, trailing spaces, and no newline at the very end
OTHER_ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
EXISTING = (
    b"# keys for alice\r\n"
    b"\r\n"
    b'command="/usr/bin/backup --flag \\"x y\\"",no-pty,from="10.0.0.1,10.0.0.2" '
    + OTHER_ED.encode()
    + b" backup@host\r\n"
    b"   \r\n"
    b"# old laptop, disabled\r\n"
    b"#" + OTHER_ED.encode() + b" old\r\n"
    b"restrict " + OTHER_ED.encode() + b" trailing   "
)


def _keygen(w: SshWorld, *args: str, device: str | None = None, input: str | None = None) -> None:
    res = w.yk("ssh", "keygen", "--user", "alice", *args, device=device, input=input)
    assert res.exit_code == 0, res.output


def _fingerprints(w: SshWorld, path: Path) -> list[str]:
    res = w.run(["ssh-keygen", "-l", "-f", str(path)])
    assert res.returncode == 0, res.stderr
    # ssh-keygen keeps a CRLF file's \r in the comment it prints: split on \n only
    return [line.split()[1] for line in res.stdout.decode().split("\n") if line[:1].isdigit()]


def test_existing_lines_survive_byte_for_byte(world: SshWorld) -> None:
    _keygen(world)
    ak = world.ssh() / "authorized_keys"
    ak.write_bytes(EXISTING)
    ak.chmod(0o640)
    os.chown(ak, 1000, 1000)
    res = world.yk("ssh", "authorize", "--user", "alice")
    assert res.exit_code == 0, res.output
    data = ak.read_bytes()
    assert data.startswith(EXISTING)
    added = data[len(EXISTING) :]
    pub = (world.ssh() / "id_ed25519_sk.pub").read_text().rstrip("\n")
    assert added == b"\r\n" + pub.encode() + b"\r\n"  # the file's own CRLF style
    assert (ak.stat().st_mode & 0o777, ak.stat().st_uid) == (0o640, 1000)  # mode and owner kept
    public, _ = SkPublicKey.parse_line(pub)
    assert public.fingerprint in _fingerprints(world, ak)
    # again: nothing added, not a byte changed
    before = snapshot(world.root)
    res = world.yk("ssh", "authorize", "--user", "alice")
    assert res.exit_code == 0 and "nothing changed" in res.stdout
    assert snapshot(world.root) == before


def test_new_file_modes_owner_and_touch_options(world: SshWorld, sim_key: SimKey) -> None:
    device = sim_key("pinned", pin=PIN)
    _keygen(world, "--pin-stdin", "-O", "no-touch-required", "-O", "verify-required", device=device, input=PIN + "\n")
    res = world.yk("--json", "ssh", "authorize", "--user", "alice")
    assert res.exit_code == 0, res.output
    ak = world.ssh() / "authorized_keys"
    line = ak.read_text()
    assert line.startswith("no-touch-required,verify-required sk-ssh-ed25519@openssh.com AAAA")
    assert (ak.stat().st_mode & 0o777, ak.stat().st_uid) == (0o600, 1000)
    assert len(_fingerprints(world, ak)) == 1


def test_other_users_file_and_pubkey_only(world: SshWorld) -> None:
    _keygen(world)
    pub = world.ssh() / "id_ed25519_sk.pub"
    (world.root / "srv").mkdir()
    (world.root / "srv" / "alice.pub").write_bytes(pub.read_bytes())
    res = world.yk("ssh", "authorize", "--user", "bob", "--pubkey", "/srv/alice.pub")
    assert res.exit_code == 0, res.output
    ak = world.ssh("bob") / "authorized_keys"
    assert ak.read_bytes() == pub.read_bytes()
    assert (world.ssh("bob").stat().st_mode & 0o777, world.ssh("bob").stat().st_uid) == (0o700, 1001)


def test_same_key_with_other_options_is_not_duplicated(world: SshWorld) -> None:
    _keygen(world)
    pub = (world.ssh() / "id_ed25519_sk.pub").read_text().split()
    ak = world.ssh() / "authorized_keys"
    ak.write_text(f'from="192.0.2.1" {pub[0]} {pub[1]} hand-added\n')
    before = snapshot(world.home())
    res = world.yk("ssh", "authorize", "--user", "alice")
    assert res.exit_code == 0 and "already holds" in res.stdout
    assert snapshot(world.home()) == before
    # the registry still learns the key is authorized there (replace must find it)
    assert 'role = "authorized_keys"' in (world.root / "etc/yktool/keys.toml").read_text()


@pytest.mark.parametrize("content", [b"not a key\n", b"ssh-ed25519 AAAA\n", b""])
def test_malformed_pubkey_changes_nothing(world: SshWorld, content: bytes) -> None:
    (world.root / "bad.pub").write_bytes(content)
    (world.ssh()).mkdir()
    (world.ssh() / "authorized_keys").write_bytes(EXISTING)
    before = snapshot(world.root)
    res = world.yk("ssh", "authorize", "--user", "alice", "--pubkey", "/bad.pub")
    assert res.exit_code == 2, res.output
    assert "hint:" in res.stderr and "Traceback" not in res.output
    assert snapshot(world.root) == before


def test_no_key_yet(world: SshWorld) -> None:
    res = world.yk("ssh", "authorize", "--user", "alice")
    assert res.exit_code == 2 and "yktool ssh keygen" in res.stderr
    assert not world.ssh().exists()


def test_parse_line_sees_through_quoted_options() -> None:
    parsed = parse_line('command="echo sk-ssh-ed25519@openssh.com AAAA",no-pty ' + OTHER_ED + " c d\r\n")
    assert parsed is not None and parsed.key_type == "ssh-ed25519" and parsed.comment == "c d"
    assert parsed.options == 'command="echo sk-ssh-ed25519@openssh.com AAAA",no-pty'
    assert parse_line("# " + OTHER_ED) is None and parse_line("   ") is None


_line = st.text(alphabet=st.characters(exclude_categories=["Cs"], exclude_characters="\r\n"), max_size=60)


@settings(max_examples=100, deadline=None)
@given(
    lines=st.lists(_line, max_size=8),
    endings=st.lists(st.sampled_from(["\n", "\r\n"]), min_size=8, max_size=8),
    final=st.booleans(),
)
def test_merge_only_ever_appends(lines: list[str], endings: list[str], final: bool) -> None:
    text = "".join(line + end for line, end in zip(lines, endings, strict=False))
    if not final and text:
        text = text.rstrip("\r\n")
    existing = text.encode("utf-8")
    public = SkPublicKey(ED25519_SK, b"\x07" * 32, "ssh:")
    first = merge(existing, public, "c", [])
    assert first.added and first.data.startswith(existing)
    assert first.data.endswith(b"\n")
    assert merge(first.data, public, "c", ["no-touch-required"]).data == first.data


def test_central_file_needs_its_folder(world: SshWorld) -> None:
    _keygen(world)
    before = snapshot(world.root)
    res = world.yk("ssh", "authorize", "--user", "alice", "--file", "/etc/ssh/authorized_keys/alice")
    assert res.exit_code == 2 and "does not exist" in res.stderr
    assert snapshot(world.root) == before
    (world.root / "etc/ssh/authorized_keys").mkdir(parents=True)
    res = world.yk("ssh", "authorize", "--user", "alice", "--file", "/etc/ssh/authorized_keys/alice")
    assert res.exit_code == 0, res.output
    made = world.root / "etc/ssh/authorized_keys/alice"
    assert made.read_bytes() == (world.ssh() / "id_ed25519_sk.pub").read_bytes()
    assert (made.stat().st_mode & 0o777, made.stat().st_uid) == (0o600, 1000)


def test_revoke_keeps_every_other_byte(world: SshWorld) -> None:
    _keygen(world)
    ak = world.ssh() / "authorized_keys"
    ak.write_bytes(EXISTING)
    os.chown(ak, 1000, 1000)
    assert world.yk("ssh", "authorize", "--user", "alice").exit_code == 0
    public, _ = SkPublicKey.parse_line((world.ssh() / "id_ed25519_sk.pub").read_text())
    host = Host(world.root)
    assert revoke(host, PurePosixPath("/home/alice/.ssh/authorized_keys"), public) == 1
    assert ak.read_bytes() == EXISTING + b"\r\n"  # only the line terminator yktool had to add stays
    assert ak.stat().st_uid == 1000
    assert public.fingerprint not in _fingerprints(world, ak)
    assert revoke(host, PurePosixPath("/home/alice/.ssh/authorized_keys"), public) == 0


def test_revoke_refuses_to_empty_the_file(world: SshWorld) -> None:
    _keygen(world)
    assert world.yk("ssh", "authorize", "--user", "alice").exit_code == 0
    public, _ = SkPublicKey.parse_line((world.ssh() / "id_ed25519_sk.pub").read_text())
    before = snapshot(world.root)
    with pytest.raises(Refused):
        revoke(Host(world.root), PurePosixPath("/home/alice/.ssh/authorized_keys"), public)
    assert snapshot(world.root) == before


def test_key_found_after_principals_and_options() -> None:
    public = SkPublicKey(ED25519_SK, b"\x07" * 32, "ssh:")
    line = f'a@x,b@y namespaces="git",valid-after="20260101" {public.line()} c'
    assert key_blob_in(line) == public.blob()
    data, removed, others = remove_key((line + "\n# c\n" + OTHER_ED + "\n").encode(), public.blob())
    assert (data, removed, others) == (("# c\n" + OTHER_ED + "\n").encode(), 1, 1)
