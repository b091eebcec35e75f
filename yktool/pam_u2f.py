"""pam_u2f credentials and authfiles: parse, merge, render, register, prove, check.

The authfile format is pam_u2f's native one (pam-u2f util.c `parse_native_format`, pamu2fcfg):

    user:KeyHandle,UserKey,CoseType,Options[:KeyHandle,UserKey,CoseType,Options…]

KeyHandle is the standard base64 credential ID (`*` for a resident credential), UserKey the
base64 raw public key (es256: x‖y, 64 bytes; eddsa: 32 bytes), CoseType `es256`, `rs256` or
`eddsa` (pam-u2f ≥ 1.2.0), Options a run of `+presence`, `+verification`, `+pin`. A line with
only two fields per credential is the legacy U2F format (websafe-base64 handle, hex key).

pam_u2f reads the file with `strtok` (empty fields skipped) and keeps only the LAST line of a
user, so yktool keeps one line per user and appends a new credential to it. Every other line
is kept byte for byte, even when malformed (reported with its line number).

The RP id of every credential is pam_u2f's `origin` (default `pam://$HOSTNAME` at login time),
so yktool pins it: it registers with `pam://<hostname of the target>` unless told otherwise and
says that the PAM line must carry the same `origin=`.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any

from yktool.errors import PermissionDenied, Refused, UsageError, YktoolError

if TYPE_CHECKING:
    from yktool.fido.session import Assertion, Credential, KeySession
    from yktool.host import Host

CENTRAL_AUTHFILE = "/etc/u2f_mappings"
USER_AUTHFILE = ".config/Yubico/u2f_keys"     # relative to the user's home
ORIGIN_PREFIX = "pam://"
EDDSA_MIN_VERSION = (1, 2, 0)
NOUSEROK_FIXED_VERSION = (1, 3, 1)   # CVE-2025-23013: nouserok no longer answers SUCCESS
COSE_TYPES = ("es256", "rs256", "eddsa")
KNOWN_OPTIONS = ("+presence", "+verification", "+pin")


# ================================================================================ the authfile
@dataclass(frozen=True)
class U2fCredential:
    """One credential of a user's line, exactly as written (`raw`), and decoded."""

    key_handle: str          # base64 credential id, or `*` (resident)
    public_key: str          # base64 (hex for legacy)
    cose_type: str           # es256 | rs256 | eddsa
    options: str             # e.g. `+presence+pin`; `+presence` implied for legacy
    legacy: bool = False
    raw: str = ""

    @property
    def resident(self) -> bool:
        return self.key_handle == "*"

    @property
    def credential_id(self) -> bytes | None:
        """The decoded credential id (None for `*`)."""
        if self.resident:
            return None
        if self.legacy:
            return _b64decode(self.key_handle, websafe=True)
        return _b64decode(self.key_handle)

    @property
    def public_key_bytes(self) -> bytes:
        if self.legacy:
            return bytes.fromhex(self.public_key)
        return _b64decode(self.public_key)

    @property
    def identity(self) -> bytes:
        """What makes two entries the same credential: the id, else (resident) the key."""
        cid = self.credential_id
        return b"id:" + cid if cid is not None else b"pk:" + self.public_key_bytes

    def render(self) -> str:
        if self.legacy:
            return f"{self.key_handle},{self.public_key}"
        return f"{self.key_handle},{self.public_key},{self.cose_type},{self.options}"

    def to_json(self) -> dict[str, object]:
        return {"key_handle": self.key_handle, "cose_type": self.cose_type,
                "options": self.options, "legacy": self.legacy, "resident": self.resident}


def _b64decode(text: str, *, websafe: bool = False) -> bytes:
    if websafe:
        text = text.replace("-", "+").replace("_", "/")
        text += "=" * (-len(text) % 4)
    return base64.b64decode(text, validate=True)


def _check_credential(cred: U2fCredential) -> str | None:
    """Why pam_u2f would fail on this credential, or None."""
    try:
        if not cred.resident:
            cid = cred.credential_id
            if not cid:
                return "empty key handle"
    except (binascii.Error, ValueError):
        return "key handle is not base64"
    try:
        pk = cred.public_key_bytes
    except (binascii.Error, ValueError):
        return "public key is not " + ("hex" if cred.legacy else "base64")
    if cred.cose_type not in COSE_TYPES:
        return f"unknown COSE type {cred.cose_type!r}"
    if cred.cose_type == "es256" and not (len(pk) == 64 or (len(pk) == 65 and pk[0] == 4)):
        return f"es256 public key has {len(pk)} bytes (64 expected)"
    if cred.cose_type == "eddsa" and len(pk) != 32:
        return f"eddsa public key has {len(pk)} bytes (32 expected)"
    return None


@dataclass
class AuthLine:
    """One physical line: `text` without its line ending, `eol` the ending (`\\n` or ``)."""

    lineno: int
    text: str
    eol: str
    user: str | None = None
    credentials: list[U2fCredential] = field(default_factory=list)
    error: str | None = None

    @property
    def raw(self) -> str:
        return self.text + self.eol


def _strtok(text: str, sep: str) -> list[str]:
    """C strtok: empty fields vanish."""
    return [t for t in text.split(sep) if t]


def parse_line(lineno: int, text: str, eol: str) -> AuthLine:
    """One line the way pam_u2f (1.1.0 … 1.4.0) reads it."""
    line = AuthLine(lineno, text, eol)
    tokens = _strtok(text, ":")
    if not tokens or not text.strip():
        return line  # blank (or only blanks): matches no user, harmless
    line.user = tokens[0]
    if len(tokens) == 1:
        line.error = "no credential after the user name"
        return line
    for tok in tokens[1:]:
        fields = _strtok(tok, ",")
        if len(fields) < 2:
            line.error = f"credential {tok[:20]!r}… has no public key"
            break
        if len(fields) == 2:
            cred = U2fCredential(fields[0], fields[1], "es256", "+presence", legacy=True, raw=tok)
        else:
            cred = U2fCredential(fields[0], fields[1], fields[2],
                                 fields[3] if len(fields) > 3 else "", raw=tok)
        problem = _check_credential(cred)
        if problem:
            line.error = f"credential {len(line.credentials) + 1}: {problem}"
            break
        line.credentials.append(cred)
    return line


