"""The authenticator side of CTAPHID (CTAP 2.1 §11.2): 64-byte reports in, 64-byte reports out.

`CtapHidTransport` is the key's USB firmware in software: it reassembles requests from packets,
allocates channels, answers INIT, PING, WINK, LOCK and CANCEL itself and hands CBOR requests to
an authenticator (`call(cmd, data, event, on_keepalive)`, the `CtapDevice.call` shape) in a
worker thread, so that CANCEL and the 100 ms keepalives keep flowing while a touch is awaited.
It knows nothing of uhid: `send` gets each outgoing report, `handle_packet` each incoming one,
and `tick()` (called when the host is quiet) times out half-sent messages and expired locks.

Where CTAP leaves a choice the answer is a YubiKey 5's (with U2F off): capabilities
CBOR|WINK|NMSG, so MSG is ERR_INVALID_CMD; CTAPHID protocol version 2 and a firmware number
as device version. As the spec asks: a continuation packet nobody announced is ignored, CANCEL
on another channel or with nothing in flight is ignored, INIT on a channel resyncs it. The spec
gives no figure for a half-sent message: 1 s between two packets here (MSG_TIMEOUT).
"""

from __future__ import annotations

import logging
import os
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from fido2.ctap import STATUS
from fido2.hid import CAPABILITY, CTAPHID

REPORT_SIZE = 64
INIT_DATA = REPORT_SIZE - 7  # cid(4) cmd(1) bcnt(2)
CONT_DATA = REPORT_SIZE - 5  # cid(4) seq(1)
MAX_MESSAGE = INIT_DATA + 128 * CONT_DATA  # 7609: one init packet and seq 0..127
BROADCAST = 0xFFFFFFFF
TYPE_INIT = 0x80
PROTOCOL_VERSION = 2
DEVICE_VERSION = (5, 4, 3)  # reported like a YubiKey 5's firmware version
CAPABILITIES = int(CAPABILITY.WINK | CAPABILITY.CBOR | CAPABILITY.NMSG)
MSG_TIMEOUT = 1.0  # seconds between two packets of one message (the spec sets no figure)
KEEPALIVE_INTERVAL = 0.1  # CTAP 2.1 §11.2.9.1.5: at least every 100 ms
MAX_LOCK_SECONDS = 10

log = logging.getLogger(__name__)


class HidError(IntEnum):
    """CTAPHID_ERROR codes (CTAP 2.1 §11.2.9.1.6)."""

    INVALID_CMD = 0x01
    INVALID_PAR = 0x02
    INVALID_LEN = 0x03
    INVALID_SEQ = 0x04
    MSG_TIMEOUT = 0x05
    CHANNEL_BUSY = 0x06
    LOCK_REQUIRED = 0x0A
    INVALID_CHANNEL = 0x0B
    OTHER = 0x7F


Call = Callable[[int, bytes, threading.Event, Callable[[STATUS], None]], bytes]
Send = Callable[[bytes], None]


def frames(cid: int, cmd: int, payload: bytes) -> list[bytes]:
    """One message as 64-byte reports: an init packet, then continuation packets seq 0, 1, …"""
    if len(payload) > MAX_MESSAGE:
        raise ValueError(f"a CTAPHID message holds at most {MAX_MESSAGE} bytes, not {len(payload)}")
    out = [struct.pack(">IBH", cid, TYPE_INIT | cmd, len(payload)) + payload[:INIT_DATA]]
    rest = payload[INIT_DATA:]
    seq = 0
    while rest:
        out.append(struct.pack(">IB", cid, seq) + rest[:CONT_DATA])
        rest = rest[CONT_DATA:]
        seq += 1
    return [p.ljust(REPORT_SIZE, b"\0") for p in out]


@dataclass
class _Assembly:
    """A request arriving in pieces on one channel."""

    cid: int
    cmd: int
    size: int
    data: bytearray
    next_seq: int = 0
    last_packet: float = 0.0


@dataclass
class _Transaction:
    """A CBOR request being processed by the authenticator in the worker thread."""

    cid: int
    cancel: threading.Event = field(default_factory=threading.Event)
    finished: threading.Event = field(default_factory=threading.Event)
    status: STATUS = STATUS.PROCESSING
    last_keepalive: float = 0.0
    abandoned: bool = False  # the channel was re-initialised: its answer must not be sent
    worker: threading.Thread | None = None


