"""`yktool commission` and `yktool replace`: the wizards. Thin: ask (or take flags), call
yktool.flows, render. Every question has a flag; with --yes (or no terminal) the defaults apply.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from yktool.checks import Result
from yktool.cli.context import AppContext, pass_app
from yktool.cli.force import confirm_forced, confirm_option, force_option
from yktool.cli.output import emit_json, info, instruct, show_plan
from yktool.cli.verify import split_fix
from yktool.errors import Refused, UsageError
from yktool.flows import validate
from yktool.flows.ask import Asker
from yktool.flows.ending import FlowReport
from yktool.flows.runner import Outcome
from yktool.flows.state import FlowState
from yktool.host import Host
from yktool.inventory import Registry
from yktool.pam.host_facts import default_origin
from yktool.plan import Plan
from yktool.ssh.accounts import default_user
from yktool.tpm import parse_pcrs

if TYPE_CHECKING:
    from yktool.fido.session import KeySession
    from yktool.flows.keys import SessionOpener
    from yktool.flows.replace import Found

# yktool.cli.prompts, yktool.fido.session and the commission/replace/keys flows load
# python-fido2 (and pyrage): each command imports them, so `yktool commission --help` does without.


def _split(values: tuple[str, ...]) -> list[str]:
    return [v.strip() for raw in values for v in raw.replace(",", " ").split() if v.strip()]


def _opener(app: AppContext, pin_stdin: bool) -> SessionOpener:
    """(role, spec) -> a session context, with one CliInteraction per key (the PIN asked once)."""
    from yktool.cli.prompts import CliInteraction, choose_device
    from yktool.fido.session import open_session

    interactions: dict[str, CliInteraction] = {}

    @contextlib.contextmanager
    def open_key(role: str, spec: str | None) -> Iterator[KeySession]:
        interaction = interactions.setdefault(role, CliInteraction(pin_from_stdin=pin_stdin))
        device = choose_device(spec or (app.device if role == "primary" else "auto"))
        with open_session(device, interaction) as session:
            yield session

    return open_key


def _swap_keys(asker: Any, app: AppContext, role: str, instruction: str) -> None:
    """Tell the person to swap keys and wait until they have (also with --yes: `auto` must not
    open the key still in the port); where keys cannot be listed, wait for a key press instead."""
    from yktool.fido.swap import SwapWait

    wait = SwapWait.begin()  # the keys in before the person acts on the instruction
    instruct(instruction)
    if wait is None:
        asker.pause("Press any key when it is in…", yes=app.yes)
        return
    wait.until_swapped(role, on_removed=lambda: info(f"key removed; waiting for the {role} key…"))


def _read_unlock(device: str) -> bytes:
    """A LUKS volume's current passphrase (or recovery key), asked when no key file is given."""
    from yktool.cli.prompts import read_secret

    return read_secret(f"Current passphrase (or recovery key) of {device}")


def _step_printer(app: AppContext, total: int | None = None) -> Callable[[Outcome], None]:
    """Each step's outcome on stderr as it ends, as "step 4/17" (nothing with --json: the report
    has them)."""
    seen = [0]

    def on_step(out: Outcome) -> None:
        seen[0] += 1
        if not app.json and out.status == "done":  # the summary said how many were done already
            mark = "done" if out.status == "done" else "already done"
            where = f"step {seen[0]}/{total}" if total else f"step {seen[0]}"
            info(f"{where} {mark}: {out.description}" + (f": {out.detail}" if out.detail else ""))

    return on_step


def recovery_file_text(existing: str, device: str, root: Path, key: str) -> str:
    """The recovery-key file with `device`'s key (re)placed and every other device's kept: with
    several LUKS devices one file holds each one's key, and a key replaced by a resumed run does
    not linger next to the new one."""
    head = f"# yktool recovery key for {device} on {root}: keep it offline, it opens the disk"
    lines = existing.splitlines()
    kept: list[str] = []
    skip = False
    for line in lines:
        if line.startswith("# yktool recovery key for "):
            skip = line == head
        if not skip:
            kept.append(line)
    return "".join(f"{line}\n" for line in [*kept, head, key])


