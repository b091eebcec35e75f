"""The software key driven by python-fido2's own WebAuthn client (`Fido2Client`) and verified by
python-fido2's relying-party code (`Fido2Server`, `PackedAttestation`).

Only public python-fido2 APIs touch the key: every outcome (signatures, flags, counters,
extension outputs) is what any WebAuthn relying party would see.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
from fido2.attestation.base import InvalidSignature
from fido2.attestation.packed import PackedAttestation
from fido2.client import ClientError, DefaultClientDataCollector, Fido2Client, UserInteraction
from fido2.ctap import CtapError
from fido2.ctap2.base import Ctap2
from fido2.ctap2.credman import CredentialManagement
from fido2.ctap2.extensions import CredProtectExtension, HmacSecretExtension
from fido2.ctap2.pin import ClientPin, PinProtocol, PinProtocolV1
from fido2.server import Fido2Server
from fido2.utils import websafe_decode
from fido2.webauthn import (
    AttestedCredentialData,
    AuthenticationResponse,
    PublicKeyCredentialDescriptor,
    PublicKeyCredentialParameters,
    PublicKeyCredentialRpEntity,
    PublicKeyCredentialType,
    PublicKeyCredentialUserEntity,
    RegistrationResponse,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from tests.fixtures.fido import credential_id
from yktool.fido import open_device
from yktool.fido.softkey import AAGUID, SoftKey

PIN = "8642"
RP_ID = "example.com"
ORIGIN = "https://example.com"
UV_REQUIRED = UserVerificationRequirement.REQUIRED
UV_DISCOURAGED = UserVerificationRequirement.DISCOURAGED
ALGS = {"EdDSA": -8, "ES256": -7}


def shared_secret(ctap: Ctap2, proto: PinProtocol) -> tuple[dict[int, object], bytes]:
    """Platform side of the key agreement, with public python-fido2 calls only."""
    resp = ctap.client_pin(proto.VERSION, ClientPin.CMD.GET_KEY_AGREEMENT)
    key_agreement, shared = proto.encapsulate(resp[ClientPin.RESULT.KEY_AGREEMENT])
    return dict(key_agreement), shared


class PinEntry(UserInteraction):
    """The person at the keyboard: types `pin` when asked, counts the asks."""

    def __init__(self, pin: str | None = PIN) -> None:
        self.pin = pin
        self.asked = 0

    def request_pin(self, permissions: ClientPin.PERMISSION, rp_id: str | None) -> str | None:
        self.asked += 1
        return self.pin


def key_at(tmp_path: Path, pin: str | None = None, name: str = "key.json") -> SoftKey:
    device = open_device(f"sim:{tmp_path / name}")
    assert isinstance(device, SoftKey)
    if pin:
        ClientPin(Ctap2(device)).set_pin(pin)
    return device


def client_for(device: SoftKey, pin: str | None = PIN) -> Fido2Client:
    return Fido2Client(
        device,
        DefaultClientDataCollector(ORIGIN),
        PinEntry(pin),
        extensions=[HmacSecretExtension(allow_hmac_secret=True), CredProtectExtension()],
    )


def server_for(alg: int) -> Fido2Server:
    server = Fido2Server(PublicKeyCredentialRpEntity(name="Example", id=RP_ID))
    server.allowed_algorithms = [PublicKeyCredentialParameters(type=PublicKeyCredentialType.PUBLIC_KEY, alg=alg)]
    return server


def register(
    client: Fido2Client,
    server: Fido2Server,
    *,
    uv: UserVerificationRequirement = UV_DISCOURAGED,
    user: bytes = b"user-1",
    rk: ResidentKeyRequirement | None = None,
    extensions: dict[str, Any] | None = None,
    exclude: list[AttestedCredentialData] | None = None,
) -> tuple[AttestedCredentialData, RegistrationResponse]:
    options, state = server.register_begin(
        PublicKeyCredentialUserEntity(id=user, name=user.decode(), display_name=user.decode().title()),
        credentials=exclude,
        user_verification=uv,
        resident_key_requirement=rk,
    )
    public_key = options.public_key
    if extensions:
        from dataclasses import replace

        public_key = replace(public_key, extensions=extensions)
    response = client.make_credential(public_key)
    auth_data = server.register_complete(state, response)
    assert auth_data.credential_data is not None
    return auth_data.credential_data, response


def authenticate(
    client: Fido2Client,
    server: Fido2Server,
    creds: list[AttestedCredentialData],
    *,
    uv: UserVerificationRequirement = UV_DISCOURAGED,
    extensions: dict[str, Any] | None = None,
) -> AuthenticationResponse:
    options, state = server.authenticate_begin(creds, user_verification=uv, extensions=extensions)
    response = client.get_assertion(options.public_key).get_response(0)
    server.authenticate_complete(state, creds, response)  # raises unless the signature verifies
    return response


@pytest.mark.parametrize("alg_name", ["EdDSA", "ES256"])
@pytest.mark.parametrize("with_pin", [False, True], ids=["no-pin", "pin"])
def test_register_and_authenticate_verified_by_fido2_server(tmp_path: Path, alg_name: str, with_pin: bool) -> None:
    device = key_at(tmp_path, PIN if with_pin else None)
    client, server = client_for(device), server_for(ALGS[alg_name])
    uv = UV_REQUIRED if with_pin else UV_DISCOURAGED

    cred, reg = register(client, server, uv=uv)
    assert cred.public_key[3] == ALGS[alg_name]
    assert cred.aaguid == AAGUID
    reg_data = reg.response.attestation_object.auth_data
    assert reg_data.is_user_present()
    assert reg_data.is_user_verified() == with_pin

    first = authenticate(client, server, [cred], uv=uv)
    second = authenticate(client, server, [cred], uv=uv)
    a1, a2 = first.response.authenticator_data, second.response.authenticator_data
    assert a1.is_user_present() and a1.is_user_verified() == with_pin
    assert a2.counter > a1.counter > reg_data.counter


@pytest.mark.parametrize("alg", [-8, -7])
def test_packed_self_attestation_verifies(tmp_path: Path, alg: int) -> None:
    device = key_at(tmp_path)
    ctap = Ctap2(device)
    cdh = hashlib.sha256(b"client data").digest()
    att = ctap.make_credential(cdh, {"id": RP_ID}, {"id": b"u"}, [{"type": "public-key", "alg": alg}])
    assert att.fmt == "packed"
    result = PackedAttestation().verify(att.att_stmt, att.auth_data, cdh)
    assert result.attestation_type.name == "SELF"
    # A signature over other client data does not verify.
    with pytest.raises(InvalidSignature):
        PackedAttestation().verify(att.att_stmt, att.auth_data, hashlib.sha256(b"other").digest())


def test_pin_key_makes_non_uv_credentials_like_a_yubikey(tmp_path: Path) -> None:
    """makeCredUvNotRqd: with a PIN set, a non-discoverable credential needs no PIN."""
    device = key_at(tmp_path, PIN)
    people = PinEntry()
    client = Fido2Client(device, DefaultClientDataCollector(ORIGIN), people)
    cred, reg = register(client, server_for(-7), uv=UV_DISCOURAGED)
    assert people.asked == 0
    assert not reg.response.attestation_object.auth_data.is_user_verified()
    # A discoverable one does need the PIN.
    register(client, server_for(-7), uv=UV_DISCOURAGED, rk=ResidentKeyRequirement.REQUIRED, user=b"rk")
    assert people.asked == 1


def hmac_outputs(
    client: Fido2Client, server: Fido2Server, cred: AttestedCredentialData, salt: bytes, uv: UserVerificationRequirement
) -> bytes:
    resp = authenticate(client, server, [cred], uv=uv, extensions={"hmacGetSecret": {"salt1": salt}})
    output = websafe_decode(resp.client_extension_results["hmacGetSecret"]["output1"])
    assert len(output) == 32
    return output


def test_hmac_secret_stable_per_credential_and_salt_and_different_with_uv(tmp_path: Path) -> None:
    device = key_at(tmp_path, PIN)
    client, server = client_for(device), server_for(-7)
    cred, reg = register(client, server, extensions={"hmacCreateSecret": True})
    assert reg.client_extension_results["hmacCreateSecret"] is True
    other, _ = register(client, server, user=b"user-2", extensions={"hmacCreateSecret": True})
    salt_a, salt_b = b"A" * 32, b"B" * 32

    no_uv = hmac_outputs(client, server, cred, salt_a, UV_DISCOURAGED)
    assert hmac_outputs(client, server, cred, salt_a, UV_DISCOURAGED) == no_uv
    with_uv = hmac_outputs(client, server, cred, salt_a, UV_REQUIRED)
    assert hmac_outputs(client, server, cred, salt_a, UV_REQUIRED) == with_uv
    assert with_uv != no_uv
    assert hmac_outputs(client, server, cred, salt_b, UV_DISCOURAGED) != no_uv
    assert hmac_outputs(client, server, other, salt_a, UV_DISCOURAGED) != no_uv

    # The same key re-opened from its file (a new process) gives the same secret.
    client2 = client_for(SoftKey(device.path))
    assert hmac_outputs(client2, server, cred, salt_a, UV_DISCOURAGED) == no_uv


@pytest.mark.parametrize("protocol", [1, 2])
def test_hmac_secret_both_pin_protocols_agree(tmp_path: Path, protocol: int) -> None:
    """The secret is the credential's; the PIN protocol only changes how it travels."""
    from fido2.ctap2.pin import PinProtocolV2

    device = key_at(tmp_path)
    ctap = Ctap2(device)
    cdh = b"\0" * 32
    att = ctap.make_credential(
        cdh, {"id": RP_ID}, {"id": b"u"}, [{"type": "public-key", "alg": -7}], extensions={"hmac-secret": True}
    )
    assert att.auth_data.extensions == {"hmac-secret": True}
    cid = credential_id(att)
    outputs = []
    protocols: tuple[PinProtocol, PinProtocol] = (
        (PinProtocolV1(), PinProtocolV2()) if protocol == 1 else (PinProtocolV2(), PinProtocolV1())
    )
    for proto in protocols:
        key_agreement, shared = shared_secret(ctap, proto)
        salt_enc = proto.encrypt(shared, b"S" * 32)
        ext = {
            "hmac-secret": {1: key_agreement, 2: salt_enc, 3: proto.authenticate(shared, salt_enc), 4: proto.VERSION}
        }
        resp = ctap.get_assertion(RP_ID, cdh, [{"type": "public-key", "id": cid}], ext, {"up": False})
        assert resp.auth_data.extensions is not None
        outputs.append(proto.decrypt(shared, resp.auth_data.extensions["hmac-secret"]))
    assert outputs[0] == outputs[1] and len(outputs[0]) == 32


