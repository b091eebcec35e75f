"""`yktool replace`: a key was lost. Revoke it everywhere, enroll the replacement there, prove the
replacement works first. As a library (prompts: yktool/cli/flows.py).

1. Which key is lost is said by the person, by registry name (`--lost NAME…`, or the wizard
   asks): never decided by absence. A key not plugged in and not named (a spare in a safe) is
   kept, and the plan says so.
2. Find: every enrolled credential on the host — LUKS2 systemd-fido2 tokens, pam_u2f authfile
   credentials (each with the user of the line it is on), the registry's SSH keys (and so
   authorized_keys and allowed_signers) — and its owner from the registry (credential id ->
   key). Each is probed silently (getAssertion with up=false: no touch, no PIN; with the PIN
   for a verify-required SSH key, which a key shows only to UV) against each key present: a
   key named lost that answers is plugged in, and the run is refused. A credential the
   registry does not know is nobody's to revoke: kept, and said so.
3. One plan, checked whole before anything changes: no present key answering anything, a
   LUKS volume left without a way in, a user left without a pam_u2f credential where PAM
   requires one, or without any SSH key (`yktool.lastway`) — each is refused up front; the
   last two can be forced (`force`, with the CLI's typed confirmation) and the plan then says
   who loses what.
4. Act, per area: enroll the new key where the lost one was (on the same user's line, in the
   same user's files), and prove it (the LUKS keyslot opens with the key's passphrase,
   pam_u2f's assertion verifies, ssh-keygen reads the key); then revoke: wipe the lost key's
   keyslots and tokens, drop its pam_u2f credentials, take its SSH key out of
   authorized_keys, retire it in allowed_signers (valid-before: old commits keep verifying)
   and add it to git's gpg.ssh.revocationFile, remove its udev/USBGuard rules and its registry
   entry.
"""

from __future__ import annotations

import base64
import datetime
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path, PurePosixPath
from typing import Any

from yktool import agefile
from yktool import udev as udev_rule
from yktool import usbguard as usbguard_rule
from yktool.authorized_keys import authorized_keys_path, key_blob_in, revoke
from yktool.errors import Refused, ToolFailed, UsageError, YktoolError
from yktool.fido.identity import usb_identity
from yktool.fido.session import KeySession
from yktool.git_signing import Git, add_revoked_signer, add_signer, default_allowed_signers, expire_signer
from yktool.host import Host
from yktool.inventory import Registry, Scalar
from yktool.lastway import Loss, Removal, crypttab_luks, describe, losses, pam_authfiles, pam_requiring
from yktool.lock import current_hold, root_lock, still_held
from yktool.luks.cryptenroll import wipe_slots
from yktool.luks.header import read_header
from yktool.luks.pending import read_header_seeing_pending
from yktool.luks.safety import check_remaining
from yktool.luks.tokens import Fido2Token
from yktool.nixos.generate import regenerate
from yktool.pam.authfile import Authfile, AuthLine, U2fCredential
from yktool.pam.host_facts import default_origin
from yktool.pam.register import RegisterRequest, Target, plain_target, read_current, write_target
from yktool.pam.register import register as pam_register
from yktool.plan import Plan
from yktool.ssh import enroll
from yktool.ssh.accounts import Account, lookup_user
from yktool.ssh.keys import FLAG_RESIDENT, FLAG_USER_PRESENCE, FLAG_USER_VERIFICATION, SkPublicKey
from yktool.udev import identity_from

from .ending import NIXOS_REBUILD, FlowReport, budget, hostname, luks_touches, summary_item
from .keys import KeyRing, Passphrases, enroll_luks_fido2
from .runner import FlowStep, Outcome, make_plan, run_steps
from .state import FlowState
from .touched import refuse_links, replace_files

FLOW = "replace"
LUKS_RP = "io.systemd.cryptsetup"
REVOKED_FILE = ".ssh/revoked_signers"  # in the user's home: gpg.ssh.revocationFile


@dataclass
class Found:
    """One enrolled credential on the host, and which present key (if any) answers for it."""

    area: str  # luks | pam | ssh
    where: str  # the device, authfile or key file
    rp_id: str
    credential_id: bytes
    owner: str  # registry nickname, or "unregistered"
    user: str = ""
    public_key: str = ""  # ssh: the public key line (for authorized_keys / allowed_signers)
    token: int | None = None  # luks: token id
    keyslots: list[int] = field(default_factory=list)
    answered_by: str | None = None  # the role of the present key that answers for it
    lost: bool = False  # its owner is a key named lost (never decided by absence)
    age: bool = False  # pam: `where` is an agenix file (outside the root), not a plain authfile
    # ssh verify-required (credProtect 3): invisible to a silent probe, so probed with the PIN;
    # else a kept key's credential would be taken for the lost key's and revoked
    needs_uv: bool = False
    ssh_flags: int | None = None  # ssh: the key file's flags (touch, verify-required, resident), when recorded
    pam_options: str = ""  # pam: the credential's options as written (+presence+pin …)
    resident_key: str = ""  # pam: a resident (`*`) credential's public key, as written
    also_new: bool = False  # a kept credential the new key answers too: the "new" key is a kept one

    def status(self) -> str:
        """Why it is revoked or kept, as the plan says it."""
        if self.lost:
            return "lost (named): revoked"
        if self.answered_by == "new":
            return "the new key's (an earlier run made it)"
        if self.answered_by is not None:
            return f"plugged in ({self.answered_by}): kept"
        if self.owner == "unregistered":
            return "not in the registry: kept (yktool cannot tell which key made it)"
        return "not plugged in: kept"

    def describe(self) -> str:
        if self.area == "luks":
            return f"LUKS2 {self.where}: FIDO2 token {self.token} (keyslot {', '.join(map(str, self.keyslots))})"
        if self.area == "pam":
            return f"pam_u2f {self.where}: {self.user}'s credential ({self.rp_id})"
        return f"SSH key {self.where} of {self.user} (authorized_keys, allowed_signers)"

    def to_json(self) -> dict[str, Any]:
        return {
            "area": self.area,
            "where": self.where,
            "owner": self.owner,
            "user": self.user,
            "token": self.token,
            "keyslots": self.keyslots,
            "answered_by": self.answered_by,
            "lost": self.lost,
            "status": self.status(),
            "description": self.describe(),
        }


