"""The hardware suite's gating (flags, serial pinning, refusals), proven before a key is plugged in."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.fido import SimKey

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "hardware-tests"))

from hwgate import (  # noqa: E402
    NAME_THE_KEY,
    OPT_IN,
    Candidate,
    GateOptions,
    GateRefused,
    KeyFacts,
    check_destructive,
    check_unused,
    select_key,
    skip_reason,
    unmet,
)


def candidate(spec: str, serial: str | None = None) -> Candidate:
    return Candidate(spec=spec, serial=serial, open=lambda: None, product="key")


def test_without_hardware_flag_everything_is_skipped_with_the_reason() -> None:
    assert skip_reason(GateOptions()) == OPT_IN
    assert skip_reason(GateOptions(hardware=True)) == NAME_THE_KEY
    assert skip_reason(GateOptions(hardware=True, serial="123")) is None
    assert skip_reason(GateOptions(hardware=True, device="hid:/dev/hidraw0")) is None


def test_refuses_no_key_and_two_keys() -> None:
    opts = GateOptions(hardware=True, serial="111")
    with pytest.raises(GateRefused, match="no FIDO2 key"):
        select_key(opts, [])
    with pytest.raises(GateRefused, match="2 keys are plugged in"):
        select_key(opts, [candidate("hid:/dev/hidraw0", "111"), candidate("hid:/dev/hidraw1", "222")])


def test_serial_and_path_pinning() -> None:
    key = candidate("hid:/dev/hidraw4", "111")
    assert select_key(GateOptions(hardware=True, serial="111"), [key]) is key
    with pytest.raises(GateRefused, match="serial mismatch: --serial 222"):
        select_key(GateOptions(hardware=True, serial="222"), [key])
    with pytest.raises(GateRefused, match="not hid:/dev/hidraw9"):
        select_key(GateOptions(hardware=True, device="hid:/dev/hidraw9"), [key])
    unknown = candidate("hid:/dev/hidraw4", None)
    with pytest.raises(GateRefused, match="unknown"):
        select_key(GateOptions(hardware=True, serial="111"), [unknown])


def test_used_key_refused_unless_allowed() -> None:
    check_unused(GateOptions(), KeyFacts(pin_set=False, resident_credentials=0))
    with pytest.raises(GateRefused, match="PIN set"):
        check_unused(GateOptions(), KeyFacts(pin_set=True))
    with pytest.raises(GateRefused, match="3 discoverable"):
        check_unused(GateOptions(), KeyFacts(resident_credentials=3))
    check_unused(GateOptions(allow_used_key=True), KeyFacts(pin_set=True, resident_credentials=3))


def test_destructive_needs_flag_and_typed_confirmation() -> None:
    with pytest.raises(GateRefused, match="--destructive"):
        check_destructive(GateOptions(), lambda _: "RESET")
    with pytest.raises(GateRefused, match="not confirmed"):
        check_destructive(GateOptions(destructive=True), lambda _: "yes")
    check_destructive(GateOptions(destructive=True), lambda _: "RESET\n")


def test_capability_conditions() -> None:
    facts = KeyFacts(firmware=(5, 2, 7), algorithms={-7}, extensions={"hmac-secret"})
    assert unmet(facts, min_firmware=(5, 2, 0)) is None
    assert unmet(facts, min_firmware=(5, 7, 0)) == "needs firmware 5.7.0+, key has 5.2.7"
    assert "algorithm -8" in (unmet(facts, algorithms=[-8]) or "")
    assert "credProtect" in (unmet(facts, extensions=["credProtect"]) or "")
    assert "unknown" in (unmet(KeyFacts(), min_firmware=(5, 0, 0)) or "")


def test_sim_keys_as_candidates_facts_come_from_the_key(sim_key: SimKey) -> None:
    """Facts read through KeySession from software keys drive the refusals as a real key's would."""
    from hwgate import read_facts  # the hardware suite's own reader
    from yktool.fido import open_device

    fresh, used = sim_key("fresh"), sim_key("used", pin="123456")
    fresh_facts = read_facts(open_device(fresh))
    used_facts = read_facts(open_device(used))
    check_unused(GateOptions(), fresh_facts)
    with pytest.raises(GateRefused, match="PIN set"):
        check_unused(GateOptions(), used_facts)
    assert -7 in fresh_facts.algorithms and "hmac-secret" in fresh_facts.extensions


def test_suite_collected_and_skipped_without_flag_and_not_by_readme_command() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "hardware-tests"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stdout + out.stderr
    assert "hardware tests are opt-in" in out.stdout
    assert " passed" not in out.stdout and "skipped" in out.stdout


def test_rehearsal_on_a_software_key_runs_and_then_refuses_it_once_used(sim_key: SimKey) -> None:
    """`--device sim:PATH` runs the hardware suite's own tests on the software key (those needing
    libfido2 or sysfs skip), and the used-key refusal stops a run on a key that has a PIN."""
    fresh = sim_key("rehearsal")
    argv = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-rs",
        "-p",
        "no:cacheprovider",
        "hardware-tests",
        "--hardware",
        "--device",
        fresh,
    ]
    first = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stdout[-3000:]
    assert " passed" in first.stdout and "needs a real key" in first.stdout
    used = sim_key("used-already", pin="123456")
    refused = subprocess.run(argv[:-1] + [used], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert refused.returncode == 4
    assert "refused to start: the key has a PIN set" in refused.stdout + refused.stderr
