"""Reading PAM configuration under a root: which services use pam_u2f, and how.

`scan_services(host, names=None)` parses `/etc/pam.d/<service>` files (falling back to
`/usr/lib/pam.d`, the vendor folder some distributions use) the way libpam does: comments from
`#`, backslash-newline continuations, a leading `-` on the type (ignore a missing module),
bracketed controls `[success=1 default=ignore]`, bracketed arguments `[a b]`, and the three ways
one file pulls in another (`include`, `substack` and Debian's `@include`). The result of each
service is its effective stack, flattened, each line knowing the file, line number and include
chain it came from; the pam_u2f lines carry their options already parsed.

This module only reads. The lockout checks built on it live in `yktool.pam.check`.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from yktool.errors import UsageError
from yktool.host import Host

PAM_DIRS = ("/etc/pam.d", "/usr/lib/pam.d")

# The services the hardening checklist (docs/verify.md) protects, and other common places a key is asked for.
DEFAULT_SERVICES = (
    "sudo",
    "login",
    "greetd",
    "hyprlock",
    "su",
    "sshd",
    "polkit-1",
    "swaylock",
    "i3lock",
    "gdm-password",
    "lightdm",
    "sddm",
    "kde",
    "xscreensaver",
    "gtklock",
    "doas",
    "run0",
    "systemd-run0",
)

# Services whose PAM stack runs inside the user's own process (a screen locker): the authfile
# must be readable by that user, or unlocking with the key can never work.
USER_RUN_SERVICES = frozenset(
    {"hyprlock", "swaylock", "i3lock", "xscreensaver", "gtklock", "kde", "kscreensaver", "physlock", "waylock"}
)

PAM_TYPES = ("auth", "account", "password", "session")
SIMPLE_CONTROLS = ("required", "requisite", "sufficient", "optional", "include", "substack")
MAX_INCLUDE_DEPTH = 16


@dataclass
class PamLine:
    """One rule of a PAM stack, as written, with where it came from."""

    file: str  # path inside the root
    lineno: int  # first physical line of the rule
    type: str  # auth | account | password | session
    control: str  # `required`, … or the bracket text `[success=1 default=ignore]`
    module: str  # module path as written (`pam_u2f.so`, `/nix/store/…/pam_u2f.so`)
    args: list[str]
    raw: str  # the logical line (continuations joined, comment removed)
    ignore_missing: bool = False  # the type had a leading `-`
    via: tuple[str, ...] = ()  # include chain: files that included this one, outermost first
    level: int = 0  # substack depth (libpam's stack_level)
    must_fail: bool = False  # libpam installs it to fail when run (bad type, missing include …)
    substack: bool = False  # the `substack` entry itself (skipped when run; a jump unit)

    @property
    def actions(self) -> dict[str, str]:
        """libpam's action for every return value of this rule."""
        return parse_actions(self.control)

    @property
    def module_name(self) -> str:
        """`pam_u2f` for `pam_u2f.so`, `/lib/…/pam_u2f.so` or `/nix/store/…/pam_u2f.so`."""
        name = PurePosixPath(self.module).name
        return name[:-3] if name.endswith(".so") else name

    @property
    def where(self) -> str:
        """`/etc/pam.d/common-auth:12` (plus `via /etc/pam.d/sudo` when included)."""
        loc = f"{self.file}:{self.lineno}"
        return loc + (f" (via {' -> '.join(self.via)})" if self.via else "")

    def to_json(self) -> dict[str, object]:
        return {
            "file": self.file,
            "line": self.lineno,
            "type": self.type,
            "control": self.control,
            "module": self.module,
            "args": list(self.args),
            "ignore_missing": self.ignore_missing,
            "via": list(self.via),
        }


@dataclass
class U2fOptions:
    """pam_u2f's module arguments (see pam_u2f(8)); unknown ones kept in `other`."""

    authfile: str | None = None
    origin: str | None = None
    appid: str | None = None
    cue: bool = False
    nouserok: bool = False
    alwaysok: bool = False
    manual: bool = False
    debug: bool = False
    interactive: bool = False
    openasuser: bool = False
    expand: bool = False
    sshformat: bool = False
    nodetect: bool = False
    userpresence: int | None = None
    userverification: int | None = None
    pinverification: int | None = None
    max_devices: int | None = None
    authpending_file: str | None = None
    cue_prompt: str | None = None
    prompt: str | None = None
    debug_file: str | None = None
    other: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, object]:
        out = {k: v for k, v in self.__dict__.items() if k != "other"}
        out["other"] = list(self.other)
        return out


