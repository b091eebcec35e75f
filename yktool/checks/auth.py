"""Layer 3: user authentication — pam_u2f on the checklist's services, the SSH server table, sk keys."""

from __future__ import annotations

import re
from collections.abc import Callable

from yktool.checks.base import CheckContext, CheckFunc, Result, Unreadable, Verdict, register
from yktool.checks.gitconfig import user_config
from yktool.checks.sshd import Setting, SshdConfig, connections, effective, group_lookup, installed, login_users
from yktool.checks.writers import refuse_writable
from yktool.pam import dispatch as pam_dispatch
from yktool.pam.authfile import Authfile
from yktool.pam.check import (
    AuthfileStat,
    Finding,
    authfile_paths,
    file_findings,
    line_findings,
    rule_module_missing,
)
from yktool.pam.host_facts import installed_version
from yktool.pam.stack import (
    PAM_DIRS,
    PamLine,
    PamService,
    U2fOptions,
    key_required,
    module_files,
    module_search,
    parse_service,
    parse_u2f_options,
)

# The hardening checklist: "Protected services: sudo, login, greetd, hyprlock". sudo and login exist on every
# host; greetd and hyprlock only where that greeter / locker is installed.
PAM_SERVICES = (("sudo", False), ("login", False), ("greetd", False), ("hyprlock", False))
STRONG_CONTROLS = ("required", "requisite")
# the findings (yktool.pam.check's line rules) that fail the checklist item "pam_u2f (with cue) protects the
# service"; the others (no origin=, manual, debug) are shown with the evidence
VERDICT_CODES = ("alwaysok", "nouserok", "no-cue")
# where a secret is decrypted at boot (agenix, sops-nix, systemd credentials): an offline root has
# nothing there to judge; any other /run path (/run/user/UID is that user's) is judged as absent
BOOT_SECRETS = ("/run/agenix/", "/run/agenix.d/", "/run/secrets/", "/run/credentials/")


def _pam_check(service: str, always: bool) -> CheckFunc:
    def run(ctx: CheckContext, verdict: Verdict) -> Result:
        svc = parse_service(ctx.host, service)
        if not svc.exists:
            verdict.add_evidence(f"/etc/pam.d/{service}", "absent")
            if always:
                return verdict.fail(f"no PAM service {service}")
            return verdict.not_applicable(f"{service} is not installed (no /etc/pam.d/{service})")
        # whoever can rewrite the stack, or replace a module it loads, decides it: judge its
        # content only when only root can
        modules = [m for ln in svc.stack for m in module_files(ctx.host, ln.module)]
        refused = refuse_writable(
            ctx, verdict, f"{service}'s PAM stack", svc.files + [d for d in PAM_DIRS if ctx.is_dir(d)] + modules
        )
        if refused is not None:
            return refused
        unreadable = [p for p in svc.problems if "cannot read" in p]
        u2f = svc.u2f_lines
        if not u2f:
            if unreadable:
                verdict.add_evidence(svc.path or service, "unreadable", note=unreadable[0])
                if "permission denied" in unreadable[0] and not ctx.privileged:
                    return verdict.needs_root(unreadable[0])
                return verdict.warn(unreadable[0])
            verdict.add_evidence(svc.path or service, "no pam_u2f in the auth stack", "auth")
            return verdict.fail(f"{service} does not ask for the key (no pam_u2f)")
        first = u2f[0]
        opts = first.options
        verdict.add_evidence(first.line.where, first.line.raw, "auth")
        missing_module = rule_module_missing(first, _module_missing(ctx, first.line.module), service)
        if missing_module is not None:
            verdict.add_evidence(missing_module.source, missing_module.value, missing_module.key)
            return verdict.fail(missing_module.message, missing_module.hint)
        version, _source = installed_version(ctx.host, [u.line.module for u in u2f])
        findings = line_findings(first, version, [service])
        judged = next((f for f in findings if f.code in VERDICT_CODES), None)
        for f in findings:
            verdict.add_evidence(f.source, f.value, f.key, note="" if f is judged else f.message)
        if judged is not None:
            return verdict.fail(judged.message, judged.hint)
        user_run = [service] if svc.runs_as_user else []
        # every file any pam_u2f rule reads, for every user: a key added to any of them is taken
        refused = _any_authfile_refused(ctx, verdict, [u.options for u in u2f], user_run, version)
        if refused is not None:
            return refused
        missing = _authfile_missing(ctx, verdict, opts, user_run, version)
        if missing:
            return missing
        return _without_key(ctx, verdict, svc, first.line, version)

    return run