def test_prf_extension_through_fido2_client(tmp_path: Path) -> None:
    device = key_at(tmp_path)
    client, server = client_for(device), server_for(-8)
    cred, reg = register(client, server, extensions={"prf": {}})
    assert reg.client_extension_results["prf"]["enabled"] is True
    first = authenticate(client, server, [cred], extensions={"prf": {"eval": {"first": b"salt"}}})
    again = authenticate(client, server, [cred], extensions={"prf": {"eval": {"first": b"salt"}}})
    out1 = websafe_decode(first.client_extension_results["prf"]["results"]["first"])
    assert out1 == websafe_decode(again.client_extension_results["prf"]["results"]["first"])
    assert len(out1) == 32


def test_exclude_list_refuses_a_second_registration(tmp_path: Path) -> None:
    device = key_at(tmp_path)
    client, server = client_for(device), server_for(-7)
    cred, _ = register(client, server)
    touches = device.touches
    before = json.loads(device.path.read_text())
    with pytest.raises(ClientError) as err:
        register(client, server, exclude=[cred])
    assert err.value.code == ClientError.ERR.DEVICE_INELIGIBLE
    assert isinstance(err.value.cause, CtapError)
    assert err.value.cause.code == CtapError.ERR.CREDENTIAL_EXCLUDED
    assert device.touches == touches + 1  # excluded only after a touch, like a real key
    after = json.loads(device.path.read_text())
    # Only the signature counter moved (python-fido2 checks the list with a silent assertion).
    assert {k: v for k, v in after.items() if k != "counter"} == {k: v for k, v in before.items() if k != "counter"}
    # Another key's credential in the list does not exclude.
    other_client = client_for(key_at(tmp_path, name="other.json"))
    register(other_client, server, exclude=[cred])


