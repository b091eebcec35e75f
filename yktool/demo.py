"""The demo: `yktool commission` end to end on software keys, a software TPM and a scratch root.

Everything lives in one scratch folder DIR:

    DIR/root/                 the host being commissioned (an /etc with passwd, group, hostname,
                              fstab/crypttab, sshd_config and pam.d; alice's home); every write
                              of the flow lands here
    DIR/root/var/lib/demo/    the 32 MiB LUKS2 image (its root filesystem, in crypttab) and its
                              random passphrase (0600)
    DIR/keys/primary.json     the two software keys (`--device sim:PATH`) and their demo PIN
    DIR/keys/backup.json      (DIR/keys/demo-pin, 0600: fed to the flow internally, never printed)
    DIR/swtpm/                the software TPM's state (a swtpm on 127.0.0.1 while the demo runs)
    DIR/recovery-key.txt      the LUKS recovery key (0600), where a real run shows it on the terminal

The stages: start the swtpm, build the root and the image, simulate a measured boot (PCRs 0 and
7), run the commission flow non-interactively (TPM2 + recovery key, then per key: PIN, LUKS2
FIDO2 where built, ed25519-sk SSH key + authorized_keys, git signing, pam_u2f, udev lock rule,
USBGuard rule; then verify), test-unlock the TPM2 token, and show the TPM refusing after a
simulated Secure Boot change. Running it again changes nothing and says so.
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from yktool import swtpm
from yktool.errors import ToolFailed
from yktool.fido.interaction import KeyInteraction
from yktool.host import Host
from yktool.luks.header import read_header
from yktool.luks.unlock import PCR_CHANGED, UnlockContext, test_tokens
from yktool.tpm import extend_pcr, is_unmeasured, read_pcrs

ROOT = "root"
IMAGE = PurePosixPath("/var/lib/demo/disk.img")  # inside DIR/root
PASSPHRASE = PurePosixPath("/var/lib/demo/disk.passphrase")  # inside DIR/root
TPM_STATE = PurePosixPath("/swtpm")  # inside DIR
KEYS = "keys"
PIN_FILE = "demo-pin"
RECOVERY_FILE = "recovery-key.txt"
USER = "alice"
HOSTNAME = "demo-host"
EMAIL = "alice@demo-host.example"
ORIGIN = "pam://demo-host"
ROLES = ("primary", "backup")

# the verify items the scratch root covers (the rest of `yktool verify` looks at a real host:
# sysctls, kernel modules, Secure Boot variables, running daemons)
VERIFY_ITEMS = [
    "boot.luks.root",
    "boot.luks.fido2",
    "boot.luks.tpm2",
    "boot.luks.tpm2_pcrs",
    "ssh.passwordauthentication",
    "ssh.kbdinteractiveauthentication",
    "ssh.permitrootlogin",
    "ssh.x11forwarding",
    "ssh.maxauthtries",
    "ssh.logingracetime",
    "ssh.sk_key",
    "git.signing",
    "pam.sudo",
    "pam.login",
    "hw.udev.lock_rule",
    "hw.usbguard.rules",
    "hw.registry.backup",
]

PAM_SERVICE = """#%PAM-1.0
# the security key is required on top of the password (the hardening checklist's layer 3)
auth       required   pam_u2f.so authfile=/etc/u2f_mappings cue origin={origin}
auth       include    common-auth
account    include    common-account
session    include    common-session
"""

COMMON_AUTH = """auth [success=1 default=ignore] pam_unix.so nullok
auth requisite pam_deny.so
auth required pam_permit.so
"""

SSHD_CONFIG = """# the hardening checklist's SSH server table
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
X11Forwarding no
MaxAuthTries 3
LoginGraceTime 30
"""


def fido2_available() -> bool:
    """True once yktool.luks.fido2 (LUKS2 FIDO2 enrollment) is part of this version."""
    import importlib.util

    return importlib.util.find_spec("yktool.luks.fido2") is not None


def build_root(host: Host) -> list[str]:
    """Write the scratch root's /etc and alice's home (only what is missing); returns what was made."""
    import os

    uid = gid = 1000
    files = {
        "/etc/passwd": f"root:x:0:0:root:/root:/bin/bash\n{USER}:x:{uid}:{gid}:Alice:/home/{USER}:/bin/bash\n",
        "/etc/group": f"root:x:0:\nwheel:x:10:{USER}\n{USER}:x:{gid}:\n",
        "/etc/hostname": HOSTNAME + "\n",
        "/etc/fstab": "/dev/mapper/root / ext4 defaults 0 1\n",
        "/etc/crypttab": f"root {IMAGE} none luks,fido2-device=auto,tpm2-device=auto\n",
        "/etc/ssh/sshd_config": SSHD_CONFIG,
        # Debian's common-* files the services include: without them libpam fails every
        # authentication (a missing include is a rule that fails), and verify says so
        "/etc/pam.d/common-auth": COMMON_AUTH,
        "/etc/pam.d/common-account": "account [success=1 new_authtok_reqd=done default=ignore] pam_unix.so\n"
        "account requisite pam_deny.so\naccount required pam_permit.so\n",
        "/etc/pam.d/common-session": "session required pam_unix.so\n",
        "/etc/pam.d/sudo": PAM_SERVICE.format(origin=ORIGIN),
        "/etc/pam.d/login": PAM_SERVICE.format(origin=ORIGIN),
    }
    made = []
    for path, text in files.items():
        if not host.exists(path):
            host.write_file(path, text, 0o644, backup=False)
            made.append(path)
    home = f"/home/{USER}"
    if not host.exists(home):
        host.mkdir(home, 0o700, owner=(uid, gid) if os.geteuid() == 0 else None)
        made.append(home)
    return made


@dataclass
class DemoLine:
    stage: str
    outcome: str
    ok: bool = True

    def to_json(self) -> dict[str, Any]:
        return {"stage": self.stage, "outcome": self.outcome, "ok": self.ok}


@dataclass
class DemoContext:
    """What the stages share: the scratch folder, the root's Host, the running swtpm, the report."""

    host: Host  # DIR/root: the commissioned host
    scratch: Path
    tpm: swtpm.SwTpm | None = None
    lines: list[DemoLine] = field(default_factory=list)
    progress: Callable[[str], None] | None = None
    counts: dict[str, Any] = field(default_factory=dict)
    verify: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def report(self, stage: str, outcome: str, ok: bool = True) -> None:
        self.lines.append(DemoLine(stage, outcome, ok))
        if self.progress:
            self.progress(f"{'ok ' if ok else '!! '} {stage}: {outcome}")

    @property
    def scratch_host(self) -> Host:
        return Host(self.scratch)

    @property
    def device(self) -> str:
        return str(IMAGE)

    @property
    def passphrase(self) -> bytes:
        return self.host.read_bytes(PASSPHRASE)

    def key_spec(self, role: str) -> str:
        return f"sim:{self.scratch / KEYS / (role + '.json')}"

    def demo_pin(self) -> str:
        """The software keys' PIN: made once, kept in DIR/keys/demo-pin (0600), never printed."""
        path = PurePosixPath("/") / KEYS / PIN_FILE
        if not self.scratch_host.exists(path):
            self.scratch_host.write_file(path, secrets.token_hex(4), 0o600, backup=False)
        return self.scratch_host.read_text(path)

    def require_tpm(self) -> swtpm.SwTpm:
        if self.tpm is None:
            raise ToolFailed("the demo's software TPM is not running", "this is a bug in yktool")
        return self.tpm

    def replace_command(self) -> str:
        """The rehearsal of a loss, to run after the demo (documented in docs/demo.md)."""
        d = self.scratch
        return (
            f"rm {d}/{KEYS}/primary.json && yktool --root {d}/{ROOT} --device sim:{d}/{KEYS}/backup.json "
            f"--yes replace --new-device sim:{d}/{KEYS}/new.json --unlock-key-file {PASSPHRASE} "
            f"--lost primary --new-pin-stdin < {d}/{KEYS}/{PIN_FILE}"
        )


