"""`yktool luks …`: LUKS2 status, TPM2 and recovery-key enrollment, test-unlock, wipe.

Secrets (the existing passphrase, a TPM2 PIN) are read from the terminal without echo, or one
line each from stdin when it is not a terminal, in this order: passphrase (unless
--unlock-key-file), then PIN. They go to systemd on in-memory files, never on argv.
"""

from __future__ import annotations

import contextlib
import os
import sys
from typing import TYPE_CHECKING, TextIO

import click

from yktool.cli.context import AppContext, pass_app, read_only
from yktool.cli.output import emit, emit_json, info, show_plan, warn
from yktool.errors import CheckFailed, NoDevice, PinInvalid, Refused, UsageError, YktoolError
from yktool.luks.tokens import Token
from yktool.plan import Plan, Step

if TYPE_CHECKING:
    from yktool.fido.session import KeySession
    from yktool.luks.fido2 import TokenOwner
    from yktool.luks.header import LuksHeader

# Each command imports what does the work: yktool.luks.* (Host, subprocess, the TPM) and
# python-fido2 (yktool.cli.prompts, yktool.fido.session, yktool.luks.fido2) load only for the
# command that uses them, never with the group (tests/test_host_secrets.py holds it to that).

PCR_HELP = (
    "PCRs to seal to, joined by + (default 0+7). PCR 0 is the firmware: it changes with every "
    "firmware update, after which the TPM refuses until you re-seal (--replace)."
)
# the existing passphrase for every command that adds a keyslot (read by `_read_unlock`)
UNLOCK_KEY_FILE = click.option(
    "--unlock-key-file",
    type=str,
    default=None,
    metavar="FILE",
    help="Read the existing passphrase from FILE (inside --root; used byte for byte).",
)


@click.group("luks")
def luks() -> None:
    """LUKS2 status, TPM2/FIDO2/recovery enrollment, test-unlock, wipe.

    \b
    Examples:
      yktool luks status /dev/nvme0n1p2
      yktool luks enroll-fido2 /dev/nvme0n1p2
    """


# ------------------------------------------------------------------------------------ helpers
def _path(app: AppContext, path: str) -> str:
    """On the live system a relative path means the current folder; under --root, the root."""
    return os.path.abspath(path) if app.host.is_live else path


def _read_unlock(app: AppContext, device: str, key_file: str | None) -> bytes:
    from yktool.cli.prompts import read_secret

    if key_file is not None:
        return app.host.read_bytes(_path(app, key_file))
    return read_secret(f"Current passphrase (or recovery key) of {device}")


def _run_plan(app: AppContext, plan: Plan) -> None:
    def on_step(step: Step) -> None:
        if not app.json:
            mark = {"done": "done", "already-done": "already done", "failed": "FAILED"}.get(step.status, step.status)
            info(f"  [{mark}] {step.description}" + (f" — {step.detail}" if step.detail else ""))

    plan.apply(on_step)


def _confirm(app: AppContext, question: str) -> None:
    from yktool.cli.prompts import is_interactive

    if app.yes:
        return
    if not is_interactive():
        raise Refused(f"{question} needs confirmation", "pass --yes (before the command) to confirm")
    if not click.confirm(question, default=False, err=True):
        raise Refused("not confirmed; nothing changed", "run again and answer yes")


