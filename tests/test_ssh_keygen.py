"""`yktool ssh keygen` through the software key, read back by the real ssh-keygen."""

from __future__ import annotations

import tomllib
from collections.abc import Callable
from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.conftest import ChildRecorder, CliResult
from tests.fixtures.fido import SimKey
from tests.ssh_support import Es256OnlyKey, SshWorld, flags_from_ssh_keygen, sim_state, snapshot, world
from yktool.errors import ToolFailed
from yktool.fido.session import KeySession
from yktool.host import Host
from yktool.ssh.files import load_private, prove_files
from yktool.ssh.keys import SkPrivateKey, SkPublicKey

__all__ = ["world"]
PIN = "4321"


def _registry(w: SshWorld) -> dict[str, Any]:
    return tomllib.loads((w.root / "etc/yktool/keys.toml").read_text())


def test_default_key_files_read_back_by_ssh_keygen(world: SshWorld) -> None:
    res = world.yk("ssh", "keygen", "--user", "alice")
    assert res.exit_code == 0, res.output
    key, pub = world.ssh() / "id_ed25519_sk", world.ssh() / "id_ed25519_sk.pub"
    shown = world.run(["ssh-keygen", "-y", "-f", str(key)])
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == pub.read_bytes()
    assert pub.read_text().endswith(" alice@ws1\n")
    listed = world.run(["ssh-keygen", "-l", "-f", str(key)]).stdout.decode()
    assert listed.rstrip().endswith("alice@ws1 (ED25519-SK)")
    assert flags_from_ssh_keygen(world, key) == 0x01
    # modes and owner: the user's own files, private 0600, folder 0700
    assert (key.stat().st_mode & 0o777, pub.stat().st_mode & 0o777, world.ssh().stat().st_mode & 0o777) == (
        0o600,
        0o644,
        0o700,
    )
    assert {p.stat().st_uid for p in (key, pub, world.ssh())} == {1000}
    # the registry knows the key, its fingerprint, its files and its credential
    public, _ = SkPublicKey.parse_line(pub.read_text())
    entry = _registry(world)["keys"][0]["enrollments"][0]
    assert entry["kind"] == "ssh" and entry["fingerprint"] == public.fingerprint
    assert entry["path"] == "/home/alice/.ssh/id_ed25519_sk" and entry["pub_path"].endswith(".pub")
    import base64

    assert base64.b64decode(entry["credential_id"]) == SkPrivateKey.from_file(key.read_bytes()).key_handle
    assert public.fingerprint in listed


def test_ecdsa_sk(world: SshWorld) -> None:
    res = world.yk("--json", "ssh", "keygen", "--user", "bob", "--type", "ecdsa-sk", "--comment", "bob laptop")
    assert res.exit_code == 0, res.output
    key = world.ssh("bob") / "id_ecdsa_sk"
    listed = world.run(["ssh-keygen", "-l", "-f", str(key)]).stdout.decode()
    assert listed.rstrip().endswith("bob laptop (ECDSA-SK)")
    assert world.run(["ssh-keygen", "-y", "-f", str(key)]).stdout == (world.ssh("bob") / "id_ecdsa_sk.pub").read_bytes()
    assert key.stat().st_uid == 1001


@pytest.mark.parametrize(
    ("options", "flags"),
    [
        (["no-touch-required"], 0x00),
        (["verify-required"], 0x05),
        (["resident"], 0x21),
        (["resident", "verify-required", "no-touch-required"], 0x24),
    ],
)
def test_flags_byte_matches_options(world: SshWorld, sim_key: SimKey, options: list[str], flags: int) -> None:
    device = sim_key("pinned", pin=PIN)
    args = [a for o in options for a in ("-O", o)]
    res = world.yk("ssh", "keygen", "--user", "alice", "--pin-stdin", *args, input=PIN + "\n", device=device)
    assert res.exit_code == 0, res.output
    key = world.ssh() / "id_ed25519_sk"
    assert flags_from_ssh_keygen(world, key) == flags
    # the credential on the key carries the matching credProtect; resident ones are listed
    from yktool.fido import open_device

    session = KeySession(open_device(device), pin=PIN)
    resident = session.list_resident("ssh:")
    handle = SkPrivateKey.from_file(key.read_bytes()).key_handle
    if "resident" in options:
        assert [c.credential_id for c in resident] == [handle]
        assert resident[0].cred_protect == (3 if "verify-required" in options else 2)
        assert resident[0].user_id == b"\0" * 32 and resident[0].user_name == "openssh"
    else:
        assert resident == []


