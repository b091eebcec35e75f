"""`pam check`: which services use pam_u2f, with which authfile/origin/cue, and every lockout trap."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from yktool.errors import UsageError, YktoolError
from yktool.host import Host
from yktool.inventory import Registry
from yktool.pam import stack
from yktool.pam.authfile import CENTRAL_AUTHFILE, USER_AUTHFILE, Authfile
from yktool.pam.host_facts import (
    EDDSA_MIN_VERSION,
    NOUSEROK_FIXED_VERSION,
    User,
    default_origin_or_none,
    home_encryption,
    installed_version,
    read_users,
    version_text,
)


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
    services: list[Any] = field(default_factory=list)     # stack.PamService using pam_u2f
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
    report = CheckReport()
    services = stack.u2f_services(host, names)
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
            strict = stack.key_required(u.control)
            at = f"{u.line.file}:{u.line.lineno}"
            if o.alwaysok:
                f.append(Finding("error", "alwaysok", f"{at}: alwaysok lets everyone in",
                                 "remove alwaysok", [service.name]))
            if o.nouserok:
                # pam-u2f before 1.3.1 (CVE-2025-23013) answers SUCCESS for a user it finds no
                # credential for: behind a rule whose success ends the stack, that user is in
                # with no key AND no password. Fixed ones answer IGNORE (the key is skipped).
                lets_in = stack.success_ends_stack(u.control) and (
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

