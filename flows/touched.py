"""The files a flow's plan will read or write, refused whole before its first step when one
passes through a link a user controls (issue 12: one plan, checked whole, then acted on).

Each step refuses such a link itself (Host's fd walk, `refuse_user_links`), but a step late in
the plan refusing means the earlier ones already acted: replace had wiped the lost key's LUKS
keyslot and dropped its pam_u2f credential before its revoke step met `~/.ssh/revoked_signers`
linked to /etc/shadow. So the plan check walks every one of these paths first; a missing file
is fine (it is made later, through the same walk).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from yktool.errors import YktoolError
from yktool.host import Host
from yktool.ssh.accounts import refuse_user_links

if TYPE_CHECKING:
    from .commission import Commission
    from .replace import Replace


def refuse_links(host: Host, paths: Iterable[str | PurePosixPath]) -> None:
    """UnsafeLink (exit 4, naming the link) for the first path a user's link stands on."""
    for path in dict.fromkeys(str(p) for p in paths if str(p).startswith("/")):
        try:
            refuse_user_links(host, path)
        except PermissionError:
            continue  # not root: the step that reads it says so (links are the kernel's concern then)


def _account(host: Host, user: str) -> Any:
    from yktool.ssh.accounts import lookup_user

    try:
        return lookup_user(host, user)
    except YktoolError:
        return None  # no such user: the step that needs one says so


def _root_files(host: Host, unlock_key_file: str) -> Iterator[str]:
    from yktool import udev, usbguard
    from yktool.inventory import REGISTRY_PATH

    yield from (REGISTRY_PATH, udev.RULE_PATH, usbguard.RULES_PATH)
    if unlock_key_file:
        yield unlock_key_file


def replace_files(flow: Replace) -> Iterator[str | PurePosixPath]:
    """What a replace run reads or writes inside the root: authfiles, the lost keys' SSH files
    and the new key's, authorized_keys, allowed_signers, git config and revocation file, the
    registry and rules."""
    from yktool.inventory import Registry
    from yktool.ssh.enroll import pub_path

    from .replace import REVOKED_FILE, signer_files

    host = flow.host
    yield from _root_files(host, flow.answers.unlock_key_file)
    for f in flow.lost("pam"):
        if not f.age:  # an age file is the operator's, outside the root
            yield f.where
    registry = Registry.load(host)
    for k in registry.keys:
        if k.nickname in flow.lost_names:
            yield from (
                str(e["path"]) for e in k.enrollments if e.get("kind") == "usbguard" and isinstance(e.get("path"), str)
            )
    for f in flow.lost("ssh"):
        yield from (f.where, pub_path(PurePosixPath(f.where)))
        yield from (path for path, _user in flow.ssh_places(f))
        account = _account(host, f.user)
        if account is None:
            continue
        if flow.has_new:
            yield flow.new_authorized_keys(f.user)
        yield from signer_files(registry, account)  # the lost key's line is expired in each
        for _k, e in registry.enrollments("git"):
            if str(e.get("public_key", "")) == f.public_key:
                yield from (str(e.get("allowed_signers") or ""), str(e.get("config_file") or ""))
                yield from (account.home / ".gitconfig", account.home / REVOKED_FILE)


def commission_files(flow: Commission) -> Iterator[str | PurePosixPath]:
    """What a commission run reads or writes inside the root: the SSH key files, authorized_keys,
    allowed_signers and ~/.gitconfig of the user, the authfile, the registry and rules."""
    from yktool.authorized_keys import authorized_keys_path
    from yktool.git_signing import default_allowed_signers
    from yktool.pam.authfile import CENTRAL_AUTHFILE
    from yktool.ssh.enroll import pub_path

    from .commission import key_path

    answers, host = flow.answers, flow.host
    yield from _root_files(host, answers.unlock_key_file)
    account = _account(host, answers.user) if answers.user else None
    if account is not None and {"ssh", "git"} & set(answers.steps):
        for role in answers.roles:
            path = key_path(answers, role, account.home)
            yield from (path, pub_path(path))
        yield authorized_keys_path(account)
    if account is not None and "git" in answers.steps:
        yield from (default_allowed_signers(account), account.home / ".gitconfig")
    if "pam" in answers.steps and answers.host_kind != "nixos":
        yield CENTRAL_AUTHFILE
