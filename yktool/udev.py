"""The removal-lock udev rule: render it for a key, install it (plain Linux) or print it (NixOS).

The rules (template `udev/yktool-lock.rules.in`) match *this* key on `ACTION=="remove"` twice:
the USB device by the udev database values `ID_VENDOR_ID`, `ID_MODEL_ID` and, where the key
exposes one on USB, its serial (`ID_SERIAL_SHORT`); and the HID device by `HID_ID`
(bus:0000VVVV:0000PPPP) and `HID_UNIQ` (the serial), which a key with no USB parent (the
emulated key) or no serial on USB also has. Both run the small lock program `udev/yktool-lock`,
which locks once per removal: it waits out a re-enumeration and then locks every session through
logind (`loginctl lock-sessions`).

One rules file holds one block per key nickname (`# yktool-key: NAME`); installing again for the
same nickname replaces that block, so re-runs change nothing.
"""

from __future__ import annotations

import importlib.util
import re
from dataclasses import dataclass, field
from pathlib import Path

from yktool import nix
from yktool.errors import ToolFailed, UsageError
from yktool.host import Host
from yktool.inventory import Registry

RULE_PATH = "/etc/udev/rules.d/85-yktool-lock.rules"
PROGRAM_PATH = "/usr/local/libexec/yktool-lock"
NIX_OPTION = "services.udev.extraRules"  # where the rule goes on NixOS (the registry's path for it)
RULE_DIRS = (
    "/etc/udev/rules.d",
    "/run/udev/rules.d",
    "/usr/local/lib/udev/rules.d",
    "/usr/lib/udev/rules.d",
    "/lib/udev/rules.d",
)

# The software key's USB identity: pid.codes' test vendor/product (1209:0001), not Yubico's 1050,
# so a rule rendered for it can never match a real YubiKey.
SOFTKEY_VENDOR = "1209"
SOFTKEY_PRODUCT = "0001"
SOFTKEY_NAME = "yktool software key"

# Lockers and desktop screen lockers that react to logind's Lock signal (or are one).
LOCK_HANDLERS = (
    "hyprlock",
    "swaylock",
    "i3lock",
    "gtklock",
    "waylock",
    "swayidle",
    "hypridle",
    "xss-lock",
    "xsecurelock",
    "slock",
    "physlock",
    "light-locker",
    "xscreensaver",
    "xfce4-screensaver",
    "cinnamon-screensaver",
    "mate-screensaver",
    "gnome-shell",
    "kscreenlocker_greet",
    "loginctl-lock",
)
HANDLER_DIRS = (
    "/usr/local/bin",
    "/usr/bin",
    "/bin",
    "/usr/libexec",
    "/usr/lib/x86_64-linux-gnu/libexec",
    "/run/current-system/sw/bin",
    "/run/current-system/sw/libexec",
)

_HEX4 = re.compile(r"^[0-9a-f]{4}$")
_SERIAL = re.compile(r"^[A-Za-z0-9._:+-]{1,126}$")
_NICK = re.compile(r"^[A-Za-z0-9._-]{1,64}$")


@dataclass(frozen=True)
class KeyUsb:
    """A key as USB shows it: vendor/product IDs (4 lowercase hex digits), serial, product name."""

    vendor: str
    product: str
    serial: str = ""
    name: str = ""
    interfaces: tuple[str, ...] = field(default=("03:00:00",))  # FIDO HID: class 03, subclass 0, protocol 0

    def __post_init__(self) -> None:
        vendor, product = self.vendor.lower().removeprefix("0x"), self.product.lower().removeprefix("0x")
        object.__setattr__(self, "vendor", vendor)
        object.__setattr__(self, "product", product)
        if not _HEX4.match(vendor) or not _HEX4.match(product):
            raise UsageError(
                f"USB id {self.vendor}:{self.product} is not two 4-digit hex numbers",
                "give --vendor and --product like 1050 and 0407 (see `lsusb`)",
            )
        if self.serial and not _SERIAL.match(self.serial):
            raise UsageError(
                f"serial {self.serial!r} has characters a udev rule cannot carry",
                "give --serial as letters, digits and . _ : + - only",
            )
        if any(c in self.name for c in '"\\\n\r'):
            raise UsageError(
                f"device name {self.name!r} has quotes, backslashes or newlines", "give --name without them"
            )
        for iface in self.interfaces:
            if not re.match(r"^[0-9a-f*]{2}:[0-9a-f*]{2}:[0-9a-f*]{2}$", iface):
                raise UsageError(f"interface {iface!r} is not CC:SS:PP", "give --interface like 03:00:00")

    @property
    def usb_id(self) -> str:
        return f"{self.vendor}:{self.product}"


def identity_from(obj: object) -> KeyUsb:
    """A KeyUsb from whatever `yktool.fido.identity.usb_identity` returns (object or mapping)."""

    def get(name: str, default: object = "") -> object:
        if isinstance(obj, dict):
            return obj.get(name, default)
        return getattr(obj, name, default)

    raw_ifaces = get("interfaces", ())
    ifaces = (
        tuple(str(i) for i in raw_ifaces) if isinstance(raw_ifaces, (list, tuple)) and raw_ifaces else ("03:00:00",)
    )
    serial = get("serial", "")

    def hex4(value: object) -> str:
        return f"{value:04x}" if isinstance(value, int) else str(value)

    return KeyUsb(
        hex4(get("vendor") or get("vendor_id")),
        hex4(get("product") or get("product_id")),
        "" if serial is None else str(serial),
        str(get("name", "") or ""),
        ifaces,
    )


