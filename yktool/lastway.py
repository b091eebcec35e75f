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

import re
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from yktool.errors import Refused, YktoolError
from yktool.host import Host

if TYPE_CHECKING:
    from collections.abc import Callable

    from yktool.fido.session import KeySession
    from yktool.pam.dispatch import Step
    from yktool.pam.stack import PamLine, PamService

PamPlace = tuple[str, str]  # (authfile path inside the root, user)
SshPlace = tuple[str, str]  # (authorized_keys path inside the root, user)


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
    # LUKS volumes the root's /etc/crypttab lists that yktool could not read: it cannot tell whether
    # the change leaves them a way in (device -> why)
    luks_unjudged: dict[str, str] = field(default_factory=dict)
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

    area: str  # luks | pam | ssh
    where: str  # the device, authfile or authorized_keys
    user: str  # "" for a LUKS volume
    message: str
    hint: str

    def to_json(self) -> dict[str, str]:
        return {"area": self.area, "where": self.where, "user": self.user, "message": self.message, "hint": self.hint}


def losses(host: Host, removal: Removal) -> list[Loss]:
    """Everyone the removal would leave without a way in (nothing is changed here)."""
    return [*_luks_losses(host, removal), *_pam_losses(host, removal), *_ssh_losses(host, removal)]


def _luks_losses(host: Host, removal: Removal) -> list[Loss]:
    from yktool.luks.pending import read_header_seeing_pending
    from yktool.luks.safety import check_remaining

    out = [
        Loss(
            "luks",
            device,
            "",
            f"yktool cannot tell whether {device} keeps a way in: {why}",
            "make the volume readable (as root, the device present), or make sure another way in to it "
            "stays (a passphrase or recovery key)",
        )
        for device, why in removal.luks_unjudged.items()
    ]
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


# modules whose success is a way in yktool can judge: pam_permit lets anyone in, pam_unix is read
# from the root's passwd/shadow, another pam_u2f line reads another authfile
WAY_IN = frozenset({"pam_permit", "pam_unix", "pam_u2f"})

# modules that are no way in but pass in normal use, with what their auth entry point returns
# (Linux-PAM 1.5, its sources): a path through them is still a way in. pam_env, pam_keyinit,
# pam_mail and pam_warn return PAM_IGNORE; pam_faildelay sets the delay and ignores; pam_echo
# prints (SUCCESS) or, silent or without its file, ignores. The session-only modules have no
# pam_sm_authenticate, and libpam makes a rule with no function PAM_MODULE_UNKNOWN. pam_nologin
# and pam_rootok are judged (`Judge._nologin`, `Judge.outcomes`). Not here, so a path through
# them is not counted: what reads other state to decide (pam_listfile, pam_access, pam_wheel,
# pam_time, pam_shells, pam_lastlog's `inactive`, pam_cap, a keyring daemon's module, pam_sss…).
PASS_IN_NORMAL_USE: dict[str, tuple[str, ...]] = {
    **dict.fromkeys(("pam_env", "pam_faildelay", "pam_keyinit", "pam_mail", "pam_warn"), ("ignore",)),
    "pam_echo": ("success", "ignore"),
    **dict.fromkeys(("pam_umask", "pam_limits", "pam_loginuid", "pam_systemd", "pam_motd"), ("module_unknown",)),
}
_NOLOGIN = ("/var/run/nologin", "/etc/nologin")  # pam_nologin's defaults, the first found


