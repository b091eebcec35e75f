"""Making, downloading and using FIDO2-backed OpenSSH keys through python-fido2.

This does what OpenSSH's built-in middleware (sk-usbhid.c) does with libfido2, so the files are
interchangeable with `ssh-keygen -t ed25519-sk`'s:
- rp id = the application (`ssh:` unless `application=ssh:NAME`), user id = 32 bytes, all zero
  unless `user=NAME` (copied in, zero-padded), user name "openssh";
- resident or verify-required keys get credProtect (verify-required: level 3 "UV required",
  else level 2 "UV optional with credential id"), and OpenSSH refuses keys without credProtect;
- a download (`ssh-keygen -K`) takes every discoverable credential whose rp id starts with
  "ssh:", with flags touch-required | resident, plus verify-required for credProtect level 3,
  and the application as comment.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath

from yktool.authorized_keys import AuthorizeResult, authorize_and_record
from yktool.errors import Refused, ToolFailed, UsageError
from yktool.fido.session import EDDSA, ES256, KeySession
from yktool.host import Host
from yktool.keynames import choose_nickname
from yktool.keynames import identify_key as identify_key  # re-exported for older callers
from yktool.ssh.accounts import Account

# the key files (no security key needed), re-exported: callers take a whole step from here
from yktool.ssh.files import (
    check_free,
    credential_id_b64,
    default_key_path,
    find_pubkey,
    load_key_pair,
    load_private,
    prove_files,
    pub_path,
    record_key,
    recorded_file,
    restore_from_record,
    write_key_files,
)
from yktool.ssh.keys import (
    ECDSA_SK,
    ED25519_SK,
    FLAG_RESIDENT,
    FLAG_USER_PRESENCE,
    FLAG_USER_VERIFICATION,
    TYPE_NAMES,
    SkPrivateKey,
    SkPublicKey,
    sk_suffix,
)
from yktool.ssh.sshsig import armor, client_data_hash, signed_data, sk_signature, sshsig_blob

CRED_PROTECT_UV_OPTIONAL_WITH_ID = 2
CRED_PROTECT_UV_REQUIRED = 3
USER_ID_LEN = 32
OPENSSH_USER_NAME = "openssh"
KNOWN_OPTIONS = ("resident", "verify-required", "no-touch-required", "application=ssh:NAME", "user=NAME")

NO_EDDSA_HINT = (
    "use --type ecdsa-sk (works on every FIDO2 key), or a key whose firmware has Ed25519 "
    "(YubiKey 5 from firmware 5.2.3)"
)


@dataclass(frozen=True)
class KeygenOptions:
    """What `ssh-keygen -t TYPE -O …` would be asked for."""

    key_type: str = ED25519_SK
    resident: bool = False
    verify_required: bool = False
    no_touch_required: bool = False
    application: str = "ssh:"
    user: str = ""

    @property
    def flags(self) -> int:
        flags = 0 if self.no_touch_required else FLAG_USER_PRESENCE
        if self.verify_required:
            flags |= FLAG_USER_VERIFICATION
        if self.resident:
            flags |= FLAG_RESIDENT
        return flags

    @property
    def user_id(self) -> bytes:
        return self.user.encode("utf-8").ljust(USER_ID_LEN, b"\0")

    @property
    def algorithm(self) -> int:
        return EDDSA if self.key_type == ED25519_SK else ES256

    @property
    def cred_protect(self) -> int | None:
        if self.verify_required:
            return CRED_PROTECT_UV_REQUIRED
        if self.resident:
            return CRED_PROTECT_UV_OPTIONAL_WITH_ID
        return None

    @property
    def needs_pin(self) -> bool:
        return self.resident or self.verify_required


def parse_options(values: Sequence[str], type_name: str = "ed25519-sk") -> KeygenOptions:
    """Parse `-O` values as ssh-keygen does for sk keys; anything else is a UsageError (exit 2)."""
    if type_name not in TYPE_NAMES:
        raise UsageError(f"unknown key type {type_name}", "use --type ed25519-sk or --type ecdsa-sk")
    fields: dict[str, object] = {"key_type": TYPE_NAMES[type_name]}
    for value in values:
        name, eq, arg = value.partition("=")
        lowered = name.lower()
        if not eq and lowered in ("resident", "verify-required", "no-touch-required"):
            fields[lowered.replace("-", "_")] = True
        elif eq and lowered == "application":
            if not arg.startswith("ssh:"):
                raise UsageError(
                    f'application {arg!r} does not start with "ssh:"',
                    "OpenSSH accepts only applications like ssh: or ssh:NAME",
                )
            fields["application"] = arg
        elif eq and lowered == "user":
            if not arg or len(arg.encode("utf-8")) >= USER_ID_LEN:
                raise UsageError(f"user {arg!r} must be 1 to {USER_ID_LEN - 1} bytes", "pick a shorter name")
            fields["user"] = arg
        elif lowered == "device":
            raise UsageError("-O device= is not used by yktool", "pick the key with the global --device option")
        else:
            raise UsageError(f"unknown -O option {value!r}", "known options: " + ", ".join(KNOWN_OPTIONS))
    return KeygenOptions(**fields)  # type: ignore[arg-type]


# --------------------------------------------------------------------------------- the key
def check_algorithm(session: KeySession, options: KeygenOptions) -> None:
    """Refuse, before any touch, an algorithm or feature the key does not have."""
    if not session.supports_algorithm(options.algorithm):
        if options.key_type == ED25519_SK:
            raise UsageError(
                "this key does not support Ed25519 (EdDSA), so it cannot make an ed25519-sk key", NO_EDDSA_HINT
            )
        raise UsageError("this key does not support ES256", "use a FIDO2 key; every FIDO2 key has ES256")
    if options.cred_protect is not None and "credProtect" not in session.info.extensions:
        raise UsageError(
            "this key has no credProtect extension, which OpenSSH requires for resident and verify-required keys",
            "make a plain key (no -O resident / verify-required)",
        )
    if options.needs_pin and not session.pin_is_set:
        raise UsageError(
            "resident and verify-required keys need a PIN on the key, and it has none",
            "set one first: yktool key pin set",
        )


def precheck(session: KeySession, options: KeygenOptions, *, force: bool = False) -> None:
    """Everything that can refuse the key before it changes: algorithm, credProtect, PIN, and a
    resident key for the same application and user already on the key (making it again would
    silently replace it) unless `force`."""
    check_algorithm(session, options)
    if options.resident and not force:
        try:
            existing = session.list_resident(options.application)
        except UsageError:
            existing = []  # no credential management: nothing to compare against
        if any(c.user_id.ljust(USER_ID_LEN, b"\0") == options.user_id for c in existing):
            raise Refused(
                f"the key already holds a resident SSH key for {options.application}"
                + (f" user {options.user}" if options.user else ""),
                "making it again would replace it on the key; use `yktool ssh download` to get its "
                "files back, another -O application=ssh:NAME / user=NAME, or --force to replace it",
            )


def make_key(
    session: KeySession, options: KeygenOptions, comment: str, *, force: bool = False, prechecked: bool = False
) -> SkPrivateKey:
    """Make the credential on the key (one touch; the PIN when the key has one) and return the
    key-handle file's content (see `precheck` for what is refused first)."""
    if not prechecked:
        precheck(session, options, force=force)
    try:
        cred = session.make_credential(
            options.application,
            client_data_hash=hashlib.sha256(os.urandom(32)).digest(),
            user_id=options.user_id,
            user_name=OPENSSH_USER_NAME,
            algorithms=(options.algorithm,),
            resident=options.resident,
            uv=options.verify_required,
            cred_protect=options.cred_protect,
        )
    except UsageError as err:
        if options.key_type == ED25519_SK and ("EdDSA" in err.message or "algorithm" in err.message):
            raise UsageError(
                "this key does not support Ed25519 (EdDSA), so it cannot make an ed25519-sk key", NO_EDDSA_HINT
            ) from None
        raise
    public = SkPublicKey.from_cose(cred.public_key, options.application)
    if public.key_type != options.key_type:
        raise ToolFailed(
            f"the key made a {public.key_type} credential, not {options.key_type}",
            "the key ignored the algorithm asked for; try --type ecdsa-sk",
        )
    if options.cred_protect is not None and cred.cred_protect not in (None, options.cred_protect):
        raise ToolFailed(
            f"the key set credProtect {cred.cred_protect}, not {options.cred_protect}",
            "the key is misbehaving; try another key",
        )
    return SkPrivateKey(public, options.flags, cred.credential_id, comment)


