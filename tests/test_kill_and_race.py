"""Every command that changes a root: killed with SIGKILL at varied moments (kill -9 loop), and run
twice at once. After every kill, and after the run that finishes the job:

- the passphrase still opens the image;
- every credential enrolled earlier is still in the authfile (and the other shared files: the
  earlier authorized_keys, allowed_signers, udev and USBGuard lines) and in the registry;
- the registry agrees with the LUKS header (after the finishing run: each FIDO2 token is recorded
  once, each record points at a token and keyslot that exist).

The kill points are named (`module:function:before|after[#N]`, see race_support): a file write,
a child command (cryptsetup, systemd-cryptenroll), a registry save. Each test is bounded: a few
points, one finishing run, one pair of runs at once.
"""

from __future__ import annotations

import base64
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests import race_support as rs
from tests.conftest import CliCall
from tests.fixtures.luks import LuksImage
from tests.fixtures.tpm import SoftTpm
from tests.test_concurrency import inside, make_world
from yktool.host import Host
from yktool.inventory import Registry
from yktool.luks.header import read_header
from yktool.luks.tokens import Fido2Token
from yktool.pam.authfile import Authfile

pytestmark = pytest.mark.slow

OTHER_ED = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl"
AUTHORIZED = f"# earlier keys\n{OTHER_ED} backup@host\n"
SIGNERS = f'old@example.com namespaces="git" {OTHER_ED}\n'
# just before the first file write, and just after it (before the registry is saved)
WRITES = ["yktool.host:Host.write_file:before#1", "yktool.host:Host.write_file:after#1"]
SAVE = "yktool.inventory:Registry.save:before"


@dataclass
class World:
    root: Path
    tmp: Path
    image: LuksImage
    cli: CliCall
    sim_key: Callable[..., str]
    earlier_pam: set[str] = field(default_factory=set)
    earlier_lines: dict[str, list[str]] = field(default_factory=dict)  # file inside the root -> lines

    @property
    def dev(self) -> str:
        return inside(self.root, self.image.path)

    @property
    def key_file(self) -> str:
        return inside(self.root, self.image.key_file)

    def args(self, *args: object, device: str | None = None) -> list[object]:
        return ["--root", self.root, *(["--device", device] if device else []), *args]

    def file(self, path: str) -> Path:
        return self.root / path.lstrip("/")

    def check(self) -> None:
        """What must hold after any kill: the way in, the earlier credentials and lines."""
        assert self.image.opens_with(self.image.passphrase), "the passphrase no longer opens the image"
        registry = Registry.load(Host(self.root))  # parses: never a torn write
        recorded = {str(e["credential_id"]) for _, e in registry.enrollments("pam")}
        text = self.file("/etc/u2f_mappings").read_text()
        on_line = {
            base64.b64encode(c.credential_id).decode()
            for c in Authfile.parse(text).credentials_of("alice")
            if c.credential_id is not None
        }
        assert self.earlier_pam <= on_line and self.earlier_pam <= recorded, "an earlier pam credential is lost"
        for path, lines in self.earlier_lines.items():
            now = self.file(path).read_text().splitlines()
            assert all(line in now for line in lines), f"an earlier line of {path} is lost"

    def header_agrees(self) -> None:
        """The registry's LUKS records and the header's FIDO2 tokens are the same set."""
        header = read_header(Host(), str(self.image.path))
        registry = Registry.load(Host(self.root))
        records = [e for _, e in registry.enrollments("luks") if e.get("uuid") == header.uuid]
        tokens = [t for t in header.tokens_of_type("systemd-fido2") if isinstance(t, Fido2Token)]
        for e in records:
            token = header.tokens.get(int(e["token"]))
            assert isinstance(token, Fido2Token) and token.credential == e["credential_id"], e
            assert int(e["keyslot"]) in header.keyslots and int(e["keyslot"]) in token.keyslots, e
        assert sorted(t.credential for t in tokens) == sorted(str(e["credential_id"]) for e in records)
        assert all(t.keyslots and all(k in header.keyslots for k in t.keyslots) for t in header.tokens.values())


