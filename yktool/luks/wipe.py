"""Removing keyslots, only when a way in remains (see safety.check_remaining)."""

from __future__ import annotations

from pathlib import PurePosixPath

from yktool.errors import UsageError
from yktool.host import Host
from yktool.luks.cryptenroll import orphan_tokens, remove_orphan_tokens, wipe_slots
from yktool.luks.header import LuksHeader, read_header
from yktool.luks.pending import read_header_seeing_pending
from yktool.luks.safety import WIPE_TYPES, check_remaining, describe_slot, slots_of_type
from yktool.plan import Plan, Step

__all__ = ["plan_wipe", "read_header_seeing_pending"]  # the latter moved to luks.pending


def plan_wipe(
    host: Host,
    device: str | PurePosixPath,
    *,
    slots: list[int] | None = None,
    wipe_type: str | None = None,
    allow_hardware_only: bool = False,
) -> tuple[Plan, LuksHeader, list[int]]:
    """Plan removing `slots` or every slot of `wipe_type`; Refused (nothing touched) when unsafe."""
    header = read_header_seeing_pending(host, device)
    orphans = orphan_tokens(header)
    stale = _stale_records(host, header)
    if slots is None and wipe_type is None and (orphans or stale):
        slots = []  # nothing named: only heal what an interrupted wipe left
    if (slots is None) == (wipe_type is None):
        raise UsageError(
            "say what to wipe: --slot N or --type T (one of them)", f"e.g. --slot 1, or --type {'|'.join(WIPE_TYPES)}"
        )
    if wipe_type is not None:
        if wipe_type not in WIPE_TYPES:
            raise UsageError(f"unknown slot type {wipe_type!r}", f"use one of {', '.join(WIPE_TYPES)}")
        chosen = slots_of_type(header, wipe_type)
    if wipe_type is None:
        chosen = sorted(set(slots or []))
        missing = [s for s in chosen if s not in header.keyslots]
        if missing and (orphans or stale):
            # a wipe killed after the keyslot went: what it left (a token, a registry entry) is healed
            chosen = [s for s in chosen if s not in missing]
        elif missing:
            raise UsageError(
                f"{device} has no keyslot {', '.join(map(str, missing))}",
                f"its keyslots are {', '.join(map(str, sorted(header.keyslots))) or 'none'} "
                f"(`yktool luks status {device}`)",
            )
    plan = Plan(f"wipe keyslots of {device}")
    if orphans or stale:
        what = ([f"token(s) {', '.join(map(str, orphans))}, which point at no keyslot"] if orphans else []) + (
            [f"the registry's record of keyslot(s) {', '.join(map(str, stale))}, which are gone"] if stale else []
        )
        plan.add(
            Step(
                "heal",
                f"remove {' and '.join(what)} (left by an interrupted wipe)",
                touches=[str(device), "/etc/yktool/keys.toml"],
                verify="read the header back",
                action=lambda: _heal(host, device),
            )
        )
    if not chosen:
        plan.add(
            Step(
                "wipe",
                f"no {wipe_type} slot to wipe" if wipe_type else "the keyslot(s) are already gone",
                status="already-done",
            )
        )
        return plan, header, chosen
    check_remaining(header, chosen, allow_hardware_only=allow_hardware_only)
    tokens = sorted({t for s in chosen for t in header.keyslots[s].tokens})
    plan.add(
        Step(
            "wipe",
            f"remove {', '.join(describe_slot(header, s) for s in chosen)}"
            + (f" and token(s) {', '.join(map(str, tokens))}" if tokens else ""),
            touches=[str(device)],
            verify="read the header back: the slots are gone, the others remain",
            action=lambda: _wipe_and_forget(host, device, header.uuid, chosen, allow_hardware_only),
            prove=lambda: _prove_gone(host, device, chosen),
        )
    )
    return plan, header, chosen


def _wipe_and_forget(
    host: Host, device: str | PurePosixPath, uuid: str, slots: list[int], allow_hardware_only: bool
) -> None:
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


def _stale_records(host: Host, header: LuksHeader) -> list[int]:
    """Keyslots of this volume the registry lists but the header no longer has."""
    from yktool.errors import YktoolError
    from yktool.inventory import Registry

    try:
        registry = Registry.load(host)
    except YktoolError:
        return []
    slots = {e.get("keyslot") for _, e in registry.enrollments("luks") if e.get("uuid") == header.uuid}
    return sorted(s for s in slots if isinstance(s, int) and s >= 0 and s not in header.keyslots)


def _heal(host: Host, device: str | PurePosixPath) -> None:
    remove_orphan_tokens(host, device)
    header = read_header(host, device)
    stale = _stale_records(host, header)
    if stale:
        from yktool.inventory import Registry

        with Registry.update(host) as registry:
            for slot in stale:
                registry.forget("luks", uuid=header.uuid, keyslot=slot)


def _prove_gone(host: Host, device: str | PurePosixPath, slots: list[int]) -> None:
    from yktool.errors import ToolFailed

    after = read_header(host, device)
    still = [s for s in slots if s in after.keyslots]
    if still:
        raise ToolFailed(
            f"keyslot(s) {', '.join(map(str, still))} are still in the header after wiping",
            "check with `cryptsetup luksDump`",
        )