def test_cred_protect_3_is_invisible_without_uv(tmp_path: Path) -> None:
    device = key_at(tmp_path, PIN)
    ctap = Ctap2(device)
    client, server = client_for(device), server_for(-7)
    cred, reg = register(
        client,
        server,
        uv=UV_REQUIRED,
        extensions={
            "credentialProtectionPolicy": "userVerificationRequired",
            "enforceCredentialProtectionPolicy": True,
        },
    )
    assert reg.response.attestation_object.auth_data.extensions == {"credProtect": 3}
    allow: list[Mapping[str, object]] = [{"type": "public-key", "id": cred.credential_id}]
    with pytest.raises(CtapError) as err:
        ctap.get_assertion(RP_ID, b"\0" * 32, allow, options={"up": False})
    assert err.value.code == CtapError.ERR.NO_CREDENTIALS
    # With UV it is found.
    resp = authenticate(client, server, [cred], uv=UV_REQUIRED)
    assert resp.response.authenticator_data.is_user_verified()


def test_cred_protect_2_hidden_from_discovery_without_uv_but_usable_by_id(tmp_path: Path) -> None:
    device = key_at(tmp_path, PIN)
    ctap = Ctap2(device)
    client, server = client_for(device), server_for(-7)
    cred, _ = register(
        client,
        server,
        uv=UV_REQUIRED,
        rk=ResidentKeyRequirement.REQUIRED,
        extensions={"credentialProtectionPolicy": "userVerificationOptionalWithCredentialIDList"},
    )
    with pytest.raises(CtapError) as err:
        ctap.get_assertion(RP_ID, b"\0" * 32, None, options={"up": False})
    assert err.value.code == CtapError.ERR.NO_CREDENTIALS
    resp = ctap.get_assertion(RP_ID, b"\0" * 32, [{"type": "public-key", "id": cred.credential_id}])
    assert resp.auth_data.is_user_present() and not resp.auth_data.is_user_verified()