def _show_recovery_factory(
    app: AppContext, recovery_file: Path | None, interactive: bool
) -> Callable[[str, bytes], str]:
    def show(device: str, key: bytes) -> str:
        if recovery_file is not None:
            path = recovery_file.absolute()
            existing = path.read_text() if path.is_file() else ""
            text = recovery_file_text(existing, device, app.host.root, key.decode())
            Host(Path("/")).write_file(str(path), text, 0o600, backup=False)
            return f"written to {recovery_file} (mode 0600): move it offline"
        # the terminal only: never stdout (it may be --json for a script) and never a log
        bar = "=" * 64
        click.echo(
            f"\n{bar}\nRECOVERY KEY for {device} — shown once, write it down now:\n\n    "
            f"{key.decode()}\n\nIt opens the disk when the TPM and every key fail.\n{bar}\n",
            err=True,
        )
        if interactive:
            click.pause("Press any key once it is written down…", err=True)
            click.echo("\x1b[2J\x1b[H", err=True, nl=False)  # clear it from the screen
        return "shown once on the terminal"

    return show


@click.command("commission")
@click.option(
    "--kind",
    type=click.Choice(["linux", "nixos"]),
    default=None,
    help="Host kind (default: nixos when the root has /etc/NIXOS).",
)
@click.option("--user", "-u", default=None, help="The person's login name on this host.")
@click.option(
    "--luks-device",
    "luks_devices",
    multiple=True,
    metavar="DEV",
    help="LUKS2 device or image (inside --root) to enroll; repeatable. None: no LUKS steps.",
)
@click.option(
    "--steps",
    "steps",
    multiple=True,
    metavar="S,S",
    help="Which steps (default all): luks-fido2 luks-tpm2 recovery ssh git pam udev usbguard verify.",
)
@click.option("--git-email", default=None, help="Committer email for git signing (allowed_signers principal).")
@click.option("--pam-origin", default=None, help="pam_u2f origin (default pam://HOSTNAME of the root).")
@click.option(
    "--age-host-key",
    default=None,
    metavar="PATH.pub",
    help="NixOS: the host's ssh-ed25519 public key inside the root (agenix recipient).",
)
@click.option(
    "--age-file",
    default=None,
    metavar="PATH",
    help="NixOS: where the age-encrypted pam_u2f authfile goes (your flake's secrets/).",
)
@click.option(
    "--age-identity",
    default=None,
    metavar="PATH",
    help="NixOS: a private key (local path) to read an existing age file, so its lines are kept "
    "(default: the host key's private half inside the root, if there).",
)
@click.option("--primary-nickname", default=None, help="Registry name of the first key (default primary).")
@click.option("--backup-nickname", default=None, help="Registry name of the backup key (default backup).")
@click.option("--no-backup", is_flag=True, help="Enroll one key only (not recommended: a lost key locks you out).")
@click.option("--primary-device", default=None, help="The first key (default: the global --device).")
@click.option("--backup-device", default=None, help="The backup key (default: asks you to swap keys, then auto).")
@click.option(
    "--unlock-key-file",
    default=None,
    metavar="FILE",
    help="The LUKS volume's current passphrase, in FILE inside --root (else asked once).",
)
@click.option("--pcrs", default=None, metavar="N+M", help="PCRs for the TPM2 seal (default 0+7).")
@click.option("--allow-unmeasured", is_flag=True, help="Seal to the TPM even when PCRs are all zero.")
@click.option(
    "--recovery-key-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the recovery key to this file (mode 0600) instead of showing it on the terminal.",
)
@click.option("--new-pin-stdin", is_flag=True, help="A key without a PIN gets one read from a stdin line.")
@click.option("--pin-stdin", is_flag=True, help="Read each key's PIN from a stdin line.")
@click.option(
    "--verify-only",
    multiple=True,
    metavar="SEL",
    help="The verify checks to run at the end (default: those for the steps done).",
)
@click.option(
    "--details",
    is_flag=True,
    help="Show the full plan (every step, what it changes, how it is proven), not only the one-screen summary.",
)
@pass_app
def commission(
    app: AppContext,
    kind: str | None,
    user: str | None,
    luks_devices: tuple[str, ...],
    steps: tuple[str, ...],
    git_email: str | None,
    pam_origin: str | None,
    age_host_key: str | None,
    age_file: str | None,
    age_identity: str | None,
    primary_nickname: str | None,
    backup_nickname: str | None,
    no_backup: bool,
    primary_device: str | None,
    backup_device: str | None,
    unlock_key_file: str | None,
    pcrs: str | None,
    allow_unmeasured: bool,
    recovery_key_file: Path | None,
    new_pin_stdin: bool,
    pin_stdin: bool,
    verify_only: tuple[str, ...],
    details: bool,
) -> None:
    """New-host wizard: enroll the key and a backup key everywhere, then prove it with verify.

    Shows the whole plan first (--dry-run stops there, --json prints it), asks to go ahead
    (--yes skips), then: TPM2 seal (PCRs 0+7) and a recovery key per LUKS device; for each key
    its PIN, LUKS2 FIDO2, an ed25519-sk SSH key + authorized_keys, git signing, the pam_u2f
    credential (age-encrypted on NixOS), the removal-lock udev rule and the USBGuard rule; then
    `yktool verify` on what was enrolled. The PIN is typed once per key. Interrupted (Ctrl-C, a
    pulled key, a crash)? Run the same command again: it resumes where it stopped. Run a finished
    commission again: nothing changes. Touches and PIN prompts are counted and printed.

    \b
    Examples:
      yktool commission
      yktool --dry-run commission --user alice --luks-device /dev/nvme0n1p2
      yktool --yes commission --user alice --luks-device /dev/vda2 \\
          --git-email alice@example.org --pin-stdin < pins.txt
      yktool --root /mnt commission --kind nixos --steps ssh,pam,verify
    """
    from yktool.cli.prompts import read_new_pin
    from yktool.fido.session import check_new_pin
    from yktool.flows import commission as commission_flow
    from yktool.flows.keys import ring

    host = app.host
    asker = Asker.for_terminal(app.yes or app.json)  # --json is for scripts: flags answer
    # An unfinished run on disk: resume it with its answers (a flag given now overrides its own
    # answer only), or start over. Without a terminal it resumes, as it always did.
    state = FlowState.load(host, commission_flow.FLOW)
    saved = commission_flow.saved_answers(state)
    resume_chosen = False
    if saved is not None and asker.interactive:
        resume_chosen = (
            asker.select(
                commission_flow.resume_question(state, host),
                None,
                ["resume", "start over"],
                flag="--yes",
                default="resume",
            )
            == "resume"
        )
        saved = saved if resume_chosen else None
    s = saved
    if s is not None:
        kind = kind or s.host_kind
        user = user or s.user
        luks_devices = luks_devices or tuple(s.luks_devices)
        steps = steps or tuple(s.steps)
        git_email = git_email or s.git_email or None
        pam_origin = pam_origin or s.pam_origin or None
        age_host_key = age_host_key or s.age_host_key or None
        age_file = age_file or s.age_file or None
        age_identity = age_identity or s.age_identity or None
        primary_nickname = primary_nickname or s.primary_nickname
        no_backup = no_backup or not s.backup_nickname
        backup_nickname = backup_nickname or s.backup_nickname or None
        pcrs = pcrs or "+".join(map(str, s.pcrs))
        unlock_key_file = unlock_key_file or s.unlock_key_file or None
        verify_only = verify_only or tuple(s.verify_only)

    kind = asker.select(
        "Host kind?",
        kind,
        commission_flow.HOST_KINDS,
        flag="--kind",
        default="nixos" if host.exists("/etc/NIXOS") else "linux",
    )
    user = asker.text(
        "Whose host is it (login name)?", user, flag="--user", default=default_user(), check=validate.user(host)
    )
    inside = "" if str(host.root) == "/" else f" inside {host.root}"
    devices = (
        list(luks_devices)
        if luks_devices or s is not None
        else _split(
            (
                asker.text(
                    f"LUKS2 device(s) to enroll, as the root sees them{inside} (space-separated; empty for none)?",
                    None,
                    flag="--luks-device",
                    default="",
                    check=validate.luks_devices(host),
                ),
            )
        )
    )
    # without a LUKS device the LUKS steps are not offered (named by --steps, answers.check explains)
    choices = [
        c for c in commission_flow.STEP_KINDS if devices or steps or c not in ("luks-fido2", "luks-tpm2", "recovery")
    ]
    chosen = asker.checkbox("Which steps?", _split(steps) or None, choices, flag="--steps")
    email = ""
    if "git" in chosen:
        email = asker.text("Email for git signing?", git_email, flag="--git-email", check=validate.email)
    origin = ""
    if "pam" in chosen:
        origin = asker.text(
            "pam_u2f origin (keep it stable: renaming the host must not break keys)?",
            pam_origin,
            flag="--pam-origin",
            default=default_origin(host),
        )
    host_key = agefile = ""
    if kind == "nixos" and "pam" in chosen:
        host_key = asker.text(
            f"The host's SSH public key (agenix recipient), as the root sees it{inside}?",
            age_host_key,
            flag="--age-host-key",
            default="/etc/ssh/ssh_host_ed25519_key.pub",
            check=validate.root_file(host),
        )
        agefile = asker.text(
            "Where does the age-encrypted authfile go (your flake's secrets/)?",
            age_file,
            flag="--age-file",
            default="secrets/yubikey-auth.age",
        )
        agefile = str(Path(agefile).absolute())
    primary = asker.text(
        "Nickname of the first key?",
        primary_nickname,
        flag="--primary-nickname",
        default="primary",
        check=validate.nickname(),
    )
    backup = (
        ""
        if no_backup
        else asker.text(
            "Nickname of the backup key?",
            backup_nickname,
            flag="--backup-nickname",
            default="backup",
            check=validate.nickname(primary),
        )
    )
    answers = commission_flow.CommissionAnswers(
        host_kind=kind,
        user=user,
        luks_devices=devices,
        steps=chosen,
        git_email=email,
        pam_origin=origin,
        age_host_key=host_key,
        age_file=agefile,
        age_identity=str(Path(age_identity).absolute()) if age_identity else "",
        primary_nickname=primary,
        backup_nickname=backup,
        pcrs=list(parse_pcrs(pcrs)) if pcrs else [0, 7],
        unlock_key_file=unlock_key_file or "",
        verify_only=_split(verify_only),
    )

    def new_pin(role: str) -> str:
        prompt = f"New PIN for the {role} key ({answers.nickname(role)}; it has none yet)"
        return read_new_pin(prompt, from_stdin=new_pin_stdin, check=check_new_pin)

    swap_device = {"primary": primary_device or app.device, "backup": backup_device}

    def on_swap(role: str) -> None:
        spec = swap_device.get(role) or "auto"
        if spec != "auto":  # named by --backup-device: it is in already (or a software key)
            info(f"Now the {role} key ({answers.nickname(role)}): {spec}")
            return
        _swap_keys(asker, app, role, f"Now remove the other key and insert your {role} key ({answers.nickname(role)}).")

    show_recovery = _show_recovery_factory(app, recovery_key_file, asker.interactive)
    io = commission_flow.CommissionIO(
        new_pin, _read_unlock, show_recovery, tcti=app.tpm, allow_unmeasured=allow_unmeasured
    )
    nicknames = {"primary": primary, "backup": backup}
    # other answers than the unfinished run's (a flag, or "start over"): every step is checked again
    restart = (
        state.resuming
        and answers.to_json() != state.answers
        or (state.resuming and not resume_chosen and asker.interactive)
    )
    with ring(
        host, _opener(app, pin_stdin), dict(swap_device), nicknames, on_swap, _wrong_pin_handler(asker, pin_stdin)
    ) as keys:
        flow, flow_steps, plan = commission_flow.prepare(host, answers, keys, io, restart=restart)
        if app.dry_run:
            if not app.json:
                info("\n".join(commission_flow.summary(flow, flow_steps)))
            show_plan(plan, app.json)
            return
        todo = commission_flow.pending(flow, flow_steps)
        if not app.json:
            _show_summary(
                asker,
                commission_flow.summary(flow, flow_steps),
                plan.render(),
                todo=bool(todo),
                details=details,
                resumed=resume_chosen and not restart,
            )
        if any(s.id.startswith("recovery") for s in todo) and recovery_key_file is None and not sys.stderr.isatty():
            raise UsageError(
                "the recovery key is shown once on the terminal, and there is none",
                "pass --recovery-key-file PATH (it is written there with mode 0600)",
            )
        # "resume" was the go-ahead: a resumed run asks nothing that was answered already
        if todo and not (resume_chosen and not restart) and not asker.confirm("Go ahead?", yes=app.yes):
            raise Refused("not confirmed; nothing changed", "run again and answer yes (or pass --yes)")
        report = commission_flow.execute(flow, flow_steps, _step_printer(app, len(flow_steps)))
    _render_report(app, report, plan, commission_flow.next_steps(flow, report))
    if not report.verify_ok:
        sys.exit(1)


