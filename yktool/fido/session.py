"""KeySession: the CTAP2 operations yktool needs, on any CtapDevice.

All operations are raw CTAP2 (python-fido2's `Ctap2`, `ClientPin`), because systemd (all-zero
clientDataHash), OpenSSH (SHA-256 of the signed data) and pam_u2f each choose their own
clientDataHash.

Errors: CTAP errors are mapped to yktool.errors — PIN_INVALID -> PinInvalid(retries),
PIN_AUTH_BLOCKED -> PinAuthBlocked, PIN_BLOCKED -> PinBlocked, OPERATION_DENIED /
USER_ACTION_TIMEOUT -> NoPresence, UNSUPPORTED_ALGORITHM -> UsageError with a hint, a key that
went away (OSError, CtapError on a closed device) -> NoDevice("the key was removed …").
Two more, as subclasses so callers can catch them: CREDENTIAL_EXCLUDED -> AlreadyEnrolled
(a Refused), NO_CREDENTIALS in get_assertion -> NotThisKey (a NoDevice).

Additions to the contract (all additive): `reset()`, `refresh()`, `device`, `ctap`,
`min_pin_length`, `pin_token()`, `open_session()`, `check_new_pin()`, `check_entered_pin()`, the `ALGORITHM_NAMES`
table, the two error subclasses above.
"""

from __future__ import annotations

import contextlib
import functools
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from fido2.cose import CoseKey
from fido2.ctap import STATUS, CtapDevice, CtapError
from fido2.ctap2.base import Ctap2, Info
from fido2.ctap2.credman import CredentialManagement
from fido2.ctap2.pin import ClientPin, PinProtocol, PinProtocolV1, PinProtocolV2
from fido2.webauthn import AuthenticatorData

from yktool.errors import (
    Interrupted,
    NoDevice,
    NoPresence,
    PinAuthBlocked,
    PinBlocked,
    PinInvalid,
    Refused,
    ToolFailed,
    UsageError,
    YktoolError,
)
from yktool.fido.interaction import KeyInteraction

ES256 = -7
EDDSA = -8

ALGORITHM_NAMES: dict[int, str] = {
    ES256: "ES256",
    EDDSA: "EdDSA",
    -257: "RS256",
    -35: "ES384",
    -36: "ES512",
    -47: "ES256K",
    -9: "ESP256",
    -19: "Ed25519",
}

MIN_PIN_LENGTH = 4  # CTAP 2.1: at least 4 Unicode code points
MAX_PIN_BYTES = 63  # CTAP 2.1: at most 63 bytes of UTF-8

_REMOVED = "the key was removed during the operation"
_REMOVED_HINT = "insert the key again and run the same command; nothing was changed on the key"

T = TypeVar("T")


class AlreadyEnrolled(Refused):
    """makeCredential hit the exclude list: this key already holds one of those credentials."""

    default_hint = "this key is already enrolled there; use another key, or remove the old enrollment first"


class NotThisKey(NoDevice):
    """getAssertion found none of the allowed credentials on this key."""

    default_hint = "insert the key that was enrolled (see `yktool keys list`), or pick it with --device"


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
    """One getAssertion answer; `hmac_output` is a secret: keep it in memory only."""

    credential_id: bytes
    auth_data: AuthenticatorData  # bytes(auth_data) is the raw authenticator data
    signature: bytes  # DER for ES256, raw 64 bytes for EdDSA
    hmac_output: bytes | None  # the 32-byte output for `hmac_salt`, when asked

    @property
    def user_present(self) -> bool:
        return self.auth_data.is_user_present()

    @property
    def user_verified(self) -> bool:
        return self.auth_data.is_user_verified()

    @property
    def counter(self) -> int:
        return self.auth_data.counter

    def __repr__(self) -> str:  # never print the hmac output
        return (
            f"Assertion(credential_id={self.credential_id.hex()}, up={self.user_present}, "
            f"uv={self.user_verified}, counter={self.counter}, "
            f"hmac_output={'<32 bytes>' if self.hmac_output else None})"
        )


