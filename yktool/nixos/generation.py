"""`yktool verify` on NixOS: read the built system, and say which checks wait for a rebuild.

On NixOS /etc is the current generation's: `/run/current-system/etc` on the running system, the
root's `/nix/var/nix/profiles/system/etc` on an offline one (an image, a root mounted at /mnt,
where activation has not filled /etc yet). `generation_view` gives the checks a Host that reads
/etc from there when the root's own /etc lacks a file. What yktool's module sets (PAM, the udev
lock rule, USBGuard rules) exists only after `nixos-rebuild`: `needs_rebuild` names the checks
that cannot pass before it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from yktool.errors import UsageError
from yktool.host import Host

SYSTEM_LINKS = ("/run/current-system", "/nix/var/nix/profiles/system")
# checks whose evidence the yktool module generates: they pass only once it is built
MODULE_CHECKS = ("pam.sudo", "pam.login", "pam.greetd", "pam.hyprlock", "hw.udev.lock_rule", "hw.usbguard.rules")


def is_nixos(host: Host) -> bool:
    try:
        return host.exists("/etc/NIXOS")
    except UsageError:
        return False


def current_system(host: Host) -> str | None:
    """The generation the checks read (a path inside the root), if the root has one."""
    for link in SYSTEM_LINKS:
        try:
            if host.path(link + "/etc").is_dir():
                return link
        except UsageError:
            continue
    return None


@dataclass
class GenerationHost(Host):
    """A Host whose /etc falls back to a generation's etc for files the root's /etc lacks."""

    etc_from: str = ""

    def where_inside(self, path: str | PurePosixPath) -> str | PurePosixPath:
        # Host reads, writes and path() all ask here (fd walk included); the plain view decides
        inside = str(PurePosixPath("/") / PurePosixPath(str(path)))
        if self.etc_from and (inside == "/etc" or inside.startswith("/etc/")):
            plain = Host(self.root)
            alt = self.etc_from + "/etc" + inside[len("/etc") :]
            if not plain.exists(inside) and plain.exists(alt):
                return alt
        return path


def generation_view(host: Host) -> Host:
    """The host as the checks should read it: with the generation's /etc on NixOS."""
    if not is_nixos(host):
        return host
    system = current_system(host)
    if system is None:
        return host
    return GenerationHost(host.root, etc_from=system)


@dataclass
class RebuildReport:
    system: str | None  # the generation read, or None
    module: str | None  # the yktool module, when one was written
    newer: bool  # the module changed after that generation was made
    checks: list[str]  # check ids that need `nixos-rebuild switch` first

    def to_json(self) -> dict[str, Any]:
        return {
            "system": self.system,
            "module": self.module,
            "module_newer_than_system": self.newer,
            "needs_rebuild": self.checks,
        }

    def text(self) -> str:
        if not self.checks:
            return ""
        why = (
            "no built system in the root (no /run/current-system, no /nix/var/nix/profiles/system)"
            if self.system is None
            else f"the yktool module {self.module} is newer than {self.system}"
        )
        return f"needs `nixos-rebuild switch` first ({why}): {', '.join(self.checks)}"


def needs_rebuild(host: Host, results: list[Any]) -> RebuildReport:
    """Which of the module's checks did not pass because the module is not built yet."""
    from yktool.nixos.generate import SETTINGS_PATH, remembered

    system = current_system(host)
    module: Path | None = None
    if host.exists(SETTINGS_PATH):
        try:
            module = remembered(host).out
        except UsageError:
            module = None
    newer = False
    if module is not None and module.is_file() and system is not None:
        link = host.root / system.lstrip("/")
        try:
            newer = module.stat().st_mtime > os.lstat(link).st_mtime
        except OSError:
            newer = False
    # without a built system nothing NixOS generates is there yet; with one, only a module
    # written after it is waiting for the rebuild
    waiting = system is None or newer
    checks = [r.id for r in results if waiting and r.id in MODULE_CHECKS and r.status != "pass"]
    return RebuildReport(system, str(module) if module else None, newer, checks)