@dataclass
class Judge:
    """What each rule of a stack can return for `user`, read from the root where yktool can.

    The decision this serves is "may a credential go": counting a rule as a possible way in when
    it is not would lock someone out, so only what yktool can judge counts. A way through counts
    only when a module that is a way in (`WAY_IN`) succeeded on it and every module run on it is
    judged here or passes in normal use (`PASS_IN_NORMAL_USE`): one yktool cannot judge
    (pam_listfile, pam_access, pam_sss, …) may be a gate that shuts the way, so a path through it
    is not counted, whatever it returned (`doubts` says which and why). A module that is not
    installed returns PAM_MODULE_UNKNOWN as libpam makes it (with a leading `-` or without: the
    dash only silences the log; pamtester shows `-auth required pam_missing.so` failing the stack)."""

    host: Host | None = None
    user: str = ""
    doubts: dict[str, str] = field(default_factory=dict)  # module -> why it is not counted
    _unix: tuple[str, ...] | None = None
    _unjudged: set[tuple[str, int, tuple[str, ...]]] = field(default_factory=set)  # rules a way may not run

    def outcomes(self, line: PamLine) -> tuple[str, ...]:
        name = line.module_name
        if name == "pam_deny":
            return ("auth_err",)
        if self.host is not None and self._missing(self.host, line):
            self.doubts.setdefault(line.module, "not installed: libpam makes it fail")
            return ("module_unknown",)
        if name == "pam_permit":
            return ("success",)
        if name == "pam_unix" and self.host is not None:
            return self._pam_unix(line)
        if name == "pam_succeed_if" and self.host is not None:
            judged = succeed_if_result(self.host, self.user, line.args)
            if judged is not None:
                return judged
        if name in PASS_IN_NORMAL_USE:
            return PASS_IN_NORMAL_USE[name]
        if name == "pam_nologin" and self.host is not None:
            return self._nologin(self.host, line)
        if name == "pam_rootok":
            # success means the caller is root already: never the user's way in (not in WAY_IN)
            return ("success", "auth_err") if self.user == "root" else ("auth_err",)
        if name not in WAY_IN:
            self._unjudged.add(_rule(line))
            self.doubts.setdefault(
                name,
                f"yktool cannot tell whether it lets {self.user or 'the user'} through, "
                "and it is not a module known to pass in normal use: a way through it "
                "is not counted",
            )
        return ("success", "auth_err")

    def counts(self, trail: tuple[Step, ...]) -> bool:
        """A way through counts when a module yktool can judge succeeded on it, no module on it
        is one yktool cannot judge, and nothing on it is impossible: pam_unix `use_first_pass`
        only checks a password an earlier pam_unix on the way asked for (pam_u2f asks none),
        else it fails."""
        if any(_rule(s.line) in self._unjudged for s in trail):
            return False
        asked = False
        for s in trail:
            if s.line.module_name != "pam_unix":
                continue
            if "use_first_pass" not in s.line.args:
                asked = True
            elif s.result == "success" and not asked:
                return False
        return any(s.result == "success" and s.line.module_name in WAY_IN for s in trail)

    def _nologin(self, host: Host, line: PamLine) -> tuple[str, ...]:
        """pam_nologin (perform_check): with its file there (`file=`, else /var/run/nologin or
        /etc/nologin) it fails everyone but root (a user not in passwd: USER_UNKNOWN, a folder:
        SYSTEM_ERR); without, it ignores (`successok`: SUCCESS)."""
        absent = ("success",) if "successok" in line.args else ("ignore",)
        named = [a.split("=", 1)[1] for a in line.args if a.startswith("file=")]
        try:
            found = next((p for p in (named[-1:] or list(_NOLOGIN)) if host.exists(p)), None)
            if found is None:
                return absent
            if host.is_dir(found):
                return ("system_err",)
            uid = _colon_field(host, "/etc/passwd", self.user, 2) if host.is_file("/etc/passwd") else None
        except (OSError, YktoolError) as exc:
            self.doubts.setdefault("pam_nologin", f"yktool cannot read the root ({getattr(exc, 'message', exc)})")
            return ("auth_err",)
        if uid is None:
            return ("user_unknown",)
        if uid == "0":
            return absent
        self.doubts.setdefault("pam_nologin", f"{found} exists: pam_nologin lets only root in")
        return ("auth_err",)

    @staticmethod
    def _missing(host: Host, line: PamLine) -> bool:
        """Not installed where libpam looks (`module_search`; a tree that cannot tell counts
        as having it — a module yktool cannot judge is no way in either way)."""
        from yktool.pam.stack import module_search

        return bool(module_search(host, line.module))

    def _pam_unix(self, line: PamLine) -> tuple[str, ...]:
        """pam_unix's verdict from the root's passwd and shadow (passverify.c): no entry, a hash
        that is locked (`!`, `*`) or not a hash at all fails; an empty one passes only with
        `nullok`; a real hash may pass (with the right password)."""
        if self._unix is None:
            results, why = unix_results(self.host, self.user) if self.host else (("success", "auth_err"), "")
            self._unix = results
            if why:
                self.doubts.setdefault("pam_unix", why)
        if self._unix == ("empty",):
            if "nullok" in line.args:
                return ("success",)
            self.doubts.setdefault("pam_unix", f"{self.user}'s password is empty and pam_unix has no nullok")
            return ("auth_err",)
        return self._unix