@pytest.fixture
def world(root: Path, tmp_path: Path, cli: CliCall, sim_key: Callable[..., str]) -> World:
    """A root with alice, a LUKS2 image, and what an earlier key left: a pam credential, and lines
    in authorized_keys, allowed_signers, the udev rules and USBGuard's rules.conf."""
    image = make_world(root)
    home = root / "home/alice"
    (home / ".ssh").mkdir(parents=True)
    for p in (home, home / ".ssh"):
        os.chown(p, 1000, 1000)
    (home / ".ssh/authorized_keys").write_text(AUTHORIZED)
    (home / ".ssh/allowed_signers").write_text(SIGNERS)
    w = World(root, tmp_path, image, cli, sim_key)
    old = sim_key("old")
    assert cli(*w.args("pam", "register", "--user", "alice", "--nickname", "old", device=old)).exit_code == 0
    usb = ["--vendor", "1050", "--product", "0407", "--serial", "111", "--name", "YubiKey"]
    assert cli(*w.args("udev", "install", "--nickname", "old", *usb)).exit_code == 0
    assert cli(*w.args("usbguard", "allow", "--nickname", "old", *usb, "--interface", "03:00:00")).exit_code == 0
    creds = Authfile.parse(w.file("/etc/u2f_mappings").read_text()).credentials_of("alice")
    w.earlier_pam = {base64.b64encode(c.credential_id).decode() for c in creds if c.credential_id is not None}
    assert len(w.earlier_pam) == 1
    w.earlier_lines = {
        "/home/alice/.ssh/authorized_keys": AUTHORIZED.splitlines(),
        "/home/alice/.ssh/allowed_signers": SIGNERS.splitlines(),
        "/etc/udev/rules.d/85-yktool-lock.rules": [
            ln
            for ln in w.file("/etc/udev/rules.d/85-yktool-lock.rules").read_text().splitlines()
            if ln.startswith("ACTION")
        ],
        "/etc/usbguard/rules.conf": [
            ln for ln in w.file("/etc/usbguard/rules.conf").read_text().splitlines() if ln.startswith("allow")
        ],
    }
    w.check()
    return w


def _usb(serial: str, *, interface: bool = True) -> list[object]:
    return [
        "--vendor",
        "1050",
        "--product",
        "0407",
        "--serial",
        serial,
        "--name",
        "YubiKey",
        *(["--interface", "03:00:00"] if interface else []),
    ]


def _enroll_fido2(w: World, key: str, nickname: str) -> list[object]:
    return w.args("luks", "enroll-fido2", w.dev, "--unlock-key-file", w.key_file, "--nickname", nickname, device=key)


# ---------------------------------------------------------------------------------------- LUKS
def test_enroll_fido2_killed_anywhere_and_two_at_once(world: World) -> None:
    w = world
    assert w.cli(*_enroll_fido2(w, w.sim_key("old"), "old")).exit_code == 0
    points = ["yktool.luks.fido2:add_keyslot:after", "yktool.luks.fido2:import_token:after", SAVE]
    assert rs.kill_loop(w.tmp, _enroll_fido2(w, w.sim_key("n1"), "n1"), points, w.check) >= 3
    w.header_agrees()
    # two new keys at once, both held before their keyslot is added (they would pick the same one)
    runs = rs.together(
        w.tmp,
        (_enroll_fido2(w, w.sim_key("n2"), "n2"), None),
        (_enroll_fido2(w, w.sim_key("n3"), "n3"), None),
        delay="yktool.luks.fido2:add_keyslot=0.25",
    )
    assert [r.returncode for r in runs] == [0, 0], [r.output for r in runs]
    w.check()
    w.header_agrees()
    assert len(read_header(Host(), str(w.image.path)).tokens_of_type("systemd-fido2")) == 4


def test_enroll_tpm2_killed_anywhere_and_two_at_once(world: World, measured_tpm: SoftTpm) -> None:
    w = world
    args = ["--tpm", measured_tpm.tcti, *w.args("luks", "enroll-tpm2", w.dev, "--unlock-key-file", w.key_file)]
    points = ["yktool.luks.cryptenroll:enroll_tpm2:after", "yktool.host:Host.run:after#2"]
    assert rs.kill_loop(w.tmp, args, points, w.check) >= 1
    runs = rs.together(w.tmp, (args, None), (args, None), delay="yktool.luks.cryptenroll:enroll_tpm2=0.3")
    assert [r.returncode for r in runs] == [0, 0], [r.output for r in runs]
    w.check()
    assert len(read_header(Host(), str(w.image.path)).tokens_of_type("systemd-tpm2")) == 1


def _shown(run: rs.Run) -> list[bytes]:
    return [ln.strip().encode() for ln in run.stderr.splitlines() if ln.strip().count("-") == 7]


def test_add_recovery_killed_anywhere_and_two_at_once(world: World) -> None:
    w = world
    args = w.args("luks", "add-recovery", w.dev, "--unlock-key-file", w.key_file, "--key-to-stderr")
    assert rs.kill_loop(w.tmp, args, ["yktool.luks.cryptenroll:enroll_recovery:after"], w.check) == 1
    # the finishing run showed a key that opens; and --replace killed after showing the new key,
    # before the old one went, leaves two keys that someone saw (never none)
    replace = [*args, "--replace"]
    assert rs.kill_at(w.tmp, replace, "yktool.luks.cryptenroll:wipe_slots:before")
    w.check()
    assert len(read_header(Host(), str(w.image.path)).slots_with_role("recovery")) == 2
    runs = rs.together(w.tmp, (replace, None), (replace, None), delay="yktool.luks.cryptenroll:enroll_recovery=0.3")
    assert [r.returncode for r in runs] == [0, 0], [r.output for r in runs]
    w.check()
    header = read_header(Host(), str(w.image.path))
    [slot] = header.slots_with_role("recovery")
    last = _shown(runs[0]) + _shown(runs[1])
    assert len(last) == 2 and w.image.opens_with(last[-1]) != w.image.opens_with(last[0])