def _show_summary(
    asker: Asker, summary: list[str], full_plan: str, *, todo: bool, details: bool, resumed: bool
) -> None:
    """The one-screen summary on stderr; the full plan with --details, or when the person asks
    (nothing left to do: the summary says so, and no plan is offered)."""
    info("\n".join(summary))
    if not todo:
        return
    if details or (
        asker.interactive and not resumed and asker.confirm("Show the full plan?", yes=False, default=False)
    ):
        info(full_plan)


def _wrong_pin_handler(asker: Asker, pin_stdin: bool) -> Callable[[str, int | None], bool]:
    """A wrong PIN on a terminal: say how many attempts are left and ask again; from 3 left on,
    first say that the key will block, and go on only when the person says so."""

    def again(role: str, retries: int | None) -> bool:
        if not asker.interactive or pin_stdin:
            return False
        left = f"{retries} attempts left" if retries is not None else "attempts left unknown"
        info(f"wrong PIN for the {role} key ({left})")
        if retries is not None and retries <= 3:
            return bool(
                asker.confirm(
                    f"After {retries} more wrong PINs the key blocks its PIN for good (only a reset, "
                    "which wipes the key, makes it usable again). Try again?",
                    yes=False,
                    default=False,
                )
            )
        return True

    return again


def _render_counts(counts: dict[str, dict[str, int]]) -> str:
    parts = [
        f"{role}: {c['touches']} touch{'es' if c['touches'] != 1 else ''}, "
        f"{c['pin_prompts']} PIN entr{'ies' if c['pin_prompts'] != 1 else 'y'}"
        for role, c in counts.items()
    ]
    return "; ".join(parts) or "no key was needed"