_SUCCEED_IF_FLAGS = frozenset({"debug", "quiet", "quiet_fail", "quiet_success", "audit"})
_NUMERIC = {
    "<": lambda a, b: a < b,
    "lt": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "le": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "gt": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "ge": lambda a, b: a >= b,
    "eq": lambda a, b: a == b,
    "ne": lambda a, b: a != b,
}


def succeed_if_result(host: Host, user: str, args: list[str]) -> tuple[str, ...] | None:
    """What pam_succeed_if answers `user` (pam_succeed_if.c: the conditions, each `field test
    value`, must all hold; the first that does not ends it with AUTH_ERR), read from the root's
    passwd for the fields and tests yktool can judge; None (cannot tell) for the rest: group
    tests, use_uid, service/tty/rhost/ruser, a value that is not a plain number."""
    import fnmatch

    if "use_uid" in args:
        return None
    words = [a for a in args if a not in _SUCCEED_IF_FLAGS]
    if len(words) % 3:
        return None
    entry = None
    try:
        for row in host.read_text("/etc/passwd").splitlines() if host.is_file("/etc/passwd") else []:
            fields = row.split(":")
            if len(fields) >= 7 and fields[0] == user:
                entry = fields
                break
    except (OSError, YktoolError):
        return None
    for i in range(0, len(words), 3):
        left, qual, right = words[i].lower(), words[i + 1].lower(), words[i + 2]
        if left in ("user", "login", "name"):
            value = user
        elif left in ("uid", "gid", "shell", "home", "dir", "homedir"):
            if entry is None:
                return ("user_unknown",)
            value = entry[{"uid": 2, "gid": 3, "shell": 6}.get(left, 5)]
        else:
            return None
        if qual in _NUMERIC:
            if not re.fullmatch(r"[+-]?\d+", value) or not re.fullmatch(r"[+-]?\d+", right):
                return None
            held = _NUMERIC[qual](int(value), int(right))
        elif qual in ("=", "!="):
            held = (value == right) == (qual == "=")
        elif qual in ("in", "notin"):
            held = (value in right.split(":")) == (qual == "in")
        elif qual in ("=~", "glob", "!~", "noglob"):
            held = fnmatch.fnmatchcase(value, right) == (qual in ("=~", "glob"))
        else:
            return None
        if not held:
            return ("auth_err",)
    return ("success",)


def _colon_field(host: Host, path: str, user: str, index: int = 1) -> str | None:
    """A field (the second, unless told) of `user`'s line in a passwd-style file (None: no line)."""
    for line in host.read_text(path).splitlines():
        fields = line.split(":")
        if len(fields) > index and fields[0] == user:
            return fields[index]
    return None


# what crypt(3) can produce (libxcrypt's prefixes, and DES): any other stored string matches no password
_CRYPT = re.compile(r"\$(1|2[abxy]|5|6|7|y|gy|sha1|md5)\$[^:]+|[./0-9A-Za-z]{13}")


def unix_results(host: Host, user: str) -> tuple[tuple[str, ...], str]:
    """(what pam_unix's auth can return for `user`, why it cannot pass — "" when it may), as
    pam_unix reads the root's /etc/passwd and /etc/shadow; ("empty",) for an empty password,
    which passes only with `nullok`. What yktool cannot read counts as failing."""
    try:
        stored = _colon_field(host, "/etc/passwd", user) if host.is_file("/etc/passwd") else None
        if stored is None:
            return ("user_unknown",), f"{user} is not in {host.root}/etc/passwd"
        if stored == "x":  # shadowed
            if not host.is_file("/etc/shadow"):
                return ("authinfo_unavail",), f"there is no /etc/shadow in {host.root}"
            stored = _colon_field(host, "/etc/shadow", user)
            if stored is None:
                return ("authinfo_unavail",), f"{user} has no line in /etc/shadow"
    except (OSError, YktoolError) as exc:
        return ("authinfo_unavail",), f"yktool cannot read the password files ({getattr(exc, 'message', exc)})"
    if stored == "":
        return ("empty",), ""
    if stored[0] in "!*":
        return ("auth_err",), f"{user}'s password is locked ({stored[0]!r} in /etc/shadow)"
    if not _CRYPT.fullmatch(stored) or _crypt_accepts(stored) is False:
        return ("auth_err",), f"{user}'s stored password is not a hash any password matches"
    return ("success", "auth_err"), ""