# ------------------------------------------------------------------------------------- status
@read_only
@luks.command("status")
@click.argument("device")
@pass_app
def status(app: AppContext, device: str) -> None:
    """Show DEVICE's LUKS version, keyslots (KDF and cost) and tokens, and which token owns a slot.

    Unknown token types are shown as they are. Reads only.

    \b
    Examples:
      yktool luks status /dev/nvme0n1p2
      yktool --root /mnt luks status /var/lib/images/root.img --json
    """
    from yktool.luks.cryptenroll import orphan_tokens
    from yktool.luks.pending import read_header_seeing_pending

    # slots an interrupted enrollment left are shown for what they are, not as passphrases
    header = read_header_seeing_pending(app.host, _path(app, device))
    label = f", label {header.label}" if header.label else ""
    lines = [f"{device}: LUKS{header.version}, UUID {header.uuid}{label}"]
    lines.append("  keyslots:")
    for _, slot in sorted(header.keyslots.items()):
        owner = f" <- token {', '.join(map(str, slot.tokens))}" if slot.tokens else ""
        lines.append(f"    {slot.id:>2}  {slot.role:<10} {slot.kdf:<9} {slot.cost}{owner}")
    owners = _fido2_owners(app, header)
    lines.append("  tokens:" if header.tokens else "  tokens: none")
    for _, token in sorted(header.tokens.items()):
        slots = ", ".join(map(str, token.keyslots)) or "none"
        text = token.summary if token.role else f"{token.type} (unknown type) {token.raw}"
        lines.append(f"    {token.id:>2}  {text} -> keyslot {slots}")
        if token.id in owners:
            lines.append(f"        key: {owners[token.id].text}")
    if not header.knowledge_slots and header.usable_slots:
        lines.append("  warning: no passphrase or recovery key: only hardware can open this volume")
    from yktool.luks.fido2 import pending_enrollment

    pending = pending_enrollment(app.host, header.uuid)
    if pending is not None:
        lines.append(
            f"  warning: a FIDO2 enrollment was interrupted (keyslot {pending.get('keyslot')}); "
            f"run `yktool luks enroll-fido2 {device}` again to finish or undo it"
        )
    orphans = orphan_tokens(header)
    if orphans:
        lines.append(
            f"  warning: token {', '.join(map(str, orphans))} points at no keyslot (an interrupted wipe); "
            f"`yktool luks wipe {device}` (naming no slot) removes it"
        )
    unseen = header.slots_with_role("unseen-recovery")
    if unseen:
        lines.append(
            f"  warning: keyslot {', '.join(map(str, unseen))} holds a recovery key nobody was shown (an "
            f"interrupted add-recovery): it is no way in; `yktool luks add-recovery {device}` replaces it"
        )
    data = header.to_json()
    data["orphan_tokens"] = orphans
    data["unseen_recovery"] = unseen
    data["fido2_owners"] = {str(k): v.to_json() for k, v in sorted(owners.items())}
    data["pending_fido2"] = pending
    emit(app.json, data, "\n".join(lines))


def _fido2_owners(app: AppContext, header: LuksHeader) -> dict[int, TokenOwner]:
    """Registry owner of each FIDO2 token, plus a silent probe by the key at --device if one is there."""
    if not header.tokens_of_type("systemd-fido2"):
        return {}
    from yktool.fido.session import open_session
    from yktool.luks.fido2 import token_owners

    try:
        with open_session(app.key_spec) as session:
            return token_owners(
                app.host, header, session, session_name=None if app.device == "auto" else f"the key at {app.device}"
            )
    except YktoolError:
        # no key plugged in (or several): the registry alone has to answer
        return token_owners(app.host, header, None)


