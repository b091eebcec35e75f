"""The emulated key's control socket: a unix stream socket taking one command per line.

Each command gets one reply line, `ok …` or `err …` (ASCII, `\\n`-terminated):

    status                 ok policy=ask waiting=0 requested=2 approved=1 denied=0 timed_out=0 cancelled=1
    approve                ok approved          (touch the waiting request; err when none waits)
    deny                   ok denied            (refuse it: CTAP2_ERR_OPERATION_DENIED)
    wait [SECONDS]         ok waiting           (block until a touch is requested; default 30 s)
    policy auto|deny|timeout|ask
                           ok policy=auto       (how later touch requests are answered)
    unplug                 ok unplugging        (pull the key: UHID_DESTROY, the emulator exits 0)
    help                   ok commands: …

The socket is made mode 0600 (whoever can write to it can touch the key).
"""

from __future__ import annotations

import os
import socket
import socketserver
import stat
import threading
from collections.abc import Callable
from contextlib import suppress
from pathlib import Path

from yktool.errors import UsageError
from yktool.fido.touch import TouchGate, TouchPolicy

COMMANDS = "status approve deny wait policy unplug help"
MAX_LINE = 256


def _status(gate: TouchGate) -> str:
    counts = " ".join(f"{k}={v}" for k, v in gate.counts().to_json().items())
    return f"ok policy={gate.policy.value} waiting={int(gate.waiting)} {counts}"


def run_command(gate: TouchGate, line: str, unplug: Callable[[], None]) -> str:
    """The reply to one command line (without the newline)."""
    words = line.split()
    if not words:
        return "err empty command; try help"
    cmd, args = words[0].lower(), words[1:]
    if cmd in ("status", "counts"):
        return _status(gate)
    if cmd in ("approve", "deny"):
        if gate.answer(cmd == "approve"):
            return "ok approved" if cmd == "approve" else "ok denied"
        return "err no touch request is waiting"
    if cmd == "wait":
        try:
            seconds = float(args[0]) if args else 30.0
        except ValueError:
            return f"err wait takes seconds, not {args[0]!r}"
        return "ok waiting" if gate.wait_for_request(seconds) else f"err no touch requested within {seconds:g} s"
    if cmd == "policy":
        try:
            gate.policy = TouchPolicy(args[0].lower() if args else "")
        except ValueError:
            return "err policy takes one of auto, deny, timeout, ask"
        return f"ok policy={gate.policy.value}"
    if cmd == "unplug":
        unplug()
        return "ok unplugging"
    if cmd == "help":
        return f"ok commands: {COMMANDS}"
    return f"err unknown command {cmd!r}; commands: {COMMANDS}"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    gate: TouchGate
    unplug: Callable[[], None]


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        while True:
            raw = self.rfile.readline(MAX_LINE)
            if not raw:
                return
            line = raw.decode("ascii", "replace").strip()
            reply = run_command(self.server.gate, line, self.server.unplug)
            try:
                self.wfile.write(reply.encode() + b"\n")
                self.wfile.flush()
            except OSError:
                return


def check_control_path(path: str | Path) -> None:
    """UsageError unless a new socket can be made at `path` (nothing is there; its folder is)."""
    p = Path(path)
    if os.path.lexists(p):
        raise UsageError(
            f"the control socket path {p} already exists",
            "remove it (if no emulator uses it) or choose another --control PATH",
        )
    if not p.parent.is_dir():
        raise UsageError(
            f"the folder of the control socket {p} does not exist", "create it first, or choose another --control PATH"
        )


class ControlSocket:
    """Serves the control protocol at `path` in a background thread until `close()`."""

    def __init__(self, path: str | Path, gate: TouchGate, unplug: Callable[[], None]) -> None:
        self.path = Path(path)
        check_control_path(self.path)
        old = os.umask(0o177)  # the socket is born 0600: nobody else may touch the key
        try:
            self._server = _Server(str(self.path), _Handler)
        except OSError as e:
            raise UsageError(
                f"cannot make the control socket {self.path}: {e.strerror or e}", "choose another --control PATH"
            ) from None
        finally:
            os.umask(old)
        self._server.gate = gate
        self._server.unplug = unplug
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.1,), name="emulator-control", daemon=True
        )
        self._thread.start()

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        try:
            if stat.S_ISSOCK(os.lstat(self.path).st_mode):
                os.unlink(self.path)
        except OSError:
            pass


def control(path: str | Path, line: str, timeout: float = 60.0) -> str:
    """Send one command to an emulator's control socket; its reply line. (`wait N` may take
    N seconds: the timeout is stretched to cover it.)"""
    words = line.split()
    if len(words) == 2 and words[0].lower() == "wait":
        with suppress(ValueError):
            timeout = max(timeout, float(words[1]) + 10)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(timeout)
        s.connect(str(path))
        s.sendall(line.strip().encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = s.recv(1024)
            if not chunk:
                break
            reply += chunk
    return reply.decode("ascii", "replace").strip()


def touch_counts(path: str | Path, timeout: float = 60.0) -> dict[str, int]:
    """The emulator's touch counts from `status`: requested, approved, denied, timed_out,
    cancelled (and waiting)."""
    reply = control(path, "status", timeout)
    return {k: int(v) for k, v in (w.split("=", 1) for w in reply.split()[1:]) if v.isdigit()}