@dataclass
class Authfile:
    """An authfile as lines; `render()` gives back exactly the bytes it was parsed from."""

    lines: list[AuthLine] = field(default_factory=list)

    @classmethod
    def parse(cls, text: str) -> Authfile:
        """Split on `\\n` only (as fgets does); every other byte stays in its line."""
        out = []
        parts = text.split("\n")
        for n, part in enumerate(parts, 1):
            last = n == len(parts)
            if last and part == "":
                break
            out.append(parse_line(n, part, "" if last else "\n"))
        return cls(out)

    def render(self) -> str:
        return "".join(ln.raw for ln in self.lines)

    @property
    def malformed(self) -> list[AuthLine]:
        return [ln for ln in self.lines if ln.error]

    def user_lines(self, user: str) -> list[AuthLine]:
        return [ln for ln in self.lines if ln.user == user]

    def effective_line(self, user: str) -> AuthLine | None:
        """The line pam_u2f uses for `user`: the last one."""
        lines = self.user_lines(user)
        return lines[-1] if lines else None

    def users(self) -> list[str]:
        seen: list[str] = []
        for ln in self.lines:
            if ln.user is not None and ln.user not in seen:
                seen.append(ln.user)
        return seen

    def credentials_of(self, user: str) -> list[U2fCredential]:
        line = self.effective_line(user)
        return list(line.credentials) if line else []

    def problems(self) -> list[str]:
        """Human lines: malformed lines and users whose earlier lines pam_u2f ignores."""
        out = [f"line {ln.lineno}: {ln.error} (kept as is)" for ln in self.malformed]
        for user in self.users():
            lines = self.user_lines(user)
            if len(lines) > 1:
                ignored = ", ".join(str(ln.lineno) for ln in lines[:-1])
                out.append(f"user {user}: pam_u2f reads only the last line ({lines[-1].lineno}); "
                           f"line(s) {ignored} are ignored")
        return out


@dataclass
class MergeResult:
    text: str
    changed: bool
    lineno: int
    notes: list[str] = field(default_factory=list)


def merge_credential(authfile: Authfile, user: str, cred: U2fCredential) -> MergeResult:
    """Add `cred` to `user`'s line (the last one, which pam_u2f reads); a new line at the end
    when the user has none. Every other line is untouched; a credential already there is not
    added twice. A malformed line of this user is refused (pam_u2f would reject it anyway)."""
    if ":" in user or "\n" in user or not user.strip() or user != user.strip():
        raise UsageError(f"user name {user!r} cannot be written to an authfile",
                         "give a plain login name")
    notes = authfile.problems()
    for ln in authfile.lines:
        if any(c.identity == cred.identity for c in ln.credentials):
            return MergeResult(authfile.render(), False, ln.lineno,
                               notes + [f"credential already on line {ln.lineno}; nothing added"])
    line = authfile.effective_line(user)
    lines = list(authfile.lines)
    if line is None:
        if lines and lines[-1].eol == "":
            # the file does not end with a newline: end that line first (its text stays)
            last = lines[-1]
            lines[-1] = AuthLine(last.lineno, last.text, "\n", last.user, last.credentials, last.error)
        new = parse_line(len(lines) + 1, f"{user}:{cred.render()}", "\n")
        lines.append(new)
        return MergeResult("".join(ln.raw for ln in lines), True, new.lineno, notes)
    if line.error:
        raise Refused(f"line {line.lineno} of user {user} is malformed: {line.error}",
                      "fix or remove that line by hand first (pam_u2f rejects it too); "
                      "yktool will not append to it")
    # Trailing blanks / CR would end up inside the new credential's options: keep them out.
    body = line.text.rstrip(" \t\r")
    new = parse_line(line.lineno, f"{body}:{cred.render()}", line.eol or "\n")
    idx = lines.index(line)
    lines[idx] = new
    return MergeResult("".join(ln.raw for ln in lines), True, new.lineno, notes)


def options_string(*, presence: bool = True, verification: bool = False, pin: bool = False) -> str:
    """pamu2fcfg's order: `+presence+verification+pin`."""
    return ("+presence" if presence else "") + ("+verification" if verification else "") + \
        ("+pin" if pin else "")


def credential_from(cred: Credential, *, options: str, resident: bool = False) -> U2fCredential:
    """The authfile entry for a credential the key just made."""
    from yktool.fido.session import EDDSA, ES256

    pk = cred.public_key
    if cred.algorithm == ES256:
        raw = bytes(pk[-2]) + bytes(pk[-3])  # COSE: -2 is x, -3 is y
        cose = "es256"
    elif cred.algorithm == EDDSA:
        raw = bytes(pk[-2])
        cose = "eddsa"
    else:
        raise UsageError(f"COSE algorithm {cred.algorithm} is not usable with pam_u2f",
                         "register with --algorithm es256")
    kh = "*" if resident else base64.b64encode(cred.credential_id).decode()
    return U2fCredential(kh, base64.b64encode(raw).decode(), cose, options)


