"""`yktool ssh download` (like ssh-keygen -K): resident keys come back from the key itself."""

from __future__ import annotations

from pathlib import Path

from tests.fixtures.fido import SimKey
from tests.ssh_support import PASSWD, SshWorld, flags_from_ssh_keygen, sim_state, snapshot, world

__all__ = ["world"]
PIN = "4321"


def _make(w: SshWorld, device: str, *args: str) -> None:
    res = w.yk(
        "ssh", "keygen", "--user", "alice", "--pin-stdin", "-O", "resident", *args, input=PIN + "\n", device=device
    )
    assert res.exit_code == 0, res.output


def test_deleted_files_come_back_identical(world: SshWorld, sim_key: SimKey) -> None:
    device = sim_key("pinned", pin=PIN)
    _make(world, device, "-O", "no-touch-required", "--comment", "alice's key")
    _make(world, device, "-O", "application=ssh:work", "-O", "verify-required", "--output", "/home/alice/.ssh/work")
    # authorized_keys entries in the registry carry the same credential id: not a key file
    assert world.yk("ssh", "authorize", "--user", "alice").exit_code == 0
    assert world.yk("ssh", "authorize", "--user", "bob", "--pubkey", "/home/alice/.ssh/work.pub").exit_code == 0
    files = ["id_ed25519_sk", "id_ed25519_sk.pub", "work", "work.pub"]
    original = {name: (world.ssh() / name).read_bytes() for name in files}
    modes = {name: (world.ssh() / name).stat().st_mode for name in files}
    for name in files:
        (world.ssh() / name).unlink()
    res = world.yk("ssh", "download", "--user", "alice", "--pin-stdin", input=PIN + "\n", device=device)
    assert res.exit_code == 0, res.output
    assert sorted(p.name for p in world.ssh().iterdir()) == sorted([*files, "authorized_keys"])
    for name in files:
        assert (world.ssh() / name).read_bytes() == original[name], name
        assert (world.ssh() / name).stat().st_mode == modes[name]
        assert (world.ssh() / name).stat().st_uid == 1000
    assert flags_from_ssh_keygen(world, world.ssh() / "id_ed25519_sk") == 0x20  # resident, no touch
    assert flags_from_ssh_keygen(world, world.ssh() / "work") == 0x25
    # a second run finds everything in place and changes nothing
    before = snapshot(world.home())
    res = world.yk("ssh", "download", "--user", "alice", "--pin-stdin", input=PIN + "\n", device=device)
    assert res.exit_code == 0 and res.stdout.count("unchanged") == 2
    assert snapshot(world.home()) == before


def test_fresh_host_without_registry_gets_ssh_keygen_names(world: SshWorld, sim_key: SimKey, tmp_path: Path) -> None:
    device = sim_key("pinned", pin=PIN)
    _make(world, device)
    _make(world, device, "-O", "application=ssh:git", "-O", "user=alice", "--output", "/home/alice/.ssh/g")
    # another machine: same key, empty root
    other = tmp_path / "other"
    (other / "etc").mkdir(parents=True)
    (other / "etc" / "passwd").write_text(PASSWD)
    (other / "home" / "alice").mkdir(parents=True)
    res = world.cli(
        "--root", other, "--device", device, "ssh", "download", "--user", "alice", "--pin-stdin", input=PIN + "\n"
    )
    assert res.exit_code == 0, res.output
    ssh = other / "home" / "alice" / ".ssh"
    assert sorted(p.name for p in ssh.iterdir()) == [
        "id_ed25519_sk_rk",
        "id_ed25519_sk_rk.pub",
        "id_ed25519_sk_rk_git_alice",
        "id_ed25519_sk_rk_git_alice.pub",
    ]
    for name in ("id_ed25519_sk_rk", "id_ed25519_sk_rk_git_alice"):
        shown = world.run(["ssh-keygen", "-y", "-f", str(ssh / name)])
        assert shown.returncode == 0 and shown.stdout == (ssh / f"{name}.pub").read_bytes()
    # same key material as the originals; the comment is the application, as ssh-keygen -K does
    assert (ssh / "id_ed25519_sk_rk.pub").read_text().split()[:2] == (
        world.ssh() / "id_ed25519_sk.pub"
    ).read_text().split()[:2]
    assert (ssh / "id_ed25519_sk_rk_git_alice.pub").read_text().split()[2] == "ssh:git"
    assert flags_from_ssh_keygen(world, ssh / "id_ed25519_sk_rk") == 0x21


def test_differing_file_refused_and_wrong_pin(world: SshWorld, sim_key: SimKey) -> None:
    device = sim_key("pinned", pin=PIN)
    _make(world, device)
    (world.ssh() / "id_ed25519_sk.pub").write_text("something else\n")
    before = snapshot(world.root), sim_state(device)
    res = world.yk("ssh", "download", "--user", "alice", "--pin-stdin", input=PIN + "\n", device=device)
    assert res.exit_code == 4 and "differs" in res.stderr
    after_refusal = snapshot(world.root)
    assert after_refusal == before[0]
    res = world.yk("ssh", "download", "--user", "alice", "--pin-stdin", input="0000\n", device=device)
    assert res.exit_code == 6 and "attempts left" in res.stderr
    assert snapshot(world.root) == before[0]


def test_key_without_resident_keys_or_pin(world: SshWorld, sim_key: SimKey) -> None:
    device = sim_key("pinned", pin=PIN)
    res = world.yk("ssh", "download", "--user", "alice", "--pin-stdin", input=PIN + "\n", device=device)
    assert res.exit_code == 0 and "no resident SSH keys" in res.stderr
    assert not world.ssh().exists()
    res = world.yk("ssh", "download", "--user", "alice")  # key "a" has no PIN
    assert res.exit_code == 2 and "PIN" in res.stderr


def test_download_for_another_user_stays_in_their_home(world: SshWorld, sim_key: SimKey) -> None:
    device = sim_key("pinned", pin=PIN)
    _make(world, device)
    res = world.yk("ssh", "download", "--user", "bob", "--pin-stdin", input=PIN + "\n", device=device)
    assert res.exit_code == 0, res.output
    assert (world.ssh("bob") / "id_ed25519_sk").read_bytes() == (world.ssh() / "id_ed25519_sk").read_bytes()
    assert (world.ssh("bob") / "id_ed25519_sk").stat().st_uid == 1001