# -------------------------------------------------------------------------------- enroll-tpm2
@luks.command("enroll-tpm2")
@click.argument("device")
@click.option("--pcrs", default=None, metavar="N+M", help=PCR_HELP)
@click.option("--with-pin", is_flag=True, help="Also require a PIN at boot (asked twice, or one stdin line).")
@UNLOCK_KEY_FILE
@click.option(
    "--replace",
    is_flag=True,
    help="Re-seal after a firmware/Secure Boot change: enroll anew, prove it opens, then remove the old.",
)
@click.option("--allow-unmeasured", is_flag=True, help="Enroll even when the PCRs are all zero (no measured boot).")
@pass_app
def enroll_tpm2(
    app: AppContext,
    device: str,
    pcrs: str | None,
    with_pin: bool,
    unlock_key_file: str | None,
    replace: bool,
    allow_unmeasured: bool,
) -> None:
    """Seal a keyslot of DEVICE to the TPM (--tpm) and PCRs 0+7 with systemd-cryptenroll.

    The new token is proven to open the volume (test-unlock) before anything old is removed.
    Running it again with the same PCRs does nothing. Refused when PCR 7 is all zero (no
    measured boot) unless --allow-unmeasured.

    PCR 0 measures the firmware: after a firmware update the TPM no longer unseals. Keep the
    recovery key, and run `enroll-tpm2 --replace` after the update.

    \b
    Examples:
      yktool luks enroll-tpm2 /dev/nvme0n1p2
      yktool luks enroll-tpm2 /dev/nvme0n1p2 --with-pin
      yktool luks enroll-tpm2 /dev/nvme0n1p2 --replace   (after a firmware update)
      yktool --dry-run luks enroll-tpm2 disk.img --pcrs 7 --unlock-key-file /root/disk.key
    """
    from yktool.luks.tpm2 import plan_enroll_tpm2
    from yktool.tpm import parse_pcrs, parse_tcti

    selection = parse_pcrs(pcrs) if pcrs is not None else None
    tcti = parse_tcti(app.tpm)
    op = plan_enroll_tpm2(
        app.host,
        _path(app, device),
        tcti,
        selection,
        with_pin=with_pin,
        replace=replace,
        allow_unmeasured=allow_unmeasured,
    )
    if app.json:  # the rendered plan carries the notes otherwise
        for note in op.plan.notes:
            warn(note)
    if app.dry_run:
        show_plan(op.plan, app.json)
        return
    if not app.json:
        info(op.plan.render())
    # On stdin the lines come in a fixed order (passphrase, then PIN), also when no keyslot is added
    # and the passphrase goes unused: otherwise its line would be taken for the PIN.
    if op.needs_unlock or (op.needs_pin and unlock_key_file is None and not sys.stdin.isatty()):
        op.unlock = _read_unlock(app, device, unlock_key_file)
    if op.needs_pin:
        from yktool.cli.prompts import read_secret

        op.pin = read_secret("TPM2 PIN" if not op.needs_unlock else "New TPM2 PIN", confirm=True)
        if not op.pin:
            raise UsageError("the TPM2 PIN is empty", "choose a PIN of at least 4 characters")
    _run_plan(app, op.plan)
    summary = {
        "ok": True,
        "device": device,
        "pcrs": op.pcrs,
        "pin": with_pin,
        "token": op.new_token,
        "changed": op.plan.changed,
        "plan": op.plan.to_json(),
        "proof": [r.to_json() for r in op.proof],
    }
    text = (
        f"{device}: TPM2 token {op.new_token} seals to PCRs {'+'.join(map(str, op.pcrs))}"
        + (" and opens the volume" if op.proof and op.proof[0].ok else "")
        + ("" if op.plan.changed else " (nothing changed)")
    )
    emit(app.json, summary, text)


# ------------------------------------------------------------------------------- add-recovery
def _terminal(key_to_stderr: bool) -> TextIO | None:
    """Where the recovery key may be shown: the terminal only (or stderr when asked)."""
    if key_to_stderr or sys.stderr.isatty():
        return sys.stderr
    try:
        return open("/dev/tty", "w")  # closed by the caller
    except OSError:
        return None


