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

import base64
import hashlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from yktool.errors import Refused, ToolFailed, UsageError, YktoolError
from yktool.fido.session import EDDSA, ES256, KeySession
from yktool.host import Host
from yktool.inventory import Registry, Scalar
from yktool.keynames import choose_nickname
from yktool.keynames import identify_key as identify_key  # re-exported for older callers
from yktool.ssh.accounts import Account, refuse_user_links
from yktool.ssh.keys import (
    DEFAULT_FILES,
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

NO_EDDSA_HINT = ("use --type ecdsa-sk (works on every FIDO2 key), or a key whose firmware has Ed25519 "
                 "(YubiKey 5 from firmware 5.2.3)")


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
                raise UsageError(f"application {arg!r} does not start with \"ssh:\"",
                                 "OpenSSH accepts only applications like ssh: or ssh:NAME")
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


def default_key_path(account: Account, key_type: str, resident_suffix: str | None = None) -> PurePosixPath:
    """~/.ssh/id_ed25519_sk (or id_ecdsa_sk); downloaded keys: id_…_sk_rk[_SUFFIX] like ssh-keygen -K."""
    name = DEFAULT_FILES[key_type]
    if resident_suffix is not None:
        name += "_rk" + (f"_{resident_suffix}" if resident_suffix else "")
    return account.ssh_dir / name


# --------------------------------------------------------------------------------- the key
def check_algorithm(session: KeySession, options: KeygenOptions) -> None:
    """Refuse, before any touch, an algorithm or feature the key does not have."""
    if not session.supports_algorithm(options.algorithm):
        if options.key_type == ED25519_SK:
            raise UsageError("this key does not support Ed25519 (EdDSA), so it cannot make an ed25519-sk key",
                             NO_EDDSA_HINT)
        raise UsageError("this key does not support ES256", "use a FIDO2 key; every FIDO2 key has ES256")
    if options.cred_protect is not None and "credProtect" not in session.info.extensions:
        raise UsageError("this key has no credProtect extension, which OpenSSH requires for resident and "
                         "verify-required keys", "make a plain key (no -O resident / verify-required)")
    if options.needs_pin and not session.pin_is_set:
        raise UsageError("resident and verify-required keys need a PIN on the key, and it has none",
                         "set one first: yktool key pin set")


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
            raise Refused(f"the key already holds a resident SSH key for {options.application}"
                          + (f" user {options.user}" if options.user else ""),
                          "making it again would replace it on the key; use `yktool ssh download` to get its "
                          "files back, another -O application=ssh:NAME / user=NAME, or --force to replace it")


def make_key(session: KeySession, options: KeygenOptions, comment: str, *, force: bool = False,
             prechecked: bool = False) -> SkPrivateKey:
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
            raise UsageError("this key does not support Ed25519 (EdDSA), so it cannot make an ed25519-sk key",
                             NO_EDDSA_HINT) from None
        raise
    public = SkPublicKey.from_cose(cred.public_key, options.application)
    if public.key_type != options.key_type:
        raise ToolFailed(f"the key made a {public.key_type} credential, not {options.key_type}",
                         "the key ignored the algorithm asked for; try --type ecdsa-sk")
    if options.cred_protect is not None and cred.cred_protect not in (None, options.cred_protect):
        raise ToolFailed(f"the key set credProtect {cred.cred_protect}, not {options.cred_protect}",
                         "the key is misbehaving; try another key")
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
    assertion = session.get_assertion(application, client_data_hash(data), allow=[key.key_handle],
                                      up=key.touch_required, uv=key.verify_required)
    raw = bytes(assertion.auth_data)
    if len(raw) != 37 or raw[:32] != hashlib.sha256(application.encode("utf-8")).digest():
        raise ToolFailed("the key's answer carries extensions or another rp id; OpenSSH could not verify it",
                         "this key cannot make OpenSSH signatures with this credential")
    blob = sk_signature(key.public, assertion.signature, raw[32], assertion.counter)
    return armor(sshsig_blob(key.public, namespace, blob))


def load_private(host: Host, path: str | PurePosixPath) -> SkPrivateKey:
    """Read a key-handle file; `KEY.pub` is taken to mean `KEY` (git passes the .pub path)."""
    text_path = str(path)
    if text_path.endswith(".pub"):
        bare = text_path[:-4]
        if host.exists(bare):
            text_path = bare
        else:
            raise UsageError(f"{path} is a public key and {bare} does not exist",
                             "signing needs the key-handle file that `yktool ssh keygen` wrote next to it")
    return SkPrivateKey.from_file(host.read_bytes(text_path), text_path)


# --------------------------------------------------------------------------------- files
def pub_path(path: PurePosixPath) -> PurePosixPath:
    return path.with_name(path.name + ".pub")


def check_free(host: Host, path: PurePosixPath, force: bool) -> None:
    """Refuse (exit 4) to overwrite an existing key file without --force: checked before the key
    is touched, so nothing changes."""
    for p in (path, pub_path(path)):
        refuse_user_links(host, p)
        if host.exists(p) and not force:
            raise Refused(f"{p} already exists", "choose another --output, or pass --force to replace it "
                          "(the old file is backed up under /var/backups/yktool)")
        if host.path(p).is_dir():
            raise UsageError(f"{p} is a folder", "name a file with --output")


def write_key_files(host: Host, key: SkPrivateKey, path: PurePosixPath,
                    owner: tuple[int, int] | None) -> tuple[Path, Path]:
    """The key-handle file (0600) and the .pub (0644); a missing folder is made 0700."""
    refuse_user_links(host, path)
    refuse_user_links(host, pub_path(path))
    if not host.path(path.parent).is_dir():
        host.mkdir(path.parent, 0o700, owner)
    private = host.write_file(path, key.to_file(), 0o600, owner=owner)
    public = host.write_file(pub_path(path), key.pub_file(), 0o644, owner=owner)
    return private, public


def credential_id_b64(key: SkPrivateKey) -> str:
    return base64.b64encode(key.key_handle).decode("ascii")


def record_key(host: Host, key: SkPrivateKey, path: PurePosixPath, *, nickname: str, aaguid: str,
               user: str) -> None:
    """Note the key in the registry so `replace` can find it (public key, fingerprint, paths)."""
    fields: dict[str, Scalar] = {
        "role": "key-file",
        "credential_id": credential_id_b64(key),
        "user": user,
        "application": key.public.application,
        "public_key": key.public.line(),
        "fingerprint": key.public.fingerprint,
        "path": str(path),
        "pub_path": str(pub_path(path)),
        "flags": key.flags,
        "comment": key.comment,
    }
    with Registry.update(host) as registry:
        registry.ensure_key(nickname, aaguid)
        # one entry per credential: a re-made or moved file replaces the old entry
        registry.forget("ssh", credential_id=fields["credential_id"], path=str(path))
        registry.record(nickname, "ssh", **fields)


def recorded_file(host: Host, key: SkPrivateKey) -> dict[str, Scalar] | None:
    """What the registry remembers of this credential's files (path, comment, flags), if anything."""
    try:
        registry = Registry.load(host)
    except YktoolError:
        return None
    cid = credential_id_b64(key)
    for _record, entry in registry.enrollments("ssh"):
        # only the key's own files: an authorized_keys entry carries a path too
        if entry.get("credential_id") == cid and "path" in entry and entry.get("role", "key-file") == "key-file":
            return entry
    return None


def restore_from_record(key: SkPrivateKey, entry: dict[str, Scalar] | None) -> SkPrivateKey:
    """Bring back what the key does not store: the comment, and no-touch-required."""
    if entry is None:
        return key
    flags = key.flags
    recorded_flags = entry.get("flags")
    if isinstance(recorded_flags, int) and not recorded_flags & FLAG_USER_PRESENCE:
        flags &= ~FLAG_USER_PRESENCE
    comment = entry.get("comment")
    return SkPrivateKey(key.public, flags, key.key_handle,
                        comment if isinstance(comment, str) else key.comment, key.reserved)




# --------------------------------------------------------------------------------- whole steps
def prove_files(host: Host, path: PurePosixPath, key: SkPrivateKey) -> str:
    """Read the written file back with the real ssh-keygen: `-y` must print exactly the .pub line.
    Returns what was proven; a mismatch is a ToolFailed."""
    if host.which("ssh-keygen") is None:
        return "not checked (ssh-keygen is not installed here)"
    with host.private_copy(path) as copy:  # ssh-keygen never opens the user's path as root
        result = host.run(["ssh-keygen", "-y", "-f", str(copy)], check=False)
        why = result.error_text.replace(str(copy), str(path))
    if result.returncode != 0 or result.stdout != key.pub_file():
        raise ToolFailed(f"ssh-keygen does not read {path} back as the key just made: {why}",
                         "this is a bug in yktool; the credential exists on the key, the file is wrong")
    return "ssh-keygen -y reads the key back"


@dataclass(frozen=True)
class KeygenResult:
    key: SkPrivateKey
    path: PurePosixPath
    nickname: str
    proof: str


def keygen(host: Host, session: KeySession, options: KeygenOptions, *, path: PurePosixPath, comment: str,
           owner: tuple[int, int] | None, user: str, nickname: str | None = None,
           force: bool = False) -> KeygenResult:
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
class DownloadPlan:
    key: SkPrivateKey
    path: PurePosixPath
    state: str  # new | unchanged | differs


def plan_download(host: Host, found: Sequence[ResidentKey], account: Account,
                  output_dir: PurePosixPath | None = None, *, force: bool = False) -> list[DownloadPlan]:
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
            raise Refused(f"{path} (or its .pub) exists and differs from the key on the device",
                          "move it away, use --output-dir, or pass --force to replace it (backed up first)")
        plans.append(DownloadPlan(key, path, state))
    return plans


def apply_download(host: Host, plans: Sequence[DownloadPlan], account: Account, *, nickname: str,
                   aaguid: str) -> list[DownloadPlan]:
    """Write the planned files (skipping unchanged ones), prove them, record them."""
    for plan in plans:
        if plan.state != "unchanged":
            write_key_files(host, plan.key, plan.path, account.owner())
            prove_files(host, plan.path, plan.key)
        record_key(host, plan.key, plan.path, nickname=nickname, aaguid=aaguid, user=account.name)
    return list(plans)


def find_pubkey(host: Host, account: Account, given: str | None) -> PurePosixPath:
    """The .pub to use: `given` (a path inside the root), else the account's id_ed25519_sk.pub or
    id_ecdsa_sk.pub."""
    if given is not None:
        return PurePosixPath("/") / given
    candidates = [pub_path(default_key_path(account, t)) for t in (ED25519_SK, ECDSA_SK)]
    for candidate in candidates:
        if host.exists(candidate):
            return candidate
    raise UsageError(f"no {candidates[0]} or {candidates[1]}",
                     f"name the key's .pub, or make one: yktool ssh keygen --user {account.name}")


def load_key_pair(host: Host, pub: PurePosixPath) -> tuple[SkPublicKey, str, SkPrivateKey | None]:
    """The public key and comment of a .pub, and the key-handle file beside it when it matches
    (it carries the flags: no-touch-required, verify-required)."""
    public, comment = SkPublicKey.parse_line(host.read_text(pub))
    text = str(pub)
    if text.endswith(".pub") and host.exists(text[:-4]):
        try:
            private = load_private(host, text[:-4])
        except UsageError:
            return public, comment, None
        if private.public == public:
            return public, comment, private.with_comment(comment)
    return public, comment, None


__all__ = [
    "ECDSA_SK", "ED25519_SK", "DownloadPlan", "KeygenOptions", "KeygenResult", "ResidentKey", "apply_download",
    "check_free", "default_key_path", "keygen", "load_private", "make_key", "parse_options", "plan_download",
    "precheck", "prove_files", "record_key", "resident_keys", "sign", "write_key_files", "find_pubkey",
    "load_key_pair",
]