def _results_without_key(ctx: CheckContext, strict: bool) -> Callable[[PamLine], tuple[str, ...]]:
    """What each auth rule may return when nobody touches the key: pam_u2f fails (AUTH_ERR, or
    AUTHINFO_UNAVAIL with no credential; `nouserok`: SUCCESS before pam-u2f 1.3.1, IGNORE after —
    both, whatever the version says: a distribution backports the fix without a new version),
    pam_permit succeeds, pam_deny fails, a module that is not there is MODULE_UNKNOWN (also with
    `-auth`), any other module (a password) succeeds or not — never, when `strict`."""

    def results(line: PamLine) -> tuple[str, ...]:
        name = line.module_name
        if _module_missing(ctx, line.module):
            return ("module_unknown",)
        if name == "pam_u2f":
            opts = parse_u2f_options(line.args)
            if opts.alwaysok:
                return ("success",)
            return ("auth_err", "authinfo_unavail") + (("success", "ignore") if opts.nouserok else ())
        if name == "pam_permit":
            return ("success",)
        if name == "pam_deny":
            return ("auth_err",)
        return ("auth_err", "ignore") if strict else ("success", "auth_err", "ignore")

    return results


def _results_with_key(
    ctx: CheckContext, version: tuple[int, int, int] | None = None
) -> Callable[[PamLine], tuple[str, ...]]:
    """What each auth rule may return for the user with the key and the password at hand: a
    pam_u2f rule whose authfiles hold no credential at all fails as without the key."""
    loose = _results_without_key(ctx, strict=False)

    def results(line: PamLine) -> tuple[str, ...]:
        if line.module_name == "pam_u2f" and not _module_missing(ctx, line.module):
            if _no_credential_at_all(ctx, parse_u2f_options(line.args), version):
                return loose(line)
            return ("success",)
        return loose(line)

    return results


def _no_credential_at_all(ctx: CheckContext, options: U2fOptions, version: tuple[int, int, int] | None) -> bool:
    """True only when every file the rule reads was read and none holds a credential (one that
    cannot be read, or a boot secret offline, may hold one)."""
    for path, _user in authfile_paths(options, ctx.users_to_check(), version):
        if path.startswith(BOOT_SECRETS) and not ctx.live:
            return False
        try:
            text = ctx.read(path)
        except Unreadable:
            return False
        if text is not None and Authfile.parse(text).users():
            return False
    return True


