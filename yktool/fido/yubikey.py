"""YubiKey-only facts (serial, firmware, form factor) through yubikey-manager.

FIDO2 itself does not tell a key's serial number or form factor; yubikey-manager reads them
with the YubiKey management application, over the same FIDO HID interface. Anything that goes
wrong here yields None: these facts are nice to have, and never worth failing a command for.
yubikey-manager is imported lazily because importing it is slow (~0.3 s).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from typing import Any

from fido2.ctap import CtapDevice

YUBICO_VID = 0x1050
UNKNOWN = "unknown (yubikey-manager could not read it)"

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class YubiKeyFacts:
    """What yubikey-manager could read; a None field means it could not tell."""

    serial: int | None
    firmware: str | None
    form_factor: str | None

    def to_json(self) -> dict[str, object]:
        return {"serial": self.serial, "firmware": self.firmware, "form_factor": self.form_factor}


def vendor_id(device: CtapDevice) -> int | None:
    """The USB vendor id of a HID key (None for the software key and other transports)."""
    descriptor = getattr(device, "descriptor", None)
    vid = getattr(descriptor, "vid", None)
    return vid if isinstance(vid, int) else None


def is_yubikey(device: CtapDevice) -> bool:
    """True for a HID key made by Yubico."""
    return vendor_id(device) == YUBICO_VID


def _from_info(info: Any) -> YubiKeyFacts:
    version = getattr(info, "version", None)
    form = getattr(info, "form_factor", None)
    form_name = str(form) if form is not None and int(form) != 0 else None
    return YubiKeyFacts(
        serial=getattr(info, "serial", None),
        firmware=str(version) if version is not None else None,
        form_factor=form_name,
    )


def read_facts(device: CtapDevice) -> YubiKeyFacts | None:
    """Serial, firmware and form factor of a YubiKey, or None when this is not a YubiKey or
    yubikey-manager cannot read them (old firmware, a locked-down key, no permission)."""
    if not is_yubikey(device):
        return None
    try:
        from yubikit.management import ManagementSession

        # A CtapHidDevice is a yubikit FidoConnection: talk management over the open handle.
        return _from_info(ManagementSession(device).read_device_info())
    except Exception as exc:  # noqa: BLE001 - never fail on optional facts
        log.debug("yubikey-manager over the FIDO handle failed: %s", exc)
    return _facts_by_listing(device)


def _facts_by_listing(device: CtapDevice) -> YubiKeyFacts | None:
    """Fall back to ykman's own enumeration, matched by the HID serial, or the only key present."""
    try:
        from ykman.device import list_all_devices
        from yubikit.core.fido import FidoConnection

        # FIDO only: the smart-card path needs pcscd and logs tracebacks where it is missing.
        found = list_all_devices([FidoConnection])
    except Exception as exc:  # noqa: BLE001 - never fail on optional facts
        log.debug("ykman list_all_devices failed: %s", exc)
        return None
    descriptor = getattr(device, "descriptor", None)
    hid_serial = getattr(descriptor, "serial_number", None)
    for _dev, info in found:
        if hid_serial and str(getattr(info, "serial", "")) == str(hid_serial):
            return _from_info(info)
    if len(found) == 1:
        with contextlib.suppress(Exception):
            return _from_info(found[0][1])
    return None


def serial_for_hidraw(path: str | bytes) -> str | None:
    """The YubiKey serial (as printed on the key, a decimal string) of the key at a hidraw node;
    None for other keys or when unreadable."""
    try:
        from fido2.hid import open_device as hid_open

        device = hid_open(path)
    except Exception as exc:  # noqa: BLE001 - a node we cannot open has no serial to tell
        log.debug("cannot open %r: %s", path, exc)
        return None
    try:
        facts = read_facts(device)
        return str(facts.serial) if facts and facts.serial is not None else None
    finally:
        with contextlib.suppress(Exception):
            device.close()