def test_application_and_user(world: SshWorld, sim_key: SimKey) -> None:
    device = sim_key("pinned", pin=PIN)
    res = world.yk(
        "ssh",
        "keygen",
        "--user",
        "alice",
        "--pin-stdin",
        "-O",
        "resident",
        "-O",
        "application=ssh:work",
        "-O",
        "user=alice",
        "--output",
        "/home/alice/.ssh/work",
        input=PIN + "\n",
        device=device,
    )
    assert res.exit_code == 0, res.output
    shown = world.run(["ssh-keygen", "-v", "-y", "-f", str(world.ssh() / "work")])
    assert b'sk_application: "ssh:work", sk_flags 0x21' in shown.stderr
    from yktool.fido import open_device

    creds = KeySession(open_device(device), pin=PIN).list_resident("ssh:work")
    assert [c.user_id for c in creds] == [b"alice".ljust(32, b"\0")]


def test_pin_never_leaves_memory(world: SshWorld, sim_key: SimKey, child_recorder: ChildRecorder) -> None:
    pin = "58203917264"  # long and odd, so a match cannot be a port, pid or temp-folder name by chance
    device = sim_key("pinned", pin=pin)
    res = world.yk(
        "--json",
        "ssh",
        "keygen",
        "--user",
        "alice",
        "--pin-stdin",
        "-O",
        "verify-required",
        input=pin + "\n",
        device=device,
    )
    assert res.exit_code == 0, res.output
    assert pin not in res.stdout
    assert child_recorder.children, "ssh-keygen should have read the key back"
    child_recorder.assert_no_secret(pin)
    for path in (world.root / "etc/yktool/keys.toml", world.ssh() / "id_ed25519_sk"):
        assert pin.encode() not in path.read_bytes()


# ------------------------------------------------------------------------------ bad input
def _unchanged(world: SshWorld, device: str, action: Callable[[], CliResult]) -> CliResult:
    before = snapshot(world.root), sim_state(device)
    res = action()
    assert (snapshot(world.root), sim_state(device)) == before
    return res


def test_existing_file_refused_without_force(world: SshWorld) -> None:
    assert world.yk("ssh", "keygen", "--user", "alice").exit_code == 0
    res = _unchanged(world, world.device, lambda: world.yk("ssh", "keygen", "--user", "alice"))
    assert res.exit_code == 4
    assert "already exists" in res.stderr and "--force" in res.stderr
    # --force replaces it, keeping a backup of the old file
    old = (world.ssh() / "id_ed25519_sk").read_bytes()
    assert world.yk("ssh", "keygen", "--user", "alice", "--force").exit_code == 0
    assert (world.ssh() / "id_ed25519_sk").read_bytes() != old
    backups = list((world.root / "var/backups/yktool/home/alice/.ssh").glob("id_ed25519_sk.*"))
    assert any(b.read_bytes() == old for b in backups)


@pytest.mark.parametrize("opt", ["bogus", "application=web", "device=/dev/hidraw0"])
def test_unknown_option_exit_2(world: SshWorld, opt: str) -> None:
    res = _unchanged(world, world.device, lambda: world.yk("ssh", "keygen", "--user", "alice", "-O", opt))
    assert res.exit_code == 2
    assert "hint:" in res.stderr
    assert "Traceback" not in res.output


def test_resident_needs_a_pin_on_the_key(world: SshWorld) -> None:
    res = _unchanged(world, world.device, lambda: world.yk("ssh", "keygen", "--user", "alice", "-O", "resident"))
    assert res.exit_code == 2
    assert "need a PIN" in res.stderr and "yktool key pin set" in res.stderr


@pytest.mark.parametrize("option", ["resident", "verify-required"])
def test_wrong_pin_exit_6_with_retries(world: SshWorld, sim_key: SimKey, option: str) -> None:
    device = sim_key("pinned", pin=PIN)
    before = snapshot(world.root)
    res = world.yk("ssh", "keygen", "--user", "alice", "--pin-stdin", "-O", option, input="9999\n", device=device)
    assert res.exit_code == 6, res.output
    assert "wrong PIN (7 attempts left)" in res.stderr
    assert snapshot(world.root) == before
    from yktool.fido import open_device

    session = KeySession(open_device(device), pin=PIN)
    assert session.list_resident() == []