def stage_tpm(ctx: DemoContext) -> None:
    ctx.tpm = swtpm.start(ctx.scratch_host, TPM_STATE)
    ctx.report("software TPM", f"swtpm on {ctx.tpm.tcti_spec} (state in {ctx.scratch / 'swtpm'})")


def stage_root(ctx: DemoContext) -> None:
    made = build_root(ctx.host)
    (ctx.scratch / KEYS).mkdir(mode=0o700, exist_ok=True)
    ctx.report(
        "scratch root", f"{ctx.host.root}: " + (f"made {len(made)} files and folders" if made else "already there")
    )


def stage_image(ctx: DemoContext) -> None:
    if ctx.host.exists(IMAGE):
        header = read_header(ctx.host, IMAGE)  # NotLuks etc. if someone broke it: says what to do
        ctx.report("LUKS2 image", f"{IMAGE} already there ({len(header.usable_slots)} keyslots)")
        return
    # the passphrase file is the demo's artefact (a scratch secret): mode 0600 before content
    ctx.host.mkdir(IMAGE.parent, 0o700)
    ctx.host.write_file(PASSPHRASE, secrets.token_urlsafe(32), 0o600, backup=False)
    # made under a temporary name and renamed when formatted: a run killed half-way leaves no
    # image that is not LUKS (which the next run would stop at) under the real name
    real = ctx.host.path(IMAGE)
    part = real.with_name(real.name + ".part")
    with open(part, "wb") as fh:
        fh.truncate(32 * 1024 * 1024)
    ctx.host.run(
        [
            "cryptsetup",
            "luksFormat",
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
            "--batch-mode",
            "--key-file",
            str(ctx.host.path(PASSPHRASE)),
            str(part),
        ]
    )
    part.replace(real)
    ctx.report("LUKS2 image", f"made {IMAGE} in the root (passphrase in {PASSPHRASE}, mode 0600)")