def assets_dir() -> Path:
    """The `udev/` folder (rule template and lock program), installed as yktool.udev_assets."""
    spec = importlib.util.find_spec("yktool.udev_assets")
    here = Path(spec.origin).resolve().parent if spec and spec.origin else Path("/nonexistent")
    if not (here / "yktool-lock").is_file():
        raise UsageError(f"the udev assets are missing ({here})", "reinstall yktool (pip install .)")
    return here


def lock_program() -> str:
    """The text of the lock program that udev runs."""
    return (assets_dir() / "yktool-lock").read_text()


def _check_nick(nickname: str) -> None:
    if not _NICK.match(nickname):
        raise UsageError(f"nickname {nickname!r} is not plain", "use letters, digits, . _ - only")


def render_rule(key: KeyUsb, nickname: str, program: str = PROGRAM_PATH) -> str:
    """The rule block for one key (comment lines + one rule line), ending in a newline."""
    _check_nick(nickname)
    template = (assets_dir() / "yktool-lock.rules.in").read_text()
    serial_match = f', ENV{{ID_SERIAL_SHORT}}=="{key.serial}"' if key.serial else ""
    hid_serial_match = f', ENV{{HID_UNIQ}}=="{key.serial}"' if key.serial else ""
    return (
        template.replace("@NICKNAME@", nickname)
        .replace("@NAME@", key.name or "unnamed key")
        .replace("@HID_VENDOR@", hid_hex(key.vendor))
        .replace("@HID_PRODUCT@", hid_hex(key.product))
        .replace("@VENDOR@", key.vendor)
        .replace("@PRODUCT@", key.product)
        .replace("@SERIAL_MATCH@", serial_match)
        .replace("@HID_SERIAL_MATCH@", hid_serial_match)
        .replace("@SERIAL_ARG@", key.serial or "-")
        .replace("@PROGRAM@", program)
    )


def hid_hex(usb_hex4: str) -> str:
    """A USB id as the kernel writes it into HID_ID: 8 upper-case hex digits (1050 -> 00001050)."""
    return usb_hex4.upper().rjust(8, "0")


HEADER = "# Written by `yktool udev install`: lock all sessions when a registered key is removed.\n"


def split_blocks(text: str) -> tuple[str, dict[str, str]]:
    """(lines before the first block, nickname -> block text) of a yktool rules file."""
    head: list[str] = []
    blocks: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in text.splitlines(keepends=True):
        m = re.match(r"^# yktool-key: (\S+)", line)
        if m:
            current = blocks.setdefault(m.group(1), [])
        if current is None:
            head.append(line)
        else:
            current.append(line)
    return "".join(head), {k: "".join(v) for k, v in blocks.items()}


def merged_rules(existing: str | None, nickname: str, block: str) -> str:
    """The rules file with `nickname`'s block added or replaced (others kept, sorted by name)."""
    head, blocks = split_blocks(existing or "")
    blocks[nickname] = block
    return joined_blocks(head if head.strip() else HEADER, blocks)


def joined_blocks(head: str, blocks: dict[str, str]) -> str:
    """A rules file of `head` and the blocks, sorted by nickname (`split_blocks` undone)."""
    return head.rstrip("\n") + "\n\n" + "\n".join(blocks[k].rstrip("\n") + "\n" for k in sorted(blocks))


@dataclass
class InstallResult:
    rule_path: str
    program_path: str
    changed: list[str]
    reloaded: bool
    handlers: list[str]


def install(host: Host, key: KeyUsb, nickname: str) -> InstallResult:
    """Write the lock program and the rule under the root; reload udev only on the live `/`."""
    program = lock_program()
    # bytes that are not UTF-8 ride along as surrogates and are written back as they were
    existing = host.read_text(RULE_PATH) if host.is_file(RULE_PATH) else None
    new_rules = merged_rules(existing, nickname, render_rule(key, nickname))
    changed = []
    if not host.is_file(PROGRAM_PATH) or host.read_text(PROGRAM_PATH) != program or host.mode(PROGRAM_PATH) != 0o755:
        host.write_file(PROGRAM_PATH, program, 0o755)
        changed.append(PROGRAM_PATH)
    if existing != new_rules:
        host.write_file(RULE_PATH, new_rules, 0o644)
        changed.append(RULE_PATH)
    reloaded = False
    if changed and host.is_live and host.which("udevadm"):
        host.run(["udevadm", "control", "--reload"])
        reloaded = True
    return InstallResult(RULE_PATH, PROGRAM_PATH, changed, reloaded, find_lock_handlers(host))