def _b64(value: object) -> bytes | None:
    try:
        return base64.b64decode(str(value), validate=True)
    except ValueError:
        return None


AgeTarget = Callable[[str], Target]  # age file path -> a Target that can read and write it


def gather(host: Host, extra_devices: list[str] | None = None, age_target: AgeTarget | None = None) -> list[Found]:
    """Every credential the host has enrolled that yktool can probe (no key needed here)."""
    registry = Registry.load(host)

    def owner(cid: str) -> str:
        rec = registry.owner_of(cid)
        return rec.nickname if rec else "unregistered"

    found: list[Found] = []
    devices = list(
        dict.fromkeys(
            [str(e["device"]) for _k, e in registry.enrollments("luks") if "device" in e] + list(extra_devices or [])
        )
    )
    devices += crypttab_luks(host, devices)[0]  # volumes enrolled by hand are found too
    for dev in devices:
        header = read_header(host, dev)
        for token in header.tokens_of_type("systemd-fido2"):
            if not isinstance(token, Fido2Token):
                continue
            cid = _b64(token.credential)
            if cid is None:
                continue
            found.append(
                Found(
                    "luks",
                    dev,
                    token.rp or LUKS_RP,
                    cid,
                    owner(token.credential),
                    token=token.id,
                    keyslots=list(token.keyslots),
                )
            )
    origins = {str(e.get("credential_id")): str(e.get("origin")) for _k, e in registry.enrollments("pam")}
    authfiles = list(dict.fromkeys(str(e["path"]) for _k, e in registry.enrollments("pam") if "path" in e))
    # and every fixed authfile a PAM stack reads: a lost key's credential copied there by hand is
    # still the registry's credential id, and still a way in for the finder
    authfiles = list(dict.fromkeys([*authfiles, *(p for p, _o in pam_authfiles(host))]))
    age_files = list(dict.fromkeys(str(e["age_file"]) for _k, e in registry.enrollments("pam") if "age_file" in e))
    texts: list[tuple[str, str, bool]] = [(p, host.read_text(p), False) for p in authfiles if host.exists(p)]
    for path in age_files:
        if age_target is None:
            raise UsageError(
                f"the registry lists the agenix authfile {path}, and no way to read it was given",
                "pass --age-host-key (the recipients) and --age-identity (a private key to decrypt)",
            )
        text, existed = read_current(host, age_target(path))
        if existed:
            texts.append((path, text, True))
    # a resident credential reads `*` in the authfile; the registry (since it records the public
    # key) says whose it is and its credential id, so it can be probed and revoked like the others
    resident = {
        (str(e.get("path", e.get("age_file", ""))), str(e.get("user")), str(e["public_key"])): str(
            e.get("credential_id", "")
        )
        for _k, e in registry.enrollments("pam")
        if e.get("resident") is True and "public_key" in e
    }
    for path, text, is_age in texts:
        authfile = Authfile.parse(text)
        for user in authfile.users():
            for cred in authfile.credentials_of(user):
                cid_text = resident.get((path, user, cred.public_key), "") if cred.resident else cred.key_handle
                raw = cred.credential_id if not cred.resident else _b64(cid_text)
                if raw is None:
                    continue  # a resident credential the registry does not know: nobody's to revoke
                if not cred.resident:
                    cid_text = base64.b64encode(raw).decode()
                origin = origins.get(cid_text) or default_origin(host)
                found.append(
                    Found(
                        "pam",
                        path,
                        origin,
                        raw,
                        owner(cid_text),
                        user=user,
                        age=is_age,
                        pam_options=cred.options,
                        resident_key=cred.public_key if cred.resident else "",
                    )
                )
    for _k, e in registry.enrollments("ssh"):
        if e.get("role", "key-file") != "key-file" or "credential_id" not in e:
            continue
        cid = _b64(e["credential_id"])
        if cid is None:
            continue
        flags = e.get("flags")
        found.append(
            Found(
                "ssh",
                str(e.get("path", "")),
                str(e.get("application", "ssh:")),
                cid,
                owner(str(e["credential_id"])),
                user=str(e.get("user", "")),
                public_key=str(e.get("public_key", "")),
                needs_uv=not isinstance(flags, int) or bool(flags & FLAG_USER_VERIFICATION),
                ssh_flags=flags if isinstance(flags, int) else None,
            )
        )
    return found


def signer_files(registry: Registry, account: Account) -> list[PurePosixPath]:
    """Every allowed_signers file the registry's git records name, and the user's default one."""
    named = [
        PurePosixPath(str(e["allowed_signers"])) for _k, e in registry.enrollments("git") if e.get("allowed_signers")
    ]
    return list(dict.fromkeys([*named, default_allowed_signers(account)]))


def probe(found: list[Found], sessions: dict[str, KeySession]) -> None:
    """Ask each present key, silently, whether it made each credential (no touch; the PIN only
    for verify-required SSH keys, which a key shows only to UV)."""
    for f in found:
        for role, session in sessions.items():
            if session.probe(f.rp_id, f.credential_id, uv=f.needs_uv):
                f.answered_by = role
                break


@dataclass
class ReplaceAnswers:
    lost: list[str] = field(default_factory=list)  # registry names of the lost keys, as the person said
    new_nickname: str = ""
    unlock_key_file: str = ""
    revoke_git: bool = True  # also list the lost key in gpg.ssh.revocationFile
    age_host_keys: list[str] = field(default_factory=list)  # NixOS: recipients (.pub inside the root)
    age_identity: str = ""  # NixOS: a private key (local path) that decrypts the age file

    def to_json(self) -> dict[str, Any]:
        return {
            "lost": list(self.lost),
            "new_nickname": self.new_nickname,
            "unlock_key_file": self.unlock_key_file,
            "revoke_git": self.revoke_git,
            "age_host_keys": self.age_host_keys,
            "age_identity": self.age_identity,
        }


