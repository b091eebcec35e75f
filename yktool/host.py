"""Host: every side effect of yktool on a machine goes through here.

- Paths: every path a command names is a path *inside* the root (`--root`, default `/`). They are
  resolved the way a chroot would: absolute symlinks are taken relative to the root, and `..` or
  a link that climbs out of the root is refused.
- Writes are atomic (temp file in the same folder, fsync, rename, fsync of the folder), the mode
  is set before any content is written, and what is replaced is backed up first under
  `/var/backups/yktool/` inside the root.
- Commands run from one place, `Host.run`: argv lists only, no shell. Secrets reach children on
  stdin or on inherited pipes (`SecretPath`), never in argv or the environment.
"""

from __future__ import annotations

import contextlib
import errno
import os
import secrets
import shutil
import stat
import subprocess  # the one command runner
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from yktool.errors import PermissionDenied, Refused, ToolFailed, UsageError

BACKUP_DIR = PurePosixPath("/var/backups/yktool")

# Inherited variables some tools read a secret from (systemd-cryptenroll: PASSWORD, PIN, NEWPIN;
# cryptsetup plugins likewise). A child must never pick one up from the caller's environment.
SECRET_ENV_NAMES = frozenset({"PASSWORD", "PIN", "NEWPIN", "SYSTEMD_ASK_PASSWORD"})

# Which Debian package brings a missing tool, for the hint.
TOOL_PACKAGES = {
    "cryptsetup": "cryptsetup-bin",
    "systemd-cryptenroll": "systemd",
    "ssh-keygen": "openssh-client",
    "git": "git",
    "age": "age",
    "tpm2_flushcontext": "tpm2-tools",
    "pamtester": "pamtester",
    "nix-instantiate": "nix-bin",
    "udevadm": "udev",
}


@dataclass(frozen=True)
class SecretPath:
    """An argv element that becomes `prefix + /dev/fd/N`: the child reads secret `index` there."""

    index: int
    prefix: str = ""


Arg = str | SecretPath

# Told each command's argv just before it runs (argv never holds a secret: SecretPath); what it
# returns is told the exit code after (None: timed out). The CLI's -v/-vv show commands with it.
CommandWatcher = Callable[[list[str]], Callable[[int | None], None]]
command_watcher: CommandWatcher | None = None


@dataclass
class Result:
    argv: list[str]
    returncode: int
    stdout: bytes
    stderr: bytes

    @property
    def text(self) -> str:
        return self.stdout.decode("utf-8", "replace")

    @property
    def error_text(self) -> str:
        return self.stderr.decode("utf-8", "replace").strip()


