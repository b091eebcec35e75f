"""Reading PAM configuration under a root: which services use pam_u2f, and how.

`scan_services(host, names=None)` parses `/etc/pam.d/<service>` files (falling back to
`/usr/lib/pam.d`, the vendor folder some distributions use) the way libpam does: comments from
`#`, backslash-newline continuations, a leading `-` on the type (ignore a missing module),
bracketed controls `[success=1 default=ignore]`, bracketed arguments `[a b]`, and the three ways
one file pulls in another (`include`, `substack` and Debian's `@include`). The result of each
service is its effective stack, flattened, each line knowing the file, line number and include
chain it came from; the pam_u2f lines carry their options already parsed.

This module only reads. The lockout checks built on it live in `yktool.pam_u2f.check`.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from yktool.host import Host

PAM_DIRS = ("/etc/pam.d", "/usr/lib/pam.d")

# The services the host page protects, and other common places a key is asked for.
DEFAULT_SERVICES = ("sudo", "login", "greetd", "hyprlock", "su", "sshd", "polkit-1", "swaylock",
                    "i3lock", "gdm-password", "lightdm", "sddm", "kde", "xscreensaver", "gtklock",
                    "doas", "run0", "systemd-run0")

# Services whose PAM stack runs inside the user's own process (a screen locker): the authfile
# must be readable by that user, or unlocking with the key can never work.
USER_RUN_SERVICES = frozenset({"hyprlock", "swaylock", "i3lock", "xscreensaver", "gtklock", "kde",
                               "kscreensaver", "physlock", "waylock"})

PAM_TYPES = ("auth", "account", "password", "session")
SIMPLE_CONTROLS = ("required", "requisite", "sufficient", "optional", "include", "substack")
MAX_INCLUDE_DEPTH = 16


@dataclass
class PamLine:
    """One rule of a PAM stack, as written, with where it came from."""

    file: str                 # path inside the root
    lineno: int               # first physical line of the rule
    type: str                 # auth | account | password | session
    control: str              # `required`, … or the bracket text `[success=1 default=ignore]`
    module: str               # module path as written (`pam_u2f.so`, `/nix/store/…/pam_u2f.so`)
    args: list[str]
    raw: str                  # the logical line (continuations joined, comment removed)
    ignore_missing: bool = False   # the type had a leading `-`
    via: tuple[str, ...] = ()      # include chain: files that included this one, outermost first
    frames: tuple[int, ...] = ()   # the substacks this rule runs in, outermost first (one id per substack line)

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
        return {"file": self.file, "line": self.lineno, "type": self.type, "control": self.control,
                "module": self.module, "args": list(self.args), "ignore_missing": self.ignore_missing,
                "via": list(self.via)}


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


_FLAG_OPTIONS = ("cue", "nouserok", "alwaysok", "manual", "debug", "interactive", "openasuser",
                 "expand", "nodetect")
_STR_OPTIONS = ("authfile", "origin", "appid", "authpending_file", "cue_prompt", "prompt",
                "debug_file")
_INT_OPTIONS = ("userpresence", "userverification", "pinverification", "max_devices")


def parse_u2f_options(args: list[str]) -> U2fOptions:
    """pam_u2f's own reading of its arguments (prefix matches, as its parse_cfg does)."""
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
            try:
                setattr(opts, key, int(value))
            except ValueError:
                opts.other.append(arg)
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
    path: str | None              # the file inside the root, None when the service has no file
    lines: list[PamLine] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def exists(self) -> bool:
        return self.path is not None

    @property
    def auth_lines(self) -> list[PamLine]:
        return [ln for ln in self.lines if ln.type == "auth"]

    @property
    def u2f_lines(self) -> list[U2fLine]:
        """The pam_u2f rules of the auth stack, in order."""
        return [U2fLine(ln, parse_u2f_options(ln.args)) for ln in self.auth_lines
                if ln.module_name == "pam_u2f"]

    @property
    def uses_u2f(self) -> bool:
        return bool(self.u2f_lines)

    @property
    def runs_as_user(self) -> bool:
        return self.name in USER_RUN_SERVICES

    def to_json(self) -> dict[str, object]:
        return {"service": self.name, "path": self.path, "exists": self.exists,
                "uses_u2f": self.uses_u2f, "u2f_lines": [u.to_json() for u in self.u2f_lines],
                "problems": list(self.problems)}