def age_target_for(host: Host, answers: ReplaceAnswers) -> AgeTarget:
    """How to read and re-encrypt an agenix authfile: the host keys given (default the root's
    ssh_host_ed25519_key.pub) as recipients; --age-identity, else that host key's private half."""

    def target(age_file: str) -> Target:
        pubs = answers.age_host_keys or ["/etc/ssh/ssh_host_ed25519_key.pub"]
        recipients = []
        for pub in pubs:
            recipients += agefile.parse_recipients_text(host.read_text(pub), source=pub)
        identity = None
        if answers.age_identity:
            identity = agefile.parse_identities(Path(answers.age_identity).read_bytes(), source=answers.age_identity)
        elif host.exists(pubs[0].removesuffix(".pub")):
            private = pubs[0].removesuffix(".pub")
            identity = agefile.parse_identities(host.read_bytes(private), source=private)
        return Target(age_file=Path(age_file), recipients=recipients, identity=identity)

    return target


@dataclass
class ReplaceIO:
    new_pin: Callable[[str], str]
    unlock: Callable[[str], bytes]
    notes: list[str] = field(default_factory=list)


def check_safe(found: list[Found]) -> None:
    """Refuse when no present key answers for anything: nothing proven would remain."""
    if not found:
        raise UsageError(
            "no enrolled credential found on this host (registry, LUKS tokens, pam_u2f authfiles)",
            "nothing to replace; enroll keys with `yktool commission`",
        )
    if all(f.answered_by is None for f in found):
        owners = sorted({f.owner for f in found})
        raise Refused(
            f"none of the keys present answers for any enrolled credential (all belong to {', '.join(owners)}): "
            "revoking them would leave no enrolled key, and a failed step could lock you out",
            "get in without a key first: open the disk with the recovery key (or passphrase), enroll the new key "
            "with `yktool commission`, then run `yktool replace` with that key present to revoke the lost one",
        )


def registry_listing(host: Host) -> str:
    """`primary (luks, ssh, pam), backup (…)`: the names `--lost` takes, as `yktool keys list` has them."""
    registry = Registry.load(host)
    return (
        ", ".join(
            f"{k.nickname} ({', '.join(dict.fromkeys(str(e.get('kind')) for e in k.enrollments))})"
            for k in registry.keys
        )
        or "none: the registry is empty"
    )


def revoked_before(host: Host) -> list[str]:
    """The names an earlier (finished or interrupted) replace run was told were lost."""
    state = FlowState.load(host, FLOW)
    return [str(n) for n in state.answers.get("lost", [])] if isinstance(state.answers.get("lost"), list) else []


def check_names(host: Host, names: list[str]) -> list[str]:
    """The names given as lost, checked against the registry (`yktool keys list`); a name an
    earlier replace run already revoked is accepted (a re-run, or a resumed one). Returns the
    names still in the registry."""
    if not names:
        raise UsageError(
            "which key was lost? (none named)",
            f"name it with --lost NAME (several allowed); registered: {registry_listing(host)}",
        )
    known = {k.nickname for k in Registry.load(host).keys}
    earlier = set(revoked_before(host))
    unknown = [n for n in names if n not in known and n not in earlier]
    if unknown:
        raise UsageError(
            f"--lost {', '.join(unknown)}: no such key in the registry",
            f"name one of the registered keys (yktool keys list): {registry_listing(host)}",
        )
    return [n for n in names if n in known]


def check_new_nickname(host: Host, lost: list[str], nickname: str) -> None:
    """The replacement's registry name must be a new one: the lost key's own name is dropped
    from the registry by the revoke step (taking the new key's entries with it: its token and
    credentials would stay, unregistered, and a later replace could never revoke them), and a
    kept key's name would make two keys one entry (losing either revokes both). A resumed run
    (same answers, unfinished) finds the name it recorded itself: that is allowed."""
    state = FlowState.load(host, FLOW)
    resuming = state.resuming and state.answers.get("new_nickname") == nickname and state.answers.get("lost") == lost
    if nickname in lost or (not resuming and Registry.load(host).get(nickname) is not None):
        what = "the lost key's own name" if nickname in lost else "already a registered key's name"
        raise UsageError(
            f"--new-nickname {nickname}: {what}",
            f"give the replacement a name of its own (--new-nickname NAME); registered: {registry_listing(host)}",
        )


def mark_lost(found: list[Found], names: list[str]) -> None:
    """A credential is lost when the registry says a key named lost made it; nothing else is."""
    for f in found:
        f.lost = f.owner in names


def check_named_absent(found: list[Found]) -> None:
    """A key named lost that answers a probe is in hand: refuse rather than revoke a key that is here."""
    here = sorted({(f.owner, f.answered_by) for f in found if f.lost and f.answered_by not in (None, "new")})
    if here:
        which = ", ".join(f"{owner} (answers as {role})" for owner, role in here)
        raise Refused(
            f"the key named lost is plugged in: {which}",
            "check the name (yktool keys list), or remove that key and run again",
        )


def replacement_options(f: Found) -> enroll.KeygenOptions:
    """The SSH key options of the lost key, for its replacement: the same application and the
    same protection (verify-required, resident, no-touch-required), never a weaker key."""
    flags = f.ssh_flags if f.ssh_flags is not None else FLAG_USER_PRESENCE
    return enroll.KeygenOptions(
        application=f.rp_id if f.rp_id.startswith("ssh:") else "ssh:",
        verify_required=bool(flags & FLAG_USER_VERIFICATION),
        resident=bool(flags & FLAG_RESIDENT),
        no_touch_required=not flags & FLAG_USER_PRESENCE,
    )


