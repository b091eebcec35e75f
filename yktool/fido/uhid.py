"""A USB-HID FIDO device made by the kernel's uhid driver (`/dev/uhid`).

`struct uhid_event` (include/uapi/linux/uhid.h) is a u32 type and a packed union, host byte
order; every event written or read is one such struct. `UhidDevice.create` writes UHID_CREATE2
with the FIDO report descriptor (usage page 0xF1D0, usage 0x01, 64-byte input and output
reports, as on a YubiKey), which makes a `/dev/hidrawN` (hid-generic); the host's writes to it
come back as UHID_OUTPUT, and UHID_INPUT2 is what the host reads. UHID_DESTROY is a real unplug
(udev sees `remove`).
"""

from __future__ import annotations

import errno
import os
import select
import struct
import time
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path

UHID_PATH = "/dev/uhid"
SYSFS_HIDRAW = Path("/sys/class/hidraw")
BUS_USB = 0x03
DATA_MAX = 4096  # UHID_DATA_MAX and HID_MAX_DESCRIPTOR_SIZE
# FIDO usage page 0xF1D0 / usage 1, one 64-byte input and one 64-byte output report, no report
# ids: the descriptor a YubiKey's FIDO interface has (python-fido2's tests parse this one).
FIDO_REPORT_DESCRIPTOR = bytes.fromhex("06d0f10901a1010920150026ff007508954081020921150026ff00750895409102c0")


class EventType(IntEnum):
    DESTROY = 1
    START = 2
    STOP = 3
    OPEN = 4
    CLOSE = 5
    OUTPUT = 6
    GET_REPORT = 9
    GET_REPORT_REPLY = 10
    CREATE2 = 11
    INPUT2 = 12
    SET_REPORT = 13
    SET_REPORT_REPLY = 14


# "=": host byte order, no padding (the kernel's structs are __packed__).
_CREATE2 = struct.Struct(f"=I128s64s64sHHIIII{DATA_MAX}s")
_INPUT2 = struct.Struct(f"=IH{DATA_MAX}s")
_OUTPUT = struct.Struct(f"=I{DATA_MAX}sHB")
_GET_REPORT = struct.Struct("=IIBB")
_GET_REPORT_REPLY = struct.Struct(f"=IIHH{DATA_MAX}s")
_SET_REPORT = struct.Struct(f"=IIBBH{DATA_MAX}s")
_SET_REPORT_REPLY = struct.Struct("=IIH")
EVENT_SIZE = _CREATE2.size  # sizeof(struct uhid_event): create2 is the largest member


def _field(text: str, size: int) -> bytes:
    raw = text.encode()
    if len(raw) >= size:
        raise ValueError(f"{text!r} is longer than the kernel's {size - 1} bytes")
    return raw


def pack_create2(
    *,
    name: str,
    phys: str,
    uniq: str,
    vendor: int,
    product: int,
    version: int = 0,
    country: int = 0,
    descriptor: bytes = FIDO_REPORT_DESCRIPTOR,
    bus: int = BUS_USB,
) -> bytes:
    """UHID_CREATE2: a new HID device with this identity and report descriptor."""
    if len(descriptor) > DATA_MAX:
        raise ValueError("report descriptor too long")
    return _CREATE2.pack(
        EventType.CREATE2,
        _field(name, 128),
        _field(phys, 64),
        _field(uniq, 64),
        len(descriptor),
        bus,
        vendor,
        product,
        version,
        country,
        descriptor,
    )


def pack_input2(report: bytes) -> bytes:
    """UHID_INPUT2: one input report for the host (the 64 bytes, no report id)."""
    if len(report) > DATA_MAX:
        raise ValueError("input report too long")
    return _INPUT2.pack(EventType.INPUT2, len(report), report)


def pack_destroy() -> bytes:
    return struct.pack("=I", EventType.DESTROY).ljust(EVENT_SIZE, b"\0")


def pack_get_report_reply(request_id: int, err: int) -> bytes:
    return _GET_REPORT_REPLY.pack(EventType.GET_REPORT_REPLY, request_id, err, 0, b"")