@dataclass(frozen=True)
class ResidentKey:
    key: SkPrivateKey
    user_id: bytes

    @property
    def suffix(self) -> str:
        return sk_suffix(self.key.public.application, self.user_id)


def resident_keys(session: KeySession) -> list[ResidentKey]:
    """The SSH keys stored on the key (rp ids starting with "ssh:"), as `ssh-keygen -K` rebuilds them."""
    out: list[ResidentKey] = []
    for cred in session.list_resident(None):
        if not cred.rp_id.startswith("ssh:"):
            continue
        try:
            public = SkPublicKey.from_cose(cred.public_key, cred.rp_id)
        except UsageError:
            continue  # an algorithm OpenSSH has no type for
        flags = FLAG_USER_PRESENCE | FLAG_RESIDENT
        if cred.cred_protect == CRED_PROTECT_UV_REQUIRED:
            flags |= FLAG_USER_VERIFICATION
        out.append(ResidentKey(SkPrivateKey(public, flags, cred.credential_id, cred.rp_id), cred.user_id))
    return out


# --------------------------------------------------------------------------------- signing
def sign(session: KeySession, key: SkPrivateKey, namespace: str, message: bytes) -> bytes:
    """An armored SSHSIG over `message`, made by the key (a touch unless no-touch-required; the
    PIN when verify-required), exactly as `ssh-keygen -Y sign -n NAMESPACE` would make it."""
    data = signed_data(namespace, message)
    application = key.public.application
    assertion = session.get_assertion(
        application, client_data_hash(data), allow=[key.key_handle], up=key.touch_required, uv=key.verify_required
    )
    raw = bytes(assertion.auth_data)
    if len(raw) != 37 or raw[:32] != hashlib.sha256(application.encode("utf-8")).digest():
        raise ToolFailed(
            "the key's answer carries extensions or another rp id; OpenSSH could not verify it",
            "this key cannot make OpenSSH signatures with this credential",
        )
    blob = sk_signature(key.public, assertion.signature, raw[32], assertion.counter)
    return armor(sshsig_blob(key.public, namespace, blob))


