"""Hardware tests: every promise proven on a real key. Opt-in, one named key, never the host's
disks, PAM or SSH (image files and temporary roots only).

    pytest hardware-tests --hardware --serial 12345678      # or --device hid:/dev/hidraw3

Without --hardware every test is collected and skipped with the reason. See
docs/hardware-tests.md.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fido2.ctap2.pin import ClientPin

from yktool.fido.interaction import KeyInteraction

sys.path.insert(0, str(Path(__file__).parent))

from hwgate import (
    Candidate,
    GateOptions,
    GateRefused,
    check_unused,
    read_facts,
    select_key,
    skip_reason,
    unmet,
)


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("yktool hardware")
    group.addoption("--hardware", action="store_true", help="run the tests on a real key")
    group.addoption("--serial", help="the YubiKey serial the run may touch")
    group.addoption("--device", dest="hw_device", help="hid:/dev/hidrawN the run may touch")
    group.addoption("--allow-used-key", action="store_true",
                    help="accept a key that has a PIN or holds credentials")
    group.addoption("--destructive", action="store_true", help="allow tests that reset the key")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "requires(min_firmware=None, algorithms=(), extensions=()): skip unless the key has it",
    )
    config.addinivalue_line("markers", "destructive: resets the key; needs --destructive")
    config.addinivalue_line("markers", "real_key_only: needs libfido2 or sysfs; skipped when rehearsing on sim:")


def gate_options(config: pytest.Config) -> GateOptions:
    return GateOptions(
        hardware=bool(config.getoption("--hardware")),
        serial=config.getoption("--serial"),
        device=config.getoption("hw_device"),
        allow_used_key=bool(config.getoption("--allow-used-key")),
        destructive=bool(config.getoption("--destructive")),
    )


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    reason = skip_reason(gate_options(config))
    if reason is None:
        return
    for item in items:
        item.add_marker(pytest.mark.skip(reason=reason))


def find_candidates(device: str | None = None) -> list[Candidate]:
    """Every FIDO2 HID key on this machine, with its YubiKey serial where one can be read.

    `--device sim:PATH` rehearses the suite on the software key (to check the tests themselves);
    tests that need libfido2 or sysfs are then skipped (marker `real_key_only`).
    """
    if device and device.startswith("sim:"):
        from yktool.fido import open_device

        return [Candidate(spec=device, serial=None, open=lambda: open_device(device),
                          product="yktool software key")]
    from fido2.hid import CtapHidDevice

    from yktool.fido.yubikey import serial_for_hidraw

    found = []
    for dev in CtapHidDevice.list_devices():
        path = dev.descriptor.path
        found.append(Candidate(spec=f"hid:{path}", serial=serial_for_hidraw(path),
                               open=lambda d=dev: d, product=dev.descriptor.product_name or ""))
    return found


def announce(config: pytest.Config, message: str) -> None:
    """Print past pytest's capture, so touch prompts reach the person at once."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            print(f"\n>>> {message}", flush=True)
    else:
        print(f"\n>>> {message}", flush=True)


@pytest.fixture(scope="session")
def hw_key(pytestconfig: pytest.Config) -> Iterator[Candidate]:
    """The one key under test; refuses the whole run on any doubt."""
    opts = gate_options(pytestconfig)
    try:
        key = select_key(opts, find_candidates(opts.device))
        check_unused(opts, read_facts(key.open()))
    except GateRefused as refusal:
        pytest.exit(f"hardware tests refused to start: {refusal.reason}", returncode=4)
    yield key


def firmware_of(key: Candidate) -> tuple[int, int, int] | None:
    """The YubiKey firmware as a tuple, through yubikey-manager; None when it cannot tell."""
    from yktool.fido.yubikey import read_facts as yubikey_facts

    facts = yubikey_facts(key.open())
    if facts is None or not facts.firmware:
        return None
    parts = [int(p) for p in facts.firmware.split(".")[:3] if p.isdigit()]
    return (parts + [0, 0, 0])[:3] if parts else None  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def _capabilities(request: pytest.FixtureRequest) -> None:
    if request.node.get_closest_marker("real_key_only") is not None:
        device = request.config.getoption("hw_device") or ""
        if device.startswith("sim:"):
            pytest.skip("needs a real key: libfido2 and sysfs cannot see the software key")
    marker = request.node.get_closest_marker("requires")
    if marker is None:
        return
    key: Candidate = request.getfixturevalue("hw_key")
    why = unmet(read_facts(key.open(), firmware_of(key)), **marker.kwargs)
    if why:
        pytest.skip(why)


@pytest.fixture
def touch(pytestconfig: pytest.Config) -> Any:
    """touch(n): tell the person how many touches this test still needs."""

    def say(left: int) -> None:
        announce(pytestconfig, f"touch the key now ({left} touch{'es' if left != 1 else ''} left in this test)")

    return say


class Person(KeyInteraction):
    """The person at the key: touches are announced past pytest's capture; the PIN is asked on
    the terminal once per run and kept in memory for the rest of it."""

    pin: str | None = None  # shared by every session of the run

    def __init__(self, touch: Any) -> None:
        self.touch = touch
        self.asked = 0

    def prompt_up(self) -> None:
        self.touch(1)

    def request_pin(self, permissions: ClientPin.PERMISSION, rp_id: str | None) -> str | None:
        if Person.pin is None:
            self.asked += 1
            Person.pin = getpass.getpass("\nPIN of the key under test: ")
        return Person.pin


@pytest.fixture
def person(touch: Any) -> Person:
    return Person(touch)


@pytest.fixture
def session(hw_key: Candidate, person: Person) -> Any:
    """A KeySession on the key under test."""
    from yktool.fido.session import KeySession

    return KeySession(hw_key.open(), person)


@pytest.fixture
def yktool_cmd(hw_key: Candidate) -> list[str]:
    """argv prefix that runs this checkout's yktool against the key under test."""
    return [str(Path(sys.executable).parent / "yktool"), "--device", hw_key.spec]