class Replace:
    """The steps of one replace run."""

    def __init__(
        self,
        host: Host,
        answers: ReplaceAnswers,
        keys: KeyRing,
        io: ReplaceIO,
        state: FlowState,
        found: list[Found],
        has_new: bool,
    ) -> None:
        self.host, self.answers, self.keys, self.io, self.state = host, answers, keys, io, state
        self.found = found
        self.has_new = has_new
        self.unlock = Passphrases(host, answers.unlock_key_file, io.unlock)
        self.lost_names = list(answers.lost)
        self.forced: list[Loss] = []  # what --force lets go (checked whole in check_plan)
        self.force = False
        self.checked_under: object | None = None  # the lock hold the plan was checked under
        self.now = datetime.datetime.now(datetime.UTC)

    def lost(self, area: str) -> list[Found]:
        return [f for f in self.found if f.lost and f.area == area]

    # ------------------------------------------------------------------ plan
    def build_steps(self) -> list[FlowStep]:
        steps: list[FlowStep] = []
        nick = self.answers.new_nickname
        luks_devs = list(dict.fromkeys(f.where for f in self.lost("luks")))
        pam_targets = list(dict.fromkeys((f.where, f.user, f.rp_id) for f in self.lost("pam")))
        ssh_keys = self.lost("ssh")
        if self.has_new:
            steps.append(
                FlowStep(
                    "new.pin",
                    f"new key ({nick}): check it and its PIN (set one if it has none)",
                    self.new_pin,
                    ["new key"],
                    "a PIN token from the key",
                    "new",
                )
            )
            for dev in luks_devs:
                steps.append(
                    FlowStep(
                        f"new.luks@{dev}",
                        f"enroll the new key into {dev} (systemd-fido2)",
                        partial(self.enroll_luks, dev),
                        [dev],
                        "its hmac-secret opens the new keyslot",
                        "new",
                    )
                )
            for f in ssh_keys:
                steps.append(
                    FlowStep(
                        f"new.ssh@{f.where}",
                        f"new ed25519-sk key in place of {f.where}, authorized and accepted for git",
                        partial(self.enroll_ssh, f),
                        [f.where],
                        "ssh-keygen -y reads it back",
                        "new",
                    )
                )
            for path, user, origin in pam_targets:
                steps.append(
                    FlowStep(
                        f"new.pam@{path}:{user}",
                        f"pam_u2f credential for {user} in {path}",
                        partial(self.enroll_pam, path, user, origin),
                        [path],
                        "an assertion verifies against the stored key",
                        "new",
                    )
                )
            steps.append(
                FlowStep(
                    "new.rules",
                    "udev lock and USBGuard rules for the new key where the lost had them",
                    self.enroll_rules,
                    ["/etc/udev/rules.d", "/etc/usbguard/rules.conf"],
                    "the files read back",
                    "new",
                )
            )
        for dev in luks_devs:
            steps.append(
                FlowStep(
                    f"revoke.luks@{dev}",
                    f"wipe the lost key's keyslots and tokens in {dev}",
                    partial(self.revoke_luks, dev),
                    [dev],
                    "the header no longer has them",
                )
            )
        for path, user, _origin in pam_targets:
            steps.append(
                FlowStep(
                    f"revoke.pam@{path}:{user}",
                    f"drop the lost key's pam_u2f credential of {user}",
                    partial(self.revoke_pam, path, user),
                    [path],
                    "the authfile parses without it",
                )
            )
        for f in ssh_keys:
            steps.append(
                FlowStep(
                    f"revoke.ssh@{f.where}",
                    f"revoke SSH key {f.where}: authorized_keys, allowed_signers (valid-before), git revocation file",
                    partial(self.revoke_ssh, f),
                    [f.where],
                    "the files read back",
                )
            )
        steps.append(
            FlowStep(
                "revoke.registry",
                f"drop {', '.join(self.lost_names)} from the registry and its udev/USBGuard rules",
                self.revoke_registry,
                ["/etc/yktool/keys.toml"],
                "read the registry back",
            )
        )
        if self.host.exists("/etc/NIXOS"):
            steps.append(
                FlowStep(
                    "nixos.module",
                    "rewrite the NixOS module from the key registry",
                    self.nixos_module,
                    ["the NixOS module"],
                    "nix-instantiate --parse",
                    None,
                    always=True,
                )
            )
        return steps

    def nixos_module(self) -> str:
        return regenerate(self.host)

    def touches(self) -> int:
        """The new key's touches: one per credential made (the LUKS slot's secret and the pam_u2f
        proof are read silently; systemd-cryptenroll asks its own two)."""
        luks = len(dict.fromkeys(f.where for f in self.lost("luks")))
        pam = len(dict.fromkeys((f.where, f.user, f.rp_id) for f in self.lost("pam")))
        return luks * luks_touches(self.keys.specs.get("new")) + len(self.lost("ssh")) + pam

    # ------------------------------------------------------------------ enroll the replacement
    def new_pin(self) -> str:
        return self.keys.check_pin("new", self.io.new_pin)

    def enroll_luks(self, device: str) -> str:
        op = enroll_luks_fido2(self.host, device, self.keys.session("new"), self.answers.new_nickname, self.unlock)
        self.keys.add_touches("new", op.tool_touches)
        return f"token {op.new_token} on keyslot {op.new_slot}, proven to open {device}"

    def new_key_path(self, f: Found) -> PurePosixPath:
        return PurePosixPath(f.where)

    def enroll_ssh(self, f: Found) -> str:
        account = lookup_user(self.host, f.user)
        path = self.new_key_path(f)
        session = self.keys.session("new")
        key = None
        if self.host.exists(path):
            current = enroll.load_private(self.host, path)
            if session.probe(current.public.application, current.key_handle, uv=current.verify_required):
                key = current  # made by an earlier (interrupted) run
        if key is None:
            opts = replacement_options(f)
            enroll.precheck(session, opts)
            key = enroll.make_key(session, opts, f"{f.user} ({self.answers.new_nickname})", prechecked=True)
            enroll.write_key_files(self.host, key, path, account.owner())  # the lost key's file is backed up
        git = [
            e for _k, e in Registry.load(self.host).enrollments("git") if str(e.get("public_key", "")) == f.public_key
        ]
        done = enroll.authorize_and_prove(
            self.host, account, key, path, nickname=self.answers.new_nickname, aaguid=session.aaguid
        )
        for e in git:
            # where the lost key signed (the global config or a repository's), the new one signs,
            # with the same allowed_signers file; where it was only accepted, the new one is
            signs = bool(e.get("config_file"))
            scope = str(e.get("config_scope") or "")
            repo = PurePosixPath(scope.removeprefix("repo:")) if scope.startswith("repo:") else None
            if signs and repo is not None and not self.host.is_dir(repo):
                signs, repo = False, None  # the repository is gone: nothing signs there any more
            signers = str(e.get("allowed_signers") or "")
            add_signer(
                self.host,
                account,
                key,
                email=str(e.get("email", "")),
                nickname=self.answers.new_nickname,
                signing_key=enroll.pub_path(path) if signs else None,
                repo=repo,
                allowed_signers=PurePosixPath(signers) if signers else None,
            )
        return f"{key.public.fingerprint} in {path}, authorized in {done.authorized.path}" + (
            ", git signing" if git else ""
        )

    def pam_target(self, path: str, user: str) -> Target:
        if any(f.age and f.where == path for f in self.found):
            return age_target_for(self.host, self.answers)(path)
        return plain_target(self.host, user, path)

    def enroll_pam(self, path: str, user: str, origin: str) -> str:
        # the lost credential's checks carry over (+pin, +verification): the replacement is never weaker
        options = "".join(f.pam_options for f in self.lost("pam") if f.where == path and f.user == user)
        request = RegisterRequest(
            user=user,
            origin=origin,
            target=self.pam_target(path, user),
            nickname=self.answers.new_nickname,
            pin="+pin" in options,
            verification="+verification" in options,
        )
        result = pam_register(self.host, self.keys.session("new"), request)
        if result.already_registered:
            return f"already registered for {user}"
        return f"registered for {user} in {path} (origin {origin}), proven with an assertion"

    def enroll_rules(self) -> str:
        """The new key's udev lock and USBGuard rules, where the lost key had them."""
        registry = Registry.load(self.host)
        kinds = {e.get("kind") for k in registry.keys if k.nickname in self.lost_names for e in k.enrollments}
        done = []
        if kinds & {"udev", "usbguard"}:
            key = identity_from(usb_identity(self.keys.session("new").device))
            nick = self.answers.new_nickname
            if self.host.exists("/etc/NIXOS"):  # the NixOS module is rendered from these records
                if "udev" in kinds:
                    udev_rule.record_for_nixos(self.host, key, nick)
                if "usbguard" in kinds:
                    usbguard_rule.record_for_nixos(self.host, key, nick)
                done.append("recorded for the NixOS module")
            else:
                if "udev" in kinds:
                    udev_rule.install_and_record(self.host, key, nick)
                    done.append("udev lock rule")
                if "usbguard" in kinds:
                    usbguard_rule.allow_and_record(self.host, key, nick)
                    done.append("USBGuard rule")
        self.keys.close()  # the new key is no longer needed: count its touches now
        return ", ".join(done) or "the lost key had no udev/USBGuard rules"

    # ------------------------------------------------------------------ revoke the lost key
    def revoke_luks(self, device: str) -> str:
        header = read_header_seeing_pending(self.host, device)  # an unseen recovery key is no way in
        lost_tokens = {f.token for f in self.lost("luks") if f.where == device}
        slots = sorted({s for t in header.tokens_of_type("systemd-fido2") if t.id in lost_tokens for s in t.keyslots})
        if not slots:
            return "already gone"
        check_remaining(header, slots)
        wipe_slots(self.host, device, slots)
        after = read_header(self.host, device)
        if any(s in after.keyslots for s in slots):
            raise ToolFailed(f"keyslot(s) {slots} are still in {device}", "check `yktool luks status`")
        return f"wiped keyslot(s) {', '.join(map(str, slots))} and their tokens"

    def _pam_line(
        self, path: str, user: str
    ) -> tuple[Target, Authfile, AuthLine | None, list[U2fCredential], set[bytes]]:
        """(target, authfile, the user's line or None, the credentials it keeps, the lost ids)."""
        mine = [f for f in self.lost("pam") if f.where == path and f.user == user]
        lost_ids = {f.credential_id for f in mine if not f.resident_key}
        lost_resident = {f.resident_key for f in mine if f.resident_key}
        target = self.pam_target(path, user)
        authfile = Authfile.parse(read_current(self.host, target)[0])
        line = authfile.effective_line(user)
        keep = (
            [
                c
                for c in line.credentials
                if c.credential_id not in lost_ids and not (c.resident and c.public_key in lost_resident)
            ]
            if line is not None
            else []
        )
        return target, authfile, line, keep, lost_ids

    def removal(self) -> Removal:
        """Everything the run takes away, and where the new key is enrolled (and proven) first."""
        out = Removal()
        for f in self.lost("luks"):
            out.add_luks(f.where, f.keyslots)
        for f in self.lost("pam"):
            if f.resident_key:
                out.pam_resident[(f.where, f.user)] = out.pam_resident.get((f.where, f.user), 0) + 1
            else:
                out.add_pam(f.where, f.user, f.credential_id)
            if f.age and f.where not in out.pam_texts:
                out.pam_texts[f.where] = read_current(self.host, self.pam_target(f.where, f.user))[0]
            if self.has_new:
                out.replaced_pam.add((f.where, f.user))
        for f in self.lost("ssh"):
            for path, user in self.ssh_places(f):
                out.add_ssh(path, user, _blob(f.public_key))
                if self.has_new and path == self.new_authorized_keys(user):
                    out.replaced_ssh.add((path, user))  # the new key is authorized there before the lost one goes
        return out

    def new_authorized_keys(self, user: str) -> str:
        """Where enroll_ssh authorizes the new key: the user's own ~/.ssh/authorized_keys."""
        try:
            return str(authorized_keys_path(lookup_user(self.host, user)))
        except YktoolError:
            return ""

    def ssh_places(self, f: Found) -> list[tuple[str, str]]:
        """The authorized_keys files (and their users) the lost SSH key is in: those the registry
        has, and the key's user's and root's own authorized_keys when they hold it — `ssh
        authorize` writes before it records (a kill -9 between the two, a registry restored from
        before), and a line the registry does not know still lets the finder in."""
        registry = Registry.load(self.host)
        places = [
            (str(e["path"]), str(e.get("user") or f.user))
            for _k, e in registry.enrollments("ssh")
            if e.get("role") == "authorized_keys" and "path" in e and str(e.get("public_key")) == f.public_key
        ]
        blob = _blob(f.public_key)
        for user in dict.fromkeys([f.user, "root"]):
            try:
                path = str(authorized_keys_path(lookup_user(self.host, user)))
                if (
                    blob
                    and self.host.exists(path)
                    and any(key_blob_in(ln) == blob for ln in self.host.read_text(path).splitlines())
                ):
                    places.append((path, user))
            except (OSError, YktoolError):
                continue  # a file yktool may not read is the touched-files check's to refuse
        return list(dict.fromkeys(places))

    def check_plan(self, force: bool) -> None:
        """The whole plan's last-way-in check, before anything is done: a LUKS volume left
        without a way in is always refused; a user left without a pam_u2f credential (where PAM
        requires one) or without any SSH key is refused unless `force` (then `self.forced` says
        who loses what, for the plan and the typed confirmation).

        Why refuse by default rather than revoke: the refusal costs minutes (insert the new key,
        or authorize another one) and changes nothing; revoking a user's only SSH key may cut off
        the very session the owner runs this from, and cannot be undone from afar. Why allow
        it with --force: a stolen key must be cut off now even when no replacement is at hand —
        the finder keeping SSH access is the worse outcome, and the person decides it, typing
        the key's name, with the plan saying who loses what."""
        refuse_links(self.host, replace_files(self))  # a user's link: refused before any step acts
        found = losses(self.host, self.removal())
        luks = [x for x in found if x.area == "luks"]
        if luks:
            raise Refused(
                f"revoking {', '.join(self.lost_names)} would leave {luks[0].where} without a safe "
                f"way in: {luks[0].message}",
                luks[0].hint,
            )
        if found and not force:
            ways = (
                "insert a new key and pass it as --new-device: it is enrolled and proven first, then the lost "
                "key is revoked"
                if not self.has_new
                else ""
            )
            raise Refused(
                f"revoking {', '.join(self.lost_names)} {'alone ' if not self.has_new else ''}would lock "
                f"out: {describe(found)}; nothing was changed",
                "; ".join(
                    w
                    for w in (
                        ways,
                        found[0].hint,
                        f"or revoke anyway, knowing who loses what: --force --confirm {self.lost_names[0]}",
                    )
                    if w
                ),
            )
        self.forced = found

    def forced_empty(self, area: str, path: str, user: str) -> bool:
        return any(x.area == area and x.where == path and x.user == user for x in self.forced)

    def _may_empty(self, path: str, user: str) -> bool:
        """The plan found emptying this line leaves the user a way in, or it was forced."""
        if self.forced_empty("pam", path, user):
            return True
        required, _services = pam_requiring(self.host, path, user)
        return not required

    def revoke_pam(self, path: str, user: str) -> str:
        target, authfile, line, keep, lost_ids = self._pam_line(path, user)
        if line is None:
            return "the user has no line"
        if len(keep) == len(line.credentials):
            return "already gone"
        if keep:
            text = line.text.split(":", 1)[0] + ":" + ":".join(c.raw or c.render() for c in keep)
            lines = [AuthLine(ln.lineno, text, ln.eol) if ln is line else ln for ln in authfile.lines]
        elif self._may_empty(path, user):
            # the plan allowed it (PAM does not require pam_u2f here, or --force): the user's lines
            # go whole (an earlier line would otherwise become the one pam_u2f reads)
            lines = [ln for ln in authfile.lines if ln.user != user]
        else:
            raise Refused(
                f"dropping the lost key's credential would leave {user} without any pam_u2f key in {path}",
                "enroll the replacement first (run replace with --new-device)",
            )
        new_text = "".join(ln.raw for ln in lines)
        write_target(self.host, target, new_text)  # an age file is encrypted again, whole
        back = Authfile.parse(read_current(self.host, target)[0])
        gone = {c.public_key for c in line.credentials if c not in keep}
        if back.malformed or any(
            c.credential_id in lost_ids or (c.resident and c.public_key in gone) for c in back.credentials_of(user)
        ):
            raise ToolFailed(f"{path} does not read back as intended", "restore it from /var/backups/yktool")
        return f"{user} keeps {len(keep)} credential(s)" if keep else f"{user}'s line removed: no credential is left"

    def revoke_ssh(self, f: Found) -> str:
        public, _c = SkPublicKey.parse_line(f.public_key)
        registry = Registry.load(self.host)
        account = lookup_user(self.host, f.user)
        done = []
        for where, user in self.ssh_places(f):
            if revoke(self.host, PurePosixPath(where), public, allow_empty=self.forced_empty("ssh", where, user)):
                done.append(f"out of {where}")
        # the lost key's line goes out of date in every allowed_signers file yktool wrote, not
        # only those of its own records (a registry from before one record per key forgot them)
        expired = False
        for signers in signer_files(registry, account):
            if expire_signer(self.host, signers, public, self.now):
                expired = True
                done.append(f"valid-before now in {signers}")
        mine = [e for _k, e in registry.enrollments("git") if str(e.get("public_key", "")) == f.public_key]
        configs = list(
            dict.fromkeys(PurePosixPath(str(e.get("config_file") or account.home / ".gitconfig")) for e in mine)
        )
        if self.answers.revoke_git and (mine or expired):
            revoked = account.home / REVOKED_FILE
            if add_revoked_signer(self.host, revoked, public, account.owner()):
                done.append(f"listed in {revoked}")
            git = Git(self.host, account)
            for config in configs or [account.home / ".gitconfig"]:
                if git.get(config, "gpg.ssh.revocationFile") != account.display(revoked):
                    git.set(config, "gpg.ssh.revocationFile", account.display(revoked))
        # the lost key's own file, unless the new key took its place
        path = PurePosixPath(f.where)
        if self.host.exists(path):
            if enroll.load_private(self.host, path).public == public:
                self.host.remove(path)
                self.host.remove(enroll.pub_path(path))
                done.append(f"removed {path}")
        return "; ".join(done) or "already revoked"

    def revoke_registry(self) -> str:
        registry = Registry.load(self.host)
        lost = [k for k in registry.keys if k.nickname in self.lost_names]
        still_allowed = {
            _usb_rule(e)
            for k in registry.keys
            if k.nickname not in self.lost_names
            for e in k.enrollments
            if e.get("kind") == "usbguard"
        }
        for k in lost:
            for e in k.enrollments:
                if e.get("kind") == "udev" and e.get("path") == udev_rule.RULE_PATH:
                    udev_rule.remove_block(self.host, k.nickname)
                if e.get("kind") == "usbguard" and self.host.exists(str(e.get("path", ""))):
                    wanted = _usb_rule(e)
                    if wanted in still_allowed:
                        continue  # keys of one model without a USB serial share one rule: a kept key needs it
                    usbguard_rule.remove_rule(self.host, str(e["path"]), *wanted)
        with Registry.update(self.host) as reg:
            reg.remove_keys(self.lost_names)
        return f"{', '.join(self.lost_names)} removed from the registry"


