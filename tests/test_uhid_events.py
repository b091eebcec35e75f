"""`struct uhid_event` as the kernel lays it out (include/uapi/linux/uhid.h, all __packed__):
a u32 type, then the request. Offsets below are the header's, counted by hand."""

from __future__ import annotations

import struct

import pytest
from fido2.hid.base import parse_report_descriptor

from yktool.fido.uhid import (
    EVENT_SIZE,
    FIDO_REPORT_DESCRIPTOR,
    EventType,
    pack_create2,
    pack_destroy,
    pack_get_report_reply,
    pack_input2,
    parse_event,
)


def u16(buf: bytes, at: int) -> int:
    return int(struct.unpack_from("=H", buf, at)[0])


def u32(buf: bytes, at: int) -> int:
    return int(struct.unpack_from("=I", buf, at)[0])


def test_event_numbers_are_the_kernel_s() -> None:
    assert (EventType.DESTROY, EventType.START, EventType.OPEN, EventType.CLOSE, EventType.OUTPUT) == (1, 2, 4, 5, 6)
    assert (EventType.GET_REPORT, EventType.CREATE2, EventType.INPUT2, EventType.SET_REPORT) == (9, 11, 12, 13)


def test_create2_layout() -> None:
    ev = pack_create2(
        name="yktool software key",
        phys="yktool-emulate/1/ab",
        uniq="62E71F17FFE9",
        vendor=0x1209,
        product=0x0001,
        version=0x0543,
    )
    # u32 type | name[128] | phys[64] | uniq[64] | u16 rd_size | u16 bus | u32 vendor, product,
    # version, country | rd_data[4096]
    assert len(ev) == EVENT_SIZE == 4 + 128 + 64 + 64 + 2 + 2 + 4 * 4 + 4096 == 4376
    assert u32(ev, 0) == 11
    assert ev[4:132].rstrip(b"\0") == b"yktool software key"
    assert ev[132:196].rstrip(b"\0") == b"yktool-emulate/1/ab"
    assert ev[196:260].rstrip(b"\0") == b"62E71F17FFE9"
    assert u16(ev, 260) == len(FIDO_REPORT_DESCRIPTOR)
    assert u16(ev, 262) == 0x03  # BUS_USB
    assert (u32(ev, 264), u32(ev, 268), u32(ev, 272), u32(ev, 276)) == (0x1209, 0x0001, 0x0543, 0)
    assert ev[280 : 280 + len(FIDO_REPORT_DESCRIPTOR)] == FIDO_REPORT_DESCRIPTOR
    assert set(ev[280 + len(FIDO_REPORT_DESCRIPTOR) :]) == {0}


def test_create2_refuses_a_name_the_kernel_would_cut() -> None:
    with pytest.raises(ValueError):
        pack_create2(name="x" * 128, phys="p", uniq="u", vendor=1, product=1)


def test_the_report_descriptor_is_a_fido_one_with_64_byte_reports() -> None:
    # python-fido2's own parser, the one it runs on every /dev/hidraw* it lists
    assert parse_report_descriptor(FIDO_REPORT_DESCRIPTOR) == (64, 64)
    assert FIDO_REPORT_DESCRIPTOR[:3] == b"\x06\xd0\xf1"  # usage page 0xF1D0


def test_input2_layout() -> None:
    report = bytes(range(64))
    ev = pack_input2(report)
    assert u32(ev, 0) == 12 and u16(ev, 4) == 64 and ev[6:70] == report
    assert len(ev) == 4 + 2 + 4096


def test_output_event_parses_with_and_without_the_report_number() -> None:
    report = bytes(range(1, 65))

    def output(data: bytes) -> bytes:  # u32 type | data[4096] | u16 size | u8 rtype
        return struct.pack("=I", 6) + data.ljust(4096, b"\0") + struct.pack("=HB", len(data), 1)

    assert parse_event(output(b"\0" + report)).data == report  # what hidraw writes give (size 65)
    assert parse_event(output(report)).data == report
    assert parse_event(output(b"\0" + report)).type == EventType.OUTPUT


def test_short_events_are_zero_extended() -> None:
    assert parse_event(struct.pack("=I", 2)).type == EventType.START


def test_get_report_is_refused_with_its_id() -> None:
    request = struct.pack("=IIBB", 9, 77, 0, 0)
    ev = parse_event(request)
    assert (ev.type, ev.request_id) == (EventType.GET_REPORT, 77)
    reply = pack_get_report_reply(77, 5)
    assert (u32(reply, 0), u32(reply, 4), u16(reply, 8), u16(reply, 10)) == (10, 77, 5, 0)


def test_destroy_is_type_1() -> None:
    ev = pack_destroy()
    assert u32(ev, 0) == 1 and set(ev[4:]) == {0}