def _render_report(
    app: AppContext,
    report: FlowReport,
    plan: Plan | None,
    next_steps: list[str] | None = None,
    flow: str = "commission",
    extra: dict[str, Any] | None = None,
) -> None:
    """The one ending (commission's and replace's, a yktool.flows.ending.FlowReport): verify on
    what this run owns, the other layers' results apart (they do not fail the run), the counts,
    and "Next steps" with exactly what is left for the person."""
    if app.json:
        data = report.to_json()
        for check in data.get("verify", []):  # each fix split as verify --json splits it
            check["fix_command"], check["fix_nixos"] = split_fix(check.get("fix", ""))
        if plan is not None:
            data["plan"] = plan.to_json()
        emit_json({**data, **(extra or {}), "next_steps": list(next_steps or [])})
        return
    for note in report.notes:
        click.echo(note)

    def show(results: list[Result]) -> None:
        for r in results:
            click.echo(f"  {r.status.upper():<4}  {r.id:<24} {r.title}")
            if r.status in ("fail", "warn") and r.reason:
                click.echo(f"        {r.reason}")
                if r.fix:
                    click.echo(f"        fix: {r.fix}")

    ours = [r for r in report.results if r.id in report.owned]
    if ours:
        click.echo("verify (what this run enrolled):")
        show(ours)
    if report.not_ours:
        click.echo("not part of this run (other layers: listed, they do not fail the run):")
        show(report.not_ours)
    click.echo(f"touches and PIN entries: {_render_counts(report.counts)}")
    if report.nothing_to_do:
        click.echo(f"{flow}: finished earlier; nothing left to do" + (" (verify ran again)" if report.results else ""))
    if next_steps:
        click.echo("Next steps (for you):")
        for n, item in enumerate(next_steps, 1):
            click.echo(f"  {n}. {item}")
    elif report.verify_ok:
        click.echo("Next steps: none. Every step of this run is done and proven.")


