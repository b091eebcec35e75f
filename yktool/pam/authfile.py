"""pam_u2f's authfile: parse, merge, render — byte for byte what pam_u2f reads.

The format is pam_u2f's native one (pam-u2f util.c `parse_native_format`, pamu2fcfg):

    user:KeyHandle,UserKey,CoseType,Options[:KeyHandle,UserKey,CoseType,Options…]

KeyHandle is the standard base64 credential ID (`*` for a resident credential), UserKey the
base64 raw public key (es256: x‖y, 64 bytes; eddsa: 32 bytes), CoseType `es256`, `rs256` or
`eddsa` (pam-u2f ≥ 1.2.0), Options a run of `+presence`, `+verification`, `+pin`. A line with
only two fields per credential is the legacy U2F format (websafe-base64 handle, hex key).

pam_u2f reads the file with `strtok` (empty fields skipped) and keeps only the LAST line of a
user, so yktool keeps one line per user and appends a new credential to it. Every other line
is kept byte for byte, even when malformed (reported with its line number).
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from yktool.errors import Refused, UsageError

if TYPE_CHECKING:
    from yktool.fido.session import Credential

CENTRAL_AUTHFILE = "/etc/u2f_mappings"
USER_AUTHFILE = ".config/Yubico/u2f_keys"  # relative to the user's home
COSE_TYPES = ("es256", "rs256", "eddsa")
KNOWN_OPTIONS = ("+presence", "+verification", "+pin")


@dataclass(frozen=True)
class U2fCredential:
    """One credential of a user's line, exactly as written (`raw`), and decoded."""

    key_handle: str  # base64 credential id, or `*` (resident)
    public_key: str  # base64 (hex for legacy)
    cose_type: str  # es256 | rs256 | eddsa
    options: str  # e.g. `+presence+pin`; `+presence` implied for legacy
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
        return {
            "key_handle": self.key_handle,
            "cose_type": self.cose_type,
            "options": self.options,
            "legacy": self.legacy,
            "resident": self.resident,
        }


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
            cred = U2fCredential(
                key_handle=fields[0], public_key=fields[1], cose_type="es256", options="+presence", legacy=True, raw=tok
            )
        else:
            cred = U2fCredential(
                key_handle=fields[0],
                public_key=fields[1],
                cose_type=fields[2],
                options=fields[3] if len(fields) > 3 else "",
                raw=tok,
            )
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
                out.append(
                    f"user {user}: pam_u2f reads only the last line ({lines[-1].lineno}); line(s) {ignored} are ignored"
                )
        return out


@dataclass(kw_only=True)
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
        raise UsageError(f"user name {user!r} cannot be written to an authfile", "give a plain login name")
    notes = authfile.problems()
    for ln in authfile.lines:
        if any(c.identity == cred.identity for c in ln.credentials):
            return MergeResult(
                text=authfile.render(),
                changed=False,
                lineno=ln.lineno,
                notes=notes + [f"credential already on line {ln.lineno}; nothing added"],
            )
    line = authfile.effective_line(user)
    lines = list(authfile.lines)
    if line is None:
        if lines and lines[-1].eol == "":
            # the file does not end with a newline: end that line first (its text stays)
            last = lines[-1]
            lines[-1] = AuthLine(last.lineno, last.text, "\n", last.user, last.credentials, last.error)
        new = parse_line(len(lines) + 1, f"{user}:{cred.render()}", "\n")
        lines.append(new)
        return MergeResult(text="".join(ln.raw for ln in lines), changed=True, lineno=new.lineno, notes=notes)
    if line.error:
        raise Refused(
            f"line {line.lineno} of user {user} is malformed: {line.error}",
            "fix or remove that line by hand first (pam_u2f rejects it too); yktool will not append to it",
        )
    # Trailing blanks / CR would end up inside the new credential's options: keep them out.
    body = line.text.rstrip(" \t\r")
    new = parse_line(line.lineno, f"{body}:{cred.render()}", line.eol or "\n")
    idx = lines.index(line)
    lines[idx] = new
    return MergeResult(text="".join(ln.raw for ln in lines), changed=True, lineno=new.lineno, notes=notes)


def options_string(*, presence: bool = True, verification: bool = False, pin: bool = False) -> str:
    """pamu2fcfg's order: `+presence+verification+pin`."""
    return ("+presence" if presence else "") + ("+verification" if verification else "") + ("+pin" if pin else "")


def credential_from(cred: Credential, *, options: str, resident: bool = False) -> U2fCredential:
    """The authfile entry for a credential the key just made."""
    from yktool.fido.session import EDDSA, ES256  # lazy: it loads fido2

    pk = cred.public_key
    if cred.algorithm == ES256:
        raw = bytes(pk[-2]) + bytes(pk[-3])  # COSE: -2 is x, -3 is y
        cose = "es256"
    elif cred.algorithm == EDDSA:
        raw = bytes(pk[-2])
        cose = "eddsa"
    else:
        raise UsageError(
            f"COSE algorithm {cred.algorithm} is not usable with pam_u2f", "register with --algorithm es256"
        )
    kh = "*" if resident else base64.b64encode(cred.credential_id).decode()
    return U2fCredential(key_handle=kh, public_key=base64.b64encode(raw).decode(), cose_type=cose, options=options)