def pack_set_report_reply(request_id: int, err: int) -> bytes:
    return _SET_REPORT_REPLY.pack(EventType.SET_REPORT_REPLY, request_id, err)


@dataclass(frozen=True)
class UhidEvent:
    """An event from the kernel: `data` is an OUTPUT report's bytes (report id stripped),
    `request_id` a GET_REPORT/SET_REPORT id to answer."""

    type: int
    data: bytes = b""
    request_id: int = 0


def parse_event(buf: bytes) -> UhidEvent:
    """An event the kernel wrote (short events are zero-extended, as the header says)."""
    buf = buf.ljust(EVENT_SIZE, b"\0")
    kind = struct.unpack_from("=I", buf)[0]
    if kind == EventType.OUTPUT:
        _, data, size, _rtype = _OUTPUT.unpack_from(buf)
        report = data[: min(size, DATA_MAX)]
        # hidraw passes the report number first; this descriptor has none, so it is a 0.
        if len(report) == 65 and report[0] == 0:
            report = report[1:]
        return UhidEvent(kind, report)
    if kind == EventType.GET_REPORT:
        return UhidEvent(kind, request_id=_GET_REPORT.unpack_from(buf)[1])
    if kind == EventType.SET_REPORT:
        return UhidEvent(kind, request_id=_SET_REPORT.unpack_from(buf)[1])
    return UhidEvent(kind)


def find_hidraw(phys: str, uniq: str, sysfs: Path = SYSFS_HIDRAW) -> str | None:
    """The /dev/hidrawN whose HID parent has this HID_PHYS and HID_UNIQ, once its node exists."""
    try:
        entries = sorted(sysfs.iterdir())
    except OSError:
        return None
    for entry in entries:
        try:
            text = (entry / "device" / "uevent").read_text()
        except OSError:
            continue
        fields = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
        if fields.get("HID_PHYS") == phys and fields.get("HID_UNIQ") == uniq:
            node = f"/dev/{entry.name}"
            return node if os.path.exists(node) else None
    return None


class UhidDevice:
    """One uhid device: open `/dev/uhid`, `create`, then `read_event`/`send_input`, `destroy`.

    Opening raises OSError (ENOENT: no uhid module loaded; EACCES: not root) for the caller to
    explain."""

    def __init__(self, path: str = UHID_PATH) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self.created = False

    def fileno(self) -> int:
        return self._fd

    def _write(self, event: bytes) -> None:
        if os.write(self._fd, event) != len(event):
            raise OSError(errno.EIO, "short write to uhid")

    def create(self, *, name: str, phys: str, uniq: str, vendor: int, product: int, version: int = 0) -> None:
        self._write(pack_create2(name=name, phys=phys, uniq=uniq, vendor=vendor, product=product, version=version))
        self.created = True

    def send_input(self, report: bytes) -> None:
        self._write(pack_input2(report))

    def read_event(self, timeout: float) -> UhidEvent | None:
        """The next event from the kernel, or None when there was none within `timeout`."""
        ready, _, _ = select.select([self._fd], [], [], timeout)
        if not ready:
            return None
        return parse_event(os.read(self._fd, EVENT_SIZE))

    def answer(self, event: UhidEvent) -> None:
        """Refuse GET_REPORT/SET_REPORT (a FIDO key has no feature reports); the kernel would
        otherwise make the asker wait for its timeout."""
        if event.type == EventType.GET_REPORT:
            self._write(pack_get_report_reply(event.request_id, errno.EIO))
        elif event.type == EventType.SET_REPORT:
            self._write(pack_set_report_reply(event.request_id, errno.EIO))

    def destroy(self) -> None:
        """Unplug: the hidraw node goes away and udev sees `remove`."""
        if self.created:
            self.created = False
            self._write(pack_destroy())

    def close(self) -> None:
        try:
            self.destroy()
        finally:
            os.close(self._fd)


def wait_for_hidraw(phys: str, uniq: str, timeout: float, sysfs: Path = SYSFS_HIDRAW) -> str | None:
    """Poll sysfs for the device's hidraw node (the kernel adds it asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        node = find_hidraw(phys, uniq, sysfs)
        if node is not None or time.monotonic() >= deadline:
            return node
        time.sleep(0.02)
