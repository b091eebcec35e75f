"""Both flows end to end over HID (issue 14): `yktool --device auto --yes commission` on a LUKS2
image in a scratch root, the backup step done as a person does it: when commission says "remove
the other key and insert your backup key", the primary's emulator is stopped (a real unplug) and
the backup's started, while commission waits for the swap. Then the real consumers accept each
key: systemd-cryptsetup maps the disk (and the TPM2 does), pam_u2f through pamtester lets it in,
sshd on the guest's 127.0.0.1 takes its SSH key. Then the primary is lost: `yktool replace --lost
primary` with the backup and a new key (swapped the same way); afterwards the lost key's state,
emulated again, is refused by all three, and the new key is accepted.

commission and replace run once for the module (forked from pytest: the real CLI, as a separate
process, so that the test can swap keys while it waits); the touches each key saw go to the tier's
summary, next to what yktool counted."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.fixtures.luks import make_image
from tests.vm.ssh_support import PIN, Sshd, sshd, timed, tool_env
from tests.vm.support import (
    PAM_ORIGIN,
    Key,
    Mapper,
    fork_cli,
    pamtester,
    plug,
    record_touches,
    run,
    touches,
    wait_exit,
)
from yktool.demo import IMAGE, VERIFY_ITEMS, build_root
from yktool.host import Host

EMAIL = "alice@vm1.example"
FIDO2 = "fido2-device=auto,headless=true,token-timeout=10s"
TPM2 = "tpm2-device=auto,headless=true"
KEY_FILE = f"{IMAGE}.key"  # the volume's passphrase, inside the root (make_image puts it there)
SSH = "home/alice/.ssh"
COMMISSION_SWAP = "Now remove the other key and insert your backup key (backup)."
REPLACE_SWAP = "Now remove the other keys and insert the new key."


@dataclass
class Flows:
    base: Path
    root: Path
    server: Sshd
    env: dict[str, str]
    plugged: Key | None = None
    names: dict[str, str] = field(default_factory=dict)  # hidraw serial -> key name, for the log

    @property
    def image(self) -> Path:
        return self.root / str(IMAGE).lstrip("/")

    def plug(self, name: str) -> Key:
        """The key in the port is pulled (a clean unplug) and `name`'s put in."""
        self.unplug()
        with timed(f"plug {name}"):
            key = plug(self.base / "keys" / f"{name}.json", self.base / "emulated")
        self.plugged, self.names[key.serial] = key, name
        return key

    def unplug(self) -> None:
        if self.plugged is not None:
            self.plugged.stop()
            assert self.plugged.gone(), f"{self.plugged.hidraw} is still there"
            self.plugged = None

    def name(self) -> str:
        assert self.plugged is not None
        return self.names[self.plugged.serial]

    def run_flow(self, flow: str, argv: list[str], pins: str, marker: str, swap_to: str) -> tuple[str, dict[str, int]]:
        """`yktool ARGV` with PIN lines on stdin; when it prints `marker` (the swap instruction),
        the key in the port is swapped for `swap_to`'s. Its stdout, and the touches each key
        approved (by key name)."""
        stdin, out, err = (self.base / f"{flow}.{ext}" for ext in ("stdin", "out", "err"))
        stdin.write_text(pins)
        stdin.chmod(0o600)
        out.write_text("")
        err.write_text("")  # there before the child opens it: read from the first poll on
        assert self.plugged is not None
        first, before = self.name(), self.plugged.counts()
        start = time.monotonic()
        pid = fork_cli(["--root", str(self.root), *argv], stdout=out, stderr=err, stdin=stdin)
        status: int | None = None
        try:
            while marker not in err.read_text(errors="replace"):
                status = wait_exit(pid, 0.2)
                assert status is None, (
                    f"yktool {flow} exited {status} before the swap:\n{out.read_text()}\n{err.read_text()}"
                )
                assert time.monotonic() - start < 300, f"no swap instruction:\n{err.read_text()}"
            after = self.plugged.counts()
            record_touches(f"yktool {flow}: the {first} key's steps", before, after)
            approved = {first: after.get("approved", 0) - before.get("approved", 0)}
            key = self.plug(swap_to)
            before = key.counts()
            status = wait_exit(pid, 300)
            after = key.counts()
            record_touches(f"yktool {flow}: the {swap_to} key's steps", before, after)
            approved[swap_to] = after.get("approved", 0) - before.get("approved", 0)
        finally:
            if status is None:
                os.kill(pid, signal.SIGKILL)
                wait_exit(pid, 10)
            print(f"vm-time {time.monotonic() - start:5.1f}s  yktool {flow} (with the swap)", flush=True)
        text = out.read_text()
        assert status == 0, f"yktool {flow} exited {status}:\n{text}\n{err.read_text()}"
        said = re.search(r"touches and PIN entries: (.*)", text)
        print(f"yktool {flow} counted: {said.group(1) if said else '?'}; the keys approved: {approved}", flush=True)
        return text, approved

    # ------------------------------------------------------------------ the three consumers
    def attach(self, mapper: Mapper) -> tuple[bool, int]:
        """systemd-cryptsetup maps the disk as at boot with the key in the port (the PIN from $PIN:
        the tokens need one), the FIDO2 tokens alone; (mapped, touches approved)."""
        key = self._key()
        header = self.fido2_only_header()
        before = key.counts()
        with timed(f"attach, the {self.name()} key"):
            r = mapper.attach("vmflows", self.image, f"header={header},{FIDO2}", env={"PIN": PIN})
        after = key.counts()
        record_touches(f"systemd-cryptsetup attach, the {self.name()} key", before, after)
        opened = r.returncode == 0 and mapper.mapped("vmflows")
        mapper.detach("vmflows")
        return opened, after.get("approved", 0) - before.get("approved", 0)

    def fido2_only_header(self) -> Path:
        """The volume's header as it is now, without its TPM2 token (for crypttab's header=).

        With the TPM2 token there, the TPM2 opens the disk (no touch) before any key is asked; and
        were its PCR policy broken, systemd 252 would try the TPM2 token with $PIN first and give
        up at its refusal ("State not recoverable"), never offering the PIN to a FIDO2 token."""
        header = self.base / "header-fido2-only"
        header.unlink(missing_ok=True)
        run(["cryptsetup", "luksHeaderBackup", self.image, "--header-backup-file", header], check=True)
        dump = run(["cryptsetup", "luksDump", "--dump-json-metadata", header], check=True).stdout
        for token_id, token in json.loads(dump)["tokens"].items():
            if token["type"] == "systemd-tpm2":
                run(["cryptsetup", "token", "remove", "--token-id", token_id, header], check=True)
        return header

    def attach_tpm2(self, mapper: Mapper) -> bool:
        with timed("attach, the TPM2"):
            r = mapper.attach("vmflows", self.image, TPM2)
        opened = r.returncode == 0 and mapper.mapped("vmflows")
        mapper.detach("vmflows")
        return opened

    def pam(self) -> tuple[bool, str]:
        """pam_u2f lets the user in with the key in the port (alice's line, checked as root's:
        pamtester runs as root, and the guest has no alice)."""
        lines = (self.root / "etc/u2f_mappings").read_text().splitlines()
        alice = [ln for ln in lines if ln.startswith("alice:")]
        assert len(alice) == 1, lines
        authfile = self.base / "u2f_root"
        authfile.write_text("root:" + alice[0].split(":", 1)[1] + "\n")
        with touches(self._key(), f"pam_u2f auth, the {self.name()} key"), timed("pamtester"):
            return pamtester(self.base, authfile, origin=PAM_ORIGIN)

    def ssh(self, identity: Path) -> tuple[bool, str]:
        """An ssh login to the throwaway sshd with `identity` (a touch on the key in the port)."""
        with touches(self._key(), f"ssh login, the {self.name()} key ({identity.name})"), timed("ssh login"):
            login = self.server.ssh(identity, self.env, self.base)
            out, err = login.communicate(timeout=120)
        return login.returncode == 0 and out.strip() == "logged-in", err

    def _key(self) -> Key:
        assert self.plugged is not None
        return self.plugged


