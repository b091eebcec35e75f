"""`yktool commission`: the new-host wizard, as a library (no prompts here; see yktool/cli/flows.py).

The answers (`CommissionAnswers`) say what to do; `build_steps` turns them into FlowSteps, in
this order: per LUKS device the TPM2 seal (PCRs 0+7) and a recovery key; then for the primary key
its PIN check (or first PIN), LUKS2 FIDO2, the ed25519-sk SSH key + authorized_keys, git signing,
the pam_u2f credential (age-encrypted for agenix on NixOS), the removal-lock udev rule and the
USBGuard rule; then the same for the backup key ("now insert your backup key"); then verify.

Every step is idempotent and proves its result with the consumer's tool; every enrollment lands
in the key registry (by the building blocks). One KeySession per key per run: the PIN is typed
once per key.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from yktool import agefile
from yktool import udev as udev_rule
from yktool import usbguard as usbguard_rule
from yktool.checks import CheckContext, Result, run_checks
from yktool.checks import summary as count_results
from yktool.errors import Refused, ToolFailed, UsageError
from yktool.fido.identity import usb_identity
from yktool.git_signing import add_signer, check_email
from yktool.host import Host
from yktool.lock import current_hold, root_lock, still_held
from yktool.luks.header import read_header
from yktool.luks.pending import read_header_seeing_pending
from yktool.luks.recovery import plan_add_recovery
from yktool.luks.tpm2 import plan_enroll_tpm2
from yktool.nixos.generate import regenerate
from yktool.pam.authfile import CENTRAL_AUTHFILE
from yktool.pam.host_facts import check_origin, default_origin
from yktool.pam.register import RegisterRequest, Target, pam_line_for, plain_target
from yktool.pam.register import register as pam_register
from yktool.plan import Plan
from yktool.ssh import enroll
from yktool.ssh.accounts import Account, lookup_user
from yktool.tpm import parse_tcti
from yktool.udev import KeyUsb, identity_from

from .ending import NIXOS_REBUILD, FlowReport, budget, hostname, luks_touches, summary_item
from .keys import KeyRing, Passphrases, enroll_luks_fido2
from .runner import FlowStep, Outcome, make_plan, run_steps
from .state import FlowState
from .touched import commission_files, refuse_links

FLOW = "commission"
HOST_KINDS = ("linux", "nixos")
# what the person can choose (the key check / PIN step always runs for each key used)
STEP_KINDS = ("luks-fido2", "luks-tpm2", "recovery", "ssh", "git", "pam", "udev", "usbguard", "verify")
KEY_STEPS = ("luks-fido2", "ssh", "git", "pam", "udev", "usbguard")
SSH_KEY = "id_ed25519_sk"
# the verify checks that prove what each step enrolled
VERIFY_FOR_STEP: dict[str, list[str]] = {
    "luks-fido2": ["boot.luks.fido2"],
    "luks-tpm2": ["boot.luks.tpm2", "boot.luks.tpm2_pcrs"],
    "ssh": ["ssh.sk_key"],
    "git": ["git.signing"],
    "pam": ["pam.sudo", "pam.login"],
    "udev": ["hw.udev.lock_rule"],
    "usbguard": ["hw.usbguard.rules"],
}


@dataclass
class CommissionAnswers:
    """What the person answered (or passed as flags). Never a secret: saved in the FlowState."""

    host_kind: str = "linux"
    user: str = ""
    luks_devices: list[str] = field(default_factory=list)
    steps: list[str] = field(default_factory=lambda: list(STEP_KINDS))
    git_email: str = ""
    pam_origin: str = ""
    age_host_key: str = ""  # NixOS: the host's ssh_host_ed25519_key.pub inside the root
    age_file: str = ""  # NixOS: the agenix authfile (a path in the flake checkout)
    age_identity: str = ""  # NixOS: a private key (local path) to read an existing age file
    primary_nickname: str = "primary"
    backup_nickname: str = "backup"  # "" = no backup key
    pcrs: list[int] = field(default_factory=lambda: [0, 7])
    unlock_key_file: str = ""  # inside the root; else the passphrase is asked once
    verify_only: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def roles(self) -> list[str]:
        return ["primary", "backup"] if self.backup_nickname else ["primary"]

    def nickname(self, role: str) -> str:
        return self.primary_nickname if role == "primary" else self.backup_nickname

    def check(self) -> None:
        """Refuse inconsistent answers before anything is shown or done."""
        if self.host_kind not in HOST_KINDS:
            raise UsageError(
                f"host kind {self.host_kind!r} is not one of {', '.join(HOST_KINDS)}",
                "pass --kind linux or --kind nixos",
            )
        unknown = [s for s in self.steps if s not in STEP_KINDS]
        if unknown:
            raise UsageError(f"unknown step(s) {', '.join(unknown)}", f"choose from {', '.join(STEP_KINDS)}")
        if {"luks-fido2", "luks-tpm2", "recovery"} & set(self.steps) and not self.luks_devices:
            raise UsageError(
                "LUKS steps were chosen but no LUKS device given",
                "pass --luks-device DEVICE (repeatable), or leave the luks steps out with --steps",
            )
        if {"ssh", "git", "pam"} & set(self.steps) and not self.user:
            raise UsageError("no user given", "pass --user NAME")
        if "git" in self.steps:
            if "ssh" not in self.steps:
                raise UsageError("git signing uses the SSH key: the ssh step is needed too", "add ssh to --steps")
            check_email(self.git_email)
        if self.backup_nickname and self.backup_nickname == self.primary_nickname:
            raise UsageError("the primary and the backup key need different nicknames", "pass --backup-nickname NAME")
        if self.host_kind == "nixos" and "pam" in self.steps and not (self.age_host_key and self.age_file):
            raise UsageError(
                "on NixOS the pam_u2f authfile is an agenix secret: say which host key "
                "encrypts it and where the .age file goes",
                "pass --age-host-key /etc/ssh/ssh_host_ed25519_key.pub and --age-file PATH",
            )


@dataclass
class CommissionIO:
    """What only the front end can do: secrets from the person, and showing the recovery key."""

    new_pin: Callable[[str], str]  # role -> a first PIN for a key that has none
    unlock: Callable[[str], bytes]  # LUKS device -> its current passphrase
    show_recovery: Callable[[str, bytes], str]  # device, key -> where it went (no secret)
    tcti: str = "auto"
    allow_unmeasured: bool = False
    notes: list[str] = field(default_factory=list)  # Nix snippets and hints collected for the end


def step_id(kind: str, role: str | None = None, device: str | None = None, many: bool = False) -> str:
    base = f"{role}.{kind}" if role else kind
    return f"{base}@{device}" if many and device else base


def key_path(answers: CommissionAnswers, role: str, home: PurePosixPath) -> PurePosixPath:
    """~/.ssh/id_ed25519_sk for the primary, ~/.ssh/id_ed25519_sk_<nickname> for the backup."""
    name = SSH_KEY if role == "primary" else f"{SSH_KEY}_{answers.nickname(role)}"
    return home / ".ssh" / name


class Commission:
    """The steps of one commission run, sharing the host, the answers, the keys and the state."""

    def __init__(
        self, host: Host, answers: CommissionAnswers, keys: KeyRing, io: CommissionIO, state: FlowState
    ) -> None:
        self.host = host
        self.answers = answers
        self.keys = keys
        self.io = io
        self.state = state
        self.unlock = Passphrases(host, answers.unlock_key_file, io.unlock)
        self.results: list[Result] = []  # verify's results
        self.checked_under: object | None = None  # the lock hold prepare checked the host under
        self.recovery_shown = False  # a recovery key was made (and shown) by this run

    # ------------------------------------------------------------------ helpers
    def account(self) -> Account:
        return lookup_user(self.host, self.answers.user)

    def hostname(self) -> str:
        return hostname(self.host)

    def origin(self) -> str:
        return check_origin(self.answers.pam_origin) if self.answers.pam_origin else default_origin(self.host)

    # ------------------------------------------------------------------ steps
    def build_steps(self) -> list[FlowStep]:
        answers = self.answers
        steps: list[FlowStep] = []
        many = len(answers.luks_devices) > 1
        pcrs = "+".join(map(str, answers.pcrs))
        for dev in answers.luks_devices:
            if "luks-tpm2" in answers.steps:
                steps.append(
                    FlowStep(
                        step_id("luks-tpm2", None, dev, many),
                        f"seal a keyslot of {dev} to the TPM2 (PCRs {pcrs})",
                        partial(self.luks_tpm2, dev),
                        [dev, f"TPM {self.io.tcti}"],
                        "test-unlock through systemd's token plugin",
                    )
                )
            if "recovery" in answers.steps:
                steps.append(
                    FlowStep(
                        step_id("recovery", None, dev, many),
                        f"add a recovery key to {dev} (shown once)",
                        partial(self.recovery, dev),
                        [dev],
                        "cryptsetup open --test-passphrase with the new key",
                    )
                )
        for role in answers.roles:
            nick = answers.nickname(role)
            steps.append(
                FlowStep(
                    step_id("pin", role),
                    f"{role} key ({nick}): check it and its PIN (set a first PIN if it has none)",
                    partial(self.pin, role),
                    [f"{role} key"],
                    "a PIN token from the key",
                    role,
                )
            )
            if "luks-fido2" in answers.steps:
                for dev in answers.luks_devices:
                    steps.append(
                        FlowStep(
                            step_id("luks-fido2", role, dev, many),
                            f"enroll the {role} key ({nick}) into {dev} (systemd-fido2; {self.luks_touches(role)})",
                            partial(self.luks_fido2, role, dev),
                            [dev, f"{role} key"],
                            "the key's hmac-secret opens the new keyslot",
                            role,
                        )
                    )
            if "ssh" in answers.steps:
                steps.append(
                    FlowStep(
                        step_id("ssh", role),
                        f"ed25519-sk SSH key on the {role} key ({nick}) for {answers.user}, added to authorized_keys",
                        partial(self.ssh, role),
                        [f"~{answers.user}/.ssh"],
                        "ssh-keygen -y reads the key file back",
                        role,
                    )
                )
            if "git" in answers.steps:
                what = "sign git commits with it" if role == "primary" else "accept its git signatures"
                steps.append(
                    FlowStep(
                        step_id("git", role),
                        f"{what} ({answers.git_email}, allowed_signers)",
                        partial(self.git, role),
                        [f"~{answers.user}/.gitconfig", f"~{answers.user}/.ssh/allowed_signers"],
                        "git config --get reads the settings back",
                        role,
                    )
                )
            if "pam" in answers.steps:
                where = answers.age_file if answers.host_kind == "nixos" else "/etc/u2f_mappings"
                steps.append(
                    FlowStep(
                        step_id("pam", role),
                        f"pam_u2f credential for {answers.user} on the {role} key ({nick}) in {where}",
                        partial(self.pam, role),
                        [where],
                        "an assertion with the origin verifies against the stored key",
                        role,
                    )
                )
            usb_rules = {  # kind: what the step does, what it changes (plain Linux, NixOS), its proof
                "udev": (
                    f"lock the screen when the {role} key is removed",
                    udev_rule.RULE_PATH,
                    f"{udev_rule.NIX_OPTION} (the NixOS module)",
                    "the rule file read back",
                ),
                "usbguard": (
                    f"allow the {role} key through USBGuard",
                    usbguard_rule.RULES_PATH,
                    "USBGuard rules (the NixOS module)",
                    "the rules file read back",
                ),
            }
            for kind, (what, linux, nixos, proof) in usb_rules.items():
                if kind in answers.steps:
                    steps.append(
                        FlowStep(
                            step_id(kind, role),
                            what,
                            partial(self.usb_rule, kind, role),
                            [linux if answers.host_kind == "linux" else nixos],
                            proof,
                            role,
                        )
                    )
        if answers.host_kind == "nixos":
            steps.append(
                FlowStep(
                    "nixos.module",
                    "write the NixOS module from the key registry (yktool nixos module)",
                    self.nixos_module,
                    ["the NixOS module"],
                    "nix-instantiate --parse",
                    None,
                    always=True,
                )
            )
        if "verify" in answers.steps:
            steps.append(
                FlowStep(
                    "verify",
                    "yktool verify: the checks for what was just enrolled",
                    self.verify,
                    [],
                    "reads only",
                    None,
                    always=True,
                )
            )
        return steps

    def luks_touches(self, role: str) -> str:
        """The LUKS enrollment's touch count, as the plan says it (systemd's own count for a real key)."""
        n = luks_touches(self.keys.specs.get(role))
        return "1 touch" if n == 1 else f"systemd-cryptenroll's own count: {n} touches"

    # -- key and PIN
    def pin(self, role: str) -> str:
        return self.keys.check_pin(role, self.io.new_pin)

    # -- LUKS
    def luks_tpm2(self, device: str) -> str:
        op = plan_enroll_tpm2(
            self.host,
            device,
            parse_tcti(self.io.tcti),
            list(self.answers.pcrs),
            allow_unmeasured=self.io.allow_unmeasured,
        )
        if op.needs_unlock:
            op.unlock = self.unlock(device)
        op.plan.apply()
        pcrs = "+".join(map(str, op.pcrs))
        if not op.plan.changed:
            return f"already sealed to PCRs {pcrs} (token {op.new_token})"
        return f"token {op.new_token} sealed to PCRs {pcrs}, proven to open {device}"

    def recovery(self, device: str) -> str:
        pending: list[str] = list(self.state.extra.get("recovery-pending", []))
        # a key an interrupted add-recovery made and never showed is not counted (luks.pending)
        existing = read_header_seeing_pending(self.host, device).slots_with_role("recovery")
        if existing and device not in pending:
            return f"kept the existing recovery key (keyslot {', '.join(map(str, existing))})"
        # a key made by a run that died before showing it is unknown to anyone: replace it
        op = plan_add_recovery(self.host, device, replace=bool(existing))
        self.state.extra["recovery-pending"] = sorted(set(pending) | {device})
        self.state.save(self.host)
        op.unlock = self.unlock(device)
        shown: list[str] = []
        op.show = lambda key: shown.append(self.io.show_recovery(device, key))  # before an old key goes
        op.plan.apply()
        if not shown:
            raise ToolFailed("systemd-cryptenroll made no recovery key", "check `yktool luks status`")
        self.recovery_shown = True
        self.state.extra["recovery-pending"] = [d for d in pending if d != device]
        self.state.save(self.host)
        return f"recovery key in keyslot {op.new_slot}, proven to open {device}; {shown[0]}"

    def luks_fido2(self, role: str, device: str) -> str:
        op = enroll_luks_fido2(self.host, device, self.keys.session(role), self.answers.nickname(role), self.unlock)
        self.keys.add_touches(role, op.tool_touches)
        if op.already and not op.changed:
            return f"already enrolled (token {op.new_token}, keyslot {op.new_slot})"
        return f"token {op.new_token} on keyslot {op.new_slot}, proven to open {device} with the key"

    # -- SSH and git
    def ssh(self, role: str) -> str:
        account = self.account()
        path = key_path(self.answers, role, account.home)
        nick = self.answers.nickname(role)
        session = self.keys.session(role)
        if self.host.exists(path):
            key = enroll.load_private(self.host, path)
            if not session.probe(key.public.application, key.key_handle, uv=key.verify_required):
                raise Refused(
                    f"{path} exists and was not made by the {role} key in hand",
                    "move that file away (it may be another key's), then run the same command again",
                )
            made = "kept the key file made earlier"
        else:
            opts = enroll.parse_options([])
            enroll.precheck(session, opts)
            comment = f"{self.answers.user}@{self.hostname() or 'host'} ({nick})"
            key = enroll.make_key(session, opts, comment, prechecked=True)
            enroll.write_key_files(self.host, key, path, account.owner())
            made = "made a new key"
        done = enroll.authorize_and_prove(self.host, account, key, path, nickname=nick, aaguid=session.aaguid)
        return (
            f"{made} {key.public.fingerprint} ({path}); "
            f"{'added to' if done.authorized.added else 'already in'} {done.authorized.path}; {done.proof}"
        )

    def git(self, role: str) -> str:
        """The primary key signs (git config and allowed_signers); the backup key's signatures
        verify too (allowed_signers), the primary staying the signing key."""
        account = self.account()
        path = key_path(self.answers, role, account.home)
        key = enroll.load_private(self.host, path)
        signer = add_signer(
            self.host,
            account,
            key,
            email=self.answers.git_email,
            nickname=self.answers.nickname(role),
            signing_key=enroll.pub_path(path) if role == "primary" else None,
        )
        if signer.setup is not None:
            self.io.notes.extend(signer.setup.notes)
            return (
                f"git signs with {key.public.fingerprint} ({signer.setup.config_file})"
                f"{'' if signer.changed else ', unchanged'}"
            )
        return f"{self.answers.git_email}'s signatures by {key.public.fingerprint} verify ({signer.allowed_signers})"

    # -- PAM
    def pam_target(self) -> Target:
        if self.answers.host_kind != "nixos":
            return plain_target(self.host, self.answers.user, CENTRAL_AUTHFILE)
        pub = self.answers.age_host_key
        recipients = agefile.parse_recipients_text(self.host.read_text(pub), source=pub)
        identity = None
        private = pub.removesuffix(".pub")
        if self.answers.age_identity:
            # a local path (like --age-file), not inside the root
            data = Path(self.answers.age_identity).read_bytes()
            identity = agefile.parse_identities(data, source=self.answers.age_identity)
        elif self.host.exists(private) and private != pub:
            # the host's own key decrypts what it will decrypt at boot
            identity = agefile.parse_identities(self.host.read_bytes(private), source=private)
        return Target(age_file=Path(self.answers.age_file).absolute(), recipients=recipients, identity=identity)

    def pam_line(self) -> str:
        """The PAM auth line for this run's authfile and origin (plain Linux)."""
        target = plain_target(self.host, self.answers.user, CENTRAL_AUTHFILE)
        return pam_line_for(target, self.origin(), pin=False, verification=False)

    def pam(self, role: str) -> str:
        request = RegisterRequest(
            user=self.answers.user,
            origin=self.origin(),
            target=self.pam_target(),
            nickname=self.answers.nickname(role),
            age_name=Path(self.answers.age_file).name.removesuffix(".age") or "yubikey-auth",
        )
        result = pam_register(self.host, self.keys.session(role), request)
        if result.already_registered:
            return f"already registered for {self.answers.user} (origin {result.origin})"
        return (
            f"registered for {self.answers.user} in {result.written_to} (origin {result.origin}), "
            "proven with an assertion"
        )

    # -- udev and USBGuard
    def usb_identity(self, role: str) -> KeyUsb:
        return identity_from(usb_identity(self.keys.session(role).device))

    def usb_rule(self, kind: str, role: str) -> str:
        """The key's removal-lock udev rule or its USBGuard allow rule; on NixOS only the record,
        which `yktool nixos module` renders them from."""
        key, nick = self.usb_identity(role), self.answers.nickname(role)
        if self.answers.host_kind == "nixos":
            (udev_rule if kind == "udev" else usbguard_rule).record_for_nixos(self.host, key, nick)
            return f"{key.usb_id} recorded for the NixOS module"
        if kind == "udev":
            installed = udev_rule.install_and_record(self.host, key, nick)
            return f"{'wrote' if installed.changed else 'unchanged'} {udev_rule.RULE_PATH} ({key.usb_id})"
        allowed = usbguard_rule.allow_and_record(self.host, key, nick)
        if allowed.placeholder:
            self.io.notes.append(
                f"{allowed.path} was a placeholder ({allowed.placeholder}): populate it "
                "(usbguard generate-policy) before relying on implicitPolicyTarget = block"
            )
        return f"{'added to' if allowed.added else 'already in'} {allowed.path}: {allowed.line}"

    def nixos_module(self) -> str:
        return regenerate(self.host)

    # -- verify
    def verify_selection(self) -> list[str]:
        """The checks that prove what this run enrolled (the rest of `yktool verify` is the host's)."""
        if self.answers.verify_only:
            return list(self.answers.verify_only)
        s, sel = set(self.answers.steps), []
        if s & {"luks-fido2", "luks-tpm2"} and self.answers.luks_devices:
            sel.append("boot.luks.root")
        # on NixOS /etc is generated: the PAM stack, udev and USBGuard rules come from the printed
        # Nix after a rebuild, so the root's /etc/pam.d and rules are not what will run
        nixos_generated = {"pam", "udev", "usbguard"}
        for step, check_ids in VERIFY_FOR_STEP.items():
            if step in s and (self.answers.host_kind == "linux" or step not in nixos_generated):
                sel += check_ids
        if self.answers.backup_nickname:
            sel.append("hw.registry.backup")
        return sel

    def verify(self) -> str:
        self.keys.close()  # verify needs no key; count the last key's touches now
        ctx = CheckContext(self.host, user=self.answers.user or None, tpm2_pcrs=tuple(self.answers.pcrs))
        self.results = run_checks(ctx, self.verify_selection())
        counts = count_results(self.results)
        return f"{counts['pass']} pass, {counts['fail']} fail, {counts['warn']} warn, {counts['n/a']} n/a"

    def owned_checks(self) -> set[str]:
        """The verify checks that prove what this run wrote. The PAM stack (/etc/pam.d) is the
        person's to edit (Next steps), and checks named by --verify-only beyond the steps belong
        to other layers: listed as "not part of this run", they do not fail it."""
        s, owned = set(self.answers.steps), set()
        if not s - {"verify"}:
            return {str(r.id) for r in self.results}  # nothing enrolled: the run is a verify, all its own
        for step, check_ids in VERIFY_FOR_STEP.items():
            if step in s:
                owned |= set(check_ids) - PAM_STACK_CHECKS
        if s & {"luks-fido2", "luks-tpm2"} and self.answers.luks_devices:
            owned.add("boot.luks.root")
        if self.answers.backup_nickname:
            owned.add("hw.registry.backup")
        return owned

    def touch_budget(self) -> str:
        """What each key costs: one touch per credential made (the LUKS slot's secret and the
        pam_u2f proof are read silently), one PIN entry (a first PIN is typed twice, once counted)."""
        per_role = []
        for role in self.answers.roles:
            n = 0
            if "luks-fido2" in self.answers.steps:
                n += len(self.answers.luks_devices) * (1 if self.luks_touches(role) == "1 touch" else 2)
            n += sum(1 for k in ("ssh", "pam") if k in self.answers.steps)
            per_role.append(n)
        if not per_role:
            return ""
        if len(set(per_role)) == 1:
            return f"each key: {budget(per_role[0])}"
        return ", ".join(f"{r} key: {budget(n)}" for r, n in zip(self.answers.roles, per_role, strict=True))


