"""Checks for the wizard's answers, run as each one is typed (questionary `validate=`): each
returns None when the answer is fine, else what is wrong in one short line (questionary shows
it on the bottom line of the terminal: 80 columns), with what to type instead where it helps. The
questions name the root ("as the root sees them, inside ROOT"); the answers are paths inside it."""

from __future__ import annotations

import re
from collections.abc import Callable

from yktool.errors import YktoolError
from yktool.host import Host

Check = Callable[[str], "str | None"]

# one address: something@domain.tld, no spaces, commas or quotes (allowed_signers principals)
EMAIL = re.compile(r"[^@\s,\"']+@[^@\s,\"']+\.[^@\s,\"'.]+")


def _not_found(host: Host, path: str, what: str) -> str:
    """A path typed as this machine sees it (it starts with the root): say what to type instead."""
    root = str(host.root).rstrip("/")
    if root and path.startswith(root + "/"):
        return f"not inside the root: type it as the root sees it: {path[len(root) :]}"
    return f"{path}: no such {what} inside the root" if root else f"{path}: no such {what}"


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
            return _not_found(host, path, "file")
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
                return _not_found(host, dev, "device or image")
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
        except YktoolError:
            return f"no user {name.strip()} in the root's /etc/passwd: the user must exist there"
        return None

    return check


def email(text: str) -> str | None:
    if EMAIL.fullmatch(text.strip()) is None:
        return f"{text.strip() or '(empty)'}: does not look like an email address (name@example.org)"
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