def counted(flow_output: str, role: str) -> int:
    """The touches yktool says it asked of a key (its report's "touches and PIN entries" line)."""
    found = re.search(rf"\b{re.escape(role)}: (\d+) touch", flow_output)
    assert found, flow_output
    return int(found.group(1))


@dataclass
class Commissioned:
    flows: Flows
    report: str  # commission's stdout
    approved: dict[str, int]  # touches each key approved during it


@pytest.fixture(scope="module")
def commissioned(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Commissioned]:
    """A host commissioned over HID with a primary and a backup key, the backup in the port."""
    base = tmp_path_factory.mktemp("flows")
    root = base / "root"
    build_root(Host(root))  # the demo's scratch root: passwd, sshd_config, pam.d, crypttab, alice's home
    make_image(root / str(IMAGE.parent).lstrip("/"), IMAGE.name)
    (base / "keys").mkdir()
    with ExitStack() as stack:
        server = stack.enter_context(sshd(base, root / SSH / "authorized_keys"))
        flows = Flows(base, root, server, tool_env(base))
        stack.callback(flows.unplug)
        flows.plug("primary")
        report, approved = flows.run_flow(
            "commission",
            [
                "--device",
                "auto",
                "--yes",
                "commission",
                "--kind",
                "linux",
                "--user",
                "alice",
                "--luks-device",
                str(IMAGE),
                "--unlock-key-file",
                KEY_FILE,
                "--git-email",
                EMAIL,
                "--pam-origin",
                PAM_ORIGIN,
                "--recovery-key-file",
                str(base / "recovery.txt"),
                "--new-pin-stdin",
                "--verify-only",
                ",".join(VERIFY_ITEMS),
            ],
            f"{PIN}\n{PIN}\n",
            COMMISSION_SWAP,
            "backup",
        )
        yield Commissioned(flows, report, approved)