# ================================================================================ proof
def verify_assertion(cred: U2fCredential, origin: str, client_data_hash: bytes,
                     auth_data: bytes, signature: bytes, *, need_up: bool = True,
                     need_uv: bool = False) -> None:
    """Check an assertion against the stored public key the way libfido2's
    fido_assert_verify does for pam_u2f: RP id hash, flags, then the signature over
    authData ‖ clientDataHash. Raises UsageError saying what did not match."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, ed25519

    if len(auth_data) < 37:
        raise UsageError("authenticator data too short", "the key's answer is broken")
    if auth_data[:32] != hashlib.sha256(origin.encode()).digest():
        raise UsageError(f"the assertion is not for origin {origin}",
                         "register and authenticate with the same origin")
    flags = auth_data[32]
    if need_up and not flags & 0x01:
        raise UsageError("the assertion carries no user presence", "touch the key")
    if need_uv and not flags & 0x04:
        raise UsageError("the assertion carries no user verification", "use the key's PIN")
    signed = auth_data + client_data_hash
    pk = cred.public_key_bytes
    try:
        if cred.cose_type == "es256":
            if len(pk) == 65:
                pk = pk[1:]
            key = ec.EllipticCurvePublicNumbers(int.from_bytes(pk[:32], "big"),
                                                int.from_bytes(pk[32:], "big"),
                                                ec.SECP256R1()).public_key()
            key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
        elif cred.cose_type == "eddsa":
            ed25519.Ed25519PublicKey.from_public_bytes(pk).verify(signature, signed)
        else:
            raise UsageError(f"cannot verify {cred.cose_type} here", "use es256")
    except InvalidSignature:
        raise UsageError("the assertion's signature does not verify with the public key "
                         "about to be stored", "nothing was written; try again with the same key") from None
    except ValueError as exc:
        raise UsageError(f"the stored public key is unusable: {exc}", "register again") from None


def prove_credential(session: KeySession, cred: U2fCredential, credential_id: bytes, origin: str,
                     *, up: bool, uv: bool) -> Assertion:
    """Ask the key for a fresh assertion with `origin` and verify it against `cred` (the line
    about to be stored). One touch (when `up`)."""
    cdh = os.urandom(32)
    assertion = session.get_assertion(origin, cdh, allow=[credential_id], up=up, uv=uv)
    verify_assertion(cred, origin, cdh, bytes(assertion.auth_data), assertion.signature,
                     need_up=up, need_uv=uv)
    return assertion


def manual_answers(session: KeySession, origin: str, challenge_b64: str, key_handle_b64: str,
                   *, up: bool = True, uv: bool = False) -> list[str]:
    """The four lines pam_u2f's `manual` mode asks for after printing a challenge, origin and
    key handle: the challenge, the RP id, base64 of the CBOR byte string of authData, base64
    of the signature. pam_u2f uses the raw 32-byte challenge as the clientDataHash."""
    from fido2 import cbor

    cdh = base64.b64decode(challenge_b64)
    # `*` is a resident credential: pam_u2f sends no allow list, the key finds it by RP id
    allow = [] if key_handle_b64 == "*" else [base64.b64decode(key_handle_b64)]
    assertion = session.get_assertion(origin, cdh, allow=allow, up=up, uv=uv)
    return [challenge_b64, origin,
            base64.b64encode(cbor.encode(bytes(assertion.auth_data))).decode(),
            base64.b64encode(assertion.signature).decode()]


# ================================================================================ the host
@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str

    @property
    def can_log_in(self) -> bool:
        return not self.shell.endswith(("nologin", "/false", "/sync")) and bool(self.shell)


def read_users(host: Host) -> dict[str, User]:
    """/etc/passwd under the root (empty when there is none)."""
    if not host.is_file("/etc/passwd"):
        return {}
    out: dict[str, User] = {}
    for line in host.read_text("/etc/passwd").splitlines():
        f = line.split(":")
        if len(f) >= 7 and f[2].isdigit() and f[3].isdigit():
            out[f[0]] = User(f[0], int(f[2]), int(f[3]), f[5], f[6])
    return out


def default_origin(host: Host) -> str:
    """`pam://<hostname>` of the target root (its /etc/hostname)."""
    name = ""
    if host.is_file("/etc/hostname"):
        name = host.read_text("/etc/hostname").strip().splitlines()[0].strip() \
            if host.read_text("/etc/hostname").strip() else ""
    if not name and host.is_live:
        name = os.uname().nodename
    if not name or any(c.isspace() for c in name):
        raise UsageError(f"cannot tell the host name of {host.root} (no /etc/hostname)",
                         "give the origin explicitly: --origin pam://NAME")
    return ORIGIN_PREFIX + name


def check_origin(origin: str) -> str:
    if not origin or any(c.isspace() for c in origin) or ":" not in origin:
        raise UsageError(f"origin {origin!r} is not usable",
                         "use a form like pam://myhost (no spaces), the same as the PAM origin=")
    return origin


_VERSION_RE = re.compile(r"(?:pam[_-]u2f|libpam-u2f)-(\d+)\.(\d+)\.(\d+)")


def installed_version(host: Host, module_paths: Iterable[str] = ()) -> tuple[tuple[int, int, int] | None, str]:
    """pam-u2f's version on the target and where it was read: the Nix store path of the module
    the PAM files name, or the dpkg database under the root. (None, reason) when unknown."""
    for path in module_paths:
        m = _VERSION_RE.search(path)
        if m:
            return (int(m[1]), int(m[2]), int(m[3])), f"module path {path}"
    if host.is_file("/var/lib/dpkg/status"):
        block = None
        for para in host.read_text("/var/lib/dpkg/status").split("\n\n"):
            if re.search(r"^Package: libpam-u2f$", para, re.M):
                block = para
                break
        if block is not None and re.search(r"^Status: .* installed$", block, re.M):
            m = re.search(r"^Version: (?:\d+:)?(\d+)\.(\d+)\.(\d+)", block, re.M)
            if m:
                return (int(m[1]), int(m[2]), int(m[3])), "dpkg status of libpam-u2f"
    return None, "pam-u2f's version on the target could not be read"


def version_text(version: tuple[int, int, int] | None) -> str:
    return ".".join(map(str, version)) if version else "unknown"


# ================================================================================ registration
@dataclass
class Target:
    """Where the credential goes: a plain authfile under the root, or an age file."""

    authfile: str | None = None                 # path inside the root
    age_file: Path | None = None                # operator's path (the flake checkout)
    recipients: list[Any] = field(default_factory=list)   # agefile.Recipient
    identity: Any = None                        # agefile.Identities, to read an existing file
    mode: int = 0o644
    owner: tuple[int, int] | None = None
    lost_recipients: int = 0                    # age1… recipients of the old file not given now


def plain_target(host: Host, user: str, authfile: str | None) -> Target:
    """--authfile: the central file (mode 0644, root) or a user's own u2f_keys (0600, theirs)."""
    users = read_users(host)
    if authfile is None or authfile == "~":
        if user not in users:
            raise UsageError(f"user {user} is not in {host.root}/etc/passwd",
                             "give --authfile /etc/u2f_mappings, or create the user first")
        authfile = str(PurePosixPath(users[user].home) / USER_AUTHFILE)
    if not authfile.startswith("/"):
        raise UsageError(f"--authfile {authfile}: give an absolute path inside the root",
                         "e.g. /etc/u2f_mappings")
    if host.exists("/etc/NIXOS") and authfile.startswith(("/etc/", "/run/")):
        # /etc is generated and /run/agenix rewritten at every activation: the key would vanish
        raise Refused(f"{host.root} is NixOS: {authfile} is generated at activation, a key "
                      "written there is lost at the next switch",
                      "register into the agenix secret instead: --age-host-key "
                      "/etc/ssh/ssh_host_ed25519_key.pub (and --age-identity to keep its lines)")
    owner = None
    mode = 0o644
    u = users.get(user)
    if u is not None and u.home not in ("", "/") and authfile.startswith(u.home.rstrip("/") + "/"):
        # pam_u2f refuses a file owned by anyone but the user or root; keep it private
        mode, owner = 0o600, (u.uid, u.gid)
    from yktool.ssh.accounts import refuse_user_links

    refuse_user_links(host, authfile)
    return Target(authfile=authfile, mode=mode, owner=owner)


