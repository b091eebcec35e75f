"""A software TPM (swtpm) on 127.0.0.1: for the demo, for rehearsing a flow, and for the tests.

`start` launches `swtpm socket` on a free loopback port pair (server P, control P+1) with its
state in a folder under the root, relaxes the dictionary-attack lockout (swtpm locks for 1000 s
after 3 failures, and an unclean reset counts as one), and returns a handle; `stop` ends it.
A second `start` on the same folder finds the running one and reuses it, so re-runs are
idempotent. `reboot` simulates a power cycle (PCRs back to zero), `measure_boot` what firmware
measures into PCRs 0 and 7 on the way up.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from yktool.errors import ToolFailed
from yktool.host import Host
from yktool.tpm import Tcti, connect, extend_pcr, parse_tcti

STATE_FILE = "yktool-swtpm.json"
PID_FILE = "swtpm.pid"


@dataclass
class SwTpm:
    """A running swtpm: its state folder (real path), server port and process id."""

    state_dir: Path
    port: int
    pid: int

    @property
    def tcti_spec(self) -> str:
        """The TCTI string for `--tpm` and systemd's `--tpm2-device=`."""
        return f"swtpm:host=127.0.0.1,port={self.port}"

    @property
    def tcti(self) -> Tcti:
        return parse_tcti(self.tcti_spec)

    @property
    def ctrl_port(self) -> int:
        return self.port + 1

    def alive(self) -> bool:
        """True while the process runs and is still our swtpm (pid not reused)."""
        try:
            cmdline = Path(f"/proc/{self.pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False
        return bool(cmdline) and cmdline[0].endswith(b"swtpm") and f"dir={self.state_dir}".encode() in cmdline


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_port_pair() -> int:
    """A port P with P and P+1 both free on 127.0.0.1."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        if port < 65535 and _port_free(port + 1):
            return port
    raise ToolFailed("no free port pair on 127.0.0.1 for swtpm", "close some listening programs and retry")


def _wait_listening(port: int, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        if time.monotonic() > deadline:
            raise ToolFailed(
                f"swtpm did not start listening on 127.0.0.1:{port}",
                "check that swtpm runs by hand: swtpm socket --tpm2 …",
            )
        time.sleep(0.01)


def _existing(state_dir: Path) -> SwTpm | None:
    try:
        saved = json.loads((state_dir / STATE_FILE).read_text())
        tpm = SwTpm(state_dir, int(saved["port"]), int(saved["pid"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return tpm if tpm.alive() else None


def relax_lockout(tcti: Tcti) -> None:
    """Clear the dictionary-attack lockout and allow 32 failures with no recovery wait.

    Only for a software TPM used to rehearse: a real TPM's lockout protects its PINs.
    """
    from tpm2_pytss.constants import ESYS_TR

    with connect(tcti) as ctx:
        ctx.dictionary_attack_lock_reset(ESYS_TR.LOCKOUT)
        ctx.dictionary_attack_parameters(32, 0, 0, ESYS_TR.LOCKOUT)


def start(host: Host, state_dir: str | PurePosixPath) -> SwTpm:
    """Start (or find already running) a swtpm with its state in `state_dir` (inside the root)."""
    real_dir = host.mkdir(state_dir, 0o700)
    running = _existing(real_dir)
    if running is not None:
        relax_lockout(running.tcti)
        return running
    last_error = ToolFailed("swtpm failed to start", "check that swtpm (Debian package swtpm) works")
    for _ in range(5):  # another program may take the port between the check and swtpm's bind
        port = free_port_pair()
        pid_file = real_dir / PID_FILE
        with contextlib.suppress(FileNotFoundError):
            pid_file.unlink()
        result = host.run(
            [
                "swtpm",
                "socket",
                "--daemon",
                "--tpm2",
                "--pid",
                f"file={pid_file}",
                "--tpmstate",
                f"dir={real_dir}",
                "--server",
                f"type=tcp,port={port},bindaddr=127.0.0.1",
                "--ctrl",
                f"type=tcp,port={port + 1},bindaddr=127.0.0.1",
                "--flags",
                "not-need-init,startup-clear",
            ],
            check=False,
            timeout=30,
        )
        if result.returncode != 0:
            last_error = ToolFailed(
                f"swtpm failed to start: {result.error_text or 'no message'}",
                "check that swtpm (Debian package swtpm) is installed and works",
            )
            continue
        deadline = time.monotonic() + 15
        while not pid_file.exists() or not pid_file.read_text().strip():
            if time.monotonic() > deadline:
                raise ToolFailed("swtpm started but wrote no pid file", "check swtpm by hand")
            time.sleep(0.01)
        tpm = SwTpm(real_dir, port, int(pid_file.read_text().strip()))
        _wait_listening(port)
        host.write_file(
            PurePosixPath(str(state_dir)) / STATE_FILE, json.dumps({"port": port, "pid": tpm.pid}), 0o600, backup=False
        )
        relax_lockout(tpm.tcti)
        return tpm
    raise last_error


def stop(tpm: SwTpm, timeout: float = 5.0) -> bool:
    """Stop the swtpm (SIGTERM, then SIGKILL); False when it was not running."""
    if not tpm.alive():
        return False
    os.kill(tpm.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while tpm.alive():
        if time.monotonic() > deadline:
            os.kill(tpm.pid, signal.SIGKILL)
            break
        time.sleep(0.01)
    with contextlib.suppress(FileNotFoundError):
        (tpm.state_dir / STATE_FILE).unlink()
    return True


def reboot(host: Host, tpm: SwTpm) -> None:
    """A clean power cycle: TPM2_Shutdown, the platform's reset (CMD_INIT), TPM2_Startup.

    Every PCR is back to its reset value (all zero for 0-15), as after a real reboot.
    """
    from tpm2_pytss.constants import TPM2_SU
    from tpm2_pytss.TSS2_Exception import TSS2_Exception

    with connect(tpm.tcti) as ctx:
        ctx.shutdown(TPM2_SU.CLEAR)
    host.run(["swtpm_ioctl", "--tcp", f"127.0.0.1:{tpm.ctrl_port}", "-i"])
    with connect(tpm.tcti) as ctx:
        try:
            ctx.startup(TPM2_SU.CLEAR)
        except TSS2_Exception as exc:  # swtpm may have started itself already
            if "initialize" not in str(exc).lower():
                raise


def measure_boot(
    tpm: SwTpm | Tcti,
    firmware: bytes = b"yktool simulated firmware 1.0",
    secure_boot_policy: bytes = b"yktool simulated Secure Boot db",
) -> None:
    """Simulate what UEFI firmware measures on a measured boot: PCR 0 (firmware), PCR 7 (policy)."""
    tcti = tpm.tcti if isinstance(tpm, SwTpm) else tpm
    extend_pcr(tcti, 0, firmware)
    extend_pcr(tcti, 7, secure_boot_policy)
