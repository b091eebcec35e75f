"""The header as it really is after an interrupted run: slots a journal explains are seen for what
they are, not for what they look like.

- A FIDO2 enrollment killed between luksAddKey and the token import leaves a token-less slot. It
  looks like a typed passphrase, but its passphrase is the key's hmac-secret output, which nobody
  can type: it is the key's (role fido2).
- `add-recovery` killed after systemd-cryptenroll made the slot (with or without its token yet)
  and before the key was shown leaves a recovery key nobody knows (role unseen-recovery): no way
  in for anyone, so it never counts as the typed fallback, and the next add-recovery replaces it.

Counted as passphrases, either would let the real one be wiped and lock the owner out.
"""

from __future__ import annotations

from pathlib import PurePosixPath

from yktool.host import Host
from yktool.luks.header import Keyslot, LuksHeader, read_header
from yktool.luks.journal import FIDO2_JOURNAL, RECOVERY_JOURNAL
from yktool.luks.tokens import ROLE_FIDO2, ROLE_PASSWORD, ROLE_RECOVERY, ROLE_UNSEEN


def minimal_pbkdf(slot: Keyslot) -> bool:
    """The KDF systemd (and yktool) give a slot whose secret is machine-made: pbkdf2/sha512, 1000
    iterations. A passphrase a person added has cryptsetup's default (argon2id)."""
    return slot.kdf == "pbkdf2" and slot.iterations == 1000 and slot.kdf_hash == "sha512"


def see_pending(host: Host, header: LuksHeader) -> LuksHeader:
    """Set the roles of the slots an interrupted run left (in place); returns `header`."""
    fido2 = FIDO2_JOURNAL.read(host, header.uuid) or {}
    if isinstance(fido2.get("token"), dict) and isinstance(fido2.get("keyslot"), int):
        slot = header.keyslots.get(fido2["keyslot"])
        if slot is not None and not slot.tokens and minimal_pbkdf(slot):
            slot.role = ROLE_FIDO2
    for n in unseen_recovery_slots(host, header):
        header.keyslots[n].role = ROLE_UNSEEN
    return header


def unseen_recovery_slots(host: Host, header: LuksHeader) -> list[int]:
    """Slots an interrupted add-recovery made and never showed (its journal names the slots that
    were there before): recovery slots, or token-less machine-made ones, that are new since."""
    pending = RECOVERY_JOURNAL.read(host, header.uuid)
    before = pending.get("before") if pending else None
    if not isinstance(before, list):
        return []
    out = []
    for slot in header.keyslots.values():
        if slot.id in before or not slot.opens_volume:
            continue
        if slot.role in (ROLE_RECOVERY, ROLE_UNSEEN) or (
            slot.role == ROLE_PASSWORD and not slot.tokens and minimal_pbkdf(slot)
        ):
            out.append(slot.id)
    return sorted(out)


def read_header_seeing_pending(host: Host, device: str | PurePosixPath) -> LuksHeader:
    """`read_header`, with the slots of interrupted runs seen for what they are (`see_pending`)."""
    return see_pending(host, read_header(host, device))