def read_current(host: Host, target: Target) -> tuple[str, bool]:
    """The authfile text now (plain, or decrypted from the age file) and whether it exists."""
    from yktool import agefile

    if target.authfile is not None:
        # through Host's walk: a user's link at (or above) the authfile is refused, not followed
        st = host.lstat(target.authfile)
        if st is None:
            return "", False
        if not stat.S_ISREG(st.st_mode):
            raise UsageError(f"{target.authfile} is not a regular file", "name the authfile itself")
        try:
            fd = host.open(target.authfile, os.O_RDONLY | os.O_NONBLOCK)
        except PermissionError:
            raise PermissionDenied(f"{target.authfile}: permission denied",
                                   "run as root (or the file's owner) so the existing lines can be kept") from None
        with os.fdopen(fd, "rb") as fh:
            return fh.read().decode("utf-8", "surrogateescape"), True
    assert target.age_file is not None  # noqa: S101
    from yktool.host import Host as _Host

    # the operator's file, on this machine: read through the walk too (as root, a link a user
    # controls in a checkout under their home is refused, not followed)
    local, age_path = _Host(Path("/")), str(target.age_file.absolute())
    if not local.exists(age_path):
        return "", False
    try:
        data = local.read_bytes(age_path)
    except OSError as exc:
        raise UsageError(f"{target.age_file}: cannot read ({exc.strerror})",
                         "check the path and its permissions") from None
    if target.identity is None:
        raise UsageError(f"{target.age_file} exists and yktool cannot read it without an identity",
                         "pass --age-identity PATH (a private key of one of its recipients) so "
                         "its lines are kept; yktool never overwrites it blind")
    plain = agefile.decrypt(data, target.identity, what=str(target.age_file))
    old_tags, old_x25519 = agefile.header_recipients(data)
    new_tags = {agefile.ssh_tag(r) for r in target.recipients}
    lost = [t for t in old_tags if t not in new_tags]
    if lost:
        # re-encrypting without that host key would leave the host unable to read its authfile
        raise Refused(f"{target.age_file} is also encrypted to {len(lost)} ssh-ed25519 key(s) "
                      f"not given now (age tag {', '.join(lost)}): that host would no longer "
                      "decrypt its authfile",
                      "pass every recipient of secrets.nix for this file (--age-host-key / --age)")
    new_x25519 = sum(1 for r in target.recipients if r.kind == "x25519")
    if old_x25519 > new_x25519:
        target.lost_recipients = old_x25519 - new_x25519
    return plain.decode("utf-8", "surrogateescape"), True


def write_target(host: Host, target: Target, text: str) -> str:
    """Write atomically (backup of a plain file first); returns where it went."""
    from yktool import agefile
    from yktool.host import Host as _Host

    data = text.encode("utf-8", "surrogateescape")
    if target.authfile is not None:
        if target.owner is not None:
            _ensure_user_dirs(host, target)
        host.write_file(target.authfile, data, target.mode, owner=target.owner)
        return target.authfile
    assert target.age_file is not None  # noqa: S101
    encrypted = agefile.encrypt(data, target.recipients)
    local = _Host(Path("/"))
    # not .resolve(): that would follow a user's link as root before the walk could refuse it
    local.write_file(str(target.age_file.absolute()), encrypted, 0o644, backup=False)
    return str(target.age_file)


def _ensure_user_dirs(host: Host, target: Target) -> None:
    """~/.config and ~/.config/Yubico owned by the user, so pam_u2f (openasuser) can reach it."""
    assert target.authfile is not None and target.owner is not None  # noqa: S101
    parent = PurePosixPath(target.authfile).parent
    missing = []
    p = parent
    while not host.exists(p):
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        host.mkdir(d, 0o700, owner=target.owner)


@dataclass
class RegisterRequest:
    user: str
    origin: str
    target: Target
    presence: bool = True
    verification: bool = False
    pin: bool = False
    resident: bool = False
    algorithm: str = "es256"
    nickname: str | None = None
    services: tuple[str, ...] = ("sudo", "login", "greetd", "hyprlock")
    age_name: str = "yubikey-auth"


@dataclass
class RegisterResult:
    user: str
    origin: str
    written_to: str | None
    changed: bool
    already_registered: bool
    lineno: int
    credential: U2fCredential | None
    keys_for_user: int
    nickname: str
    pam_version: str
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    nix: dict[str, str] = field(default_factory=dict)
    pam_line: str = ""

    def to_json(self) -> dict[str, object]:
        return {"ok": True, "user": self.user, "origin": self.origin, "written_to": self.written_to,
                "changed": self.changed, "already_registered": self.already_registered,
                "line": self.lineno,
                "credential": self.credential.to_json() if self.credential else None,
                "keys_for_user": self.keys_for_user, "nickname": self.nickname,
                "pam_u2f_version": self.pam_version, "notes": self.notes,
                "warnings": self.warnings, "nix": self.nix, "pam_line": self.pam_line}