_FLAG_OPTIONS = ("cue", "nouserok", "alwaysok", "manual", "debug", "interactive", "openasuser", "expand", "nodetect")
_STR_OPTIONS = ("authfile", "origin", "appid", "authpending_file", "cue_prompt", "prompt", "debug_file")
_INT_OPTIONS = ("userpresence", "userverification", "pinverification", "max_devices")


def _scanf_int(value: str) -> int | None:
    """sscanf's %d: leading blanks, a sign, digits; the rest ignored (None: no number at all)."""
    m = re.match(r"\s*([-+]?\d+)", value)
    return int(m.group(1)) if m else None


def parse_u2f_options(args: list[str]) -> U2fOptions:
    """pam_u2f's own reading of its arguments (pam-u2f.c parse_cfg): flags only when exactly
    the word (`cue=1` is not `cue`), `key=` options by prefix (the last one wins), numbers as
    sscanf reads them (`userpresence=1x` is 1, `userpresence=x` leaves it unset)."""
    opts = U2fOptions()
    for arg in args:
        key, eq, value = arg.partition("=")
        if arg in _FLAG_OPTIONS:
            setattr(opts, arg, True)
        elif arg.startswith("sshformat"):  # pam_u2f matches the prefix only
            opts.sshformat = True
        elif eq and key in _STR_OPTIONS:
            setattr(opts, key, value)
        elif eq and key in _INT_OPTIONS:
            number = _scanf_int(value)
            if number is None or (key == "max_devices" and number < 0):
                opts.other.append(arg)
            else:
                setattr(opts, key, number)
        else:
            opts.other.append(arg)
    return opts


@dataclass
class U2fLine:
    """A pam_u2f rule in a service's stack."""

    line: PamLine
    options: U2fOptions

    @property
    def control(self) -> str:
        return self.line.control

    @property
    def type(self) -> str:
        return self.line.type

    def to_json(self) -> dict[str, object]:
        return {**self.line.to_json(), "options": self.options.to_json()}


@dataclass
class PamService:
    """One service (`/etc/pam.d/sudo`), its flattened stack and what went wrong reading it."""

    name: str
    path: str | None  # the file inside the root, None when the service has no file
    lines: list[PamLine] = field(default_factory=list)  # the rules (without substack entries)
    problems: list[str] = field(default_factory=list)
    stack: list[PamLine] = field(default_factory=list)  # libpam's handler list, substack entries kept
    files: list[str] = field(default_factory=list)  # every file read: the service's, then its includes

    def handlers(self, ptype: str) -> list[PamLine]:
        """The handlers libpam runs for one type (`auth`), in order, substack entries included."""
        return [ln for ln in self.stack if ln.type == ptype]

    @property
    def exists(self) -> bool:
        return self.path is not None

    @property
    def auth_lines(self) -> list[PamLine]:
        return [ln for ln in self.lines if ln.type == "auth"]

    @property
    def u2f_lines(self) -> list[U2fLine]:
        """The pam_u2f rules of the auth stack, in order."""
        return [U2fLine(ln, parse_u2f_options(ln.args)) for ln in self.auth_lines if ln.module_name == "pam_u2f"]

    @property
    def uses_u2f(self) -> bool:
        return bool(self.u2f_lines)

    @property
    def runs_as_user(self) -> bool:
        return self.name in USER_RUN_SERVICES

    def to_json(self) -> dict[str, object]:
        return {
            "service": self.name,
            "path": self.path,
            "exists": self.exists,
            "uses_u2f": self.uses_u2f,
            "u2f_lines": [u.to_json() for u in self.u2f_lines],
            "problems": list(self.problems),
        }


