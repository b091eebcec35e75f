"""The software key's clientPIN side: key agreement, PIN retries, pinUvAuthTokens (CTAP 2.1 §6.5).

Crypto is python-fido2's own PinProtocolV1/V2 (kdf, encrypt, decrypt, authenticate), used
from the authenticator's end; only the ECDH with the authenticator's key-agreement key is here.
"""

from __future__ import annotations

import hmac
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric import ec
from fido2.ctap import CtapError
from fido2.ctap2.pin import ClientPin, PinProtocolV1, PinProtocolV2
from fido2.utils import sha256

from yktool.fido.softkey.state import MAX_PIN_RETRIES, SoftKeyState

ERR = CtapError.ERR
PERM = ClientPin.PERMISSION
CMD = ClientPin.CMD

MIN_PIN_LENGTH = 4
MAX_PIN_BYTES = 63
PINS_IN_A_ROW = 3
# Permissions this key can grant: no bio enrolment, large blobs or authenticatorConfig.
SUPPORTED_PERMISSIONS = PERM.MAKE_CREDENTIAL | PERM.GET_ASSERTION | PERM.CREDENTIAL_MGMT


class PinCrypto(Protocol):
    """What this key uses of python-fido2's PinProtocolV1/V2 (whose methods carry no annotations)."""

    @property
    def VERSION(self) -> int: ...  # a ClassVar on python-fido2's classes: read-only here

    def kdf(self, z: bytes) -> bytes: ...
    def encrypt(self, key: bytes, plaintext: bytes) -> bytes: ...
    def decrypt(self, key: bytes, ciphertext: bytes) -> bytes: ...
    def authenticate(self, key: bytes, message: bytes) -> bytes: ...


PROTOCOLS: dict[int, Callable[[], PinCrypto]] = {2: PinProtocolV2, 1: PinProtocolV1}


def fail(code: CtapError.ERR) -> CtapError:
    """A CtapError to raise (keeps the call sites one line)."""
    return CtapError(code)


@dataclass
class Token:
    """The current pinUvAuthToken and what it may be used for."""

    value: bytes
    permissions: int
    rp_id: str | None


