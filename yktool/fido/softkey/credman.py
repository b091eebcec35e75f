"""The software key's authenticatorCredentialManagement (CTAP 2.1 §6.8): list, delete and
update discoverable credentials. `ssh-keygen -K`-style downloads of resident SSH keys need it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from fido2 import cbor
from fido2.ctap import CtapError
from fido2.ctap2.credman import CredentialManagement
from fido2.utils import sha256

from yktool.fido.softkey.pin import PERM, PinUv, fail
from yktool.fido.softkey.state import MAX_RESIDENT, ResidentCred, SoftKeyState, unwrap_credential

ERR = CtapError.ERR
CMD = CredentialManagement.CMD
RES = CredentialManagement.RESULT
_AUTHENTICATED = (
    CMD.GET_CREDS_METADATA,
    CMD.ENUMERATE_RPS_BEGIN,
    CMD.ENUMERATE_CREDS_BEGIN,
    CMD.DELETE_CREDENTIAL,
    CMD.UPDATE_USER_INFO,
)


@dataclass
class Enumeration:
    """What the ENUMERATE_*_NEXT subcommands still have to hand out: kept in RAM (a real key
    forgets it on any other command or a replug, and so does the software key)."""

    rps: list[tuple[str, str | None]] = field(default_factory=list)
    creds: list[ResidentCred] = field(default_factory=list)


def credential_management(
    state: SoftKeyState, pin: PinUv, enumeration: Enumeration, p: Mapping[int, Any], save: Callable[[], None]
) -> dict[int, Any] | None:
    """Handle one credentialManagement request against `state`, its pinUvAuthParam checked by
    `pin`, an enumeration in progress continued from (and kept in) `enumeration`."""
    sub, params = p.get(1), p.get(2)
    if sub is None:
        raise fail(ERR.MISSING_PARAMETER)
    if params is not None and not isinstance(params, Mapping):
        raise fail(ERR.CBOR_UNEXPECTED_TYPE)
    params = params or {}
    bound_rp: str | None = None
    if sub in _AUTHENTICATED:
        if p.get(4) is None:
            raise fail(ERR.PUAT_REQUIRED)
        message = bytes([sub]) + (cbor.encode(p[2]) if p.get(2) is not None else b"")
        pin.verify(p.get(3), p.get(4), message, PERM.CREDENTIAL_MGMT, None)
        token = pin.token
        bound_rp = token.rp_id if token is not None else None
    else:
        still_to_give = enumeration.rps if sub == CMD.ENUMERATE_RPS_NEXT else enumeration.creds
        if sub not in (CMD.ENUMERATE_RPS_NEXT, CMD.ENUMERATE_CREDS_NEXT):
            raise fail(ERR.INVALID_SUBCOMMAND)
        if not still_to_give:
            raise fail(ERR.NOT_ALLOWED)

    if sub == CMD.GET_CREDS_METADATA:
        if bound_rp is not None:
            raise fail(ERR.PIN_AUTH_INVALID)
        return {RES.EXISTING_CRED_COUNT: len(state.creds), RES.MAX_REMAINING_COUNT: MAX_RESIDENT - len(state.creds)}

    if sub == CMD.ENUMERATE_RPS_BEGIN:
        if bound_rp is not None:
            raise fail(ERR.PIN_AUTH_INVALID)
        rps: dict[str, str | None] = {}
        for c in sorted(state.creds, key=lambda c: c.created):
            rps.setdefault(c.rp_id, c.rp_name)
        if not rps:
            raise fail(ERR.NO_CREDENTIALS)
        enumeration.rps = list(rps.items())[1:]
        first = _rp_entry(next(iter(rps.items())))
        first[RES.TOTAL_RPS] = len(rps)
        return first

    if sub == CMD.ENUMERATE_RPS_NEXT:
        return _rp_entry(enumeration.rps.pop(0))

    if sub == CMD.ENUMERATE_CREDS_BEGIN:
        rp_id_hash = params.get(1)
        if not isinstance(rp_id_hash, bytes):
            raise fail(ERR.MISSING_PARAMETER)
        if bound_rp is not None and sha256(bound_rp.encode()) != rp_id_hash:
            raise fail(ERR.PIN_AUTH_INVALID)
        creds = [c for c in sorted(state.creds, key=lambda c: c.created) if sha256(c.rp_id.encode()) == rp_id_hash]
        if not creds:
            raise fail(ERR.NO_CREDENTIALS)
        enumeration.creds = creds[1:]
        first = _cred_entry(state, creds[0])
        first[RES.TOTAL_CREDENTIALS] = len(creds)
        return first

    if sub == CMD.ENUMERATE_CREDS_NEXT:
        return _cred_entry(state, enumeration.creds.pop(0))

    # delete / update: both name a credential by its descriptor
    desc = params.get(2)
    cid = desc.get("id") if isinstance(desc, Mapping) else None
    if not isinstance(cid, bytes):
        raise fail(ERR.MISSING_PARAMETER)
    found = next((c for c in state.creds if c.credential_id == cid), None)
    if found is None:
        raise fail(ERR.NO_CREDENTIALS)
    if bound_rp is not None and bound_rp != found.rp_id:
        raise fail(ERR.PIN_AUTH_INVALID)
    if sub == CMD.DELETE_CREDENTIAL:
        state.creds = [c for c in state.creds if c.credential_id != cid]
        save()
        return None
    if sub == CMD.UPDATE_USER_INFO:
        user = params.get(3)
        if not isinstance(user, Mapping):
            raise fail(ERR.MISSING_PARAMETER)
        if user.get("id") != found.user_id:
            raise fail(ERR.INVALID_PARAMETER)
        name, display = user.get("name"), user.get("displayName")
        found.user_name = name if isinstance(name, str) else None
        found.display_name = display if isinstance(display, str) else None
        save()
        return None
    raise fail(ERR.INVALID_SUBCOMMAND)


def _rp_entry(rp: tuple[str, str | None]) -> dict[int, Any]:
    rp_id, name = rp
    entity: dict[str, Any] = {"id": rp_id}
    if name is not None:
        entity["name"] = name
    return {RES.RP: entity, RES.RP_ID_HASH: sha256(rp_id.encode())}


def _cred_entry(state: SoftKeyState, cred: ResidentCred) -> dict[int, Any]:
    user: dict[str, Any] = {"id": cred.user_id}
    if cred.user_name is not None:
        user["name"] = cred.user_name
    if cred.display_name is not None:
        user["displayName"] = cred.display_name
    wrapped = unwrap_credential(state, sha256(cred.rp_id.encode()), cred.credential_id)
    if wrapped is None:  # cannot happen for a credential this key stored; be explicit anyway
        raise fail(ERR.INVALID_CREDENTIAL)
    return {
        RES.USER: user,
        RES.CREDENTIAL_ID: {"id": cred.credential_id, "type": "public-key"},
        RES.PUBLIC_KEY: dict(wrapped.public_key()),
        RES.CRED_PROTECT: wrapped.cred_protect,
    }
