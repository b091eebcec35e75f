"""The one NixOS module yktool writes: rendered from the key registry, whole, every time.

Nothing is appended: a second key, a replacement or a lost key changes the registry, and the
module is rendered again from it (so it holds exactly the keys the registry has, and one lock
program however many keys there are). Option paths and types follow nixpkgs:

- `security.pam.u2f` (`enable`, `control` enum, `settings` freeform: `authfile` path,
  `origin` str, `cue` bool) and `security.pam.services.<svc>.u2fAuth` (bool);
- agenix's `age.secrets.<name>` (`file` path, `owner`/`group`/`mode` str);
- `services.udev.extraRules` (lines), one `pkgs.writeShellScript` lock program;
- `services.usbguard.rules` (nullOr lines: ONE string) — or the tree's own list option;
- `boot.initrd.systemd.enable`, `boot.initrd.luks.devices.<name>.crypttabExtraOpts`
  (listOf singleLineStr, read by systemd stage 1 only).
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from yktool import nix
from yktool.errors import UsageError
from yktool.host import Host
from yktool.inventory import REGISTRY_PATH, Registry
from yktool.udev import KeyUsb

PAM_SERVICES = ("sudo", "login", "greetd")
SECRET_NAME = "yubikey-auth"  # noqa: S105 - the agenix secret's name, not a password
LOCK_VAR = "yktoolLock"


@dataclass
class PamPart:
    secret: str  # age.secrets.<secret>
    age_file: Path | None  # the .age the module points at (a local path); None: each
    # user's own ~/.config/Yubico/u2f_keys (pam_u2f's default)
    origin: str
    services: list[str]
    user_run: list[str]  # services among them that run pam_u2f as the user (lockers)
    control: str = "sufficient"


@dataclass
class LuksPart:
    uuid: str
    name: str
    named_by: str  # where the name comes from (hardware-configuration.nix, …)
    fido2: list[str] = field(default_factory=list)  # nicknames
    tpm2: bool = False


@dataclass
class ModuleSpec:
    registry: str  # the registry shown in the header (root + path)
    command: str  # how to regenerate
    pam: PamPart | None = None
    udev: list[tuple[str, KeyUsb]] = field(default_factory=list)
    usbguard: list[tuple[str, str]] = field(default_factory=list)  # (nickname, rule line)
    usbguard_option: str = "services.usbguard.rules"
    luks: list[LuksPart] = field(default_factory=list)
    module_dir: Path | None = None  # the module file's folder (relative paths); None = printed
    keys: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------- from the registry
def pam_part(registry: Registry, services: list[str]) -> PamPart | None:
    """The agenix authfile the registry's pam_u2f credentials live in (one file, one origin)."""
    from yktool.pam.authfile import USER_AUTHFILE
    from yktool.pam.stack import USER_RUN_SERVICES

    entries = [e for _k, e in registry.enrollments("pam") if "age_file" in e]
    own = [e for _k, e in registry.enrollments("pam") if str(e.get("path", "")).endswith("/" + USER_AUTHFILE)]
    if not entries and not own:
        return None
    files = sorted({str(e["age_file"]) for e in entries})
    origins = sorted({str(e.get("origin", "")) for e in entries or own})
    if len(files) > 1:
        raise UsageError(
            f"the registry's pam_u2f credentials are in {len(files)} agenix files "
            f"({', '.join(files)}): pam_u2f reads one authfile",
            "register every key into one age file (yktool pam register --age-file F)",
        )
    if len(origins) > 1:
        raise UsageError(
            f"the registry's pam_u2f credentials use {len(origins)} origins ({', '.join(origins)}): pam_u2f checks one",
            "register the keys again with one --origin",
        )
    user_run = [s for s in services if s in USER_RUN_SERVICES]
    if not files:  # the users' own files: pam_u2f reads them without an authfile setting
        return PamPart("", None, origins[0], services, user_run)
    age_file = Path(files[0])
    secret = age_file.name.removesuffix(".age") or SECRET_NAME
    return PamPart(secret, age_file, origins[0], services, user_run)