@dataclass
class ResidentCredential:
    rp_id: str
    credential_id: bytes
    public_key: CoseKey
    user_id: bytes
    user_name: str
    cred_protect: int | None


def check_new_pin(pin: str, min_length: int = MIN_PIN_LENGTH) -> None:
    """Refuse a PIN the key would refuse, before anything is sent (no retry is spent)."""
    if len(pin) < max(min_length, MIN_PIN_LENGTH):
        raise UsageError(
            f"the PIN is too short: at least {max(min_length, MIN_PIN_LENGTH)} characters",
            "choose a longer PIN; nothing was sent to the key",
        )
    if len(pin.encode("utf-8")) > MAX_PIN_BYTES:
        raise UsageError(
            f"the PIN is too long: at most {MAX_PIN_BYTES} bytes", "choose a shorter PIN; nothing was sent to the key"
        )


def check_entered_pin(pin: str) -> None:
    """Refuse an entered PIN that cannot be right (too short or too long) before it costs a retry."""
    if len(pin) < MIN_PIN_LENGTH or len(pin.encode("utf-8")) > MAX_PIN_BYTES:
        raise UsageError(
            f"that cannot be the key's PIN: a PIN has at least {MIN_PIN_LENGTH} characters "
            f"and at most {MAX_PIN_BYTES} bytes",
            "type the PIN again; nothing was sent to the key, no attempt was used",
        )