class PinUv:
    """RAM state of the PIN side: lost on "power-up" (replug), like on a real key."""

    def __init__(self) -> None:
        self.key_agreement = ec.generate_private_key(ec.SECP256R1())
        self.token: Token | None = None

    def regenerate(self) -> None:
        """New key agreement key (after a wrong PIN, as the spec asks) and no token."""
        self.key_agreement = ec.generate_private_key(ec.SECP256R1())
        self.token = None

    def spend_token(self) -> None:
        """CTAP 2.1 §6.1.2/§6.2.2: a makeCredential or a user-present getAssertion made with the
        token clears its permissions (except lbw, which this key has not): one token, one touch-
        confirmed operation. Silent (up=false) assertions leave it alone."""
        if self.token is not None:
            self.token.permissions = 0

    # -- helpers shared with makeCredential/getAssertion/credentialManagement

    @staticmethod
    def protocol(version: Any) -> PinCrypto:
        if version is None:
            raise fail(ERR.MISSING_PARAMETER)
        if not isinstance(version, int) or version not in PROTOCOLS:
            raise fail(ERR.INVALID_PARAMETER)
        return PROTOCOLS[version]()

    def key_agreement_cose(self) -> dict[int, Any]:
        pn = self.key_agreement.public_key().public_numbers()
        return {1: 2, 3: -25, -1: 1, -2: pn.x.to_bytes(32, "big"), -3: pn.y.to_bytes(32, "big")}

    def shared_secret(self, protocol: PinCrypto, peer: Any) -> bytes:
        """ECDH with the platform's COSE key, then the protocol's own KDF."""
        if not isinstance(peer, Mapping):
            raise fail(ERR.MISSING_PARAMETER if peer is None else ERR.INVALID_PARAMETER)
        try:
            x, y = peer[-2], peer[-3]
            pub = ec.EllipticCurvePublicNumbers(
                int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
            ).public_key()
        except (KeyError, TypeError, ValueError):
            raise fail(ERR.INVALID_PARAMETER) from None
        z = self.key_agreement.exchange(ec.ECDH(), pub)
        return protocol.kdf(z)

    def verify(self, version: Any, param: Any, message: bytes, permission: int, rp_id: str | None) -> None:
        """Check a pinUvAuthParam over `message` made with the current token, its permission
        (any of the bits in `permission`) and its RP binding (bound on first use)."""
        protocol = self.protocol(version)
        if not isinstance(param, bytes):
            raise fail(ERR.INVALID_PARAMETER)
        token = self.token
        if token is None:
            raise fail(ERR.PIN_AUTH_INVALID)
        expected = protocol.authenticate(token.value, message)
        if not hmac.compare_digest(expected, param):
            raise fail(ERR.PIN_AUTH_INVALID)
        if not token.permissions & permission:
            raise fail(ERR.PIN_AUTH_INVALID)
        if rp_id is not None:
            if token.rp_id is None:
                token.rp_id = rp_id
            elif token.rp_id != rp_id:
                raise fail(ERR.PIN_AUTH_INVALID)

    # -- authenticatorClientPIN

    def client_pin(self, state: SoftKeyState, p: Mapping[int, Any], save: Callable[[], None]) -> dict[int, Any]:
        """Handle one clientPIN request; `save` persists `state` (retry counters, PIN)."""
        sub = p.get(2)
        if sub is None:
            raise fail(ERR.MISSING_PARAMETER)
        if sub == CMD.GET_PIN_RETRIES:
            return {3: state.pin_retries, 4: state.pin_fails_in_a_row >= PINS_IN_A_ROW}
        if sub in (CMD.GET_TOKEN_USING_UV, CMD.GET_UV_RETRIES):
            raise fail(ERR.INVALID_SUBCOMMAND)  # no built-in user verification
        protocol = self.protocol(p.get(1))
        if sub == CMD.GET_KEY_AGREEMENT:
            return {1: self.key_agreement_cose()}
        if sub == CMD.SET_PIN:
            return self._set_pin(state, protocol, p, save)
        if sub == CMD.CHANGE_PIN:
            return self._change_pin(state, protocol, p, save)
        if sub == CMD.GET_TOKEN_USING_PIN_LEGACY:
            if p.get(9) is not None or p.get(10) is not None:
                raise fail(ERR.INVALID_PARAMETER)
            return self._token(state, protocol, p, save, int(PERM.MAKE_CREDENTIAL | PERM.GET_ASSERTION), None)
        if sub == CMD.GET_TOKEN_USING_PIN:
            perms, rp_id = p.get(9), p.get(10)
            if perms is None:
                raise fail(ERR.MISSING_PARAMETER)
            if not isinstance(perms, int) or perms == 0:
                raise fail(ERR.INVALID_PARAMETER)
            if perms & ~SUPPORTED_PERMISSIONS:
                raise fail(ERR.UNAUTHORIZED_PERMISSION)
            if rp_id is not None and not isinstance(rp_id, str):
                raise fail(ERR.INVALID_PARAMETER)
            return self._token(state, protocol, p, save, perms, rp_id)
        raise fail(ERR.INVALID_SUBCOMMAND)

    def _set_pin(
        self, state: SoftKeyState, protocol: PinCrypto, p: Mapping[int, Any], save: Callable[[], None]
    ) -> dict[int, Any]:
        new_pin_enc, param = p.get(5), p.get(4)
        if not isinstance(new_pin_enc, bytes) or not isinstance(param, bytes):
            raise fail(ERR.MISSING_PARAMETER)
        if state.pin_hash is not None:
            raise fail(ERR.NOT_ALLOWED)
        shared = self.shared_secret(protocol, p.get(3))
        self.check_param(protocol, shared, new_pin_enc, param)
        state.pin_hash = self._decode_new_pin(protocol, shared, new_pin_enc)
        state.pin_retries = MAX_PIN_RETRIES
        state.pin_fails_in_a_row = 0
        save()
        return {}

    def _change_pin(
        self, state: SoftKeyState, protocol: PinCrypto, p: Mapping[int, Any], save: Callable[[], None]
    ) -> dict[int, Any]:
        new_pin_enc, param, pin_hash_enc = p.get(5), p.get(4), p.get(6)
        if not (isinstance(new_pin_enc, bytes) and isinstance(param, bytes) and isinstance(pin_hash_enc, bytes)):
            raise fail(ERR.MISSING_PARAMETER)
        if state.pin_hash is None:
            raise fail(ERR.PIN_NOT_SET)
        shared = self.shared_secret(protocol, p.get(3))
        self.check_param(protocol, shared, new_pin_enc + pin_hash_enc, param)
        self._check_pin(state, protocol, shared, pin_hash_enc, save)
        state.pin_hash = self._decode_new_pin(protocol, shared, new_pin_enc)
        save()
        self.token = None  # every old token dies with the old PIN
        return {}

    def _token(
        self,
        state: SoftKeyState,
        protocol: PinCrypto,
        p: Mapping[int, Any],
        save: Callable[[], None],
        permissions: int,
        rp_id: str | None,
    ) -> dict[int, Any]:
        pin_hash_enc = p.get(6)
        if not isinstance(pin_hash_enc, bytes):
            raise fail(ERR.MISSING_PARAMETER)
        if state.pin_hash is None:
            raise fail(ERR.PIN_NOT_SET)
        shared = self.shared_secret(protocol, p.get(3))
        self._check_pin(state, protocol, shared, pin_hash_enc, save)
        self.token = Token(secrets.token_bytes(32), permissions, rp_id)
        return {2: protocol.encrypt(shared, self.token.value)}

    @staticmethod
    def check_param(protocol: PinCrypto, shared: bytes, message: bytes, param: bytes) -> None:
        expected = protocol.authenticate(shared, message)
        if not hmac.compare_digest(expected, param):
            raise fail(ERR.PIN_AUTH_INVALID)

    def _check_pin(
        self, state: SoftKeyState, protocol: PinCrypto, shared: bytes, pin_hash_enc: bytes, save: Callable[[], None]
    ) -> None:
        """The retry logic of CTAP 2.1 §6.5.5.5: blocked checks first, then one retry spent,
        then the comparison; three wrong in a row need a power cycle, eight in all block."""
        if state.pin_retries <= 0:
            raise fail(ERR.PIN_BLOCKED)
        if state.pin_fails_in_a_row >= PINS_IN_A_ROW:
            raise fail(ERR.PIN_AUTH_BLOCKED)
        state.pin_retries -= 1
        try:
            given = protocol.decrypt(shared, pin_hash_enc)
        except ValueError:
            given = b""
        assert state.pin_hash is not None  # noqa: S101 - checked by every caller
        if not hmac.compare_digest(given[:16], state.pin_hash):
            state.pin_fails_in_a_row += 1
            save()
            self.regenerate()
            if state.pin_retries <= 0:
                raise fail(ERR.PIN_BLOCKED)
            if state.pin_fails_in_a_row >= PINS_IN_A_ROW:
                raise fail(ERR.PIN_AUTH_BLOCKED)
            raise fail(ERR.PIN_INVALID)
        state.pin_retries = MAX_PIN_RETRIES
        state.pin_fails_in_a_row = 0
        save()

    @staticmethod
    def _decode_new_pin(protocol: PinCrypto, shared: bytes, new_pin_enc: bytes) -> bytes:
        """The stored PIN hash, LEFT(SHA-256(pin), 16), from a padded encrypted new PIN."""
        try:
            padded = protocol.decrypt(shared, new_pin_enc)
        except ValueError:
            raise fail(ERR.INVALID_PARAMETER) from None
        if len(padded) < 64:
            raise fail(ERR.INVALID_PARAMETER)
        pin = padded.rstrip(b"\0")
        if len(pin) > MAX_PIN_BYTES:
            raise fail(ERR.PIN_POLICY_VIOLATION)
        try:
            text = pin.decode("utf-8")
        except UnicodeDecodeError:
            raise fail(ERR.PIN_POLICY_VIOLATION) from None
        if len(text) < MIN_PIN_LENGTH:
            raise fail(ERR.PIN_POLICY_VIOLATION)
        return sha256(pin)[:16]