def stage_measured_boot(ctx: DemoContext) -> None:
    tpm = ctx.require_tpm()
    if is_unmeasured(read_pcrs(tpm.tcti, [7])[7]):
        swtpm.measure_boot(tpm)
        ctx.report("measured boot", "firmware and Secure Boot policy measured into PCRs 0 and 7")
    else:
        ctx.report("measured boot", "PCRs 0 and 7 already measured")


class DemoInteraction(KeyInteraction):
    """The interaction for the software keys: the demo PIN, touches at once."""

    def __init__(self, pin: str) -> None:
        self._demo_pin = pin
        self.pin: str | None = None  # as a person would: typed once, then remembered for the run
        self.pin_prompts: int = 0

    def prompt_up(self) -> None:
        """The software key touches itself."""

    def request_pin(self, permissions: object, rp_id: str | None) -> str | None:
        if self.pin is None:
            self.pin_prompts += 1
            self.pin = self._demo_pin
        return self.pin

    def pin_rejected(self) -> None:
        self.pin = None

    def request_uv(self, permissions: object, rp_id: str | None) -> bool:
        return True


def commission_answers(ctx: DemoContext) -> Any:
    from yktool.flows.commission import STEP_KINDS, CommissionAnswers

    steps = [s for s in STEP_KINDS if s != "luks-fido2" or fido2_available()]
    verify = [v for v in VERIFY_ITEMS if v != "boot.luks.fido2" or fido2_available()]
    return CommissionAnswers(
        host_kind="linux",
        user=USER,
        luks_devices=[str(IMAGE)],
        steps=steps,
        git_email=EMAIL,
        pam_origin=ORIGIN,
        unlock_key_file=str(PASSPHRASE),
        verify_only=verify,
    )