def algorithm_check(host: Host, algorithm: str) -> tuple[str, list[str]]:
    """Refuse eddsa where the target's pam-u2f is known to be older than 1.2.0; warn when
    its version is unknown. Returns (version text, warnings)."""
    from yktool import pam_config

    modules = [u.line.module for s in pam_config.u2f_services(host) for u in s.u2f_lines]
    version, source = installed_version(host, modules)
    warnings: list[str] = []
    if algorithm not in ("es256", "eddsa"):
        raise UsageError(f"algorithm {algorithm!r} is not offered", "use es256 (or eddsa)")
    if algorithm == "eddsa":
        if version is not None and version < EDDSA_MIN_VERSION:
            raise Refused(f"pam-u2f {version_text(version)} on the target ({source}) rejects "
                          "eddsa credentials: sudo would stop accepting this key",
                          "register with --algorithm es256 (the default), or upgrade pam-u2f "
                          "to 1.2.0 or later first")
        if version is None:
            warnings.append(f"{source}; eddsa needs pam-u2f 1.2.0 or later (Debian 12 ships "
                            "1.1.0) — es256 works everywhere")
    return version_text(version), warnings


def pam_line_for(target: Target, origin: str, *, pin: bool, verification: bool) -> str:
    """The auth line for a plain PAM configuration using this authfile."""
    args = ["pam_u2f.so"]
    if target.authfile is not None and not target.authfile.endswith("/" + USER_AUTHFILE):
        args.append(f"authfile={target.authfile}")
    args += ["cue", f"origin={origin}"]
    if pin:
        args.append("pinverification=1")
    if verification:
        args.append("userverification=1")
    return "auth sufficient " + " ".join(args)


def nix_snippets(request: RegisterRequest) -> dict[str, str]:
    """What to paste into secrets.nix (an entry of its attribute set) and a NixOS module for
    the host (a whole `{ config, ... }: { … }` file)."""
    from yktool import agefile, nix

    target = request.target
    assert target.age_file is not None  # noqa: S101
    name = target.age_file.name
    secret = request.age_name
    entry = agefile.secrets_nix_entry(name, target.recipients)
    settings = [f"      authfile = config.age.secrets.{secret}.path;",
                f"      origin = {nix.string(request.origin)};",
                "      cue = true;"]
    if request.pin:
        settings.append("      pinverification = 1;")
    if request.verification:
        settings.append("      userverification = 1;")
    body = [
        f"age.secrets.{secret} = {{",
        f"  file = ./secrets/{name};",
        "  # pam_u2f runs inside the screen locker as the user: it must be able to read it",
        '  mode = "0444";',
        "};",
        "security.pam.u2f = {",
        "  enable = true;",
        "  # \"required\" makes the touch mandatory on top of the password: switch to it only",
        "  # once `yktool pam check` passes and every user has a backup key",
        '  control = "sufficient";',
        "  settings = {",
        *[s[2:] for s in settings],
        "  };",
        "};",
        "# NixOS before 24.05: security.pam.u2f.authFile / .origin / .cue instead of settings",
        *[nix.attribute(f"security.pam.services.{svc}.u2fAuth", "true")
          for svc in request.services],
    ]
    host_cfg = "\n".join(["# a NixOS module: import it from the host's configuration",
                          "{ config, ... }:", "{", *["  " + ln for ln in body], "}"])
    return {"secrets.nix": entry, "configuration.nix": host_cfg}


def register(host: Host, session: KeySession, request: RegisterRequest) -> RegisterResult:
    """Make a pam_u2f credential on the key, prove it, merge it into the target, record it.

    Nothing is written before the new credential has produced an assertion with the same
    origin that verifies against the public key about to be stored. A key that already holds
    one of the user's credentials (found with a silent probe) is not registered twice.
    """
    from yktool.fido.session import EDDSA, ES256
    from yktool.inventory import Registry

    origin = check_origin(request.origin)
    version, warnings = algorithm_check(host, request.algorithm)
    target = request.target
    current, existed = read_current(host, target)
    authfile = Authfile.parse(current)
    notes = authfile.problems()
    line = authfile.effective_line(request.user)
    if line is not None and line.error:
        raise Refused(f"line {line.lineno} of user {request.user} is malformed: {line.error}",
                      "fix or remove that line by hand first (pam_u2f rejects it too); "
                      "nothing was changed")
    existing = authfile.credentials_of(request.user)
    where = target.authfile or str(target.age_file)
    for cred in existing:
        cid = cred.credential_id
        if cid is not None and session.probe(origin, cid):
            return RegisterResult(request.user, origin, None, False, True,
                                  line.lineno if line else 0, cred, len(existing),
                                  request.nickname or "", version,
                                  notes + [f"this key is already registered for {request.user} "
                                           f"with origin {origin} in {where}; nothing changed"],
                                  warnings)
    if (request.pin or request.verification) and not session.pin_is_set:
        raise UsageError("+pin/+verification need a PIN on the key, and it has none",
                         "set one first: yktool key pin set")
    # the registry name of this physical key (silent probes, before the key changes), shared
    # with the ssh/git enrollments: --nickname, a name the key is known by, primary, backup-N
    from yktool.keynames import choose_nickname

    nickname = choose_nickname(session, host, request.nickname)
    alg = EDDSA if request.algorithm == "eddsa" else ES256
    options = options_string(presence=request.presence, verification=request.verification,
                             pin=request.pin)
    made = session.make_credential(
        origin, user_id=os.urandom(32), user_name=request.user, algorithms=(alg,),
        resident=request.resident, uv=request.verification,
        exclude=[c for c in (e.credential_id for e in existing) if c is not None])
    entry = credential_from(made, options=options, resident=request.resident)
    # the proof is silent (up=false): the credential was just touched into being, and the
    # signature over the origin proves the key holds it all the same (one touch, not two)
    prove_credential(session, entry, made.credential_id, origin, up=False,
                     uv=request.verification or request.pin)
    merged = merge_credential(authfile, request.user, entry)
    if target.authfile is not None:
        # the touches took seconds: look again at the path now (a user may have swapped the file
        # for a link meanwhile); write_target's fd walk refuses one swapped in even later
        from yktool.ssh.accounts import refuse_user_links

        refuse_user_links(host, target.authfile)
    written = write_target(host, target, merged.text)
    # read back what was written and check the user's effective line holds the credential
    readback = Authfile.parse(read_current(host, target)[0]) if (
        target.authfile is not None or target.identity is not None) else Authfile.parse(merged.text)
    creds = readback.credentials_of(request.user)
    if not any(c.identity == entry.identity for c in creds):
        raise UsageError(f"{written}: the new credential is not on {request.user}'s line after "
                         "writing", "restore the backup under /var/backups/yktool and report this bug")
    with Registry.update(host) as registry:
        registry.ensure_key(nickname, aaguid=session.aaguid)
        fields: dict[str, str | int | bool] = {
            "user": request.user, "origin": origin,
            "credential_id": base64.b64encode(made.credential_id).decode(),
            "cose_type": entry.cose_type, "options": options, "resident": request.resident,
            # a resident entry reads `*` in the authfile: its public key is what says whose it is
            "public_key": entry.public_key}
        if target.authfile is not None:
            fields["path"] = target.authfile
        else:
            fields["age_file"] = str(target.age_file)
        registry.record(nickname, "pam", **fields)
    if target.lost_recipients:
        warnings.append(f"the old {target.age_file} had {target.lost_recipients} more age1… "
                        "recipient(s) than given now; they can no longer decrypt it "
                        "(add them with --age if they should)")
    if len(creds) == 1:
        warnings.append(f"{request.user} has a single key: register a backup key too "
                        "(a lost key would lock them out of every service using pam_u2f)")
    if not existed:
        notes.append(f"created {written}")
    result = RegisterResult(request.user, origin, written, merged.changed, False, merged.lineno,
                            entry, len(creds), nickname, version, notes + merged.notes[len(notes):],
                            warnings)
    if target.age_file is not None:
        result.nix = nix_snippets(request)
    else:
        result.pam_line = pam_line_for(target, origin, pin=request.pin,
                                       verification=request.verification)
    return result


