"""Whose files: user accounts as the root's /etc/passwd names them (never the running machine's)."""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass
from pathlib import PurePosixPath

from yktool.errors import Refused, UsageError
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
    real = host.path("/etc/passwd")
    if not real.is_file():
        raise UsageError(f"{host.root}/etc/passwd does not exist, so user {name} has no known home",
                         "name the file with --output / --file, or use a root that has /etc/passwd")
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
    raise UsageError(f"user {name} is not in {host.root}/etc/passwd",
                     "check the name (--user), or create the account first")


def default_user() -> str:
    """The name of the user running yktool (SUDO_USER when run through sudo)."""
    sudo_user = os.environ.get("SUDO_USER")
    if sudo_user and os.geteuid() == 0:
        return sudo_user
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name


def refuse_user_links(host: Host, path: PurePosixPath | str) -> None:
    """Running as root, refuse to read or write `path` through a symbolic link that another user
    owns (Refused, exit 4). A user controls the links in their own home: `~/.ssh/authorized_keys`
    pointing at /root/.ssh/authorized_keys, or `~/.config/Yubico/u2f_keys` at /etc/shadow,
    would have root append to (and hand over) a file the user must never touch. Links root owns
    (/home -> /data/home, NixOS's /etc) are followed as usual."""
    if os.geteuid() != 0:
        return  # the kernel's permissions already stop a user's links at what that user may write
    parts = PurePosixPath("/", str(path)).parts[1:]
    for i, part in enumerate(parts):
        parent = host.path("/" + "/".join(parts[:i]))
        try:
            st = os.lstat(parent / part)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISLNK(st.st_mode) and st.st_uid != 0:
            inside = "/" + "/".join(parts[:i + 1])
            raise Refused(f"{inside} is a symbolic link owned by uid {st.st_uid} (to "
                          f"{os.readlink(parent / part)}): yktool, running as root, will not follow it",
                          "replace the link with a plain file or folder (as that user), then run again")
