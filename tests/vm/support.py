"""The VM tier's helpers: only ever loaded inside scripts/test-vm's guest (tests/conftest.py refuses
tests/vm anywhere else), where / is the host's read-only and /tmp, /run are the guest's tmpfs.

Everything here drives the real kernel: dm-crypt maps volumes, /dev/tpmrm0 is swtpm as the VM's
TPM chip. Each test makes its images in its own tmp_path (guest tmpfs): a LUKS image on the
results share is refused by the kernel ("not a valid LUKS device").
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from yktool.fido.emulate_process import PluggedKey

TPM = "device:/dev/tpmrm0"
SYSTEMD_CRYPTSETUP = "/lib/systemd/systemd-cryptsetup"


def run(
    argv: Sequence[str | Path],
    *,
    input: bytes | str | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
    check: bool = False,
) -> subprocess.CompletedProcess[str]:
    """A consumer's command, its output as text; a hang fails the test instead of the tier."""
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run(
        [str(a) for a in argv],
        input=data,
        capture_output=True,
        timeout=timeout,
        env={**os.environ, **(env or {})},
        check=False,
    )
    out = subprocess.CompletedProcess(
        proc.args, proc.returncode, proc.stdout.decode(errors="replace"), proc.stderr.decode(errors="replace")
    )
    if check and out.returncode != 0:
        raise AssertionError(f"{argv[0]} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


class Mapper:
    """Volumes mapped by systemd-cryptsetup under /dev/mapper; all detached when the test ends."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def attach(
        self, name: str, image: Path, options: str, *, env: dict[str, str] | None = None, input: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        """What boot runs: `systemd-cryptsetup attach NAME IMAGE - OPTIONS` (headless: never asks)."""
        self._remember(name)
        return run([SYSTEMD_CRYPTSETUP, "attach", name, image, "-", options], env=env, input=input)

    def open_token(self, name: str, image: Path, *, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`cryptsetup open --token-only`: libcryptsetup's systemd token plugins, PIN from stdin."""
        self._remember(name)
        return run(["cryptsetup", "-v", "open", "--token-only", image, name], input=input)

    def _remember(self, name: str) -> None:
        if name not in self.names:
            self.names.append(name)

    def detach(self, name: str) -> None:
        if self.mapped(name):
            run([SYSTEMD_CRYPTSETUP, "detach", name], check=True)
        # udev may still hold the node for a moment
        for _ in range(50):
            if not self.mapped(name):
                return
            time.sleep(0.1)
        raise AssertionError(f"/dev/mapper/{name} is still there after detach")

    @staticmethod
    def mapped(name: str) -> bool:
        return run(["dmsetup", "info", name]).returncode == 0

    def cleanup(self) -> None:
        for name in reversed(self.names):
            if self.mapped(name):
                run(["umount", "-l", f"/dev/mapper/{name}"])
                run([SYSTEMD_CRYPTSETUP, "detach", name])


def write_through(name: str, mountpoint: Path, text: str) -> None:
    """A fresh ext4 on /dev/mapper/NAME with one file: what a user's data is to the volume."""
    run(["mkfs.ext4", "-q", "-F", f"/dev/mapper/{name}"], check=True)
    mountpoint.mkdir(parents=True, exist_ok=True)
    run(["mount", f"/dev/mapper/{name}", mountpoint], check=True)
    try:
        (mountpoint / "note.txt").write_text(text)
    finally:
        run(["umount", mountpoint], check=True)


def read_through(name: str, mountpoint: Path) -> str:
    mountpoint.mkdir(parents=True, exist_ok=True)
    run(["mount", "-o", "ro", f"/dev/mapper/{name}", mountpoint], check=True)
    try:
        return (mountpoint / "note.txt").read_text()
    finally:
        run(["umount", mountpoint], check=True)


# ------------------------------------------------------------------ pam_u2f through libfido2
PAM_ORIGIN = "pam://yktool-vm"


def pamtester(
    tmp_path: Path, authfile: Path, *, options: str = "", input: str = "", origin: str = PAM_ORIGIN
) -> tuple[bool, str]:
    """`pamtester yktest root authenticate` against `auth required pam_u2f.so …` in a private
    mount namespace whose /etc/pam.d is a scratch folder; (accepted, output)."""
    pamd = tmp_path / "pam.d"
    pamd.mkdir(exist_ok=True)
    (pamd / "yktest").write_text(f"auth required pam_u2f.so authfile={authfile} origin={origin} cue {options}\n")
    script = 'mount --bind "$1" /etc/pam.d && exec pamtester yktest root authenticate'
    r = run(["unshare", "-m", "sh", "-c", script, "sh", pamd], input=input, timeout=90)
    output = r.stdout + r.stderr
    return r.returncode == 0 and "successfully authenticated" in output, output


# ------------------------------------------------------------------ the emulated key (uhid)
@dataclass
class Key(PluggedKey):
    """`yktool key emulate` running: the software key at `state` plugged in as `hidraw`."""

    pid: int
    state: Path
    log: Path
    status: int | None = None

    def _reap(self, flags: int = 0) -> bool:
        if self.status is not None:
            return True
        pid, raw = os.waitpid(self.pid, flags)
        if pid == 0:
            return False
        self.status = os.waitstatus_to_exitcode(raw)
        return True

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM: a clean unplug (UHID_DESTROY); the exit status."""
        if not self._reap(os.WNOHANG):
            os.kill(self.pid, signal.SIGTERM)
            deadline = time.monotonic() + timeout
            while not self._reap(os.WNOHANG):
                if time.monotonic() > deadline:
                    self.pull()
                    raise AssertionError(f"the emulator of {self.state.name} did not stop on SIGTERM")
                time.sleep(0.05)
        assert self.status is not None
        return self.status

    def pull(self) -> None:
        """The key yanked out: SIGKILL, the kernel drops the device when /dev/uhid closes."""
        if not self._reap(os.WNOHANG):
            os.kill(self.pid, signal.SIGKILL)
            self._reap()

    def gone(self, timeout: float = 30.0) -> bool:
        """The hidraw node has disappeared (the kernel saw the unplug)."""
        deadline = time.monotonic() + timeout
        while Path(self.hidraw).exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        return not Path(self.hidraw).exists()


def fork_cli(
    argv: Sequence[str], *, stdout: int | Path, stderr: Path, stdin: Path | None = None, close: Sequence[int] = ()
) -> int:
    """`yktool ARGV` in a fork of this process (stdin a file or /dev/null, stdout an fd or a file,
    stderr a file; `close`: the parent's fds the child must not hold, e.g. a pipe's read end): the
    real CLI, only without a fresh interpreter (importing fido2 and yktool costs ~6 s each time
    under TCG). The child's pid; it never returns into pytest."""
    pid = os.fork()
    if pid:
        return pid
    code = 70
    try:
        for fd in close:
            os.close(fd)
        os.dup2(os.open(stdin or os.devnull, os.O_RDONLY), 0)
        out = stdout if isinstance(stdout, int) else os.open(stdout, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
        os.dup2(out, 1)
        os.dup2(os.open(stderr, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600), 2)
        sys.stdin = open(0, closefd=False)  # the child's own, until os._exit
        sys.stdout = open(1, "w", buffering=1, closefd=False)
        sys.stderr = open(2, "w", buffering=1, closefd=False)
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        from yktool.cli import main_group

        main_group.main(args=list(argv), prog_name="yktool")
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # noqa: B036, BLE001 - the child must never return into pytest
        traceback.print_exc()
    finally:
        with suppress(Exception):
            sys.stdout.flush()
            sys.stderr.flush()
        os._exit(code)


def wait_exit(pid: int, timeout: float) -> int | None:
    """The exit status of a forked child, or None if it is still running after `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        done, raw = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(raw)
        if time.monotonic() > deadline:
            return None
        time.sleep(0.1)


def plug(state: Path, scratch: Path, *, touch: str = "auto", timeout: float = 120.0) -> Key:
    """Run `yktool --json key emulate --device sim:STATE --touch T --control SOCK` and wait for its line.

    The command runs in a fork of this process: the real CLI, entry point to uhid, only without
    a fresh interpreter (importing fido2 and yktool costs ~6 s each time under TCG). One test
    (test_fido2_hid) starts it as `python -m yktool` too.
    """
    scratch.mkdir(parents=True, exist_ok=True)
    ctl, log = scratch / f"{state.stem}.ctl", scratch / f"{state.stem}.log"
    with suppress(FileNotFoundError):
        ctl.unlink()
    argv = ["--json", "key", "emulate", "--device", f"sim:{state}", "--touch", touch, "--control", str(ctl)]
    r, w = os.pipe()
    pid = fork_cli(argv, stdout=w, stderr=log, close=[r])
    os.close(w)
    line = b""
    deadline = time.monotonic() + timeout
    try:
        while not line.endswith(b"\n") and time.monotonic() < deadline:
            ready, _, _ = select.select([r], [], [], 0.2)
            if ready:
                chunk = os.read(r, 4096)
                if not chunk:
                    break
                line += chunk
    finally:
        os.close(r)
    try:
        info = json.loads(line)
    except ValueError:
        info = None
    if not isinstance(info, dict) or "hidraw" not in info:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError(f"yktool key emulate made no device: {line!r}\n{log.read_text(errors='replace')}")
    return Key(
        hidraw=str(info["hidraw"]), serial=str(info["serial"]), control_path=str(ctl), pid=pid, state=state, log=log
    )


# ------------------------------------------------------------------ touches per consumer step
TOUCH_LOG: list[tuple[str, int, int, int]] = []  # (step, requested, approved, denied)


@contextmanager
def touches(key: Key, step: str) -> Iterator[None]:
    """Count what the emulated key saw while a consumer ran: printed at the end of the tier."""
    before = key.counts()
    yield
    record_touches(step, before, key.counts() if key.status is None else before)


def record_touches(step: str, before: dict[str, int], after: dict[str, int]) -> None:
    """One TOUCH_LOG line from two readings of a key's counts (a step that spans an unplug reads
    them itself, before the emulator stops)."""
    requested, approved, denied = (after.get(k, 0) - before.get(k, 0) for k in ("requested", "approved", "denied"))
    TOUCH_LOG.append((step, requested, approved, denied))