@luks.command("add-recovery")
@click.argument("device")
@UNLOCK_KEY_FILE
@click.option("--replace", is_flag=True, help="Make a new recovery key, prove it, then remove the old one.")
@click.option(
    "--key-to-stderr",
    is_flag=True,
    help="Write the key to stderr even when it is not a terminal (for a script that stores it).",
)
@pass_app
def add_recovery(app: AppContext, device: str, unlock_key_file: str | None, replace: bool, key_to_stderr: bool) -> None:
    """Add a systemd recovery key to DEVICE and show it once, on the terminal only.

    The key is never written to stdout, --json, a log or a file. Without a terminal the command
    refuses (nothing changed) unless --key-to-stderr. Idempotent: an existing recovery key is
    reported (use --replace for a new one).

    \b
    Examples:
      yktool luks add-recovery /dev/nvme0n1p2
      yktool luks add-recovery /dev/nvme0n1p2 --replace
    """
    from yktool.luks.recovery import plan_add_recovery

    op = plan_add_recovery(app.host, _path(app, device), replace=replace)
    if app.dry_run:
        show_plan(op.plan, app.json)
        return
    out = None
    if op.needs_unlock:
        out = _terminal(key_to_stderr)
        if out is None:
            raise Refused("no terminal to show the recovery key on", "run on a terminal, or pass --key-to-stderr")
        op.unlock = _read_unlock(app, device, unlock_key_file)
        terminal = out

        def show(key: bytes) -> None:
            # shown once proven, before an old key is removed; the journal goes right after
            terminal.write(
                f"\nRecovery key for {device} (shown once; write it down or put it in a password "
                f"manager now):\n\n    {key.decode()}\n\n"
            )
            terminal.flush()

        op.show = show
    try:
        _run_plan(app, op.plan)
    finally:
        op.key = None
        if out is not None and out is not sys.stderr:
            out.close()
    summary = {"ok": True, "device": device, "slot": op.new_slot, "changed": op.plan.changed, "plan": op.plan.to_json()}
    healed = (
        f" (removed keyslot {', '.join(map(str, op.unseen))}: an interrupted run's key nobody saw)" if op.unseen else ""
    )
    text = (
        f"{device}: recovery key in keyslot {op.new_slot}, proven to open it{healed}"
        if op.new_slot is not None
        else f"{device}: already has a recovery key{healed or ' (nothing changed)'}"
    )
    emit(app.json, summary, text)


# ---------------------------------------------------------------------------------------- wipe
@luks.command("wipe")
@click.argument("device")
@click.option("--slot", "slots", type=int, multiple=True, help="Keyslot number to remove (repeatable).")
@click.option(
    "--type",
    "wipe_type",
    type=click.Choice(["password", "recovery", "tpm2", "fido2", "pkcs11"]),
    default=None,
    help="Remove every keyslot of this kind.",
)
@click.option(
    "--allow-hardware-only",
    is_flag=True,
    help="Allow removing the last passphrase/recovery slot while TPM2/FIDO2 slots remain.",
)
@pass_app
def wipe(
    app: AppContext, device: str, slots: tuple[int, ...], wipe_type: str | None, allow_hardware_only: bool
) -> None:
    """Remove keyslots (and their tokens) from DEVICE, never the last way in.

    Refused (exit 4, header untouched) when nothing would be left, or when only hardware-bound
    slots (TPM2, FIDO2) would be left, unless --allow-hardware-only. Asks first unless --yes.
    Keyslots go before their tokens; a token an interrupted wipe left pointing at nothing (and the
    registry's record of a gone slot) is removed by the next wipe, or by `wipe DEVICE` alone.

    \b
    Examples:
      yktool --dry-run luks wipe /dev/nvme0n1p2 --slot 3
      yktool luks wipe /dev/nvme0n1p2 --type password
    """
    from yktool.luks.wipe import plan_wipe

    plan, _header, chosen = plan_wipe(
        app.host,
        _path(app, device),
        slots=list(slots) if slots else None,
        wipe_type=wipe_type,
        allow_hardware_only=allow_hardware_only,
    )
    if app.dry_run:
        show_plan(plan, app.json)
        return
    if chosen:
        _confirm(app, f"Remove keyslot {', '.join(map(str, chosen))} from {device}?")
    _run_plan(app, plan)
    emit(
        app.json,
        {"ok": True, "device": device, "wiped": chosen, "plan": plan.to_json()},
        f"{device}: removed keyslot {', '.join(map(str, chosen))}" if chosen else f"{device}: nothing to wipe",
    )