# --------------------------------------------------------------------------------- parsing
def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) per rule, as libpam's _pam_assemble_line reads them: a `#`
    ends the line (no continuation after it), a trailing `\\` joins the next non-blank,
    non-comment line (its leading blanks dropped), blank and comment lines are skipped."""
    out: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for n, physical in enumerate(text.split("\n"), 1):
        s = physical.lstrip(" \n\t")
        if not s or s.startswith("#"):
            continue  # nothing in this line (a continuation carries on past it)
        if not pending:
            start = n
        if "#" in s:
            pending += s.split("#", 1)[0]
            out.append((start, pending.strip(" \t")))
            pending = ""
            continue
        stripped = s.rstrip(" \t\n")
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        pending += s
        out.append((start, pending.strip(" \t")))
        pending = ""
    if pending.strip():
        out.append((start, pending.strip(" \t")))  # libpam: an incomplete read (its file aborts)
    return out


def tokenize(line: str) -> list[str]:
    """Split a rule into words as libpam's _pam_StrTok does: blanks separate; `[` starts one word
    that runs to the first `]` (`\\]` inside is a `]`), kept here with its brackets; the text after
    that `]` starts the next word."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i] in " \t\n":
            i += 1
            continue
        if line[i] == "[":
            j = i + 1
            buf = []
            while j < n and line[j] != "]":
                if line[j] == "\\" and j + 1 < n and line[j + 1] == "]":
                    j += 1
                buf.append(line[j])
                j += 1
            words.append("[" + "".join(buf) + "]")
            i = j + 1
            continue
        j = i
        while j < n and line[j] not in " \t\n":
            j += 1
        words.append(line[i:j])
        i = j
    return words


# libpam's return values (pam_tokens.h, in order: the first name that prefixes a word is taken)
RETURN_VALUES = (
    "success",
    "open_err",
    "symbol_err",
    "service_err",
    "system_err",
    "buf_err",
    "perm_denied",
    "auth_err",
    "cred_insufficient",
    "authinfo_unavail",
    "user_unknown",
    "maxtries",
    "new_authtok_reqd",
    "acct_expired",
    "session_err",
    "cred_unavail",
    "cred_expired",
    "cred_err",
    "no_module_data",
    "conv_err",
    "authtok_err",
    "authtok_recover_err",
    "authtok_lock_busy",
    "authtok_disable_aging",
    "try_again",
    "ignore",
    "abort",
    "authtok_expired",
    "module_unknown",
    "bad_item",
    "conv_again",
    "incomplete",
)
ACTIONS = ("ignore", "ok", "done", "bad", "die", "reset")
# what the simple controls set (pam_handlers.c), the rest taking the default
_SIMPLE_ACTIONS: dict[str, tuple[dict[str, str], str]] = {
    "required": ({"success": "ok", "new_authtok_reqd": "ok", "ignore": "ignore"}, "bad"),
    "requisite": ({"success": "ok", "new_authtok_reqd": "ok", "ignore": "ignore"}, "die"),
    "optional": ({"success": "ok", "new_authtok_reqd": "ok"}, "ignore"),
    "sufficient": ({"success": "done", "new_authtok_reqd": "done"}, "ignore"),
}


def _parse_control(text: str) -> dict[str, str] | None:
    """pam_misc.c _pam_parse_control: `value=action …` (case-sensitive, prefix-matched, a jump
    is a positive number); None on a syntax error (libpam then makes every value `bad`)."""
    actions: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        ret = next((r for r in (*RETURN_VALUES, "default") if text.startswith(r, i)), None)
        if ret is None:
            return None
        i += len(ret)
        if i >= n:
            return None
        while i < n and text[i].isspace():
            i += 1
        if i >= n or text[i] != "=":
            return None
        i += 1
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            return None
        act = next((a for a in ACTIONS if text.startswith(a, i)), None)
        if act is not None:
            i += len(act)
        else:
            j = i
            while j < n and text[j].isdigit():
                j += 1
            if j == i or int(text[i:j]) == 0:
                return None
            act, i = str(int(text[i:j])), j
        if ret == "default":
            for r in RETURN_VALUES:
                actions.setdefault(r, act)
        else:
            actions[ret] = act
    return actions


def parse_actions(control: str) -> dict[str, str]:
    """libpam's action for each return value of a rule with `control` (`required`, any case, or
    `[success=1 default=ignore]`); anything libpam cannot parse is `bad` for every value."""
    simple = _SIMPLE_ACTIONS.get(control.lower())
    if simple is not None:
        table, default = simple
        return {r: table.get(r, default) for r in RETURN_VALUES}
    inner = control[1:-1] if control.startswith("[") and control.endswith("]") else control
    if inner.lower() in _SIMPLE_ACTIONS:  # `[required]`: libpam strips the brackets first
        return parse_actions(inner)
    parsed = _parse_control(inner)
    if parsed is None:
        return dict.fromkeys(RETURN_VALUES, "bad")
    return {r: parsed.get(r, "bad") for r in RETURN_VALUES}


def control_action(control: str, value: str) -> str:
    """What libpam does when a rule with `control` returns `value` (`success`, `auth_err`, …):
    `ok`, `done`, `bad`, `die`, `ignore`, `reset` or a jump count (`2`)."""
    return parse_actions(control).get(value, "bad")


