"""The VM tier's helpers: only ever loaded inside scripts/test-vm's guest (tests/conftest.py refuses
tests/vm anywhere else), where / is the host's read-only and /tmp, /run are the guest's tmpfs.

Everything here drives the real kernel: dm-crypt maps volumes, /dev/tpmrm0 is swtpm as the VM's
TPM chip. Each test makes its images in its own tmp_path (guest tmpfs): a LUKS image on the
results share is refused by the kernel ("not a valid LUKS device").
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

TPM = "device:/dev/tpmrm0"
SYSTEMD_CRYPTSETUP = "/lib/systemd/systemd-cryptsetup"


def run(argv: Sequence[str | Path], *, input: bytes | str | None = None, env: dict[str, str] | None = None,
        timeout: float = 120, check: bool = False) -> subprocess.CompletedProcess[str]:
    """A consumer's command, its output as text; a hang fails the test instead of the tier."""
    data = input.encode() if isinstance(input, str) else input
    proc = subprocess.run([str(a) for a in argv], input=data, capture_output=True, timeout=timeout,
                          env={**os.environ, **(env or {})}, check=False)
    out = subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout.decode(errors="replace"),
                                      proc.stderr.decode(errors="replace"))
    if check and out.returncode != 0:
        raise AssertionError(f"{argv[0]} exited {out.returncode}:\n{out.stdout}\n{out.stderr}")
    return out


class Mapper:
    """Volumes mapped by systemd-cryptsetup under /dev/mapper; all detached when the test ends."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def attach(self, name: str, image: Path, options: str, *, env: dict[str, str] | None = None,
               input: str | None = None) -> subprocess.CompletedProcess[str]:
        """What boot runs: `systemd-cryptsetup attach NAME IMAGE - OPTIONS` (headless: never asks)."""
        self.names.append(name)
        return run([SYSTEMD_CRYPTSETUP, "attach", name, image, "-", options], env=env, input=input)

    def open_token(self, name: str, image: Path, *, input: str | None = None) -> subprocess.CompletedProcess[str]:
        """`cryptsetup open --token-only`: libcryptsetup's systemd token plugins, PIN from stdin."""
        self.names.append(name)
        return run(["cryptsetup", "-v", "open", "--token-only", image, name], input=input)

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
