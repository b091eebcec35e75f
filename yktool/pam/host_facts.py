"""What pam_u2f depends on in the target root: its users, its host name (the default origin),
its pam-u2f version, whether a home is encrypted.

The RP id of every credential is pam_u2f's `origin` (default `pam://$HOSTNAME` at login time),
so yktool pins it: it registers with `pam://<hostname of the target>` unless told otherwise and
says that the PAM line must carry the same `origin=`.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from yktool.errors import UsageError
from yktool.host import Host

ORIGIN_PREFIX = "pam://"
EDDSA_MIN_VERSION = (1, 2, 0)
NOUSEROK_FIXED_VERSION = (1, 3, 1)  # CVE-2025-23013: nouserok no longer answers SUCCESS
EXPAND_MIN_VERSION = (1, 3, 0)  # `expand` (%u, %h in authfile=); older ones read the path as written


@dataclass(frozen=True)
class User:
    name: str
    uid: int
    gid: int
    home: str
    shell: str

    @property
    def can_log_in(self) -> bool:
        return not self.shell.endswith(("nologin", "/false", "/sync")) and bool(self.shell)


def read_users(host: Host) -> dict[str, User]:
    """/etc/passwd under the root (empty when there is none)."""
    if not host.is_file("/etc/passwd"):
        return {}
    out: dict[str, User] = {}
    for line in host.read_text("/etc/passwd").splitlines():
        f = line.split(":")
        if len(f) >= 7 and f[2].isdigit() and f[3].isdigit():
            out[f[0]] = User(f[0], int(f[2]), int(f[3]), f[5], f[6])
    return out


def default_origin(host: Host) -> str:
    """`pam://<hostname>` of the target root (its /etc/hostname)."""
    name = ""
    if host.is_file("/etc/hostname"):
        name = (
            host.read_text("/etc/hostname").strip().splitlines()[0].strip()
            if host.read_text("/etc/hostname").strip()
            else ""
        )
    if not name and host.is_live:
        name = os.uname().nodename
    if not name or any(c.isspace() for c in name):
        raise UsageError(
            f"cannot tell the host name of {host.root} (no /etc/hostname)",
            "give the origin explicitly: --origin pam://NAME",
        )
    return ORIGIN_PREFIX + name


def check_origin(origin: str) -> str:
    if not origin or any(c.isspace() for c in origin) or ":" not in origin:
        raise UsageError(
            f"origin {origin!r} is not usable", "use a form like pam://myhost (no spaces), the same as the PAM origin="
        )
    return origin


_VERSION_RE = re.compile(r"(?:pam[_-]u2f|libpam-u2f)-(\d+)\.(\d+)\.(\d+)")


def installed_version(host: Host, module_paths: Iterable[str] = ()) -> tuple[tuple[int, int, int] | None, str]:
    """pam-u2f's version on the target and where it was read: the Nix store path of the module
    the PAM files name, or the dpkg database under the root. (None, reason) when unknown."""
    for path in module_paths:
        m = _VERSION_RE.search(path)
        if m:
            return (int(m[1]), int(m[2]), int(m[3])), f"module path {path}"
    try:
        status = host.read_text("/var/lib/dpkg/status") if host.is_file("/var/lib/dpkg/status") else ""
    except (UsageError, OSError, UnicodeError) as exc:
        # unknown is the careful answer (the CVE-2025-23013 rule then applies): never no verdict
        return None, f"pam-u2f's version on the target could not be read (/var/lib/dpkg/status: {exc})"
    if status:
        block = None
        for para in status.split("\n\n"):
            if re.search(r"^Package: libpam-u2f$", para, re.M):
                block = para
                break
        if block is not None and re.search(r"^Status: .* installed$", block, re.M):
            m = re.search(r"^Version: (?:\d+:)?(\d+)\.(\d+)\.(\d+)", block, re.M)
            if m:
                return (int(m[1]), int(m[2]), int(m[3])), "dpkg status of libpam-u2f"
    return None, "pam-u2f's version on the target could not be read"


def version_text(version: tuple[int, int, int] | None) -> str:
    return ".".join(map(str, version)) if version else "unknown"


def default_origin_or_none(host: Host) -> str | None:
    try:
        return default_origin(host)
    except UsageError:
        return None


def home_encryption(host: Host, user: User) -> str | None:
    """How `user`'s home is encrypted, if it is (ecryptfs, fscrypt, systemd-homed), as far as
    the files under the root (and /proc/mounts on a live host) tell."""
    home = PurePosixPath(user.home)
    base = home.parent

    def there(p: str | PurePosixPath) -> bool:
        # ecryptfs makes ~/.ecryptfs and ~/.Private links the user owns: seen, never followed
        try:
            return host.lexists(p)
        except (UsageError, OSError):
            return False

    if there(base / ".ecryptfs" / user.name) or there(home / ".ecryptfs") or there(home / ".Private"):
        return "ecryptfs"
    if (
        there(f"/var/lib/systemd/home/{user.name}.identity")
        or there(base / f"{user.name}.homedir")
        or there(base / f"{user.name}.home")
    ):
        return "systemd-homed"
    if host.is_live:
        try:
            mounts = Path("/proc/self/mounts").read_text()
        except OSError:
            mounts = ""
        for entry in mounts.splitlines():
            f = entry.split()
            if len(f) >= 3 and f[2] == "ecryptfs" and (f[1] == str(home) or str(home).startswith(f[1] + "/")):
                return "ecryptfs"
    for meta in (base / ".fscrypt", PurePosixPath("/.fscrypt")):
        try:
            policies = host.listdir(meta / "policies") if host.is_dir(meta / "policies") else []
        except (UsageError, OSError):
            policies = []
        if policies:
            return "fscrypt (policies exist on this filesystem; the home may be encrypted)"
    return None