# ================================================================================ check
@dataclass
class Finding:
    """One thing `pam check` has to say; `severity` error means someone can be locked out
    (or let in without a key)."""

    severity: str      # error | warning | info
    code: str
    message: str
    hint: str = ""
    services: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"severity": self.severity, "code": self.code, "message": self.message,
                "hint": self.hint, "services": list(self.services)}


@dataclass
class AuthfileReport:
    path: str
    user: str | None             # set for a per-user default file
    exists: bool
    mode: int | None = None
    owner_uid: int | None = None
    users: dict[str, int] = field(default_factory=dict)     # user -> number of credentials
    services: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {"path": self.path, "user": self.user, "exists": self.exists,
                "mode": f"{self.mode:04o}" if self.mode is not None else None,
                "owner_uid": self.owner_uid, "users": dict(self.users),
                "services": list(self.services)}


@dataclass
class CheckReport:
    services: list[Any] = field(default_factory=list)     # pam_config.PamService using pam_u2f
    authfiles: list[AuthfileReport] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    pam_version: str = "unknown"

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def to_json(self) -> dict[str, object]:
        return {"ok": self.ok, "pam_u2f_version": self.pam_version,
                "services": [_service_json(s) for s in self.services],
                "authfiles": [a.to_json() for a in self.authfiles],
                "findings": [f.to_json() for f in self.findings]}


def _service_json(service: Any) -> dict[str, object]:
    return {"service": service.name, "path": service.path,
            "u2f": [{"control": u.control, "where": u.line.where,
                     "authfile": u.options.authfile, "origin": u.options.origin,
                     "appid": u.options.appid, "cue": u.options.cue,
                     "nouserok": u.options.nouserok, "manual": u.options.manual,
                     "debug": u.options.debug, "module": u.line.module}
                    for u in service.u2f_lines],
            "problems": list(service.problems)}


def home_encryption(host: Host, user: User) -> str | None:
    """How `user`'s home is encrypted, if it is (ecryptfs, fscrypt, systemd-homed), as far as
    the files under the root (and /proc/mounts on a live host) tell."""
    home = PurePosixPath(user.home)
    base = home.parent

    def there(p: str | PurePosixPath) -> bool:
        # ecryptfs makes ~/.ecryptfs and ~/.Private links the user owns: seen, never followed
        try:
            return host.lexists(p)
        except (UsageError, OSError):
            return False

    if there(base / ".ecryptfs" / user.name) or there(home / ".ecryptfs") or there(home / ".Private"):
        return "ecryptfs"
    if there(f"/var/lib/systemd/home/{user.name}.identity") or there(base / f"{user.name}.homedir") \
            or there(base / f"{user.name}.home"):
        return "systemd-homed"
    if host.is_live:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            mounts = ""
        for entry in mounts.splitlines():
            f = entry.split()
            if len(f) >= 3 and f[2] == "ecryptfs" and (f[1] == str(home) or str(home).startswith(f[1] + "/")):
                return "ecryptfs"
    for meta in (base / ".fscrypt", PurePosixPath("/.fscrypt")):
        try:
            policies = host.listdir(meta / "policies") if host.is_dir(meta / "policies") else []
        except (UsageError, OSError):
            policies = []
        if policies:
            return "fscrypt (policies exist on this filesystem; the home may be encrypted)"
    return None


def _owner_of(users: dict[str, User], path: str) -> User | None:
    best = None
    for u in users.values():
        h = u.home.rstrip("/")
        if h and h != "" and h not in ("/", "/root") and path.startswith(h + "/") \
                and (best is None or len(h) > len(best.home)):
            best = u
    return best


