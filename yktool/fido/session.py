"""KeySession: the CTAP2 operations yktool needs, on any CtapDevice (CONTRACT STUB).

This file fixes the API the LUKS, SSH and PAM code is written against; the implementation
replaces the NotImplementedError bodies. All operations are raw CTAP2 (python-fido2's `Ctap2`,
`ClientPin`), because systemd (all-zero clientDataHash), OpenSSH (SHA-256 of the signed data)
and pam_u2f each choose their own clientDataHash.

Errors: CTAP errors are mapped to yktool.errors — PIN_INVALID -> PinInvalid(retries),
PIN_AUTH_BLOCKED -> PinAuthBlocked, PIN_BLOCKED -> PinBlocked, OPERATION_DENIED /
USER_ACTION_TIMEOUT -> NoPresence, UNSUPPORTED_ALGORITHM -> UsageError with a hint, a key that
went away (OSError, CtapError on a closed device) -> NoDevice("the key was removed …").
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from fido2.client import UserInteraction
from fido2.cose import CoseKey
from fido2.ctap import CtapDevice
from fido2.ctap2.base import Info
from fido2.webauthn import AuthenticatorData

ES256 = -7
EDDSA = -8


@dataclass
class Credential:
    """A credential just made. `public_key` is python-fido2's CoseKey (ES256 or EdDSA)."""

    credential_id: bytes
    public_key: CoseKey
    algorithm: int
    rp_id: str
    auth_data: AuthenticatorData
    hmac_secret: bool
    cred_protect: int | None
    resident: bool


@dataclass
class Assertion:
    credential_id: bytes
    auth_data: AuthenticatorData   # bytes(auth_data) is the raw authenticator data
    signature: bytes               # DER for ES256, raw 64 bytes for EdDSA
    hmac_output: bytes | None      # the 32-byte output for `hmac_salt`, when asked

    @property
    def user_present(self) -> bool:
        return self.auth_data.is_user_present()

    @property
    def user_verified(self) -> bool:
        return self.auth_data.is_user_verified()

    @property
    def counter(self) -> int:
        return self.auth_data.counter


@dataclass
class ResidentCredential:
    rp_id: str
    credential_id: bytes
    public_key: CoseKey
    user_id: bytes
    user_name: str
    cred_protect: int | None


class KeySession:
    """One open key. The PIN is asked through `interaction` at most once per session and kept
    in memory only; pinUvAuthTokens are derived per rp_id/permission as needed."""

    def __init__(self, device: CtapDevice, interaction: UserInteraction | None = None,
                 pin: str | None = None) -> None:
        raise NotImplementedError

    # -- facts
    @property
    def info(self) -> Info:
        raise NotImplementedError

    @property
    def aaguid(self) -> str:
        """AAGUID as the usual 8-4-4-4-12 hex string."""
        raise NotImplementedError

    def supports_algorithm(self, alg: int) -> bool:
        raise NotImplementedError

    @property
    def has_hmac_secret(self) -> bool:
        raise NotImplementedError

    @property
    def pin_is_set(self) -> bool:
        raise NotImplementedError

    def pin_retries(self) -> int:
        raise NotImplementedError

    # -- PIN
    def set_pin(self, new_pin: str) -> None:
        raise NotImplementedError

    def change_pin(self, old_pin: str, new_pin: str) -> None:
        raise NotImplementedError

    def verify_pin(self, pin: str) -> None:
        """Raises PinInvalid/PinAuthBlocked/PinBlocked; returns when the PIN is right."""
        raise NotImplementedError

    # -- credentials
    def make_credential(self, rp_id: str, *, client_data_hash: bytes | None = None,
                        user_id: bytes = b"\0", user_name: str = "", rp_name: str | None = None,
                        algorithms: Sequence[int] = (ES256,), resident: bool = False,
                        uv: bool = False, hmac_secret: bool = False, cred_protect: int | None = None,
                        exclude: Sequence[bytes] = ()) -> Credential:
        """makeCredential; `client_data_hash` defaults to 32 random bytes. Uses the PIN when the
        key has one (or `uv`), asking for it through the interaction once. One touch."""
        raise NotImplementedError

    def get_assertion(self, rp_id: str, client_data_hash: bytes, *, allow: Sequence[bytes],
                      up: bool = True, uv: bool = False, hmac_salt: bytes | None = None) -> Assertion:
        """getAssertion over `allow`; with `uv` the PIN token is sent (UV flag set, hmac-secret
        then uses the with-UV secret). `hmac_salt` (32 bytes) asks hmac-secret for one output."""
        raise NotImplementedError

    def probe(self, rp_id: str, credential_id: bytes) -> bool:
        """True when this key made `credential_id` for `rp_id`: a silent getAssertion (up=false,
        no touch, no PIN). A credProtect level-3 credential can only be found with UV."""
        raise NotImplementedError

    def list_resident(self, rp_id: str | None = None) -> list[ResidentCredential]:
        """Discoverable credentials (credential management; needs the PIN)."""
        raise NotImplementedError

    # -- counters for benchmarks and the end-of-flow summary
    touches: int
    pin_prompts: int
