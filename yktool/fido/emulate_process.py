"""Run `yktool key emulate` as a child process: for tests and scripts that need the emulated key
plugged in while something else (libfido2, systemd, ssh) uses it.

    with emulated_key(Path("/tmp/k.json")) as key:      # waits for the hidraw line
        subprocess.run(["fido2-token", "-I", key.hidraw])
        key.control("policy deny")                       # the next touch is refused
    # left: SIGTERM, the key is unplugged (UHID_DESTROY), the exit status checked

`key.pull()` is the key yanked out (SIGKILL: the kernel drops the device when /dev/uhid closes).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from yktool.fido.emulator_control import control, touch_counts


class EmulatorFailed(RuntimeError):
    """The emulator did not come up, or did not stop cleanly."""


@dataclass
class PluggedKey:
    """An emulated key plugged in: its hidraw node, serial and control socket."""

    hidraw: str
    serial: str
    control_path: str

    @property
    def spec(self) -> str:
        """The `--device` value that names the emulated key over HID."""
        return f"hid:{self.hidraw}"

    def control(self, line: str, timeout: float = 60.0) -> str:
        """One control command (see yktool.fido.emulator_control); its reply line."""
        return control(self.control_path, line, timeout)

    def counts(self) -> dict[str, int]:
        """The touch counts: requested, approved, denied, timed_out, cancelled (and waiting)."""
        return touch_counts(self.control_path)


@dataclass
class RunningEmulator(PluggedKey):
    process: subprocess.Popen[str]
    info: dict[str, object] = field(default_factory=dict)

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM: unplug and exit; the exit status (0 when it unplugged cleanly)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise EmulatorFailed(f"the emulator did not stop within {timeout:g} s after SIGTERM") from None

    def pull(self) -> None:
        """The key pulled out mid-use: SIGKILL, no goodbye (the kernel removes the device)."""
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()


def _first_line(stream: IO[str], process: subprocess.Popen[str], timeout: float) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([stream], [], [], 0.2)
        if ready:
            return stream.readline()
        if process.poll() is not None:
            return ""
    return ""


def _error_message(output: str) -> str:
    try:
        err = json.loads(output)
    except ValueError:
        return output.strip()
    return str(err.get("message", output.strip())) if isinstance(err, dict) else output.strip()


@contextmanager
def emulated_key(
    state: str | Path,
    *,
    touch: str = "auto",
    touch_timeout: float = 30.0,
    control_path: str | Path | None = None,
    yktool: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
    stderr: int | IO[str] | None = None,
    timeout: float = 180.0,
) -> Iterator[RunningEmulator]:
    """Start `yktool --json key emulate --device sim:STATE` and yield once the hidraw node exists.

    `yktool` is the command to run (default: this Python's `-m yktool`); `stderr` where the
    emulator's messages go (default: inherited); `timeout` how long to wait for the device (the
    first start in a TCG VM takes tens of seconds). On leaving, SIGTERM, and EmulatorFailed
    unless it exited 0 (a pulled key is not checked)."""
    with tempfile.TemporaryDirectory(prefix="yktool-emulate-") as scratch:
        sock = str(control_path or os.path.join(scratch, "control.sock"))
        argv = [
            *(yktool or (sys.executable, "-m", "yktool")),
            "--json",
            "key",
            "emulate",
            "--device",
            f"sim:{state}",
            "--touch",
            touch,
            "--touch-timeout",
            str(touch_timeout),
            "--control",
            sock,
        ]
        process = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env
        )
        assert process.stdout is not None  # noqa: S101 - stdout=PIPE
        line = _first_line(process.stdout, process, timeout)
        try:
            info = json.loads(line)
        except ValueError:  # nothing, or the start of a multi-line error object
            info = None
        if not isinstance(info, dict) or "hidraw" not in info:
            if process.poll() is None and not line:
                process.kill()  # still nothing after `timeout`
            rest = line + process.stdout.read()  # an error object ends with the process
            process.wait()
            process.stdout.close()
            raise EmulatorFailed(
                f"`{' '.join(argv)}` made no device (exit status {process.returncode})"
                f"{': ' + _error_message(rest) if rest.strip() else ''}"
            )
        running = RunningEmulator(
            hidraw=str(info["hidraw"]), serial=str(info["serial"]), control_path=sock, process=process, info=info
        )
        try:
            yield running
        except BaseException:
            with suppress(EmulatorFailed):
                running.stop()
            raise
        else:
            pulled = process.poll() is not None and process.returncode == -signal.SIGKILL
            status = running.stop()
            if status != 0 and not pulled:
                raise EmulatorFailed(f"the emulator exited {status} instead of 0")
        finally:
            process.stdout.close()