def _crypt_accepts(stored: str) -> bool | None:
    """Whether crypt(3) reads `stored` as a whole hash (None: no libcrypt to ask): hashing any
    password with it as the setting gives a string of its own form — the same setting, the same
    length — and a truncated or garbled hash (`$6$x`, a cut-off digest, an unknown method) gives
    something else or a failure token (`*0`), so no password matches it (pam_unix fails)."""
    import ctypes
    import ctypes.util

    name = ctypes.util.find_library("crypt")
    if name is None:
        return None
    try:
        crypt = ctypes.CDLL(name).crypt
    except (OSError, AttributeError):
        return None
    crypt.argtypes = [ctypes.c_char_p, ctypes.c_char_p]
    crypt.restype = ctypes.c_char_p
    raw = stored.encode("utf-8", "surrogateescape")
    got = crypt(b"yktool-probe", raw)
    if not got or got.startswith(b"*"):
        return False
    if b"$" not in raw:
        return len(got) == len(raw)  # DES: 13 characters
    return len(got) == len(raw) and got.rsplit(b"$", 1)[0] == raw.rsplit(b"$", 1)[0]


def passes_without(
    service: PamService,
    failing: Callable[[PamLine], bool],
    *,
    host: Host | None = None,
    user: str = "",
    judge: Judge | None = None,
) -> bool:
    """Whether libpam (`pam_dispatch`) can let `user` through `service`'s auth stack while every
    rule for which `failing` holds fails as pam_u2f does without a credential (AUTH_ERR, or
    AUTHINFO_UNAVAIL: each must pass), trying every result of the other modules (`Judge`:
    pam_deny fails, pam_permit passes, pam_unix as the root's shadow says, a module not installed
    fails, one yktool cannot judge is never the way in). Judged on the whole stack:
    `sufficient pam_u2f` followed by `pam_deny`, or pam-auth-update's `[success=1
    default=ignore] pam_u2f` + `requisite pam_deny`, need the key as surely as `required`
    does. Too many branches to follow: counted as requiring the key."""
    from yktool.pam import dispatch as pam_dispatch

    judge = judge or Judge(host, user)
    handlers = service.handlers("auth")
    for fail_as in ("auth_err", "authinfo_unavail"):

        def outcomes(line: PamLine, fail_as: str = fail_as) -> tuple[str, ...]:
            return (fail_as,) if failing(line) else judge.outcomes(line)

        try:
            if pam_dispatch.passing_path(handlers, outcomes, accept=judge.counts) is None:
                return False
        except pam_dispatch.TooManyPaths:
            return False
    return True


