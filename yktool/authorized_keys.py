"""authorized_keys: add a key while keeping every existing byte as it was.

A file is only ever appended to: existing lines, options, comments, blank lines and line endings
(LF or CRLF) stay byte for byte. A key already present (same type and blob, whatever its options
or comment) is not added again. Lines are parsed like sshd does (auth2-pubkeyfile.c): an optional
options field (quoted strings may hold spaces and commas), then the key type and its base64.
"""

from __future__ import annotations

import base64
import binascii
import os
from dataclasses import dataclass
from pathlib import PurePosixPath

from yktool.errors import Refused, UsageError
from yktool.host import Host
from yktool.inventory import Registry, Scalar, nickname_of_credential
from yktool.ssh.accounts import Account, refuse_user_links
from yktool.ssh.files import credential_id_b64
from yktool.ssh.keys import SkPrivateKey, SkPublicKey


@dataclass(frozen=True)
class AuthorizedLine:
    options: str
    key_type: str
    blob: bytes
    comment: str


def _next_token(text: str) -> tuple[str, str]:
    """The next whitespace-separated token, where double quotes protect spaces (and `\\"`)."""
    text = text.lstrip(" \t")
    quoted = False
    i = 0
    while i < len(text):
        ch = text[i]
        if ch == "\\" and quoted and i + 1 < len(text):
            i += 2
            continue
        if ch == '"':
            quoted = not quoted
        elif ch in " \t" and not quoted:
            break
        i += 1
    return text[:i], text[i:]


