"""`yktool usbguard …`: USBGuard allow rules for a key."""

from __future__ import annotations

from dataclasses import replace

import click

from yktool import usbguard as lib
from yktool.cli.context import AppContext, pass_app
from yktool.cli.output import emit, warn
from yktool.cli.udev import key_options, resolve_key


@click.group("usbguard")
def usbguard() -> None:
    """USBGuard allow rules for a key.

    \b
    Examples:
      yktool usbguard allow
    """


@usbguard.command("allow")
@key_options
@click.option(
    "--interface",
    "interfaces",
    multiple=True,
    metavar="CC:SS:PP",
    help="USB interface class:subclass:protocol (repeatable; default the key's, FIDO HID 03:00:00).",
)
@click.option(
    "--rules-file", default="/etc/usbguard/rules.conf", show_default=True, help="The USBGuard rules file under --root."
)
@click.option("--nixos", is_flag=True, help="Print the modules.hardware.usbguard.rules line instead of writing.")
@pass_app
def allow(
    app: AppContext,
    nickname: str,
    vendor: str | None,
    product: str | None,
    serial: str | None,
    name: str | None,
    interfaces: tuple[str, ...],
    rules_file: str,
    nixos: bool,
) -> None:
    """Allow this key through USBGuard: `allow id VVVV:PPPP serial "…" name "…" with-interface …`.

    Appends the rule to the rules file (mode 0600) unless a rule for the same id and serial is
    there already; warns when the file is still a placeholder (then everything else not plugged
    in at boot stays blocked, which may not be what you want). --nixos prints the line for
    `modules.hardware.usbguard.rules` instead.

    \b
    Examples:
      yktool usbguard allow
      yktool usbguard allow --nixos
      yktool --dry-run usbguard allow --vendor 1050 --product 0407 --serial 12345678
    """
    key = resolve_key(app, vendor, product, serial, name, interfaces)
    if not interfaces and key.vendor != "1209":
        # a real key: USBGuard matches its whole interface set, so read it from the plugged-in device
        found = lib.usb_interfaces(key.vendor, key.product, key.serial)
        if found:
            key = replace(key, interfaces=found)
        else:
            warn(
                f"{key.usb_id} is not plugged in here, so its USB interfaces are unknown: the rule says "
                f"with-interface {' '.join(key.interfaces)}, which matches only a key with exactly that interface; "
                "give every interface with --interface (see `usbguard list-devices`)"
            )
    if nixos:
        text = lib.nixos_line(key, nickname)
        if not app.dry_run:
            lib.record_for_nixos(app.host, key, nickname)  # `yktool nixos module` renders every key's rule from it
        emit(
            app.json,
            {"nix": text, "rule": lib.rule_line(key)},
            text + "\n# every key's rules in one module: yktool nixos module",
        )
        return
    if app.dry_run:
        emit(
            app.json,
            {"dry_run": True, "path": rules_file, "rule": lib.rule_line(key)},
            f"would append to {rules_file}:\n{lib.rule_line(key)}",
        )
        return
    result = lib.allow_and_record(app.host, key, nickname, rules_file)
    if result.placeholder:
        warn(
            f"{rules_file} was a placeholder ({result.placeholder}): populate it with every trusted device "
            "(usbguard generate-policy) before relying on implicitPolicyTarget = block"
        )
    status = f"added to {rules_file}" if result.added else f"already allowed in {rules_file}"
    hint = ("\n" + lib.restart_hint(result)) if result.added and app.host.is_live else ""
    emit(
        app.json,
        {"path": result.path, "rule": result.line, "added": result.added, "placeholder": result.placeholder},
        f"{status}:\n{result.line}{hint}",
    )
