"""Which registry name belongs to the key in hand, or to a credential.

Every enrollment (LUKS, SSH, git, pam_u2f) records itself under the nickname of the physical
key that made it, so one key keeps one name across layers. A key is recognised by a silent
probe (no touch, no PIN) of the credentials already recorded.
"""

from __future__ import annotations

import base64

from yktool.errors import YktoolError
from yktool.fido.session import KeySession
from yktool.host import Host
from yktool.inventory import Registry
from yktool.inventory import nickname_of_credential as nickname_of_credential  # moved: it needs no key


def identify_key(session: KeySession, host: Host, registry: Registry | None = None) -> str | None:
    """The nickname of the key in hand: the first recorded credential it answers for. None when
    the registry knows none of its credentials (or cannot be read, or the key stops answering)."""
    try:
        registry = registry if registry is not None else Registry.load(host)
    except YktoolError:
        return None
    for record in registry.keys:
        for entry in record.enrollments:
            rp_id = entry.get("application") or entry.get("origin") or entry.get("rp_id")
            cid = entry.get("credential_id")
            if not (isinstance(rp_id, str) and rp_id and isinstance(cid, str) and cid):
                continue
            try:
                raw = base64.b64decode(cid, validate=True)
            except ValueError:
                continue
            try:
                if session.probe(rp_id, raw):
                    return record.nickname
            except YktoolError:
                return None
    return None


def choose_nickname(session: KeySession, host: Host, requested: str | None) -> str:
    """--nickname if given; else the name the registry knows this key by; else primary for the
    first key and backup-N for the next ones."""
    if requested:
        return requested
    known = identify_key(session, host)
    if known:
        return known
    try:
        count = len(Registry.load(host).keys)
    except YktoolError:
        count = 0
    return "primary" if count == 0 else f"backup-{count}"