PAM_STACK_CHECKS = {"pam.sudo", "pam.login"}
WHAT = {
    "luks-fido2": "LUKS2 FIDO2 slot",
    "ssh": "SSH key",
    "git": "git signing",
    "pam": "pam_u2f",
    "udev": "removal lock",
    "usbguard": "USBGuard rule",
}


def summary(flow: Commission, steps: list[FlowStep], width: int = 78) -> list[str]:
    """The plan on one screen: the root and host, what changes per LUKS device and per key, the
    touch and PIN budget. The full plan (every step, what it changes, how it is proven) is on
    demand."""
    answers = flow.answers
    done = set(flow.state.done)
    todo = [st for st in steps if st.id not in done or st.always]
    host = flow.hostname() or "no /etc/hostname"
    lines = [
        f"commission: {flow.host.root}",
        f"  host {host} ({answers.host_kind}), for {answers.user or 'no user'}; "
        f"{len(steps)} steps, {len(steps) - len(todo)} done already",
    ]

    def add(head: str, items: list[str]) -> None:
        lines.extend(summary_item(head, items, width))

    for dev in answers.luks_devices:
        items = []
        for st in todo:
            if st.role is None and dev in st.description:
                items.append(
                    "a TPM2 keyslot (PCRs " + "+".join(map(str, answers.pcrs)) + ")"
                    if "tpm2" in st.id
                    else "a recovery key (shown once)"
                )
        if {"luks-tpm2", "recovery"} & set(answers.steps):
            add(dev, items)
    for role in answers.roles:
        items = [WHAT[k] for k in KEY_STEPS if any(st.id.startswith(f"{role}.{k}") for st in todo)]
        add(f"{role} key ({answers.nickname(role)})", items)
    budget = flow.touch_budget()
    if budget and any(st.role is not None for st in todo):
        lines.append(
            f"  {budget}"
            + (
                " (systemd-cryptenroll asks its own for LUKS)"
                if "2 touches" in flow.luks_touches(answers.roles[0])
                else ""
            )
        )
    if any(st.id == "verify" for st in steps):
        lines.append("  then yktool verify: the checks for what was enrolled")
    return lines