# --------------------------------------------------------------------------------- whole steps
@dataclass(frozen=True)
class KeygenResult:
    key: SkPrivateKey
    path: PurePosixPath
    nickname: str
    proof: str


def keygen(
    host: Host,
    session: KeySession,
    options: KeygenOptions,
    *,
    path: PurePosixPath,
    comment: str,
    owner: tuple[int, int] | None,
    user: str,
    nickname: str | None = None,
    force: bool = False,
) -> KeygenResult:
    """The whole `ssh keygen` step: refuse what must be refused before the key changes, make the
    credential, write both files, record them in the registry, read them back with ssh-keygen."""
    check_free(host, path, force)
    precheck(session, options, force=force)
    name = choose_nickname(session, host, nickname)  # silent probes, before the credential is made
    key = make_key(session, options, comment, force=force, prechecked=True)
    write_key_files(host, key, path, owner)
    record_key(host, key, path, nickname=name, aaguid=session.aaguid, user=user)
    return KeygenResult(key, path, name, prove_files(host, path, key))


@dataclass(frozen=True)
class LoginKey:
    authorized: AuthorizeResult
    proof: str


def authorize_and_prove(
    host: Host, account: Account, key: SkPrivateKey, path: PurePosixPath, *, nickname: str, aaguid: str
) -> LoginKey:
    """The end of every enrollment of an SSH key for a login (commission, replace): its files
    recorded, the key authorized for `account` and recorded, the files read back by ssh-keygen
    (required here: a flow step counts as done only when proven)."""
    record_key(host, key, path, nickname=nickname, aaguid=aaguid, user=account.name)
    authorized = authorize_and_record(host, account, key, nickname=nickname)
    return LoginKey(authorized, prove_files(host, path, key, required=True))


@dataclass(frozen=True)
class DownloadPlan:
    key: SkPrivateKey
    path: PurePosixPath
    state: str  # new | unchanged | differs


def plan_download(
    host: Host,
    found: Sequence[ResidentKey],
    account: Account,
    output_dir: PurePosixPath | None = None,
    *,
    force: bool = False,
) -> list[DownloadPlan]:
    """Where each resident key's files go and whether they are new, unchanged or differ (a
    difference is refused without `force`, before anything is written)."""
    plans: list[DownloadPlan] = []
    for rk in found:
        entry = recorded_file(host, rk.key)
        key = restore_from_record(rk.key, entry)
        recorded = PurePosixPath(str(entry["path"])) if entry and "path" in entry else None
        default = default_key_path(account, key.public.key_type, rk.suffix)
        if output_dir is not None:
            path = output_dir / (recorded.name if recorded else default.name)
        elif recorded is not None and entry is not None and entry.get("user") == account.name:
            path = recorded
        else:  # another user's key (or an unknown one): the file name, in this user's ~/.ssh
            path = account.ssh_dir / (recorded.name if recorded else default.name)
        files = {path: key.to_file(), pub_path(path): key.pub_file()}
        state = "new"
        if all(host.exists(p) for p in files):
            state = "unchanged" if all(host.read_bytes(p) == d for p, d in files.items()) else "differs"
        elif any(host.exists(p) for p in files):
            state = "differs"
        if state == "differs" and not force:
            raise Refused(
                f"{path} (or its .pub) exists and differs from the key on the device",
                "move it away, use --output-dir, or pass --force to replace it (backed up first)",
            )
        plans.append(DownloadPlan(key, path, state))
    return plans


def apply_download(
    host: Host, plans: Sequence[DownloadPlan], account: Account, *, nickname: str, aaguid: str
) -> list[DownloadPlan]:
    """Write the planned files (skipping unchanged ones), prove them, record them."""
    for plan in plans:
        if plan.state != "unchanged":
            write_key_files(host, plan.key, plan.path, account.owner())
            prove_files(host, plan.path, plan.key)
        record_key(host, plan.key, plan.path, nickname=nickname, aaguid=aaguid, user=account.name)
    return list(plans)


__all__ = [
    "ECDSA_SK",
    "ED25519_SK",
    "DownloadPlan",
    "KeygenOptions",
    "KeygenResult",
    "ResidentKey",
    "apply_download",
    "check_free",
    "default_key_path",
    "keygen",
    "load_private",
    "make_key",
    "parse_options",
    "plan_download",
    "precheck",
    "prove_files",
    "record_key",
    "resident_keys",
    "sign",
    "write_key_files",
    "find_pubkey",
    "load_key_pair",
    "authorize_and_prove",
    "LoginKey",
    "credential_id_b64",
    "pub_path",
    "recorded_file",
    "restore_from_record",
]