def key_required(control: str) -> bool:
    """True when a failing rule fails the stack (pam_u2f answers AUTH_ERR without the key,
    AUTHINFO_UNAVAIL when it has no credential for the user): the key cannot be skipped."""
    return all(control_action(control, v) in ("bad", "die") for v in ("auth_err", "authinfo_unavail"))


def success_ends_stack(control: str) -> bool:
    """True when this rule's success alone can end the stack or jump over later rules (the
    password): `sufficient`, `[success=done …]`, `[success=2 …]`."""
    action = control_action(control, "success")
    return action == "done" or action.isdigit()


def _unbracket(arg: str) -> str:
    """libpam hands a `[a b]` argument to the module without the brackets."""
    return arg[1:-1] if arg.startswith("[") and arg.endswith("]") else arg


def find_service_file(host: Host, name: str) -> str | None:
    """The file defining service `name` inside the root (first of /etc/pam.d, /usr/lib/pam.d)."""
    if name.startswith("/"):
        return name if host.path(name).is_file() else None
    for folder in PAM_DIRS:
        candidate = f"{folder}/{name}"
        if host.path(candidate).is_file():
            return candidate
    return None


def parse_file(
    host: Host,
    path: str,
    *,
    via: tuple[str, ...] = (),
    problems: list[str] | None = None,
    want: str | None = None,
    level: int = 0,
    files: list[str] | None = None,
) -> list[PamLine]:
    """libpam's handlers from one file (pam_handlers.c _pam_parse_conf_file): every include,
    substack and @include flattened in place, only `want`'s type when loaded for one type. A
    rule libpam cannot read (bad type, no control, no module, an include it cannot find) stays
    in, marked must_fail: libpam installs it to fail when run, it does not skip it. Each file
    read is added to `files` (who may write them decides the stack)."""
    problems = problems if problems is not None else []
    if len(via) > MAX_INCLUDE_DEPTH or path in via:
        problems.append(f"{path}: include loop ({' -> '.join((*via, path))})")
        return []
    try:
        text = host.read_text(path)
    except Exception as exc:  # noqa: BLE001 - reported, never fatal for a report
        problems.append(f"{path}: cannot read ({getattr(exc, 'message', exc)})")
        return []
    if files is not None and path not in files:
        files.append(path)
    out: list[PamLine] = []
    for lineno, logical in logical_lines(text):
        words = tokenize(logical)
        if not words:
            continue
        where = f"{path}:{lineno}"
        if words[0] == "@include":  # Debian: the file's rules, of the type asked for
            if len(words) < 2:
                problems.append(f"{where}: @include without a file")
                continue
            got = _include(host, words[1], path, via, problems, lineno, want, level, files)
            if got is None:
                out.append(
                    PamLine(
                        path, lineno, want or "auth", "required", "", [], logical, via=via, level=level, must_fail=True
                    )
                )
            else:
                out.extend(got)
            continue
        type_word = words[0]
        ignore_missing = type_word.startswith("-")
        ptype = type_word[1:].lower() if ignore_missing else type_word.lower()
        must_fail = False
        if ptype not in PAM_TYPES:
            problems.append(f"{where}: unknown type {type_word!r} (libpam makes the rule fail when run)")
            ptype, must_fail = want or "auth", True
        if want is not None and ptype != want:
            continue
        control = words[1] if len(words) > 1 else ""
        module = words[2] if len(words) > 2 else ""
        if not control or not module:
            problems.append(f"{where}: incomplete rule {logical!r} (libpam makes it fail when run)")
            out.append(
                PamLine(
                    path,
                    lineno,
                    ptype,
                    control or "required",
                    module,
                    [],
                    logical,
                    ignore_missing,
                    via,
                    level,
                    must_fail=True,
                )
            )
            continue
        low = control.lower()
        if low in ("include", "substack"):
            sub = low == "substack"
            if sub:
                out.append(
                    PamLine(
                        path,
                        lineno,
                        ptype,
                        control,
                        module,
                        [],
                        logical,
                        ignore_missing,
                        via,
                        level,
                        must_fail,
                        substack=True,
                    )
                )
            got = _include(host, module, path, via, problems, lineno, ptype, level + sub, files)
            if got is None:
                out.append(
                    PamLine(
                        path, lineno, ptype, "required", module, [], logical, ignore_missing, via, level, must_fail=True
                    )
                )
            else:
                out.extend(got)
            continue
        if not (low in SIMPLE_CONTROLS or control.startswith("[")):
            problems.append(f"{where}: control {control!r} is not one libpam knows (every result counts as bad)")
        args = [_unbracket(a) for a in words[3:]]
        out.append(PamLine(path, lineno, ptype, control, module, args, logical, ignore_missing, via, level, must_fail))
    return out