def _without_key(
    ctx: CheckContext, verdict: Verdict, svc: PamService, u2f: PamLine, version: tuple[int, int, int] | None = None
) -> Result:
    """Can libpam's run of the auth stack end in success with pam_u2f failing? Run as
    pam_dispatch (libpam's dispatcher) over every result the other rules may give."""
    service = svc.name
    handlers = svc.handlers("auth")
    try:
        with_key = pam_dispatch.passing_path(handlers, _results_with_key(ctx, version))
        if with_key is None:
            verdict.add_evidence(svc.path or service, "no way through", "auth", "even with the key and the password")
            return verdict.fail(
                f"{service}'s auth stack never succeeds, even with the key and the password "
                "(libpam's reading): everyone is locked out",
                "fix the stack before anyone logs out; `pamtester SERVICE USER authenticate` shows libpam's verdict",
            )
        anyone = pam_dispatch.passing_path(handlers, _results_without_key(ctx, strict=True))
        path = anyone or pam_dispatch.passing_path(handlers, _results_without_key(ctx, strict=False))
    except pam_dispatch.TooManyPaths:
        return verdict.warn(
            f"{service}'s auth stack has too many branches to follow: cannot tell whether the key is required",
            "simplify the stack",
        )
    if path is None:
        return verdict.ok()
    ran_u2f = any(step.line is u2f for step in path)
    # the rule whose success ended the stack or jumped over pam_u2f
    bypass = next(
        (
            st.line
            for st in path
            if st.result == "success"
            and st.line.module_name != "pam_u2f"
            and (st.action == "done" or st.action.isdigit())
        ),
        None,
    )
    trail = " -> ".join(f"{st.line.module_name or st.line.raw} {st.result}" for st in path)
    verdict.add_evidence(svc.path or service, trail, "auth", "a way through without the key")
    if not ran_u2f and bypass is not None:
        verdict.add_evidence(bypass.where, bypass.raw, "auth", "before pam_u2f")
        if anyone:
            return verdict.fail(
                f"{bypass.where}: `{bypass.control} {bypass.module_name}` ends {service}'s "
                "authentication before pam_u2f: anyone gets in",
                "remove that rule",
            )
        return verdict.warn(
            f"{bypass.where}: `{bypass.control} {bypass.module_name}` can end {service}'s "
            "authentication before pam_u2f is asked (no touch required)",
            "put pam_u2f first, or make the earlier rule `required`",
        )
    if anyone:
        return verdict.fail(
            f"{service} lets anyone in without the key ({trail}): anyone gets in",
            "make pam_u2f `required` and remove the rules that let everyone through",
        )
    if u2f.control.lower() == "sufficient":
        return verdict.warn(
            f"pam_u2f is `sufficient` in {service}: a password alone still works (no touch required)",
            'make it `required`  |  NixOS: security.pam.u2f.control = "required";',
        )
    if not key_required(u2f.control):
        return verdict.warn(
            f"pam_u2f control is {u2f.control}: a failed touch does not fail {service}",
            'make it `required`  |  NixOS: security.pam.u2f.control = "required";',
        )
    return verdict.warn(
        f"{service} can be passed without the key ({trail})",
        "make pam_u2f `required` and put it before any rule whose success ends the stack",
    )


def _module_missing(ctx: CheckContext, module: str) -> list[str]:
    """Where libpam would look for `module` when it is not there (stack.module_search); cached,
    the stack runs ask it per rule."""
    key = "pam-module:" + module
    cached = ctx._cache.get(key)
    if isinstance(cached, list):
        return cached
    found = module_search(ctx.host, module)
    ctx._cache[key] = found
    return found


def _authfile_missing(
    ctx: CheckContext, verdict: Verdict, options: U2fOptions, user_run: list[str], version: tuple[int, int, int] | None
) -> Result | None:
    """The fail when pam_u2f would find no credential at all (every user locked out of a
    `required` rule, the key never accepted by a `sufficient` one) or an authfile pam_u2f refuses
    or others can write (yktool.pam.check's file rules); None when a key can be accepted."""
    authfile = options.authfile
    hint = f"register the keys: yktool pam register --user USER --authfile {authfile or '~'}"
    paths = authfile_paths(options, ctx.users_to_check(), version)
    if authfile is not None and paths == [(authfile, None)] and authfile.startswith(BOOT_SECRETS) and not ctx.live:
        # agenix decrypts it at boot: an offline root has no /run to look at
        verdict.add_evidence(authfile, "not in an offline root (decrypted at boot)", "authfile")
        return None
    passwd = ctx.passwd()
    names = {uid: name for name, uid, _h in passwd}
    uids = {name: uid for name, uid, _h in passwd}
    for path, user in paths:
        text = ctx.read(path)  # unreadable: the runner makes it a warn (needs root)
        if text is None:
            continue
        refused = _authfile_refused(
            ctx, path, names=names, user=(user, uids.get(user)) if user else None, user_run=user_run
        )
        if refused is not None:
            verdict.add_evidence(refused.source, refused.value, refused.key)
            return verdict.fail(refused.message, refused.hint)
        parsed = Authfile.parse(text)
        users = {u: len(parsed.credentials_of(u)) for u in parsed.users()}
        keys = sum(users.values())
        verdict.add_evidence(
            path,
            ", ".join(f"{u}: {n} key{'s' if n != 1 else ''}" for u, n in users.items()) or "no credential",
            "authfile",
        )
        if keys:
            return None
    if not paths:
        verdict.add_evidence("/etc/passwd", "no login user", "authfile")
        return verdict.fail("pam_u2f has no authfile= and no login user to read a ~/.config/Yubico/u2f_keys of", hint)
    for path, _user in paths:
        if not any(e.source == path for e in verdict.evidence):
            verdict.add_evidence(path, "absent", "authfile")
    return verdict.fail(
        f"no credential in {' or '.join(p for p, _u in paths[:3])}: pam_u2f can never accept a key "
        "(with a `required` rule nobody gets in)",
        hint,
    )


