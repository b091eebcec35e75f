"""The one rule of every LUKS change: never leave a volume without a way in.

`check_remaining` looks at what would be left after removing some keyslots and refuses (exit 4)
when nothing would be left, or (unless allowed) when only hardware-bound slots would be left, so
a dead TPM or a lost key would lock the owner out.
"""

from __future__ import annotations

from collections.abc import Iterable

from yktool.errors import Refused
from yktool.luks.header import LuksHeader
from yktool.luks.tokens import ROLE_RECOVERY, ROLE_UNSEEN

WIPE_TYPES = ("password", "recovery", "tpm2", "fido2", "pkcs11")


def describe_slot(header: LuksHeader, slot: int) -> str:
    """`slot 1 (tpm2)`."""
    ks = header.keyslots.get(slot)
    return f"slot {slot} ({ks.role if ks else '?'})"


def check_remaining(header: LuksHeader, removing: Iterable[int], *, allow_hardware_only: bool = False) -> None:
    """Refused unless a way in remains after `removing` (and a typed one, unless allowed)."""
    gone = set(removing)
    # a recovery key nobody was shown (an interrupted add-recovery) is no way in for anyone
    left = [s for s in header.usable_slots if s not in gone and header.keyslots[s].role != ROLE_UNSEEN]
    device = header.device
    if not left:
        raise Refused(
            f"removing {', '.join(describe_slot(header, s) for s in sorted(gone))} would leave {device} "
            "with no way in at all",
            f"add another way in first (e.g. `yktool luks add-recovery {device}`), then wipe",
        )
    knowledge_before = [s for s in header.knowledge_slots]
    knowledge_left = [s for s in header.knowledge_slots if s not in gone]
    # Every slot a person cannot type into: TPM2, FIDO2, PKCS#11, and tokens yktool does not know
    # (clevis binds to a Tang server or a TPM): none of them survives losing that hardware.
    hardware_left = [s for s in left if s not in header.knowledge_slots]
    if knowledge_before and not knowledge_left and hardware_left and not allow_hardware_only:
        raise Refused(
            f"removing {', '.join(describe_slot(header, s) for s in sorted(gone))} would leave {device} "
            f"openable only by hardware ({', '.join(describe_slot(header, s) for s in hardware_left)}): "
            "a dead TPM, a firmware update or a lost key would lock you out",
            f"keep a passphrase or add a recovery key first (`yktool luks add-recovery {device}`), "
            "or pass --allow-hardware-only if you really mean it",
        )


def slots_of_type(header: LuksHeader, wipe_type: str) -> list[int]:
    """The usable keyslots of one kind (`password` = slots without a token; `recovery` includes
    the unseen ones an interrupted add-recovery left)."""
    if wipe_type == ROLE_RECOVERY:
        return header.slots_with_role(ROLE_RECOVERY, ROLE_UNSEEN)
    return header.slots_with_role(wipe_type)