def _looks_like_key(key_type: str, b64: str) -> bytes | None:
    if not key_type or not b64:
        return None
    try:
        blob = base64.b64decode(b64.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        return None
    # the blob starts with its own type name: that is what tells a key type from an option
    name = key_type.encode("ascii", "replace")
    if blob[:4] != len(name).to_bytes(4, "big") or blob[4 : 4 + len(name)] != name:
        return None
    return blob


def parse_line(line: str) -> AuthorizedLine | None:
    """One line's key (None for blank lines, comments and lines that hold no key)."""
    text = line.rstrip("\r\n").strip(" \t")
    if not text or text.startswith("#"):
        return None
    first, rest = _next_token(text)
    second, after = _next_token(rest)
    blob = _looks_like_key(first, second)
    if blob is not None:
        return AuthorizedLine("", first, blob, after.strip())
    key_type, rest2 = _next_token(rest)
    b64, comment = _next_token(rest2)
    blob = _looks_like_key(key_type, b64)
    if blob is None:
        return None
    return AuthorizedLine(first, key_type, blob, comment.strip())


# sshd's key options (auth-options.c, OpenSSH 9.2): flags with a `no-` form, flags without, and
# options that take a quoted value; anything else makes sshd skip the line ("bad options")
_FLAGS_NEGATABLE = (
    "port-forwarding",
    "agent-forwarding",
    "x11-forwarding",
    "touch-required",
    "verify-required",
    "pty",
    "user-rc",
)
_FLAGS = ("restrict", "cert-authority")
_VALUED = ("command", "principals", "from", "expiry-time", "environment", "permitopen", "permitlisten", "tunnel")


@dataclass
class KeyOptions:
    """A key line's options as sshd reads them (`error`: sshd refuses the line for them)."""

    flags: set[str]
    values: dict[str, list[str]]
    error: str = ""


def parse_options(text: str) -> KeyOptions:
    """sshauthopt_parse: comma-separated, names matched without case and as prefixes,
    `name="value"` with `\\"` for a quote, the field ending at the first unquoted blank; what
    follows a name must be a comma or the end (so an empty option passes, an unknown name does not)."""
    opts = KeyOptions(set(), {})
    i, n = 0, len(text)
    while i < n and text[i] not in " \t":
        low = text[i:].lower()
        name = next((f"no-{f}" for f in _FLAGS_NEGATABLE if low.startswith(f"no-{f}")), None) or next(
            (f for f in (*_FLAGS_NEGATABLE, *_FLAGS) if low.startswith(f)), None
        )
        valued = next((v for v in _VALUED if low.startswith(v + "=")), None)
        if valued is not None:
            i += len(valued) + 1
            if i >= n or text[i] != '"':
                return KeyOptions(opts.flags, opts.values, f"{valued}= without a quoted value")
            i += 1
            value = []
            while i < n and text[i] != '"':
                if text[i] == "\\" and i + 1 < n and text[i + 1] == '"':
                    i += 1
                value.append(text[i])
                i += 1
            if i >= n:
                return KeyOptions(opts.flags, opts.values, f"{valued}= has no closing quote")
            i += 1
            opts.values.setdefault(valued, []).append("".join(value))
        elif name is not None:
            i += len(name)
            opts.flags.add(name)
        if i >= n or text[i] in " \t":
            break
        if text[i] != ",":
            return KeyOptions(opts.flags, opts.values, f"unknown option at {text[i : i + 20]!r}")
        i += 1
    return opts


def _expired(when: str, now: float) -> bool | None:
    """sshd's expiry-time (YYYYMMDD[HHMM[SS]], local time, or UTC with a trailing Z) has passed;
    None when sshd cannot read it."""
    import calendar
    import time

    utc = when.endswith("Z") or when.endswith("z")
    digits = when[:-1] if utc else when
    if not digits.isdigit() or len(digits) not in (8, 12, 14):
        return None
    digits = digits.ljust(14, "0")
    try:
        parts = time.strptime(digits, "%Y%m%d%H%M%S")
    except ValueError:
        return None
    stamp = calendar.timegm(parts) if utc else time.mktime(parts)
    return stamp <= now


def not_a_way_in(line: str, now: float | None = None) -> str | None:
    """Why sshd would not, or might not, run a command of the key holder's choosing (None: it
    would — `restrict`/`no-pty` still run any command): a forced command (that command runs, not
    theirs), options sshd refuses, an expiry time past or unreadable, a `cert-authority` or
    `principals=` line (for certificates, not this key), a `from=` list (only from those hosts:
    counted as no way in, since yktool cannot tell where the user comes from). Not a key line: "no key"."""
    import time

    parsed = parse_line(line)
    if parsed is None:
        return "no key"
    opts = parse_options(parsed.options)
    if opts.error:
        return f"sshd skips the line (bad options: {opts.error})"
    if "cert-authority" in opts.flags:
        return "a cert-authority line admits certificates, not this key"
    for when in opts.values.get("expiry-time", []):
        expired = _expired(when, time.time() if now is None else now)
        if expired is None:
            return f"sshd skips the line (expiry-time {when!r} is not a time it reads)"
        if expired:
            return f"it expired ({when})"
    if "principals" in opts.values:
        return "principals= applies to certificates: sshd does not take this key itself"
    if "command" in opts.values:
        return f"it is restricted to the command {opts.values['command'][0]!r}"
    if "from" in opts.values:
        return (
            f"it logs in only from {opts.values['from'][0]!r}: yktool cannot tell whether the user connects from there"
        )
    return None


def tokens_of(line: str) -> list[str]:
    """The whitespace-separated fields of a line, quoted strings kept whole."""
    text = line.rstrip("\r\n").strip(" \t")
    tokens = []
    while text:
        token, text = _next_token(text)
        if not token:
            break
        tokens.append(token)
    return tokens


def key_position(tokens: list[str]) -> tuple[int, bytes] | None:
    """Index of the key type among `tokens`, and the key blob that follows it."""
    for index, (key_type, b64) in enumerate(zip(tokens, tokens[1:], strict=False)):
        blob = _looks_like_key(key_type, b64)
        if blob is not None:
            return index, blob
    return None


def key_blob_in(line: str) -> bytes | None:
    """The key blob anywhere in a line (authorized_keys or allowed_signers: the key may follow a
    principals field and options); None for comments and lines without a key."""
    if line.lstrip(" \t").startswith("#"):
        return None
    found = key_position(tokens_of(line))
    return found[1] if found else None


def remove_key(existing: bytes, blob: bytes) -> tuple[bytes, int, int]:
    """`existing` without the lines holding `blob`; every other byte kept. Returns the new bytes,
    how many lines went, and how many other key lines remain."""
    text = existing.decode("utf-8", "surrogateescape")
    kept: list[str] = []
    removed = others = 0
    for raw in text.splitlines(keepends=True):
        found = key_blob_in(raw)
        if found == blob:
            removed += 1
            continue
        others += found is not None
        kept.append(raw)
    return "".join(kept).encode("utf-8", "surrogateescape"), removed, others


def revoke(host: Host, path: PurePosixPath, public: SkPublicKey, *, allow_empty: bool = False) -> int:
    """Take the key out of an authorized_keys (or allowed_signers) file, keeping the rest byte for
    byte (the old file is backed up). Refuses to leave the file without any key unless
    `allow_empty`: enroll the replacement first, so nobody is locked out."""
    refuse_user_links(host, path)
    if not host.is_file(path):
        return 0
    data, removed, others = remove_key(host.read_bytes(path), public.blob())
    if not removed:
        return 0
    if others == 0 and not allow_empty:
        raise Refused(
            f"removing {public.fingerprint} would leave {path} without any key",
            "add the replacement key first (yktool ssh authorize), then revoke the old one",
        )
    host.write_file(path, data, host.mode(path), owner=existing_owner(host, path))
    return removed


def existing_owner(host: Host, path: PurePosixPath) -> tuple[int, int] | None:
    """The owner a rewritten file must keep (only root can, and must, set it back)."""
    if os.geteuid() != 0:
        return None
    return host.owner(path)


def key_options(key: SkPrivateKey) -> list[str]:
    """sshd options that keep the key's promises: no-touch-required for a key made without the
    touch requirement (sshd demands a touch otherwise), verify-required for a PIN-bound key."""
    options = []
    if not key.touch_required:
        options.append("no-touch-required")
    if key.verify_required:
        options.append("verify-required")
    return options


def render_line(public: SkPublicKey, comment: str, options: list[str]) -> str:
    line = public.line(comment)
    return f"{','.join(options)} {line}" if options else line


@dataclass
class MergeResult:
    data: bytes
    added: bool
    existing_line: str | None = None


def merge(existing: bytes, public: SkPublicKey, comment: str, options: list[str]) -> MergeResult:
    """`existing` with the key appended (unless present): every existing byte kept."""
    text = existing.decode("utf-8", "surrogateescape")
    blob = public.blob()
    for raw in text.splitlines():
        parsed = parse_line(raw)
        if parsed is not None and parsed.blob == blob:
            return MergeResult(existing, False, raw)
    crlf = text.count("\r\n")
    newline = "\r\n" if crlf and crlf * 2 >= text.count("\n") else "\n"
    prefix = b""
    if existing and not existing.endswith(b"\n"):
        prefix = newline.encode()
    addition = (render_line(public, comment, options) + newline).encode("utf-8")
    return MergeResult(existing + prefix + addition, True)


def authorized_keys_path(account: Account) -> PurePosixPath:
    return account.ssh_dir / "authorized_keys"


def authorize(
    host: Host, account: Account, key: SkPrivateKey | SkPublicKey, comment: str = "", path: PurePosixPath | None = None
) -> tuple[PurePosixPath, MergeResult]:
    """Append the key to the account's authorized_keys (~/.ssh 0700 and file 0600 when new,
    owned by the account when yktool runs as root); a present key is left alone."""
    if isinstance(key, SkPrivateKey):
        public, options, comment = key.public, key_options(key), comment or key.comment
    else:
        public, options = key, []
    target = path or authorized_keys_path(account)
    refuse_user_links(host, target)
    owner = account.owner()
    present = host.is_file(target)
    existing = host.read_bytes(target) if present else b""
    result = merge(existing, public, comment, options)
    if not result.added:
        return target, result
    if not host.is_dir(target.parent):
        if target.parent != account.ssh_dir:
            # e.g. /etc/ssh/authorized_keys/%u: its folder's owner and mode are the admin's call
            raise UsageError(
                f"the folder {target.parent} does not exist",
                "create it with the owner and mode sshd's StrictModes expects, then run again",
            )
        host.mkdir(target.parent, 0o700, owner)
    if present:
        host.write_file(target, result.data, host.mode(target), owner=existing_owner(host, target))
    else:
        host.write_file(target, result.data, 0o600, owner=owner)
    return target, result


@dataclass
class AuthorizeResult:
    path: PurePosixPath
    added: bool
    public: SkPublicKey
    options: list[str]
    nickname: str


def authorize_and_record(
    host: Host,
    account: Account,
    key: SkPrivateKey | SkPublicKey,
    *,
    comment: str = "",
    target: PurePosixPath | None = None,
    nickname: str | None = None,
) -> AuthorizeResult:
    """Authorize the key for `account` (see `authorize`; a key-handle file's key carries its sshd
    options) and record it in the registry (kind ssh, role authorized_keys) under `nickname`,
    else the key that made the credential. Every enrollment of an SSH key ends here."""
    private, public = (key, key.public) if isinstance(key, SkPrivateKey) else (None, key)
    path, result = authorize(host, account, key, comment, target)
    fields: dict[str, Scalar] = {
        "role": "authorized_keys",
        "user": account.name,
        "path": str(path),
        "public_key": public.line(),
        "fingerprint": public.fingerprint,
    }
    if private is not None:
        fields["credential_id"] = credential_id_b64(private)
    name = nickname_of_credential(host, str(fields.get("credential_id", "")), nickname)
    with Registry.update(host) as registry:
        registry.record(name, "ssh", **fields)
    return AuthorizeResult(path, result.added, public, key_options(private) if private else [], name)