@click.command("replace")
@click.option(
    "--lost",
    "lost",
    multiple=True,
    metavar="NAME",
    help="The lost key's registry name (`yktool keys list`); repeatable or comma-separated. "
    "Only named keys are revoked. Without it the wizard asks (and without a terminal, refuses).",
)
@click.option(
    "--present",
    "present",
    multiple=True,
    metavar="SPEC",
    help="Another key you still have (besides the global --device); repeatable.",
)
@click.option(
    "--new-device",
    default=None,
    metavar="SPEC",
    help="The replacement key. Without it, replace only revokes (a key present must still work).",
)
@click.option("--new-nickname", default=None, help="Registry name of the replacement (default: LOST-2).")
@click.option(
    "--unlock-key-file",
    default=None,
    metavar="FILE",
    help="A LUKS volume's current passphrase or recovery key, in FILE inside --root (else asked).",
)
@click.option(
    "--luks-device",
    "luks_devices",
    multiple=True,
    metavar="DEV",
    help="Also look at this LUKS device (the registry's are always looked at); repeatable.",
)
@click.option("--new-pin-stdin", is_flag=True, help="A new key without a PIN gets one read from a stdin line.")
@click.option(
    "--pin-stdin",
    is_flag=True,
    help="Read each key's PIN from a stdin line: a kept key's first when it holds a verify-required "
    "SSH key (found only with its PIN), then the new key's.",
)
@click.option(
    "--age-host-key",
    "age_host_keys",
    multiple=True,
    metavar="PATH.pub",
    help="NixOS: a recipient of the agenix authfile, inside the root (default "
    "/etc/ssh/ssh_host_ed25519_key.pub); repeatable.",
)
@click.option(
    "--age-identity",
    default=None,
    metavar="PATH",
    help="NixOS: a private key (local path) that decrypts the agenix authfile (default: the host "
    "key's private half inside the root).",
)
@click.option(
    "--keep-old-signatures",
    is_flag=True,
    help="Do not list the lost key in gpg.ssh.revocationFile (its old commits keep verifying; "
    "a finder could back-date new ones).",
)
@click.option(
    "--details",
    is_flag=True,
    help="Show the full plan (every credential found, revoked or kept, "
    "every step and how it is proven), not only the one-screen summary.",
)
@force_option
@confirm_option
@pass_app
def replace(
    app: AppContext,
    lost: tuple[str, ...],
    present: tuple[str, ...],
    new_device: str | None,
    new_nickname: str | None,
    unlock_key_file: str | None,
    luks_devices: tuple[str, ...],
    new_pin_stdin: bool,
    pin_stdin: bool,
    age_host_keys: tuple[str, ...],
    age_identity: str | None,
    keep_old_signatures: bool,
    details: bool,
    force: bool,
    confirm: tuple[str, ...],
) -> None:
    """A key was lost: revoke it everywhere, enroll the replacement there, prove it first.

    Say which key was lost by its registry name (--lost NAME, several allowed; the wizard asks,
    listing `yktool keys list`). Only named keys are revoked: a key that is merely not plugged in
    (a spare in a safe) is kept, and the plan says so. Insert the keys you still have (--device,
    --present) and the new one (--new-device). Every enrolled credential (LUKS2 FIDO2 tokens,
    pam_u2f lines, SSH keys and so authorized_keys and allowed_signers) gets its owner from the
    registry and its user from the authfile line, and is probed silently — no touch, no PIN (a
    verify-required SSH key: the PIN) — against the keys present: a key named lost that answers
    is refused. The plan enrolls the new key where the lost one was (the same user's line and
    files) and proves it, then wipes the lost key's keyslots, drops its pam_u2f credentials,
    takes its SSH key out of authorized_keys, retires it in allowed_signers and git's
    revocation file, and removes its udev/USBGuard rules and registry entry.

    The whole plan is checked before anything changes: refused (exit 4) when no present key
    answers anything, when a LUKS volume would keep no safe way in, or when a user would be
    left without a pam_u2f credential (where PAM requires one) or without any SSH key. The last
    two can be forced: --force, then type the key's name (or --confirm NAME with --yes). Resumable.

    \b
    Examples:
      yktool replace --lost primary --new-device auto
      yktool --yes replace --lost primary --new-device hid:/dev/hidraw3 --unlock-key-file /root/pass
      yktool --dry-run replace --lost primary,old-nano          # the plan only
      yktool replace --lost primary --new-device auto --details  # the full plan before "Go ahead?"
      yktool --yes replace --lost primary --force --confirm primary   # revoke only, alice loses SSH
    """
    from yktool.cli.prompts import read_new_pin
    from yktool.fido.session import check_new_pin
    from yktool.flows import replace as replace_flow
    from yktool.flows.keys import ring

    host = app.host
    asker = Asker.for_terminal(app.yes or app.json)  # --json is for scripts: flags answer
    names = list(dict.fromkeys(_split(lost)))
    if not names and not asker.interactive:  # never guess which key is lost: refuse before any key is opened
        asker.pick("Which key was lost?", [], flag="--lost", listing=replace_flow.registry_listing(host))
    if names:
        replace_flow.check_names(host, names)
    specs: dict[str, str | None] = {}
    present_roles = []
    for n, spec in enumerate([app.device, *present], 1):
        role = f"present-{n}"
        specs[role] = spec
        present_roles.append(role)
    if new_device:
        specs["new"] = new_device

    def new_pin(role: str) -> str:
        return read_new_pin("New PIN for the new key (it has none yet)", from_stdin=new_pin_stdin, check=check_new_pin)

    def on_swap(role: str) -> None:
        if role == "new" and (specs.get(role) or "auto") == "auto":
            _swap_keys(asker, app, "new", "Now remove the other keys and insert the new key.")

    nicknames = {r: "" for r in present_roles}
    age = replace_flow.ReplaceAnswers(
        age_host_keys=list(age_host_keys), age_identity=str(Path(age_identity).absolute()) if age_identity else ""
    )
    with ring(host, _opener(app, pin_stdin), specs, nicknames, on_swap, _wrong_pin_handler(asker, pin_stdin)) as keys:
        found = replace_flow.find(
            host, keys, present_roles, bool(new_device), list(luks_devices), replace_flow.age_target_for(host, age)
        )
        replace_flow.check_safe(found)
        if not names:
            names = _ask_lost(asker, host, found)
        known = replace_flow.check_names(host, names)
        replace_flow.mark_lost(found, names)
        replace_flow.check_named_absent(found)
        lost_found = [f for f in found if f.lost]
        if not lost_found and not known:
            if not app.dry_run:
                replace_flow.settle(host)
            if not app.json:
                click.echo(f"{', '.join(names)}: already revoked (no longer in the registry): nothing is lost.")
            nothing = replace_flow.ReplaceReport([], [], keys.totals(), [], True, found=found)
            _render_report(app, nothing, None, [], "replace")
            return
        nick = new_nickname or f"{names[0]}-2"
        keys.nicknames["new"] = nick
        if new_device:
            replace_flow.check_new_nickname(host, names, nick)
            replace_flow.check_new_key(found, nick)
        answers = replace_flow.ReplaceAnswers(
            lost=names,
            new_nickname=nick,
            unlock_key_file=unlock_key_file or "",
            revoke_git=not keep_old_signatures,
            age_host_keys=age.age_host_keys,
            age_identity=age.age_identity,
        )
        io = replace_flow.ReplaceIO(new_pin, _read_unlock)
        flow, steps, plan = replace_flow.prepare(host, answers, keys, io, found, bool(new_device), force)
        full_plan = "\n".join([*_found_listing(names, found), plan.render()])
        if app.dry_run:
            if app.json:  # what was found, as the real run's report has it
                emit_json(
                    {
                        **plan.to_json(),
                        "lost": [f.to_json() for f in lost_found],
                        "kept": [f.to_json() for f in found if not f.lost],
                        "forced": [x.to_json() for x in flow.forced],
                    }
                )
            else:
                info("\n".join(replace_flow.summary(flow, steps)))
                click.echo(full_plan)  # the plan is what a dry run is for: stdout, as commission's
            return
        if not app.json:
            _show_summary(
                asker,
                replace_flow.summary(flow, steps),
                full_plan,
                todo=bool(replace_flow.pending(flow, steps)),
                details=details,
                resumed=False,
            )
        confirm_forced(flow.forced, names, confirm, yes=app.yes or app.json)
        if not asker.confirm("Go ahead?", yes=app.yes):
            raise Refused("not confirmed; nothing changed", "run again and answer yes (or pass --yes)")
        report = replace_flow.execute(flow, steps, _step_printer(app, len(steps)))
    if not app.json:
        click.echo(f"replaced {', '.join(names)}" + (f" with {nick}" if new_device else " (revoked)"))
    _render_report(
        app,
        report,
        plan,
        replace_flow.next_steps(flow, report),
        "replace",
        {"forced": [x.to_json() for x in flow.forced]},
    )