# --------------------------------------------------------------------------------- test-unlock
def _fido2_session(
    app: AppContext, header: LuksHeader, stack: contextlib.ExitStack, pin_stdin: bool
) -> KeySession | None:
    """A KeySession on the key at --device when the volume has FIDO2 tokens (None without a key)."""
    if not header.tokens_of_type("systemd-fido2"):
        return None
    import yktool.luks.fido2  # noqa: F401 - registers the systemd-fido2 tester
    from yktool.cli.prompts import CliInteraction
    from yktool.fido.session import open_session

    try:
        return stack.enter_context(open_session(app.key_spec, CliInteraction(pin_from_stdin=pin_stdin)))
    except NoDevice:
        if app.device != "auto":
            raise
        return None


@read_only
@luks.command("test-unlock")
@click.argument("device")
@click.option("--token", "tokens", type=int, multiple=True, help="Only this token (repeatable).")
@click.option("--pin-stdin", is_flag=True, help="Read the PIN of PIN-protected tokens from stdin (one line each).")
@pass_app
def test_unlock(app: AppContext, device: str, tokens: tuple[int, ...], pin_stdin: bool) -> None:
    """Prove each token of DEVICE still opens it, without activating anything.

    Uses libcryptsetup's own token plugins. For TPM2 tokens it says "opens", "PCR policy no
    longer matches (firmware or Secure Boot changed?)" or "PIN wrong". Run it before a firmware
    update; after one, `enroll-tpm2 --replace`. FIDO2 tokens are tested with the key at --device
    (one touch when the token wants presence, its PIN when it wants one): the key derives the
    passphrase, cryptsetup --test-passphrase proves it. Tokens of other keys are "not tested".
    Exit 1 when a token fails, 6 when only PINs were wrong.

    \b
    Examples:
      yktool luks test-unlock /dev/nvme0n1p2
      yktool luks test-unlock /dev/nvme0n1p2 --token 1 --pin-stdin
    """
    from yktool.luks.header import read_header
    from yktool.luks.unlock import PIN_WRONG, UnlockContext, test_tokens
    from yktool.tpm import parse_tcti

    header = read_header(app.host, _path(app, device))
    tcti = parse_tcti(app.tpm)

    def pin_for(token: Token) -> bytes | None:
        from yktool.cli.prompts import read_secret

        return read_secret(f"PIN for token {token.id} ({token.summary})", from_stdin=pin_stdin)

    with contextlib.ExitStack() as stack:
        session = _fido2_session(app, header, stack, pin_stdin)
        ctx = UnlockContext(app.host, _path(app, device), header, tcti, pin_for=pin_for, fido_device=session)
        results = test_tokens(ctx, list(tokens) if tokens else None)
    failed = [r for r in results if r.failed]
    if app.json:
        emit_json({"ok": not failed, "device": device, "tokens": [r.to_json() for r in results]})
    else:
        if not results:
            click.echo(f"{device}: no tokens to test")
        for r in results:
            click.echo(f"token {r.token_id} ({r.token_type}, keyslot {', '.join(map(str, r.keyslots))}): {r.message}")
            for hint in r.hints:
                click.echo(f"    hint: {hint}")
    if failed:
        if all(r.status == PIN_WRONG for r in failed):
            err = PinInvalid(None, f"{device}: wrong PIN for token {', '.join(str(r.token_id) for r in failed)}")
            if all(r.token_type == "systemd-tpm2" for r in failed):  # noqa: S105 - a token type
                # the FIDO2 key's retry rules do not apply: the TPM counts failures itself
                err.hint = (
                    "check the PIN and try again; every wrong PIN counts towards the TPM's dictionary-attack lockout"
                )
            raise err
        if all(r.token_type == "systemd-fido2" for r in failed):  # noqa: S105 - a token type
            hint = (
                "see the lines above; a key that no longer opens its slot can be enrolled again "
                f"(`yktool luks wipe {device} --slot N`, then `yktool luks enroll-fido2 {device}`)"
            )
        else:
            hint = (
                "see the lines above; after a firmware or Secure Boot change run "
                "`yktool luks enroll-tpm2 --replace` (unlock with the recovery key)"
            )
        raise CheckFailed(f"{device}: {len(failed)} of {len(results)} token(s) do not open the volume", hint)