def next_steps(flow: Commission, report: CommissionReport) -> list[str]:
    """What is left for the person, exactly: the PAM line and where it goes (in the control
    verify accepts), the NixOS rebuild, storing the recovery key."""
    answers = flow.answers
    out: list[str] = []
    pam_failed = {r.id for r in report.results if r.id in PAM_STACK_CHECKS and r.status in ("fail", "warn")}
    if "pam" in answers.steps and answers.host_kind == "linux" and (pam_failed or not report.results):
        line = flow.pam_line().replace("auth sufficient ", "auth required ", 1)
        for service in sorted(pam_failed) or ["pam.sudo"]:
            name = service.split(".", 1)[1]
            works = "`sudo -k; sudo true` works with the key" if name == "sudo" else f"a new {name} works with the key"
            out.append(
                f"Add to /etc/pam.d/{name}, as its first `auth` line (above `@include common-auth`), "
                f"with a root shell kept open until {works}:\n    {line}"
            )
    if answers.host_kind == "nixos":
        out.append(NIXOS_REBUILD)
    if flow.recovery_shown:
        out.append(
            "Store the recovery key offline (paper, a password manager on another device): it opens "
            "the disk when the TPM and every key fail"
        )
    return out


# ================================================================================ the run
class CommissionReport(FlowReport):
    """What a commission run did (the shared report: see flows/ending.py)."""


