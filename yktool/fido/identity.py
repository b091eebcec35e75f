"""The USB identity of a key (vendor, product, serial, name): what udev and USBGuard match on.

For the software key it comes from its own attributes (vendor 0x1209 / product 0x0001,
"yktool software key"); for a HID key from sysfs,
`/sys/class/hidraw/hidrawN/device/uevent` (`HID_ID=0003:00001050:00000407`, `HID_NAME=…`,
`HID_UNIQ=…`), falling back to python-fido2's HID descriptor.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from fido2.ctap import CtapDevice

SYSFS_HIDRAW = Path("/sys/class/hidraw")


@dataclass(frozen=True)
class UsbIdentity:
    """vendor/product are the USB ids; serial is None when the key does not report one."""

    vendor: int
    product: int
    serial: str | None
    name: str

    @property
    def usb_id(self) -> str:
        """`vvvv:pppp`, the form lsusb, udev (ATTRS{idVendor}) and USBGuard use."""
        return f"{self.vendor:04x}:{self.product:04x}"


def parse_uevent(text: str) -> UsbIdentity:
    """Parse a hidraw parent's uevent (HID_ID=bus:vendor:product, HID_NAME, HID_UNIQ)."""
    fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    hid_id = fields.get("HID_ID", "")
    parts = hid_id.split(":")
    if len(parts) != 3:
        raise ValueError(f"no HID_ID in uevent (got {hid_id!r})")
    vendor, product = int(parts[1], 16), int(parts[2], 16)
    serial = fields.get("HID_UNIQ") or None
    return UsbIdentity(vendor, product, serial, fields.get("HID_NAME", ""))


def hidraw_identity(node: str, sysfs: Path = SYSFS_HIDRAW) -> UsbIdentity:
    """Identity of /dev/hidrawN from sysfs; OSError/ValueError when sysfs does not tell."""
    name = os.path.basename(node)
    return parse_uevent((sysfs / name / "device" / "uevent").read_text())


def usb_identity(device: CtapDevice, sysfs: Path = SYSFS_HIDRAW) -> UsbIdentity:
    """The USB identity of an open key (software key or HID)."""
    vendor = getattr(device, "vendor_id", None)
    product = getattr(device, "product_id", None)
    if isinstance(vendor, int) and isinstance(product, int):  # the software key
        serial = getattr(device, "serial_number", None)
        return UsbIdentity(
            vendor, product, serial if isinstance(serial, str) else None, str(getattr(device, "product_name", ""))
        )
    descriptor = getattr(device, "descriptor", None)
    path = getattr(descriptor, "path", None)
    if isinstance(path, bytes):
        path = path.decode("utf-8", "replace")
    if isinstance(path, str) and path:
        try:
            return hidraw_identity(path, sysfs)
        except (OSError, ValueError):
            pass  # not Linux sysfs, or an odd node: use what the HID descriptor says
    if descriptor is not None:
        return UsbIdentity(
            int(descriptor.vid), int(descriptor.pid), descriptor.serial_number, descriptor.product_name or ""
        )
    raise ValueError(f"cannot tell the USB identity of {device!r}")
