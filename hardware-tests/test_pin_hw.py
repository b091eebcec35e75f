"""`yktool key pin` on a real key. Setting a PIN is permanent (only a reset removes it), so these
tests need --destructive and run last (conftest), so no other test meets the PIN they leave; the
wrong-PIN test spends one attempt and gives it back with the right PIN."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from hwgate import Candidate, GateOptions, GateRefused, check_destructive, read_facts

PIN, NEW_PIN = "246810", "135791"


def _yk(cmd: list[str], *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run([*cmd, *args], input=stdin, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def fresh_pin(pytestconfig: pytest.Config, hw_key: Candidate, confirm: Callable[[str], str]) -> None:
    opts = GateOptions(destructive=bool(pytestconfig.getoption("--destructive")))
    try:
        check_destructive(opts, confirm)
    except (GateRefused, OSError) as refusal:
        pytest.skip(str(refusal))
    with hw_key.open() as device:
        pin_set = read_facts(device).pin_set
    if pin_set:
        pytest.skip("the key already has a PIN: reset it first (yktool key reset) to run the PIN tests")


@pytest.mark.destructive
def test_pin_set_change_verify(fresh_pin: None, yktool_cmd: list[str], tmp_path: Path) -> None:
    assert _yk(yktool_cmd, "key", "pin", "set", "--pin-stdin", stdin=f"{PIN}\n").returncode == 0
    assert _yk(yktool_cmd, "key", "pin", "verify", "--pin-stdin", stdin=f"{PIN}\n").returncode == 0
    wrong = _yk(yktool_cmd, "key", "pin", "verify", "--pin-stdin", stdin="000000\n")
    assert wrong.returncode == 6 and "7 attempts left" in wrong.stderr
    assert _yk(yktool_cmd, "key", "pin", "change", "--pin-stdin", stdin=f"{PIN}\n{NEW_PIN}\n").returncode == 0
    assert _yk(yktool_cmd, "key", "pin", "verify", "--pin-stdin", stdin=f"{NEW_PIN}\n").returncode == 0
    info = json.loads(_yk(yktool_cmd, "--json", "key", "info").stdout)
    assert info["pin_set"] is True and info["pin_retries"] == 8


def test_short_pin_refused_before_the_key_is_asked(yktool_cmd: list[str], touch: Any) -> None:
    result = _yk(yktool_cmd, "key", "pin", "verify", "--pin-stdin", stdin="12\n")
    assert result.returncode == 2
