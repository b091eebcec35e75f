"""The software key as a CTAP device at the byte level: every request, however malformed, gets a
status byte back (never a Python exception), and the odd commands behave as the spec says.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from fido2 import cbor
from fido2.ctap import CtapError
from fido2.ctap2.base import AssertionResponse, Ctap2
from fido2.hid import CTAPHID
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from yktool.fido.softkey import SoftKey

ERR = CtapError.ERR


@pytest.fixture
def key(tmp_path: Path) -> SoftKey:
    return SoftKey(tmp_path / "k.json")


def status(key: SoftKey, cmd: int, params: cbor.CborType | None = None) -> int:
    data = bytes([cmd]) + (cbor.encode(params) if params is not None else b"")
    return key.call(CTAPHID.CBOR, data)[0]


def test_bad_requests_get_ctap_errors(key: SoftKey) -> None:
    assert key.call(CTAPHID.CBOR, b"")[0] == ERR.INVALID_LENGTH
    assert key.call(CTAPHID.CBOR, b"\x04\xa1\x01")[0] == ERR.INVALID_CBOR
    assert status(key, 0x01, [1, 2]) == ERR.CBOR_UNEXPECTED_TYPE
    assert status(key, 0x55) == ERR.INVALID_COMMAND
    assert status(key, 0x01, {1: b"\0" * 32}) == ERR.MISSING_PARAMETER
    assert status(key, 0x02, {1: "x"}) == ERR.MISSING_PARAMETER
    assert status(key, 0x08) == ERR.NOT_ALLOWED  # getNextAssertion with nothing pending
    assert status(key, 0x06, {1: 3, 2: 1}) == ERR.SUCCESS  # getPinRetries needs no protocol check
    assert status(key, 0x06, {1: 3, 2: 2}) == ERR.INVALID_PARAMETER  # unknown PIN protocol
    assert status(key, 0x06, {1: 2, 2: 0x20}) == ERR.INVALID_SUBCOMMAND
    assert status(key, 0x06, {1: 2, 2: 6}) == ERR.INVALID_SUBCOMMAND  # no built-in UV
    assert status(key, 0x02, {1: "x", 2: b"\0" * 32, 5: {"uv": True}}) == ERR.INVALID_OPTION
    assert (
        status(
            key,
            0x01,
            {1: b"\0" * 32, 2: {"id": "x"}, 3: {"id": b"u"}, 4: [{"type": "public-key", "alg": -7}], 7: {"up": False}},
        )
        == ERR.INVALID_OPTION
    )
    assert (
        status(
            key,
            0x01,
            {
                1: b"\0" * 32,
                2: {"id": "x"},
                3: {"id": b"u"},
                4: [{"type": "public-key", "alg": -7}],
                6: {"credProtect": 7},
            },
        )
        == ERR.INVALID_OPTION
    )
    with pytest.raises(CtapError) as err:
        key.call(CTAPHID.MSG, b"\0" * 10)  # no CTAP1/U2F
    assert err.value.code == ERR.INVALID_COMMAND
    assert key.call(CTAPHID.PING, b"hello") == b"hello"


def user_id(assertion: AssertionResponse) -> bytes:
    assert assertion.user is not None  # a discoverable credential's assertion names its user
    user_id: bytes = assertion.user["id"]
    return user_id


def test_next_assertion_walks_discovered_credentials_then_stops(key: SoftKey) -> None:
    ctap = Ctap2(key)
    for user in (b"a", b"b", b"c"):
        ctap.make_credential(
            b"\0" * 32, {"id": "x"}, {"id": user}, [{"type": "public-key", "alg": -8}], options={"rk": True}
        )
    first = ctap.get_assertion("x", b"\0" * 32)
    assert first.number_of_credentials == 3
    users = [user_id(first)] + [user_id(ctap.get_next_assertion()) for _ in range(2)]
    assert users == [b"c", b"b", b"a"]
    with pytest.raises(CtapError) as err:
        ctap.get_next_assertion()
    assert err.value.code == ERR.NOT_ALLOWED
    # A fresh key-store entry for the same RP and user replaces the old one.
    ctap.make_credential(
        b"\0" * 32, {"id": "x"}, {"id": b"a"}, [{"type": "public-key", "alg": -7}], options={"rk": True}
    )
    assert ctap.get_assertion("x", b"\0" * 32).number_of_credentials == 3
    assert ctap.get_info().remaining_disc_creds == 22


def test_key_store_full(key: SoftKey) -> None:
    ctap = Ctap2(key)
    for n in range(ctap.info.remaining_disc_creds or 0):
        ctap.make_credential(
            b"\0" * 32, {"id": "x"}, {"id": bytes([n])}, [{"type": "public-key", "alg": -8}], options={"rk": True}
        )
    before = key.path.read_bytes()
    with pytest.raises(CtapError) as err:
        ctap.make_credential(
            b"\0" * 32, {"id": "x"}, {"id": b"one more"}, [{"type": "public-key", "alg": -8}], options={"rk": True}
        )
    assert err.value.code == ERR.KEY_STORE_FULL
    assert key.path.read_bytes() == before


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    cmd=st.sampled_from([0x01, 0x02, 0x04, 0x06, 0x07, 0x08, 0x0A, 0x0B, 0x99]),
    payload=st.one_of(
        st.binary(max_size=64),
        st.dictionaries(
            st.integers(-2, 12),
            st.one_of(
                st.integers(-300, 300),
                st.binary(max_size=40),
                st.text(max_size=8),
                st.booleans(),
                st.lists(st.integers(-5, 5), max_size=3),
            ),
            max_size=6,
        ).map(cbor.encode),
    ),
)
def test_any_request_gets_a_status_byte(key: SoftKey, cmd: int, payload: bytes) -> None:
    key.presence = lambda: None  # never "touch" for a fuzz input (a reset would be a touch away)
    reply = key.call(CTAPHID.CBOR, bytes([cmd]) + payload)
    assert len(reply) >= 1
    if reply[0] == 0 and len(reply) > 1:
        cbor.decode(reply[1:])  # a success carries valid CBOR
    Ctap2(key).get_info()  # and the key still works