def stage_commission(ctx: DemoContext) -> None:
    from yktool.fido.session import KeySession, open_session
    from yktool.flows.commission import CommissionIO, execute, prepare
    from yktool.flows.keys import ring

    pin = ctx.demo_pin()

    @contextlib.contextmanager
    def opener(role: str, spec: str | None) -> Iterator[KeySession]:
        with open_session(spec or ctx.key_spec(role), DemoInteraction(pin)) as session:
            yield session

    def show_recovery(device: str, key: bytes) -> str:
        text = (
            f"# yktool demo: the recovery key of {ctx.host.root}{device}. It opens the image when the\n"
            "# TPM and both keys fail. A real commission shows it once on the terminal instead.\n" + key.decode() + "\n"
        )
        ctx.scratch_host.write_file("/" + RECOVERY_FILE, text, 0o600, backup=False)
        return f"written to {ctx.scratch / RECOVERY_FILE} (mode 0600)"

    def no_passphrase(device: str) -> bytes:
        raise ToolFailed("the demo reads the passphrase from its file", "this is a bug in yktool")

    tpm = ctx.require_tpm()
    io = CommissionIO(lambda role: pin, no_passphrase, show_recovery, tcti=tpm.tcti_spec)
    answers = commission_answers(ctx)
    specs: dict[str, str | None] = {r: ctx.key_spec(r) for r in ROLES}
    with ring(ctx.host, opener, specs, {"primary": "primary", "backup": "backup"}) as keys:
        flow, steps, _plan = prepare(ctx.host, answers, keys, io)
        report = execute(flow, steps)
    for out in report.outcomes:
        if out.id != "verify":
            ctx.report(f"commission {out.id}", out.detail if out.status == "done" else "already done")
    ctx.counts = report.counts
    ctx.verify = report.results
    ctx.notes = report.notes
    for r in report.results:
        ctx.report(
            f"verify {r.id}",
            f"{r.status}: {r.title}" + (f" ({r.reason})" if r.reason and r.status != "pass" else ""),
            r.status in ("pass", "n/a"),
        )
    if report.nothing_to_do:
        ctx.report("commission", "already complete: nothing changed")


def stage_test_unlock(ctx: DemoContext) -> None:
    tpm = ctx.require_tpm()
    header = read_header(ctx.host, IMAGE)
    results = test_tokens(
        UnlockContext(ctx.host, IMAGE, header, tpm.tcti), [t.id for t in header.tokens_of_type("systemd-tpm2")]
    )
    for r in results:
        ctx.report("test-unlock", f"TPM2 token {r.token_id}: {r.message}", r.ok)


def stage_tamper(ctx: DemoContext) -> None:
    tpm = ctx.require_tpm()
    extend_pcr(tpm.tcti, 7, b"yktool demo: an attacker's Secure Boot db")
    header = read_header(ctx.host, IMAGE)
    results = test_tokens(
        UnlockContext(ctx.host, IMAGE, header, tpm.tcti), [t.id for t in header.tokens_of_type("systemd-tpm2")]
    )
    for r in results:
        refused = r.status == PCR_CHANGED
        ctx.report(
            "tamper (PCR 7 changed)",
            f"TPM2 token {r.token_id} refuses: {r.message}"
            if refused
            else f"TPM2 token {r.token_id} did NOT refuse: {r.message}",
            refused,
        )


DEFAULT_STAGES: list[Callable[[DemoContext], None]] = [
    stage_tpm,
    stage_root,
    stage_image,
    stage_measured_boot,
    stage_commission,
    stage_test_unlock,
    stage_tamper,
]


@dataclass
class Demo:
    """The demo run: `stages` in order, then the swtpm stopped whatever happened."""

    scratch: Path
    stages: list[Callable[[DemoContext], None]] = field(default_factory=lambda: list(DEFAULT_STAGES))

    def run(self, progress: Callable[[str], None] | None = None) -> DemoContext:
        self.scratch.mkdir(parents=True, exist_ok=True, mode=0o700)
        (self.scratch / ROOT).mkdir(exist_ok=True, mode=0o755)
        ctx = DemoContext(Host(self.scratch / ROOT), self.scratch, progress=progress)
        try:
            for stage in self.stages:
                stage(ctx)
        finally:
            if ctx.tpm is not None:
                swtpm.stop(ctx.tpm)
        return ctx
