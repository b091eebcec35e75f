"""Proof that a pam_u2f credential works before it is stored, and pam_u2f's `manual` answers."""

from __future__ import annotations

import base64
import hashlib
import os
from typing import TYPE_CHECKING

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from yktool.errors import UsageError
from yktool.pam.authfile import U2fCredential

if TYPE_CHECKING:
    from yktool.fido.session import Assertion, KeySession


def verify_assertion(
    cred: U2fCredential,
    origin: str,
    client_data_hash: bytes,
    auth_data: bytes,
    signature: bytes,
    *,
    need_up: bool = True,
    need_uv: bool = False,
) -> None:
    """Check an assertion against the stored public key the way libfido2's
    fido_assert_verify does for pam_u2f: RP id hash, flags, then the signature over
    authData ‖ clientDataHash. Raises UsageError saying what did not match."""
    if len(auth_data) < 37:
        raise UsageError("authenticator data too short", "the key's answer is broken")
    if auth_data[:32] != hashlib.sha256(origin.encode()).digest():
        raise UsageError(f"the assertion is not for origin {origin}", "register and authenticate with the same origin")
    flags = auth_data[32]
    if need_up and not flags & 0x01:
        raise UsageError("the assertion carries no user presence", "touch the key")
    if need_uv and not flags & 0x04:
        raise UsageError("the assertion carries no user verification", "use the key's PIN")
    signed = auth_data + client_data_hash
    pk = cred.public_key_bytes
    try:
        if cred.cose_type == "es256":
            if len(pk) == 65:
                pk = pk[1:]
            key = ec.EllipticCurvePublicNumbers(
                int.from_bytes(pk[:32], "big"), int.from_bytes(pk[32:], "big"), ec.SECP256R1()
            ).public_key()
            key.verify(signature, signed, ec.ECDSA(hashes.SHA256()))
        elif cred.cose_type == "eddsa":
            ed25519.Ed25519PublicKey.from_public_bytes(pk).verify(signature, signed)
        else:
            raise UsageError(f"cannot verify {cred.cose_type} here", "use es256")
    except InvalidSignature:
        raise UsageError(
            "the assertion's signature does not verify with the public key about to be stored",
            "nothing was written; try again with the same key",
        ) from None
    except ValueError as exc:
        raise UsageError(f"the stored public key is unusable: {exc}", "register again") from None


def prove_credential(
    session: KeySession, cred: U2fCredential, credential_id: bytes, origin: str, *, up: bool, uv: bool
) -> Assertion:
    """Ask the key for a fresh assertion with `origin` and verify it against `cred` (the line
    about to be stored). One touch (when `up`)."""
    cdh = os.urandom(32)
    assertion = session.get_assertion(origin, cdh, allow=[credential_id], up=up, uv=uv)
    verify_assertion(cred, origin, cdh, bytes(assertion.auth_data), assertion.signature, need_up=up, need_uv=uv)
    return assertion


def manual_answers(
    session: KeySession, origin: str, challenge_b64: str, key_handle_b64: str, *, up: bool = True, uv: bool = False
) -> list[str]:
    """The four lines pam_u2f's `manual` mode asks for after printing a challenge, origin and
    key handle: the challenge, the RP id, base64 of the CBOR byte string of authData, base64
    of the signature. pam_u2f uses the raw 32-byte challenge as the clientDataHash."""
    from fido2 import cbor  # lazy: fido2 loads only where a key is used

    cdh = base64.b64decode(challenge_b64)
    # `*` is a resident credential: pam_u2f sends no allow list, the key finds it by RP id
    allow = [] if key_handle_b64 == "*" else [base64.b64decode(key_handle_b64)]
    assertion = session.get_assertion(origin, cdh, allow=allow, up=up, uv=uv)
    return [
        challenge_b64,
        origin,
        base64.b64encode(cbor.encode(bytes(assertion.auth_data))).decode(),
        base64.b64encode(assertion.signature).decode(),
    ]