def pam_requiring(host: Host, authfile: str, user: str, doubts: dict[str, str] | None = None) -> tuple[bool, list[str]]:
    """(required, services): whether a PAM stack under the root cannot be passed without a
    pam_u2f credential from `authfile` for `user`, and the services that read that authfile.
    No stack reading it at all (NixOS generates /etc/pam.d; an age file is read from
    /run/agenix): counted as required — not seeing the consumer is no proof it is absent.
    `doubts` gets, for the services that require it, the modules not counted as a way in and why."""
    from yktool.pam import stack as pam_stack
    from yktool.pam.check import authfile_paths
    from yktool.pam.host_facts import read_users

    users = read_users(host)
    home = users[user].home if user in users else ""
    reading: list[str] = []
    required: list[str] = []

    def reads(u2f: pam_stack.U2fLine) -> bool:
        # the pam-u2f version unknown (taken as new): `expand` is honoured, so a `%u` rule is
        # counted as reading the user's file — never as a way in beside it
        return any(path == authfile for path, _ in authfile_paths(u2f.options, [(user, home)]))

    for service in pam_stack.u2f_services(host):
        ours = {_rule(u.line) for u in service.u2f_lines if reads(u)}
        if not ours:
            continue
        reading.append(service.name)
        # the whole stack as libpam runs it, not the pam_u2f line's control word alone
        judge = Judge(host, user)
        if not passes_without(service, lambda ln, ours=ours: _rule(ln) in ours, judge=judge):  # type: ignore[misc]
            required.append(service.name)
            if doubts is not None:
                doubts.update(judge.doubts)
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
    """A user whose pam_u2f line would keep no credential, where PAM requires one. A resident
    (`*`) credential left counts only when the registry knows it (its public key): the line does
    not say whose key made it, so one the registry does not know — a registry that is gone, a
    `pamu2fcfg --resident` by hand — may be the very key going, and is not counted as kept."""
    from yktool.inventory import Registry
    from yktool.pam.authfile import Authfile

    out = []
    known = {
        str(e["public_key"])
        for _k, e in Registry.load(host).enrollments("pam")
        if e.get("resident") is True and "public_key" in e
    }
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
        resident_left = sum(c.resident and c.public_key in known for c in left) - removal.pam_resident.get(
            (path, user), 0
        )
        if any(not c.resident for c in left) or resident_left > 0:
            continue  # another credential stays on the line
        unknown = sum(c.resident and c.public_key not in known for c in left)
        doubts: dict[str, str] = {}
        required, services = pam_requiring(host, path, user, doubts)
        if not required:
            continue
        which = f" ({', '.join(services)})" if services else ""
        why = (
            "; not counted as a way in: " + ", ".join(f"{m} ({w})" for m, w in sorted(doubts.items())) if doubts else ""
        )
        if unknown:
            why += (
                f"; {unknown} resident (*) credential(s) on the line are not in the registry: yktool cannot "
                "tell which key made them, so they may be the one going"
            )
        out.append(
            Loss(
                "pam",
                path,
                user,
                f"{user} would be left without any pam_u2f credential in {path}, and PAM requires one"
                f"{which}: {user} could no longer pass pam_u2f (sudo, login){why}",
                f"register another key for {user} first (yktool pam register --user {user})",
            )
        )
    return out


def _ssh_losses(host: Host, removal: Removal) -> list[Loss]:
    """A user whose authorized_keys would keep no key sshd lets run a command of theirs (a kept
    key with a forced command, expired, or one sshd skips is no way in: `not_a_way_in`), where
    a key that is one goes."""
    from yktool.authorized_keys import key_blob_in, not_a_way_in

    out = []
    for (path, user), blobs in removal.ssh.items():
        if (path, user) in removal.replaced_ssh or not host.exists(path):
            continue
        lines = host.read_text(path).splitlines()
        going = [ln for ln in lines if key_blob_in(ln) in blobs]
        kept = {ln: why for ln in lines if key_blob_in(ln) not in blobs and (why := not_a_way_in(ln)) != "no key"}
        if not any(not_a_way_in(ln) is None for ln in going) or any(why is None for why in kept.values()):
            continue  # nothing that lets the user in goes, or something that does stays
        others = (
            f" (the key(s) kept are no way in: {'; '.join(dict.fromkeys(str(w) for w in kept.values()))})"
            if kept
            else ""
        )
        out.append(
            Loss(
                "ssh",
                path,
                user,
                f"{user} would be left without any SSH key in {path} that logs in{others}: no more SSH login by key",
                f"authorize another key for {user} first (yktool ssh authorize -u {user})",
            )
        )
    return out


# crypttab volumes that hold no key of anyone's: plain dm-crypt, swap and /tmp with a random key
_NOT_LUKS_OPTIONS = ("plain", "swap", "tmp", "bitlk", "tcrypt")