class CtapHidTransport:
    """CTAPHID on the authenticator's side; see the module docstring.

    Thread-safe: `handle_packet` and `tick` come from the reader (one thread), the worker and
    the keepalive thread send from their own; one lock keeps each message's packets together.
    """

    def __init__(
        self,
        call: Call,
        send: Send,
        *,
        clock: Callable[[], float] = time.monotonic,
        msg_timeout: float = MSG_TIMEOUT,
        keepalive_interval: float = KEEPALIVE_INTERVAL,
        on_wink: Callable[[], None] | None = None,
    ) -> None:
        self._call = call
        self._send = send
        self._clock = clock
        self._msg_timeout = msg_timeout
        self._keepalive_interval = keepalive_interval
        self._on_wink = on_wink
        self._lock = threading.RLock()
        self._channels: set[int] = set()
        self._next_cid = int.from_bytes(os.urandom(4), "big") % 0xFFFFFFF0 + 1
        self._assembly: _Assembly | None = None
        self._txn: _Transaction | None = None
        self._lock_cid: int | None = None
        self._lock_until = 0.0
        self.winks = 0

    # -- the reader's side

    def handle_packet(self, packet: bytes) -> None:
        """One output report from the host (64 bytes; shorter ones are zero-padded)."""
        if len(packet) < 5:
            return
        packet = packet[:REPORT_SIZE].ljust(REPORT_SIZE, b"\0")
        cid = int.from_bytes(packet[:4], "big")
        with self._lock:
            if packet[4] & TYPE_INIT:
                self._init_packet(cid, packet[4] & 0x7F, int.from_bytes(packet[5:7], "big"), packet[7:])
            else:
                self._cont_packet(cid, packet[4], packet[5:])

    def tick(self) -> None:
        """Time out a half-sent message (ERR_MSG_TIMEOUT) and an expired channel lock."""
        with self._lock:
            now = self._clock()
            a = self._assembly
            if a is not None and now - a.last_packet > self._msg_timeout:
                self._assembly = None
                self._error(a.cid, HidError.MSG_TIMEOUT)
            if self._lock_cid is not None and now >= self._lock_until:
                self._lock_cid = None

    def close(self, timeout: float = 5.0) -> None:
        """Cancel the request in flight (the key is being pulled) and wait for its worker."""
        with self._lock:
            txn = self._txn
            if txn is not None:
                txn.abandoned = True
                txn.cancel.set()
        if txn is not None and txn.worker is not None:
            txn.worker.join(timeout)

    @property
    def busy(self) -> bool:
        """A CBOR request is being processed."""
        with self._lock:
            return self._txn is not None

    # -- packets

    def _init_packet(self, cid: int, cmd: int, size: int, data: bytes) -> None:
        if cid == 0:
            return self._error(cid, HidError.INVALID_CHANNEL)
        if cmd == CTAPHID.INIT:
            return self._init(cid, size, data)
        if cid == BROADCAST or cid not in self._channels:
            return self._error(cid, HidError.INVALID_CHANNEL)
        if cmd == CTAPHID.CANCEL:
            return self._cancel(cid)
        if self._assembly is not None:
            if self._assembly.cid == cid:  # a new request before the last one was complete
                self._assembly = None
                return self._error(cid, HidError.INVALID_SEQ)
            return self._error(cid, HidError.CHANNEL_BUSY)
        if self._txn is not None or (self._lock_cid not in (None, cid) and self._clock() < self._lock_until):
            return self._error(cid, HidError.CHANNEL_BUSY)
        if size > MAX_MESSAGE:
            return self._error(cid, HidError.INVALID_LEN)
        a = _Assembly(cid, cmd, size, bytearray(data[:size]), last_packet=self._clock())
        if len(a.data) < size:
            self._assembly = a
        else:
            self._dispatch(cid, cmd, bytes(a.data))

    def _cont_packet(self, cid: int, seq: int, data: bytes) -> None:
        a = self._assembly
        if a is None or a.cid != cid:
            return  # a continuation nobody announced: ignored
        if seq != a.next_seq:
            self._assembly = None
            return self._error(cid, HidError.INVALID_SEQ)
        a.next_seq += 1
        a.last_packet = self._clock()
        a.data += data[: a.size - len(a.data)]
        if len(a.data) >= a.size:
            self._assembly = None
            self._dispatch(cid, a.cmd, bytes(a.data))

    # -- commands

    def _init(self, cid: int, size: int, data: bytes) -> None:
        if size != 8:
            return self._error(cid, HidError.INVALID_LEN)
        nonce = data[:8]
        if cid == BROADCAST:
            new = self._allocate()
        elif cid in self._channels:
            new = cid  # resync: whatever this channel was doing is abandoned
            self._abandon(cid)
        else:
            return self._error(cid, HidError.INVALID_CHANNEL)
        body = nonce + struct.pack(">IBBBBB", new, PROTOCOL_VERSION, *DEVICE_VERSION, CAPABILITIES)
        self._reply(cid, CTAPHID.INIT, body)

    def _allocate(self) -> int:
        while self._next_cid in (0, BROADCAST) or self._next_cid in self._channels:
            self._next_cid = (self._next_cid + 1) & 0xFFFFFFFF
        cid = self._next_cid
        self._channels.add(cid)
        self._next_cid = (cid + 1) & 0xFFFFFFFF
        return cid

    def _abandon(self, cid: int) -> None:
        if self._assembly is not None and self._assembly.cid == cid:
            self._assembly = None
        txn = self._txn
        if txn is not None and txn.cid == cid:
            # Its answer is dropped; the key stays busy until the worker has seen the cancel
            # (one request at a time reaches the authenticator).
            txn.abandoned = True
            txn.cancel.set()
        if self._lock_cid == cid:
            self._lock_cid = None

    def _cancel(self, cid: int) -> None:
        """CANCEL: the request in flight on this channel ends with CTAP2_ERR_KEEPALIVE_CANCEL
        (the authenticator's own answer); on any other channel, or with nothing in flight, it
        is ignored (CTAP 2.1 §11.2.9.1.5). No answer of its own."""
        if self._assembly is not None and self._assembly.cid == cid:
            self._assembly = None
        txn = self._txn
        if txn is not None and txn.cid == cid:
            txn.cancel.set()

    def _dispatch(self, cid: int, cmd: int, data: bytes) -> None:
        if cmd == CTAPHID.PING:
            self._reply(cid, cmd, data)
        elif cmd == CTAPHID.WINK:
            if data:
                return self._error(cid, HidError.INVALID_LEN)
            self.winks += 1
            if self._on_wink is not None:
                self._on_wink()
            self._reply(cid, cmd, b"")
        elif cmd == CTAPHID.LOCK:
            self._lock_channel(cid, data)
        elif cmd == CTAPHID.CBOR:
            if not data:
                return self._error(cid, HidError.INVALID_LEN)
            self._start(cid, data)
        else:  # MSG (no U2F on this key), KEEPALIVE/ERROR from a host, vendor and unknown ones
            self._error(cid, HidError.INVALID_CMD)

    def _lock_channel(self, cid: int, data: bytes) -> None:
        if len(data) != 1:
            return self._error(cid, HidError.INVALID_LEN)
        if data[0] > MAX_LOCK_SECONDS:
            return self._error(cid, HidError.INVALID_PAR)
        if data[0] == 0:
            self._lock_cid = None
        else:
            self._lock_cid, self._lock_until = cid, self._clock() + data[0]
        self._reply(cid, CTAPHID.LOCK, b"")

    # -- CBOR in the worker

    def _start(self, cid: int, data: bytes) -> None:
        txn = _Transaction(cid, last_keepalive=self._clock())
        self._txn = txn
        txn.worker = threading.Thread(target=self._work, args=(txn, data), name=f"ctaphid-{cid:08x}", daemon=True)
        keepalive = threading.Thread(target=self._keepalives, args=(txn,), name="ctaphid-keepalive", daemon=True)
        txn.worker.start()
        keepalive.start()

    def _work(self, txn: _Transaction, data: bytes) -> None:
        def on_keepalive(status: STATUS) -> None:
            with self._lock:
                changed, txn.status = txn.status != status, status
                if changed and status == STATUS.UPNEEDED:
                    self._keepalive(txn)  # at once: the host shows "touch your key" now

        try:
            answer = self._call(CTAPHID.CBOR, data, txn.cancel, on_keepalive)
        except Exception as e:  # noqa: BLE001 - an authenticator fault must not kill the device
            log.error("the authenticator failed on a CBOR request: %s: %s", type(e).__name__, e)
            answer = b""
            error = True
        else:
            error = False
        with self._lock:
            txn.finished.set()
            if self._txn is txn:
                self._txn = None
            if txn.abandoned:
                return
            if error:
                self._error(txn.cid, HidError.OTHER)
            else:
                self._reply(txn.cid, CTAPHID.CBOR, answer)

    def _keepalives(self, txn: _Transaction) -> None:
        """KEEPALIVE with the current status every `keepalive_interval` until the answer."""
        while True:
            with self._lock:
                due = txn.last_keepalive + self._keepalive_interval - self._clock()
                if due <= 0 and not txn.finished.is_set():
                    self._keepalive(txn)
                    continue
            if txn.finished.wait(max(due, 0.001)):
                return

    def _keepalive(self, txn: _Transaction) -> None:
        if txn.finished.is_set() or txn.abandoned:
            return
        txn.last_keepalive = self._clock()
        self._reply(txn.cid, CTAPHID.KEEPALIVE, bytes([txn.status]))

    # -- output

    def _reply(self, cid: int, cmd: int, payload: bytes) -> None:
        for packet in frames(cid, cmd, payload):
            self._send(packet)

    def _error(self, cid: int, code: HidError) -> None:
        self._reply(cid, CTAPHID.ERROR, bytes([code]))
