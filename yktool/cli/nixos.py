"""`yktool nixos …`: the NixOS module a flake imports, made from the key registry."""

from __future__ import annotations

from pathlib import Path

import click

from yktool.cli.context import AppContext, pass_app
from yktool.cli.output import emit_json, info


@click.group("nixos")
def nixos() -> None:
    """The NixOS module (pam_u2f + agenix, udev lock, USBGuard, stage-1 unlock) for a flake.

    \b
    Examples:
      yktool nixos module --flake ~/nixos-config
    """


@nixos.command("module")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write the module here (default with --flake: next to the host's "
    "hardware-configuration.nix; without either: print it).",
)
@click.option(
    "--flake",
    "flake_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Your flake checkout: its USBGuard option, secrets folder, secrets.nix and LUKS names are read.",
)
@click.option("--home-manager", is_flag=True, help="Also print the Home Manager snippet (git SSH signing, ssh).")
@click.option(
    "--age-host-key",
    default="/etc/ssh/ssh_host_ed25519_key.pub",
    show_default=True,
    help="This host's key inside the root: the only agenix recipient of the authfile.",
)
@click.option(
    "--age-identity",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="A private key (local path) that decrypts the authfile (default: the host key's private half).",
)
@click.option(
    "--secrets-nix",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="The tree's agenix secrets.nix, when --flake finds several.",
)
@click.option(
    "--luks-name",
    "luks_names",
    multiple=True,
    metavar="UUID=NAME",
    help="The boot.initrd.luks.devices name of a LUKS2 volume your configuration uses (disko, a "
    "hand-written name), when no hardware-configuration.nix names it by UUID. Repeatable.",
)
@pass_app
def module(
    app: AppContext,
    out: Path | None,
    flake_dir: Path | None,
    home_manager: bool,
    age_host_key: str,
    age_identity: Path | None,
    secrets_nix: Path | None,
    luks_names: tuple[str, ...],
) -> None:
    """Write the one NixOS module for this host, rendered from the key registry every time.

    It holds security.pam.u2f (authfile = the agenix secret, origin pinned, cue) and u2fAuth for
    sudo, login, greetd and the screen locker found; age.secrets.<name>; one udev lock program
    and one rule per key; every key's USBGuard rule; the systemd stage-1 FIDO2/TPM2 unlock. A
    second key or a replacement rewrites it (never appends). With --flake the tree is read: its
    own USBGuard list option when it declares one, its secrets folder (the authfile is written
    there, encrypted to this host's key only), a diff for its secrets.nix, and the LUKS names of
    its hardware-configuration.nix.

    \b
    Examples:
      yktool nixos module
      yktool nixos module --flake ~/nixos-config --home-manager
      yktool --dry-run nixos module --flake ~/nixos-config
    """
    from yktool.nixos.generate import Request, generate

    req = Request(
        out=out,
        flake=flake_dir,
        home_manager=home_manager,
        host_key=age_host_key,
        age_identity=age_identity,
        secrets_nix=secrets_nix,
        dry_run=app.dry_run,
        luks_names=_luks_names(luks_names),
    )
    done = generate(app.host, req)
    if app.json:
        emit_json(done.to_json())
        return
    if done.out is None or app.dry_run:
        click.echo(done.text, nl=False)
        if app.dry_run and done.out is not None:
            info(f"dry run: would {'write' if done.changed else 'leave unchanged'} {done.out}; nothing written")
    else:
        info(
            f"{'wrote' if done.changed else 'unchanged:'} {done.out}; import it from the host's configuration "
            "(imports = [ ./yktool.nix ];), then `nixos-rebuild switch`"
        )
    if done.age is not None:
        age = done.age
        did = "would be written" if app.dry_run else "written"
        info(f"agenix authfile: {age.path}{f' ({did}, encrypted to this host key only)' if age.written else ''}")
        if age.diff:
            info(f"apply to {age.secrets_nix} (e.g. `patch -p1` in the flake):")
            click.echo(age.diff, nl=False, err=done.out is None or app.dry_run)
        elif age.secrets_nix is not None:
            info(f"{age.secrets_nix} already has the entry")
        else:
            info("secrets.nix entry (inside its attribute set):")
            click.echo(age.entry, err=done.out is None or app.dry_run)
    for user, text in done.home_manager.items():
        info(f"Home Manager for {user}:")
        click.echo(text, nl=False, err=done.out is None or app.dry_run)
    for note in done.notes:
        info(f"note: {note}")


def _luks_names(values: tuple[str, ...]) -> dict[str, str]:
    import re

    from yktool.errors import UsageError

    out: dict[str, str] = {}
    for value in values:
        uuid, sep, name = value.partition("=")
        if not sep or not re.fullmatch(r"[0-9a-fA-F-]{8,64}", uuid) or not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", name):
            raise UsageError(
                f"--luks-name {value!r} is not UUID=NAME",
                "give the LUKS2 UUID (yktool luks status) and the boot.initrd.luks.devices name, "
                "e.g. --luks-name 5896c26b-…=cryptroot",
            )
        out[uuid.lower()] = name
    return out
