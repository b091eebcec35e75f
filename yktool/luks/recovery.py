"""Recovery keys: systemd's `--recovery-key`, proven with cryptsetup, shown once by the caller."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

from yktool.errors import ToolFailed, UsageError
from yktool.host import Host
from yktool.luks import cryptenroll
from yktool.luks.header import read_header
from yktool.luks.safety import check_remaining
from yktool.plan import Plan, Step


@dataclass
class RecoveryEnrollment:
    """The plan, the secret the caller fills in (`unlock`), and the key once made (`key`)."""

    plan: Plan
    old_slots: list[int]
    unlock: bytes | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)
    new_slot: int | None = None

    @property
    def needs_unlock(self) -> bool:
        return any(s.status == "pending" and s.id == "add" for s in self.plan.steps)


def plan_add_recovery(host: Host, device: str | PurePosixPath, *, replace: bool = False) -> RecoveryEnrollment:
    """Plan adding a recovery key (idempotent: an existing one is reported unless `replace`)."""
    header = read_header(host, device)
    cryptenroll.require_systemd(host)
    old = header.slots_with_role("recovery")
    plan = Plan(f"recovery key for {device}")
    op = RecoveryEnrollment(plan, old)
    if old and not replace:
        plan.add(Step("add", f"{device} already has a recovery key (slot {', '.join(map(str, old))})",
                      status="already-done", detail="use --replace to make a new one and remove the old"))
        return op

    before = set(header.keyslots)

    def add() -> None:
        if op.unlock is None:
            raise UsageError("no passphrase to unlock the volume with", "give the current passphrase")
        cryptenroll.require_unlock(host, device, op.unlock)
        op.key = cryptenroll.enroll_recovery(host, device, op.unlock)

    def prove() -> None:
        after = read_header(host, device)
        new = [s for s in after.slots_with_role("recovery") if s not in before]
        if len(new) == 1 and op.key is not None and not cryptenroll.check_passphrase(host, device, op.key, new[0]):
            # a key that does not open its slot must not be shown (someone would write it down
            # and trust it): the slot this run added goes again, the key is forgotten
            check_remaining(after, new)
            cryptenroll.wipe_slots(host, device, new)
            op.key = None
            raise ToolFailed("the new recovery key did not open its keyslot; the keyslot was removed again",
                             "nothing else changed; run again for a new recovery key")
        if len(new) != 1 or op.key is None:
            raise ToolFailed("the new recovery key does not open its keyslot", "check `systemd-cryptenroll DEVICE`")
        op.new_slot = new[0]

    plan.add(Step("add", "add a recovery key (a new keyslot and a systemd-recovery token)", touches=[str(device)],
                  verify="cryptsetup open --test-passphrase with the new key on its keyslot", action=add, prove=prove))
    if old:
        def wipe() -> None:
            check_remaining(read_header(host, device), old)
            cryptenroll.wipe_slots(host, device, old)

        plan.add(Step("wipe-old", f"remove the old recovery key (slot {', '.join(map(str, old))})",
                      touches=[str(device)], verify="read the header back", action=wipe))
    return op