def _include(
    host: Host,
    target: str,
    path: str,
    via: tuple[str, ...],
    problems: list[str],
    lineno: int,
    want: str | None,
    level: int,
    files: list[str] | None,
) -> list[PamLine] | None:
    found = find_service_file(host, target)
    if found is None:
        problems.append(f"{path}:{lineno}: included file {target!r} not found (libpam makes the rule fail)")
        return None
    if found in (*via, path) or len(via) >= MAX_INCLUDE_DEPTH:
        # libpam includes the file again until it gives up: a substack fails (PERM_DENIED), an
        # include crashes the program (pamtester: Segmentation fault); either way nobody gets in
        problems.append(f"{path}:{lineno}: include loop ({' -> '.join((*via, path, found))}): libpam makes it fail")
        return None
    return parse_file(host, found, via=(*via, path), problems=problems, want=want, level=level, files=files)


def parse_service(host: Host, name: str) -> PamService:
    """One service's flattened stack (a service without a file is reported, not an error)."""
    path = find_service_file(host, name)
    service = PamService(name, path)
    if path is not None:
        service.stack = parse_file(host, path, problems=service.problems, files=service.files)
        service.lines = [ln for ln in service.stack if not ln.substack]
    return service


def list_service_names(host: Host) -> list[str]:
    """Every service file under the root's PAM folders, sorted, duplicates once."""
    names: set[str] = set()
    for folder in PAM_DIRS:
        real = host.path(folder)
        if real.is_dir():
            names.update(p.name for p in real.iterdir() if p.is_file() and not p.name.startswith("."))
    return sorted(names)


def scan_services(host: Host, names: list[str] | tuple[str, ...] | None = None) -> list[PamService]:
    """Parse the named services (default: every service file under the root plus the
    `DEFAULT_SERVICES` even when missing, so a report can say `greetd: no such service`)."""
    if names is None:
        present = list_service_names(host)
        names = present + [n for n in DEFAULT_SERVICES if n not in present]
    return [parse_service(host, n) for n in names]


PAM_MODULE_DIRS = ("/lib/security", "/lib64/security", "/usr/lib/security", "/usr/lib64/security")


def _there(host: Host, path: str) -> bool:
    try:
        return host.path(path).exists()
    except (UsageError, OSError):
        return False


def _folders(host: Host, path: str) -> list[str]:
    try:
        return sorted(os.listdir(host.path(path)))
    except (UsageError, OSError):
        return []


def _module_dirs(host: Host) -> list[str]:
    dirs = list(PAM_MODULE_DIRS)
    for lib in ("/lib", "/usr/lib"):  # Debian's multiarch folders: /usr/lib/x86_64-linux-gnu/security
        dirs += [f"{lib}/{d}/security" for d in _folders(host, lib) if "-linux-" in d]
    return dirs


def module_files(host: Host, module: str) -> list[str]:
    """The files libpam may load for `module` (an absolute path itself, a bare name in any module
    folder where it exists): whoever can replace one of them decides what the rule answers."""
    if not module:
        return []
    if module.startswith("/"):
        return [module] if _there(host, module) else []
    return [c for c in (f"{d}/{module}" for d in _module_dirs(host)) if _there(host, c)]


def module_search(host: Host, module: str) -> list[str]:
    """Where libpam would look for `module` when it is not there ([] when found, or when the tree
    cannot tell: an offline root with no /nix/store, or one with no PAM module at all, which holds
    configuration only)."""
    if module.startswith("/"):
        if module.startswith("/nix/store/") and not _there(host, "/nix/store"):
            return []
        return [] if _there(host, module) else [module]
    dirs = _module_dirs(host)
    candidates = [f"{d}/{module}" for d in dirs]
    if any(_there(host, c) for c in candidates):
        return []
    return candidates if any(_there(host, f"{d}/pam_unix.so") for d in dirs) else []


def u2f_services(host: Host, names: list[str] | tuple[str, ...] | None = None) -> list[PamService]:
    """The services whose auth stack contains pam_u2f."""
    return [s for s in scan_services(host, names) if s.uses_u2f]
