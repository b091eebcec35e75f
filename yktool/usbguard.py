"""USBGuard allow rules for a key: render, append without duplicates, or print as NixOS.

Rule language (usbguard-rules.conf(5)): `allow id VVVV:PPPP serial "…" name "…" with-interface
{ CC:SS:PP … }`. A key is the same key when its id and serial match an existing rule's; then
nothing is appended. A rules file with no real rule (empty, comments only, or marked as a stub)
is a placeholder: with `implicitPolicyTarget = "block"` and such a file, every device but the
ones already plugged in at boot is blocked, which is how the hosts of the hardening checklist's
NixOS configuration (docs/verify.md) still are.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from yktool import nix
from yktool.errors import ToolFailed
from yktool.host import Host
from yktool.inventory import Registry
from yktool.udev import KeyUsb

RULES_PATH = "/etc/usbguard/rules.conf"
DAEMON_CONF = "/etc/usbguard/usbguard-daemon.conf"
NIX_OPTION = "modules.hardware.usbguard.rules"

_PLACEHOLDER = re.compile(r"placeholder|\bTODO\b|\bFIXME\b|changeme|xxxx:|:xxxx|0000:0000|stub", re.I)


def _quote(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def rule_line(key: KeyUsb) -> str:
    """The allow rule for `key` (serial "" when USB shows none: it then matches serial-less keys only)."""
    ifaces = key.interfaces
    with_iface = ifaces[0] if len(ifaces) == 1 else "{ " + " ".join(ifaces) + " }"
    return f"allow id {key.usb_id} serial {_quote(key.serial)} name {_quote(key.name)} with-interface {with_iface}"


@dataclass(frozen=True)
class Rule:
    line: str
    target: str
    usb_id: str
    serial: str | None
    lineno: int


def parse_rules(text: str) -> list[Rule]:
    """Rule lines (not comments) with their target, id and serial, as far as they say."""
    rules = []
    for n, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            words = shlex.split(line, comments=True)
        except ValueError:
            words = line.split()
        if not words:
            continue
        usb_id, serial = "", None
        for i, w in enumerate(words[:-1]):
            if w == "id" and not usb_id:
                usb_id = words[i + 1].lower()
            elif w == "serial" and serial is None:
                serial = words[i + 1]
        rules.append(Rule(line, words[0], usb_id, serial, n))
    return rules


def placeholder_reason(text: str | None) -> str | None:
    """Why a rules file is only a stub, or None when it holds real rules."""
    if text is None:
        return "the rules file does not exist"
    rules = parse_rules(text)
    if not rules:
        return "the rules file has no rules (empty or comments only)"
    marked = [r for r in rules if _PLACEHOLDER.search(r.line)]
    if marked:
        return f"line {marked[0].lineno} is a placeholder: {marked[0].line}"
    if not any(r.target == "allow" for r in rules):
        return "the rules file has no allow rule"
    bare = [r for r in rules if r.target == "allow" and _matches_every_device(r.line)]
    if bare:
        return f"line {bare[0].lineno} allows every device: {bare[0].line}"
    return None


# Attributes that narrow which devices a rule matches (usbguard-rules.conf(5)); `label`,
# `with-connect-type` and `if` alone do not name a device.
_NARROWING = ("hash", "parent-hash", "name", "serial", "via-port", "with-interface")


def _matches_every_device(line: str) -> bool:
    """`allow`, `allow id *:*`, `allow with-connect-type "hotplug"`: rules that let any device in."""
    try:
        words = shlex.split(line, comments=True)
    except ValueError:
        words = line.split()
    for i, w in enumerate(words[1:], 1):
        if w in _NARROWING:
            return False
        if w == "id" and words[i + 1 : i + 2] != ["*:*"]:
            return False
    return True


def find_rule(text: str, key: KeyUsb) -> Rule | None:
    """The existing allow rule for this key (same id, and same serial when either names one)."""
    for r in parse_rules(text):
        if r.target != "allow" or r.usb_id != key.usb_id:
            continue
        if (r.serial or "") == key.serial or (r.serial is None and not key.serial):
            return r
    return None


@dataclass
class AllowResult:
    path: str
    line: str
    added: bool
    placeholder: str | None  # why the file was a stub before (a warning for the person)


def allow(host: Host, key: KeyUsb, path: str = RULES_PATH) -> AllowResult:
    """Append the key's allow rule to the rules file (mode 0600) unless it is already there."""
    # bytes that are not UTF-8 ride along as surrogates and are written back as they were
    existing = host.read_text(path) if host.is_file(path) else None
    stub = placeholder_reason(existing)
    line = rule_line(key)
    if existing is not None and find_rule(existing, key) is not None:
        return AllowResult(path, line, False, stub)
    body = existing or ""
    if body and not body.endswith("\n"):
        body += "\n"
    body += line + "\n"
    host.write_file(path, body, 0o600)
    return AllowResult(path, line, True, stub)