def _any_authfile_refused(
    ctx: CheckContext,
    verdict: Verdict,
    rules: list[U2fOptions],
    user_run: list[str],
    version: tuple[int, int, int] | None,
) -> Result | None:
    """The fail for the first authfile, of any pam_u2f rule and any user, that breaks a file rule
    (not only the first rule's, nor only the files up to the first that holds a credential)."""
    passwd = ctx.passwd()
    names = {uid: name for name, uid, _h in passwd}
    uids = {name: uid for name, uid, _h in passwd}
    for options in rules:
        for path, user in authfile_paths(options, ctx.users_to_check(), version):
            if path.startswith(BOOT_SECRETS) and not ctx.live:
                continue  # decrypted at boot: nothing to look at in an offline root
            refused = _authfile_refused(
                ctx, path, names=names, user=(user, uids.get(user)) if user else None, user_run=user_run
            )
            if refused is not None:
                verdict.add_evidence(refused.source, refused.value, refused.key)
                return verdict.fail(refused.message, refused.hint)
    return None


def _authfile_refused(
    ctx: CheckContext, path: str, *, names: dict[int, str], user: tuple[str, int | None] | None, user_run: list[str]
) -> Finding | None:
    """The first of yktool.pam.check's file rules the authfile breaks: pam_u2f's own test of it
    (owned by the user or root, else no credential is read), who else could add a key to it,
    whether a screen locker (running as the user) can read it."""
    try:
        st = ctx.host.path(path).stat()
    except OSError:
        return None
    found = file_findings(AuthfileStat.of(path, st, names=names, live=ctx.live, user=user, host=ctx.host), [], user_run)
    return found[0] if found else None


for _svc, _always in PAM_SERVICES:
    register(
        f"pam.{_svc}",
        3,
        f"pam_u2f (with cue) protects {_svc}",
        _pam_check(_svc, _always),
        "yktool pam register --user USER (prints the PAM line)  |  NixOS: "
        'security.pam.u2f = { enable = true; control = "required"; settings.cue = true; };'
        f" security.pam.services.{_svc}.u2fAuth = true;",
    )


# ------------------------------------------------------------------------------------- sshd
def _time_seconds(value: str) -> int | None:
    """sshd time format: 30, 30s, 1m, 1m30s."""
    total = 0
    for num, unit in re.findall(r"(\d+)([smhdwSMHDW]?)", value):
        total += int(num) * {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}[unit.lower()]
    return total if re.fullmatch(r"(\d+[smhdwSMHDW]?)+", value) else None


def _ok_no(v: str) -> bool:
    return v.lower() == "no"


def _ok_root(v: str) -> bool:
    return v.lower() in ("prohibit-password", "without-password", "no", "forced-commands-only")


def _ok_tries(v: str) -> bool:
    return v.isdigit() and 0 < int(v) <= 3


def _ok_grace(v: str) -> bool:
    s = _time_seconds(v)
    return s is not None and 0 < s <= 30


# keyword (as sshd -T names it), page value, OpenSSH default, test, title
SSH_TABLE: tuple[tuple[str, str, str, Callable[[str], bool], str], ...] = (
    ("passwordauthentication", "no", "yes", _ok_no, "no password login"),
    ("kbdinteractiveauthentication", "no", "yes", _ok_no, "no keyboard-interactive login"),
    ("permitrootlogin", "prohibit-password", "prohibit-password", _ok_root, "root only via keys"),
    ("x11forwarding", "no", "no", _ok_no, "no X11 tunneling"),
    ("maxauthtries", "3", "6", _ok_tries, "at most 3 authentication attempts"),
    ("logingracetime", "30", "120", _ok_grace, "30 s login grace time"),
)
NIX_SSH = {
    "passwordauthentication": "PasswordAuthentication = false",
    "kbdinteractiveauthentication": "KbdInteractiveAuthentication = false",
    "permitrootlogin": 'PermitRootLogin = "prohibit-password"',
    "x11forwarding": "X11Forwarding = false",
    "maxauthtries": "MaxAuthTries = 3",
    "logingracetime": "LoginGraceTime = 30",
}
CAMEL = {
    "passwordauthentication": "PasswordAuthentication",
    "kbdinteractiveauthentication": "KbdInteractiveAuthentication",
    "permitrootlogin": "PermitRootLogin",
    "x11forwarding": "X11Forwarding",
    "maxauthtries": "MaxAuthTries",
    "logingracetime": "LoginGraceTime",
}


