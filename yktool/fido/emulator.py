"""`yktool key emulate`: the software key as a USB-HID FIDO2 device through `/dev/uhid`.

`Emulator` plugs a `SoftKey` in: UHID_CREATE2 (vendor 1209, product 0001, name "yktool
software key", HID uniq = the key's serial), then pumps the kernel's output reports through the
CTAPHID transport (`ctaphid.CtapHidTransport`) and its answers back as input reports, until
`stop()`; leaving `serve` always unplugs (UHID_DESTROY).
"""

from __future__ import annotations

import errno
import logging
import os
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from fido2.ctap import STATUS

from yktool.errors import NoDevice
from yktool.fido.ctaphid import DEVICE_VERSION, CtapHidTransport
from yktool.fido.softkey import SoftKey
from yktool.fido.touch import TouchGate
from yktool.fido.uhid import UHID_PATH, EventType, UhidDevice, find_hidraw

HIDRAW_TIMEOUT = 30.0  # seconds for the kernel to make the hidraw node (TCG VMs are slow)
POLL = 0.05  # seconds between looks at timeouts when the host is quiet

log = logging.getLogger(__name__)


def open_uhid(path: str = UHID_PATH) -> UhidDevice:
    """Open /dev/uhid, or say clearly why not (NoDevice, exit 3)."""
    try:
        return UhidDevice(path)
    except FileNotFoundError:
        raise NoDevice(
            f"no {path}: the kernel's uhid driver is not loaded (or this is a container)",
            "as root: modprobe uhid, then run again; inside a container there is no uhid, "
            "use a VM (scripts/test-vm) or --device sim:PATH directly",
        ) from None
    except PermissionError:
        raise NoDevice(
            f"no permission to open {path}: making a USB device needs root",
            f"run it as root (sudo yktool key emulate …), or give your user read/write access to {path}",
        ) from None
    except OSError as e:
        raise NoDevice(f"cannot open {path}: {e.strerror or e}", "as root: modprobe uhid, then run again") from None


@dataclass(frozen=True)
class Plugged:
    """What the host sees: the hidraw node and the USB identity."""

    hidraw: str
    serial: str
    vendor_id: int
    product_id: int
    name: str

    def to_json(self) -> dict[str, object]:
        return {
            "hidraw": self.hidraw,
            "serial": self.serial,
            "vendor_id": f"{self.vendor_id:04x}",
            "product_id": f"{self.product_id:04x}",
            "name": self.name,
        }


class Emulator:
    """The software key `key` plugged in through `uhid`, touches answered by `gate`."""

    def __init__(self, key: SoftKey, gate: TouchGate, uhid: UhidDevice) -> None:
        self.key = key
        self.gate = gate
        self.uhid = uhid
        self.stopping = threading.Event()
        self._phys = f"yktool-emulate/{os.getpid()}/{secrets.token_hex(4)}"
        key.presence = gate.presence
        self.transport = CtapHidTransport(self._call, self._send)

    def _call(self, cmd: int, data: bytes, event: threading.Event, on_keepalive: Callable[[STATUS], None]) -> bytes:
        self.gate.bind(event, on_keepalive)
        return self.key.call(cmd, data, event, on_keepalive)

    def _send(self, report: bytes) -> None:
        try:
            self.uhid.send_input(report)
        except OSError as e:  # the device is going away; the host will see the unplug
            log.warning("could not hand a report to the kernel: %s", e.strerror or e)

    def stop(self) -> None:
        """Ask `serve` to unplug and return (from a signal handler or another thread)."""
        self.stopping.set()

    def plug(self) -> None:
        major, minor, patch = DEVICE_VERSION
        self.uhid.create(
            name=self.key.product_name,
            phys=self._phys,
            uniq=self.key.serial_number,
            vendor=self.key.vendor_id,
            product=self.key.product_id,
            version=(major << 8) | (minor << 4) | patch,
        )

    def serve(self, on_plugged: Callable[[Plugged], None], hidraw_timeout: float = HIDRAW_TIMEOUT) -> None:
        """Plug in, call `on_plugged` once the hidraw node exists, answer the host until
        `stop()`; always unplug on the way out."""
        try:
            self.plug()
        except OSError as e:
            raise NoDevice(
                f"the kernel refused the new uhid device: {e.strerror or e}", "check `dmesg` for uhid/hid errors"
            ) from None
        plugged: Plugged | None = None
        deadline = time.monotonic() + hidraw_timeout
        try:
            while not self.stopping.is_set():
                if plugged is None:
                    node = find_hidraw(self._phys, self.key.serial_number)
                    if node is not None:
                        plugged = Plugged(
                            node, self.key.serial_number, self.key.vendor_id, self.key.product_id, self.key.product_name
                        )
                        on_plugged(plugged)
                    elif time.monotonic() > deadline:
                        raise NoDevice(
                            f"the kernel made no hidraw node for the emulated key within {hidraw_timeout:g} s",
                            "check that hidraw and hid-generic are available (dmesg)",
                        )
                self._pump()
        finally:
            self.transport.close()
            try:
                self.uhid.destroy()
            except OSError as e:
                if e.errno != errno.ENODEV:
                    log.warning("unplugging failed: %s", e.strerror or e)

    def _pump(self) -> None:
        try:
            event = self.uhid.read_event(POLL)
        except InterruptedError:
            return
        if event is None:
            self.transport.tick()
        elif event.type == EventType.OUTPUT:
            self.transport.handle_packet(event.data)
        elif event.type in (EventType.GET_REPORT, EventType.SET_REPORT):
            self.uhid.answer(event)