def luks_parts(host: Host, registry: Registry, names: dict[str, str], notes: list[str]) -> list[LuksPart]:
    """One entry per LUKS2 UUID the registry enrolled a key into; TPM2 from the header."""
    from yktool.luks.header import read_header

    parts: dict[str, LuksPart] = {}
    devices: dict[str, str] = {}
    for key, e in registry.enrollments("luks"):
        uuid = str(e.get("uuid", "")).lower()
        if not uuid:
            continue
        name, named_by = (
            (names[uuid], "hardware-configuration.nix")
            if uuid in names
            else (f"luks-{uuid}", "nixos-generate-config's naming")
        )
        part = parts.setdefault(uuid, LuksPart(uuid, name, named_by))
        if key.nickname not in part.fido2:
            part.fido2.append(key.nickname)
        devices.setdefault(uuid, str(e.get("device", "")))
    for uuid, part in parts.items():
        try:
            header = read_header(host, devices[uuid])
        except Exception as exc:  # noqa: BLE001 - a header not readable here is a note, not a failure
            notes.append(
                f"LUKS {uuid}: could not read {devices[uuid]} ({exc}); a TPM2 token there is not in the module"
            )
            continue
        part.tpm2 = bool(header.tokens_of_type("systemd-tpm2"))
    return list(parts.values())


