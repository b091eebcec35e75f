"""TPM2 enrollment of a LUKS2 volume: plan, enroll, prove with test-unlock, then (on --replace)
remove the old enrollment. Never the other way round.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import PurePosixPath

from yktool.errors import Refused, ToolFailed, UsageError
from yktool.host import Host
from yktool.luks import cryptenroll
from yktool.luks.header import read_header
from yktool.luks.pending import see_pending
from yktool.luks.safety import check_remaining
from yktool.luks.tokens import Tpm2Token
from yktool.luks.unlock import UnlockContext, UnlockResult, policy_matches, test_tokens
from yktool.plan import Plan, Step
from yktool.tpm import PCR0_WARNING, Tcti, format_pcrs, is_unmeasured, read_pcrs

DEFAULT_PCRS = [0, 7]


@dataclass
class Tpm2Enrollment:
    """A planned TPM2 enrollment. The caller fills `unlock` (and `pin`) before `plan.apply()`."""

    plan: Plan
    device: str
    pcrs: list[int]
    with_pin: bool
    current: Tpm2Token | None
    stale: list[Tpm2Token]
    unlock: bytes | None = field(default=None, repr=False)
    pin: bytes | None = field(default=None, repr=False)
    new_token: int | None = None
    proof: list[UnlockResult] = field(default_factory=list)

    @property
    def needs_unlock(self) -> bool:
        """True when a step will add a keyslot (and so needs the existing passphrase)."""
        return any(s.id == "enroll" and s.status == "pending" for s in self.plan.steps)

    @property
    def needs_pin(self) -> bool:
        return self.with_pin and any(s.status == "pending" for s in self.plan.steps)


def _same_settings(token: Tpm2Token, pcrs: list[int], with_pin: bool, bank: str) -> bool:
    return (
        sorted(token.pcrs) == sorted(pcrs) and token.pin == with_pin and token.pcr_bank == bank and not token.has_pubkey
    )


def plan_enroll_tpm2(
    host: Host,
    device: str | PurePosixPath,
    tcti: Tcti,
    pcrs: list[int] | None = None,
    *,
    with_pin: bool = False,
    replace: bool = False,
    allow_unmeasured: bool = False,
    bank: str = "sha256",
) -> Tpm2Enrollment:
    """Plan sealing a keyslot of `device` to `pcrs` of the TPM at `tcti`.

    Checks before anything is touched: a LUKS2 header, systemd 252+, a TPM at `tcti`, and that
    the PCRs hold measurements (all zero means no measured boot: refused unless allowed).
    Idempotent: a TPM2 token with the same PCRs and PIN setting is reported, not duplicated.
    """
    pcrs = sorted(set(DEFAULT_PCRS if pcrs is None else pcrs))
    if not pcrs:
        raise UsageError("no PCRs given", "bind to at least PCR 7, e.g. --pcrs 0+7")
    header = read_header(host, device)
    cryptenroll.require_systemd(host)
    values = read_pcrs(tcti, sorted(set(pcrs) | {7}), bank)
    zero = [p for p in sorted(values) if is_unmeasured(values[p])]
    if zero and not allow_unmeasured:
        raise Refused(
            f"PCR {'+'.join(map(str, zero))} {'is' if len(zero) == 1 else 'are'} all zero: this boot was not "
            "measured, so a TPM2 seal would bind to nothing an attacker cannot reproduce",
            "boot with UEFI Secure Boot / measured boot on (check `yktool tpm status`), or pass "
            "--allow-unmeasured to enroll anyway",
        )
    tpm2_tokens = [t for t in header.tokens_of_type("systemd-tpm2") if isinstance(t, Tpm2Token)]
    same = [t for t in tpm2_tokens if _same_settings(t, pcrs, with_pin, bank)]
    current = next((t for t in same if policy_matches(tcti, t)), None)
    stale = [t for t in tpm2_tokens if t is not current]

    plan = Plan(f"TPM2 enrollment of {device} (PCRs {format_pcrs(pcrs)}{', PIN' if with_pin else ''})")
    if 0 in pcrs:
        plan.notes.append(PCR0_WARNING)
    op = Tpm2Enrollment(plan, str(device), pcrs, with_pin, current, stale)

    if not replace:
        if same:
            token = current or same[0]
            step = plan.add(
                Step(
                    "enroll",
                    f"seal a keyslot to PCRs {format_pcrs(pcrs)}",
                    status="already-done",
                    detail=f"token {token.id} (keyslot {', '.join(map(str, token.keyslots))}) already does",
                )
            )
            if current is None:
                step.detail += (
                    "; but its PCR policy no longer matches the current PCR values: run "
                    "`yktool luks enroll-tpm2 --replace` to re-seal"
                )
            op.new_token = token.id
            return op
        if tpm2_tokens:
            other = tpm2_tokens[0]
            raise Refused(
                f"{device} already has a TPM2 token ({other.summary}, token {other.id})",
                "use --replace to re-seal with the new settings (the old one is removed only "
                "after the new one is proven to open the volume)",
            )

    before_tokens = set(header.tokens)
    step_enroll = Step(
        "enroll",
        f"seal a new keyslot to PCRs {format_pcrs(pcrs)} of the TPM at {tcti}" + (" with a PIN" if with_pin else ""),
        touches=[str(device), f"TPM {tcti}"],
        verify="read the header back: one new systemd-tpm2 token with these PCRs",
    )
    if current is not None:
        step_enroll.status = "already-done"
        step_enroll.detail = f"token {current.id} already seals to the current PCR values"
        op.new_token = current.id
    else:

        def enroll() -> None:
            if op.unlock is None:
                raise UsageError("no passphrase to unlock the volume with", "give the current passphrase")
            if with_pin and not op.pin:
                raise UsageError("no TPM2 PIN given", "type the new PIN when asked, or give it with --pin-stdin")
            cryptenroll.require_unlock(host, device, op.unlock)
            cryptenroll.enroll_tpm2(host, device, tcti, pcrs, op.unlock, op.pin if with_pin else None)

        def find_new() -> None:
            after = read_header(host, device)
            new = [
                t
                for t in after.tokens_of_type("systemd-tpm2")
                if t.id not in before_tokens and isinstance(t, Tpm2Token) and sorted(t.pcrs) == pcrs
            ]
            if len(new) != 1:
                raise ToolFailed(
                    "systemd-cryptenroll reported success but no new TPM2 token is in the header",
                    "check `systemd-cryptenroll DEVICE`",
                )
            op.new_token = new[0].id

        step_enroll.action = enroll
        step_enroll.prove = find_new
    plan.add(step_enroll)

    def prove_opens() -> None:
        if op.new_token is None:
            raise ToolFailed("no TPM2 token to test", "this is a bug in yktool")
        header_now = read_header(host, device)
        ctx = UnlockContext(host, device, header_now, tcti, pin_for=lambda _t: op.pin)
        op.proof = test_tokens(ctx, [op.new_token])
        if op.proof[0].ok:
            return
        message = op.proof[0].message
        token = header_now.tokens.get(op.new_token)
        if step_enroll.status == "done" and token is not None:
            # This run added it and it does not open: take it out again, so a failed run leaves
            # the header as it found it (and a re-run does not report a broken token as enrolled).
            check_remaining(see_pending(host, header_now), token.keyslots)
            cryptenroll.wipe_slots(host, device, token.keyslots)
            op.new_token = None
            raise ToolFailed(
                f"the new TPM2 token does not open {device} ({message}); it was removed again",
                "nothing else changed: check the TPM (`yktool tpm status`) and run again",
            )
        raise ToolFailed(
            f"the TPM2 token {op.new_token} does not open {device}: {message}",
            "the old enrollment was left in place; check `yktool luks test-unlock`",
        )

    plan.add(
        Step(
            "prove",
            "test-unlock the new token through systemd's own token plugin (nothing activated)",
            touches=[f"TPM {tcti}"],
            verify="libcryptsetup crypt_activate_by_token_pin returns its keyslot",
            action=prove_opens,
        )
    )
    if replace and stale:
        old_slots = sorted({s for t in stale for s in t.keyslots})

        def wipe_old() -> None:
            now = read_header(host, device)
            present = [s for s in old_slots if s in now.keyslots]
            check_remaining(see_pending(host, now), present)
            cryptenroll.wipe_slots(host, device, present)

        plan.add(
            Step(
                "wipe-old",
                f"remove the old TPM2 enrollment (token {', '.join(str(t.id) for t in stale)}, "
                f"keyslot {', '.join(map(str, old_slots))})",
                touches=[str(device)],
                verify="read the header back: only the new TPM2 token remains",
                action=wipe_old,
            )
        )
    return op