def test_wipe_killed_anywhere(world: World) -> None:
    """Wiping an earlier key's FIDO2 slot, killed after each child command: the re-run heals the
    token and the registry record a killed run left, and the registry agrees with the header."""
    w = world
    assert w.cli(*_enroll_fido2(w, w.sim_key("old"), "old")).exit_code == 0
    [token] = read_header(Host(), str(w.image.path)).tokens_of_type("systemd-fido2")
    args = w.args("--yes", "luks", "wipe", w.dev, "--slot", token.keyslots[0])
    points = ["yktool.luks.cryptenroll:remove_orphan_tokens:before", SAVE]
    assert rs.kill_loop(w.tmp, args, points, w.check) >= 1
    w.header_agrees()
    assert not read_header(Host(), str(w.image.path)).tokens


# -------------------------------------------------------------------------------- shared files
def test_pam_register_killed_anywhere(world: World) -> None:
    w = world
    args = w.args("pam", "register", "--user", "alice", "--nickname", "n1", device=w.sim_key("n1"))
    assert rs.kill_loop(w.tmp, args, [*WRITES, SAVE], w.check) >= 2
    text = w.file("/etc/u2f_mappings").read_text()
    assert len(Authfile.parse(text).credentials_of("alice")) == 2


def _keygen(w: World, key: str, name: str) -> str:
    res = w.cli(*w.args("ssh", "keygen", "--user", "alice", "--output", f"/home/alice/.ssh/{name}", device=key))
    assert res.exit_code == 0, res.output
    return f"/home/alice/.ssh/{name}.pub"


def test_ssh_authorize_killed_anywhere_and_two_at_once(world: World) -> None:
    w = world
    pubs = [_keygen(w, w.sim_key(n), f"id_{n}") for n in ("n1", "n2", "n3")]
    args = [
        w.args("ssh", "authorize", "--user", "alice", "--pubkey", p, "--nickname", f"n{i + 1}")
        for i, p in enumerate(pubs)
    ]
    assert rs.kill_loop(w.tmp, args[0], [*WRITES, SAVE], w.check) >= 2
    runs = rs.together(w.tmp, (args[1], None), (args[2], None), delay="yktool.host:Host.write_file=0.3")
    assert [r.returncode for r in runs] == [0, 0], [r.output for r in runs]
    w.check()
    text = w.file("/home/alice/.ssh/authorized_keys").read_text()
    assert all(w.file(p).read_text().split()[1] in text for p in pubs)


def test_git_signing_killed_anywhere_and_two_at_once(world: World) -> None:
    w = world
    pubs = [_keygen(w, w.sim_key(n), f"id_{n}") for n in ("n1", "n2", "n3")]
    args = [
        w.args("git", "signing", "--email", f"{n}@example.com", "--user", "alice", "--key", p)
        for n, p in zip(("n1", "n2", "n3"), pubs, strict=True)
    ]
    assert rs.kill_loop(w.tmp, args[0], [*WRITES, SAVE], w.check) >= 2
    runs = rs.together(w.tmp, (args[1], None), (args[2], None), delay="yktool.host:Host.write_file=0.3")
    assert [r.returncode for r in runs] == [0, 0], [r.output for r in runs]
    w.check()
    signers = w.file("/home/alice/.ssh/allowed_signers").read_text()
    assert all(f"{n}@example.com" in signers for n in ("n1", "n2", "n3")), signers


def test_udev_install_killed_anywhere_and_two_at_once(world: World) -> None:
    w = world
    args = [w.args("udev", "install", "--nickname", f"n{i}", *_usb(f"22{i}", interface=False)) for i in (1, 2, 3)]
    assert rs.kill_loop(w.tmp, args[0], [*WRITES, SAVE], w.check) >= 2
    runs = rs.together(w.tmp, (args[1], None), (args[2], None), delay="yktool.host:Host.write_file=0.3")
    assert [r.returncode for r in runs] == [0, 0], [r.output for r in runs]
    w.check()
    rules = w.file("/etc/udev/rules.d/85-yktool-lock.rules").read_text()
    assert all(f"# yktool-key: n{i}" in rules for i in (1, 2, 3)), rules


def test_usbguard_allow_killed_anywhere_and_two_at_once(world: World) -> None:
    w = world
    args = [w.args("usbguard", "allow", "--nickname", f"n{i}", *_usb(f"33{i}")) for i in (1, 2, 3)]
    assert rs.kill_loop(w.tmp, args[0], [*WRITES, SAVE], w.check) >= 2
    runs = rs.together(w.tmp, (args[1], None), (args[2], None), delay="yktool.host:Host.write_file=0.3")
    assert [r.returncode for r in runs] == [0, 0], [r.output for r in runs]
    w.check()
    rules = w.file("/etc/usbguard/rules.conf").read_text()
    assert all(f'serial "33{i}"' in rules for i in (1, 2, 3)), rules
    registry = Registry.load(Host(w.root))
    assert {k.nickname for k, _ in registry.enrollments("usbguard")} >= {"old", "n1", "n2", "n3"}
