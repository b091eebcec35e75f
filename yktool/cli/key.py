"""`yktool key …`: find, inspect and PIN-manage FIDO2 keys (real or simulated).

PINs never come from argv: they are typed (no echo; a new PIN twice) or read from stdin with
`--pin-stdin`, one line per PIN. Touch prompts go to stderr.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

import click

from yktool.cli.context import AppContext, pass_app, read_only
from yktool.cli.output import emit, info, warn
from yktool.errors import PinAuthBlocked, Refused, UsageError

if TYPE_CHECKING:
    from yktool.cli.prompts import CliInteraction
    from yktool.fido.session import KeySession


def _read_pin(prompt: str, *, from_stdin: bool, new: bool = False) -> str:
    from yktool.cli.prompts import read_pin

    return read_pin(prompt, from_stdin=from_stdin, new=new)


@contextmanager
def _session(app: AppContext, interaction: CliInteraction | None = None) -> Iterator[KeySession]:
    from yktool.cli.prompts import CliInteraction
    from yktool.fido.session import open_session

    with open_session(app.key_spec, interaction or CliInteraction()) as session:
        try:
            yield session
        except PinAuthBlocked as err:
            if _is_sim(session):
                err.hint += f"; for the software key: yktool --device {_spec(app, session)} key replug"
            raise


def _is_sim(session: KeySession) -> bool:
    from yktool.fido.facts import is_software_key

    return is_software_key(session.device)


def _spec(app: AppContext, session: KeySession) -> str:
    from yktool.fido.facts import device_spec

    return device_spec(session.device, app.device)


@click.group("key")
def key() -> None:
    """Find, inspect and PIN-manage FIDO2 keys (real or simulated).

    Pick the key with the global --device (auto, hid:/dev/hidrawN, sim:PATH):
    `yktool --device sim:/tmp/k.json key info`.

    \b
    Examples:
      yktool key list
      yktool --device sim:/tmp/k.json key info
      yktool key pin change
    """


@read_only
@key.command("list", short_help="List the FIDO2 keys present.")
@pass_app
def list_cmd(app: AppContext) -> None:
    """List the FIDO2 keys present (and the software key named by --device sim:PATH).

    \b
    Examples:
      yktool key list
      yktool key list --json
    """
    from yktool.fido.facts import list_present_keys

    facts, problems = list_present_keys(app.device)
    for problem in problems:
        warn(f"a key could not be read: {problem}")
    if app.json:
        emit(True, {"keys": [f.to_json() for f in facts], "problems": problems}, "")
        return
    if not facts:
        info("no FIDO2 key found; plug one in, or use --device sim:PATH to rehearse with the software key")
        return
    lines = []
    for f in facts:
        extra = " (software key)" if f.software else ""
        if f.is_yubikey and f.yubikey and f.yubikey.serial is not None:
            extra += f" serial {f.yubikey.serial}"
        pin = "PIN set" if f.pin_set else "no PIN"
        lines.append(f"{f.device}  {f.product}{extra}  AAGUID {f.aaguid}  {pin}")
    click.echo("\n".join(lines))


@read_only
@key.command("info", short_help="What the key is: AAGUID, versions, PIN state.")
@pass_app
def info_cmd(app: AppContext) -> None:
    """Show what the key is: product, AAGUID, CTAP versions, extensions, algorithms, options,
    PIN state and retries, and for a YubiKey its serial, firmware and form factor.

    \b
    Examples:
      yktool key info
      yktool --device /dev/hidraw2 key info --json
      yktool --device 12345678 key info
    """
    from yktool.fido.facts import read_key_facts

    with _session(app) as session:
        facts = read_key_facts(session, app.device)
    emit(app.json, facts.to_json(), facts.render())


@key.group("pin", short_help="Set, change or check the PIN.")
def pin() -> None:
    """Set, change or check the key's PIN (never given on the command line).

    \b
    Examples:
      yktool key pin set
      yktool key pin verify
    """


_pin_stdin = click.option(
    "--pin-stdin", is_flag=True, help="Read the PIN(s) from stdin, one line each (change: old, then new)."
)


@pin.command("set")
@_pin_stdin
@pass_app
def pin_set(app: AppContext, pin_stdin: bool) -> None:
    """Set the first PIN of a key that has none (at least 4 characters, at most 63 bytes).

    \b
    Examples:
      yktool key pin set
      yktool key pin set --pin-stdin < new-pin.txt
    """
    from yktool.fido.session import check_new_pin

    with _session(app) as session:
        if session.pin_is_set:
            raise Refused("the key already has a PIN", "change it instead: yktool key pin change")
        new = _read_pin("New PIN", from_stdin=pin_stdin, new=True)
        check_new_pin(new, session.min_pin_length)
        session.set_pin(new)
        retries = session.pin_retries()
    emit(app.json, {"ok": True, "pin_set": True, "pin_retries": retries}, "PIN set.")


@pin.command("change")
@_pin_stdin
@pass_app
def pin_change(app: AppContext, pin_stdin: bool) -> None:
    """Change the PIN: the current one, then the new one (typed twice on a terminal).

    \b
    Examples:
      yktool key pin change
      yktool key pin change --pin-stdin < old-and-new-pin.txt
    """
    from yktool.fido.session import check_entered_pin, check_new_pin

    with _session(app) as session:
        if not session.pin_is_set:
            raise UsageError("the key has no PIN yet", "set one: yktool key pin set")
        old = _read_pin("Current PIN", from_stdin=pin_stdin)
        new = _read_pin("New PIN", from_stdin=pin_stdin, new=True)
        check_entered_pin(old)
        check_new_pin(new, session.min_pin_length)
        session.change_pin(old, new)
        retries = session.pin_retries()
    emit(app.json, {"ok": True, "pin_retries": retries}, "PIN changed.")


@read_only
@pin.command("verify")
@_pin_stdin
@pass_app
def pin_verify(app: AppContext, pin_stdin: bool) -> None:
    """Check a PIN against the key. A wrong PIN costs one of the key's retries (exit 6);
    3 wrong in a row need the key re-inserted (exit 7); the 8th blocks it for good (exit 8).

    \b
    Examples:
      yktool key pin verify
      yktool --device sim:/tmp/k.json key pin verify --pin-stdin < pin.txt
    """
    with _session(app) as session:
        if not session.pin_is_set:
            raise UsageError("the key has no PIN", "set one first: yktool key pin set")
        value = _read_pin("PIN", from_stdin=pin_stdin)
        session.verify_pin(value)
        retries = session.pin_retries()
    emit(app.json, {"ok": True, "pin_retries": retries}, f"PIN is correct ({retries} attempts left).")


@read_only  # the software key's own state file only
@key.command("replug", short_help="Software key: pull it out and back in.")
@pass_app
def replug(app: AppContext) -> None:
    """Software key only: stand for pulling it out and plugging it back in (clears the
    3-wrong-PINs block, opens the reset window).

    \b
    Examples:
      yktool --device sim:/tmp/k.json key replug
    """
    from yktool.fido.devices import replug as replug_sim
    from yktool.fido.devices import resolve_spec

    spec = resolve_spec(app.device)
    if not spec.startswith("sim:"):
        raise Refused(
            f"`key replug` only works on the software key (--device sim:PATH), not {spec}",
            "pull the real key out and plug it back in by hand",
        )
    replug_sim(spec)
    emit(
        app.json,
        {"ok": True, "replugged": True},
        "Software key re-plugged: PIN entry is open again and a reset is possible for a few seconds.",
    )


RESET_WARNING = (
    "A reset wipes EVERY credential on this key and its PIN: disk unlock (LUKS FIDO2), sudo and "
    "login (pam_u2f), SSH security keys and git signing made with it stop working for good."
)


@key.command("reset", short_help="Factory reset (wipes every credential).")
@click.option(
    "--force",
    is_flag=True,
    help="Reset even when the key is someone's last way in (the only pam_u2f credential where PAM "
    "requires one, the only safe unlock of a LUKS volume, a user's only SSH key); the key's "
    "registry name must be typed (on a terminal) or given with --confirm.",
)
@click.option(
    "--confirm",
    "confirm",
    multiple=True,
    metavar="NAME",
    help="With --force and --yes (or no terminal): the key's registry name, typed out (`reset` "
    "for a key the registry does not know).",
)
@pass_app
def reset(app: AppContext, force: bool, confirm: tuple[str, ...]) -> None:
    """Factory-reset the key: wipes every credential on it and its PIN (asks first unless --yes).

    First, what the key opens on this host (--root) is found from the registry and silent probes
    (no touch, no PIN): a reset that would leave a user without any pam_u2f credential (where
    PAM requires pam_u2f), a LUKS volume without a safe way in, or a user without any SSH key
    is refused (exit 4) before anything happens, unless --force with the key's name typed.
    Real keys accept a reset only within seconds of being plugged in, and want a touch.

    \b
    Examples:
      yktool --device hid:/dev/hidraw2 key reset
      yktool --yes --device hid:/dev/hidraw2 key reset --force --confirm old-nano
    """
    import sys

    from yktool.cli.force import confirm_forced
    from yktool.cli.prompts import CliInteraction
    from yktool.lastway import held_by, losses

    interaction = CliInteraction()
    with _session(app, interaction) as session:
        spec = _spec(app, session)
        held = held_by(app.host, session)
        lost = losses(app.host, held.removal)
        label = f"{spec} ({', '.join(held.names)})" if held.names else spec
        words = held.names or ["reset"]
        if lost and not force:
            raise Refused(
                f"resetting {label} would lock out: {'; '.join(x.message for x in lost)}; nothing was done",
                f"{lost[0].hint}; or reset anyway, knowing who loses what: --force --confirm {words[0]}",
            )
        if app.dry_run:
            emit(
                app.json,
                {
                    "ok": True,
                    "dry_run": True,
                    "would_reset": spec,
                    "names": held.names,
                    "would_lock_out": [x.to_json() for x in lost],
                },
                f"Would reset {label}. {RESET_WARNING}" + "".join(f"\nFORCED: {x.message}" for x in lost),
            )
            return
        if lost:
            confirm_forced(lost, words, confirm, yes=app.yes or app.json)
        elif not app.yes:
            if not sys.stdin.isatty():
                raise Refused(
                    f"resetting {spec} needs confirmation. {RESET_WARNING}",
                    "run on a terminal to be asked, or pass --yes (before `key`)",
                )
            info(RESET_WARNING)
            if not click.confirm(f"Reset {label}?", default=False, err=True):
                raise Refused("reset not confirmed; the key is unchanged", "nothing was done")
        session.reset()
    emit(
        app.json,
        {"ok": True, "reset": spec, "names": held.names, "locked_out": [x.to_json() for x in lost]},
        f"{spec} was reset: no PIN, no credentials. Enroll it again where it was used."
        + "".join(f"\nlost: {x.message}" for x in lost),
    )


EMULATE_EXAMPLES = """\b
Examples (as root, with the uhid module loaded: modprobe uhid):
  yktool key emulate --device sim:/root/rehearsal-key.json
  yktool --json key emulate --device sim:k.json --touch auto --control /run/k.sock
  echo approve | socat - UNIX-CONNECT:/run/k.sock   # touch the key from a script
