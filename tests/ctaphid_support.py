"""python-fido2's HID client (`fido2.hid.CtapHidDevice`) talking to yktool's CTAPHID transport
in-process: a `CtapHidConnection` whose writes go to the transport as the kernel's output
reports would, and whose reads return the transport's input reports. Everything above the
64-byte packets is python-fido2's own code; only the kernel's uhid plumbing is left out.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable
from pathlib import Path

from fido2.ctap import STATUS
from fido2.hid import CTAPHID, CtapHidDevice
from fido2.hid.base import CtapHidConnection, HidDescriptor

from yktool.fido.ctaphid import BROADCAST, REPORT_SIZE, TYPE_INIT, CtapHidTransport, frames
from yktool.fido.softkey import SoftKey
from yktool.fido.touch import TouchGate, TouchPolicy


class Wire:
    """The transport plus the host's view of its output: a queue of input reports."""

    def __init__(self, key: SoftKey, gate: TouchGate, clock: Callable[[], float] = time.monotonic) -> None:
        self.key, self.gate = key, gate
        self.reports: queue.Queue[bytes] = queue.Queue()
        self._readers = [self.reports]
        key.presence = gate.presence
        self.transport = CtapHidTransport(self._call, self._deliver, clock=clock)

    def _deliver(self, report: bytes) -> None:
        for reader in self._readers:  # like hidraw: every opener reads every input report
            reader.put(report)

    def reader(self) -> queue.Queue[bytes]:
        q: queue.Queue[bytes] = queue.Queue()
        self._readers.append(q)
        return q

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
        self.reports = wire.reader()

    def read_packet(self) -> bytes:
        return self.reports.get(timeout=30.0)

    def write_packet(self, data: bytes) -> None:
        assert len(data) == REPORT_SIZE
        self.wire.write(data)

    def close(self) -> None:
        pass


def descriptor(key: SoftKey) -> HidDescriptor:
    return HidDescriptor(
        "inproc", key.vendor_id, key.product_id, REPORT_SIZE, REPORT_SIZE, key.product_name, key.serial_number
    )


def make_wire(
    tmp_path: Path,
    policy: TouchPolicy = TouchPolicy.AUTO,
    timeout: float = 30.0,
    clock: Callable[[], float] = time.monotonic,
) -> Wire:
    key = SoftKey(tmp_path / "key.json")
    return Wire(key, TouchGate(policy, timeout=timeout), clock)


def hid_device(wire: Wire) -> CtapHidDevice:
    """python-fido2's HID device on the wire (it sends CTAPHID_INIT on the broadcast channel)."""
    return CtapHidDevice(descriptor(wire.key), WireConnection(wire))


class RawHost:
    """A host speaking CTAPHID packet by packet (for what python-fido2 never sends)."""

    def __init__(self, wire: Wire) -> None:
        self.wire = wire

    def send(self, cid: int, cmd: int, payload: bytes = b"") -> None:
        for packet in frames(cid, cmd, payload):
            self.wire.write(packet)

    def init(self, nonce: bytes = b"12345678", cid: int = BROADCAST) -> int:
        self.send(cid, CTAPHID.INIT, nonce)
        got_cid, cmd, body = self.message()
        assert (got_cid, cmd, body[:8]) == (cid, CTAPHID.INIT, nonce)
        return int.from_bytes(body[8:12], "big")

    def packet(self, timeout: float = 5.0) -> bytes:
        return self.wire.read(timeout)

    def message(
        self, timeout: float = 5.0, keepalives: list[tuple[float, int]] | None = None
    ) -> tuple[int, int, bytes]:
        """The next message (cid, cmd without the init bit, payload); keepalives are skipped
        (and recorded with their arrival time when a list is given)."""
        while True:
            first = self.packet(timeout)
            cid, cmd, size = int.from_bytes(first[:4], "big"), first[4] & 0x7F, int.from_bytes(first[5:7], "big")
            assert first[4] & TYPE_INIT, "a message starts with an init packet"
            if cmd == CTAPHID.KEEPALIVE:
                if keepalives is not None:
                    keepalives.append((time.monotonic(), first[7]))
                continue
            body = bytearray(first[7 : 7 + size])
            seq = 0
            while len(body) < size:
                cont = self.packet(timeout)
                assert int.from_bytes(cont[:4], "big") == cid and cont[4] == seq
                body += cont[5 : 5 + size - len(body)]
                seq += 1
            return cid, cmd, bytes(body)