# --------------------------------------------------------------------------------- parsing
def logical_lines(text: str) -> list[tuple[int, str]]:
    """(first line number, text) per rule: comments cut at `#`, `\\`-newline joined."""
    out: list[tuple[int, str]] = []
    pending = ""
    start = 0
    for n, physical in enumerate(text.split("\n"), 1):
        if not pending:
            start = n
        cut = physical.split("#", 1)[0] if "#" in physical else physical
        if cut.rstrip().endswith("\\"):
            cut = cut.rstrip()
            pending += cut[:-1] + " "
            continue
        pending += cut
        if pending.strip():
            out.append((start, pending.strip()))
        pending = ""
    if pending.strip():
        out.append((start, pending.strip()))
    return out


def tokenize(line: str) -> list[str]:
    """Split a rule into words; `[ … ]` (with `\\]` inside) is one word, brackets kept."""
    words: list[str] = []
    i, n = 0, len(line)
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        if line[i] == "[":
            j = i + 1
            buf = "["
            while j < n and line[j] != "]":
                if line[j] == "\\" and j + 1 < n and line[j + 1] == "]":
                    buf += "]"
                    j += 2
                    continue
                buf += line[j]
                j += 1
            buf += "]"
            # a bracket may be glued to more text (`[a]b` is rare; keep it with the word)
            j += 1
            while j < n and not line[j].isspace():
                buf += line[j]
                j += 1
            words.append(buf)
            i = j
            continue
        j = i
        while j < n and not line[j].isspace():
            j += 1
        words.append(line[i:j])
        i = j
    return words


# libpam's meaning of the simple controls (pam.conf(5)); a bracketed control states its own
# actions, and libpam treats any return value it does not name (and no `default=`) as `bad`.
_SIMPLE_ACTIONS = {
    "required": {"success": "ok", "new_authtok_reqd": "ok", "ignore": "ignore", "default": "bad"},
    "requisite": {"success": "ok", "new_authtok_reqd": "ok", "ignore": "ignore", "default": "die"},
    "sufficient": {"success": "done", "new_authtok_reqd": "done", "default": "ignore"},
    "optional": {"success": "ok", "new_authtok_reqd": "ok", "default": "ignore"},
}


def control_action(control: str, value: str) -> str:
    """What libpam does when a rule with `control` returns `value` (`success`, `auth_err`, …):
    `ok`, `done`, `bad`, `die`, `ignore`, `reset` or a jump count (`2`)."""
    if control.startswith("["):
        actions = dict(w.partition("=")[::2] for w in control.strip("[]").split() if "=" in w)
        return actions.get(value, actions.get("default", "bad")).lower()
    table = _SIMPLE_ACTIONS.get(control.lower(), {})
    return table.get(value, table.get("default", "bad"))


def key_required(control: str) -> bool:
    """True when a failing rule fails the stack (pam_u2f answers AUTH_ERR without the key,
    AUTHINFO_UNAVAIL when it cannot read its authfile): the key cannot be skipped."""
    return all(control_action(control, v) in ("bad", "die") for v in ("auth_err", "authinfo_unavail"))


_FRAME_IDS = itertools.count(1)
_MAX_UNKNOWN = 12   # modules of unknown outcome tried every way (2**12 runs); more: counted as requiring


def _nest(lines: list[PamLine], depth: int = 0) -> list[PamLine | list]:  # type: ignore[type-arg]
    """The flattened rules as libpam runs them: a substack's rules grouped into one item."""
    items: list[PamLine | list] = []  # type: ignore[type-arg]
    i = 0
    while i < len(lines):
        if len(lines[i].frames) > depth:
            frame, j = lines[i].frames[depth], i
            while j < len(lines) and len(lines[j].frames) > depth and lines[j].frames[depth] == frame:
                j += 1
            items.append(_nest(lines[i:j], depth + 1))
            i = j
        else:
            items.append(lines[i])
            i += 1
    return items


def _dispatch(items: list[PamLine | list], result: Callable[[PamLine], str]) -> tuple[str, bool]:  # type: ignore[type-arg]
    """libpam's _pam_dispatch_aux for one stack: (impression undef/pos/neg, status is success).
    A substack counts as one module of its parent; done/die and jumps end only the substack."""
    impression, success, skip = "undef", False, 0
    for item in items:
        if skip:
            skip -= 1
            continue
        if isinstance(item, list):
            sub, sub_ok = _dispatch(item, result)
            value = "ignore" if sub == "undef" else "success" if sub == "pos" and sub_ok else "auth_err"
            action = control_action("required", value)
        else:
            value = result(item)
            action = control_action(item.control, value)
        if action == "reset":
            impression, success = "undef", False
        elif action in ("ok", "done"):
            if (impression == "undef" or (impression == "pos" and success)) and value != "ignore":
                impression, success = "pos", value == "success"
            if action == "done" and impression != "neg":
                return impression, success
        elif action in ("bad", "die"):
            if impression != "neg":
                impression, success = "neg", False
            if action == "die":
                return impression, success
        elif action.isdigit():
            skip = int(action)
    return impression, success


