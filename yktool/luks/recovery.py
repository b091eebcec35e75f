"""Recovery keys: systemd's `--recovery-key`, proven with cryptsetup, shown once by the caller.

Journaled (`yktool.luks.journal`, kind `luks-recovery`): before systemd-cryptenroll runs, the
journal records which keyslots the volume had; it is removed once the key was shown. A run killed
in between (after the slot was made, with or without its token, before anyone saw the key) leaves
the journal, and the slot it made is an *unseen* recovery key (`luks.pending`): no way in for
anyone, never counted as the typed fallback, and the next add-recovery removes it and makes a new
one instead of saying "already has a recovery key". The key is shown before an old one is removed
(--replace), so a kill never leaves the old key gone and the new one unseen.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import PurePosixPath

from yktool.errors import ToolFailed, UsageError
from yktool.host import Host
from yktool.luks import cryptenroll
from yktool.luks.header import read_header
from yktool.luks.journal import RECOVERY_JOURNAL, fault
from yktool.luks.pending import read_header_seeing_pending
from yktool.luks.safety import check_remaining
from yktool.luks.tokens import ROLE_RECOVERY, ROLE_UNSEEN
from yktool.plan import Plan, Step


@dataclass
class RecoveryEnrollment:
    """The plan, the secret the caller fills in (`unlock`), and the key once made (`key`).

    `show` is how the caller shows the key (the plan calls it once the key is proven, before an
    old key is removed); without it the caller shows `key` after the plan and calls `shown()`."""

    plan: Plan
    old_slots: list[int]
    uuid: str = ""
    unseen: list[int] = field(default_factory=list)
    unlock: bytes | None = field(default=None, repr=False)
    key: bytes | None = field(default=None, repr=False)
    new_slot: int | None = None
    show: Callable[[bytes], None] | None = field(default=None, repr=False)
    host: Host | None = field(default=None, repr=False)

    @property
    def needs_unlock(self) -> bool:
        return any(s.status == "pending" and s.id == "add" for s in self.plan.steps)

    def shown(self) -> None:
        """The person has seen the key: forget it, and the journal goes (the slot is theirs now)."""
        self.key = None
        if self.host is not None and self.uuid:
            RECOVERY_JOURNAL.clear(self.host, self.uuid)


def plan_add_recovery(host: Host, device: str | PurePosixPath, *, replace: bool = False) -> RecoveryEnrollment:
    """Plan adding a recovery key (idempotent: an existing one is reported unless `replace`; one
    an interrupted run made and never showed is replaced)."""
    header = read_header_seeing_pending(host, device)
    cryptenroll.require_systemd(host)
    old = header.slots_with_role(ROLE_RECOVERY)
    unseen = header.slots_with_role(ROLE_UNSEEN)
    plan = Plan(f"recovery key for {device}")
    op = RecoveryEnrollment(plan, old, header.uuid, unseen, host=host)
    if unseen:

        def heal() -> None:
            check_remaining(read_header_seeing_pending(host, device), unseen)
            cryptenroll.wipe_slots(host, device, unseen)
            RECOVERY_JOURNAL.clear(host, header.uuid)

        plan.add(
            Step(
                "heal",
                f"remove keyslot {', '.join(map(str, unseen))}: a recovery key an interrupted run "
                "made and nobody was shown",
                touches=[str(device)],
                verify="read the header back",
                action=heal,
            )
        )
    elif RECOVERY_JOURNAL.read(host, header.uuid) is not None:
        # the interrupted run made no slot (or its slot is gone): only the journal is left
        RECOVERY_JOURNAL.clear(host, header.uuid)
    if old and not replace:
        plan.add(
            Step(
                "add",
                f"{device} already has a recovery key (slot {', '.join(map(str, old))})",
                status="already-done",
                detail="use --replace to make a new one and remove the old",
            )
        )
        return op

    before: set[int] = set()

    def add() -> None:
        if op.unlock is None:
            raise UsageError("no passphrase to unlock the volume with", "give the current passphrase")
        cryptenroll.require_unlock(host, device, op.unlock)
        now = read_header(host, device)
        before.update(now.keyslots)
        # written before systemd touches the header: a kill from here on is recognised
        RECOVERY_JOURNAL.write(
            host,
            now.uuid,
            {
                "uuid": now.uuid,
                "device": str(device),
                "before": sorted(before),
                "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            },
        )
        op.key = cryptenroll.enroll_recovery(host, device, op.unlock)
        fault("recovery-after-enroll")

    def prove() -> None:
        after = read_header(host, device)
        new = [s for s in after.slots_with_role(ROLE_RECOVERY) if s not in before]
        if len(new) == 1 and op.key is not None and not cryptenroll.check_passphrase(host, device, op.key, new[0]):
            # a key that does not open its slot must not be shown (someone would write it down
            # and trust it): the slot this run added goes again, the key is forgotten
            check_remaining(read_header_seeing_pending(host, device), new)
            cryptenroll.wipe_slots(host, device, new)
            RECOVERY_JOURNAL.clear(host, after.uuid)
            op.key = None
            raise ToolFailed(
                "the new recovery key did not open its keyslot; the keyslot was removed again",
                "nothing else changed; run again for a new recovery key",
            )
        if len(new) != 1 or op.key is None:
            op.key = None  # never shown: the journal stays, and the next run replaces what was made
            raise ToolFailed("the new recovery key does not open its keyslot", "check `systemd-cryptenroll DEVICE`")
        op.new_slot = new[0]

    plan.add(
        Step(
            "add",
            "add a recovery key (a new keyslot and a systemd-recovery token)",
            touches=[str(device)],
            verify="cryptsetup open --test-passphrase with the new key on its keyslot",
            action=add,
            prove=prove,
        )
    )

    def show() -> None:
        if op.show is not None and op.key is not None:
            op.show(op.key)
            op.shown()

    plan.add(
        Step(
            "show",
            "show the recovery key once (terminal only)",
            touches=[],
            verify="the journal goes once it was shown",
            action=show,
        )
    )
    if old:

        def wipe() -> None:
            check_remaining(read_header_seeing_pending(host, device), old)
            cryptenroll.wipe_slots(host, device, old)

        plan.add(
            Step(
                "wipe-old",
                f"remove the old recovery key (slot {', '.join(map(str, old))})",
                touches=[str(device)],
                verify="read the header back",
                action=wipe,
            )
        )
    return op
