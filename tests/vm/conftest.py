"""The VM tier's fixtures: only ever loaded inside scripts/test-vm's guest (tests/conftest.py refuses
tests/vm anywhere else). Helpers are in tests/vm/support.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.vm.support import TOUCH_LOG, TPM, Key, Mapper, plug, run


@pytest.fixture(scope="session", autouse=True)
def vm_kernel() -> None:
    """Kernel modules the tier needs, and a TPM that does not lock out after the wrong-PIN tests."""
    run(["modprobe", "-a", "loop", "dm_crypt", "ext4", "uhid"], check=True)
    run(["tpm2_dictionarylockout", "-T", TPM, "--clear-lockout"], check=True)
    run(
        [
            "tpm2_dictionarylockout",
            "-T",
            TPM,
            "--setup-parameters",
            "--max-tries=32",
            "--recovery-time=0",
            "--lockout-recovery-time=0",
        ],
        check=True,
    )


@pytest.fixture
def mapper() -> Iterator[Mapper]:
    m = Mapper()
    try:
        yield m
    finally:
        m.cleanup()


class Keys:
    """Plug software keys in as USB-HID devices; every one still plugged is unplugged at the end."""

    def __init__(self, scratch: Path) -> None:
        self.scratch = scratch
        self.running: list[Key] = []

    def __call__(self, spec: str, touch: str = "auto") -> Key:
        key = plug(Path(spec.removeprefix("sim:")), self.scratch, touch=touch)
        self.running.append(key)
        return key

    def cleanup(self) -> None:
        plugged = [key for key in self.running if key.status is None]
        for key in plugged:
            key.stop()
        # only those: a node of a key stopped earlier may be another key's by now
        for key in plugged:
            key.gone()


@pytest.fixture
def keys(tmp_path: Path) -> Iterator[Keys]:
    """`keys(sim_key("a"))` -> a plugged-in Key (hidraw, serial, control, stop, pull)."""
    k = Keys(tmp_path / "emulated")
    try:
        yield k
    finally:
        k.cleanup()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not TOUCH_LOG:
        return
    terminalreporter.section("touches the emulated key saw, per consumer step")
    for step, requested, approved, denied in TOUCH_LOG:
        terminalreporter.write_line(f"{requested:>3} requested {approved:>3} approved {denied:>3} denied  {step}")
