"""Whose files: user accounts as the root's /etc/passwd names them (never the running machine's)."""

from __future__ import annotations

import os
import pwd
from dataclasses import dataclass
from pathlib import PurePosixPath

from yktool.errors import UsageError
from yktool.host import Host


@dataclass(frozen=True)
class Account:
    name: str
    uid: int
    gid: int
    home: PurePosixPath

    @property
    def ssh_dir(self) -> PurePosixPath:
        return self.home / ".ssh"

    def owner(self) -> tuple[int, int] | None:
        """(uid, gid) to give new files when yktool runs as root; None otherwise (they are ours)."""
        return (self.uid, self.gid) if os.geteuid() == 0 else None

    def display(self, path: PurePosixPath) -> str:
        """`path` as `~/…` when it lies in this home (git expands `~` in user.signingkey and
        gpg.ssh.allowedSignersFile), else as is."""
        try:
            return "~/" + str(path.relative_to(self.home))
        except ValueError:
            return str(path)


def lookup_user(host: Host, name: str) -> Account:
    """The account `name` from /etc/passwd under the root; UsageError when it is not there."""
    if not host.is_file("/etc/passwd"):
        raise UsageError(
            f"{host.root}/etc/passwd does not exist, so user {name} has no known home",
            "name the file with --output / --file, or use a root that has /etc/passwd",
        )
    for line in host.read_text("/etc/passwd").splitlines():
        fields = line.split(":")
        if len(fields) >= 7 and fields[0] == name:
            try:
                uid, gid = int(fields[2]), int(fields[3])
            except ValueError:
                break
            home = PurePosixPath(fields[5] or "/")
            if not home.is_absolute():
                break
            return Account(name, uid, gid, home)
    raise UsageError(
        f"user {name} is not in {host.root}/etc/passwd", "check the name (--user), or create the account first"
    )


def default_user() -> str:
    """The name of the user running yktool (SUDO_USER when run through sudo)."""
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and os.geteuid() == 0:
        return sudo_user
    return pwd.getpwuid(os.getuid()).pw_name


def refuse_user_links(host: Host, path: PurePosixPath | str) -> None:
    """Running as root, refuse (UnsafeLink, exit 4) a path that passes through a symbolic link a
    user controls: `~/.ssh/authorized_keys` pointing at /root/.ssh/authorized_keys, or
    `~/.config/Yubico/u2f_keys` at /etc/shadow, would have root append to (and hand over) a file
    the user must never touch. Links root owns in folders only root can change (/home ->
    /data/home, NixOS's /etc) are followed as usual. Host's reads and writes enforce the same
    rule on their own fds; calling this first refuses before a key is touched."""
    host.lstat(path)
