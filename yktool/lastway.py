"""The last way in: what a change that takes credentials away would leave each person with.

Every command that removes or kills a credential (`replace`, `key reset`, the pam_u2f and SSH
revocations they do) first describes what it takes away as a `Removal` — keyslots per LUKS
device, credential ids per (authfile, user), key blobs per (authorized_keys, user), and where a
replacement is enrolled first — and `losses()` answers, before anything changes, who would be
left without a way in:

- a LUKS volume with no keyslot left, or only hardware-bound ones (`luks.safety`);
- a user whose pam_u2f line would be empty where a PAM stack requires pam_u2f for that
  authfile (read as libpam does, `yktool.pam.stack`; a stack yktool cannot see counts as requiring it);
- a user whose authorized_keys would hold no key at all.

This module reads only; the callers refuse (or, with --force and a typed confirmation, go on
and say what is lost).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING

from yktool.errors import Refused
from yktool.host import Host

if TYPE_CHECKING:
    from collections.abc import Callable

    from yktool.fido.session import KeySession
    from yktool.pam.stack import PamLine, PamService

PamPlace = tuple[str, str]   # (authfile path inside the root, user)
SshPlace = tuple[str, str]   # (authorized_keys path inside the root, user)


@dataclass
class Removal:
    """What a change takes away, and where it puts a proven replacement first."""

    luks: dict[str, set[int]] = field(default_factory=dict)
    pam: dict[PamPlace, set[bytes]] = field(default_factory=dict)
    ssh: dict[SshPlace, set[bytes]] = field(default_factory=dict)
    # resident (`*`) pam_u2f credentials going, per place: the line does not say whose key a `*`
    # credential is, so they are counted (the registry's `resident` entries), not matched
    pam_resident: dict[PamPlace, int] = field(default_factory=dict)
    pam_texts: dict[str, str] = field(default_factory=dict)  # authfiles not plain in the root (age)
    replaced_pam: set[PamPlace] = field(default_factory=set)
    replaced_ssh: set[SshPlace] = field(default_factory=set)

    def add_pam(self, path: str, user: str, credential_id: bytes) -> None:
        self.pam.setdefault((path, user), set()).add(credential_id)

    def add_ssh(self, path: str, user: str, blob: bytes) -> None:
        self.ssh.setdefault((path, user), set()).add(blob)

    def add_luks(self, device: str, slots: list[int]) -> None:
        self.luks.setdefault(device, set()).update(slots)


@dataclass
class Loss:
    """One person or volume left without a way in."""

    area: str       # luks | pam | ssh
    where: str      # the device, authfile or authorized_keys
    user: str       # "" for a LUKS volume
    message: str
    hint: str

    def to_json(self) -> dict[str, str]:
        return {"area": self.area, "where": self.where, "user": self.user, "message": self.message,
                "hint": self.hint}


def losses(host: Host, removal: Removal) -> list[Loss]:
    """Everyone the removal would leave without a way in (nothing is changed here)."""
    return [*_luks_losses(host, removal), *_pam_losses(host, removal), *_ssh_losses(host, removal)]


def _luks_losses(host: Host, removal: Removal) -> list[Loss]:
    from yktool.luks.pending import read_header_seeing_pending
    from yktool.luks.safety import check_remaining

    out = []
    for device, slots in removal.luks.items():
        header = read_header_seeing_pending(host, device)  # an unseen recovery key is no way in
        present = sorted(s for s in slots if s in header.keyslots)
        if not present:
            continue
        try:
            check_remaining(header, present)
        except Refused as refusal:
            out.append(Loss("luks", device, "", refusal.message, refusal.hint))
    return out


def _rule(line: PamLine) -> tuple[str, int, tuple[str, ...]]:
    return line.file, line.lineno, line.via


def passes_without(service: PamService, failing: Callable[[PamLine], bool]) -> bool:
    """Whether libpam (`pam_dispatch`) can let the user through `service`'s auth stack while every
    rule for which `failing` holds fails as pam_u2f does without a credential (AUTH_ERR, or
    AUTHINFO_UNAVAIL: each must pass), trying every result of the other modules (pam_deny
    fails, pam_permit passes, a password module may pass). Judged on the whole stack:
    `sufficient pam_u2f` followed by `pam_deny`, or pam-auth-update's `[success=1
    default=ignore] pam_u2f` + `requisite pam_deny`, need the key as surely as `required`
    does. Too many branches to follow: counted as requiring the key."""
    from yktool.pam import dispatch as pam_dispatch

    handlers = service.handlers("auth")
    for fail_as in ("auth_err", "authinfo_unavail"):
        def outcomes(line: PamLine, fail_as: str = fail_as) -> tuple[str, ...]:
            if failing(line):
                return (fail_as,)
            if line.module_name == "pam_deny":
                return ("auth_err",)
            if line.module_name == "pam_permit":
                return ("success",)
            return ("success", "auth_err")

        try:
            if pam_dispatch.passing_path(handlers, outcomes) is None:
                return False
        except pam_dispatch.TooManyPaths:
            return False
    return True


def pam_requiring(host: Host, authfile: str, user: str) -> tuple[bool, list[str]]:
    """(required, services): whether a PAM stack under the root cannot be passed without a
    pam_u2f credential from `authfile` for `user`, and the services that read that authfile.
    No stack reading it at all (NixOS generates /etc/pam.d; an age file is read from
    /run/agenix): counted as required — not seeing the consumer is no proof it is absent."""
    from yktool.pam import stack as pam_stack
    from yktool.pam.authfile import USER_AUTHFILE
    from yktool.pam.host_facts import read_users

    users = read_users(host)
    home = users[user].home if user in users else ""
    reading: list[str] = []
    required: list[str] = []

    def reads(u2f: pam_stack.U2fLine) -> bool:
        opts = u2f.options
        if opts.authfile is None:
            path = str(PurePosixPath(home) / USER_AUTHFILE) if home else ""
        elif opts.expand:
            path = opts.authfile.replace("%u", user).replace("%h", home.rstrip("/"))
        else:
            path = opts.authfile
        return path == authfile

    for service in pam_stack.u2f_services(host):
        ours = {_rule(u.line) for u in service.u2f_lines if reads(u)}
        if not ours:
            continue
        reading.append(service.name)
        # the whole stack as libpam runs it, not the pam_u2f line's control word alone
        if not passes_without(service, lambda ln, ours=ours: _rule(ln) in ours):  # type: ignore[misc]
            required.append(service.name)
    if not reading:
        return True, []
    return bool(required), sorted(set(required))


def pam_authfiles(host: Host) -> list[tuple[str, str]]:
    """(authfile, origin) of every pam_u2f rule under the root that names one fixed authfile."""
    from yktool.pam import stack as pam_stack

    out = []
    for service in pam_stack.u2f_services(host):
        for u2f in service.u2f_lines:
            path = u2f.options.authfile
            if path and path.startswith("/") and not (u2f.options.expand and "%" in path):
                out.append((path, u2f.options.origin or ""))
    return list(dict.fromkeys(out))


def _pam_losses(host: Host, removal: Removal) -> list[Loss]:
    from yktool.pam.authfile import Authfile

    out = []
    places = list(dict.fromkeys([*removal.pam, *removal.pam_resident]))
    for path, user in places:
        ids = removal.pam.get((path, user), set())
        if (path, user) in removal.replaced_pam:
            continue
        if path in removal.pam_texts:
            text = removal.pam_texts[path]
        elif host.exists(path):
            text = host.read_text(path)
        else:
            continue
        line = Authfile.parse(text).effective_line(user)
        if line is None:
            continue
        left = [c for c in line.credentials if c.credential_id not in ids]
        resident_left = sum(c.resident for c in left) - removal.pam_resident.get((path, user), 0)
        if any(not c.resident for c in left) or resident_left > 0:
            continue  # another credential stays on the line
        required, services = pam_requiring(host, path, user)
        if not required:
            continue
        which = f" ({', '.join(services)})" if services else ""
        out.append(Loss("pam", path, user,
                        f"{user} would be left without any pam_u2f credential in {path}, and PAM requires one"
                        f"{which}: {user} could no longer pass pam_u2f (sudo, login)",
                        f"register another key for {user} first (yktool pam register --user {user})"))
    return out


def _ssh_losses(host: Host, removal: Removal) -> list[Loss]:
    from yktool.authorized_keys import key_blob_in, remove_key

    out = []
    for (path, user), blobs in removal.ssh.items():
        if (path, user) in removal.replaced_ssh or not host.exists(path):
            continue
        data = host.read_bytes(path)
        removed_any = False
        for blob in blobs:
            data, removed, _others = remove_key(data, blob)
            removed_any = removed_any or bool(removed)
        lines = data.decode("utf-8", "surrogateescape").splitlines()
        if not removed_any or any(key_blob_in(ln) is not None for ln in lines):
            continue
        out.append(Loss("ssh", path, user,
                        f"{user} would be left without any SSH key in {path}: no more SSH login by key",
                        f"authorize another key for {user} first (yktool ssh authorize -u {user})"))
    return out


def describe(found: list[Loss]) -> str:
    return "; ".join(f.message for f in found)


@dataclass
class Held:
    """What one physical key holds on this host, found by the registry and silent probes."""

    names: list[str]              # the registry names it answers as
    removal: Removal              # every credential of it, as if it were gone
    unregistered: list[str] = field(default_factory=list)   # places it answers that the registry does not know


def held_by(host: Host, session: KeySession) -> Held:
    """Everything the key in hand can open here: its registry name(s) come from silent probes
    of the recorded credentials (no touch, no PIN), then every credential the registry has for
    those names counts (a verify-required one too, which a silent probe cannot see), and so
    does any LUKS token or authfile credential the key answers that the registry does not know."""
    import base64

    from yktool.inventory import Registry
    from yktool.luks.header import read_header
    from yktool.luks.tokens import Fido2Token
    from yktool.pam.authfile import Authfile
    from yktool.pam.host_facts import default_origin_or_none

    def raw(value: object) -> bytes | None:
        try:
            return base64.b64decode(str(value), validate=True)
        except ValueError:
            return None

    registry = Registry.load(host)
    names: list[str] = []
    for record in registry.keys:
        for entry in record.enrollments:
            rp_id = entry.get("application") or entry.get("origin") or entry.get("rp_id")
            cid = raw(entry.get("credential_id", ""))
            if isinstance(rp_id, str) and rp_id and cid and session.probe(rp_id, cid):
                names.append(record.nickname)
                break
    ids = {cid for k in registry.keys if k.nickname in names for c in k.credential_ids()
           if (cid := raw(c)) is not None}
    held = Held(names, Removal())

    def answers(rp_id: str, cid: bytes, where: str) -> bool:
        if cid in ids:
            return True
        if session.probe(rp_id, cid):
            held.unregistered.append(where)
            return True
        return False

    devices = dict.fromkeys(str(e["device"]) for _k, e in registry.enrollments("luks") if "device" in e)
    for device in devices:
        if not host.exists(device):
            continue
        for token in read_header(host, device).tokens_of_type("systemd-fido2"):
            cid = raw(token.credential) if isinstance(token, Fido2Token) else None
            if isinstance(token, Fido2Token) and cid and answers(token.rp or "io.systemd.cryptsetup", cid,
                                                                 f"{device} token {token.id}"):
                held.removal.add_luks(device, list(token.keyslots))
    origins = {str(e.get("origin")) for _k, e in registry.enrollments("pam") if e.get("origin")}
    origins.add(default_origin_or_none(host) or "")
    authfiles = dict.fromkeys(str(e["path"]) for _k, e in registry.enrollments("pam") if "path" in e)
    # what the PAM stacks read counts too: a registry that is gone, or a key enrolled by hand
    # (pamu2fcfg), is no proof the key opens nothing (per-user files are left to the registry:
    # they are the user's to point elsewhere)
    for path, origin in pam_authfiles(host):
        authfiles.setdefault(path)
        if origin:
            origins.add(origin)
    for path in authfiles:
        if not host.exists(path):
            continue
        authfile = Authfile.parse(host.read_text(path))
        for user in authfile.users():
            for cred in authfile.credentials_of(user):
                cid = cred.credential_id
                if cid is not None and any(answers(o, cid, f"{path} ({user})") for o in sorted(origins) if o):
                    held.removal.add_pam(path, user, cid)
    for k, e in registry.enrollments("pam"):
        if k.nickname in names and e.get("resident") is True and "path" in e:
            place = (str(e["path"]), str(e.get("user", "")))
            held.removal.pam_resident[place] = held.removal.pam_resident.get(place, 0) + 1
    for _k, e in registry.enrollments("ssh"):
        cid = raw(e.get("credential_id", ""))
        if e.get("role", "key-file") != "key-file" or cid is None or cid not in ids:
            continue
        parts = str(e.get("public_key", "")).split()
        blob = raw(parts[1]) if len(parts) > 1 else None
        if blob is None:
            continue
        for _k2, a in registry.enrollments("ssh"):
            if a.get("role") == "authorized_keys" and "path" in a and a.get("public_key") == e.get("public_key"):
                held.removal.add_ssh(str(a["path"]), str(a.get("user") or e.get("user", "")), blob)
    return held
