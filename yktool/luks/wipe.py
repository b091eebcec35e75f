"""Removing keyslots, only when a way in remains (see safety.check_remaining)."""

from __future__ import annotations

from pathlib import PurePosixPath

from yktool.errors import UsageError
from yktool.host import Host
from yktool.luks.cryptenroll import wipe_slots
from yktool.luks.header import LuksHeader, read_header
from yktool.luks.safety import WIPE_TYPES, check_remaining, describe_slot, slots_of_type
from yktool.luks.tokens import ROLE_FIDO2
from yktool.plan import Plan, Step


def read_header_seeing_pending(host: Host, device: str | PurePosixPath) -> LuksHeader:
    """The header, with the orphan keyslot of an interrupted FIDO2 enrollment seen for what it is.

    That slot has no token yet, so it looks like a typed passphrase; but its passphrase is the
    key's hmac-secret output, which nobody can type. Counted as a passphrase, it would let the
    real one be wiped and lock the owner out.
    """
    from yktool.luks.fido2 import looks_like_ours, pending_enrollment

    header = read_header(host, device)
    pending = pending_enrollment(host, header.uuid) or {}
    slot = header.keyslots.get(pending["keyslot"]) if isinstance(pending.get("keyslot"), int) else None
    if slot is not None and not slot.tokens and looks_like_ours(header, slot.id):
        slot.role = ROLE_FIDO2
    return header


def plan_wipe(host: Host, device: str | PurePosixPath, *, slots: list[int] | None = None,
              wipe_type: str | None = None, allow_hardware_only: bool = False) -> tuple[Plan, LuksHeader, list[int]]:
    """Plan removing `slots` or every slot of `wipe_type`; Refused (nothing touched) when unsafe."""
    header = read_header_seeing_pending(host, device)
    if (slots is None) == (wipe_type is None):
        raise UsageError("say what to wipe: --slot N or --type T (one of them)",
                         f"e.g. --slot 1, or --type {'|'.join(WIPE_TYPES)}")
    if wipe_type is not None:
        if wipe_type not in WIPE_TYPES:
            raise UsageError(f"unknown slot type {wipe_type!r}", f"use one of {', '.join(WIPE_TYPES)}")
        chosen = slots_of_type(header, wipe_type)
    else:
        chosen = sorted(set(slots or []))
        missing = [s for s in chosen if s not in header.keyslots]
        if missing:
            raise UsageError(f"{device} has no keyslot {', '.join(map(str, missing))}",
                             f"its keyslots are {', '.join(map(str, sorted(header.keyslots))) or 'none'} "
                             f"(`yktool luks status {device}`)")
    plan = Plan(f"wipe keyslots of {device}")
    if not chosen:
        plan.add(Step("wipe", f"no {wipe_type} slot to wipe", status="already-done"))
        return plan, header, chosen
    check_remaining(header, chosen, allow_hardware_only=allow_hardware_only)
    tokens = sorted({t for s in chosen for t in header.keyslots[s].tokens})
    plan.add(Step(
        "wipe", f"remove {', '.join(describe_slot(header, s) for s in chosen)}"
        + (f" and token(s) {', '.join(map(str, tokens))}" if tokens else ""),
        touches=[str(device)], verify="read the header back: the slots are gone, the others remain",
        action=lambda: _wipe_and_forget(host, device, header.uuid, chosen, allow_hardware_only),
        prove=lambda: _prove_gone(host, device, chosen),
    ))
    return plan, header, chosen


def _wipe_and_forget(host: Host, device: str | PurePosixPath, uuid: str, slots: list[int],
                     allow_hardware_only: bool) -> None:
    """Check again (the header may have changed while the person was asked), wipe, then drop the
    registry's record of any key enrolled into those slots."""
    check_remaining(read_header_seeing_pending(host, device), slots, allow_hardware_only=allow_hardware_only)
    wipe_slots(host, device, slots)
    from yktool.inventory import Registry

    registry_file = host.path("/etc/yktool/keys.toml")
    if not registry_file.exists():
        return
    with Registry.update(host) as registry:
        for slot in slots:
            registry.forget("luks", uuid=uuid, keyslot=slot)


def _prove_gone(host: Host, device: str | PurePosixPath, slots: list[int]) -> None:
    from yktool.errors import ToolFailed

    after = read_header(host, device)
    still = [s for s in slots if s in after.keyslots]
    if still:
        raise ToolFailed(f"keyslot(s) {', '.join(map(str, still))} are still in the header after wiping",
                         "check with `cryptsetup luksDump`")
