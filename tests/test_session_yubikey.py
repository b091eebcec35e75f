"""YubiKey facts: a key that says it is a Yubico device but whose management app can't be read.

There is no YubiKey here (hardware-tests/ cover a real one). The device below is the software
key seen through a HID-like descriptor with Yubico's vendor id, so the yubikey-manager path
really runs and really fails (the software key does not answer Yubico's vendor commands):
what must hold is that `key info` says "unknown" instead of failing.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from typing import Any

from fido2.ctap import STATUS, CtapDevice

from yktool.fido import open_device
from yktool.fido.facts import read_key_facts
from yktool.fido.session import KeySession
from yktool.fido.yubikey import UNKNOWN, YUBICO_VID, is_yubikey, read_facts


@dataclass
class Descriptor:
    path: str
    vid: int
    pid: int
    product_name: str
    serial_number: str | None


class YubicoBadged(CtapDevice):
    """The software key behind a Yubico-looking HID descriptor."""

    def __init__(self, inner: CtapDevice) -> None:
        self.inner = inner
        self.descriptor = Descriptor("/dev/hidraw7", YUBICO_VID, 0x0407, "YubiKey OTP+FIDO+CCID", None)

    @property
    def capabilities(self) -> int:
        return self.inner.capabilities

    def call(
        self,
        cmd: int,
        data: bytes = b"",
        event: Event | None = None,
        on_keepalive: Callable[[STATUS], None] | None = None,
    ) -> bytes:
        return self.inner.call(cmd, data, event, on_keepalive)

    @classmethod
    def list_devices(cls) -> Any:
        return iter(())


def test_software_key_is_not_a_yubikey(tmp_path: Path) -> None:
    device = open_device(f"sim:{tmp_path / 'k.json'}")
    assert not is_yubikey(device)
    assert read_facts(device) is None


def test_unreadable_yubikey_facts_are_unknown_not_an_error(tmp_path: Path) -> None:
    device = YubicoBadged(open_device(f"sim:{tmp_path / 'k.json'}"))
    assert is_yubikey(device)
    assert read_facts(device) is None  # yubikey-manager could not tell; no exception
    facts = read_key_facts(KeySession(device), "hid:/dev/hidraw7")
    data = facts.to_json()
    assert data["yubikey"] == {"serial": None, "firmware": None, "form_factor": None}
    assert data["software"] is False and data["path"] == "/dev/hidraw7"
    text = facts.render()
    assert f"serial            {UNKNOWN}" in text
    assert f"firmware          {UNKNOWN}" in text
    assert f"form factor       {UNKNOWN}" in text


def test_serial_for_a_missing_hidraw_node_is_none() -> None:
    from yktool.fido.yubikey import serial_for_hidraw

    assert serial_for_hidraw("/dev/hidraw-does-not-exist") is None
