"""Attack: a FIFO named *.nix in the user's flake checkout, read by root's `nixos module --flake`."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from types import FrameType

from tests.conftest import CliCall


class TooSlow(BaseException):  # not an OSError: the scanner would take that for a bad file
    pass


def _too_slow(_sig: int, _frame: FrameType | None) -> None:
    raise TooSlow("nixos module still blocked on the FIFO after 5 s")


def test_a_fifo_in_the_flake_never_hangs_the_module(tmp_path: Path, cli: CliCall) -> None:
    root = tmp_path / "root"
    (root / "etc").mkdir(parents=True)
    flake = tmp_path / "flake"
    flake.mkdir()
    (flake / "flake.nix").write_text("{ outputs = { ... }: { }; }\n")
    os.mkfifo(flake / "hosts.nix")  # alice's checkout: nobody ever writes to it
    for p in (flake, flake / "flake.nix", flake / "hosts.nix"):
        os.chown(p, 1000, 1000)
    old = signal.signal(signal.SIGALRM, _too_slow)
    signal.alarm(5)
    try:
        r = cli("--root", root, "--dry-run", "nixos", "module", "--flake", flake)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)
    assert "Traceback" not in r.stdout + r.stderr
    assert "hosts.nix" in r.stderr  # said to be skipped, not silently read
