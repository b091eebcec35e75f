"""The pieces every check is made of: Result, Evidence, the check registry and the context.

A check is a function `(ctx: CheckContext, verdict: Verdict) -> Result` registered with
`@check(id, layer, title)`; the runner makes its `Verdict`, so the id is written once.
It only reads: files under the root (through `ctx`, which turns unreadable files into a warn with
the reason), and, when the root is the live `/`, a few read-only commands (`sshd -T`, `sbctl
verify`, `nft list ruleset`). A check never raises for bad input: the runner turns any
YktoolError or OSError into a warn that names the reason.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Literal

from yktool.errors import UsageError, YktoolError
from yktool.host import Host, read_all

Status = Literal["pass", "fail", "warn", "n/a"]

LAYER_NAMES = {
    7: "Application Sandbox (nixpak + bubblewrap)",
    6: "MAC (AppArmor)",
    5: "Network (Firewall + Fail2Ban)",
    4: "Secrets (Agenix)",
    3: "User Auth (PAM U2F + SSH ed25519-sk)",
    2: "Boot (Secure Boot + LUKS2 + FIDO2/TPM2)",
    1: "Kernel (sysctl hardening)",
    0: "Hardware (YubiKey, USBGuard, TPM2)",
}


@dataclass
class Evidence:
    """One thing read: where (`source`: a path inside the root, or a command), what (`key`), the value."""

    source: str
    value: str
    key: str = ""
    note: str = ""

    def to_json(self) -> dict[str, str]:
        out = {"source": self.source, "key": self.key, "value": self.value}
        if self.note:
            out["note"] = self.note
        return out

    def render(self) -> str:
        what = f"{self.key}={self.value}" if self.key else self.value
        return f"{self.source}: {what}" + (f" ({self.note})" if self.note else "")


@dataclass
class Result:
    """The outcome of one check. `needs_root` marks a warn caused by running unprivileged."""

    id: str
    layer: int
    title: str
    status: Status
    evidence: list[Evidence] = field(default_factory=list)
    fix: str = ""
    reason: str = ""
    needs_root: bool = False

    def to_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "layer": self.layer,
            "title": self.title,
            "status": self.status,
            "reason": self.reason,
            "needs_root": self.needs_root,
            "evidence": [e.to_json() for e in self.evidence],
            "fix": self.fix,
        }


class Unreadable(Exception):
    """A file the check needs could not be read (permission, not a file); `.reason` says why."""

    def __init__(self, path: str, reason: str, needs_root: bool = False) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.needs_root = needs_root


@dataclass
class CheckContext:
    """What every check may look at: the host (root), options, and cached reads."""

    host: Host
    user: str | None = None
    secrets: str | None = None  # a secrets.nix path inside the root (agenix), if given
    tpm2_pcrs: tuple[int, ...] = (7,)
    luks_device: str | None = None  # check this LUKS device (inside the root) instead of the root's own
    privileged: bool = field(default_factory=lambda: os.geteuid() == 0)
    _cache: dict[str, object] = field(default_factory=dict)

    # ------------------------------------------------------------------ reading files
    def read(self, path: str) -> str | None:
        """Text of `path` under the root; None when it does not exist; Unreadable otherwise."""
        key = "read:" + path
        if key in self._cache:
            cached = self._cache[key]
            if isinstance(cached, Unreadable):
                raise cached
            return cached  # type: ignore[return-value]
        try:
            text: str | None = self._read_fd(path).decode("utf-8", "surrogateescape")
        except FileNotFoundError:
            text = None
        except NotADirectoryError:
            text = None
        except PermissionError:
            err = Unreadable(path, "permission denied", needs_root=not self.privileged)
            self._cache[key] = err
            raise err from None
        except IsADirectoryError:
            err = Unreadable(path, "is a folder, not a file")
            self._cache[key] = err
            raise err from None
        except YktoolError as exc:  # a link climbing out of the root, a user's link, a swap
            err = Unreadable(path, exc.message)
            self._cache[key] = err
            raise err from None
        except OSError as exc:
            err = Unreadable(path, exc.strerror or str(exc))
            self._cache[key] = err
            raise err from None
        self._cache[key] = text
        return text

    def _read_fd(self, path: str) -> bytes:
        """Read through Host's fd walk and on the fd it opened (O_NOFOLLOW at the last name):
        resolving first and reading by path after would let a link swapped in between send root
        through it. O_NONBLOCK: a FIFO put there never hangs verify."""
        fd = self.host.open(path, os.O_RDONLY | os.O_NONBLOCK)
        try:
            mode = os.fstat(fd).st_mode
            if stat.S_ISDIR(mode):
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), path)
            if not stat.S_ISREG(mode):
                raise OSError(errno.EINVAL, "not a regular file", path)
            return read_all(fd)
        finally:
            os.close(fd)

    def exists(self, path: str) -> bool:
        try:
            return self.host.path(path).exists()
        except (UsageError, OSError):
            return False

    def is_dir(self, path: str) -> bool:
        try:
            return self.host.path(path).is_dir()
        except (UsageError, OSError):
            return False

    def listdir(self, path: str) -> list[str]:
        """Sorted names in a folder under the root; [] when missing; Unreadable on permission."""
        try:
            return sorted(os.listdir(self.host.path(path)))
        except (FileNotFoundError, NotADirectoryError):
            return []
        except PermissionError:
            raise Unreadable(path, "permission denied", needs_root=not self.privileged) from None
        except UsageError as exc:
            raise Unreadable(path, exc.message) from None

    def glob(self, folder: str, suffix: str = "") -> list[str]:
        """Paths (inside the root) of the files in `folder` ending with `suffix`, sorted."""
        out = []
        for name in self.listdir(folder):
            if name.endswith(suffix) and not name.startswith("."):
                out.append(str(PurePosixPath(folder) / name))
        return out

    def conf_dirs(self, name: str, dirs: tuple[str, ...], suffix: str = ".conf") -> list[str]:
        """systemd-style drop-ins: files named the same in earlier dirs mask later ones; by name."""
        chosen: dict[str, str] = {}
        for folder in dirs:
            for path in self.glob(folder, suffix):
                chosen.setdefault(PurePosixPath(path).name, path)
        return [chosen[k] for k in sorted(chosen)]

    # ------------------------------------------------------------------ the live system
    @property
    def live(self) -> bool:
        return self.host.is_live

    def which(self, tool: str) -> str | None:
        """A tool inside the root (its usual bin folders), for 'is it installed here'."""
        for folder in (
            "/usr/local/sbin",
            "/usr/local/bin",
            "/usr/sbin",
            "/usr/bin",
            "/sbin",
            "/bin",
            "/run/current-system/sw/bin",
            "/run/wrappers/bin",
        ):
            p = f"{folder}/{tool}"
            try:
                real = self.host.path(p)
            except (UsageError, OSError):
                continue
            if real.is_file():
                return p
        return None

    def processes(self) -> dict[int, str]:
        """pid -> comm of the processes in /proc under the root (cached); {} without /proc."""
        cached = self._cache.get("procs")
        if isinstance(cached, dict):
            return cached
        procs: dict[int, str] = {}
        try:
            proc = self.host.path("/proc")
            names = os.listdir(proc)
        except (OSError, UsageError):
            names = []
            proc = Path("/nonexistent")
        for name in names:
            if not name.isdigit():
                continue
            try:
                procs[int(name)] = (proc / name / "comm").read_text().strip()
            except OSError:
                continue
        self._cache["procs"] = procs
        return procs

    def running(self, name: str) -> list[int]:
        """The pids of processes that are the program `name`: the comm the kernel keeps (its first
        15 characters) matches, the process runs as root, and the program is so named — the
        executable's file name, or for a script the name in argv[0] or argv[1]. A comm alone
        proves nothing: any user can name a process anything (prctl PR_SET_NAME, a renamed copy)."""
        return sorted(pid for pid, c in self.processes().items() if c == name[:15] and self._is_program(pid, name))

    def _is_program(self, pid: int, name: str) -> bool:
        proc = f"/proc/{pid}"
        try:
            status = self.read(f"{proc}/status") or ""
        except Unreadable:
            return False
        uid = next((ln.split()[1] for ln in status.splitlines() if ln.startswith("Uid:") and len(ln.split()) > 1), None)
        if uid != "0":
            return False
        try:  # the link itself, never followed into the root (a live /proc: the real program)
            exe = os.readlink(self.host.root / proc.lstrip("/") / "exe")
        except OSError:
            exe = ""
        if PurePosixPath(exe.removesuffix(" (deleted)")).name == name:
            return True
        try:
            argv = (self.read(f"{proc}/cmdline") or "").split("\0")
        except Unreadable:
            return False
        return any(PurePosixPath(a).name == name for a in argv[:2] if a)

    def unit_enabled(self, unit: str) -> str | None:
        """The path of a `*.wants/<unit>` link (or the NixOS generated unit), if the unit is enabled."""
        for base in ("/etc/systemd/system", "/usr/lib/systemd/system", "/lib/systemd/system"):
            for target in self.listdir(base):
                if target.endswith(".wants") or target.endswith(".requires"):
                    p = f"{base}/{target}/{unit}"
                    try:
                        if self.host.path(p).exists() or os.path.islink(self.host.root / p.lstrip("/")):
                            return p
                    except (UsageError, OSError):
                        continue
        return None

    def passwd(self) -> list[tuple[str, int, str]]:
        """(name, uid, home) from /etc/passwd under the root."""
        text = self.read("/etc/passwd") or ""
        users = []
        for line in text.splitlines():
            parts = line.split(":")
            if len(parts) >= 6 and parts[2].isdigit():
                users.append((parts[0], int(parts[2]), parts[5]))
        return users

    def users_to_check(self) -> list[tuple[str, str]]:
        """(name, home) of the --user, or of every login user (uid ≥ 1000, < 60000) and root."""
        entries = self.passwd()
        if self.user:
            return [(n, h) for n, _u, h in entries if n == self.user] or [(self.user, f"/home/{self.user}")]
        return [(n, h) for n, u, h in entries if (1000 <= u < 60000) or u == 0]


CheckFunc = Callable[[CheckContext, "Verdict"], Result]


@dataclass(frozen=True)
class Check:
    id: str
    layer: int
    title: str
    func: CheckFunc
    fix: str = ""

    def run(self, ctx: CheckContext) -> Result:
        """Run the check; any expected error becomes a warn with its reason (never a crash)."""
        try:
            result = self.func(ctx, Verdict(self))
        except Unreadable as exc:
            result = Result(
                self.id,
                self.layer,
                self.title,
                "warn",
                [Evidence(exc.path, "unreadable", note=exc.reason)],
                reason=f"cannot read {exc.path}: {exc.reason}" + (" (run as root)" if exc.needs_root else ""),
                needs_root=exc.needs_root,
            )
        except YktoolError as exc:
            result = Result(self.id, self.layer, self.title, "warn", [], reason=exc.message)
        except (OSError, ValueError, UnicodeError) as exc:
            result = Result(self.id, self.layer, self.title, "warn", [], reason=f"{type(exc).__name__}: {exc}")
        except Exception as exc:  # noqa: BLE001 - one broken check must not hide the other fifty
            result = Result(
                self.id,
                self.layer,
                self.title,
                "warn",
                [],
                reason=f"internal error in this check ({type(exc).__name__}: {exc}); please report it",
            )
        if not result.fix and result.status in ("fail", "warn"):
            result.fix = self.fix
        return result


REGISTRY: dict[str, Check] = {}


def check(id: str, layer: int, title: str, fix: str = "") -> Callable[[CheckFunc], CheckFunc]:
    """Register a check function under a stable id (decorator)."""

    def deco(func: CheckFunc) -> CheckFunc:
        if id in REGISTRY:
            raise ValueError(f"duplicate check id {id}")
        REGISTRY[id] = Check(id, layer, title, func, fix)
        return func

    return deco


def register(id: str, layer: int, title: str, func: CheckFunc, fix: str = "") -> None:
    """Register a check built at import time (one per sysctl, module, service …)."""
    check(id, layer, title, fix)(func)


class Verdict:
    """The result a running check is building: the evidence it gathered, then its status.

    The runner hands each check one, made for that check (its id, layer, title, default fix):
    `verdict.add_evidence(source, value)`; `return verdict.fail(reason)`.
    """

    def __init__(self, check: Check) -> None:
        self.check = check
        self.evidence: list[Evidence] = []

    def add_evidence(self, source: str, value: object, key: str = "", note: str = "") -> Verdict:
        self.evidence.append(Evidence(source, str(value), key, note))
        return self

    def _result(self, status: Status, reason: str, fix: str = "", needs_root: bool = False) -> Result:
        c = self.check
        return Result(
            c.id,
            c.layer,
            c.title,
            status,
            list(self.evidence),
            fix if status in ("fail", "warn") else "",
            reason,
            needs_root,
        )

    def ok(self, reason: str = "") -> Result:
        return self._result("pass", reason)

    def fail(self, reason: str, fix: str = "") -> Result:
        return self._result("fail", reason, fix or self.check.fix)

    def warn(self, reason: str, fix: str = "", needs_root: bool = False) -> Result:
        return self._result("warn", reason, fix or self.check.fix, needs_root)

    def not_applicable(self, reason: str) -> Result:
        return self._result("n/a", reason)

    def needs_root(self, what: str) -> Result:
        return self._result("warn", f"needs root: {what}", "run `sudo yktool verify`", True)


def daemon_result(ctx: CheckContext, verdict: Verdict, process: str, unit: str, name: str) -> Result:
    """Pass when `process` runs (or, on a root with no /proc, when `unit` is enabled)."""
    pids = ctx.running(process)
    if pids:
        verdict.add_evidence(f"/proc/{pids[0]}/comm", process)
        return verdict.ok()
    if ctx.processes():
        verdict.add_evidence("/proc/*/comm", f"no {process} process")
        return verdict.fail(f"{name} is not running")
    link = ctx.unit_enabled(unit)
    if link:
        verdict.add_evidence(link, "enabled", note="no /proc under the root: enabled, not seen running")
        return verdict.ok("enabled (no running system to look at)")
    verdict.add_evidence("/proc", "absent").add_evidence(f"/etc/systemd/system/*.wants/{unit}", "absent")
    return verdict.fail(f"{unit} is neither running nor enabled")


_COMMENT = re.compile(r"(^|\s)#.*$")


def strip_comment(line: str) -> str:
    """A config line without its `# comment` and surrounding blanks."""
    return _COMMENT.sub("", line).strip()


def lines(text: str | None) -> Iterator[str]:
    """Non-empty, comment-free lines of a config file."""
    for raw in (text or "").splitlines():
        line = strip_comment(raw)
        if line:
            yield line