@dataclass
class Host:
    """The machine (or offline tree) yktool works on."""

    root: Path = Path("/")
    # argv of every command run, for --verbose and for tests; never holds a secret by construction
    commands: list[list[str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.root = Path(os.path.realpath(self.root))

    @property
    def is_live(self) -> bool:
        """True when the root is the running system's own `/` (reload daemons, read /proc)."""
        return str(self.root) == "/"

    # ----------------------------------------------------------------------------- paths
    def path(self, path: str | PurePosixPath) -> Path:
        """The real path of `path` (a path inside the root), resolved chroot-style.

        Missing components are allowed (for files about to be created); a symlink or `..` that
        would leave the root raises UsageError.
        """
        inside = PurePosixPath("/") / PurePosixPath(str(path))
        parts = list(inside.parts[1:])
        resolved: list[str] = []
        hops = 0
        while parts:
            part = parts.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                if not resolved:
                    raise UsageError(
                        f"path {path} climbs out of the root {self.root}",
                        "name paths inside the root; `..` above it is refused",
                    )
                resolved.pop()
                continue
            candidate = self.root.joinpath(*resolved, part)
            if candidate.is_symlink():
                hops += 1
                if hops > 40:
                    raise UsageError(f"too many symlinks resolving {path}", "fix the link loop")
                target = PurePosixPath(os.readlink(candidate))
                if target.is_absolute():
                    resolved = []
                    parts = list(target.parts[1:]) + parts
                else:
                    parts = list(target.parts) + parts
                continue
            resolved.append(part)
        return self.root.joinpath(*resolved)

    def exists(self, path: str | PurePosixPath) -> bool:
        return self.path(path).exists()

    def read_bytes(self, path: str | PurePosixPath) -> bytes:
        real = self.path(path)
        try:
            return real.read_bytes()
        except FileNotFoundError:
            raise UsageError(f"{path}: no such file", f"check the path (root is {self.root})") from None
        except PermissionError:
            raise PermissionDenied(f"{path}: permission denied",
                                   "run as root (sudo yktool …), or as a user who can read it") from None
        except IsADirectoryError:
            raise UsageError(f"{path} is a folder, not a file", "name a file") from None

    def read_text(self, path: str | PurePosixPath) -> str:
        return self.read_bytes(path).decode("utf-8", "surrogateescape")

    # ----------------------------------------------------------------------------- writes
    @staticmethod
    @contextlib.contextmanager
    def _may_write(path: str | PurePosixPath) -> Iterator[None]:
        """A write the user may not make (not root, a read-only tree) is an error with a hint."""
        try:
            yield
        except PermissionError:
            raise PermissionDenied(f"{path}: permission denied",
                                   "run as root (sudo), or give a --root you can write to") from None
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            raise UsageError(f"{path}: read-only file system",
                             "remount it read-write, or pick another --root") from None

    def mkdir(self, path: str | PurePosixPath, mode: int = 0o755, owner: tuple[int, int] | None = None) -> Path:
        """Create a folder (and its parents, with mode 0755) inside the root; set mode/owner."""
        real = self.path(path)
        if not real.is_dir():
            with self._may_write(path):
                real.parent.mkdir(parents=True, exist_ok=True)
                real.mkdir(mode=mode)
                os.chmod(real, mode)
                if owner is not None:
                    os.chown(real, *owner)
        return real

    def backup(self, path: str | PurePosixPath) -> Path | None:
        """Copy an existing file to /var/backups/yktool/<path>.<UTC time> inside the root."""
        real = self.path(path)
        if not real.is_file():
            return None
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        inside = PurePosixPath("/") / PurePosixPath(str(path))
        dest_inside = BACKUP_DIR / f"{str(inside).lstrip('/')}.{stamp}"
        # Backups of secret files (0600) live here too: the whole tree is root's alone, and each
        # copy is made 0600 before a byte is copied (copy2 would create it 0644 first).
        top = self.mkdir(BACKUP_DIR, 0o700)
        if stat.S_IMODE(top.stat().st_mode) != 0o700:
            os.chmod(top, 0o700)
        self.mkdir(dest_inside.parent, 0o700)
        dest = self.path(dest_inside)
        n = 0
        while dest.exists():
            n += 1
            dest = dest.with_name(f"{dest.name.split('~')[0]}~{n}")
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as out, open(real, "rb") as src:
            shutil.copyfileobj(src, out)
        shutil.copystat(real, dest)
        return dest

    def write_file(
        self,
        path: str | PurePosixPath,
        data: bytes | str,
        mode: int = 0o644,
        *,
        owner: tuple[int, int] | None = None,
        backup: bool = True,
    ) -> Path:
        """Atomically replace `path` with `data`: the reader sees the old file or the new one.

        The temporary file gets its mode (and owner) before a byte of content is written.
        """
        if isinstance(data, str):
            data = data.encode("utf-8")
        real = self.path(path)
        with self._may_write(path):
            real.parent.mkdir(parents=True, exist_ok=True)
            if backup:
                self.backup(path)
            # The folder is opened component by component without following links: `real` was
            # resolved with no link left in it, so a link now means someone swapped a folder
            # (e.g. a user's ~/.ssh for a link to /root/.ssh) after we looked. Refuse that.
            dir_fd = _open_dir_nofollow(real.parent, path)
        tmp = f".{real.name}.{secrets.token_hex(6)}.yktool-tmp"
        fd = -1
        try:
            with self._may_write(path):
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600,
                             dir_fd=dir_fd)
            os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
            os.close(fd)
            fd = -1
            # rename replaces a link at the final name itself; it never writes through it
            os.replace(tmp, real.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            os.fsync(dir_fd)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp, dir_fd=dir_fd)
            raise
        finally:
            os.close(dir_fd)
        return real

    def remove(self, path: str | PurePosixPath, *, backup: bool = True) -> bool:
        real = self.path(path)
        if not real.exists():
            return False
        with self._may_write(path):
            if backup:
                self.backup(path)
            real.unlink()
        return True

    def mode(self, path: str | PurePosixPath) -> int:
        return stat.S_IMODE(self.path(path).stat().st_mode)

    # ----------------------------------------------------------------------------- commands
    @staticmethod
    def which(tool: str) -> str | None:
        """The machine's own copy of `tool` (tools run here, whatever the root)."""
        return shutil.which(tool)

    def require_tool(self, tool: str) -> str:
        found = self.which(tool)
        if found is None:
            package = TOOL_PACKAGES.get(tool, tool)
            raise ToolFailed(f"{tool} is not installed", f"install it: apt-get install {package}")
        return found

    def run(
        self,
        argv: Sequence[Arg],
        *,
        input: bytes | None = None,
        secrets: Sequence[bytes] = (),
        env: Mapping[str, str | None] | None = None,
        check: bool = True,
        timeout: float | None = 300,
        cwd: str | os.PathLike[str] | None = None,
        secret_files: bool = False,
        credentials: Mapping[str, bytes] | None = None,
    ) -> Result:
        """Run a program: argv list, no shell; output captured.

        `input` goes to stdin; each of `secrets` is written into its own pipe whose read end the
        child inherits as the path a `SecretPath(i)` element of argv names. `env` adds plain
        (non-secret) variables; a None value removes that variable. With `check`, a non-zero exit
        raises ToolFailed carrying stderr.

        `secret_files=True` hands each secret over as an in-memory file (a sealed memfd, mode
        0400) instead of a pipe, for tools that seek or read a key file twice (systemd-cryptenroll
        `--unlock-key-file` fails on a pipe with "Illegal seek"). `credentials` passes systemd
        credentials (name -> secret): the child gets `CREDENTIALS_DIRECTORY`, a private folder of
        links to inherited memfds, so systemd tools read e.g. `cryptenroll.tpm2-pin` from memory
        instead of an environment variable. Nothing secret touches a disk in either case.
        """
        self.require_tool(str(argv[0]))
        child_env = {k: v for k, v in os.environ.items() if k not in SECRET_ENV_NAMES}
        for key, value in (env or {}).items():
            if value is None:
                child_env.pop(key, None)
            else:
                child_env[key] = value
        opener = _secret_memfds if secret_files else _secret_pipes
        with opener(secrets) as fds, _credentials_dir(credentials or {}) as (cred_dir, cred_fds):
            if cred_dir is not None:
                child_env["CREDENTIALS_DIRECTORY"] = cred_dir
            fds = fds + cred_fds
            final = [
                a if isinstance(a, str) else f"{a.prefix}/dev/fd/{fds[a.index]}" for a in argv
            ]
            self.commands.append(final)
            finished = command_watcher(final) if command_watcher is not None else None
            try:
                proc = subprocess.run(  # argv list, never a shell
                    final,
                    input=input,
                    capture_output=True,
                    env=child_env,
                    pass_fds=tuple(fds),
                    timeout=timeout,
                    cwd=cwd,
                    check=False,
                    stdin=None if input is not None else subprocess.DEVNULL,
                )
            except subprocess.TimeoutExpired:
                if finished is not None:
                    finished(None)
                raise ToolFailed(
                    f"{final[0]} did not finish within {timeout:.0f} s",
                    "check the device it talks to, then run again",
                ) from None
        if finished is not None:
            finished(proc.returncode)
        result = Result(final, proc.returncode, proc.stdout, proc.stderr)
        if check and proc.returncode != 0:
            raise ToolFailed(
                f"{os.path.basename(final[0])} failed (exit {proc.returncode}): "
                f"{result.error_text or 'no message'}",
                "see the message above; nothing was changed by yktool after this step",
            )
        return result


def _open_dir_nofollow(folder: Path, shown: str | PurePosixPath) -> int:
    """An fd of `folder`, opened from / one component at a time, refusing any symlink on the way."""
    fd = os.open("/", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in folder.parts[1:]:
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError as exc:
                if exc.errno not in (errno.ELOOP, errno.ENOTDIR):
                    raise
                raise Refused(
                    f"{shown}: a folder on its path became a link while yktool was working ({folder})",
                    "someone changed the folder under yktool; check who owns it, then run again",
                ) from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def _secret_pipes(secrets: Sequence[bytes]) -> Iterator[list[int]]:
    """One pipe per secret, filled and closed for writing; yields the read ends."""
    read_ends: list[int] = []
    try:
        for secret in secrets:
            if len(secret) > 60_000:  # a pipe buffer holds 64 KiB; secrets are tiny
                raise UsageError("secret too large for a pipe", "this is a bug in yktool")
            r, w = os.pipe()
            read_ends.append(r)
            try:
                os.write(w, secret)
            finally:
                os.close(w)
        yield read_ends
    finally:
        for r in read_ends:
            os.close(r)


def _memfd(name: str, secret: bytes) -> int:
    """A sealed, read-only in-memory file holding `secret` (never on disk, never in swap-less tmp)."""
    import fcntl

    fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(secret)
        while view:
            view = view[os.write(fd, view):]
        # systemd warns about key files readable by others; a memfd link shows its own mode
        os.fchmod(fd, 0o400)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                    fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _secret_memfds(secrets: Sequence[bytes]) -> Iterator[list[int]]:
    """One sealed memfd per secret; yields their fds (closed afterwards)."""
    fds: list[int] = []
    try:
        for n, secret in enumerate(secrets):
            fds.append(_memfd(f"yktool-secret-{n}", secret))
        yield fds
    finally:
        for fd in fds:
            os.close(fd)


@contextlib.contextmanager
def _credentials_dir(credentials: Mapping[str, bytes]) -> Iterator[tuple[str | None, list[int]]]:
    """A private folder of links `name -> /proc/self/fd/N` to inherited memfds (systemd credentials).

    The child resolves `/proc/self` to itself, so each link opens the memfd it inherited. The
    folder holds links only, no secret bytes, and is removed afterwards.
    """
    if not credentials:
        yield None, []
        return
    fds: list[int] = []
    folder = tempfile.mkdtemp(prefix="yktool-cred-")
    try:
        for name, secret in credentials.items():
            if "/" in name or name in ("", ".", ".."):
                raise UsageError(f"bad credential name {name!r}", "this is a bug in yktool")
            fd = _memfd(f"yktool-cred-{name}", secret)
            fds.append(fd)
            os.symlink(f"/proc/self/fd/{fd}", os.path.join(folder, name))
        yield folder, fds
    finally:
        for fd in fds:
            os.close(fd)
        shutil.rmtree(folder, ignore_errors=True)