def _text_findings(report: AuthfileReport, text: str, *, strict: bool,
                   services: list[str]) -> list[Finding]:
    """What the authfile's content says: malformed lines, single keys, no credential."""
    out: list[Finding] = []
    authfile = Authfile.parse(text)
    for problem in authfile.problems():
        out.append(Finding("warning", "authfile-malformed", f"{report.path}: {problem}",
                           "fix the line; pam_u2f fails for that user", services))
    for u in authfile.users():
        n = len(authfile.credentials_of(u))
        report.users[u] = n
        if n == 1:
            out.append(Finding("warning", "single-key",
                               f"{u} has one key in {report.path} and no backup",
                               f"register a backup key: yktool pam register --user {u} …", services))
    if report.user is None and not authfile.users():
        out.append(Finding("error" if strict else "warning", "authfile-empty",
                           f"{report.path} holds no credential", "register a key", services))
    return out


def _authfile_findings(host: Host, report: AuthfileReport, users: dict[str, User],
                       *, strict: bool, user_run: list[str], services: list[str]) -> list[Finding]:
    out: list[Finding] = []
    sv = list(services)
    # First, because an encrypted home that is not unlocked hides the file altogether
    owner = users.get(report.user) if report.user else _owner_of(users, report.path)
    if owner is not None:
        enc = home_encryption(host, owner)
        if enc:
            out.append(Finding("error", "encrypted-home",
                               f"{report.path} is inside {owner.name}'s home, encrypted with {enc}: "
                               "pam_u2f cannot read it until the home is unlocked (login fails)",
                               "use a central authfile: yktool pam register --authfile "
                               f"{CENTRAL_AUTHFILE} and authfile={CENTRAL_AUTHFILE} on the PAM line",
                               sv))
    try:
        st = host.lstat(report.path)
    except UsageError as exc:  # a user's link (UnsafeLink), or one climbing out of the root
        report.exists = True
        out.append(Finding("error", "authfile-link", f"{report.path}: {exc.message}",
                           "make the authfile a plain file (pam_u2f, reading it as the user, cannot "
                           "rely on what a link points at either)", sv))
        return out
    if st is None:
        if report.path.startswith("/run/agenix") and not host.is_live:
            out.append(Finding("info", "authfile-agenix",
                               f"{report.path} is decrypted by agenix at boot (not in an offline root)",
                               "check the age file itself: yktool pam check --age-file F "
                               "--age-identity K", sv))
            return out
        sev = "error" if (strict or report.user is None) else "warning"
        who = f"{report.user}: " if report.user else ""
        out.append(Finding(sev, "authfile-missing", f"{who}authfile {report.path} does not exist",
                           "register a key: yktool pam register --user NAME"
                           + (f" --authfile {report.path}" if report.user is None else "")
                           + ("; with a `required` rule nobody can authenticate" if strict else ""),
                           sv))
        return out
    report.exists = True
    report.mode, report.owner_uid = st.st_mode & 0o7777, st.st_uid
    if not stat.S_ISREG(st.st_mode):
        out.append(Finding("error", "authfile-unreadable", f"{report.path} is not a regular file",
                           "pam_u2f only reads regular files", sv))
        return out
    allowed = {0} | ({users[report.user].uid} if report.user in users else set())
    if st.st_uid not in allowed:
        out.append(Finding("error", "authfile-owner",
                           f"{report.path} is owned by uid {st.st_uid}; pam_u2f refuses a file "
                           "owned by anyone but root or the user",
                           f"chown root {report.path} (or the user for a per-user file)", sv))
    if st.st_mode & 0o022:
        out.append(Finding("error", "authfile-writable",
                           f"{report.path} is writable by group or others "
                           f"(mode {st.st_mode & 0o777:04o}): anyone could add their own key",
                           f"chmod go-w {report.path}", sv))
    if user_run and report.user is None and not st.st_mode & 0o004:
        out.append(Finding("error", "authfile-unreadable",
                           f"{report.path} (mode {st.st_mode & 0o777:04o}) is not readable by "
                           f"users, but {', '.join(user_run)} run pam_u2f as the user",
                           f"chmod 0644 {report.path} (agenix: mode = \"0444\")", user_run))
    try:
        fd = host.open(report.path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(fd, "rb") as fh:
            text = fh.read().decode("utf-8", "surrogateescape")
    except PermissionError:
        out.append(Finding("error", "authfile-unreadable", f"{report.path}: permission denied",
                           "run the check as root", sv))
        return out
    except (OSError, YktoolError) as exc:
        why = exc.message if isinstance(exc, YktoolError) else exc.strerror
        out.append(Finding("error", "authfile-unreadable", f"{report.path}: {why}",
                           "check the file", sv))
        return out
    out.extend(_text_findings(report, text, strict=strict, services=sv))
    return out


def check(host: Host, names: list[str] | tuple[str, ...] | None = None,
          age_authfiles: Iterable[tuple[str, str]] = ()) -> CheckReport:
    """Which services use pam_u2f, with which authfile/origin/cue, and every lockout trap
    found: missing/unreadable authfile, nouserok/alwaysok, an authfile in an encrypted home,
    an origin that follows the hostname, a user with a single key, origins that differ from
    what the keys were registered with (key registry)."""
    from yktool import pam_config
    from yktool.inventory import Registry

    report = CheckReport()
    services = pam_config.u2f_services(host, names)
    report.services = services
    modules = [u.line.module for s in services for u in s.u2f_lines]
    version, _src = installed_version(host, modules)
    report.pam_version = version_text(version)
    users = read_users(host)
    f = report.findings
    if not services:
        f.append(Finding("warning", "no-u2f", "no PAM service uses pam_u2f",
                         "add `auth sufficient pam_u2f.so authfile=… cue origin=…` to the services "
                         "(NixOS: security.pam.services.<name>.u2fAuth = true)"))
        _add_age_authfiles(report, age_authfiles, [])
        return report
    try:
        registry = Registry.load(host)
        registered = [e for _k, e in registry.enrollments("pam")]
    except Exception:  # noqa: BLE001 - a broken registry must not hide PAM findings
        registered = []
    files: dict[str, tuple[AuthfileReport, list[str], bool, list[str]]] = {}
    for service in services:
        for u in service.u2f_lines:
            o = u.options
            strict = pam_config.key_required(u.control)
            at = f"{u.line.file}:{u.line.lineno}"
            if o.alwaysok:
                f.append(Finding("error", "alwaysok", f"{at}: alwaysok lets everyone in",
                                 "remove alwaysok", [service.name]))
            if o.nouserok:
                # pam-u2f before 1.3.1 (CVE-2025-23013) answers SUCCESS for a user it finds no
                # credential for: behind a rule whose success ends the stack, that user is in
                # with no key AND no password. Fixed ones answer IGNORE (the key is skipped).
                lets_in = pam_config.success_ends_stack(u.control) and (
                    version is None or version < NOUSEROK_FIXED_VERSION)
                f.append(Finding("error" if lets_in else "warning", "nouserok",
                                 f"{at}: nouserok — a user without a credential (or "
                                 "with an unreadable authfile) passes this rule without a key"
                                 + (f" and, as the rule is `{u.control}` and pam-u2f "
                                    f"{version_text(version)} may predate the CVE-2025-23013 "
                                    "fix (1.3.1), without a password" if lets_in else ""),
                                 "remove nouserok once every user has a key (CVE-2020-24612 class)",
                                 [service.name]))
            if o.origin is None and not o.sshformat:
                f.append(Finding("warning", "origin-hostname",
                                 f"{at}: no origin= — pam_u2f uses pam://<hostname> at "
                                 "login time; renaming the host breaks every registered key",
                                 "add origin=pam://NAME (the origin the keys were registered "
                                 "with; `yktool pam register` prints it)", [service.name]))
            if o.manual:
                f.append(Finding("warning", "manual", f"{at}: manual mode (no device is "
                                 "asked; meant for testing)", "remove manual", [service.name]))
            if o.debug:
                f.append(Finding("info", "debug", f"{at}: debug logs key handles",
                                 "remove debug when done", [service.name]))
            effective_origin = o.origin or (default_origin_or_none(host))
            paths: list[tuple[str, str | None]] = []
            per_user = o.expand and o.authfile is not None and ("%u" in o.authfile or "%h" in o.authfile)
            if o.authfile and not per_user:
                paths.append((o.authfile, None))
            else:
                for user in users.values():
                    if user.can_log_in and (user.uid == 0 or user.uid >= 1000) and user.home:
                        # pam_u2f's `expand`: %u is the user's name, %h their home
                        path = (o.authfile.replace("%u", user.name).replace("%h", user.home.rstrip("/"))
                                if per_user and o.authfile else str(PurePosixPath(user.home) / USER_AUTHFILE))
                        paths.append((path, user.name))
            for path, owner in paths:
                entry = files.setdefault(path, (AuthfileReport(path, owner, False), [], False, []))
                entry[1].append(service.name)
                if service.runs_as_user:
                    entry[3].append(service.name)
                if strict:
                    files[path] = (entry[0], entry[1], True, entry[3])
            for e in registered:
                where = e.get("path")
                if where in [p for p, _ in paths] and effective_origin and e.get("origin") != effective_origin:
                    f.append(Finding("error", "origin-mismatch",
                                     f"{at}: the key registered for {e.get('user')} in "
                                     f"{where} has origin {e.get('origin')}, but this rule uses "
                                     f"{effective_origin}", f"set origin={e.get('origin')} on the "
                                     "PAM line (or register again with the rule's origin)",
                                     [service.name]))
    per_user_missing: list[AuthfileReport] = []
    for path, (rep, svcs, strict, user_run) in files.items():
        rep.services = sorted(set(svcs))
        found = _authfile_findings(host, rep, users, strict=strict, user_run=sorted(set(user_run)),
                                   services=rep.services)
        if rep.user is not None and not rep.exists:
            # missing per-user files are summed up below; other causes (a locked encrypted
            # home) are reported on their own
            per_user_missing.append(rep)
            f.extend(x for x in found if x.code != "authfile-missing")
            continue
        f.extend(found)
        report.authfiles.append(rep)
        if version is not None and version < EDDSA_MIN_VERSION and rep.exists:
            try:
                text = host.read_text(path)
            except (UsageError, OSError):
                text = ""
            bad = [u for u in Authfile.parse(text).users()
                   if any(c.cose_type == "eddsa" for c in Authfile.parse(text).credentials_of(u))]
            if bad:
                f.append(Finding("error", "eddsa-unsupported",
                                 f"{path}: eddsa keys of {', '.join(bad)} but pam-u2f "
                                 f"{version_text(version)} accepts es256/rs256 only",
                                 "register es256 keys, or upgrade pam-u2f to 1.2.0+", rep.services))
    if per_user_missing:
        nouserok = any(u.options.nouserok for s in services for u in s.u2f_lines)
        anyone = any(r.user is not None for r in report.authfiles)
        names_missing = ", ".join(f"{r.user} ({r.path})" for r in sorted(per_user_missing,
                                                                          key=lambda r: r.user or ""))
        sev = "warning" if (anyone or nouserok) else "error"
        f.append(Finding(sev, "authfile-missing",
                         f"no authfile for: {names_missing}"
                         + (" (nouserok lets them in without a key)" if nouserok else ""),
                         "register them: yktool pam register --user NAME", []))
    agenix_services = sorted({s.name for s in services for u in s.u2f_lines
                              if (u.options.authfile or "").startswith("/run/agenix")})
    _add_age_authfiles(report, age_authfiles, agenix_services)
    report.findings = _merge_findings(report.findings)
    return report


def _add_age_authfiles(report: CheckReport, age_authfiles: Iterable[tuple[str, str]],
                       services: list[str]) -> None:
    for label, text in age_authfiles:
        rep = AuthfileReport(label, None, True, services=services)
        report.findings.extend(_text_findings(rep, text, strict=False, services=services))
        report.authfiles.append(rep)


def _merge_findings(findings: list[Finding]) -> list[Finding]:
    """One finding per (severity, code, message): a rule in common-auth is reported once, with
    every service that includes it."""
    merged: dict[tuple[str, str, str], Finding] = {}
    for item in findings:
        key = (item.severity, item.code, item.message)
        if key in merged:
            merged[key].services = sorted(set(merged[key].services) | set(item.services))
        else:
            merged[key] = item
    return list(merged.values())


def default_origin_or_none(host: Host) -> str | None:
    try:
        return default_origin(host)
    except UsageError:
        return None