def _blob(public_key_line: str) -> bytes:
    """The key blob of an `sk-ssh-ed25519@openssh.com AAAA…` line (b"" when it has none)."""
    parts = public_key_line.split()
    return (_b64(parts[1]) or b"") if len(parts) > 1 else b""


def _usb_rule(entry: dict[str, Scalar]) -> tuple[str, str]:
    """(usb id, serial) of a registry usbguard entry: what its allow rule matches."""
    return str(entry.get("usb_id", "")).lower(), str(entry.get("serial", ""))


@dataclass
class ReplaceReport(FlowReport):
    """What a replace run did (the shared report: see flows/ending.py), and what it found."""

    found: list[Found] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            **super().to_json(),
            "lost": [f.to_json() for f in self.found if f.lost],
            "kept": [f.to_json() for f in self.found if not f.lost],
        }


AREA = {"luks": "LUKS2 FIDO2 slot", "pam": "pam_u2f", "ssh": "SSH key"}


def summary(flow: Replace, steps: list[FlowStep], width: int = 78) -> list[str]:
    """The plan on one screen: the root and host, per lost key what is revoked (per layer), the
    keys kept, the new key's enrollments and its touch and PIN budget. The full plan (every
    credential, every step) is on demand."""
    host = flow.host
    kind = "nixos" if host.exists("/etc/NIXOS") else "linux"
    done = set(flow.state.done)
    lines = [
        f"replace: {host.root}",
        f"  host {hostname(host) or 'no /etc/hostname'} ({kind}); {len(steps)} steps, "
        f"{sum(1 for st in steps if st.id in done and not st.always)} done already",
    ]
    for name in flow.lost_names:
        items = [
            f"{AREA[f.area]} {f.user + ' in ' if f.area == 'pam' else ''}{f.where}"
            for f in flow.found
            if f.lost and f.owner == name
        ]
        lines += summary_item(f"lost {name}, revoked", [*items, "registry entry and udev/USBGuard rules"], width)
    answered = {f.owner: f.answered_by for f in flow.found if f.answered_by not in (None, "new")}
    kept = [
        f"{k.nickname} ({'plugged in' if k.nickname in answered else 'not plugged in'})"
        for k in Registry.load(host).keys
        if k.nickname not in (*flow.lost_names, flow.answers.new_nickname)
    ]
    kept += [
        f"{f.describe()} (not in the registry, kept: yktool cannot tell which key made it)"
        for f in flow.found
        if f.owner == "unregistered" and not f.lost
    ]
    lines += summary_item("kept", kept or ["no other key"], width)
    for x in flow.forced:  # what --force lets go is never only in the details
        lines += summary_item("FORCED", [x.message], width)
    if flow.has_new:
        items = [f"LUKS2 FIDO2 slot {dev}" for dev in dict.fromkeys(f.where for f in flow.lost("luks"))]
        items += [f"SSH key {f.where} (authorized, git signing)" for f in flow.lost("ssh")]
        items += [
            f"pam_u2f {user} in {path}"
            for path, user, _o in dict.fromkeys((f.where, f.user, f.rp_id) for f in flow.lost("pam"))
        ]
        items.append("udev lock and USBGuard rules where the lost key had them")
        lines += summary_item(f"new key ({flow.answers.new_nickname}), first", items, width)
        lines.append(f"  new key: {budget(flow.touches())}, before anything of the lost key goes")
    else:
        lines.append("  no new key: revoke only (the kept keys stay the way in)")
    return lines