def install_and_record(host: Host, key: KeyUsb, nickname: str) -> InstallResult:
    """Install the rule (plain Linux), prove it is there as verify reads the rules folders, and
    record it in the registry (kind udev) under `nickname`. Every udev enrollment ends here."""
    result = install(host, key, nickname)
    # this key's own rule: a backup of the same model with its rule already in place is not proof
    mine = (key.vendor, key.product, key.serial or "")
    if not any((r.vendor, r.product, r.serial or "") == mine for r in installed_rules(host)):
        raise ToolFailed(
            f"{RULE_PATH} does not hold the rule for {key.usb_id} after writing",
            "check the file by hand, then run the same command again",
        )
    _record(host, key, nickname, RULE_PATH)
    return result


def record_for_nixos(host: Host, key: KeyUsb, nickname: str) -> None:
    """NixOS: nothing is written to /etc; the registry entry is what `yktool nixos module`
    renders the rule from."""
    _record(host, key, nickname, NIX_OPTION)


def _record(host: Host, key: KeyUsb, nickname: str, path: str) -> None:
    with Registry.update(host) as registry:
        registry.record(nickname, "udev", vendor=key.vendor, product=key.product, serial=key.serial, path=path)


def remove_block(host: Host, nickname: str) -> bool:
    """Take `nickname`'s block out of the rules file, the other keys' blocks kept (`replace`
    revoking a lost key); True when it was there."""
    if not host.exists(RULE_PATH):
        return False
    head, blocks = split_blocks(host.read_text(RULE_PATH))
    if blocks.pop(nickname, None) is None:
        return False
    host.write_file(RULE_PATH, joined_blocks(head, blocks), 0o644)
    return True


def nixos_snippet(key: KeyUsb, nickname: str) -> str:
    """A NixOS module that installs the lock program and the rule (services.udev.extraRules)."""
    program = lock_program()
    rule = render_rule(key, nickname, program="@PROGRAM@")
    # Escape the rule for a '' string, then put the one antiquotation (the program's store path) in.
    body = nix.indented_string(rule, "    ").replace("@PROGRAM@", "${yktoolLock}")
    script = nix.indented_string(program, "    ")
    return (
        "# yktool: lock all sessions when this key is removed (add to your NixOS configuration)\n"
        "{ pkgs, ... }:\n"
        "let\n"
        f'  yktoolLock = pkgs.writeShellScript "yktool-lock" {script};\n'
        "in {\n"
        f"  services.udev.extraRules = {body};\n"
        "}\n"
    )


def find_lock_handlers(host: Host) -> list[str]:
    """Lock handlers present under the root (paths inside it): a locker or a desktop's."""
    found = []
    folders = list(HANDLER_DIRS)
    try:  # NixOS per-user packages (users.users.<name>.packages, home-manager's useUserPackages)
        users = host.listdir("/etc/profiles/per-user")
        folders += [f"/etc/profiles/per-user/{u}/bin" for u in users]
    except (OSError, UsageError):
        pass
    for folder in folders:
        for name in LOCK_HANDLERS:
            p = f"{folder}/{name}"
            try:
                if host.is_file(p):
                    found.append(p)
            except (UsageError, OSError):
                continue
    return found


@dataclass
class InstalledRule:
    path: str
    line: str
    vendor: str
    product: str
    serial: str


def installed_rules(host: Host) -> list[InstalledRule]:
    """Removal-lock rules under the root: ACTION=="remove" lines that run loginctl or yktool-lock."""
    out: list[InstalledRule] = []
    seen: set[str] = set()
    for folder in RULE_DIRS:
        try:
            names = [n for n in host.listdir(folder) if n.endswith(".rules")]
        except (OSError, UsageError):
            continue
        for name in names:
            # udev reads one file per name, the first folder's: /etc masks /usr/lib (even with
            # an empty file or a /dev/null link)
            if name in seen:
                continue
            seen.add(name)
            path = f"{folder}/{name}"
            try:
                text = host.read_text(path)
            except (OSError, UsageError):
                continue
            for line in text.replace("\\\n", "").splitlines():
                s = line.strip()
                if s.startswith("#") or 'ACTION=="remove"' not in s:
                    continue
                if "lock-sessions" not in s and "yktool-lock" not in s and "lock-session" not in s:
                    continue

                def env(k: str, s: str = s) -> str:
                    m = re.search(r"(?:ENV|ATTRS?)\{" + k + r'\}=="([^"]*)"', s)
                    return m.group(1) if m else ""

                # the HID rule: HID_ID=="*:0000VVVV:0000PPPP" (the kernel's upper-case hex)
                hid = re.fullmatch(r"[^:]*:0*([0-9A-Fa-f]{1,4}):0*([0-9A-Fa-f]{1,4})", env("HID_ID"))
                hid_vendor, hid_product = (
                    (hid.group(1).lower().rjust(4, "0"), hid.group(2).lower().rjust(4, "0")) if hid else ("", "")
                )
                out.append(
                    InstalledRule(
                        path,
                        s,
                        env("ID_VENDOR_ID") or env("idVendor") or hid_vendor,
                        env("ID_MODEL_ID") or env("idProduct") or hid_product,
                        env("ID_SERIAL_SHORT") or env("serial") or env("HID_UNIQ"),
                    )
                )
    return out