def passes_without(service: PamService, failing: Callable[[PamLine], bool]) -> bool:
    """Whether libpam can let the user through `service`'s auth stack while every rule for which
    `failing` holds fails (pam_u2f without a credential: AUTH_ERR, or AUTHINFO_UNAVAIL), trying
    every outcome of the other modules (pam_deny always fails, pam_permit always passes; a
    password module may pass). Judged on the whole stack: `sufficient pam_u2f` followed by
    `pam_deny`, or `[success=1 default=ignore] pam_u2f` + `requisite pam_deny` (pam-auth-update's
    form), need the key as surely as `required` does."""
    lines = service.auth_lines
    unknown = [ln for ln in lines if not failing(ln) and ln.module_name not in ("pam_deny", "pam_permit")]
    if len(unknown) > _MAX_UNKNOWN:
        return False
    items = _nest(lines)
    for fail_as in ("auth_err", "authinfo_unavail"):
        for values in itertools.product(("success", "auth_err"), repeat=len(unknown)):
            chosen = {id(ln): v for ln, v in zip(unknown, values, strict=True)}

            def result(ln: PamLine, fail_as: str = fail_as, chosen: dict[int, str] = chosen) -> str:
                if failing(ln):
                    return fail_as
                if ln.module_name == "pam_deny":
                    return "auth_err"
                if ln.module_name == "pam_permit":
                    return "success"
                return chosen[id(ln)]

            impression, success = _dispatch(items, result)
            if impression == "pos" and success:
                break
        else:
            return False  # this failure of pam_u2f lets nobody through
    return True


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


def parse_file(host: Host, path: str, *, via: tuple[str, ...] = (),
               problems: list[str] | None = None) -> list[PamLine]:
    """The rules of one file with every include, substack and @include flattened in place."""
    problems = problems if problems is not None else []
    if len(via) > MAX_INCLUDE_DEPTH or path in via:
        problems.append(f"{path}: include loop ({' -> '.join((*via, path))})")
        return []
    try:
        text = host.read_text(path)
    except Exception as exc:  # noqa: BLE001 - reported, never fatal for a report
        problems.append(f"{path}: cannot read ({getattr(exc, 'message', exc)})")
        return []
    out: list[PamLine] = []
    for lineno, logical in logical_lines(text):
        words = tokenize(logical)
        if not words:
            continue
        if words[0] == "@include":
            if len(words) < 2:
                problems.append(f"{path}:{lineno}: @include without a file")
                continue
            out.extend(_include(host, words[1], path, via, problems, lineno, only_type=None))
            continue
        type_word = words[0]
        ignore_missing = type_word.startswith("-")
        ptype = type_word.lstrip("-").lower()
        if ptype not in PAM_TYPES:
            problems.append(f"{path}:{lineno}: unknown type {type_word!r} (libpam skips the rule)")
            continue
        if len(words) < 3:
            problems.append(f"{path}:{lineno}: incomplete rule {logical!r}")
            continue
        control, module, args = words[1], words[2], [_unbracket(a) for a in words[3:]]
        if not (control in SIMPLE_CONTROLS or control.startswith("[")):
            problems.append(f"{path}:{lineno}: unknown control {control!r}")
        if control in ("include", "substack"):
            included = _include(host, module, path, via, problems, lineno, only_type=ptype)
            if control == "substack":  # libpam runs these as one module of this stack (pam.conf(5))
                frame = next(_FRAME_IDS)
                included = [replace(ln, frames=(frame, *ln.frames)) for ln in included]
            out.extend(included)
            continue
        out.append(PamLine(path, lineno, ptype, control, module, args, logical,
                           ignore_missing, via))
    return out


def _include(host: Host, target: str, path: str, via: tuple[str, ...], problems: list[str],
             lineno: int, only_type: str | None) -> list[PamLine]:
    found = find_service_file(host, target)
    if found is None:
        problems.append(f"{path}:{lineno}: included file {target!r} not found")
        return []
    lines = parse_file(host, found, via=(*via, path), problems=problems)
    # `auth include X` takes only X's auth rules; `@include X` takes all of them
    return [ln for ln in lines if only_type is None or ln.type == only_type]


def parse_service(host: Host, name: str) -> PamService:
    """One service's flattened stack (a service without a file is reported, not an error)."""
    path = find_service_file(host, name)
    service = PamService(name, path)
    if path is not None:
        service.lines = parse_file(host, path, problems=service.problems)
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


def u2f_services(host: Host, names: list[str] | tuple[str, ...] | None = None) -> list[PamService]:
    """The services whose auth stack contains pam_u2f."""
    return [s for s in scan_services(host, names) if s.uses_u2f]
