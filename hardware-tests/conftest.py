"""Hardware tests: every promise proven on a real key. Opt-in, one named key, never the host's
disks, PAM or SSH (image files and temporary roots only).

    pytest hardware-tests --hardware --serial 12345678      # or --device hid:/dev/hidraw3

Without --hardware every test is collected and skipped with the reason. See
docs/hardware-tests.md.
"""

from __future__ import annotations

import getpass
import sys
from collections.abc import Callable, Iterator
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
    KeyFacts,
    check_unused,
    read_facts,
    select_key,
    skip_reason,
    unmet,
)
from hwroot import make_root, run, tool_env

SIM_SKIP = "needs a real key: libfido2 and sysfs cannot see the software key"


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("yktool hardware")
    group.addoption("--hardware", action="store_true", help="run the tests on a real key")
    group.addoption("--serial", help="the YubiKey serial the run may touch")
    group.addoption("--device", dest="hw_device", help="hid:/dev/hidrawN the run may touch")
    group.addoption("--allow-used-key", action="store_true", help="accept a key that has a PIN or holds credentials")
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
    # what a destructive test leaves (a PIN only it knows) must meet no other test: those run last
    items.sort(key=lambda item: item.get_closest_marker("destructive") is not None)
    reason = skip_reason(gate_options(config))
    if reason is None:
        if not (config.getoption("hw_device") or "").startswith("sim:"):
            return
        # a mark, not a fixture: skipped before any fixture (module-scoped ones too) is set up
        reason, items = SIM_SKIP, [item for item in items if item.get_closest_marker("real_key_only")]
    for item in items:
        item.add_marker(pytest.mark.skip(reason=reason))


def find_candidates(device: str | None = None) -> list[Candidate]:
    """Every FIDO2 HID key on this machine, with its YubiKey serial where one can be read.

    `--device sim:PATH` rehearses the suite on the software key (to check the tests themselves);
    tests that need libfido2 or sysfs are then skipped (marker `real_key_only`).
    """
    if device and device.startswith("sim:"):
        from yktool.fido import open_device

        return [Candidate(spec=device, serial=None, open=lambda: open_device(device), product="yktool software key")]
    from fido2.hid import CtapHidDevice, list_descriptors, open_connection
    from fido2.hid.base import HidDescriptor

    from yktool.fido.yubikey import serial_for_hidraw

    # opened only when used: hidraw hands every open fd each reply, so a device held open while
    # serial_for_hidraw talks to the key would later read that reply ("Wrong channel")
    def opener(desc: HidDescriptor) -> Callable[[], CtapHidDevice]:
        return lambda: CtapHidDevice(desc, open_connection(desc))  # type: ignore[no-untyped-call]

    found = []
    for desc in list_descriptors():  # type: ignore[no-untyped-call]
        found.append(
            Candidate(
                spec=f"hid:{desc.path}",
                serial=serial_for_hidraw(desc.path),
                open=opener(desc),
                product=desc.product_name or "",
            )
        )
    return found


def announce(config: pytest.Config, message: str) -> None:
    """Print past pytest's capture, so touch prompts reach the person at once."""
    capman = config.pluginmanager.getplugin("capturemanager")
    if capman is not None:
        with capman.global_and_fixture_disabled():
            print(f"\n>>> {message}", flush=True)
    else:
        print(f"\n>>> {message}", flush=True)


@pytest.fixture
def confirm(pytestconfig: pytest.Config) -> Callable[[str], str]:
    """confirm(question) -> the person's answer, read past pytest's capture (which hides stdin:
    without this a typed confirmation needed `-s`); no answer at all (end of input) is ""."""

    def ask(question: str) -> str:
        capman = pytestconfig.pluginmanager.getplugin("capturemanager")
        if capman is not None:
            capman.suspend_global_capture(in_=True)  # stdin too, as pytest's own debugger does
        try:
            return input(question)
        except EOFError:
            return ""
        finally:
            if capman is not None:
                capman.resume_global_capture()

    return ask


@pytest.fixture(scope="session")
def hw_key(pytestconfig: pytest.Config) -> Iterator[Candidate]:
    """The one key under test; refuses the whole run on any doubt."""
    opts = gate_options(pytestconfig)
    try:
        key = select_key(opts, find_candidates(opts.device))
        with key.open() as device:
            check_unused(opts, read_facts(device))
    except GateRefused as refusal:
        pytest.exit(f"hardware tests refused to start: {refusal.reason}", returncode=4)
    yield key


@pytest.fixture(scope="session")
def hw_facts(hw_key: Candidate) -> KeyFacts:
    """What the key can do (getInfo and, on a YubiKey, its firmware): read once per run."""
    with hw_key.open() as device:
        return read_facts(device, firmware_of(device))


def firmware_of(device: Any) -> tuple[int, int, int] | None:
    """The YubiKey firmware as a tuple, through yubikey-manager; None when it cannot tell."""
    from yktool.fido.yubikey import read_facts as yubikey_facts

    facts = yubikey_facts(device)
    if facts is None or not facts.firmware:
        return None
    parts = [int(p) for p in facts.firmware.split(".")[:3] if p.isdigit()]
    return (parts + [0, 0, 0])[:3] if parts else None  # type: ignore[return-value]


@pytest.fixture(autouse=True)
def _capabilities(request: pytest.FixtureRequest) -> None:
    marker = request.node.get_closest_marker("requires")
    if marker is None:
        return
    why = unmet(request.getfixturevalue("hw_facts"), **marker.kwargs)
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
def session(hw_key: Candidate, person: Person) -> Iterator[Any]:
    """A KeySession on the key under test, on a handle of its own that is closed after the test.

    A test that lets another program (ssh-keygen, pamtester) talk to the key and then uses the
    session again must first `discard_stale_reports(session.device)`: hidraw gives every reply
    to every open handle.
    """
    from yktool.fido.session import KeySession

    with hw_key.open() as device:
        yield KeySession(device, person)


@pytest.fixture(scope="session")
def yktool_cmd(hw_key: Candidate) -> list[str]:
    """argv prefix that runs this checkout's yktool against the key under test."""
    return [str(Path(sys.executable).parent / "yktool"), "--device", hw_key.spec]


@pytest.fixture(scope="session")
def ssh_key_root(yktool_cmd: list[str], tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config) -> Path:
    """A scratch root whose user `tester` has the SSH key `yktool ssh keygen` made on the key under
    test: made once (one touch) for the tests that sign with it and log in with it."""
    tmp = tmp_path_factory.mktemp("ssh-key")
    root = make_root(tmp)
    announce(pytestconfig, "touch the key now (yktool ssh keygen)")
    made = run([*yktool_cmd, "--root", str(root), "ssh", "keygen", "--user", "tester"], tool_env(tmp))
    assert made.returncode == 0, made.stderr
    return root
