"""The software key's clientPIN, driven through python-fido2's `ClientPin` (PIN protocols 1 and 2):
retry counters, the 3-in-a-row block that needs a replug, the permanent block at 0, PIN policy,
token permissions and RP binding.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from fido2.ctap import CtapError
from fido2.ctap2.base import Ctap2
from fido2.ctap2.pin import ClientPin, PinProtocol, PinProtocolV1, PinProtocolV2

from yktool.fido import open_device
from yktool.fido.devices import replug
from yktool.fido.softkey import SoftKey

PIN = "2468"
WRONG = "0000"
RP_ID = "example.com"
ERR = CtapError.ERR
PROTOCOLS: dict[str, type[PinProtocol]] = {"v1": PinProtocolV1, "v2": PinProtocolV2}


def shared_secret(ctap: Ctap2, proto: PinProtocol) -> tuple[dict[int, object], bytes]:
    """Platform side of the key agreement, with public python-fido2 calls only."""
    resp = ctap.client_pin(proto.VERSION, ClientPin.CMD.GET_KEY_AGREEMENT)
    key_agreement, shared = proto.encapsulate(resp[ClientPin.RESULT.KEY_AGREEMENT])
    return dict(key_agreement), shared


@pytest.fixture(params=["v2", "v1"])
def protocol(request: pytest.FixtureRequest) -> type[PinProtocol]:
    return PROTOCOLS[request.param]


def open_key(tmp_path: Path) -> tuple[str, SoftKey]:
    spec = f"sim:{tmp_path / 'key.json'}"
    device = open_device(spec)
    assert isinstance(device, SoftKey)
    return spec, device


def client_pin(device: SoftKey, protocol: type[PinProtocol]) -> ClientPin:
    return ClientPin(Ctap2(device), protocol())


def code_of(call: object) -> CtapError.ERR:
    assert callable(call)
    with pytest.raises(CtapError) as err:
        call()
    return err.value.code


def test_set_pin_flips_client_pin_option_and_stores_only_a_hash(tmp_path: Path, protocol: type[PinProtocol]) -> None:
    _, device = open_key(tmp_path)
    assert Ctap2(device).info.options["clientPin"] is False
    client_pin(device, protocol).set_pin(PIN)
    assert Ctap2(device).info.options["clientPin"] is True
    assert client_pin(device, protocol).get_pin_retries() == (8, False)
    state = device.path.read_text()
    assert PIN not in state
    stored = json.loads(state)["pin_hash"]
    import base64

    assert base64.b64decode(stored) == hashlib.sha256(PIN.encode()).digest()[:16]
    assert (device.path.stat().st_mode & 0o777) == 0o600
    # Setting it again is not allowed: that is what changePIN is for.
    assert code_of(lambda: client_pin(device, protocol).set_pin("9999")) == ERR.NOT_ALLOWED


def test_wrong_pins_decrement_need_replug_after_three_and_block_after_eight(
    tmp_path: Path, protocol: type[PinProtocol]
) -> None:
    spec, device = open_key(tmp_path)
    client_pin(device, protocol).set_pin(PIN)

    def attempt(pin: str) -> CtapError.ERR | None:
        try:
            client_pin(device, protocol).get_pin_token(pin)
        except CtapError as e:
            return e.code
        return None

    def retries() -> tuple[int, int | None]:
        return client_pin(device, protocol).get_pin_retries()

    assert attempt(WRONG) == ERR.PIN_INVALID
    assert retries() == (7, False)
    assert attempt(WRONG) == ERR.PIN_INVALID
    assert attempt(WRONG) == ERR.PIN_AUTH_BLOCKED  # third in a row
    assert retries() == (5, True)
    # Blocked until replug: even the right PIN is refused, and no retry is spent.
    assert attempt(PIN) == ERR.PIN_AUTH_BLOCKED
    assert retries() == (5, True)
    # The block survives reopening the key (a new CLI run: the key stayed plugged in).
    assert client_pin(SoftKey(device.path), protocol).get_pin_retries() == (5, True)
    replug(spec)
    assert retries() == (5, False)
    assert attempt(PIN) is None  # the right PIN resets the counter
    assert retries() == (8, False)

    for expected in (ERR.PIN_INVALID, ERR.PIN_INVALID, ERR.PIN_AUTH_BLOCKED):
        assert attempt(WRONG) == expected
    replug(spec)
    for expected in (ERR.PIN_INVALID, ERR.PIN_INVALID, ERR.PIN_AUTH_BLOCKED):
        assert attempt(WRONG) == expected
    replug(spec)
    assert attempt(WRONG) == ERR.PIN_INVALID
    assert retries() == (1, False)
    assert attempt(WRONG) == ERR.PIN_BLOCKED  # the eighth
    assert retries()[0] == 0
    replug(spec)
    assert attempt(PIN) == ERR.PIN_BLOCKED  # for good: only a reset helps


def test_change_pin(tmp_path: Path, protocol: type[PinProtocol]) -> None:
    _, device = open_key(tmp_path)
    client_pin(device, protocol).set_pin(PIN)
    assert code_of(lambda: client_pin(device, protocol).change_pin(WRONG, "13579")) == ERR.PIN_INVALID
    assert client_pin(device, protocol).get_pin_retries()[0] == 7
    client_pin(device, protocol).change_pin(PIN, "13579")
    assert client_pin(device, protocol).get_pin_retries()[0] == 8
    assert code_of(lambda: client_pin(device, protocol).get_pin_token(PIN)) == ERR.PIN_INVALID
    client_pin(device, protocol).get_pin_token("13579")


def test_pin_operations_without_a_pin(tmp_path: Path) -> None:
    _, device = open_key(tmp_path)
    assert code_of(lambda: client_pin(device, PinProtocolV2).get_pin_token(PIN)) == ERR.PIN_NOT_SET
    assert code_of(lambda: client_pin(device, PinProtocolV2).change_pin(PIN, "5555")) == ERR.PIN_NOT_SET


@pytest.mark.parametrize("new_pin", ["123", "x" * 64], ids=["too-short", "too-long"])
def test_pin_policy_violation(tmp_path: Path, protocol: type[PinProtocol], new_pin: str) -> None:
    """python-fido2 refuses bad PINs itself, so send the padded PIN with its public pieces."""
    _, device = open_key(tmp_path)
    ctap = Ctap2(device)
    proto = protocol()
    key_agreement, shared = shared_secret(ctap, proto)
    padded = new_pin.encode().ljust(64, b"\0")
    padded += b"\0" * (-len(padded) % 16)
    pin_enc = proto.encrypt(shared, padded)
    with pytest.raises(CtapError) as err:
        ctap.client_pin(
            proto.VERSION,
            ClientPin.CMD.SET_PIN,
            key_agreement=key_agreement,
            new_pin_enc=pin_enc,
            pin_uv_param=proto.authenticate(shared, pin_enc),
        )
    assert err.value.code == ERR.PIN_POLICY_VIOLATION
    assert ctap.get_info().options["clientPin"] is False


def test_set_pin_with_a_bad_mac_is_refused(tmp_path: Path) -> None:
    _, device = open_key(tmp_path)
    ctap = Ctap2(device)
    proto: PinProtocol = PinProtocolV2()
    key_agreement, shared = shared_secret(ctap, proto)
    pin_enc = proto.encrypt(shared, PIN.encode().ljust(64, b"\0"))
    with pytest.raises(CtapError) as err:
        ctap.client_pin(
            2, ClientPin.CMD.SET_PIN, key_agreement=key_agreement, new_pin_enc=pin_enc, pin_uv_param=b"\0" * 32
        )
    assert err.value.code == ERR.PIN_AUTH_INVALID
    assert ctap.get_info().options["clientPin"] is False


def make_cred(ctap: Ctap2, proto: PinProtocol, token: bytes, rp_id: str) -> None:
    cdh = hashlib.sha256(rp_id.encode()).digest()
    ctap.make_credential(
        cdh,
        {"id": rp_id},
        {"id": b"u"},
        [{"type": "public-key", "alg": -7}],
        options={"rk": True},
        pin_uv_param=proto.authenticate(token, cdh),
        pin_uv_protocol=proto.VERSION,
    )


def test_token_permissions_and_rp_binding_enforced(tmp_path: Path, protocol: type[PinProtocol]) -> None:
    _, device = open_key(tmp_path)
    ctap = Ctap2(device)
    cp = client_pin(device, protocol)
    cp.set_pin(PIN)
    perm = ClientPin.PERMISSION

    ga_only = cp.get_pin_token(PIN, perm.GET_ASSERTION, RP_ID)
    assert code_of(lambda: make_cred(ctap, cp.protocol, ga_only, RP_ID)) == ERR.PIN_AUTH_INVALID

    bound = cp.get_pin_token(PIN, perm.MAKE_CREDENTIAL, RP_ID)
    make_cred(ctap, cp.protocol, bound, RP_ID)
    assert code_of(lambda: make_cred(ctap, cp.protocol, bound, "evil.example")) == ERR.PIN_AUTH_INVALID

    # Without an RP id the token binds to the first RP it is used for.
    unbound = cp.get_pin_token(PIN, perm.MAKE_CREDENTIAL)
    make_cred(ctap, cp.protocol, unbound, "first.example")
    assert code_of(lambda: make_cred(ctap, cp.protocol, unbound, RP_ID)) == ERR.PIN_AUTH_INVALID

    # Permissions this key cannot grant.
    assert code_of(lambda: cp.get_pin_token(PIN, perm.BIO_ENROLL)) == ERR.UNAUTHORIZED_PERMISSION
    # A forged token is refused.
    assert code_of(lambda: make_cred(ctap, cp.protocol, b"\1" * 32, RP_ID)) == ERR.PIN_AUTH_INVALID
    # Only a pinUvAuthParam made with the token counts; rk needs one when a PIN is set.
    with pytest.raises(CtapError) as err:
        ctap.make_credential(
            b"\0" * 32, {"id": RP_ID}, {"id": b"v"}, [{"type": "public-key", "alg": -7}], options={"rk": True}
        )
    assert err.value.code == ERR.PUAT_REQUIRED


def test_token_dies_on_replug_and_new_token(tmp_path: Path) -> None:
    spec, device = open_key(tmp_path)
    ctap = Ctap2(device)
    cp = ClientPin(ctap)
    cp.set_pin(PIN)
    token = cp.get_pin_token(PIN, ClientPin.PERMISSION.MAKE_CREDENTIAL, RP_ID)
    make_cred(ctap, cp.protocol, token, RP_ID)
    device.replug()
    assert code_of(lambda: make_cred(ctap, cp.protocol, token, RP_ID)) == ERR.PIN_AUTH_INVALID


def test_legacy_get_pin_token_gives_mc_and_ga(tmp_path: Path) -> None:
    _, device = open_key(tmp_path)
    ctap = Ctap2(device)
    cp = ClientPin(ctap)
    cp.set_pin(PIN)
    token = cp.get_pin_token(PIN)  # no permissions: CTAP 2.0 getPinToken
    make_cred(ctap, cp.protocol, token, RP_ID)
    token = cp.get_pin_token(PIN)  # the first one was spent by makeCredential
    cdh = b"\0" * 32
    resp = ctap.get_assertion(
        RP_ID, cdh, None, pin_uv_param=cp.protocol.authenticate(token, cdh), pin_uv_protocol=cp.protocol.VERSION
    )
    assert resp.auth_data.is_user_verified()


def test_zero_length_pin_auth_probe(tmp_path: Path) -> None:
    """CTAP 2.0 platforms pick a key with an empty pinUvAuthParam: touch, then PIN_NOT_SET/INVALID."""
    _, device = open_key(tmp_path)
    ctap = Ctap2(device)

    def probe() -> None:
        ctap.make_credential(
            b"\0" * 32,
            {"id": RP_ID},
            {"id": b"u"},
            [{"type": "public-key", "alg": -7}],
            pin_uv_param=b"",
            pin_uv_protocol=2,
        )

    assert code_of(probe) == ERR.PIN_NOT_SET
    ClientPin(ctap).set_pin(PIN)
    assert code_of(probe) == ERR.PIN_INVALID
    assert device.touches == 2


def test_a_token_is_spent_by_one_touch_confirmed_operation(tmp_path: Path) -> None:
    """CTAP 2.1: makeCredential or a user-present getAssertion clears the token's permissions;
    silent (up=false) assertions do not (python-fido2 pre-flights an excludeList that way)."""
    _, device = open_key(tmp_path)
    ctap = Ctap2(device)
    cp = ClientPin(ctap)
    cp.set_pin(PIN)
    perm = ClientPin.PERMISSION
    token = cp.get_pin_token(PIN, perm.MAKE_CREDENTIAL | perm.GET_ASSERTION, RP_ID)
    cdh = b"\0" * 32
    auth = cp.protocol.authenticate(token, cdh)
    make_cred(ctap, cp.protocol, token, RP_ID)
    assert code_of(lambda: make_cred(ctap, cp.protocol, token, RP_ID)) == ERR.PIN_AUTH_INVALID

    token = cp.get_pin_token(PIN, perm.GET_ASSERTION, RP_ID)
    auth = cp.protocol.authenticate(token, cdh)
    for _ in range(2):
        silent = ctap.get_assertion(RP_ID, cdh, None, None, {"up": False}, auth, cp.protocol.VERSION)
        assert silent.auth_data.is_user_verified() and not silent.auth_data.is_user_present()
    touched = ctap.get_assertion(RP_ID, cdh, None, None, None, auth, cp.protocol.VERSION)
    assert touched.auth_data.is_user_verified() and touched.auth_data.is_user_present()
    assert (
        code_of(lambda: ctap.get_assertion(RP_ID, cdh, None, None, None, auth, cp.protocol.VERSION))
        == ERR.PIN_AUTH_INVALID
    )
