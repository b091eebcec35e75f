"""`yktool pam …`: register pam_u2f credentials into authfiles (plain or age), check PAM."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from yktool.cli.context import AppContext, pass_app, read_only
from yktool.cli.output import emit, emit_json, info, printable, warn
from yktool.errors import CheckFailed, UsageError
from yktool.pam.authfile import CENTRAL_AUTHFILE, USER_AUTHFILE, options_string
from yktool.pam.check import check as pam_check
from yktool.pam.host_facts import check_origin, default_origin
from yktool.pam.register import RegisterRequest, Target, plain_target
from yktool.pam.register import register as pam_register


@click.group("pam")
def pam() -> None:
    """pam_u2f credentials and authfiles (plain or age-encrypted for agenix), and PAM checks.

    \b
    Examples:
      yktool pam register --user alice
      yktool pam check
    """


@pam.command("register")
@click.option("--user", "user", required=True, help="Login name the credential is for.")
@click.option("--origin", help="pam_u2f origin / RP id [default: pam://<hostname of the root>].")
@click.option(
    "--authfile",
    help="Plain authfile inside the root [default: /etc/u2f_mappings]; "
    "`~` means the user's own ~/.config/Yubico/u2f_keys.",
)
@click.option(
    "--age",
    "age_recipients",
    multiple=True,
    metavar="RECIPIENT",
    help="Encrypt the authfile for agenix to this ssh-ed25519 key or age1… recipient (repeatable).",
)
@click.option(
    "--age-host-key",
    "age_host_keys",
    multiple=True,
    metavar="PATH.pub",
    help="A host's ssh-ed25519 public key file inside the root, as age recipient (repeatable).",
)
@click.option(
    "--age-file",
    default="yubikey-auth.age",
    show_default=True,
    help="The age file to write (a path in your secrets checkout, not under --root).",
)
@click.option(
    "--age-identity",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key (ssh-ed25519 or age identity) to decrypt an existing age file, so its lines are kept.",
)
@click.option("--pin", "pin", is_flag=True, help="Options +pin: pam_u2f asks for the key's PIN.")
@click.option("--verification", is_flag=True, help="Options +verification (user verification).")
@click.option("--no-presence", is_flag=True, help="Drop +presence (no touch). Not recommended.")
@click.option("--resident", is_flag=True, help="Make a discoverable credential (key handle `*`).")
@click.option(
    "--algorithm",
    type=click.Choice(["es256", "eddsa"]),
    default="es256",
    show_default=True,
    help="eddsa needs pam-u2f 1.2.0+ on the target.",
)
@click.option("--nickname", help="Name of this key in the registry [default: primary / backup-N].")
@click.option(
    "--service",
    "services",
    multiple=True,
    help="PAM services for the printed NixOS lines [default: sudo login greetd hyprlock].",
)
@pass_app
def register(
    app: AppContext,
    user: str,
    origin: str | None,
    authfile: str | None,
    age_recipients: tuple[str, ...],
    age_host_keys: tuple[str, ...],
    age_file: str,
    age_identity: Path | None,
    pin: bool,
    verification: bool,
    no_presence: bool,
    resident: bool,
    algorithm: str,
    nickname: str | None,
    services: tuple[str, ...],
) -> None:
    """Make a pam_u2f credential for USER on the key, prove it, and merge it into the authfile.

    The origin is pinned (default pam://HOSTNAME of the target root) and pam_u2f must be set
    up with the same `origin=`. Before anything is written, the key signs a fresh challenge
    with that origin and the signature is checked against the public key about to be stored.
    One line per user; other lines are kept byte for byte. With --age/--age-host-key the whole
    authfile is encrypted for agenix and the secrets.nix / configuration lines are printed.

    \b
    Examples:
      yktool pam register --user alice
      yktool pam register --user alice --pin --origin pam://workstation
      yktool pam register --user alice --age-host-key /etc/ssh/ssh_host_ed25519_key.pub \\
          --age-file secrets/yubikey-auth.age
    """
    # lazy: agefile loads pyrage, prompts and the session fido2
    from yktool import agefile
    from yktool.cli.prompts import CliInteraction
    from yktool.fido.session import open_session

    host = app.host
    use_age = bool(age_recipients or age_host_keys)
    if use_age and authfile is not None:
        raise UsageError(
            "--authfile and --age/--age-host-key exclude each other", "pick a plain authfile or an age file"
        )
    if age_identity is not None and not use_age:
        raise UsageError(
            "--age-identity only goes with --age/--age-host-key", "add the recipients the age file is encrypted to"
        )
    origin = check_origin(origin) if origin else default_origin(host)
    if use_age:
        recipients = [agefile.parse_recipient(r, source="--age") for r in age_recipients]
        for key in age_host_keys:
            recipients += agefile.parse_recipients_text(host.read_text(key), source=key)
        identity = None
        if age_identity is not None:
            try:
                data = age_identity.read_bytes()
            except OSError as exc:
                raise UsageError(
                    f"--age-identity {age_identity}: cannot read ({exc.strerror})", "name a readable private key file"
                ) from None
            identity = agefile.parse_identities(data, source=str(age_identity))
        target = Target(age_file=Path(age_file).absolute(), recipients=recipients, identity=identity)
    else:
        target = plain_target(host, user, authfile or CENTRAL_AUTHFILE)
    request = RegisterRequest(
        user=user,
        origin=origin,
        target=target,
        presence=not no_presence,
        verification=verification,
        pin=pin,
        resident=resident,
        algorithm=algorithm,
        nickname=nickname,
        services=services or ("sudo", "login", "greetd", "hyprlock"),
        age_name=Path(age_file).name.removesuffix(".age") or "yubikey-auth",
    )
    where = target.authfile or str(target.age_file)
    if app.dry_run:
        plan = {
            "dry_run": True,
            "user": user,
            "origin": origin,
            "target": where,
            "options": options_string(presence=not no_presence, verification=verification, pin=pin),
            "algorithm": algorithm,
        }
        emit(
            app.json,
            plan,
            f"Would register a {algorithm} pam_u2f key for {user} with origin "
            f"{origin} into {where} (nothing done: --dry-run)",
        )
        return
    if not app.json:
        info(
            f"origin: {origin} — pam_u2f must be configured with the same origin= "
            "(the hostname default breaks every key when the host is renamed)"
        )
        info("Touch the key twice: once to make the credential, once to prove it.")
    interaction = CliInteraction()
    with open_session(app.key_spec, interaction) as session:
        result = pam_register(host, session, request)
    for w in result.warnings:
        warn(printable(w))
    if app.json:
        emit_json(result.to_json())
        return
    for note in result.notes:
        info(printable(note))
    if result.already_registered:
        click.echo(f"Already registered: this key is on {user}'s line; nothing changed.")
        return
    assert result.credential is not None  # noqa: S101
    click.echo(
        f"Registered a pam_u2f key for {user} ({result.nickname}, "
        f"{result.credential.cose_type}, {result.credential.options or 'no options'})"
    )
    click.echo(f"  origin:  {origin}  (pam_u2f must use origin={origin})")
    click.echo(
        f"  written: {result.written_to} (line {result.lineno}; {user} now has "
        f"{result.keys_for_user} key{'s' if result.keys_for_user != 1 else ''})"
    )
    click.echo(f"  proven:  an assertion with origin {origin} verified against the stored key")
    if result.pam_line:
        click.echo(f"  PAM line (e.g. /etc/pam.d/sudo): {result.pam_line}")
    for name, snippet in result.nix.items():
        click.echo(f"\n--- {name} ---\n{snippet}")
    if result.nix:
        click.echo(f"\n{result.written_to} holds the whole authfile, encrypted; commit it next to secrets.nix.")
        click.echo(
            "One NixOS module with every key (pam_u2f, udev lock, USBGuard, stage-1 unlock): "
            "yktool nixos module --flake DIR"
        )


@read_only
@pam.command("check")
@click.option(
    "--service",
    "services",
    multiple=True,
    help="Services to look at [default: every file under /etc/pam.d plus the usual ones].",
)
@click.option(
    "--age-file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also look into this agenix authfile (yubikey-auth.age; a local path).",
)
@click.option(
    "--age-identity",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Private key to decrypt --age-file (ssh-ed25519 or age identity).",
)
@pass_app
def check(app: AppContext, services: tuple[str, ...], age_file: Path | None, age_identity: Path | None) -> None:
    """Report which PAM services use pam_u2f (authfile, origin, cue) and the lockout traps.

    Traps: authfile missing or unreadable, nouserok/alwaysok, an authfile inside an encrypted
    home, no origin= (follows the hostname), a user with a single key, eddsa keys on an old
    pam-u2f, origins that differ from the registered keys'. Exits 1 when an error is found.

    \b
    Examples:
      yktool pam check
      yktool pam check --service sudo --json
      yktool pam check --age-file secrets/yubikey-auth.age --age-identity ~/.ssh/id_ed25519
    """
    age_texts: list[tuple[str, str]] = []
    if age_file is not None:
        from yktool import agefile  # lazy: it loads pyrage

        if age_identity is None:
            raise UsageError(
                "--age-file needs --age-identity to be read", "pass the private key of one of its recipients"
            )
        try:
            sealed, ident = age_file.read_bytes(), age_identity.read_bytes()
        except OSError as exc:
            raise UsageError(f"cannot read {exc.filename}: {exc.strerror}", "check the paths") from None
        plain = agefile.decrypt(sealed, agefile.parse_identities(ident, source=str(age_identity)), what=str(age_file))
        age_texts.append((str(age_file), plain.decode("utf-8", "surrogateescape")))
    report = pam_check(app.host, list(services) or None, age_texts)
    if app.json:
        emit_json(report.to_json())
    else:
        _say(f"pam-u2f on the target: {report.pam_version}")
        for s in report.services:
            for u in s.u2f_lines:
                o = u.options
                _say(
                    f"  {s.name:<12} {u.control:<10} authfile={o.authfile or '~/' + USER_AUTHFILE}"
                    f" origin={o.origin or '(hostname)'} cue={'yes' if o.cue else 'no'}"
                    f"{' nouserok' if o.nouserok else ''}  [{u.line.where}]"
                )
        for a in report.authfiles:
            keys = ", ".join(f"{u}: {n}" for u, n in a.users.items()) or "no users"
            _say(f"  authfile {a.path}: {keys}")
        for f in report.findings:
            svc = f" [{', '.join(f.services)}]" if f.services else ""
            _say(f"{f.severity.upper():<8} {f.message}{svc}")
            if f.hint:
                _say(f"         fix: {f.hint}")
        _say("OK: no lockout trap found" if report.ok else "FAILED: see the errors above")
    if not report.ok and app.json:
        # the report above is the JSON answer; a second (error) document would break parsers
        sys.exit(int(CheckFailed.exit_code))
    if not report.ok:
        errors = [f for f in report.findings if f.severity == "error"]
        raise CheckFailed(
            printable(f"pam check: {len(errors)} error(s): {errors[0].message}"), printable(errors[0].hint)
        )


def _say(line: str) -> None:
    """One line of the report: names and messages come from files (a service file's name, an
    authfile's user names), so control characters are shown escaped, never sent to the terminal."""
    click.echo(printable(line))
