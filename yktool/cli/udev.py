"""`yktool udev …`: the lock-on-removal udev rule for a key."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click

from yktool import udev as lib
from yktool.cli.context import AppContext, pass_app, read_only
from yktool.cli.output import emit, warn
from yktool.errors import NoDevice, PermissionDenied, YktoolError
from yktool.udev import KeyUsb, identity_from

F = Callable[..., Any]


def key_options(func: F) -> F:
    """--nickname and the --vendor/--product/--serial/--name overrides (shared with usbguard)."""
    opts = [
        click.option("--nickname", default="primary", show_default=True, help="Registry nickname of the key."),
        click.option("--vendor", default=None, help="USB vendor id (4 hex digits), instead of asking the key."),
        click.option("--product", default=None, help="USB product id (4 hex digits), instead of asking the key."),
        click.option("--serial", default=None, help="USB serial; give '' for a key that shows none on USB."),
        click.option("--name", default=None, help="USB product name (USBGuard matches it)."),
    ]
    for opt in reversed(opts):
        func = opt(func)
    return func


def resolve_key(
    app: AppContext,
    vendor: str | None,
    product: str | None,
    serial: str | None,
    name: str | None,
    interfaces: tuple[str, ...] = (),
) -> KeyUsb:
    """The key's USB identity: the flags when --vendor and --product are given, else the key's own."""
    if vendor and product:
        return KeyUsb(vendor, product, serial or "", name or "", interfaces or ("03:00:00",))
    try:
        # python-fido2 only when the key itself is asked
        from yktool.fido import open_device
        from yktool.fido.identity import usb_identity

        device = open_device(app.key_spec)
        ident = identity_from(usb_identity(device))
    except PermissionDenied:
        raise
    except YktoolError as exc:
        raise NoDevice(
            f"cannot read the key's USB identity: {exc.message}",
            "plug the key in (or --device sim:PATH), or give --vendor and --product",
        ) from None
    except (OSError, ValueError) as exc:
        raise NoDevice(
            f"cannot read the key's USB identity: {exc}", "give --vendor and --product (see `lsusb`)"
        ) from None
    return KeyUsb(
        vendor or ident.vendor,
        product or ident.product,
        ident.serial if serial is None else serial,
        ident.name if name is None else name,
        interfaces or ident.interfaces,
    )


@click.group("udev")
def udev() -> None:
    """The lock-on-removal udev rule for a key (locks every session through logind).

    \b
    Examples:
      yktool udev install
      yktool udev show
    """


@udev.command("install")
@key_options
@click.option("--nixos", is_flag=True, help="Print the NixOS module (services.udev.extraRules) instead of writing.")
@pass_app
def install(
    app: AppContext,
    nickname: str,
    vendor: str | None,
    product: str | None,
    serial: str | None,
    name: str | None,
    nixos: bool,
) -> None:
    """Install the rule that locks all sessions when this key is removed.

    Plain Linux: writes /etc/udev/rules.d/85-yktool-lock.rules and the lock program
    /usr/local/libexec/yktool-lock under --root, and reloads udev when the root is `/`. The rule
    matches this key's vendor/product (and serial, where the key shows one on USB) on
    ACTION=="remove"; the program waits 2 s (a key reset or mode switch re-enumerates) and then
    runs `loginctl lock-sessions`. Running again for the same nickname changes nothing.

    \b
    Examples:
      yktool udev install
      yktool udev install --nickname backup
      yktool udev install --nixos --vendor 1050 --product 0407 --serial 12345678
    """
    key = resolve_key(app, vendor, product, serial, name)
    if nixos:
        snippet = lib.nixos_snippet(key, nickname)
        if not app.dry_run:
            lib.record_for_nixos(app.host, key, nickname)
        emit(app.json, {"nix": snippet, "usb_id": key.usb_id, "serial": key.serial}, snippet.rstrip("\n"))
        return
    rule = lib.render_rule(key, nickname)
    if app.dry_run:
        emit(
            app.json,
            {"dry_run": True, "rule_path": lib.RULE_PATH, "program_path": lib.PROGRAM_PATH, "rule": rule},
            f"would write {lib.RULE_PATH} with:\n{rule}and the lock program {lib.PROGRAM_PATH}",
        )
        return
    result = lib.install_and_record(app.host, key, nickname)
    if not result.handlers:
        warn(
            "no screen locker found (hyprlock, swaylock, i3lock, a desktop's): the lock request reaches logind, "
            "but nothing will cover the screen; install one that listens to logind's Lock signal"
        )
    lines = [f"{'wrote' if p in result.changed else 'unchanged'} {p}" for p in (result.rule_path, result.program_path)]
    if result.reloaded:
        lines.append("udev rules reloaded")
    elif result.changed and not app.host.is_live:
        lines.append(f"root is {app.host.root}: reload udev on that system (udevadm control --reload)")
    lines.append(f"removing {key.usb_id}{' serial ' + key.serial if key.serial else ''} now locks all sessions")
    emit(
        app.json,
        {
            "rule_path": result.rule_path,
            "program_path": result.program_path,
            "changed": result.changed,
            "reloaded": result.reloaded,
            "lock_handlers": result.handlers,
            "rule": rule,
            "usb_id": key.usb_id,
            "serial": key.serial,
        },
        "\n".join(lines),
    )


@read_only
@udev.command("show")
@key_options
@pass_app
def show(
    app: AppContext, nickname: str, vendor: str | None, product: str | None, serial: str | None, name: str | None
) -> None:
    """Print the rule for this key without installing anything.

    \b
    Examples:
      yktool udev show
      yktool udev show --vendor 1050 --product 0407 --serial ''
    """
    key = resolve_key(app, vendor, product, serial, name)
    rule = lib.render_rule(key, nickname)
    emit(app.json, {"rule": rule, "usb_id": key.usb_id, "serial": key.serial}, rule.rstrip("\n"))