class KeySession:
    """One open key. The PIN is asked through `interaction` at most once per session and kept
    in memory only; pinUvAuthTokens are derived per rp_id/permission as needed."""

    touches: int
    pin_prompts: int

    def __init__(self, device: CtapDevice, interaction: KeyInteraction | None = None, pin: str | None = None) -> None:
        self.device = device
        self.interaction = interaction if interaction is not None else KeyInteraction()
        self._pin = pin
        self.touches = 0
        self.pin_prompts = 0
        self.ctap: Ctap2 = self._guard("read the key's info", lambda: Ctap2(device))
        self._info: Info = self.ctap.info
        self._protocol: PinProtocol | None = self._pick_protocol()

    # ------------------------------------------------------------------ plumbing
    def _pick_protocol(self) -> PinProtocol | None:
        for proto in (PinProtocolV2, PinProtocolV1):
            if proto.VERSION in self._info.pin_uv_protocols:
                return proto()
        return None

    def _on_keepalive(self, status: int) -> None:
        if status == STATUS.UPNEEDED:
            self.touches += 1
            self.interaction.prompt_up()

    def _touch_over(self) -> None:
        self.interaction.touch_done()

    def _guard(self, what: str, func: Callable[[], T], *, not_allowed: YktoolError | None = None) -> T:
        """Run one exchange with the key and turn its failures into yktool errors
        (`not_allowed`: what NOT_ALLOWED means for this operation)."""
        try:
            return func()
        except CtapError as exc:
            if exc.code == CtapError.ERR.NOT_ALLOWED and not_allowed is not None:
                raise not_allowed from None
            raise self._map_error(exc, what) from None
        except (OSError, EOFError, ConnectionError) as exc:
            raise NoDevice(_REMOVED, _REMOVED_HINT) from exc
        except (ValueError, TypeError, KeyError) as exc:
            # python-fido2 could not parse the key's answer (or the key is U2F-only)
            raise ToolFailed(
                f"the key's answer to {what} could not be understood ({type(exc).__name__})",
                "remove and re-insert the key; a U2F-only key cannot be used, it needs FIDO2",
            ) from exc
        finally:
            self._touch_over()

    def _map_error(self, exc: CtapError, what: str) -> YktoolError:
        err = CtapError.ERR
        code = exc.code
        if code in (err.PIN_INVALID, err.PIN_AUTH_BLOCKED, err.PIN_BLOCKED):
            self._forget_pin()
        if code == err.PIN_INVALID:
            return PinInvalid(self._retries_after_failure())
        if code == err.PIN_AUTH_BLOCKED:
            left = self._retries_after_failure()
            return PinAuthBlocked(
                "3 wrong PINs in a row: remove and re-insert the key before the next try"
                + (f" ({left} attempts left)" if left is not None else "")
            )
        if code == err.PIN_BLOCKED:
            return PinBlocked("the PIN of this key is blocked for good (8 wrong PINs)")
        if code in (err.OPERATION_DENIED, err.USER_ACTION_TIMEOUT, err.ACTION_TIMEOUT, err.UP_REQUIRED):
            return NoPresence(f"the key was not touched ({what}: touch refused or timed out); nothing changed")
        if code == err.KEEPALIVE_CANCEL:
            return Interrupted(f"{what} was cancelled")
        if code == err.UNSUPPORTED_ALGORITHM:
            names = ", ".join(self.algorithm_names()) or "none listed"
            return UsageError(
                f"the key supports none of the algorithms asked for ({what})",
                f"this key offers: {names}; ES256 works on every FIDO2 key",
            )
        if code == err.PIN_NOT_SET:
            return UsageError("the key has no PIN", "set one first: yktool key pin set")
        if code == err.PIN_POLICY_VIOLATION:
            return UsageError(
                "the key refused the new PIN (too short or too simple for its policy)",
                f"choose another PIN of at least {self.min_pin_length} characters",
            )
        if code == err.CREDENTIAL_EXCLUDED:
            return AlreadyEnrolled("this key already holds a credential for this purpose")
        if code in (err.NO_CREDENTIALS, err.INVALID_CREDENTIAL):
            return NotThisKey("this key holds none of the credentials asked for")
        if code == err.KEY_STORE_FULL:
            return Refused(
                "the key has no room for another discoverable credential",
                "delete an unused discoverable credential, or use a non-discoverable one",
            )
        if code == err.PUAT_REQUIRED:
            return UsageError(f"the key wants its PIN for {what}", "run again and give the PIN")
        if code in (err.INVALID_CHANNEL, err.TIMEOUT):
            return NoDevice(_REMOVED, _REMOVED_HINT)
        return ToolFailed(
            f"the key answered {code.name} to {what}",
            "remove and re-insert the key and try again; if it persists, the key may not support this operation",
        )

    def _forget_pin(self) -> None:
        """Never reuse a PIN the key refused: drop ours and tell the interaction to drop its copy."""
        self._pin = None
        self.interaction.pin_rejected()

    def _retries_after_failure(self) -> int | None:
        try:
            return self.pin_retries()
        except YktoolError:
            return None

    def _client_pin(self) -> ClientPin:
        if self._protocol is None:
            raise UsageError(
                "this key has no PIN support (no PIN/UV protocol)",
                "use a FIDO2 key with clientPin, such as a YubiKey 5",
            )
        return ClientPin(self.ctap, self._protocol)

    def _need_pin(self, permissions: ClientPin.PERMISSION, rp_id: str | None) -> str:
        if self._pin is None:
            self.pin_prompts += 1
            asked = self.interaction.request_pin(permissions, rp_id)
            if not asked:
                raise UsageError(
                    "the key has a PIN and none was given", "type it when asked, or pipe it in with --pin-stdin"
                )
            check_entered_pin(asked)  # a too-short PIN can't be right: don't spend a retry
            self._pin = asked
        return self._pin

    def pin_token(self, permissions: ClientPin.PERMISSION, rp_id: str | None = None) -> bytes:
        """A fresh pinUvAuthToken for `permissions` (bound to `rp_id`), from the session's PIN.

        Not cached: a CTAP 2.1 key invalidates every earlier token when a new one is made, and
        clears a token's mc/ga permissions after one use, so a cached token would fail the next
        operation. The PIN is what the session keeps; a token costs two quick exchanges.
        """
        client = self._client_pin()
        pin = self._need_pin(permissions, rp_id)
        if self._info.options.get("pinUvAuthToken") is True:
            return self._guard("the PIN check", lambda: client.get_pin_token(pin, permissions, rp_id))
        # CTAP 2.0 keys: the legacy token carries every permission
        return self._guard("the PIN check", lambda: client.get_pin_token(pin))

    def _shared_secret(self) -> tuple[Mapping[int, Any], bytes]:
        """(keyAgreement for the key, shared secret) through the PIN protocol's `encapsulate`."""
        protocol = self._protocol
        if protocol is None:
            raise UsageError(
                "this key has no PIN/UV protocol, so hmac-secret cannot be used",
                "use a FIDO2 key with clientPin, such as a YubiKey 5",
            )

        def agree() -> tuple[Mapping[int, Any], bytes]:
            resp = self.ctap.client_pin(protocol.VERSION, ClientPin.CMD.GET_KEY_AGREEMENT)
            return protocol.encapsulate(resp[ClientPin.RESULT.KEY_AGREEMENT])

        return self._guard("the key agreement", agree)

    def refresh(self) -> Info:
        """Read getInfo again (after a PIN was set, a reset or a replug)."""
        self._info = self._guard("read the key's info", self.ctap.get_info)
        return self._info

    # ------------------------------------------------------------------ facts
    @property
    def info(self) -> Info:
        """getInfo, as read when the session opened (or at the last `refresh()`)."""
        return self._info

    @property
    def aaguid(self) -> str:
        """AAGUID as the usual 8-4-4-4-12 hex string."""
        return str(self._info.aaguid)

    def supports_algorithm(self, alg: int) -> bool:
        """True when getInfo lists `alg`; keys that list nothing are assumed to do ES256 only."""
        listed = [a.get("alg") for a in self._info.algorithms]
        if not listed:
            return alg == ES256
        return alg in listed

    def algorithm_names(self) -> list[str]:
        """The COSE algorithms the key lists, by name (ES256 when it lists none)."""
        listed = [int(a["alg"]) for a in self._info.algorithms if "alg" in a] or [ES256]
        return [ALGORITHM_NAMES.get(a, str(a)) for a in listed]

    @property
    def has_hmac_secret(self) -> bool:
        return "hmac-secret" in self._info.extensions

    @property
    def pin_is_set(self) -> bool:
        return bool(self._info.options.get("clientPin"))

    @property
    def min_pin_length(self) -> int:
        return max(MIN_PIN_LENGTH, self._info.min_pin_length or MIN_PIN_LENGTH)

    def pin_retries(self) -> int:
        """PIN attempts left before the PIN is blocked for good."""
        client = self._client_pin()
        return self._guard("reading the PIN retries", lambda: client.get_pin_retries()[0])

    # ------------------------------------------------------------------ PIN
    def set_pin(self, new_pin: str) -> None:
        """Set the first PIN (the key must have none). Length is checked before sending."""
        check_new_pin(new_pin, self.min_pin_length)
        if self.pin_is_set:
            raise Refused("the key already has a PIN", "change it instead: yktool key pin change")
        client = self._client_pin()
        self._guard(
            "setting the PIN",
            lambda: client.set_pin(new_pin),
            not_allowed=Refused("the key already has a PIN", "change it instead: yktool key pin change"),
        )
        self._pin = new_pin
        self.refresh()

    def change_pin(self, old_pin: str, new_pin: str) -> None:
        """Change the PIN; a wrong `old_pin` costs a retry like any wrong PIN."""
        check_new_pin(new_pin, self.min_pin_length)
        check_entered_pin(old_pin)
        if not self.pin_is_set:
            raise UsageError("the key has no PIN yet", "set one: yktool key pin set")
        client = self._client_pin()
        self._guard("changing the PIN", lambda: client.change_pin(old_pin, new_pin))
        self._pin = new_pin
        self.refresh()

    def verify_pin(self, pin: str) -> None:
        """Raises PinInvalid/PinAuthBlocked/PinBlocked; returns when the PIN is right."""
        check_entered_pin(pin)
        if not self.pin_is_set:
            raise UsageError("the key has no PIN", "set one first: yktool key pin set")
        client = self._client_pin()
        self._guard("the PIN check", lambda: client.get_pin_token(pin))
        self._pin = pin

    # ------------------------------------------------------------------ credentials
    def make_credential(
        self,
        rp_id: str,
        *,
        client_data_hash: bytes | None = None,
        user_id: bytes = b"\0",
        user_name: str = "",
        rp_name: str | None = None,
        algorithms: Sequence[int] = (ES256,),
        resident: bool = False,
        uv: bool = False,
        hmac_secret: bool = False,
        cred_protect: int | None = None,
        exclude: Sequence[bytes] = (),
    ) -> Credential:
        """makeCredential; `client_data_hash` defaults to 32 random bytes. Uses the PIN when the
        key has one (or `uv`), asking for it through the interaction once. One touch."""
        cdh = client_data_hash if client_data_hash is not None else os.urandom(32)
        if not algorithms:
            raise UsageError("no algorithm asked for", "ask for ES256 or EdDSA")
        if not any(self.supports_algorithm(a) for a in algorithms):
            wanted = ", ".join(ALGORITHM_NAMES.get(a, str(a)) for a in algorithms)
            raise UsageError(
                f"the key does not support {wanted}",
                f"this key offers: {', '.join(self.algorithm_names())}; ES256 works on every FIDO2 key",
            )
        if hmac_secret and not self.has_hmac_secret:
            raise UsageError("the key has no hmac-secret extension", "use a key that lists hmac-secret")
        if cred_protect is not None and "credProtect" not in self._info.extensions:
            raise UsageError("the key has no credProtect extension", "enroll without credProtect")
        if uv and not self.pin_is_set:
            raise UsageError(
                "user verification needs a PIN on the key, and it has none", "set one first: yktool key pin set"
            )
        extensions: dict[str, Any] = {}
        if hmac_secret:
            extensions["hmac-secret"] = True
        if cred_protect is not None:
            extensions["credProtect"] = cred_protect
        options: dict[str, bool] = {"rk": True} if resident else {}
        pin_uv_param = pin_uv_protocol = None
        if self.pin_is_set:
            token = self.pin_token(ClientPin.PERMISSION.MAKE_CREDENTIAL, rp_id)
            assert self._protocol is not None  # noqa: S101 - pin_token checked it
            pin_uv_param = self._protocol.authenticate(token, cdh)
            pin_uv_protocol = self._protocol.VERSION
        rp: dict[str, Any] = {"id": rp_id, "name": rp_name or rp_id}
        user = {"id": user_id, "name": user_name or "yktool", "displayName": user_name or "yktool"}
        resp = self._guard(
            "making the credential",
            lambda: self.ctap.make_credential(
                cdh,
                rp,
                user,
                [{"type": "public-key", "alg": a} for a in algorithms],
                exclude_list=[{"type": "public-key", "id": c} for c in exclude] or None,
                extensions=extensions or None,
                options=options or None,
                pin_uv_param=pin_uv_param,
                pin_uv_protocol=pin_uv_protocol,
                on_keepalive=self._on_keepalive,
            ),
        )
        cred_data = resp.auth_data.credential_data
        if cred_data is None:
            raise ToolFailed(
                "the key answered makeCredential without a credential", "the key is misbehaving; try another key"
            )
        ext_out = resp.auth_data.extensions or {}
        public_key = cred_data.public_key
        return Credential(
            credential_id=bytes(cred_data.credential_id),
            public_key=public_key,
            algorithm=int(public_key[3]),
            rp_id=rp_id,
            auth_data=resp.auth_data,
            hmac_secret=bool(ext_out.get("hmac-secret")),
            cred_protect=ext_out.get("credProtect"),
            resident=resident,
        )

    def get_assertion(
        self,
        rp_id: str,
        client_data_hash: bytes,
        *,
        allow: Sequence[bytes],
        up: bool = True,
        uv: bool = False,
        hmac_salt: bytes | None = None,
    ) -> Assertion:
        """getAssertion over `allow`; with `uv` the PIN token is sent (UV flag set, hmac-secret
        then uses the with-UV secret). `hmac_salt` (32 bytes) asks hmac-secret for one output."""
        if hmac_salt is not None and len(hmac_salt) != 32:
            raise UsageError("the hmac-secret salt must be 32 bytes", "pass 32 bytes")
        if hmac_salt is not None and not self.has_hmac_secret:
            raise UsageError("the key has no hmac-secret extension", "use a key that lists hmac-secret")
        if uv and not self.pin_is_set:
            raise UsageError(
                "user verification needs a PIN on the key, and it has none", "set one first: yktool key pin set"
            )
        extensions: dict[str, Any] = {}
        shared: bytes | None = None
        protocol = self._protocol
        if hmac_salt is not None:
            # Key agreement before the PIN token, in python-fido2's own order (known to work on
            # real keys).
            key_agreement, shared = self._shared_secret()
            assert protocol is not None  # noqa: S101 - _shared_secret checked it
            salt_enc = protocol.encrypt(shared, hmac_salt)
            extensions["hmac-secret"] = {
                1: key_agreement,
                2: salt_enc,
                3: protocol.authenticate(shared, salt_enc),
                4: protocol.VERSION,
            }
        pin_uv_param = pin_uv_protocol = None
        if uv:
            token = self.pin_token(ClientPin.PERMISSION.GET_ASSERTION, rp_id)
            assert self._protocol is not None  # noqa: S101 - pin_token checked it
            pin_uv_param = self._protocol.authenticate(token, client_data_hash)
            pin_uv_protocol = self._protocol.VERSION
        options = None if up else {"up": False}
        resp = self._guard(
            "the assertion",
            lambda: self.ctap.get_assertion(
                rp_id,
                client_data_hash,
                [{"type": "public-key", "id": c} for c in allow] or None,
                extensions=extensions or None,
                options=options,
                pin_uv_param=pin_uv_param,
                pin_uv_protocol=pin_uv_protocol,
                on_keepalive=self._on_keepalive,
            ),
        )
        output: bytes | None = None
        if hmac_salt is not None and protocol is not None and shared is not None:
            enc = (resp.auth_data.extensions or {}).get("hmac-secret")
            if not isinstance(enc, bytes):
                raise ToolFailed(
                    "the key gave no hmac-secret output", "the credential was made without hmac-secret; enroll it again"
                )
            output = protocol.decrypt(shared, enc)[:32]
        cred_id = resp.credential.get("id") if resp.credential else None
        if cred_id is None and len(allow) == 1:
            cred_id = allow[0]  # CTAP allows omitting it when the allow list had one entry
        return Assertion(bytes(cred_id or b""), resp.auth_data, bytes(resp.signature), output)

    def probe(self, rp_id: str, credential_id: bytes, *, uv: bool = False) -> bool:
        """True when this key made `credential_id` for `rp_id`: a silent getAssertion (up=false,
        no touch, no PIN). A credProtect level-3 credential (ssh verify-required) is found only
        with `uv`: then the PIN is used (asked once per session); a key without a PIN cannot
        hold one, so it answers False without asking."""
        cdh = os.urandom(32)
        pin_uv_param = pin_uv_protocol = None
        if uv:
            if not self.pin_is_set:
                return False
            token = self.pin_token(ClientPin.PERMISSION.GET_ASSERTION, rp_id)
            assert self._protocol is not None  # noqa: S101 - pin_token checked it
            pin_uv_param = self._protocol.authenticate(token, cdh)
            pin_uv_protocol = self._protocol.VERSION
        try:
            self._guard(
                "probing for the credential",
                lambda: self.ctap.get_assertion(
                    rp_id,
                    cdh,
                    [{"type": "public-key", "id": credential_id}],
                    options={"up": False},
                    pin_uv_param=pin_uv_param,
                    pin_uv_protocol=pin_uv_protocol,
                ),
            )
        except NotThisKey:
            return False
        except UsageError:
            # a key that wants its PIN even for a silent probe (CTAP 2.1 alwaysUv): ask it with the
            # PIN, else a kept key's credentials would look like a lost key's
            if not uv and self.pin_is_set:
                return self.probe(rp_id, credential_id, uv=True)
            return False
        return True

    def list_resident(self, rp_id: str | None = None) -> list[ResidentCredential]:
        """Discoverable credentials (credential management; needs the PIN)."""
        if not CredentialManagement.is_supported(self._info):
            raise UsageError(
                "this key cannot list its discoverable credentials (no credential management)",
                "use a key with CTAP 2.1 credMgmt, such as a YubiKey 5 with firmware 5.2+",
            )
        if not self.pin_is_set:
            raise UsageError(
                "listing discoverable credentials needs a PIN on the key, and it has none",
                "set one first: yktool key pin set",
            )
        token = self.pin_token(ClientPin.PERMISSION.CREDENTIAL_MGMT)
        assert self._protocol is not None  # noqa: S101 - pin_token checked it
        credman = CredentialManagement(self.ctap, self._protocol, token)
        result = CredentialManagement.RESULT
        out: list[ResidentCredential] = []
        rps = self._guard("listing credentials", credman.enumerate_rps)
        for rp in rps:
            rp_entity = rp.get(result.RP) or {}
            this_rp = str(rp_entity.get("id", ""))
            if rp_id is not None and this_rp != rp_id:
                continue
            rp_hash = rp[result.RP_ID_HASH]
            creds = self._guard("listing credentials", functools.partial(credman.enumerate_creds, rp_hash))
            for cred in creds:
                user = cred.get(result.USER) or {}
                out.append(
                    ResidentCredential(
                        rp_id=this_rp,
                        credential_id=bytes(cred[result.CREDENTIAL_ID]["id"]),
                        public_key=CoseKey.parse(cred[result.PUBLIC_KEY]),
                        user_id=bytes(user.get("id", b"")),
                        user_name=str(user.get("name", "")),
                        cred_protect=cred.get(result.CRED_PROTECT),
                    )
                )
        return out

    # ------------------------------------------------------------------ reset
    def reset(self) -> None:
        """authenticatorReset: wipes every credential and the PIN. Real keys only accept it in
        the first seconds after being plugged in, and want a touch."""
        self._guard(
            "the reset",
            lambda: self.ctap.reset(on_keepalive=self._on_keepalive),
            not_allowed=Refused(
                "the key accepts a reset only in the first seconds after it is plugged in",
                "remove the key, insert it again, and run the reset at once (software key: yktool key replug)",
            ),
        )
        self._pin = None
        self.refresh()


@contextlib.contextmanager
def open_session(
    spec: str | None, interaction: KeyInteraction | None = None, pin: str | None = None
) -> Iterator[KeySession]:
    """Open the key named by `spec` (see `yktool.fido.open_device`) and wrap it in a KeySession;
    the device is closed on the way out."""
    from yktool.fido import open_device

    device = open_device(spec)
    try:
        yield KeySession(device, interaction, pin)
    finally:
        close = getattr(device, "close", None)
        if callable(close):
            with contextlib.suppress(Exception):
                close()
