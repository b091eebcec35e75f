"""Checks for the wizard's answers, run as each one is typed (questionary `validate=`): each
returns None when the answer is fine, else what is wrong, in words that name the path as the
root sees it ("inside ROOT: /var/lib/…") and, where it helps, what to type instead."""

from __future__ import annotations

import re
from collections.abc import Callable

from yktool.errors import YktoolError
from yktool.host import Host

Check = Callable[[str], "str | None"]

# one address: something@domain.tld, no spaces, commas or quotes (allowed_signers principals)
EMAIL = re.compile(r"[^@\s,\"']+@[^@\s,\"']+\.[^@\s,\"'.]+")


def where(host: Host, path: str) -> str:
    """`path` as the root sees it, with the root named (nothing added for the machine's own /)."""
    return path if str(host.root) == "/" else f"inside {host.root}: {path}"


def _machine_path_hint(host: Host, path: str) -> str:
    """A path typed as this machine sees it (it starts with the root): say what to type instead."""
    root = str(host.root).rstrip("/")
    if root and path.startswith(root + "/"):
        return f"; type it as the root sees it: {path[len(root):]}"
    return ""


def root_file(host: Host) -> Check:
    def check(path: str) -> str | None:
        path = path.strip()
        if not path.startswith("/"):
            return f"{path or '(empty)'}: give the full path, as the root sees it (starting with /)"
        try:
            real = host.path(path)
        except YktoolError as exc:
            return exc.message
        if not real.is_file():
            return f"no such file {where(host, path)}{_machine_path_hint(host, path)}"
        return None

    return check


def luks_devices(host: Host) -> Check:
    """Space-separated LUKS2 devices or images inside the root; empty is fine (no LUKS steps)."""
    from yktool.luks.header import read_header

    def check(text: str) -> str | None:
        for dev in text.replace(",", " ").split():
            if not dev.startswith("/"):
                return f"{dev}: give the full path, as the root sees it (starting with /)"
            try:
                real = host.path(dev)
            except YktoolError as exc:
                return exc.message
            if not real.exists():
                return f"no such device or image {where(host, dev)}{_machine_path_hint(host, dev)}"
            try:
                read_header(host, dev)
            except YktoolError as exc:
                return exc.message
        return None

    return check


def user(host: Host) -> Check:
    from yktool.ssh.accounts import lookup_user

    def check(name: str) -> str | None:
        if not name.strip():
            return "give a login name"
        try:
            lookup_user(host, name.strip())
        except YktoolError as exc:
            return f"{exc.message}: the user must exist in the root's /etc/passwd"
        return None

    return check


def email(text: str) -> str | None:
    if EMAIL.fullmatch(text.strip()) is None:
        return f"{text.strip() or '(empty)'} does not look like an email address (name@example.org)"
    return None


def nickname(taken: str = "") -> Check:
    def check(name: str) -> str | None:
        name = name.strip()
        if not name or any(c.isspace() for c in name):
            return "give a short name without spaces (it names the key in `yktool keys list`)"
        if taken and name == taken:
            return f"{name} is the first key's name: the backup needs another"
        return None

    return check