# ------------------------------------------------------------------------------- enroll-fido2
@luks.command("enroll-fido2")
@click.argument("device")
@click.option(
    "--with-pin/--no-pin",
    "with_pin",
    default=None,
    help="Require the key's PIN at unlock (default: yes when the key has a PIN, as systemd).",
)
@click.option("--with-up/--no-up", "with_up", default=True, show_default=True, help="Require a touch at unlock.")
@click.option("--with-uv", is_flag=True, help="Require built-in user verification (a fingerprint key).")
@click.option(
    "--algorithm",
    type=click.Choice(["es256", "eddsa"]),
    default="es256",
    show_default=True,
    help="Credential algorithm (es256 is systemd's default and works on every key).",
)
@click.option(
    "--backend",
    type=click.Choice(["systemd", "native"]),
    default=None,
    help="native (default): yktool talks to the key and cryptsetup itself; systemd: run "
    "systemd-cryptenroll (USB keys only; its PIN tokens do not open on CTAP 2.1 keys, "
    "systemd#31443, and are refused by the proof). Same token either way.",
)
@UNLOCK_KEY_FILE
@click.option(
    "--nickname",
    default=None,
    help="Name of the key in the registry (default: the name it has, else primary / backup-N).",
)
@click.option("--pin-stdin", is_flag=True, help="Read the key's PIN from one stdin line (after the passphrase).")
@pass_app
def enroll_fido2(
    app: AppContext,
    device: str,
    with_pin: bool | None,
    with_up: bool,
    with_uv: bool,
    algorithm: str,
    backend: str | None,
    unlock_key_file: str | None,
    nickname: str | None,
    pin_stdin: bool,
) -> None:
    """Add a keyslot to DEVICE that the FIDO2 key at --device opens (systemd-fido2 token).

    The token is exactly what systemd 252 writes, so systemd-cryptsetup unlocks with it at boot.
    A second key (a backup) gets its own keyslot; the first stays. A key already enrolled is
    reported, never enrolled twice. The existing passphrase is asked (no echo), read from stdin,
    or from --unlock-key-file; the key's PIN is asked after it. An enrollment killed half-way is
    finished (or its orphan keyslot removed) by running the same command again.

    \b
    Examples:
      yktool luks enroll-fido2 /dev/nvme0n1p2
      yktool --device /dev/hidraw3 luks enroll-fido2 /dev/nvme0n1p2 --nickname backup
      yktool luks enroll-fido2 disk.img --no-pin --unlock-key-file /root/disk.key
    """
    from yktool.luks.fido2 import Fido2Options, plan_enroll_fido2

    spec = app.key_spec
    options = Fido2Options(pin=with_pin, up=with_up, uv=with_uv, algorithm=algorithm, nickname=nickname)
    op = plan_enroll_fido2(app.host, _path(app, device), spec, options, backend=backend)
    if app.dry_run:
        if app.json:
            emit_json({**op.plan.to_json(), "backend": op.backend, "command": op.command})
        else:
            show_plan(op.plan, False)
        return
    if not app.json:
        info(op.plan.render())
    from yktool.cli.prompts import CliInteraction
    from yktool.fido.session import open_session

    if op.needs_unlock:
        op.unlock = _read_unlock(app, device, unlock_key_file)
    with open_session(spec, CliInteraction(pin_from_stdin=pin_stdin)) as session:
        op.session = session
        _run_plan(app, op.plan)
        op.session = None
    summary = {"ok": True, **op.summary()}
    if op.already:
        text = f"{device}: key '{op.nickname}' already enrolled (token {op.new_token}, keyslot {op.new_slot})" + (
            f"; {op.resumed}" if op.resumed else "; nothing changed"
        )
    else:
        text = (
            f"{device}: key '{op.nickname}' enrolled in keyslot {op.new_slot} (token {op.new_token}), "
            "proven to open the volume"
        )
        if op.resumed:
            text += f" ({op.resumed})"
    emit(app.json, summary, text)