def saved_answers(state: FlowState) -> CommissionAnswers | None:
    """The answers an unfinished run on disk was started with (None: no such run, or a state
    file written by another version whose answers do not fit)."""
    if not state.resuming or not state.answers:
        return None
    try:
        return CommissionAnswers(**state.answers)
    except TypeError:
        return None


def resume_question(state: FlowState, host: Host) -> str:
    """ "Resume the run started HH:MM on ROOT (9 of 17 steps done)?" """
    started = state.started[11:16] + " UTC" if len(state.started) >= 16 else "earlier"
    total = state.extra.get("steps_total")
    done = f"{len(state.done)} of {total} steps done" if isinstance(total, int) else f"{len(state.done)} steps done"
    return f"Resume the run started {started} on {host.root} ({done})?"


def prepare(
    host: Host, answers: CommissionAnswers, keys: KeyRing, io: CommissionIO, *, restart: bool = False
) -> tuple[Commission, list[FlowStep], Plan]:
    """Check the answers, load the state, build the steps and the Plan to show. Writes nothing.
    `restart`: an unfinished run on disk is started over (every step is checked again; each is
    idempotent, so what it did is found and kept) — other answers, or the person said so."""
    answers.check()
    check_host(host, answers)
    state = FlowState.load(host, FLOW)
    restarted = restart and state.resuming
    if restarted or (state.finished and state.answers != answers.to_json()):
        state.done = []  # in memory, as `begin` will write it: the summary counts what is left
    state.check_resume(host, answers.to_json())
    flow = Commission(host, answers, keys, io, state)
    flow.checked_under = current_hold(host)
    refuse_links(host, commission_files(flow))  # a user's link: refused before any step acts
    steps = flow.build_steps()
    for role in answers.roles:
        # a key whose steps are not all done gets its PIN step again on a resumed run: a wrong PIN
        # is then asked again there (with the attempts left), not fatal in the middle of a step
        pin_id = step_id("pin", role)
        if pin_id in state.done and any(s.role == role and s.id not in state.done for s in steps):
            state.done.remove(pin_id)
    who = f" for {answers.user}" if answers.user else ""
    plan = make_plan(
        f"commission this {answers.host_kind} host{who} ({' + '.join(answers.nickname(r) for r in answers.roles)} key)",
        steps,
        state,
    )
    if state.finished and state.answers == answers.to_json():
        plan.notes.append(f"this commission finished at {state.finished}: nothing is left to do (verify runs again)")
    elif state.resuming:
        plan.notes.append("resuming an interrupted run: the steps marked (already done) are skipped")
    elif restarted:
        plan.notes.append(
            "starting the interrupted run over: every step is checked again, and what it did already is found and kept"
        )
    if answers.backup_nickname and (keys.specs.get("backup") or "auto") == "auto":
        plan.notes.append("halfway through you will be asked to swap to the backup key")
    return flow, steps, plan


