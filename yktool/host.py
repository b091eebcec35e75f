"""Host: every side effect of yktool on a machine goes through here.

- Paths: every path a command names is a path *inside* the root (`--root`, default `/`). They are
  walked the way a chroot would, one component at a time from an fd of the root, each folder
  opened with O_NOFOLLOW from the one before: absolute symlinks are taken relative to the root
  (never the machine's own /), and `..` or a link that climbs out of the root is refused.
- No path a user controls is followed as root: a link is followed only when root owns it and no
  other user can change the folder it is in (NixOS's /etc -> /etc/static -> /nix/store, /home ->
  /data/home). A user's link, or any link in a folder a user can write, is UnsafeLink (exit 4),
  for reads and writes alike; a link swapped in after the walk looked is refused at the open.
- Reads open the last name with O_NOFOLLOW and read regular files only. Writes are atomic: a temp
  file made O_EXCL in the held folder fd, fchmod/fchown on its fd before any content, fsync,
  renameat in the same folder fd (a rename replaces a link, never writes through it), fsync of
  the folder; what is replaced is backed up first under `/var/backups/yktool/` inside the root.
  New folders are mkdirat-ed, then opened O_NOFOLLOW and fchmod/fchown-ed on their fd.
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
from collections import deque
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
    def where_inside(self, path: str | PurePosixPath) -> str | PurePosixPath:
        """Which path inside the root stands for `path`: itself. A view of the root (the NixOS
        generation's /etc, yktool.nixos.generation) overrides this; every read, write and
        `path()` goes through it."""
        return path

    def _locate(
        self,
        path: str | PurePosixPath,
        *,
        make_parents: bool = False,
        lexical_rest: bool = False,
        follow_last: bool = True,
        seen: Callable[[PurePosixPath, os.stat_result], None] | None = None,
    ) -> _Spot:
        """Walk `path` inside the root one component at a time, each folder opened with
        O_NOFOLLOW from the one before, and return the open folder that holds its last name.

        A symbolic link on the way (the last name included) is followed chroot-style only when
        `_refuse_link` allows it; `..` or a link above the root is refused. Missing folders are
        made (0755, root's) with `make_parents`; with `lexical_rest` the missing rest of the path
        is kept as written (for `path()`), else FileNotFoundError. Without `follow_last` a link
        at the last name is returned as it is (to look at the link itself). `seen` is told every
        name the walk meets (the root, folders, links, the last name), as fstatat saw it.
        """
        path = self.where_inside(path)
        shown = str(path)
        parts = deque(PurePosixPath("/", shown).parts[1:])
        try:
            stack = [os.open(self.root, _DIR_FLAGS)]
        except FileNotFoundError:
            if not make_parents:
                raise
            os.makedirs(self.root, 0o755, exist_ok=True)  # a new tree (an image being built)
            stack = [os.open(self.root, _DIR_FLAGS)]
        names: list[str] = []
        hops = 0
        try:
            if seen is not None:
                seen(PurePosixPath("/"), os.stat(stack[0]))
            while parts:
                part = parts.popleft()
                if part in ("", "."):
                    continue
                if part == "..":
                    if len(stack) == 1:
                        raise _climbs_out(shown, self.root)
                    os.close(stack.pop())
                    names.pop()
                    continue
                folder = stack[-1]
                try:
                    st: os.stat_result | None = os.stat(part, dir_fd=folder, follow_symlinks=False)
                except (FileNotFoundError, NotADirectoryError):
                    st = None
                if st is not None and seen is not None:
                    seen(PurePosixPath("/", *names, part), st)
                if st is not None and stat.S_ISLNK(st.st_mode) and (parts or follow_last):
                    hops += 1
                    if hops > 40:
                        raise UsageError(f"too many symlinks resolving {path}", "fix the link loop")
                    target = _refuse_link(folder, part, st, PurePosixPath("/", *names, part))
                    if target.is_absolute():  # chroot-style: from the root, never the machine's /
                        for fd in stack[1:]:
                            os.close(fd)
                        del stack[1:]
                        names = []
                        parts.extendleft(reversed(target.parts[1:]))
                    else:
                        parts.extendleft(reversed(target.parts))
                    continue
                if not parts:  # the last name: the caller opens, makes or replaces it
                    return _Spot(stack.pop(), part, PurePosixPath("/", *names, part))
                if st is None or not stat.S_ISDIR(st.st_mode):
                    if lexical_rest:
                        rest = _lexical([part, *parts], names, shown, self.root)
                        return _Spot(stack.pop(), "", PurePosixPath("/", *rest))
                    if st is None and make_parents:
                        with contextlib.suppress(FileExistsError):
                            os.mkdir(part, 0o755, dir_fd=folder)
                    elif st is None:
                        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), shown)
                    else:
                        raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), shown)
                stack.append(_open_folder(part, folder, PurePosixPath("/", *names, part)))
                names.append(part)
            if not names:  # the root itself
                return _Spot(stack.pop(), "", PurePosixPath("/"))
            os.close(stack.pop())
            name = names.pop()
            return _Spot(stack.pop(), name, PurePosixPath("/", *names, name))
        finally:
            for fd in stack:
                os.close(fd)

    @contextlib.contextmanager
    def _at(self, path: str | PurePosixPath, *, make_parents: bool = False) -> Iterator[_Spot]:
        spot = self._locate(path, make_parents=make_parents)
        try:
            yield spot
        finally:
            os.close(spot.dir_fd)

    def path(self, path: str | PurePosixPath) -> Path:
        """The real path of `path` (a path inside the root), resolved chroot-style.

        Missing components are allowed (for files about to be created); a symlink or `..` that
        would leave the root raises UsageError, and as root a link a user controls raises
        UnsafeLink. The result is for naming the file to a tool; yktool's own reads and writes
        go through the fd walk (`read_bytes`, `write_file`, `mkdir`) and never by this path.
        """
        try:
            spot = self._locate(path, lexical_rest=True)
        except (FileNotFoundError, NotADirectoryError):  # the root itself is missing: as written
            parts = PurePosixPath("/", str(path)).parts[1:]
            return self.root.joinpath(*_lexical(list(parts), [], str(path), self.root))
        os.close(spot.dir_fd)
        return self.root.joinpath(*spot.inside.parts[1:])

    def lstat(self, path: str | PurePosixPath) -> os.stat_result | None:
        """The file's own status (a link root may follow is followed first); None when missing."""
        try:
            with self._at(path) as spot:
                if not spot.name:
                    return os.stat(spot.dir_fd)
                return os.stat(spot.name, dir_fd=spot.dir_fd, follow_symlinks=False)
        except (FileNotFoundError, NotADirectoryError):
            return None

    def exists(self, path: str | PurePosixPath) -> bool:
        return self.lstat(path) is not None

    def trail(self, path: str | PurePosixPath) -> list[tuple[PurePosixPath, os.stat_result]]:
        """Every name the fd walk to `path` meets, in order, with its own status (fstatat, nothing
        followed): the root, each folder, each link followed and then where its target leads,
        the last name. Who can change one of them can change what `path` reads. Missing:
        FileNotFoundError; a link root may not follow: UnsafeLink."""
        met: list[tuple[PurePosixPath, os.stat_result]] = []
        spot = self._locate(path, seen=lambda inside, st: met.append((inside, st)))
        os.close(spot.dir_fd)
        return met

    def lexists(self, path: str | PurePosixPath) -> bool:
        """True when the name exists, a link at it counted as it is (never followed)."""
        try:
            spot = self._locate(path, follow_last=False)
        except (FileNotFoundError, NotADirectoryError):
            return False
        try:
            return not spot.name or _lstat_at(spot.dir_fd, spot.name) is not None
        finally:
            os.close(spot.dir_fd)

    def is_file(self, path: str | PurePosixPath) -> bool:
        st = self.lstat(path)
        return st is not None and stat.S_ISREG(st.st_mode)

    def is_dir(self, path: str | PurePosixPath) -> bool:
        st = self.lstat(path)
        return st is not None and stat.S_ISDIR(st.st_mode)

    def owner(self, path: str | PurePosixPath) -> tuple[int, int]:
        st = self.lstat(path)
        if st is None:
            raise UsageError(f"{path}: no such file", f"check the path (root is {self.root})")
        return st.st_uid, st.st_gid

    def open(self, path: str | PurePosixPath, flags: int = os.O_RDONLY) -> int:
        """An fd of `path` opened through the walk, the last name with O_NOFOLLOW (caller closes).

        Missing -> FileNotFoundError; a link swapped in after the walk looked -> Refused.
        """
        with self._at(path) as spot:
            if not spot.name:
                return os.open(".", flags | os.O_CLOEXEC, dir_fd=spot.dir_fd)
            try:
                fd = os.open(spot.name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=spot.dir_fd)
            except OSError as exc:
                if exc.errno != errno.ELOOP:
                    raise
                raise _became_link(path, spot.inside) from None
            try:
                _refuse_hardlink(spot.dir_fd, fd, spot.inside)
            except BaseException:
                os.close(fd)
                raise
            return fd

    def read_bytes(self, path: str | PurePosixPath) -> bytes:
        """The bytes of a regular file inside the root, read through the walk (never a user's
        link, never a FIFO that would hang)."""
        try:
            fd = self.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            raise UsageError(f"{path}: no such file", f"check the path (root is {self.root})") from None
        except PermissionError:
            raise PermissionDenied(
                f"{path}: permission denied", "run as root (sudo yktool …), or as a user who can read it"
            ) from None
        try:
            st = os.fstat(fd)
            if stat.S_ISDIR(st.st_mode):
                raise UsageError(f"{path} is a folder, not a file", "name a file")
            if not stat.S_ISREG(st.st_mode):
                raise UsageError(f"{path} is not a regular file", "name a regular file")
            return read_all(fd)
        finally:
            os.close(fd)

    def read_text(self, path: str | PurePosixPath) -> str:
        """The file as text; bytes that are not UTF-8 survive as surrogates (encode them back
        with `errors="surrogateescape"`, print them through yktool.cli.output)."""
        return self.read_bytes(path).decode("utf-8", "surrogateescape")

    @contextlib.contextmanager
    def private_copy(self, path: str | PurePosixPath) -> Iterator[Path]:
        """A copy of `path` (read through the walk; mode 0600) in a folder only we can enter, for a
        tool that must read the file by name: run as root on a user's file, the tool never gets
        the user's path, so a link swapped in after the walk cannot send it elsewhere."""
        data = self.read_bytes(path)
        folder = Path(tempfile.mkdtemp(prefix="yktool-copy-"))
        try:
            copy = folder / PurePosixPath(str(path)).name
            fd = os.open(copy, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                _write_all(fd, data)
            finally:
                os.close(fd)
            yield copy
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    def listdir(self, path: str | PurePosixPath) -> list[str]:
        """The names in a folder inside the root, sorted (opened through the walk)."""
        fd = self.open(path, os.O_RDONLY | os.O_DIRECTORY)
        try:
            return sorted(os.listdir(fd))
        finally:
            os.close(fd)

    # ----------------------------------------------------------------------------- writes
    @staticmethod
    @contextlib.contextmanager
    def _may_write(path: str | PurePosixPath) -> Iterator[None]:
        """A write the user may not make (not root, a read-only tree) is an error with a hint."""
        try:
            yield
        except PermissionError:
            raise PermissionDenied(
                f"{path}: permission denied", "run as root (sudo), or give a --root you can write to"
            ) from None
        except NotADirectoryError:
            raise UsageError(f"{path}: a part of the path is not a folder", "check the path") from None
        except OSError as exc:
            if exc.errno != errno.EROFS:
                raise
            raise UsageError(
                f"{path}: read-only file system", "remount it read-write, or pick another --root"
            ) from None

    def mkdir(self, path: str | PurePosixPath, mode: int = 0o755, owner: tuple[int, int] | None = None) -> Path:
        """Create a folder (and its parents, with mode 0755) inside the root; set mode/owner.

        The mode and owner are set on the fd of the folder just made, opened with O_NOFOLLOW:
        a link swapped in for it (to /etc, or anywhere outside the root) is refused, never
        chmod-ed or chown-ed.
        """
        with self._may_write(path), self._at(path, make_parents=True) as spot:
            inside = spot.inside
            if not spot.name:
                return self.root
            st = _lstat_at(spot.dir_fd, spot.name)
            if st is not None and stat.S_ISDIR(st.st_mode):
                return self.root.joinpath(*inside.parts[1:])
            if st is not None:
                raise UsageError(f"{path} exists and is not a folder", "move the file away, then run again")
            os.mkdir(spot.name, mode, dir_fd=spot.dir_fd)
            fd = _open_folder(spot.name, spot.dir_fd, inside, flags=os.O_RDONLY)
            try:
                os.fchmod(fd, mode)
                if owner is not None:
                    os.fchown(fd, *owner)
            finally:
                os.close(fd)
        return self.root.joinpath(*inside.parts[1:])

    def backup(self, path: str | PurePosixPath) -> Path | None:
        """Copy an existing file to /var/backups/yktool/<path>.<UTC time> inside the root."""
        try:
            src = self.open(path, os.O_RDONLY | os.O_NONBLOCK)
        except (FileNotFoundError, NotADirectoryError):
            return None
        try:
            st = os.fstat(src)
            if not stat.S_ISREG(st.st_mode):
                return None
            return self._backup_fd(path, src, st)
        finally:
            os.close(src)

    def _backup_fd(self, path: str | PurePosixPath, src: int, st: os.stat_result) -> Path:
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        inside = PurePosixPath("/") / PurePosixPath(str(path))
        dest_inside = BACKUP_DIR / f"{str(inside).lstrip('/')}.{stamp}"
        # Backups of secret files (0600) live here too: the whole tree is root's alone, and each
        # copy is made 0600 before a byte is copied.
        self.mkdir(BACKUP_DIR, 0o700)
        with self._may_write(BACKUP_DIR):
            top = self.open(BACKUP_DIR, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if stat.S_IMODE(os.fstat(top).st_mode) != 0o700:
                    os.fchmod(top, 0o700)
            finally:
                os.close(top)
        self.mkdir(dest_inside.parent, 0o700)
        with self._may_write(dest_inside), self._at(dest_inside) as spot:
            name, n = spot.name, 0
            while True:
                try:
                    out = os.open(
                        name,
                        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                        0o600,
                        dir_fd=spot.dir_fd,
                    )
                    break
                except FileExistsError:
                    n += 1
                    name = f"{spot.name}~{n}"
            try:
                os.lseek(src, 0, os.SEEK_SET)
                while chunk := os.read(src, 1 << 20):
                    _write_all(out, chunk)
                os.fchmod(out, stat.S_IMODE(st.st_mode))
                os.utime(out, ns=(st.st_atime_ns, st.st_mtime_ns))
            finally:
                os.close(out)
            return self.root.joinpath(*spot.inside.parts[1:-1], name)

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

        The folder is reached by the walk and held open; the temporary file is made in it with
        O_EXCL, gets its mode (and owner) on its fd before a byte of content is written, and is
        renamed over the name in the same folder fd. A rename replaces a link at the name, it
        never writes through it, and a user's link there is refused before anything is written.
        """
        if isinstance(data, str):
            data = data.encode("utf-8", "surrogateescape")
        with self._may_write(path):
            spot = self._locate(path, make_parents=True)
        dir_fd = spot.dir_fd
        tmp = ""
        fd = -1
        try:
            if not spot.name:
                raise UsageError(f"{path} is the root folder, not a file", "name a file")
            with self._may_write(path):
                st = _lstat_at(dir_fd, spot.name)
                if st is not None and stat.S_ISDIR(st.st_mode):
                    raise UsageError(f"{path} is a folder, not a file", "name a file")
                if backup and st is not None and stat.S_ISREG(st.st_mode):
                    src = os.open(spot.name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
                    try:
                        self._backup_fd(path, src, os.fstat(src))
                    finally:
                        os.close(src)
                tmp = f".{spot.name}.{secrets.token_hex(6)}.yktool-tmp"
                fd = os.open(
                    tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd
                )
            os.fchmod(fd, mode)
            if owner is not None:
                os.fchown(fd, *owner)
            _write_all(fd, data)
            os.fsync(fd)
            os.close(fd)
            fd = -1
            # rename replaces a link at the final name itself; it never writes through it
            os.replace(tmp, spot.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
            tmp = ""
            _fsync_folder(dir_fd)
        except BaseException:
            if fd >= 0:
                os.close(fd)
            if tmp:
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp, dir_fd=dir_fd)
            raise
        finally:
            os.close(dir_fd)
        return self.root.joinpath(*spot.inside.parts[1:])

    def remove(self, path: str | PurePosixPath, *, backup: bool = True) -> bool:
        with self._may_write(path), self._at(path) as spot:
            st = _lstat_at(spot.dir_fd, spot.name) if spot.name else None
            if st is None:
                return False
            if backup:
                self.backup(path)
            os.unlink(spot.name, dir_fd=spot.dir_fd)
        return True

    def mode(self, path: str | PurePosixPath) -> int:
        st = self.lstat(path)
        if st is None:
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
        return stat.S_IMODE(st.st_mode)

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
            final = [a if isinstance(a, str) else f"{a.prefix}/dev/fd/{fds[a.index]}" for a in argv]
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
                f"{os.path.basename(final[0])} failed (exit {proc.returncode}): {result.error_text or 'no message'}",
                "see the message above; nothing was changed by yktool after this step",
            )
        return result


# Folders on the way are opened as handles only (O_PATH: no read permission needed, nothing
# followed); the last name is opened by the caller, again with O_NOFOLLOW.
_DIR_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC

LINK_HINT = "replace the link with a plain file or folder (as that user), then run again"


class UnsafeLink(Refused, UsageError):
    """Running as root, a symbolic link a user controls stands on a path: never followed.

    A refusal (exit 4) for commands; readers that report on files (verify, `pam check`) meet it
    as bad input and say the file cannot be read safely.
    """


@dataclass(frozen=True)
class _Spot:
    """Where a path inside the root lands: an open folder, a name in it ("" for the root itself)
    and the path inside the root with no link left in it."""

    dir_fd: int
    name: str
    inside: PurePosixPath


def _other_writer(folder: os.stat_result) -> str | None:
    """Who besides root can rename or replace the entries of this folder (None: nobody)."""
    if folder.st_uid != 0:
        return f"uid {folder.st_uid}"
    if folder.st_mode & stat.S_ISVTX:
        return None  # root's sticky folder: only root renames or removes root's entries
    if folder.st_mode & 0o002:
        return "every user"
    if folder.st_mode & 0o020 and folder.st_gid != 0:
        return f"group {folder.st_gid}"
    return None


def _refuse_link(folder: int, name: str, st: os.stat_result, inside: PurePosixPath) -> PurePosixPath:
    """The target of link `name` in `folder` when yktool may follow it, else UnsafeLink.

    Not running as root, links are followed (the kernel stops a user's links at what that user
    may reach anyway). As root, only a link root owns, in a folder no other user can change
    (so nobody can swap it between this look and the use): NixOS's /etc, /home -> /data/home.
    A user's link, or any link in a user's folder, would have root read or write whatever it
    points at, so it is refused, whatever its target.
    """
    try:
        target = os.readlink(name, dir_fd=folder)
    except OSError:
        target = "?"
    if os.geteuid() == 0:
        if st.st_uid != 0:
            raise UnsafeLink(
                f"{inside} is a symbolic link owned by uid {st.st_uid} (to {target}): "
                "yktool, running as root, will not follow it",
                LINK_HINT,
            )
        who = _other_writer(os.stat(folder))
        if who is not None:
            raise UnsafeLink(
                f"{inside} is a symbolic link in a folder {who} can change (to {target}): "
                "yktool, running as root, will not follow it",
                LINK_HINT,
            )
    if target == "?":
        raise _became_link(inside, inside)
    return PurePosixPath(target)


def _refuse_hardlink(folder: int, fd: int, inside: PurePosixPath) -> None:
    """As root, a file with more than one name, found in a folder a user can add names to, and not
    that user's own: a hard link they made to a file of root's or another user's (the kernel lets
    them where fs.protected_hardlinks is 0). Reading it would show root's /etc/shadow as theirs."""
    if os.geteuid() != 0:
        return
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_nlink < 2:
        return
    where = os.fstat(folder)
    if where.st_uid != 0:
        if st.st_uid == where.st_uid:
            return  # the user's own file under another name of theirs
        who = f"uid {where.st_uid}"
    elif where.st_mode & 0o002:
        who = "every user"
    else:
        return  # root's folder (group-writable ones included: /nix/store's build users share files)
    raise UnsafeLink(
        f"{inside} is a hard link (one of {st.st_nlink} names) to a file of uid {st.st_uid}, in a "
        f"folder {who} can add names to: yktool, running as root, will not read it",
        "replace it with a file of its own (a copy, as that user), then run again",
    )


def _became_link(path: str | PurePosixPath, inside: PurePosixPath) -> Refused:
    return Refused(
        f"{path}: {inside} became a link while yktool was working (it was none when looked at)",
        "someone changed the folder under yktool; check who owns it, then run again",
    )


def _climbs_out(path: str, root: Path) -> UsageError:
    return UsageError(
        f"path {path} climbs out of the root {root}", "name paths inside the root; `..` above it is refused"
    )


def _lexical(rest: list[str], names: list[str], shown: str, root: Path) -> list[str]:
    """`names` followed by the not-yet-existing `rest`, `..` and `.` applied as written."""
    out = list(names)
    for part in rest:
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                raise _climbs_out(shown, root)
            out.pop()
            continue
        out.append(part)
    return out


def _open_folder(name: str, folder: int, inside: PurePosixPath, flags: int = os.O_PATH) -> int:
    """Open the folder `name` in `folder` without following a link (one swapped in: Refused)."""
    try:
        return os.open(name, flags | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise _became_link(inside, inside) from None
        if exc.errno == errno.ENOTDIR:
            st = _lstat_at(folder, name)
            if st is not None and stat.S_ISLNK(st.st_mode):
                raise _became_link(inside, inside) from None
        raise


def _open_dir_nofollow(folder: Path, shown: str | PurePosixPath) -> int:
    """An fd of the machine path `folder`, opened from / one component at a time, refusing any
    symlink on the way (yktool.lock opens its lock folders so)."""
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


def _lstat_at(folder: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=folder, follow_symlinks=False)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _fsync_folder(folder: int) -> None:
    """Make a rename in `folder` durable (a folder we may write but not read is left as is)."""
    try:
        fd = os.open(".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=folder)
    except PermissionError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
            view = view[os.write(fd, view) :]
        # systemd warns about key files readable by others; a memfd link shows its own mode
        os.fchmod(fd, 0o400)
        fcntl.fcntl(
            fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
        )
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


def read_all(fd: int) -> bytes:
    """Everything left to read on an open file descriptor."""
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)