def _found_listing(names: list[str], found: list[Found]) -> list[str]:
    """The full plan's head: every credential found, revoked (a key named lost made it) or kept, and why."""
    lost_found = [f for f in found if f.lost]
    kept = [f for f in found if not f.lost]
    return [
        f"Lost ({', '.join(names)}), as named: revoked from",
        *(f"  - {f.describe()}  [{f.owner}]" for f in lost_found),
        *([] if lost_found else ["  - no credential on this host (the registry entry and its rules only)"]),
        f"Kept ({len(kept)} credentials):",
        *(f"  - {f.describe()}  [{f.owner}: {f.status()}]" for f in kept),
    ]


def _ask_lost(asker: Asker, host: Host, found: list[Found]) -> list[str]:
    """The wizard's question: which registered key was lost (each shown plugged in or not)."""
    from yktool.flows import replace as replace_flow

    here = {f.owner: f.answered_by for f in found if f.answered_by not in (None, "new")}
    choices = []
    for k in Registry.load(host).keys:
        kinds = ", ".join(dict.fromkeys(str(e.get("kind")) for e in k.enrollments)) or "no enrollments"
        where = f"plugged in ({here[k.nickname]})" if k.nickname in here else "not plugged in"
        choices.append((k.nickname, f"{k.nickname} — {kinds}; {where}"))
    picked: list[str] = asker.pick(
        "Which key was lost? (space to mark, enter to go on)",
        choices,
        flag="--lost",
        listing=replace_flow.registry_listing(host),
    )
    return picked