def check_host(host: Host, answers: CommissionAnswers) -> None:
    """What the answers name must be there before anything is done: the LUKS devices (LUKS2),
    the user, the NixOS host key, the unlock key file."""
    if {"luks-fido2", "luks-tpm2", "recovery"} & set(answers.steps):
        for dev in answers.luks_devices:
            read_header(host, dev)
    if answers.user and {"ssh", "git", "pam"} & set(answers.steps):
        lookup_user(host, answers.user)
    if answers.host_kind == "nixos" and "pam" in answers.steps and not host.exists(answers.age_host_key):
        raise UsageError(
            f"the host key {answers.age_host_key} is not in {host.root}",
            "pass --age-host-key with the host's ssh_host_ed25519_key.pub inside the root",
        )
    if answers.age_identity and not Path(answers.age_identity).is_file():
        raise UsageError(
            f"--age-identity {answers.age_identity}: no such file",
            "name a private key (ssh-ed25519 or age identity) of one of the age file's recipients",
        )
    if answers.unlock_key_file and not host.exists(answers.unlock_key_file):
        raise UsageError(
            f"--unlock-key-file {answers.unlock_key_file} is not in {host.root}",
            "name the passphrase file by its path inside the root",
        )


def pending(flow: Commission, steps: list[FlowStep]) -> list[FlowStep]:
    return [s for s in steps if s.id not in flow.state.done and not s.always]