def test_discoverable_credentials_listed_by_credential_management_and_next_assertion(tmp_path: Path) -> None:
    device = key_at(tmp_path, PIN)
    client, server = client_for(device), server_for(-8)
    alice, _ = register(client, server, uv=UV_REQUIRED, rk=ResidentKeyRequirement.REQUIRED, user=b"alice")
    bob, _ = register(client, server, uv=UV_REQUIRED, rk=ResidentKeyRequirement.REQUIRED, user=b"bob")
    register(client, server_for(-7), uv=UV_REQUIRED, user=b"not-resident")
    # An OpenSSH-style resident credential (RP "ssh:") made with raw CTAP2 and a PIN token.
    ctap = Ctap2(device)
    mc_pin = ClientPin(ctap)
    mc_token = mc_pin.get_pin_token(PIN, ClientPin.PERMISSION.MAKE_CREDENTIAL, "ssh:")
    ssh_cdh = hashlib.sha256(b"ssh challenge").digest()
    ssh_att = ctap.make_credential(
        ssh_cdh,
        {"id": "ssh:"},
        {"id": b"git", "name": "git"},
        [{"type": "public-key", "alg": -8}],
        options={"rk": True},
        pin_uv_param=mc_pin.protocol.authenticate(mc_token, ssh_cdh),
        pin_uv_protocol=mc_pin.protocol.VERSION,
    )
    client_pin = ClientPin(ctap)
    token = client_pin.get_pin_token(PIN, ClientPin.PERMISSION.CREDENTIAL_MGMT)
    cm = CredentialManagement(ctap, client_pin.protocol, token)
    meta = cm.get_metadata()
    assert meta[CredentialManagement.RESULT.EXISTING_CRED_COUNT] == 3
    rps = {rp[CredentialManagement.RESULT.RP]["id"] for rp in cm.enumerate_rps()}
    assert rps == {RP_ID, "ssh:"}
    creds = cm.enumerate_creds(hashlib.sha256(RP_ID.encode()).digest())
    by_user = {c[CredentialManagement.RESULT.USER]["id"]: c for c in creds}
    assert set(by_user) == {b"alice", b"bob"}
    assert by_user[b"alice"][CredentialManagement.RESULT.CREDENTIAL_ID]["id"] == alice.credential_id
    assert by_user[b"alice"][CredentialManagement.RESULT.PUBLIC_KEY] == dict(alice.public_key)

    # Discovery without an allow list returns both, newest first, through getNextAssertion.
    uv_token = ClientPin(ctap).get_pin_token(PIN, ClientPin.PERMISSION.GET_ASSERTION, RP_ID)
    proto = client_pin.protocol
    cdh = hashlib.sha256(b"x").digest()
    assertions = ctap.get_assertions(RP_ID, cdh, None, None, None, proto.authenticate(uv_token, cdh), proto.VERSION)
    users = [a.user or {} for a in assertions]
    assert [u.get("id") for u in users] == [b"bob", b"alice"]
    assert users[0].get("name") == "bob"  # names shown after UV only
    for a, cred in zip(assertions, (bob, alice), strict=True):
        a.verify(cdh, cred.public_key)

    # Deleting one leaves the other; the deleted one no longer signs. (A new token replaced
    # the credential-management one, as on a real key: ask for one again.)
    cm = CredentialManagement(
        ctap, client_pin.protocol, client_pin.get_pin_token(PIN, ClientPin.PERMISSION.CREDENTIAL_MGMT)
    )
    cm.delete_cred(PublicKeyCredentialDescriptor(type=PublicKeyCredentialType.PUBLIC_KEY, id=alice.credential_id))
    left = cm.enumerate_creds(hashlib.sha256(RP_ID.encode()).digest())
    assert [c[CredentialManagement.RESULT.USER]["id"] for c in left] == [b"bob"]
    with pytest.raises(CtapError) as err:
        ctap.get_assertion(RP_ID, cdh, [{"type": "public-key", "id": alice.credential_id}])
    assert err.value.code == CtapError.ERR.NO_CREDENTIALS
    ssh_creds = cm.enumerate_creds(hashlib.sha256(b"ssh:").digest())
    assert [c[CredentialManagement.RESULT.CREDENTIAL_ID]["id"] for c in ssh_creds] == [credential_id(ssh_att)]


