"""OpenSSH through libfido2 against the emulated key: ssh-keygen enrolls a resident key on it,
`ssh-keygen -K` and `yktool ssh download` read back the same public keys, and a throwaway sshd on
the guest's 127.0.0.1 lets in the key `yktool ssh keygen` made (verify-required: the PIN, and a
touch approved through the emulator's control socket) until `yktool replace --lost` revokes it.
One emulated key (with a PIN) for the module."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fido2.ctap2.base import Ctap2
from fido2.ctap2.pin import ClientPin

from tests.vm.ssh_support import PIN, Yk, public_blobs, scratch_root, sshd, timed, tool_env
from tests.vm.support import Key, plug, run, touches
from yktool.fido.softkey import SoftKey


@dataclass
class World:
    base: Path
    key: Key
    yk: Yk
    env: dict[str, str]
    backup: str  # sim:PATH of a second key, kept (used as --device, no emulator needed)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("openssh")
    state, backup = base / "primary.json", base / "backup.json"
    ClientPin(Ctap2(SoftKey(state))).set_pin(PIN)
    SoftKey(backup)
    with timed("plug"):
        key = plug(state, base / "emulated")
    try:
        yield World(base, key, Yk(scratch_root(base)), tool_env(base), f"sim:{backup}")
    finally:
        key.stop()
        key.gone()


def test_openssh_enrolls_a_resident_key_and_yktool_downloads_the_same(world: World) -> None:
    made = world.base / "openssh"
    made.mkdir()
    with touches(world.key, "ssh-keygen -t ed25519-sk -O resident (enroll)"), timed("ssh-keygen -t ed25519-sk"):
        r = run(
            [
                "ssh-keygen",
                "-t",
                "ed25519-sk",
                "-O",
                "resident",
                "-O",
                "application=ssh:yk",
                "-N",
                "",
                "-C",
                "made-by-openssh",
                "-f",
                made / "id_yk",
            ],
            env=world.env,
        )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ED25519-SK" in run(["ssh-keygen", "-l", "-f", made / "id_yk.pub"], check=True).stdout

    downloaded = world.base / "ssh-keygen-K"
    downloaded.mkdir()
    with touches(world.key, "ssh-keygen -K (download)"), timed("ssh-keygen -K"):
        r = subprocess.run(
            ["ssh-keygen", "-K", "-N", ""],
            cwd=downloaded,
            env=world.env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    assert r.returncode == 0, r.stdout + r.stderr
    from_openssh = public_blobs(*downloaded.glob("*.pub"))

    world.yk(
        world.key.spec,
        "ssh",
        "download",
        "--user",
        "alice",
        "--output-dir",
        "/downloaded",
        "--pin-stdin",
        input=PIN + "\n",
    )
    from_yktool = public_blobs(*(world.yk.root / "downloaded").glob("*.pub"))
    assert from_openssh == from_yktool == public_blobs(made / "id_yk.pub")


def test_sshd_accepts_the_yktool_key_until_replace_revokes_it(world: World) -> None:
    yk, ssh_dir = world.yk, world.yk.root / "home/alice/.ssh"
    yk(world.key.spec, "ssh", "keygen", "-O", "verify-required", "--user", "alice", "--pin-stdin", input=PIN + "\n")
    yk(world.key.spec, "ssh", "authorize", "--user", "alice")
    # the backup's key, also let in: replace needs a key that is still there and answers
    yk(world.backup, "ssh", "keygen", "--user", "alice", "-f", "/home/alice/.ssh/id_backup_sk", "--nickname", "backup")
    yk(
        world.backup,
        "ssh",
        "authorize",
        "--user",
        "alice",
        "--pubkey",
        "/home/alice/.ssh/id_backup_sk.pub",
        "--nickname",
        "backup",
    )
    authorized = ssh_dir / "authorized_keys"
    assert "verify-required" in authorized.read_text()
    identity = ssh_dir / "id_ed25519_sk"

    with timed("sshd start"), sshd(world.base, authorized) as server, timed("sshd session"):
        world.key.control("policy ask")  # the touch is given through the control socket
        try:
            with touches(world.key, "ssh login (verify-required: PIN + touch)"), timed("ssh login"):
                login = server.ssh(identity, world.env, world.base)
                assert world.key.control("wait 90", timeout=100) == "ok waiting", server.log.read_text()
                assert world.key.control("approve") == "ok approved"
                out, err = login.communicate(timeout=120)
        finally:
            world.key.control("policy auto")
        assert login.returncode == 0 and out.strip() == "logged-in", err + server.log.read_text()
        assert "Accepted publickey for root" in server.log.read_text()
        assert "ED25519-SK" in server.log.read_text()

        # the key is lost: revoked with the backup present (probes are silent). Its key files
        # stay usable elsewhere (a copy, as on another machine): sshd must refuse them now.
        kept = world.base / "lost-copy"
        kept.mkdir()
        for f in (identity, identity.with_name(identity.name + ".pub")):
            shutil.copy2(f, kept / f.name)
        blob = (kept / "id_ed25519_sk.pub").read_text().split()[1]
        out = yk(world.backup, "--yes", "replace", "--lost", "primary")
        assert blob not in authorized.read_text(), out
        assert "id_backup_sk" in out or authorized.read_text().count("sk-ssh-ed25519") == 1, out  # backup kept
        with touches(world.key, "ssh login after replace --lost (refused)"), timed("ssh refused"):
            again = server.ssh(kept / "id_ed25519_sk", world.env, world.base)
            out, err = again.communicate(timeout=120)
        assert again.returncode == 255 and "logged-in" not in out, out + err
        assert "Permission denied (publickey)" in err, err
