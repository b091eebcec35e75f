"""What a flake tree (`--flake DIR`) says, read, never guessed: its own USBGuard option, its agenix
secrets folder and secrets.nix, the LUKS device names of hardware-configuration.nix, lockers.

The NixOS configuration the hardening checklist comes from (docs/verify.md) declares
`options.modules.hardware.usbguard.rules` (a list of rule strings) and keeps its secrets in
`nix-secrets/secrets/` next to `secrets.nix`; a plain flake has neither, and gets the standard
`services.usbguard.rules` and `secrets/`.
"""

from __future__ import annotations

import errno
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path

from yktool.errors import UsageError
from yktool.host import read_all
from yktool.nixos import tree

PAGE_USBGUARD = ("modules", "hardware", "usbguard", "rules")
STANDARD_USBGUARD = "services.usbguard.rules"
SKIP_DIRS = frozenset({".git", ".direnv", "node_modules", "result", ".jj"})
MAX_FILES = 4000
MAX_BYTES = 1 << 20
# lockers that run pam_u2f as the user, by the PAM service NixOS gives them
LOCKERS = ("hyprlock", "swaylock", "gtklock", "waylock", "i3lock")


@dataclass
class LuksName:
    name: str
    file: Path


@dataclass
class FlakeTree:
    root: Path
    usbguard_option: str = STANDARD_USBGUARD  # the option path the module sets
    usbguard_declared_in: Path | None = None
    secrets_nix: Path | None = None
    secrets_dir: Path | None = None  # where .age files go
    luks_names: dict[str, LuksName] = field(default_factory=dict)  # LUKS UUID -> device name
    hardware_configs: list[Path] = field(default_factory=list)
    lockers: dict[str, Path] = field(default_factory=dict)  # locker -> a file naming it
    disko_luks: dict[str, Path] = field(default_factory=dict)  # disko `type = "luks"` names -> file
    notes: list[str] = field(default_factory=list)

    @property
    def usbguard_is_list(self) -> bool:
        return self.usbguard_option != STANDARD_USBGUARD


def nix_files(root: Path) -> list[Path]:
    """The .nix files of a tree (links not followed, .git and build results skipped)."""
    out: list[Path] = []
    for folder, dirs, files in os.walk(root, followlinks=False):
        dirs[:] = sorted(d for d in dirs if d not in SKIP_DIRS and not d.startswith("result"))
        for name in sorted(files):
            p = Path(folder) / name
            if name.endswith(".nix") and not p.is_symlink():
                out.append(p)
                if len(out) > MAX_FILES:
                    raise UsageError(
                        f"{root} holds more than {MAX_FILES} .nix files: is it a flake checkout?",
                        "pass --flake the folder with your flake.nix",
                    )
    return out


def _read_regular(path: Path) -> bytes | None:
    """The bytes of a regular file of the checkout, None when too big. Opened O_NONBLOCK and
    O_NOFOLLOW, then checked on the fd: a FIFO the checkout's owner put there (or swapped in after
    the walk) never hangs root, a link swapped in is never followed."""
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        if st.st_size > MAX_BYTES:
            return None
        return read_all(fd)
    finally:
        os.close(fd)


def _secrets_entries(nf: tree.NixFile) -> list[tree.Binding]:
    return [b for b in nf.bindings if len(b.path) == 2 and b.path[1] == "publicKeys"]


def scan(root: Path, secrets_nix: Path | None = None) -> FlakeTree:
    """Read every .nix file of the tree once and collect what the module needs (`secrets_nix`:
    the one the person named, when the tree has several)."""
    if not root.is_dir():
        raise UsageError(f"--flake {root}: not a folder", "pass the folder that holds your flake.nix")
    if not (root / "flake.nix").is_file():
        raise UsageError(f"--flake {root}: no flake.nix there", "pass the folder that holds your flake.nix")
    ft = FlakeTree(root)
    candidates: list[Path] = []
    for path in nix_files(root):
        try:
            data = _read_regular(path)
            if data is None:
                continue
            text = data.decode("utf-8", "surrogateescape")
            nf = tree.parse(text)
        except (OSError, tree.NixSyntaxError) as exc:
            ft.notes.append(f"skipped {path.relative_to(root)}: {exc}")
            continue
        for b in nf.bindings:
            if b.path == ("options", *PAGE_USBGUARD) and b.mentions("listOf"):
                ft.usbguard_option = ".".join(PAGE_USBGUARD)
                ft.usbguard_declared_in = path
            if (
                len(b.path) >= 6
                and b.path[-6:-2] == ("boot", "initrd", "luks", "devices")
                and b.path[-1] == "device"
                and b.string
                and b.string.startswith("/dev/disk/by-uuid/")
            ):
                uuid = b.string.removeprefix("/dev/disk/by-uuid/").lower()
                ft.luks_names.setdefault(uuid, LuksName(b.path[-2], path))
        by_path = {b.path: b for b in nf.bindings}
        for b in nf.bindings:  # disko: `{ type = "luks"; name = "crypted"; … }` names the mapping
            if b.path[-1:] == ("type",) and b.string == "luks":
                named = by_path.get((*b.path[:-1], "name"))
                if named is not None and named.string:
                    ft.disko_luks.setdefault(named.string, path)
        if path.name == "hardware-configuration.nix":
            ft.hardware_configs.append(path)
        if path.name == "secrets.nix" and _secrets_entries(nf):
            candidates.append(path)
        for t in nf.toks:
            word = t.value if t.kind == "str" else t.text
            if word in LOCKERS and word not in ft.lockers:
                ft.lockers[word] = path
    if secrets_nix is not None:
        use_secrets_nix(ft, secrets_nix)
    elif len(candidates) > 1:
        raise UsageError(
            f"{root} has {len(candidates)} agenix secrets.nix files "
            f"({', '.join(str(c.relative_to(root)) for c in candidates[:4])})",
            "say which with --secrets-nix FILE",
        )
    elif candidates:
        ft.secrets_nix = candidates[0]
        ft.secrets_dir = candidates[0].parent
    else:
        ft.secrets_dir = root / "secrets"
    return ft


def use_secrets_nix(ft: FlakeTree, path: Path) -> None:
    """--secrets-nix FILE: this one (its folder holds the .age files)."""
    if not path.is_file():
        raise UsageError(f"--secrets-nix {path}: no such file", "name the agenix secrets.nix of the tree")
    ft.secrets_nix = path.resolve()
    ft.secrets_dir = ft.secrets_nix.parent