def next_steps(flow: Replace, report: ReplaceReport) -> list[str]:
    """What is left for the person, exactly: the new key in its place, its SSH key wherever the
    lost one was accepted off this host, the NixOS rebuild; without a new key, a new backup."""
    out: list[str] = []
    if flow.has_new:
        out.append(
            f"Put the new key ({flow.answers.new_nickname}) where the lost one was (keyring, laptop port); "
            "keep the other keys where they are"
        )
        for f in flow.lost("ssh"):
            out.append(
                f"Authorize the new SSH key {f.where}.pub wherever the lost one was accepted off this "
                "host (GitHub, other servers), and remove the lost one there"
            )
    else:
        out.append("Enroll a new backup key soon: one more lost key must not lock you out")
    if flow.host.exists("/etc/NIXOS"):
        out.append(NIXOS_REBUILD)
    return out


def find(
    host: Host,
    keys: KeyRing,
    present: list[str],
    with_new: bool,
    extra_devices: list[str] | None = None,
    age_target: AgeTarget | None = None,
) -> list[Found]:
    """Gather and probe with each present key (and the new one, whose credentials an interrupted
    run may have made): every credential with the key that answers it, or None when lost."""
    found = gather(host, extra_devices, age_target)
    roles = present + (["new"] if with_new else [])
    for role in roles:
        session = keys.session(role)
        probe([f for f in found if f.answered_by is None], {role: session})
        if role == "new":  # silently: is it one of the kept keys (left in where the new one should be)?
            for f in found:
                if f.answered_by not in (None, "new") and not f.needs_uv:
                    f.also_new = session.probe(f.rp_id, f.credential_id)
    keys.close()
    return found