@pytest.mark.parametrize("list_algorithms", [True, False])
def test_key_without_eddsa(world: SshWorld, monkeypatch: pytest.MonkeyPatch, list_algorithms: bool) -> None:
    import yktool.fido.devices as devices

    real_open_sim = devices.open_sim
    monkeypatch.setattr(
        devices,
        "open_sim",
        lambda path, *a, **k: Es256OnlyKey(real_open_sim(path, *a, **k), list_algorithms=list_algorithms),
    )
    res = _unchanged(world, world.device, lambda: world.yk("ssh", "keygen", "--user", "alice"))
    assert res.exit_code == 2
    assert "does not support Ed25519" in res.stderr and "--type ecdsa-sk" in res.stderr
    # the suggested way works on that key
    res = world.yk("ssh", "keygen", "--user", "alice", "--type", "ecdsa-sk")
    assert res.exit_code == 0, res.output
    assert "(ECDSA-SK)" in world.run(["ssh-keygen", "-l", "-f", str(world.ssh() / "id_ecdsa_sk")]).stdout.decode()


def test_touch_refused_exit_9(world: SshWorld, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("YKTOOL_SIM_PRESENCE", "deny")
    before = snapshot(world.root)
    res = world.yk("ssh", "keygen", "--user", "alice")
    assert res.exit_code == 9, res.output
    assert snapshot(world.root) == before


def test_unknown_user_and_existing_resident(world: SshWorld, sim_key: SimKey) -> None:
    res = _unchanged(world, world.device, lambda: world.yk("ssh", "keygen", "--user", "mallory"))
    assert res.exit_code == 2 and "mallory is not in" in res.stderr
    device = sim_key("pinned", pin=PIN)
    args = ("ssh", "keygen", "--user", "alice", "--pin-stdin", "-O", "resident")
    assert world.yk(*args, input=PIN + "\n", device=device).exit_code == 0
    # a second resident key for the same application and user would silently replace the first
    res = _unchanged(
        world, device, lambda: world.yk(*args, "--output", "/home/alice/.ssh/other", input=PIN + "\n", device=device)
    )
    assert res.exit_code == 4 and "already holds a resident SSH key" in res.stderr


def test_dry_run_changes_nothing(world: SshWorld) -> None:
    res = _unchanged(world, world.device, lambda: world.yk("--dry-run", "ssh", "keygen", "--user", "alice"))
    assert res.exit_code == 0 and "would make" in res.stdout


def test_output_path_under_root_only(world: SshWorld, tmp_path: Path) -> None:
    res = world.yk("ssh", "keygen", "--user", "alice", "--output", "../../../../outside")
    assert res.exit_code == 2
    assert not (tmp_path / "outside").exists()


def test_registry_names_each_physical_key(world: SshWorld, sim_key: SimKey) -> None:
    second = sim_key("b")
    assert world.yk("ssh", "keygen", "--user", "alice").exit_code == 0
    assert world.yk("ssh", "keygen", "--user", "bob", device=second).exit_code == 0
    # key "a" again: found by a silent probe of its first credential, not taken for a new key
    assert world.yk("ssh", "keygen", "--user", "alice", "--output", "/home/alice/.ssh/second").exit_code == 0
    assert world.yk("ssh", "authorize", "--user", "bob", "--pubkey", "/home/bob/.ssh/id_ed25519_sk.pub").exit_code == 0
    keys = {k["nickname"]: k["enrollments"] for k in _registry(world)["keys"]}
    assert sorted(keys) == ["backup-1", "primary"]
    assert sorted(e["path"] for e in keys["primary"]) == ["/home/alice/.ssh/id_ed25519_sk", "/home/alice/.ssh/second"]
    assert sorted(e["path"] for e in keys["backup-1"]) == [
        "/home/bob/.ssh/authorized_keys",
        "/home/bob/.ssh/id_ed25519_sk",
    ]


def test_json_error_on_stdout(world: SshWorld) -> None:
    import json

    res = _unchanged(world, world.device, lambda: world.yk("--json", "ssh", "keygen", "--user", "alice", "-O", "x"))
    assert res.exit_code == 2
    data = json.loads(res.stdout)
    assert data["ok"] is False and data["exit_code"] == 2 and "unknown -O option" in data["message"]


def test_a_flow_step_is_never_done_unproven_without_ssh_keygen(
    world: SshWorld, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The building block says "not checked" where ssh-keygen is missing; a flow's step (the
    proof required) fails with the fix instead, so it is not marked done unproven."""
    assert world.yk("ssh", "keygen", "--user", "alice").exit_code == 0
    host, path = Host(world.root), PurePosixPath("/home/alice/.ssh/id_ed25519_sk")
    key = load_private(host, path)
    assert prove_files(host, path, key, required=True) == "ssh-keygen -y reads the key back"
    monkeypatch.setenv("PATH", str(world.tmp / "no-tools"))
    assert prove_files(host, path, key).startswith("not checked")
    with pytest.raises(ToolFailed, match="ssh-keygen is not installed") as failed:
        prove_files(host, path, key, required=True)
    assert "openssh-client" in failed.value.hint
