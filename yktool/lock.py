"""One lock per root: every yktool run that changes something holds it, readers never take it.

The lock is an exclusive `flock` on `/var/lib/yktool/lock` inside the root. That folder is
yktool's own state (flow progress, LUKS journals), exists on a live system and in an offline tree
being built alike, and belongs to root; `/run` of an offline tree is not the running system's and
is often absent. A run holds the lock from its first read that decides (a safety check, the
current authfile) through the change and the registry write, so two runs on one root happen one
after the other and the second one sees what the first one did. The kernel drops a flock when its
holder dies, so a kill -9 never leaves a stale lock.

A second run waits up to `--lock-wait` seconds (default 30: a touch times out after about as long)
and then refuses, naming the run that holds the lock. The lock is taken again by nested callers
(the registry, a flow calling a building block) in the same process without waiting: it counts.

As root the lock file is opened without following links (folder by folder, then `O_NOFOLLOW`), so
a user cannot point it elsewhere. A user who is not root and cannot write the root's state folder
(e.g. `git signing` for their own account) locks a file of their own instead: their runs on that
root exclude each other; they cannot write what root's runs share anyway.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import os
import stat
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from yktool.errors import Refused, UsageError
from yktool.host import Host, _open_dir_nofollow

STATE_DIR = PurePosixPath("/var/lib/yktool")
LOCK_NAME = "lock"
DEFAULT_WAIT = 30.0
# Test hook (like YKTOOL_FAULT): where the *live* root's lock and journals go, so a test suite that
# works on image files on the live root (no --root) never writes the machine's own /var/lib. Never
# set it for real: runs with different values do not see each other's lock.
STATE_ENV = "YKTOOL_STATE_DIR"


def state_host(host: Host) -> tuple[Host, PurePosixPath]:
    """The Host and folder that hold yktool's per-root state (lock, journals) for `host`."""
    override = os.environ.get(STATE_ENV)
    if host.is_live and override:
        return Host(Path(override)), PurePosixPath("/")
    return host, STATE_DIR


@dataclass
class _Lock:
    dir_fd: int
    fd: int
    shown: str
    made: list[Path] = field(default_factory=list)  # folders this run created for the lock
    count: int = 1

    def close(self) -> None:
        os.close(self.fd)
        os.close(self.dir_fd)


_HELD: dict[str, _Lock] = {}


def _holder(fd: int) -> str:
    """`pid N, `yktool luks wipe`` from what the holder wrote into the lock file."""
    try:
        text = os.pread(fd, 4096, 0).decode("utf-8", "replace")
    except OSError:
        text = ""
    lines = text.splitlines()
    pid = lines[0] if lines and lines[0].isdigit() else "?"
    what = lines[1] if len(lines) > 1 else "yktool"
    return f"pid {pid}, `{what}`"


def _open_safely(folder: Path, shown: str) -> tuple[int, int]:
    """(folder fd, lock file fd): created 0600 if missing, never through a link, a regular file
    of ours."""
    dir_fd = _open_dir_nofollow(folder, shown)
    try:
        fd = os.open(
            LOCK_NAME, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o600, dir_fd=dir_fd
        )
    except OSError as exc:
        os.close(dir_fd)
        if exc.errno != errno.ELOOP:
            raise
        raise Refused(
            f"{shown} is a symbolic link; yktool will not follow it to lock",
            f"remove {shown} (it holds nothing), then run again",
        ) from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid():
        os.close(fd)
        os.close(dir_fd)
        raise Refused(
            f"{shown} is not a plain file of uid {os.geteuid()}", f"remove {shown} (it holds nothing), then run again"
        )
    return dir_fd, fd


def _user_lock_folders(host: Host) -> Iterator[tuple[Path, list[Path]]]:
    """A non-root user's own lock folders for this root, best first: their runtime folder, their
    ~/.cache, then a folder of theirs in the system's temporary folder (links are not followed and
    the lock file must be theirs, so another user cannot plant one there). With each, the folders
    made for it (removed again when empty)."""
    name = hashlib.sha256(str(host.root).encode()).hexdigest()[:16]
    bases = [os.environ.get("XDG_RUNTIME_DIR"), str(Path.home() / ".cache"), None]
    for base in bases:
        top = Path(base) / "yktool" if base else Path(tempfile.gettempdir()) / f"yktool-{os.geteuid()}"
        made = []
        try:
            for folder in (top, top / name):
                if not folder.is_dir():
                    folder.mkdir(mode=0o700, parents=folder is top)
                    made.append(folder)
        except OSError:
            _remove_empty(made)
            continue
        yield top / name, made