def check_new_key(found: list[Found], new_nickname: str) -> None:
    """The replacement must not be a key already enrolled here: not under another name, and not
    a kept key (enrolled again under the new name, one physical key would stand for two)."""
    taken = {f.owner for f in found if f.answered_by == "new" and f.owner not in (new_nickname, "unregistered")}
    taken |= {f.owner for f in found if f.also_new}
    if taken:
        raise Refused(
            f"the new key is already enrolled here ({', '.join(sorted(taken))}): it answers for that key's credentials",
            "insert a key that is not enrolled yet and pass it as --new-device "
            "(or run without --new-device to revoke only)",
        )


def settle(host: Host) -> None:
    """Nothing is lost any more: a run killed after its last step is over (so a later loss starts
    afresh instead of being refused as "other answers")."""
    state = FlowState.load(host, FLOW)
    if state.resuming:
        state.finish(host)


def kept_notes(host: Host, found: list[Found], lost_names: list[str]) -> list[str]:
    """What the plan keeps, by key: plugged in, or not plugged in and not named (a spare in a
    safe is not lost because it is absent), and credentials the registry does not know."""
    answered = {f.owner: f.answered_by for f in found if f.answered_by not in (None, "new")}
    notes = []
    for k in Registry.load(host).keys:
        if k.nickname in lost_names:
            continue
        if k.nickname in answered:
            notes.append(f"{k.nickname} (plugged in, {answered[k.nickname]}): kept")
        elif any(f.owner == k.nickname and f.answered_by == "new" for f in found):
            continue
        else:
            notes.append(f"{k.nickname} (not plugged in): kept — not named lost")
    for f in found:
        if f.owner == "unregistered" and not f.lost:
            notes.append(f"{f.describe()}: not in the registry, kept (yktool cannot tell which key made it)")
    registered = [str(e["device"]) for _k, e in Registry.load(host).enrollments("luks") if "device" in e]
    for device, why in crypttab_luks(host, registered)[1].items():
        notes.append(
            f"{device}: not checked — {why}; the lost key may still open it (check it by hand: "
            "systemd-cryptenroll DEVICE)"
        )
    return notes