def test_commission_over_hid_each_key_passes_pam_and_ssh_and_the_tpm2_opens_the_disk(
    commissioned: Commissioned, mapper: Mapper
) -> None:
    flows, ssh = commissioned.flows, commissioned.flows.root / SSH
    assert "  FAIL" not in commissioned.report and "verify (what this run enrolled):" in commissioned.report
    for role in ("primary", "backup"):  # what yktool says it asked is what the key was asked
        assert counted(commissioned.report, role) == commissioned.approved[role], commissioned.report

    assert flows.name() == "backup"  # commission ended with the backup in the port
    assert flows.attach_tpm2(mapper)
    for name, identity in (("backup", "id_ed25519_sk_backup"), ("primary", "id_ed25519_sk")):
        if flows.name() != name:
            flows.plug(name)
        ok, out = flows.pam()
        assert ok, out
        ok, err = flows.ssh(ssh / identity)
        assert ok, err + flows.server.log.read_text()


def test_replace_after_the_primary_is_lost_pam_and_sshd_refuse_it_and_let_the_new_key_in(
    commissioned: Commissioned,
) -> None:
    flows, ssh = commissioned.flows, commissioned.flows.root / SSH
    # the primary's key files stay usable elsewhere (a copy, as on the laptop that was lost too)
    lost = flows.base / "lost-copy"
    lost.mkdir()
    for name in ("id_ed25519_sk", "id_ed25519_sk.pub"):
        shutil.copy2(ssh / name, lost / name)

    flows.plug("backup")
    report, approved = flows.run_flow(
        "replace",
        [
            "--device",
            "auto",
            "--yes",
            "replace",
            "--lost",
            "primary",
            "--new-device",
            "auto",
            "--unlock-key-file",
            KEY_FILE,
            "--new-pin-stdin",
        ],
        f"{PIN}\n",
        REPLACE_SWAP,
        "new",
    )
    assert "replaced primary with primary-2" in report
    assert counted(report, "new") == approved["new"], report
    assert approved["backup"] == 0  # the backup was only probed: silently
    assert (ssh / "id_ed25519_sk.pub").read_text() != (lost / "id_ed25519_sk.pub").read_text()

    assert flows.name() == "new"
    ok, out = flows.pam()
    assert ok, out
    ok, err = flows.ssh(ssh / "id_ed25519_sk")  # the new key's, where the lost one's was
    assert ok, err + flows.server.log.read_text()

    flows.plug("primary")  # the lost key, found again (or in a finder's hands)
    ok, out = flows.pam()
    assert not ok, out
    ok, err = flows.ssh(lost / "id_ed25519_sk")
    assert not ok and "Permission denied (publickey)" in err, err


def test_systemd_cryptsetup_opens_the_disk_with_the_kept_and_new_keys_not_the_lost_one(
    commissioned: Commissioned, mapper: Mapper
) -> None:
    """After replace (the test above): the backup and the new key map the disk with one touch
    each, the lost primary does not. (Through systemd-cryptenroll these PIN tokens never opened:
    systemd#31443 made their keyslots without UV; yktool now enrolls every key itself, and its
    proof derives as systemd-cryptsetup does.)"""
    flows = commissioned.flows
    opened: dict[str, tuple[bool, int]] = {}
    for name in ("primary", "backup", "new"):
        flows.plug(name)
        opened[name] = flows.attach(mapper)
    assert opened == {"primary": (False, 0), "backup": (True, 1), "new": (True, 1)}
