"""Which key the hardware tests may touch, and when they must refuse.

Kept apart from pytest so that tests/test_hardware_gating.py can prove it with software keys
before anyone plugs a real key in. The rules:

- Opt-in: nothing runs without `--hardware`, and `--hardware` needs `--serial SERIAL` or
  `--device hid:PATH`, so a run can only ever touch the key that was named.
- Exactly one key plugged in; its serial (or path) must match what was named.
- A key that already holds credentials (a PIN is set, or discoverable credentials exist) is
  refused unless `--allow-used-key`: the tests create credentials on it.
- Anything that resets the key also needs `--destructive`, and a typed confirmation.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

OPT_IN = (
    "hardware tests are opt-in: run `pytest hardware-tests --hardware --serial SERIAL` "
    "(or --device hid:/dev/hidrawN) with exactly one key plugged in"
)
NAME_THE_KEY = (
    "--hardware needs --serial SERIAL or --device hid:/dev/hidrawN, so that a run can only touch the key you named"
)


class GateRefused(Exception):
    """The run must not start: `reason` says why and what to do."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class GateOptions:
    hardware: bool = False
    serial: str | None = None
    device: str | None = None
    allow_used_key: bool = False
    destructive: bool = False


@dataclass
class Candidate:
    """A key found on the machine: how to name it and how to open it."""

    spec: str
    serial: str | None
    open: Callable[[], Any]
    product: str = ""


@dataclass
class KeyFacts:
    """What the capability conditions are checked against (read from the key)."""

    firmware: tuple[int, int, int] | None = None
    algorithms: set[int] = field(default_factory=set)
    extensions: set[str] = field(default_factory=set)
    pin_set: bool = False
    resident_credentials: int | None = None  # None: could not tell without the PIN


def skip_reason(opts: GateOptions) -> str | None:
    """Why every hardware test is skipped, or None when the run may go on."""
    if not opts.hardware:
        return OPT_IN
    if not opts.serial and not opts.device:
        return NAME_THE_KEY
    return None


def select_key(opts: GateOptions, candidates: Sequence[Candidate]) -> Candidate:
    """The one key under test, or GateRefused."""
    if not candidates:
        raise GateRefused("no FIDO2 key found: plug in the key named by --serial/--device")
    if len(candidates) > 1:
        names = ", ".join(f"{c.product or 'key'} at {c.spec}" for c in candidates)
        raise GateRefused(
            f"{len(candidates)} keys are plugged in ({names}): unplug all but the one under test, "
            "so no test can touch a key you use"
        )
    key = candidates[0]
    if opts.device and key.spec != opts.device:
        raise GateRefused(f"the key present is {key.spec}, not {opts.device} as named by --device")
    if opts.serial and key.serial != opts.serial:
        found = key.serial or "unknown (not a YubiKey, or yubikey-manager could not read it)"
        raise GateRefused(f"serial mismatch: --serial {opts.serial}, but the key present has {found}")
    return key


def check_unused(opts: GateOptions, facts: KeyFacts) -> None:
    """Refuse a key that already holds credentials unless --allow-used-key."""
    if opts.allow_used_key:
        return
    if facts.resident_credentials:
        raise GateRefused(
            f"the key holds {facts.resident_credentials} discoverable credential(s); the tests add "
            "more. Use a spare key, or pass --allow-used-key if that is fine"
        )
    if facts.pin_set:
        raise GateRefused(
            "the key has a PIN set, so it is probably in use; the tests create credentials on it. "
            "Use a spare key, or pass --allow-used-key (you will be asked for the PIN)"
        )


def check_destructive(opts: GateOptions, confirm: Callable[[str], str]) -> None:
    """Allow a reset only with --destructive and the typed word RESET."""
    if not opts.destructive:
        raise GateRefused("this test resets the key (wiping every credential): pass --destructive")
    answer = confirm("This test RESETS the key and wipes every credential on it. Type RESET to go on: ")
    if answer.strip() != "RESET":
        raise GateRefused("reset not confirmed")


def unmet(
    facts: KeyFacts,
    *,
    min_firmware: tuple[int, int, int] | None = None,
    algorithms: Sequence[int] = (),
    extensions: Sequence[str] = (),
) -> str | None:
    """Why the key lacks a capability a test needs (the test is then skipped), or None."""
    if min_firmware is not None:
        if facts.firmware is None:
            return "firmware version unknown (not a YubiKey?)"
        if facts.firmware < min_firmware:
            have = ".".join(map(str, facts.firmware))
            return f"needs firmware {'.'.join(map(str, min_firmware))}+, key has {have}"
    for alg in algorithms:
        if alg not in facts.algorithms:
            return f"key does not support COSE algorithm {alg}"
    for ext in extensions:
        if ext not in facts.extensions:
            return f"key does not support the {ext} extension"
    return None


def read_facts(device: Any, firmware: tuple[int, int, int] | None = None) -> KeyFacts:
    """Facts from the key itself (getInfo through yktool's KeySession); no PIN is asked."""
    from yktool.fido.session import KeySession

    session = KeySession(device)
    info = session.info
    return KeyFacts(
        firmware=firmware,
        algorithms={int(a["alg"]) for a in (info.algorithms or [])},
        extensions=set(info.extensions),
        pin_set=session.pin_is_set,
    )