def allow_and_record(host: Host, key: KeyUsb, nickname: str, path: str = RULES_PATH) -> AllowResult:
    """Allow the key (`allow`), prove the rules file holds its rule, and record it in the
    registry (kind usbguard) under `nickname`. Every USBGuard enrollment ends here."""
    result = allow(host, key, path)
    if find_rule(host.read_text(path), key) is None:
        raise ToolFailed(
            f"{path} does not hold the rule for {key.usb_id} after writing",
            "check the file by hand, then run the same command again",
        )
    with Registry.update(host) as registry:
        registry.record(nickname, "usbguard", usb_id=key.usb_id, serial=key.serial, path=path)
    return result


def record_for_nixos(host: Host, key: KeyUsb, nickname: str) -> None:
    """NixOS: nothing is written to /etc; `yktool nixos module` renders every key's rule from
    the registry entry, which carries the rule line."""
    with Registry.update(host) as registry:
        registry.record(
            nickname, "usbguard", usb_id=key.usb_id, serial=key.serial, path=NIX_OPTION, rule=rule_line(key)
        )


def remove_rule(host: Host, path: str, usb_id: str, serial: str) -> bool:
    """Take the allow rule yktool wrote for exactly this id and serial out of a rules file, every
    other line kept (`replace` revoking a lost key); True when it was there."""
    lines = host.read_text(path).splitlines(keepends=True)
    kept = [ln for ln in lines if not _is_rule_for(ln, usb_id, serial)]
    if len(kept) == len(lines):
        return False
    host.write_file(path, "".join(kept), host.mode(path))
    return True


def _is_rule_for(line: str, usb_id: str, serial: str) -> bool:
    """This line is the allow rule for exactly that id and serial (not a substring match; a rule
    naming no serial lets every key of the model in and is not this key's)."""
    parsed = parse_rules(line)
    return bool(parsed) and parsed[0].target == "allow" and (parsed[0].usb_id, parsed[0].serial) == (usb_id, serial)


def restart_hint(result: AllowResult) -> str:
    """What to tell before USBGuard reloads the file: a file that held no real rule now allows
    only this key, and a restart applies the policy to every device plugged in (keyboard too)."""
    if result.placeholder:
        return (
            "do NOT restart usbguard yet: the file allows only this key, so a restart blocks every "
            "other device, keyboard included; first add them (usbguard generate-policy, review, append)"
        )
    return "restart usbguard to load it: systemctl restart usbguard"


def usb_interfaces(vendor: str, product: str, serial: str = "", sysfs: Path = Path("/sys")) -> tuple[str, ...]:
    """The interfaces (CC:SS:PP) of the plugged-in device, read from sysfs; () when not found.

    USBGuard compares a rule's `with-interface` set with *all* the device's interfaces, so a
    YubiKey with OTP+FIDO+CCID needs `{ 03:01:01 03:00:00 0b:00:00 }`, not the FIDO one alone.
    """
    base = sysfs / "bus/usb/devices"
    try:
        devices = sorted(base.iterdir())
    except OSError:
        return ()

    def attr(d: Path, name: str) -> str:
        try:
            return (d / name).read_bytes().decode("utf-8", "surrogateescape").strip().lower()
        except OSError:
            return ""

    for dev in devices:
        if attr(dev, "idVendor") != vendor or attr(dev, "idProduct") != product:
            continue
        if serial and attr(dev, "serial") != serial.lower():
            continue
        found = []
        for child in sorted(dev.iterdir()):
            if ":" in child.name and (child / "bInterfaceClass").exists():
                found.append(":".join(attr(child, f"bInterface{n}") for n in ("Class", "SubClass", "Protocol")))
        if found:
            return tuple(dict.fromkeys(found))
    return ()


def nixos_line(key: KeyUsb, nickname: str) -> str:
    """The `modules.hardware.usbguard.rules` line as the checklist's configuration writes it (a list append)."""
    return f"{NIX_OPTION} = [\n  {nix.string(rule_line(key))}  # yktool: {nickname}\n];"