def execute(
    flow: Commission, steps: list[FlowStep], on_step: Callable[[Outcome], None] | None = None
) -> CommissionReport:
    """Act, under the root's lock: run every step not yet done, in order, marking each; then
    record the end. Checked by `prepare` without the lock held now (a library caller): the
    host's checks run again under it first."""
    with root_lock(flow.host, f"yktool {FLOW}"):
        if not still_held(flow.host, flow.checked_under):
            check_host(flow.host, flow.answers)
            refuse_links(flow.host, commission_files(flow))
        return _execute(flow, steps, on_step)


def _execute(flow: Commission, steps: list[FlowStep], on_step: Callable[[Outcome], None] | None) -> CommissionReport:
    nothing = not pending(flow, steps)
    flow.state.begin(flow.host, flow.answers.to_json())
    flow.state.extra["steps_total"] = len(steps)  # for "9 of 17 steps done" when resuming
    flow.state.save(flow.host)
    outcomes = run_steps(flow.host, flow.state, steps, on_step)
    flow.keys.close()
    if not nothing or not flow.state.finished:
        flow.state.finish(flow.host)  # a re-run of a finished commission leaves even this file alone
    return CommissionReport(
        outcomes, flow.results, flow.keys.totals(), list(flow.io.notes), nothing, flow.owned_checks()
    )
