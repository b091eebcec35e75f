"""yktool's software FIDO2 authenticator: a CTAP 2.1 key behind python-fido2's `CtapDevice`.

It is a product feature (the demo, `--device sim:PATH` rehearsals and every test use it), not a
test double: python-fido2's own clients (`Ctap2`, `ClientPin`, `Fido2Client`,
`CredentialManagement`) drive it exactly like a USB key. Its state lives in one file, written
atomically (see `yktool.fido.softkey.state`).

What it implements (CTAP 2.1): authenticatorGetInfo, makeCredential, getAssertion,
getNextAssertion (EdDSA and ES256, "packed" self-attestation, excludeList, discoverable and
non-discoverable credentials, the UP/UV flags, a signature counter), the hmac-secret and
credProtect extensions, clientPIN with PIN/UV protocols 1 and 2, reset (only within
`RESET_WINDOW` seconds of "power-up", with a touch), credentialManagement and selection.

User presence is a callback: `presence() -> True` (touched), `False` (refused:
OPERATION_DENIED) or `None` (timed out: USER_ACTION_TIMEOUT). The default touches at once.
`touches` counts the touches given. `replug()` stands for pulling the key out and putting it
back: the PIN-attempt block clears and the reset window opens again.

Its USB identity is its own, not Yubico's: vendor 0x1209 / product 0x0001 (pid.codes' test
PID), product name "yktool software key", a serial derived from its device id.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from threading import Event
from typing import Any

from fido2 import cbor
from fido2.cose import ES256, EdDSA
from fido2.ctap import STATUS, CtapDevice, CtapError
from fido2.ctap2.base import Ctap2
from fido2.hid import CAPABILITY, CTAPHID
from fido2.utils import hmac_sha256, sha256
from fido2.webauthn import Aaguid, AttestedCredentialData, AuthenticatorData

from yktool.fido.softkey.credman import Enumeration, credential_management
from yktool.fido.softkey.pin import PERM, PinUv, fail
from yktool.fido.softkey.state import (
    MAX_RESIDENT,
    CredKey,
    ResidentCred,
    SoftKeyState,
    StateError,
    load_state,
    locked,
    remove_stale_temp_files,
    save_state,
    unwrap_credential,
    wrap_credential,
)

ERR = CtapError.ERR
FLAG = AuthenticatorData.FLAG

VENDOR_ID = 0x1209  # pid.codes: open-source hardware vendor id
PRODUCT_ID = 0x0001  # pid.codes "test PID": for testing, never shipped on hardware
PRODUCT_NAME = "yktool software key"
AAGUID = Aaguid(uuid.UUID("e2f16795-c25f-41b2-80fb-83acaa153d87").bytes)
RESET_WINDOW = 10.0  # seconds after power-up in which authenticatorReset is allowed (like a YubiKey)
MAX_CREDS_IN_LIST = 8
MAX_CRED_ID_LENGTH = 128
MAX_MSG_SIZE = 1200
ALGORITHMS = (EdDSA.ALGORITHM, ES256.ALGORITHM)

Presence = Callable[[], "bool | None"]


def _always_touch() -> bool:
    return True


@dataclass
class _Call:
    """Per-request context: cancel event and keepalive callback."""

    event: Event | None
    on_keepalive: Callable[[STATUS], None] | None


@dataclass
class _PendingAssertion:
    rp_id_hash: bytes
    client_data_hash: bytes
    creds: list[tuple[ResidentCred, CredKey]]
    flags: AuthenticatorData.FLAG
    uv: bool
    hmac_input: Mapping[Any, Any] | None


class SoftKey(CtapDevice):
    """A software CTAP 2.1 authenticator whose state is the file at `path`.

    `create`: make a factory-fresh key when the file does not exist (else StateError).
    `presence`: the user-presence callback (see module docstring). It runs with the state file
    locked, so it must not open this same key (that would wait for itself).
    """

    vendor_id = VENDOR_ID
    product_id = PRODUCT_ID
    product_name = PRODUCT_NAME
    aaguid = AAGUID

    def __init__(self, path: str | Path, presence: Presence | None = None, *, create: bool = True) -> None:
        self.path = Path(path)
        self.presence: Presence = presence or _always_touch
        self.touches = 0
        self.presence_requests = 0
        self._pin = PinUv()
        self._pending: _PendingAssertion | None = None
        self._enumeration = Enumeration()
        with locked(self.path):
            if not self.path.exists():
                if not create:
                    raise StateError(f"no software-key state at {self.path}")
                save_state(self.path, SoftKeyState.new())
            state = load_state(self.path)
            remove_stale_temp_files(self.path)
        self.device_id = state.device_id
        # A stable serial, derived from the device id so that it survives a reset.
        self.serial_number = sha256(b"yktool softkey serial" + state.device_id)[:6].hex().upper()

    def __repr__(self) -> str:
        return f"SoftKey({str(self.path)!r})"

    # -- CtapDevice

    @property
    def capabilities(self) -> int:
        return int(CAPABILITY.CBOR | CAPABILITY.WINK | CAPABILITY.NMSG)

    @classmethod
    def list_devices(cls) -> Any:
        """Software keys are not discoverable: they are opened by path (`sim:PATH`)."""
        return iter(())

    def call(
        self,
        cmd: int,
        data: bytes = b"",
        event: Event | None = None,
        on_keepalive: Callable[[STATUS], None] | None = None,
    ) -> bytes:
        """One CTAPHID request; CBOR replies are a status byte plus canonical CBOR."""
        if cmd == CTAPHID.PING:
            return data
        if cmd == CTAPHID.WINK:
            return b""
        if cmd != CTAPHID.CBOR:
            raise CtapError(ERR.INVALID_COMMAND)
        if not data:
            return bytes([ERR.INVALID_LENGTH])
        try:
            params = self._decode(data[1:])
            with locked(self.path):
                state = load_state(self.path)
                result = self._dispatch(data[0], state, params, _Call(event, on_keepalive))
        except CtapError as e:
            return bytes([e.code])
        return b"\x00" + (cbor.encode(result) if result else b"")

    @staticmethod
    def _decode(raw: bytes) -> Mapping[int, Any]:
        if not raw:
            return {}
        try:
            value = cbor.decode(raw)
        except Exception:  # noqa: BLE001 - python-fido2's decoder raises several kinds
            raise fail(ERR.INVALID_CBOR) from None
        if not isinstance(value, Mapping):
            raise fail(ERR.CBOR_UNEXPECTED_TYPE)
        return value

    # -- "physical" actions

    def replug(self) -> None:
        """Pull the key out and put it back: RAM state is lost, the 3-in-a-row PIN block
        clears and the reset window opens again."""
        with locked(self.path):
            state = load_state(self.path)
            state.pin_fails_in_a_row = 0
            state.power_up = time.time()
            save_state(self.path, state)
        self._pin = PinUv()
        self._pending = None
        self._enumeration = Enumeration()

    def _user_presence(self, ctx: _Call) -> None:
        """Ask for a touch: keepalive UPNEEDED first, honour cancel, map refusal and timeout."""
        if ctx.event is not None and ctx.event.is_set():
            raise fail(ERR.KEEPALIVE_CANCEL)
        if ctx.on_keepalive is not None:
            ctx.on_keepalive(STATUS.UPNEEDED)
        self.presence_requests += 1
        answer = self.presence()
        if ctx.event is not None and ctx.event.is_set():
            raise fail(ERR.KEEPALIVE_CANCEL)
        if answer is True:
            self.touches += 1
            return
        if answer is False:
            raise fail(ERR.OPERATION_DENIED)
        raise fail(ERR.USER_ACTION_TIMEOUT)

    # -- dispatch

    def _dispatch(self, cmd: int, state: SoftKeyState, p: Mapping[int, Any], ctx: _Call) -> Mapping[Any, Any] | None:
        def save() -> None:
            save_state(self.path, state)

        if cmd != Ctap2.CMD.GET_NEXT_ASSERTION:
            self._pending = None
        if cmd == Ctap2.CMD.CREDENTIAL_MGMT_PRE:
            # CTAP 2.1-PRE's number, which a YubiKey 5 answers too and libfido2 1.12 always sends
            # (ssh-keygen -K, fido2-token -L -r): the same command.
            cmd = Ctap2.CMD.CREDENTIAL_MGMT
        if cmd not in (Ctap2.CMD.CREDENTIAL_MGMT,):
            self._enumeration = Enumeration()
        if cmd == Ctap2.CMD.GET_INFO:
            return self._get_info(state)
        if cmd == Ctap2.CMD.MAKE_CREDENTIAL:
            return self._make_credential(state, p, ctx, save)
        if cmd == Ctap2.CMD.GET_ASSERTION:
            return self._get_assertion(state, p, ctx, save)
        if cmd == Ctap2.CMD.GET_NEXT_ASSERTION:
            return self._get_next_assertion(state, save)
        if cmd == Ctap2.CMD.CLIENT_PIN:
            return self._pin.client_pin(state, p, save)
        if cmd == Ctap2.CMD.RESET:
            self._reset(state, ctx)
            return None
        if cmd == Ctap2.CMD.CREDENTIAL_MGMT:
            return credential_management(state, self._pin, self._enumeration, p, save)
        if cmd == Ctap2.CMD.SELECTION:
            self._user_presence(ctx)
            return None
        raise fail(ERR.INVALID_COMMAND)

    # -- authenticatorGetInfo

    def _get_info(self, state: SoftKeyState) -> dict[int, Any]:
        return {
            1: ["FIDO_2_0", "FIDO_2_1"],
            2: ["credProtect", "hmac-secret"],
            3: bytes(AAGUID),
            4: {
                "rk": True,
                "up": True,
                "plat": False,
                "clientPin": state.pin_hash is not None,
                "credMgmt": True,
                "pinUvAuthToken": True,
                # Like a YubiKey: a key with a PIN still makes non-discoverable credentials
                # without UV (systemd-cryptenroll --fido2-with-client-pin=no relies on it).
                "makeCredUvNotRqd": True,
            },
            5: MAX_MSG_SIZE,
            6: [2, 1],
            7: MAX_CREDS_IN_LIST,
            8: MAX_CRED_ID_LENGTH,
            9: ["usb"],
            10: [{"alg": alg, "type": "public-key"} for alg in ALGORITHMS],
            12: False,
            13: 4,
            14: 1,
            20: MAX_RESIDENT - len(state.creds),
        }

    # -- shared checks

    def _check_pin_uv_param(
        self,
        state: SoftKeyState,
        p: Mapping[int, Any],
        param_key: int,
        client_data_hash: bytes,
        permission: int,
        rp_id: str,
        ctx: _Call,
    ) -> bool:
        """Returns True when a valid pinUvAuthParam was given (the UV flag is then set)."""
        param = p.get(param_key)
        if param is None:
            return False
        if isinstance(param, bytes) and len(param) == 0:
            # A zero-length pinUvAuthParam is a CTAP 2.0 platform's "which key?" probe.
            self._user_presence(ctx)
            raise fail(ERR.PIN_INVALID if state.pin_hash is not None else ERR.PIN_NOT_SET)
        self._pin.verify(p.get(param_key + 1), param, client_data_hash, permission, rp_id)
        return True

    @staticmethod
    def _options(p: Mapping[int, Any], key: int) -> Mapping[str, Any]:
        opts = p.get(key) or {}
        if not isinstance(opts, Mapping):
            raise fail(ERR.CBOR_UNEXPECTED_TYPE)
        if opts.get("uv"):
            raise fail(ERR.INVALID_OPTION)  # no built-in UV (fingerprint); use a PIN token
        return opts

    def _find(self, state: SoftKeyState, rp_id_hash: bytes, credential_id: bytes) -> CredKey | None:
        key = unwrap_credential(state, rp_id_hash, credential_id)
        if key is not None and key.resident and self._resident(state, credential_id) is None:
            return None  # a deleted discoverable credential is gone
        return key

    @staticmethod
    def _resident(state: SoftKeyState, credential_id: bytes) -> ResidentCred | None:
        return next((c for c in state.creds if c.credential_id == credential_id), None)

    # -- authenticatorMakeCredential

    def _make_credential(
        self, state: SoftKeyState, p: Mapping[int, Any], ctx: _Call, save: Callable[[], None]
    ) -> dict[Any, Any]:
        cdh, rp, user, params = p.get(1), p.get(2), p.get(3), p.get(4)
        if cdh is None or rp is None or user is None or params is None:
            raise fail(ERR.MISSING_PARAMETER)
        if not (
            isinstance(cdh, bytes)
            and isinstance(rp, Mapping)
            and isinstance(user, Mapping)
            and isinstance(params, list)
        ):
            raise fail(ERR.CBOR_UNEXPECTED_TYPE)
        rp_id = rp.get("id")
        if not isinstance(rp_id, str) or not isinstance(user.get("id"), bytes):
            raise fail(ERR.MISSING_PARAMETER)
        alg = next(
            (
                c.get("alg")
                for c in params
                if isinstance(c, Mapping) and c.get("type") == "public-key" and c.get("alg") in ALGORITHMS
            ),
            None,
        )
        if alg is None:
            raise fail(ERR.UNSUPPORTED_ALGORITHM)
        if p.get(10) is not None:
            raise fail(ERR.INVALID_PARAMETER)  # no enterprise attestation
        opts = self._options(p, 7)
        if opts.get("up") is False:
            raise fail(ERR.INVALID_OPTION)
        rk = bool(opts.get("rk", False))
        uv = self._check_pin_uv_param(state, p, 8, cdh, PERM.MAKE_CREDENTIAL, rp_id, ctx)
        if not uv and state.pin_hash is not None and rk:
            raise fail(ERR.PUAT_REQUIRED)  # makeCredUvNotRqd covers non-discoverable only
        rp_id_hash = sha256(rp_id.encode())

        for desc in p.get(5) or []:
            cid = desc.get("id") if isinstance(desc, Mapping) else None
            if not isinstance(cid, bytes):
                raise fail(ERR.CBOR_UNEXPECTED_TYPE)
            found = self._find(state, rp_id_hash, cid)
            if found is not None and (found.cred_protect < 3 or uv):
                self._user_presence(ctx)
                raise fail(ERR.CREDENTIAL_EXCLUDED)

        ext_in = p.get(6) or {}
        if not isinstance(ext_in, Mapping):
            raise fail(ERR.CBOR_UNEXPECTED_TYPE)
        hmac_secret = ext_in.get("hmac-secret") is True
        cred_protect = ext_in.get("credProtect", 1)
        if cred_protect not in (1, 2, 3):
            raise fail(ERR.INVALID_OPTION)
        if (
            rk
            and len(state.creds) >= MAX_RESIDENT
            and not any(c.rp_id == rp_id and c.user_id == user["id"] for c in state.creds)
        ):
            raise fail(ERR.KEY_STORE_FULL)

        self._user_presence(ctx)

        key = CredKey.generate(alg, cred_protect, hmac_secret, rk)
        cid = wrap_credential(state, rp_id_hash, key)
        if rk:
            state.creds = [c for c in state.creds if not (c.rp_id == rp_id and c.user_id == user["id"])]
            state.sequence += 1
            state.creds.append(
                ResidentCred(
                    cid,
                    rp_id,
                    _opt_str(rp.get("name")),
                    user["id"],
                    _opt_str(user.get("name")),
                    _opt_str(user.get("displayName")),
                    state.sequence,
                )
            )
        ext_out: dict[str, Any] = {}
        if hmac_secret:
            ext_out["hmac-secret"] = True
        if "credProtect" in ext_in:
            ext_out["credProtect"] = cred_protect
        flags = FLAG.UP | FLAG.AT | (FLAG.UV if uv else 0) | (FLAG.ED if ext_out else 0)
        state.counter += 1
        auth_data = AuthenticatorData.create(
            rp_id_hash,
            FLAG(flags),
            state.counter,
            AttestedCredentialData.create(AAGUID, cid, key.public_key()),
            ext_out or None,
        )
        save()
        if uv:
            self._pin.spend_token()
        # "packed" self-attestation: signed by the credential's own key, no certificate.
        return {1: "packed", 2: bytes(auth_data), 3: {"alg": alg, "sig": key.sign(auth_data + cdh)}}

    # -- authenticatorGetAssertion / GetNextAssertion

    def _get_assertion(
        self, state: SoftKeyState, p: Mapping[int, Any], ctx: _Call, save: Callable[[], None]
    ) -> dict[int, Any]:
        rp_id, cdh = p.get(1), p.get(2)
        if rp_id is None or cdh is None:
            raise fail(ERR.MISSING_PARAMETER)
        if not isinstance(rp_id, str) or not isinstance(cdh, bytes):
            raise fail(ERR.CBOR_UNEXPECTED_TYPE)
        opts = self._options(p, 5)
        if "rk" in opts:
            raise fail(ERR.UNSUPPORTED_OPTION)
        up = opts.get("up", True) is not False
        # A silent pre-flight (up=false) may use a makeCredential token (python-fido2 filters
        # an excludeList that way); a real assertion needs the getAssertion permission.
        perm = PERM.GET_ASSERTION | (PERM.MAKE_CREDENTIAL if not up else 0)
        uv = self._check_pin_uv_param(state, p, 6, cdh, perm, rp_id, ctx)
        rp_id_hash = sha256(rp_id.encode())

        allow = p.get(3)
        matches: list[tuple[ResidentCred, CredKey]] = []
        if allow:
            if not isinstance(allow, list):
                raise fail(ERR.CBOR_UNEXPECTED_TYPE)
            for desc in allow:
                cid = desc.get("id") if isinstance(desc, Mapping) else None
                if not isinstance(cid, bytes):
                    raise fail(ERR.CBOR_UNEXPECTED_TYPE)
                key = self._find(state, rp_id_hash, cid)
                if key is None or (key.cred_protect == 3 and not uv):
                    continue
                res = self._resident(state, cid) or ResidentCred(cid, rp_id, None, b"", None, None, 0)
                matches = [(res, key)]
                break
        else:
            for res in sorted(state.creds, key=lambda c: -c.created):
                if res.rp_id != rp_id:
                    continue
                key = unwrap_credential(state, rp_id_hash, res.credential_id)
                # credProtect 2 and 3 credentials are not discoverable without UV.
                if key is None or (key.cred_protect >= 2 and not uv):
                    continue
                matches.append((res, key))
        if not matches:
            raise fail(ERR.NO_CREDENTIALS)

        ext_in = p.get(4) or {}
        if not isinstance(ext_in, Mapping):
            raise fail(ERR.CBOR_UNEXPECTED_TYPE)
        hmac_input = ext_in.get("hmac-secret")
        if up:
            self._user_presence(ctx)
        flags = FLAG((FLAG.UP if up else 0) | (FLAG.UV if uv else 0))
        pending = _PendingAssertion(rp_id_hash, cdh, matches, flags, uv, hmac_input)
        response = self._assert_one(state, pending, matches[0], discovered=not allow)
        save()
        if uv and up:
            self._pin.spend_token()
        if len(matches) > 1:
            response[5] = len(matches)
            pending.creds = matches[1:]
            self._pending = pending
        return response

    def _get_next_assertion(self, state: SoftKeyState, save: Callable[[], None]) -> dict[int, Any]:
        pending = self._pending
        if pending is None or not pending.creds:
            self._pending = None
            raise fail(ERR.NOT_ALLOWED)
        cred = pending.creds.pop(0)
        response = self._assert_one(state, pending, cred, discovered=True)
        save()
        return response

    def _assert_one(
        self, state: SoftKeyState, pending: _PendingAssertion, cred: tuple[ResidentCred, CredKey], discovered: bool
    ) -> dict[int, Any]:
        res, key = cred
        ext_out: dict[str, Any] = {}
        if pending.hmac_input is not None and key.hmac_secret:
            ext_out["hmac-secret"] = self._hmac_secret(state, pending.hmac_input, res.credential_id, pending.uv)
        flags = pending.flags | (FLAG.ED if ext_out else 0)
        state.counter += 1
        auth_data = AuthenticatorData.create(pending.rp_id_hash, FLAG(flags), state.counter, extensions=ext_out or None)
        response: dict[int, Any] = {
            1: {"id": res.credential_id, "type": "public-key"},
            2: bytes(auth_data),
            3: key.sign(auth_data + pending.client_data_hash),
        }
        if key.resident:
            user: dict[str, Any] = {"id": res.user_id}
            # Names identify a person: only after user verification (CTAP 2.1 §6.2.2).
            if pending.uv and discovered:
                if res.user_name is not None:
                    user["name"] = res.user_name
                if res.display_name is not None:
                    user["displayName"] = res.display_name
            response[4] = user
        return response

    def _hmac_secret(self, state: SoftKeyState, ext: Any, credential_id: bytes, uv: bool) -> bytes:
        """hmac-secret: decrypt the salts with the shared secret, HMAC them with the
        credential's CredRandom (one with UV, one without), return the outputs encrypted."""
        if not isinstance(ext, Mapping):
            raise fail(ERR.CBOR_UNEXPECTED_TYPE)
        salt_enc, salt_auth = ext.get(2), ext.get(3)
        if not isinstance(salt_enc, bytes) or not isinstance(salt_auth, bytes):
            raise fail(ERR.MISSING_PARAMETER)
        protocol = self._pin.protocol(ext.get(4, 1))
        shared = self._pin.shared_secret(protocol, ext.get(1))
        self._pin.check_param(protocol, shared, salt_enc, salt_auth)
        try:
            salts = protocol.decrypt(shared, salt_enc)
        except ValueError:
            raise fail(ERR.INVALID_LENGTH) from None
        if len(salts) not in (32, 64):
            raise fail(ERR.INVALID_LENGTH)
        cred_random = state.cred_random(credential_id, uv)
        out = b"".join(hmac_sha256(cred_random, salts[i : i + 32]) for i in range(0, len(salts), 32))
        return bytes(protocol.encrypt(shared, out))

    # -- authenticatorReset

    def _reset(self, state: SoftKeyState, ctx: _Call) -> None:
        if time.time() - state.power_up > RESET_WINDOW:
            raise fail(ERR.NOT_ALLOWED)
        self._user_presence(ctx)
        fresh = SoftKeyState.new(device_id=state.device_id)
        fresh.power_up = state.power_up
        save_state(self.path, fresh)
        self._pin = PinUv()


def _opt_str(value: Any) -> str | None:
    return value if isinstance(value, str) else None