def prepare(
    host: Host,
    answers: ReplaceAnswers,
    keys: KeyRing,
    io: ReplaceIO,
    found: list[Found],
    has_new: bool,
    force: bool = False,
) -> tuple[Replace, list[FlowStep], Plan]:
    """The whole plan, checked whole (last way in, per user and volume) before anything changes."""
    state = FlowState.load(host, FLOW)
    if state.finished:
        state = FlowState(FLOW)  # a finished replace is history; a new loss is a new run
    flow = Replace(host, answers, keys, io, state, found, has_new)
    flow.force, flow.checked_under = force, current_hold(host)
    flow.check_plan(force)
    steps = flow.build_steps()
    plan = make_plan(
        f"replace the lost key ({', '.join(flow.lost_names)})"
        + (f" with {answers.new_nickname}" if has_new else " (revoke only)"),
        steps,
        state,
    )
    plan.notes.append("the replacement is enrolled and proven everywhere before the lost key is revoked")
    plan.notes.extend(kept_notes(host, found, flow.lost_names))
    plan.notes.extend(f"FORCED: {x.message}" for x in flow.forced)
    return flow, steps, plan


def execute(flow: Replace, steps: list[FlowStep], on_step: Callable[[Outcome], None] | None = None) -> ReplaceReport:
    """Act, under the root's lock. A plan not checked under the lock held now (a library caller
    that called `prepare` without it) is checked again first: another run may have changed the
    host since, and what --force let go must still be all that goes."""
    with root_lock(flow.host, f"yktool {FLOW}"):
        if not still_held(flow.host, flow.checked_under):
            confirmed = [x.to_json() for x in flow.forced]
            flow.check_plan(flow.force)
            if [x.to_json() for x in flow.forced] != confirmed:
                raise Refused(
                    "the host changed since the plan was checked: it would now lock out "
                    f"{describe(flow.forced)}; nothing was changed",
                    "prepare the plan again",
                )
        return _execute(flow, steps, on_step)


def _execute(flow: Replace, steps: list[FlowStep], on_step: Callable[[Outcome], None] | None) -> ReplaceReport:
    nothing = not pending(flow, steps)
    flow.state.begin(flow.host, flow.answers.to_json())
    outcomes = run_steps(flow.host, flow.state, steps, on_step)
    flow.keys.close()
    flow.state.finish(flow.host)
    # each step is proven by its consumer as it runs: no verify of its own, so nothing of another layer's
    return ReplaceReport(outcomes, [], flow.keys.totals(), list(flow.io.notes), nothing, found=flow.found)


def pending(flow: Replace, steps: list[FlowStep]) -> list[FlowStep]:
    return [s for s in steps if s.id not in flow.state.done and not s.always]