def _make_folders(state: Host, folder: PurePosixPath) -> tuple[Path, list[Path]]:
    """Create the lock's folder where missing; returns it and the folders made (to remove them
    again, when empty, so a run that changes nothing leaves the root as it found it)."""
    made: list[Path] = []
    parts = folder.parts
    for n in range(1, len(parts) + 1):
        inside = PurePosixPath(*parts[:n])
        if not state.path(inside).is_dir():
            try:
                made.append(state.mkdir(inside, 0o700 if n == len(parts) else 0o755))
            except FileExistsError:  # another run made it just now: theirs to remove
                continue
    return state.path(folder), made


def _open_lock(host: Host) -> _Lock:
    state, folder = state_host(host)
    shown = str(host.root / str(folder).lstrip("/") / LOCK_NAME) if state is host else str(state.root / LOCK_NAME)
    made: list[Path] = []
    try:
        with Host._may_write(shown):
            real, made = _make_folders(state, folder)
            return _Lock(*_open_safely(real, shown), shown, made)
    except UsageError as exc:
        _remove_empty(made)
        if os.geteuid() == 0:
            raise
        failure: UsageError | Refused = exc
    for mine, made in _user_lock_folders(host):
        try:
            return _Lock(*_open_safely(mine, str(mine / LOCK_NAME)), str(mine / LOCK_NAME), made)
        except (OSError, Refused) as exc:
            _remove_empty(made)
            failure = exc if isinstance(exc, Refused) else failure
    raise failure


def _remove_empty(folders: list[Path]) -> None:
    for folder in reversed(folders):
        try:
            folder.rmdir()
        except OSError:  # not empty (another run's lock, a journal): it stays, and so do its parents
            return


def _same_file(dir_fd: int, fd: int) -> bool:
    """True when the locked fd is still the file at the lock's name (a run that held it before
    removes the name on its way out; a lock taken on the removed file locks nothing)."""
    try:
        named = os.stat(LOCK_NAME, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    mine = os.fstat(fd)
    return (named.st_dev, named.st_ino) == (mine.st_dev, mine.st_ino)


def _acquire(host: Host, deadline: float) -> _Lock:
    pause = 0.02
    while True:
        try:
            lock = _open_lock(host)
        except FileNotFoundError:
            # a run that just finished removed the (empty) folder between our look and our open
            if time.monotonic() >= deadline:
                raise Refused(
                    f"the lock folder of {host.root} keeps vanishing while yktool opens it",
                    "check who removes it, then run again",
                ) from None
            time.sleep(pause)
            continue
        try:
            while True:
                try:
                    fcntl.flock(lock.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise Refused(
                            f"another yktool run ({_holder(lock.fd)}) holds the lock on {host.root}; wait for it",
                            "run again when it has finished, or give --lock-wait SECONDS (before the "
                            f"command) to wait longer (the lock is {lock.shown})",
                        ) from None
                    time.sleep(pause)
                    pause = min(pause * 2, 0.25)
            if _same_file(lock.dir_fd, lock.fd):
                return lock
        except BaseException:
            lock.close()
            raise
        lock.close()


@contextlib.contextmanager
def root_lock(host: Host, what: str = "yktool", wait: float | None = None) -> Iterator[None]:
    """Hold the root's lock for the block (re-entrant in one process); Refused after `wait` s."""
    key = str(host.root)
    held = _HELD.get(key)
    if held is not None:
        held.count += 1
        try:
            yield
        finally:
            held.count -= 1
        return
    lock = _acquire(host, time.monotonic() + (DEFAULT_WAIT if wait is None else max(0.0, wait)))
    try:
        # who holds it, for the message of a run that has to wait (no secret: pid and command)
        os.pwrite(lock.fd, f"{os.getpid()}\n{what}\n".encode("utf-8", "replace"), 0)
        _HELD[key] = lock
        try:
            yield
        finally:
            del _HELD[key]
            # the name goes while we still hold the lock (a root is left as it was found); a
            # waiter on this file sees that and opens the next one
            with contextlib.suppress(OSError):
                os.unlink(LOCK_NAME, dir_fd=lock.dir_fd)
            _remove_empty(lock.made)
    finally:
        lock.close()  # closing the last fd drops the flock


def holds_lock(host: Host) -> bool:
    """True while this process holds `host`'s root lock (for assertions in library code)."""
    return str(host.root) in _HELD


def current_hold(host: Host) -> object | None:
    """A token for the hold this process has on `host`'s root lock now (None: it holds none)."""
    return _HELD.get(str(host.root))


def still_held(host: Host, token: object | None) -> bool:
    """True when the hold `current_hold` returned is still the one in force: the lock was not
    let go in between, so what was checked under it is still what the host holds. A library
    caller that checked without the lock, or let it go, gets False: check again under it."""
    return token is not None and _HELD.get(str(host.root)) is token
