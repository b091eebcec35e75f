"""The emulated key's CTAPHID transport, packet by packet: what a host sees on the wire.

The authenticator behind it is the real software key; the host is raw 64-byte reports (for the
misbehaviour python-fido2 never produces). test_ctaphid_client.py drives the same transport
with python-fido2's own HID client.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from fido2 import cbor
from fido2.ctap import STATUS, CtapError
from fido2.ctap2.base import Ctap2
from fido2.hid import CTAPHID

from tests.ctaphid_support import RawHost, Wire, make_wire
from yktool.fido.ctaphid import (
    BROADCAST,
    CAPABILITIES,
    CONT_DATA,
    INIT_DATA,
    MAX_MESSAGE,
    MSG_TIMEOUT,
    HidError,
    frames,
)
from yktool.fido.touch import TouchPolicy

MAKE_CREDENTIAL = bytes([Ctap2.CMD.MAKE_CREDENTIAL]) + cbor.encode(
    {
        1: b"\x11" * 32,
        2: {"id": "example.com", "name": "Example"},
        3: {"id": b"user", "name": "user"},
        4: [{"type": "public-key", "alg": -7}],
    }
)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def wire(tmp_path: Path) -> Wire:
    return make_wire(tmp_path)


@pytest.fixture
def host(wire: Wire) -> RawHost:
    return RawHost(wire)


def error_of(host: RawHost, cid: int) -> int:
    got_cid, cmd, body = host.message()
    assert (got_cid, cmd, len(body)) == (cid, CTAPHID.ERROR, 1)
    return body[0]


def test_init_allocates_a_channel_echoes_the_nonce_and_answers_like_a_yubikey(host: RawHost) -> None:
    host.send(BROADCAST, CTAPHID.INIT, b"\x01\x02\x03\x04\x05\x06\x07\x08")
    cid, cmd, body = host.message()
    assert (cid, cmd) == (BROADCAST, CTAPHID.INIT)
    assert body[:8] == b"\x01\x02\x03\x04\x05\x06\x07\x08"
    new_cid = int.from_bytes(body[8:12], "big")
    assert new_cid not in (0, BROADCAST)
    assert body[12] == 2  # CTAPHID protocol version
    assert tuple(body[13:16]) == (5, 4, 3)  # device version: a YubiKey 5 firmware number
    assert body[16] == CAPABILITIES == 0x0D  # WINK | CBOR | NMSG: no U2F
    assert host.init(b"another!") != new_cid  # each INIT on broadcast gets its own channel


def test_init_with_a_short_nonce_is_invalid_length(host: RawHost) -> None:
    host.send(BROADCAST, CTAPHID.INIT, b"1234567")
    assert error_of(host, BROADCAST) == HidError.INVALID_LEN


@pytest.mark.parametrize("cmd", [CTAPHID.PING, CTAPHID.CBOR, CTAPHID.WINK])
def test_only_init_may_use_the_broadcast_channel(host: RawHost, cmd: int) -> None:
    host.send(BROADCAST, cmd, b"x")
    assert error_of(host, BROADCAST) == HidError.INVALID_CHANNEL


def test_channel_zero_and_channels_never_allocated_are_invalid(host: RawHost) -> None:
    host.send(0, CTAPHID.PING, b"x")
    assert error_of(host, 0) == HidError.INVALID_CHANNEL
    host.send(0x01020304, CTAPHID.PING, b"x")
    assert error_of(host, 0x01020304) == HidError.INVALID_CHANNEL


def test_ping_of_the_largest_message_7609_bytes_comes_back_whole(host: RawHost) -> None:
    cid = host.init()
    payload = bytes(i % 251 for i in range(MAX_MESSAGE))
    assert MAX_MESSAGE == 7609 == INIT_DATA + 128 * CONT_DATA
    assert len(frames(cid, CTAPHID.PING, payload)) == 129
    host.send(cid, CTAPHID.PING, payload)
    assert host.message() == (cid, CTAPHID.PING, payload)


def test_a_message_over_7609_bytes_is_invalid_length(host: RawHost, wire: Wire) -> None:
    cid = host.init()
    header = cid.to_bytes(4, "big") + bytes([0x80 | CTAPHID.PING]) + (MAX_MESSAGE + 1).to_bytes(2, "big")
    wire.write(header.ljust(64, b"\0"))
    assert error_of(host, cid) == HidError.INVALID_LEN


@pytest.mark.parametrize("cmd", [CTAPHID.MSG, CTAPHID.KEEPALIVE, CTAPHID.ERROR, 0x3C, 0x40, 0x55, 0x7F])
def test_msg_and_unknown_commands_are_invalid_cmd(host: RawHost, cmd: int) -> None:
    cid = host.init()
    host.send(cid, cmd, b"\x00\x01\x00\x00")
    assert error_of(host, cid) == HidError.INVALID_CMD


def test_empty_cbor_is_invalid_length(host: RawHost) -> None:
    cid = host.init()
    host.send(cid, CTAPHID.CBOR, b"")
    assert error_of(host, cid) == HidError.INVALID_LEN


def test_a_skipped_sequence_number_is_invalid_seq_and_the_channel_recovers(host: RawHost, wire: Wire) -> None:
    cid = host.init()
    packets = frames(cid, CTAPHID.PING, b"p" * 200)  # init + seq 0, 1, 2
    wire.write(packets[0])
    wire.write(packets[2])  # seq 1 before seq 0
    assert error_of(host, cid) == HidError.INVALID_SEQ
    wire.write(packets[3])  # the rest of the aborted message is ignored
    assert wire.quiet()
    host.send(cid, CTAPHID.PING, b"again")
    assert host.message() == (cid, CTAPHID.PING, b"again")


def test_a_new_request_before_the_last_one_was_complete_is_invalid_seq(host: RawHost, wire: Wire) -> None:
    cid = host.init()
    wire.write(frames(cid, CTAPHID.PING, b"p" * 100)[0])
    host.send(cid, CTAPHID.PING, b"short")
    assert error_of(host, cid) == HidError.INVALID_SEQ


def test_a_continuation_nobody_announced_is_ignored(host: RawHost, wire: Wire) -> None:
    cid = host.init()
    wire.write(frames(cid, CTAPHID.PING, b"p" * 100)[1])
    assert wire.quiet()


def test_a_half_sent_message_times_out_with_err_msg_timeout(tmp_path: Path) -> None:
    clock = FakeClock()
    wire = make_wire(tmp_path, clock=clock)
    host = RawHost(wire)
    cid = host.init()
    packets = frames(cid, CTAPHID.PING, b"p" * 200)
    wire.write(packets[0])
    clock.now += MSG_TIMEOUT * 0.9
    wire.transport.tick()
    wire.write(packets[1])  # each packet restarts the wait
    clock.now += MSG_TIMEOUT * 0.9
    wire.transport.tick()
    assert wire.quiet(0.05)
    clock.now += MSG_TIMEOUT * 0.2
    wire.transport.tick()
    assert error_of(host, cid) == HidError.MSG_TIMEOUT
    wire.write(packets[2])  # too late: ignored
    assert wire.quiet(0.05)
    host.send(cid, CTAPHID.PING, b"fresh")
    assert host.message() == (cid, CTAPHID.PING, b"fresh")


def test_another_channel_is_busy_while_a_message_is_half_sent(host: RawHost, wire: Wire) -> None:
    a, b = host.init(b"aaaaaaaa"), host.init(b"bbbbbbbb")
    packets = frames(a, CTAPHID.PING, b"p" * 100)
    wire.write(packets[0])
    host.send(b, CTAPHID.PING, b"me too")
    assert error_of(host, b) == HidError.CHANNEL_BUSY
    wire.write(packets[1])
    assert host.message() == (a, CTAPHID.PING, b"p" * 100)
    host.send(b, CTAPHID.PING, b"me too")
    assert host.message() == (b, CTAPHID.PING, b"me too")


def wait_until(check: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_while_a_touch_is_awaited_other_channels_are_busy_but_init_still_answers(tmp_path: Path) -> None:
    wire = make_wire(tmp_path, TouchPolicy.ASK)
    host = RawHost(wire)
    a, b = host.init(b"aaaaaaaa"), host.init(b"bbbbbbbb")
    host.send(a, CTAPHID.CBOR, MAKE_CREDENTIAL)
    wait_until(lambda: wire.gate.waiting)
    keepalives: list[tuple[float, int]] = []
    host.send(b, CTAPHID.PING, b"hello")
    assert host.message(keepalives=keepalives) == (b, CTAPHID.ERROR, bytes([HidError.CHANNEL_BUSY]))
    host.send(a, CTAPHID.PING, b"hello")  # the busy channel itself too
    assert host.message(keepalives=keepalives) == (a, CTAPHID.ERROR, bytes([HidError.CHANNEL_BUSY]))
    host.send(BROADCAST, CTAPHID.INIT, b"cccccccc")
    cid, cmd, body = host.message(keepalives=keepalives)
    assert (cid, cmd, body[:8]) == (BROADCAST, CTAPHID.INIT, b"cccccccc")
    assert wire.gate.answer(True)
    cid, cmd, body = host.message()
    assert (cid, cmd, body[0]) == (a, CTAPHID.CBOR, 0)  # the credential is made


def test_keepalive_upneeded_every_100ms_while_a_touch_is_awaited(tmp_path: Path) -> None:
    wire = make_wire(tmp_path, TouchPolicy.ASK)
    host = RawHost(wire)
    cid = host.init()
    start = time.monotonic()
    host.send(cid, CTAPHID.CBOR, MAKE_CREDENTIAL)
    keepalives: list[tuple[float, int]] = []
    threading.Timer(0.65, wire.gate.answer, args=(True,)).start()
    got_cid, cmd, body = host.message(keepalives=keepalives)
    assert (got_cid, cmd, body[0]) == (cid, CTAPHID.CBOR, 0)
    # a loaded machine may get a PROCESSING out before the worker asks for the touch (a real key
    # does the same while it works); from the first UPNEEDED on, every keepalive says UPNEEDED
    statuses = [status for _, status in keepalives]
    assert STATUS.UPNEEDED in statuses, keepalives
    waiting = statuses.index(STATUS.UPNEEDED)
    assert set(statuses[:waiting]) <= {STATUS.PROCESSING}, keepalives
    assert set(statuses[waiting:]) == {STATUS.UPNEEDED}, keepalives
    times = [start] + [t for t, _ in keepalives]
    gaps = sorted(b - a for a, b in zip(times[1:], times[2:], strict=False))
    assert 3 <= len(keepalives) <= 9, keepalives
    assert keepalives[0][0] - start < 0.1 or waiting > 0  # the first one as soon as the key waits
    assert 0.08 <= gaps[len(gaps) // 2] <= 0.25, gaps  # a busy machine may stretch one, not all
    assert gaps[0] >= 0.05, gaps
    assert wire.quiet(0.25)  # nothing after the answer


def test_keepalive_processing_while_the_authenticator_works_without_a_touch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = make_wire(tmp_path)
    real_call = wire.key.call

    def slow_call(
        cmd: int,
        data: bytes = b"",
        event: threading.Event | None = None,
        on_keepalive: Callable[[STATUS], None] | None = None,
    ) -> bytes:
        time.sleep(0.45)  # a slow authenticator: e.g. a big credential list
        return real_call(cmd, data, event, on_keepalive)

    monkeypatch.setattr(wire.key, "call", slow_call)
    host = RawHost(wire)
    cid = host.init()
    host.send(cid, CTAPHID.CBOR, bytes([Ctap2.CMD.GET_INFO]))
    keepalives: list[tuple[float, int]] = []
    got_cid, cmd, body = host.message(keepalives=keepalives)
    assert (got_cid, cmd, body[0]) == (cid, CTAPHID.CBOR, 0)
    # ~4 in 0.45 s at 100 ms; a loaded machine may stretch the keepalive thread's sleeps
    assert 2 <= len(keepalives) <= 5, keepalives
    assert {status for _, status in keepalives} == {STATUS.PROCESSING}


def test_cancel_during_a_touch_wait_ends_the_request_with_keepalive_cancel(tmp_path: Path) -> None:
    wire = make_wire(tmp_path, TouchPolicy.ASK)
    host = RawHost(wire)
    cid = host.init()
    host.send(cid, CTAPHID.CBOR, MAKE_CREDENTIAL)
    wait_until(lambda: wire.gate.waiting)
    host.send(cid, CTAPHID.CANCEL)
    assert host.message() == (cid, CTAPHID.CBOR, bytes([CtapError.ERR.KEEPALIVE_CANCEL]))
    assert wire.gate.counts().cancelled == 1
    assert wire.key.touches == 0
    host.send(cid, CTAPHID.PING, b"next")  # the key is free again
    assert host.message() == (cid, CTAPHID.PING, b"next")


def test_cancel_from_another_channel_or_with_nothing_in_flight_is_ignored(tmp_path: Path) -> None:
    wire = make_wire(tmp_path, TouchPolicy.ASK)
    host = RawHost(wire)
    a, b = host.init(b"aaaaaaaa"), host.init(b"bbbbbbbb")
    host.send(b, CTAPHID.CANCEL)
    assert wire.quiet(0.1)
    host.send(a, CTAPHID.CBOR, MAKE_CREDENTIAL)
    wait_until(lambda: wire.gate.waiting)
    host.send(b, CTAPHID.CANCEL)
    time.sleep(0.1)
    assert wire.gate.waiting and wire.gate.counts().cancelled == 0
    assert wire.gate.answer(True)
    cid, cmd, body = host.message()
    assert (cid, cmd, body[0]) == (a, CTAPHID.CBOR, 0)


def test_init_on_a_channel_resyncs_it_dropping_its_half_sent_message(host: RawHost, wire: Wire) -> None:
    cid = host.init()
    packets = frames(cid, CTAPHID.PING, b"p" * 100)
    wire.write(packets[0])
    host.send(cid, CTAPHID.INIT, b"resync!!")
    got_cid, cmd, body = host.message()
    assert (got_cid, cmd, body[:8]) == (cid, CTAPHID.INIT, b"resync!!")
    assert int.from_bytes(body[8:12], "big") == cid  # the same channel, not a new one
    wire.write(packets[1])  # the dropped message's rest: ignored
    assert wire.quiet()
    host.send(cid, CTAPHID.PING, b"after")
    assert host.message() == (cid, CTAPHID.PING, b"after")


def test_init_on_a_channel_abandons_its_request_waiting_for_a_touch(tmp_path: Path) -> None:
    wire = make_wire(tmp_path, TouchPolicy.ASK)
    host = RawHost(wire)
    cid = host.init()
    host.send(cid, CTAPHID.CBOR, MAKE_CREDENTIAL)
    wait_until(lambda: wire.gate.waiting)
    host.send(cid, CTAPHID.INIT, b"resync!!")
    keepalives: list[tuple[float, int]] = []
    assert host.message(keepalives=keepalives)[1] == CTAPHID.INIT
    wait_until(lambda: not wire.transport.busy)
    assert wire.quiet(0.2)  # the abandoned request's answer never comes
    assert wire.key.touches == 0
    host.send(cid, CTAPHID.PING, b"after")
    assert host.message() == (cid, CTAPHID.PING, b"after")


def test_lock_keeps_other_channels_busy_until_released_or_expired(tmp_path: Path) -> None:
    clock = FakeClock()
    wire = make_wire(tmp_path, clock=clock)
    host = RawHost(wire)
    a, b = host.init(b"aaaaaaaa"), host.init(b"bbbbbbbb")
    host.send(a, CTAPHID.LOCK, bytes([11]))
    assert error_of(host, a) == HidError.INVALID_PAR  # 10 s at most
    host.send(a, CTAPHID.LOCK, b"")
    assert error_of(host, a) == HidError.INVALID_LEN
    host.send(a, CTAPHID.LOCK, bytes([3]))
    assert host.message() == (a, CTAPHID.LOCK, b"")
    host.send(b, CTAPHID.PING, b"b")
    assert error_of(host, b) == HidError.CHANNEL_BUSY
    host.send(a, CTAPHID.PING, b"a")
    assert host.message() == (a, CTAPHID.PING, b"a")
    host.send(a, CTAPHID.LOCK, bytes([0]))  # released
    assert host.message() == (a, CTAPHID.LOCK, b"")
    host.send(b, CTAPHID.PING, b"b")
    assert host.message() == (b, CTAPHID.PING, b"b")
    host.send(b, CTAPHID.LOCK, bytes([2]))
    assert host.message() == (b, CTAPHID.LOCK, b"")
    clock.now += 2.01
    wire.transport.tick()
    host.send(a, CTAPHID.PING, b"a")  # expired
    assert host.message() == (a, CTAPHID.PING, b"a")


def test_wink_answers_empty_and_is_counted(host: RawHost, wire: Wire) -> None:
    cid = host.init()
    host.send(cid, CTAPHID.WINK)
    assert host.message() == (cid, CTAPHID.WINK, b"")
    assert wire.transport.winks == 1