def _ssh_check(key: str, want: str, default: str, ok: Callable[[str], bool]) -> CheckFunc:
    fix = (
        f"set `{CAMEL[key]} {want}` in /etc/ssh/sshd_config (before any Match block) and reload sshd"
        f"  |  NixOS: services.openssh.settings.{NIX_SSH[key]};"
    )

    def run(ctx: CheckContext, verdict: Verdict) -> Result:
        cfg: SshdConfig = effective(ctx)
        if not installed(ctx, cfg):
            verdict.add_evidence("/etc/ssh/sshd_config", "absent")
            return verdict.not_applicable("no SSH server installed")
        # whoever can rewrite sshd_config or an Include'd file decides the setting
        refused = refuse_writable(ctx, verdict, "the SSH server's settings", cfg.files + cfg.folders)
        if refused is not None:
            return refused
        for note in cfg.notes:
            verdict.add_evidence(cfg.origin, "note", note=note)
        # judged per user that can log in, over every connection class the Match lines tell
        # apart: a block for a user who does not exist changes nothing, `Match all` counts
        users = ["root"] if key == "permitrootlogin" else login_users(ctx)
        groups = group_lookup(ctx)
        first: Setting | None = None
        for user in users:
            for conn in connections(cfg, user):
                setting = cfg.settings_for(conn, groups).get(key)
                unset = setting is None
                if setting is None:
                    setting = Setting(default, f"{cfg.origin} (unset: OpenSSH default)")
                first = first or setting
                if ok(setting.value):
                    continue
                if unset and cfg.problems:
                    break  # the value sshd would use is unknown: the problem decides below
                verdict.add_evidence(
                    setting.source, setting.value, CAMEL[key], f"Match {setting.match}" if setting.match else ""
                )
                if setting.match:
                    return verdict.fail(
                        f"a Match block ({setting.match}) sets {CAMEL[key]} {setting.value} for {conn.describe()}",
                        f"remove {CAMEL[key]} from the Match block at {setting.source}",
                    )
                if cfg.dumps:
                    return verdict.fail(f"{CAMEL[key]} is {setting.value} for {conn.describe()}, want {want}", fix)
                return verdict.fail(f"{CAMEL[key]} is {setting.value}, want {want}", fix)
        if cfg.problems:
            verdict.add_evidence(cfg.problems[0].split(":")[0], "unparsable", note=cfg.problems[0])
            return verdict.warn(
                f"cannot tell {CAMEL[key]}: {cfg.problems[0]}", "fix the file: `sshd -t` names the bad line"
            )
        if first is not None:
            verdict.add_evidence(first.source, first.value, CAMEL[key])
        return verdict.ok()

    return run


for _key, _want, _default, _ok, _title in SSH_TABLE:
    register(f"ssh.{_key}", 3, f"sshd {CAMEL[_key]} {_want} ({_title})", _ssh_check(_key, _want, _default, _ok))


SK_TYPES = ("sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com")


def _sk_key(ctx: CheckContext, verdict: Verdict) -> Result:
    users = ctx.users_to_check()
    if not users:
        verdict.add_evidence("/etc/passwd", "no login users")
        return verdict.fail("no login user to look at (give --user)")
    unreadable: list[Unreadable] = []
    found = False
    for name, home in users:
        files = []
        try:
            files = [p for p in ctx.glob(f"{home}/.ssh", ".pub")] + [f"{home}/.ssh/authorized_keys"]
        except Unreadable as exc:
            unreadable.append(exc)
            continue
        for path in files:
            try:
                text = ctx.read(path) or ""
            except Unreadable as exc:
                unreadable.append(exc)
                continue
            for line in text.splitlines():
                if line.lstrip().startswith("#"):
                    continue  # a commented-out key is no key
                words = line.split()
                typ = next((w for w in words if w in SK_TYPES), None)
                if typ:
                    comment = words[-1] if words[-1] != typ and len(words) > 2 else ""
                    verdict.add_evidence(path, f"{typ} {comment}".strip(), name)
                    found = True
                    break
    if found:
        return verdict.ok()
    for u in unreadable[:3]:
        verdict.add_evidence(u.path, "unreadable", note=u.reason)
    verdict.add_evidence(", ".join(f"{h}/.ssh" for _n, h in users[:4]), "no sk-ssh-ed25519 key")
    if unreadable and any(e.needs_root for e in unreadable):
        return verdict.needs_root("reading other users' ~/.ssh")
    return verdict.fail("no user has an ed25519-sk (security key) SSH key")