\b
Then use /dev/hidrawN like a real key: fido2-token -L, a browser, ssh-keygen -t ed25519-sk,
systemd-cryptenroll --fido2-device=auto, yktool --device auto key info. Stop with Ctrl-C or
SIGTERM: the key is unplugged (udev sees `remove`). See docs/software-key.md.
"""


@read_only  # runs until stopped and changes no file of the root: it must not hold the lock
@key.command(
    "emulate", short_help="Plug the software key in as a USB-HID FIDO2 device (uhid).", epilog=EMULATE_EXAMPLES
)
@click.option(
    "--device",
    "device_spec",
    metavar="sim:PATH",
    default=None,
    help="The software key to plug in (default: the global --device / YKTOOL_DEVICE).",
)
@click.option(
    "--touch",
    type=click.Choice(["auto", "deny", "timeout", "ask"]),
    default=None,
    help="How touch requests are answered: auto (at once), deny, timeout (nobody touches), "
    "ask (press Enter). Default: ask on a terminal, else auto.",
)
@click.option(
    "--touch-timeout",
    type=click.FloatRange(min=0.1),
    default=30.0,
    show_default=True,
    metavar="SECONDS",
    help="How long a touch request waits (ask, timeout) before it times out.",
)
@click.option(
    "--control",
    "control_path",
    type=click.Path(dir_okay=False),
    default=None,
    metavar="PATH",
    help="Serve the control socket here (approve, deny, status, policy, unplug; see docs).",
)
@click.option("--uhid", "uhid_path", default="/dev/uhid", envvar="YKTOOL_UHID", show_default=True, hidden=True)
@pass_app
def emulate(
    app: AppContext,
    device_spec: str | None,
    touch: str | None,
    touch_timeout: float,
    control_path: str | None,
    uhid_path: str,
) -> None:
    """Present the software key (--device sim:PATH) as a USB-HID FIDO2 key through /dev/uhid,
    until stopped: vendor/product 1209:0001, "yktool software key", HID serial = the key's serial.

    Prints the /dev/hidrawN path on stdout as soon as the device exists (with --json one JSON
    object: hidraw, serial, vendor_id, product_id, control). Needs root and the uhid module.
    """
    from yktool.cli.emulate import run_emulator

    run_emulator(app, device_spec, touch, touch_timeout, control_path, uhid_path)
