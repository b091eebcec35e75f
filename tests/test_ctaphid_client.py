"""python-fido2's own HID client (`fido2.hid.CtapHidDevice`: its INIT, framing, keepalive and
cancel code) against the emulated key's CTAPHID transport, in-process (no kernel needed).

What a relying party would check is checked by python-fido2's `Fido2Server`.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
from fido2.client import DefaultClientDataCollector, Fido2Client, UserInteraction
from fido2.ctap import STATUS, CtapError
from fido2.ctap2.base import Ctap2, args
from fido2.ctap2.credman import CredentialManagement
from fido2.ctap2.extensions import HmacSecretExtension
from fido2.ctap2.pin import ClientPin
from fido2.hid import CAPABILITY
from fido2.server import Fido2Server
from fido2.webauthn import (
    PublicKeyCredentialCreationOptions,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialUserEntity,
    UserVerificationRequirement,
)

from tests.ctaphid_support import hid_device, make_wire
from yktool.fido.ctaphid import MAX_MESSAGE
from yktool.fido.softkey import AAGUID
from yktool.fido.touch import TouchPolicy

ORIGIN, RP_ID, PIN = "https://example.com", "example.com", "246810"


class Person(UserInteraction):
    def __init__(self) -> None:
        self.prompted = 0

    def prompt_up(self) -> None:
        self.prompted += 1

    def request_pin(self, permissions: ClientPin.PERMISSION, rp_id: str | None) -> str | None:
        return PIN


def test_python_fido2_finds_a_fido2_key_with_the_key_s_identity(tmp_path: Path) -> None:
    wire = make_wire(tmp_path)
    device = hid_device(wire)
    assert device.capabilities & CAPABILITY.CBOR and device.capabilities & CAPABILITY.NMSG
    assert device.version == 2 and device.device_version == (5, 4, 3)
    info = Ctap2(device).get_info()
    assert info.aaguid == AAGUID
    assert "hmac-secret" in info.extensions and "FIDO_2_1" in info.versions
    device.wink()
    assert wire.transport.winks == 1


@pytest.mark.parametrize("size", [0, 1, 57, 58, 116, 1200, MAX_MESSAGE])
def test_python_fido2_ping_round_trips_every_size_up_to_7609(tmp_path: Path, size: int) -> None:
    device = hid_device(make_wire(tmp_path))
    payload = bytes(range(256)) * (size // 256 + 1)
    assert device.ping(payload[:size]) == payload[:size]


def test_fido2_client_registers_and_signs_over_hid_and_the_server_verifies(tmp_path: Path) -> None:
    wire = make_wire(tmp_path)
    device = hid_device(wire)
    ClientPin(Ctap2(device)).set_pin(PIN)
    person = Person()
    client = Fido2Client(
        device, DefaultClientDataCollector(ORIGIN), person, extensions=[HmacSecretExtension(allow_hmac_secret=True)]
    )
    server = Fido2Server(PublicKeyCredentialRpEntity(name="Example", id=RP_ID))
    creation, reg_state = server.register_begin(
        PublicKeyCredentialUserEntity(id=b"user-1", name="alice"),
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    registration = client.make_credential(creation.public_key)
    auth = server.register_complete(reg_state, registration)
    assert auth.credential_data is not None and auth.credential_data.aaguid == AAGUID

    request, auth_state = server.authenticate_begin(
        [auth.credential_data], user_verification=UserVerificationRequirement.REQUIRED
    )
    assertion = client.get_assertion(request.public_key).get_response(0)
    server.authenticate_complete(auth_state, [auth.credential_data], assertion)
    assert wire.gate.counts().approved == 2 and person.prompted == 2


def test_cancel_while_the_key_waits_for_a_touch_raises_keepalive_cancel(tmp_path: Path) -> None:
    wire = make_wire(tmp_path, TouchPolicy.ASK)
    device = hid_device(wire)
    cancel = threading.Event()
    statuses: list[int] = []

    def cancel_once_the_key_waits() -> None:
        wire.gate.wait_for_request(10)
        time.sleep(0.15)
        cancel.set()

    threading.Thread(target=cancel_once_the_key_waits, daemon=True).start()
    with pytest.raises(CtapError) as err:
        Ctap2(device).make_credential(
            b"\x22" * 32,
            {"id": RP_ID},
            {"id": b"u", "name": "u"},
            [{"type": "public-key", "alg": -7}],
            event=cancel,
            on_keepalive=statuses.append,
        )
    assert err.value.code == CtapError.ERR.KEEPALIVE_CANCEL
    assert statuses == [STATUS.UPNEEDED]
    assert wire.gate.counts().cancelled == 1 and wire.key.touches == 0
    assert device.ping(b"still here") == b"still here"


def test_a_denied_touch_is_operation_denied(tmp_path: Path) -> None:
    device = hid_device(make_wire(tmp_path, TouchPolicy.DENY))
    with pytest.raises(CtapError) as err:
        Ctap2(device).make_credential(
            b"\x22" * 32, {"id": RP_ID}, {"id": b"u", "name": "u"}, [{"type": "public-key", "alg": -7}]
        )
    assert err.value.code == CtapError.ERR.OPERATION_DENIED


def test_nobody_touching_times_out_with_user_action_timeout(tmp_path: Path) -> None:
    wire = make_wire(tmp_path, TouchPolicy.TIMEOUT, timeout=0.3)
    device = hid_device(wire)
    with pytest.raises(CtapError) as err:
        Ctap2(device).make_credential(
            b"\x22" * 32, {"id": RP_ID}, {"id": b"u", "name": "u"}, [{"type": "public-key", "alg": -7}]
        )
    assert err.value.code == CtapError.ERR.USER_ACTION_TIMEOUT
    assert wire.gate.counts().timed_out == 1


def test_credential_management_answers_under_its_2_1_pre_number_as_libfido2_sends_it(tmp_path: Path) -> None:
    # libfido2 1.12 (Debian 12: ssh-keygen -K, fido2-token -L -r) sends 0x41, never 0x0A.
    device = hid_device(make_wire(tmp_path))
    ctap = Ctap2(device)
    ClientPin(ctap).set_pin(PIN)
    resident = PublicKeyCredentialCreationOptions.from_dict(
        {
            "rp": {"id": RP_ID, "name": "Example"},
            "user": {"id": b"user-1", "name": "alice"},
            "challenge": b"\x01" * 32,
            "pubKeyCredParams": [{"type": "public-key", "alg": -7}],
            "authenticatorSelection": {"residentKey": "required", "userVerification": "required"},
        }
    )
    Fido2Client(device, DefaultClientDataCollector(ORIGIN), Person()).make_credential(resident)
    pin = ClientPin(ctap)
    for cmd in (Ctap2.CMD.CREDENTIAL_MGMT_PRE, Ctap2.CMD.CREDENTIAL_MGMT):
        token = pin.get_pin_token(PIN, ClientPin.PERMISSION.CREDENTIAL_MGMT)
        message = bytes([CredentialManagement.CMD.GET_CREDS_METADATA])
        answer = ctap.send_cbor(
            cmd,
            args(
                CredentialManagement.CMD.GET_CREDS_METADATA,
                None,
                pin.protocol.VERSION,
                pin.protocol.authenticate(token, message),
            ),
        )
        assert answer[CredentialManagement.RESULT.EXISTING_CRED_COUNT] == 1


def test_key_info_over_hid_tells_the_emulated_key_from_hardware(tmp_path: Path) -> None:
    from yktool.fido.facts import read_key_facts
    from yktool.fido.session import KeySession

    facts = read_key_facts(KeySession(hid_device(make_wire(tmp_path))), None)
    assert facts.usb_id == "1209:0001" and not facts.software  # it is a HID device now
    assert "yktool key emulate" in facts.render()