def crypttab_volumes(host: Host) -> list[tuple[str, str]]:
    """(device inside the root, crypttab line) of every volume the root's /etc/crypttab opens
    with a key (`UUID=`/`LABEL=`/… as /dev/disk/by-*; a detached `header=` is where the slots are)."""
    from yktool.checks.base import lines
    from yktool.checks.boot import resolve_spec

    if not host.is_file("/etc/crypttab"):
        return []
    out = []
    for line in lines(host.read_text("/etc/crypttab")):
        parts = line.split()
        if len(parts) < 2:
            continue
        key = parts[2] if len(parts) > 2 else "none"
        options = parts[3].split(",") if len(parts) > 3 else []
        if key in ("/dev/urandom", "/dev/random") or any(o in _NOT_LUKS_OPTIONS for o in options):
            continue
        header = next((o.split("=", 1)[1] for o in options if o.startswith("header=")), "")
        out.append((resolve_spec(header or parts[1]), line))
    return out


def crypttab_luks(host: Host, known: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The LUKS2 volumes /etc/crypttab opens that yktool can read (their devices inside the root),
    leaving out those that are one of `known` under another name (a path and a `UUID=`), and
    those it cannot judge (device -> why). LUKS1 ones are left out: they hold no FIDO2 token."""
    from yktool.errors import YktoolError
    from yktool.luks.header import Luks1Device, read_header

    def uuid_of(device: str) -> str | None:
        try:
            return read_header(host, device).uuid if host.exists(device) else None
        except YktoolError:
            return None

    seen = {u for d in known or [] if (u := uuid_of(d))}
    readable: list[str] = []
    unjudged: dict[str, str] = {}
    for device, line in crypttab_volumes(host):
        if device in (known or []):
            continue
        if not host.exists(device):
            unjudged[device] = f"/etc/crypttab lists it ({line!r}), and it is not there"
            continue
        try:
            uuid = read_header(host, device).uuid
        except Luks1Device:
            continue
        except YktoolError as exc:
            unjudged[device] = f"/etc/crypttab lists it, and yktool cannot read it ({exc.message})"
            continue
        if uuid not in seen:
            seen.add(uuid)
            readable.append(device)
    return readable, unjudged


def describe(found: list[Loss]) -> str:
    return "; ".join(f.message for f in found)


@dataclass
class Held:
    """What one physical key holds on this host, found by the registry and silent probes."""

    names: list[str]  # the registry names it answers as
    removal: Removal  # every credential of it, as if it were gone
    unregistered: list[str] = field(default_factory=list)  # places it answers that the registry does not know


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
    ids = {cid for k in registry.keys if k.nickname in names for c in k.credential_ids() if (cid := raw(c)) is not None}
    held = Held(names, Removal())

    def answers(rp_id: str, cid: bytes, where: str) -> bool:
        if cid in ids:
            return True
        if session.probe(rp_id, cid):
            held.unregistered.append(where)
            return True
        return False

    devices = dict.fromkeys(str(e["device"]) for _k, e in registry.enrollments("luks") if "device" in e)
    # and every volume /etc/crypttab opens: a registry that is gone, or a volume enrolled by hand
    # (systemd-cryptenroll), is no proof the key opens none of them
    listed, unjudged = crypttab_luks(host, list(devices))
    devices.update(dict.fromkeys(listed))
    held.removal.luks_unjudged.update(unjudged)
    for device in devices:
        if not host.exists(device):
            continue
        for token in read_header(host, device).tokens_of_type("systemd-fido2"):
            cid = raw(token.credential) if isinstance(token, Fido2Token) else None
            if (
                isinstance(token, Fido2Token)
                and cid
                and answers(token.rp or "io.systemd.cryptsetup", cid, f"{device} token {token.id}")
            ):
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
    resident_known = {
        str(e["public_key"]) for _k, e in registry.enrollments("pam") if e.get("resident") is True and "public_key" in e
    }
    for path in authfiles:
        if not host.exists(path):
            continue
        authfile = Authfile.parse(host.read_text(path))
        for user in authfile.users():
            for cred in authfile.credentials_of(user):
                cid = cred.credential_id
                if cid is not None and any(answers(o, cid, f"{path} ({user})") for o in sorted(origins) if o):
                    held.removal.add_pam(path, user, cid)
                elif cred.resident and cred.public_key not in resident_known:
                    # a `*` credential no probe by id can reach and the registry does not know: it
                    # may be this key's, so the user's line is judged (`_pam_losses` does not count it)
                    held.removal.pam.setdefault((path, user), set())
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