def usbguard_rules(registry: Registry) -> list[tuple[str, str]]:
    """(nickname, rule) per key: the rule recorded at enrollment, else one by id and serial."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for key, e in registry.enrollments("usbguard"):
        rule = str(e.get("rule", ""))
        if not rule:
            serial = str(e.get("serial", "")).replace("\\", "\\\\").replace('"', '\\"')
            rule = f'allow id {str(e.get("usb_id", "")).lower()} serial "{serial}"'
        if "\n" in rule or "\r" in rule or not rule.startswith("allow "):
            # one line is one rule: anything else in the registry would smuggle rules into the module
            raise UsageError(
                f"{REGISTRY_PATH}: key {key.nickname!r} has a USBGuard rule that is not one allow line",
                "fix or remove that [[keys.enrollments]] entry, then run the command again",
            )
        if rule not in seen:
            seen.add(rule)
            out.append((key.nickname, rule))
    return out


def udev_keys(registry: Registry) -> list[tuple[str, KeyUsb]]:
    out: list[tuple[str, KeyUsb]] = []
    seen: set[tuple[str, str, str]] = set()
    for key, e in registry.enrollments("udev"):
        usb = KeyUsb(str(e.get("vendor", "")), str(e.get("product", "")), str(e.get("serial", "")))
        ident = (usb.vendor, usb.product, usb.serial)
        if ident not in seen:
            seen.add(ident)
            out.append((key.nickname, usb))
    return out


def lockers_found(host: Host, extra: Iterable[str] = ()) -> list[str]:
    """PAM services of the screen lockers installed under the root (or named by the tree)."""
    from yktool.nixos.flake import LOCKERS
    from yktool.udev import find_lock_handlers

    names = {PurePosixPath(p).name for p in find_lock_handlers(host)} | set(extra)
    return [n for n in LOCKERS if n in names]


# ---------------------------------------------------------------------------- rendering
def path_literal(target: Path, base: Path | None, fallback: str) -> str:
    """A Nix path to `target` relative to the module's folder `base` (a flake allows only
    relative paths inside it)."""
    if base is None:
        rel = fallback
    else:
        rel = os.path.relpath(target, base)
        rel = rel if rel.startswith("../") else "./" + rel
    if re.fullmatch(r"\.{1,2}(/[A-Za-z0-9._+-]+)+", rel):
        return rel
    return f"(./. + {nix.string('/' + rel)})"


def _section(title: str, lines: list[str]) -> list[str]:
    return ["", f"  # --- {title}", *lines]


def render(spec: ModuleSpec) -> str:
    """The module text (parses with nix-instantiate; see tests/test_nixos_module.py)."""
    head = [
        "# Generated by yktool from the key registry " + spec.registry + ". Do not edit:",
        "# it is rewritten whole from the registry each time. Regenerate with:",
        "#   " + spec.command,
        "# Keys: " + (", ".join(spec.keys) if spec.keys else "none registered"),
        "{ config, lib, pkgs, ... }:",
    ]
    body: list[str] = []
    if spec.udev:
        from yktool.udev import lock_program

        head += [
            "let",
            "  # the removal lock, one program for every key: udev runs it as root with no session,",
            "  # it asks logind to lock every session (each session's locker does the locking)",
            f'  {LOCK_VAR} = pkgs.writeShellScript "yktool-lock" {nix.indented_string(lock_program(), "    ")};',
            "in",
        ]
    if spec.pam is not None:
        body += _pam_lines(spec.pam, spec.module_dir)
    if spec.udev:
        body += _udev_lines(spec.udev)
    if spec.usbguard:
        body += _usbguard_lines(spec.usbguard, spec.usbguard_option)
    if spec.luks:
        body += _luks_lines(spec.luks)
    if not body:
        body = ["  # the registry has no enrollment NixOS needs to know of yet"]
    while body and body[0] == "":
        body.pop(0)
    return "\n".join([*head, "{", *body, "}"]) + "\n"


def _age_secret_lines(pam: PamPart, module_dir: Path | None) -> list[str]:
    assert pam.age_file is not None  # noqa: S101
    file = path_literal(pam.age_file, module_dir, f"./secrets/{pam.age_file.name}")
    why = (
        f"{', '.join(pam.user_run)} run{'s' if len(pam.user_run) == 1 else ''} pam_u2f as the user: "
        "the authfile (public keys and key handles only) must be readable by users"
        if pam.user_run
        else "only root reads it (no screen locker found)"
    )
    return [
        f"  {nix.attr_path('age', 'secrets', pam.secret)} = {{",
        f"    file = {file};",
        '    owner = "root";',
        '    group = "root";',
        f"    # {why}",
        f"    mode = {nix.string('0444' if pam.user_run else '0400')};",
        "  };",
    ]


def _pam_lines(pam: PamPart, module_dir: Path | None) -> list[str]:
    agenix = pam.age_file is not None
    authfile = (
        [f"      authfile = config.{nix.attr_path('age', 'secrets', pam.secret)}.path;"]
        if agenix
        else ["      # no authfile: each user's own ~/.config/Yubico/u2f_keys"]
    )
    lines = [
        *(_age_secret_lines(pam, module_dir) if agenix else []),
        "  security.pam.u2f = {",
        "    enable = true;",
        '    # "required" makes the touch mandatory on top of the password: switch to it only once',
        "    # `yktool pam check` passes and every user has a backup key",
        f"    control = {nix.string(pam.control)};",
        "    settings = {",
        *authfile,
        "      # pinned: without it pam_u2f uses pam://$HOSTNAME, and a hostname change breaks every key",
        f"      origin = {nix.string(pam.origin)};",
        "      cue = true;",
        "    };",
        "  };",
        "  # u2fAuth defaults to security.pam.u2f.enable for every service; these are set on purpose",
        *[f"  {nix.attr_path('security', 'pam', 'services', svc, 'u2fAuth')} = true;" for svc in pam.services],
    ]
    return _section(
        "pam_u2f with the authfile as an agenix secret" if agenix else "pam_u2f with each user's own authfile", lines
    )


def _udev_lines(keys: list[tuple[str, KeyUsb]]) -> list[str]:
    from yktool.udev import render_rule

    rules = "\n".join(render_rule(usb, nick, program="@PROGRAM@").rstrip("\n") for nick, usb in keys)
    body = nix.indented_string(rules, "    ").replace("@PROGRAM@", "${" + LOCK_VAR + "}")
    return _section(
        "lock every session when a registered key is removed (one rule per key)",
        [f"  services.udev.extraRules = {body};"],
    )


def _usbguard_lines(rules: list[tuple[str, str]], option: str) -> list[str]:
    if option == "services.usbguard.rules":
        text = "\n".join(f"# yktool: {nick}\n{rule}" for nick, rule in rules)
        return _section(
            "USBGuard: allow the registered keys (services.usbguard.rules is one string; "
            "setting it replaces services.usbguard.ruleFile)",
            [f"  services.usbguard.rules = {nix.indented_string(text, '    ')};"],
        )
    items = [f"    {nix.string(rule)}  # yktool: {nick}" for nick, rule in rules]
    return _section(
        f"USBGuard: allow the registered keys ({option}, the tree's own list option)",
        [f"  {option} = [", *items, "  ];"],
    )


def _luks_lines(parts: list[LuksPart]) -> list[str]:
    lines = [
        "  # systemd in stage 1 reads the LUKS2 tokens yktool enrolled (crypttabExtraOpts is used",
        "  # only by systemd stage 1)",
        "  boot.initrd.systemd.enable = true;",
    ]
    for p in parts:
        opts = ["fido2-device=auto"] + (["tpm2-device=auto"] if p.tpm2 else [])
        what = f"FIDO2: {', '.join(p.fido2)}" + ("; TPM2 token" if p.tpm2 else "")
        lines += [
            f"  # LUKS2 UUID {p.uuid} ({what}); name from {p.named_by}",
            f"  {nix.attr_path('boot', 'initrd', 'luks', 'devices', p.name, 'crypttabExtraOpts')} = "
            f"{nix.string_list(opts)};",
        ]
    return _section("stage-1 unlock with the FIDO2 key (and the TPM2)", lines)