register(
    "ssh.sk_key",
    3,
    "an ed25519-sk (YubiKey-backed) SSH key exists for the user",
    _sk_key,
    "yktool ssh keygen --user USER   (or: ssh-keygen -t ed25519-sk -O resident -O verify-required)",
)


# ------------------------------------------------------------------------------------- git signing
def _git_signing(ctx: CheckContext, verdict: Verdict) -> Result:
    seen_config = False
    unreadable: list[Unreadable] = []
    problems: list[str] = []
    for name, home in ctx.users_to_check():
        # git's own precedence: /etc/gitconfig, then ~/.config/git/config, then ~/.gitconfig (last
        # value wins, includes read in place), not each file on its own
        try:
            cfg = user_config(ctx, home)
        except Unreadable as exc:
            unreadable.append(exc)
            continue
        if not any(f.startswith(home.rstrip("/") + "/") for f in cfg.files):
            continue
        seen_config = True
        if cfg.problems:
            problems.append(cfg.problems[0])
            verdict.add_evidence(cfg.problems[0].rsplit(" in file ", 1)[-1], "unparsable", note=cfg.problems[0])
            continue
        got_fmt, got_key, got_sign = cfg.get("gpg.format"), cfg.get("user.signingkey"), cfg.get("commit.gpgsign")
        fmt = (got_fmt[0] or "") if got_fmt else ""
        key = (got_key[0] or "") if got_key else ""
        signs = cfg.get_bool("commit.gpgsign") is True
        verdict.add_evidence(got_fmt[1] if got_fmt else f"{home}/.gitconfig", fmt or "unset", "gpg.format")
        verdict.add_evidence(
            got_sign[1] if got_sign else f"{home}/.gitconfig",
            (got_sign[0] if got_sign[0] is not None else "true") if got_sign else "unset",
            "commit.gpgsign",
        )
        path = got_key[1] if got_key else f"{home}/.gitconfig"
        if fmt != "ssh" or not signs or not key:
            continue
        if key.startswith("key::"):
            is_sk = key[5:].split()[0] in SK_TYPES if key[5:].split() else False
        else:
            key_path = key.replace("~", home, 1) if key.startswith("~") else key
            try:
                pub = ctx.read(key_path if key_path.endswith(".pub") else key_path + ".pub") or ""
            except Unreadable as exc:
                unreadable.append(exc)
                continue
            is_sk = pub.split()[0] in SK_TYPES if pub.split() else False
        verdict.add_evidence(path, key, "user.signingkey", "an sk key" if is_sk else "not a security-key key")
        if is_sk:
            return verdict.ok(f"{name} signs commits with a security key")
    if unreadable:
        for u in unreadable[:3]:
            verdict.add_evidence(u.path, "unreadable", note=u.reason)
        if any(u.needs_root for u in unreadable):
            return verdict.needs_root("reading other users' git configuration")
        return verdict.warn(f"cannot read {unreadable[0].path}: {unreadable[0].reason}")
    if not seen_config:
        return verdict.not_applicable("no user has a git configuration")
    if problems:
        return verdict.warn(
            f"git refuses its configuration: {problems[0]} (no commit is made, signed or not)",
            "fix the line: `git config --list` names it",
        )
    return verdict.fail("no user signs commits with an ed25519-sk key (gpg.format ssh + commit.gpgsign)")


register(
    "git.signing",
    3,
    "git commits signed with the security key (gpg.format ssh, ed25519-sk)",
    _git_signing,
    "yktool git signing --email EMAIL --user USER   (git config --global gpg.format ssh; "
    "user.signingkey ~/.ssh/id_ed25519_sk.pub; commit.gpgsign true)",
)
