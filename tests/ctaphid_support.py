"""python-fido2's HID client (`fido2.hid.CtapHidDevice`) talking to yktool's CTAPHID transport
in-process: a `CtapHidConnection` whose writes go to the transport as the kernel's output
reports would, and whose reads return the transport's input reports. Everything above the
64-byte packets is python-fido2's own code; only the kernel's uhid plumbing is left out.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from pathlib import Path

from fido2.ctap import STATUS
from fido2.hid import CtapHidDevice
from fido2.hid.base import CtapHidConnection, HidDescriptor

from yktool.fido.ctaphid import REPORT_SIZE, CtapHidTransport
from yktool.fido.softkey import SoftKey
from yktool.fido.touch import TouchGate, TouchPolicy


class Wire:
    """The transport plus the host's view of its output: a queue of input reports."""

    def __init__(self, key: SoftKey, gate: TouchGate, **transport_args: object) -> None:
        self.key, self.gate = key, gate
        self.reports: queue.Queue[bytes] = queue.Queue()
        key.presence = gate.presence
        self.transport = CtapHidTransport(self._call, self.reports.put, **transport_args)  # type: ignore[arg-type]

    def _call(self, cmd: int, data: bytes, event: threading.Event, on_keepalive: Callable[[STATUS], None]) -> bytes:
        self.gate.bind(event, on_keepalive)
        return self.key.call(cmd, data, event, on_keepalive)

    def write(self, packet: bytes) -> None:
        self.transport.handle_packet(packet)

    def read(self, timeout: float = 5.0) -> bytes:
        return self.reports.get(timeout=timeout)

    def quiet(self, wait: float = 0.2) -> bool:
        """True when nothing arrives within `wait` seconds."""
        try:
            self.reports.get(timeout=wait)
        except queue.Empty:
            return True
        return False


class WireConnection(CtapHidConnection):
    """The `CtapHidConnection` python-fido2's `CtapHidDevice` reads and writes."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    def read_packet(self) -> bytes:
        return self.wire.read(timeout=30.0)

    def write_packet(self, data: bytes) -> None:
        assert len(data) == REPORT_SIZE
        self.wire.write(data)

    def close(self) -> None:
        pass


def descriptor(key: SoftKey) -> HidDescriptor:
    return HidDescriptor("inproc", key.vendor_id, key.product_id, REPORT_SIZE, REPORT_SIZE,
                         key.product_name, key.serial_number)


def make_wire(tmp_path: Path, policy: TouchPolicy = TouchPolicy.AUTO, timeout: float = 30.0,
              **transport_args: object) -> Wire:
    key = SoftKey(tmp_path / "key.json")
    return Wire(key, TouchGate(policy, timeout=timeout), **transport_args)


def hid_device(wire: Wire) -> CtapHidDevice:
    """python-fido2's HID device on the wire (it sends CTAPHID_INIT on the broadcast channel)."""
    return CtapHidDevice(descriptor(wire.key), WireConnection(wire))