def test_credential_management_needs_a_cm_token(tmp_path: Path) -> None:
    device = key_at(tmp_path, PIN)
    ctap = Ctap2(device)
    client_pin = ClientPin(ctap)
    ga_token = client_pin.get_pin_token(PIN, ClientPin.PERMISSION.GET_ASSERTION, RP_ID)
    with pytest.raises(CtapError) as err:
        CredentialManagement(ctap, client_pin.protocol, ga_token).get_metadata()
    assert err.value.code == CtapError.ERR.PIN_AUTH_INVALID
    with pytest.raises(CtapError) as err:
        ctap.credential_mgmt(CredentialManagement.CMD.GET_CREDS_METADATA)
    assert err.value.code == CtapError.ERR.PUAT_REQUIRED


def test_credential_ids_only_open_for_their_rp_and_their_key(tmp_path: Path) -> None:
    device = key_at(tmp_path)
    ctap = Ctap2(device)
    att = ctap.make_credential(b"\0" * 32, {"id": RP_ID}, {"id": b"u"}, [{"type": "public-key", "alg": -7}])
    cid = credential_id(att)
    assert len(cid) <= ctap.info.max_cred_id_length
    allow: list[Mapping[str, object]] = [{"type": "public-key", "id": cid}]
    for rp, dev in (("other.example", device), (RP_ID, key_at(tmp_path, name="b.json"))):
        with pytest.raises(CtapError) as err:
            Ctap2(dev).get_assertion(rp, b"\0" * 32, allow, options={"up": False})
        assert err.value.code == CtapError.ERR.NO_CREDENTIALS
    # A non-discoverable credential leaves no trace in the state file.
    assert cid.hex() not in device.path.read_text()


def test_unsupported_algorithm(tmp_path: Path) -> None:
    ctap = Ctap2(key_at(tmp_path))
    with pytest.raises(CtapError) as err:
        ctap.make_credential(b"\0" * 32, {"id": RP_ID}, {"id": b"u"}, [{"type": "public-key", "alg": -257}])
    assert err.value.code == CtapError.ERR.UNSUPPORTED_ALGORITHM
