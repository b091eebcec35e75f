"""The findings on pam_u2f that `pam check` reports and verify's `pam.*` checks judge by: one
small function per rule, so both read a rule the same way (and only here is it written).

Line rules look at one pam_u2f rule of a stack (`alwaysok`, `nouserok` with CVE-2025-23013, no
`cue`, no `origin=`, `manual`, `debug`, and whether the module is installed); `authfile_paths`
says which files a rule reads; file rules at an authfile's owner and mode as pam_u2f
does (util.c get_devices_from_authfile) and at who else can read or write it. `check()` builds
`pam check`'s report from them plus what only it looks at (every service, every user's file,
the authfile's lines, the key registry's origins).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from yktool.errors import PermissionDenied, UsageError, YktoolError
from yktool.host import Host
from yktool.inventory import Registry
from yktool.pam import stack
from yktool.pam.authfile import CENTRAL_AUTHFILE, USER_AUTHFILE, Authfile
from yktool.pam.host_facts import (
    EDDSA_MIN_VERSION,
    EXPAND_MIN_VERSION,
    NOUSEROK_FIXED_VERSION,
    User,
    default_origin_or_none,
    home_encryption,
    installed_version,
    read_users,
    version_text,
)
from yktool.pam.stack import PamService, U2fLine, U2fOptions

Version = tuple[int, int, int] | None


@dataclass(kw_only=True)
class Finding:
    """One thing found; `severity` error means someone can be locked out (or let in without a
    key). `source`/`value`/`key` say where it was read and what (verify's evidence)."""

    severity: str  # error | warning | info
    code: str
    message: str
    hint: str = ""
    services: list[str] = field(default_factory=list)
    source: str = ""
    value: str = ""
    key: str = ""

    def to_json(self) -> dict[str, object]:
        return {
            "severity": self.severity,
            "code": self.code,
            "message": self.message,
            "hint": self.hint,
            "services": list(self.services),
        }


# ------------------------------------------------------------------------ rules: a pam_u2f line
def rule_alwaysok(rule: U2fLine, version: Version) -> Finding | None:
    if not rule.options.alwaysok:
        return None
    return Finding(
        severity="error",
        code="alwaysok",
        message=f"{_at(rule)}: `alwaysok` lets everyone pass pam_u2f without a key",
        hint="remove alwaysok from the pam_u2f line  |  NixOS: drop security.pam.u2f.settings.alwaysok",
        source=rule.line.where,
        value="present",
        key="alwaysok",
    )


def rule_nouserok(rule: U2fLine, version: Version) -> Finding | None:
    """pam-u2f before 1.3.1 (CVE-2025-23013) answers SUCCESS for a user it finds no credential
    for: behind a rule whose success ends the stack, that user is in with no key AND no
    password. Fixed ones answer IGNORE (the key is skipped, the password stays)."""
    if not rule.options.nouserok:
        return None
    lets_in = stack.success_ends_stack(rule.control) and (version is None or version < NOUSEROK_FIXED_VERSION)
    return Finding(
        severity="error" if lets_in else "warning",
        code="nouserok",
        message=f"{_at(rule)}: `nouserok` — a user without a credential (or with an unreadable "
        "authfile) passes this rule without a key"
        + (
            f" and, as the rule is `{rule.control}` and pam-u2f {version_text(version)} may predate "
            "the CVE-2025-23013 fix (1.3.1), without a password"
            if lets_in
            else ""
        ),
        hint="register every user's keys, then remove nouserok (CVE-2020-24612 class)  |  "
        "NixOS: drop security.pam.u2f.settings.nouserok",
        source=rule.line.where,
        value="present",
        key="nouserok",
    )


def rule_no_cue(rule: U2fLine, version: Version) -> Finding | None:
    if rule.options.cue:
        return None
    return Finding(
        severity="warning",
        code="no-cue",
        message=f"{_at(rule)}: no `cue` — nobody is told to touch the key",
        hint="add `cue` to the pam_u2f line  |  NixOS: security.pam.u2f.settings.cue = true;",
        source=rule.line.where,
        value="absent",
        key="cue",
    )


def rule_origin_hostname(rule: U2fLine, version: Version) -> Finding | None:
    if rule.options.origin is not None or rule.options.sshformat:
        return None
    return Finding(
        severity="warning",
        code="origin-hostname",
        message=f"{_at(rule)}: no origin= — pam_u2f uses pam://<hostname> at login time; renaming "
        "the host breaks every registered key",
        hint="add origin=pam://NAME (the origin the keys were registered with; `yktool pam register` prints it)",
        source=rule.line.where,
        value="absent",
        key="origin",
    )


def rule_manual(rule: U2fLine, version: Version) -> Finding | None:
    if not rule.options.manual:
        return None
    return Finding(
        severity="warning",
        code="manual",
        message=f"{_at(rule)}: manual mode (no device is asked; meant for testing)",
        hint="remove manual",
        source=rule.line.where,
        value="present",
        key="manual",
    )


def rule_debug(rule: U2fLine, version: Version) -> Finding | None:
    if not rule.options.debug:
        return None
    return Finding(
        severity="info",
        code="debug",
        message=f"{_at(rule)}: debug logs key handles",
        hint="remove debug when done",
        source=rule.line.where,
        value="present",
        key="debug",
    )


LINE_RULES: tuple[Callable[[U2fLine, Version], Finding | None], ...] = (
    rule_alwaysok,
    rule_nouserok,
    rule_no_cue,
    rule_origin_hostname,
    rule_manual,
    rule_debug,
)


def line_findings(rule: U2fLine, version: Version, services: list[str]) -> list[Finding]:
    """Every line rule's finding on one pam_u2f rule, in LINE_RULES' order."""
    out = [f for f in (r(rule, version) for r in LINE_RULES) if f is not None]
    for f in out:
        f.services = list(services)
    return out


def rule_module_missing(rule: U2fLine, searched: list[str], service: str) -> Finding | None:
    """pam_u2f.so is not where libpam looks (`searched`, from stack.module_search): the rule answers
    MODULE_UNKNOWN, also with `-auth` (which only keeps it out of the log); never a touch."""
    if not searched:
        return None
    module = rule.line.module
    if rule.line.ignore_missing:
        message = (
            f"{_at(rule)}: {module} is not installed (`-auth` only silences libpam's log): the rule answers "
            f"MODULE_UNKNOWN, {service} never asks for the key"
        )
        hint = "install pam_u2f (Debian: apt install libpam-u2f)"
    else:
        message = f"{_at(rule)}: {module} is not installed: every {service} authentication fails"
        hint = "install pam_u2f (Debian: apt install libpam-u2f) before anyone logs out"
    locks_out = stack.control_action(rule.control, "module_unknown") in ("bad", "die")
    return Finding(
        severity="error" if locks_out else "warning",
        code="module-missing",
        message=message,
        hint=hint,
        services=[service],
        source=", ".join(searched[:3]) + (", …" if len(searched) > 3 else ""),
        value="absent",
        key=module,
    )


def _at(rule: U2fLine) -> str:
    return f"{rule.line.file}:{rule.line.lineno}"


# ------------------------------------------------------------------------ rules: an authfile
@dataclass(frozen=True, kw_only=True)
class AuthfileStat:
    """An existing authfile as pam_u2f will meet it."""

    path: str
    mode: int  # st_mode & 0o7777
    uid: int
    owner: str  # the owner's name (its uid when it has none)
    user: str | None = None  # whose file it is, for a per-user file (None: a central file)
    user_uid: int | None = None  # that user's uid
    judge_owner: bool = True  # False on an offline tree built unprivileged: every file is the builder's
    folder_writer: str = ""  # a folder on the way that a user may change ("/etc/yubico: owner alice …")

    @classmethod
    def of(
        cls,
        path: str,
        st: os.stat_result,
        *,
        names: Mapping[int, str],
        live: bool,
        user: tuple[str, int | None] | None = None,
        host: Host | None = None,
    ) -> AuthfileStat:
        """`names`: uid -> login name; `user`: (name, uid) of a per-user file's user; with `host`,
        the folders on the way to a central (or root's) file are judged too."""
        judge_owner = live or os.geteuid() == 0 or st.st_uid != os.geteuid()
        writer = ""
        if host is not None and (user is None or user[1] == 0):
            writer = folder_writer(host, path, names, builder=None if live or os.geteuid() == 0 else os.geteuid())
        return cls(
            path=path,
            mode=st.st_mode & 0o7777,
            uid=st.st_uid,
            owner=names.get(st.st_uid, str(st.st_uid)),
            user=user[0] if user else None,
            user_uid=user[1] if user else None,
            judge_owner=judge_owner,
            folder_writer=writer,
        )


def folder_writer(host: Host, path: str, names: Mapping[int, str], builder: int | None) -> str:
    """The first folder on the way to `path` that someone besides root may change (they can put a
    link there: pam_u2f opens the authfile following links, and only asks that what it reaches be
    root's), "" when none; `builder`: an unprivileged builder's own uid, not counted."""
    try:
        trail = host.trail(path)
    except (OSError, YktoolError):
        return ""
    for inside, st in trail[:-1]:
        if not stat.S_ISDIR(st.st_mode):
            continue
        mode = stat.S_IMODE(st.st_mode)
        if st.st_uid not in (0, builder):
            who = f"owner {names.get(st.st_uid, str(st.st_uid))} (uid {st.st_uid})"
        elif mode & stat.S_ISVTX:
            continue  # sticky: only root renames or removes root's entries
        elif mode & 0o002:
            who = "every user may write it"
        elif mode & 0o020 and st.st_gid != 0:
            who = f"group {st.st_gid} may write it"
        else:
            continue
        return f"{inside}: {who}, mode {mode:04o}"
    return ""


def rule_authfile_writable(f: AuthfileStat, user_run: list[str]) -> Finding | None:
    if not f.mode & 0o022:
        return None
    mode = f"{f.mode & 0o777:04o}"
    return Finding(
        severity="error",
        code="authfile-writable",
        message=f"{f.path} is writable by {'others' if f.mode & 0o002 else 'its group'} (mode {mode}): "
        "anyone who can write it can add their own key",
        hint=f"chmod go-w {f.path}",
        source=f.path,
        value=f"{mode} owner {f.owner}",
        key="mode",
    )


def rule_authfile_owner(f: AuthfileStat, user_run: list[str]) -> Finding | None:
    """pam_u2f reads an authfile owned by root or by the user it authenticates, nobody else's."""
    if f.uid == 0 or not f.judge_owner or (f.user is not None and f.uid == f.user_uid):
        return None
    if f.user is not None:
        message = (
            f"{f.path} is owned by {f.owner}, neither {f.user} nor root: pam_u2f refuses it "
            f"(no key of {f.user} is accepted)"
        )
        hint = f"chown {f.user} {f.path}"
    else:
        message = (
            f"{f.path} is owned by {f.owner}: pam_u2f reads it for {f.owner} only (it refuses an authfile "
            f"owned by neither the user nor root), and {f.owner} can add a key for root"
        )
        hint = f"chown root {f.path}"
    return Finding(
        severity="error",
        code="authfile-owner",
        message=message,
        hint=hint,
        source=f.path,
        value=f"owner {f.owner}",
        key="owner",
    )


def rule_authfile_locker_unreadable(f: AuthfileStat, user_run: list[str]) -> Finding | None:
    """A screen locker runs pam_u2f as the user: a central authfile they cannot read never unlocks."""
    if not user_run or f.user is not None or f.mode & 0o004:
        return None
    mode = f"{f.mode & 0o777:04o}"
    return Finding(
        severity="error",
        code="authfile-unreadable",
        message=f"{f.path} (mode {mode}) is not readable by users, but {', '.join(user_run)} "
        f"run{'s' if len(user_run) == 1 else ''} pam_u2f as the user: the screen never unlocks "
        "with the key",
        hint=f'chmod 0644 {f.path}  |  NixOS (agenix): age.secrets.<name>.mode = "0444";',
        services=list(user_run),
        source=f.path,
        value=mode,
        key="mode",
    )


def rule_authfile_folder_writable(f: AuthfileStat, user_run: list[str]) -> Finding | None:
    if not f.folder_writer:
        return None
    folder = f.folder_writer.split(":", 1)[0]
    return Finding(
        severity="error",
        code="authfile-folder-writable",
        message=f"{f.path}: the folder {f.folder_writer}: whoever can change it can swap the authfile "
        "for a link to any root-owned file whose lines they write, and add their own key",
        hint=f"chown root:root {folder}; chmod go-w {folder}",
        source=folder,
        value=f.folder_writer,
        key="folder",
    )


FILE_RULES: tuple[Callable[[AuthfileStat, list[str]], Finding | None], ...] = (
    rule_authfile_writable,
    rule_authfile_owner,
    rule_authfile_folder_writable,
    rule_authfile_locker_unreadable,
)


def file_findings(f: AuthfileStat, services: list[str], user_run: list[str]) -> list[Finding]:
    """Every file rule's finding on one authfile, in FILE_RULES' order."""
    out = [x for x in (r(f, user_run) for r in FILE_RULES) if x is not None]
    for x in out:
        x.services = x.services or list(services)
    return out


# ------------------------------------------------------------------------ pam check's report
@dataclass(kw_only=True)
class AuthfileReport:
    path: str
    user: str | None  # set for a per-user default file
    exists: bool
    mode: int | None = None
    owner_uid: int | None = None
    users: dict[str, int] = field(default_factory=dict)  # user -> number of credentials
    services: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        return {
            "path": self.path,
            "user": self.user,
            "exists": self.exists,
            "mode": f"{self.mode:04o}" if self.mode is not None else None,
            "owner_uid": self.owner_uid,
            "users": dict(self.users),
            "services": list(self.services),
        }


@dataclass(kw_only=True)
class CheckReport:
    services: list[PamService] = field(default_factory=list)  # the services using pam_u2f
    authfiles: list[AuthfileReport] = field(default_factory=list)
    findings: list[Finding] = field(default_factory=list)
    pam_version: str = "unknown"

    @property
    def ok(self) -> bool:
        return not any(f.severity == "error" for f in self.findings)

    def to_json(self) -> dict[str, object]:
        return {
            "ok": self.ok,
            "pam_u2f_version": self.pam_version,
            "services": [_service_json(s) for s in self.services],
            "authfiles": [a.to_json() for a in self.authfiles],
            "findings": [f.to_json() for f in self.findings],
        }


def _service_json(service: PamService) -> dict[str, object]:
    return {
        "service": service.name,
        "path": service.path,
        "u2f": [
            {
                "control": u.control,
                "where": u.line.where,
                "authfile": u.options.authfile,
                "origin": u.options.origin,
                "appid": u.options.appid,
                "cue": u.options.cue,
                "nouserok": u.options.nouserok,
                "manual": u.options.manual,
                "debug": u.options.debug,
                "module": u.line.module,
            }
            for u in service.u2f_lines
        ],
        "problems": list(service.problems),
    }


def _owner_of(users: dict[str, User], path: str) -> User | None:
    best = None
    for u in users.values():
        h = u.home.rstrip("/")
        if h and h not in ("/", "/root") and path.startswith(h + "/") and (best is None or len(h) > len(best.home)):
            best = u
    return best


def _text_findings(report: AuthfileReport, text: str, *, strict: bool, services: list[str]) -> list[Finding]:
    """What the authfile's content says: malformed lines, single keys, no credential."""
    out: list[Finding] = []
    authfile = Authfile.parse(text)
    for problem in authfile.problems():
        out.append(
            Finding(
                severity="warning",
                code="authfile-malformed",
                message=f"{report.path}: {problem}",
                hint="fix the line; pam_u2f fails for that user",
                services=services,
            )
        )
    for u in authfile.users():
        n = len(authfile.credentials_of(u))
        report.users[u] = n
        if n == 1:
            out.append(
                Finding(
                    severity="warning",
                    code="single-key",
                    message=f"{u} has one key in {report.path} and no backup",
                    hint=f"register a backup key: yktool pam register --user {u} …",
                    services=services,
                )
            )
    if report.user is None and not authfile.users():
        out.append(
            Finding(
                severity="error" if strict else "warning",
                code="authfile-empty",
                message=f"{report.path} holds no credential",
                hint="register a key",
                services=services,
            )
        )
    return out


def _encrypted_home(host: Host, report: AuthfileReport, owner: User | None, services: list[str]) -> Finding | None:
    """An encrypted home that is not unlocked hides the file altogether."""
    enc = home_encryption(host, owner) if owner is not None else None
    if owner is None or not enc:
        return None
    return Finding(
        severity="error",
        code="encrypted-home",
        message=f"{report.path} is inside {owner.name}'s home, encrypted with {enc}: pam_u2f cannot "
        "read it until the home is unlocked (login fails)",
        hint=f"use a central authfile: yktool pam register --authfile {CENTRAL_AUTHFILE} and "
        f"authfile={CENTRAL_AUTHFILE} on the PAM line",
        services=services,
    )


def _absent(host: Host, report: AuthfileReport, *, strict: bool, services: list[str]) -> Finding:
    if report.path.startswith("/run/agenix") and not host.is_live:
        return Finding(
            severity="info",
            code="authfile-agenix",
            message=f"{report.path} is decrypted by agenix at boot (not in an offline root)",
            hint="check the age file itself: yktool pam check --age-file F --age-identity K",
            services=services,
        )
    who = f"{report.user}: " if report.user else ""
    return Finding(
        severity="error" if (strict or report.user is None) else "warning",
        code="authfile-missing",
        message=f"{who}authfile {report.path} does not exist",
        hint="register a key: yktool pam register --user NAME"
        + (f" --authfile {report.path}" if report.user is None else "")
        + ("; with a `required` rule nobody can authenticate" if strict else ""),
        services=services,
    )


def _authfile_findings(
    host: Host,
    report: AuthfileReport,
    users: dict[str, User],
    *,
    strict: bool,
    user_run: list[str],
    services: list[str],
    version: Version,
) -> list[Finding]:
    sv = list(services)
    owner = users.get(report.user) if report.user else _owner_of(users, report.path)
    out = [x for x in (_encrypted_home(host, report, owner, sv),) if x is not None]
    try:
        st = host.lstat(report.path)
    except UsageError as exc:  # a user's link (UnsafeLink), or one climbing out of the root
        report.exists = True
        out.append(
            Finding(
                severity="error",
                code="authfile-link",
                message=f"{report.path}: {exc.message}",
                hint="make the authfile a plain file (pam_u2f, reading it as the user, cannot rely on "
                "what a link points at either)",
                services=sv,
            )
        )
        return out
    if st is None:
        out.append(_absent(host, report, strict=strict, services=sv))
        return out
    report.exists = True
    report.mode, report.owner_uid = st.st_mode & 0o7777, st.st_uid
    if not stat.S_ISREG(st.st_mode):
        out.append(
            Finding(
                severity="error",
                code="authfile-unreadable",
                message=f"{report.path} is not a regular file",
                hint="pam_u2f only reads regular files",
                services=sv,
            )
        )
        return out
    names = {u.uid: u.name for u in users.values()}
    user = (report.user, users[report.user].uid if report.user in users else None) if report.user else None
    out.extend(
        file_findings(
            AuthfileStat.of(report.path, st, names=names, live=host.is_live, user=user, host=host), sv, user_run
        )
    )
    try:
        text = host.read_text(report.path)
    except PermissionDenied:
        out.append(
            Finding(
                severity="error",
                code="authfile-unreadable",
                message=f"{report.path}: permission denied",
                hint="run the check as root",
                services=sv,
            )
        )
        return out
    except (OSError, YktoolError) as exc:
        why = exc.message if isinstance(exc, YktoolError) else exc.strerror
        out.append(
            Finding(
                severity="error",
                code="authfile-unreadable",
                message=f"{report.path}: {why}",
                hint="check the file",
                services=sv,
            )
        )
        return out
    out.extend(_text_findings(report, text, strict=strict, services=sv))
    out.extend(x for x in (_eddsa_unsupported(report, text, version),) if x is not None)
    return out


def authfile_paths(
    options: U2fOptions, users: Sequence[tuple[str, str]], version: Version = None
) -> list[tuple[str, str | None]]:
    """The authfiles pam_u2f reads for a rule: [(path, None)] for a central one, else (path, user)
    for each of `users` ((name, home) of those who may log in): no authfile= is each home's
    ~/.config/Yubico/u2f_keys, a relative one is under each home, and with `expand` %u is the
    user's name and %h their home — from pam-u2f 1.3.0 (`version`, None: unknown, taken as new);
    before, `expand` is an unknown word and the path is read as written (`/etc/u2f/%u`)."""
    authfile = options.authfile
    if not authfile:
        return [(f"{home.rstrip('/')}/{USER_AUTHFILE}", name) for name, home in users]
    expands = options.expand and (version is None or version >= EXPAND_MIN_VERSION)
    if expands and ("%u" in authfile or "%h" in authfile):
        return [(authfile.replace("%u", name).replace("%h", home.rstrip("/")), name) for name, home in users]
    if not authfile.startswith("/"):
        return [(f"{home.rstrip('/')}/{authfile}", name) for name, home in users]
    return [(authfile, None)]


def _login_users(users: dict[str, User]) -> list[tuple[str, str]]:
    """(name, home) of root and the users from uid 1000 with a shell and a home."""
    return [(u.name, u.home) for u in users.values() if u.can_log_in and (u.uid == 0 or u.uid >= 1000) and u.home]


def _origin_mismatch(
    rule: U2fLine, paths: list[str], origin: str | None, registered: Sequence[Mapping[str, object]], service: str
) -> list[Finding]:
    """Keys the registry says were registered for one of these files with another origin."""
    out = []
    for e in registered:
        where = e.get("path")
        if where in paths and origin and e.get("origin") != origin:
            out.append(
                Finding(
                    severity="error",
                    code="origin-mismatch",
                    message=f"{_at(rule)}: the key registered for {e.get('user')} in {where} has origin "
                    f"{e.get('origin')}, but this rule uses {origin}",
                    hint=f"set origin={e.get('origin')} on the PAM line (or register again with the rule's origin)",
                    services=[service],
                )
            )
    return out


def _eddsa_unsupported(rep: AuthfileReport, text: str, version: Version) -> Finding | None:
    if version is None or version >= EDDSA_MIN_VERSION:
        return None
    authfile = Authfile.parse(text)
    bad = [u for u in authfile.users() if any(c.cose_type == "eddsa" for c in authfile.credentials_of(u))]
    if not bad:
        return None
    return Finding(
        severity="error",
        code="eddsa-unsupported",
        message=f"{rep.path}: eddsa keys of {', '.join(bad)} but pam-u2f {version_text(version)} "
        "accepts es256/rs256 only",
        hint="register es256 keys, or upgrade pam-u2f to 1.2.0+",
        services=rep.services,
    )


@dataclass
class _FileUse:
    """One authfile and the rules that read it."""

    report: AuthfileReport
    services: list[str] = field(default_factory=list)
    strict: bool = False  # a rule that requires the key reads it
    user_run: list[str] = field(default_factory=list)  # services that run pam_u2f as the user


def check(
    host: Host, names: list[str] | tuple[str, ...] | None = None, age_authfiles: Iterable[tuple[str, str]] = ()
) -> CheckReport:
    """Which services use pam_u2f, with which authfile/origin/cue, and every lockout trap
    found: the line rules and file rules above on every pam_u2f rule and every authfile it
    reads, a missing or unreadable authfile, an authfile in an encrypted home, a user with a
    single key, eddsa keys on an old pam-u2f, origins that differ from what the keys were
    registered with (key registry)."""
    services = stack.u2f_services(host, names)
    version, _src = installed_version(host, [u.line.module for s in services for u in s.u2f_lines])
    report = CheckReport(services=services, pam_version=version_text(version))
    users = read_users(host)
    f = report.findings
    if not services:
        f.append(
            Finding(
                severity="warning",
                code="no-u2f",
                message="no PAM service uses pam_u2f",
                hint="add `auth sufficient pam_u2f.so authfile=… cue origin=…` to the services "
                "(NixOS: security.pam.services.<name>.u2fAuth = true)",
            )
        )
        _add_age_authfiles(report, age_authfiles, [])
        return report
    try:
        registered = [e for _k, e in Registry.load(host).enrollments("pam")]
    except Exception:  # noqa: BLE001 - a broken registry must not hide PAM findings
        registered = []
    files: dict[str, _FileUse] = {}
    searched: dict[str, list[str]] = {}  # module -> where libpam looks for it in vain
    for service in services:
        for u in service.u2f_lines:
            f.extend(line_findings(u, version, [service.name]))
            if u.line.module not in searched:
                searched[u.line.module] = stack.module_search(host, u.line.module)
            f.extend(x for x in (rule_module_missing(u, searched[u.line.module], service.name),) if x is not None)
            paths = authfile_paths(u.options, _login_users(users), version)
            for path, owner in paths:
                use = files.setdefault(path, _FileUse(AuthfileReport(path=path, user=owner, exists=False)))
                use.services.append(service.name)
                if service.runs_as_user:
                    use.user_run.append(service.name)
                use.strict = use.strict or stack.key_required(u.control)
            f.extend(
                _origin_mismatch(
                    u, [p for p, _ in paths], u.options.origin or default_origin_or_none(host), registered, service.name
                )
            )
    per_user_missing: list[AuthfileReport] = []
    for use in files.values():
        rep = use.report
        rep.services = sorted(set(use.services))
        found = _authfile_findings(
            host,
            rep,
            users,
            strict=use.strict,
            user_run=sorted(set(use.user_run)),
            services=rep.services,
            version=version,
        )
        if rep.user is not None and not rep.exists:
            # missing per-user files are summed up below; other causes (a locked encrypted
            # home) are reported on their own
            per_user_missing.append(rep)
            f.extend(x for x in found if x.code != "authfile-missing")
            continue
        f.extend(found)
        report.authfiles.append(rep)
    if per_user_missing:
        f.append(_per_user_missing(report, services, per_user_missing))
    agenix_services = sorted(
        {s.name for s in services for u in s.u2f_lines if (u.options.authfile or "").startswith("/run/agenix")}
    )
    _add_age_authfiles(report, age_authfiles, agenix_services)
    report.findings = _merge_findings(report.findings)
    return report


def _per_user_missing(report: CheckReport, services: list[PamService], missing: list[AuthfileReport]) -> Finding:
    nouserok = any(u.options.nouserok for s in services for u in s.u2f_lines)
    anyone = any(r.user is not None for r in report.authfiles)
    names_missing = ", ".join(f"{r.user} ({r.path})" for r in sorted(missing, key=lambda r: r.user or ""))
    return Finding(
        severity="warning" if (anyone or nouserok) else "error",
        code="authfile-missing",
        message=f"no authfile for: {names_missing}" + (" (nouserok lets them in without a key)" if nouserok else ""),
        hint="register them: yktool pam register --user NAME",
    )


def _add_age_authfiles(report: CheckReport, age_authfiles: Iterable[tuple[str, str]], services: list[str]) -> None:
    for label, text in age_authfiles:
        rep = AuthfileReport(path=label, user=None, exists=True, services=services)
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
