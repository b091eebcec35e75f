"""The agenix side of the module: the encrypted authfile in the tree's secrets folder, and its
secrets.nix entry (printed, or a diff against the tree's own secrets.nix).

The authfile yktool keeps is the one the pam_u2f steps wrote (the registry names it). In a
flake whose secrets live elsewhere (`nix-secrets/secrets/` in the NixOS configuration the
hardening checklist comes from, docs/verify.md), the module points
at `<that folder>/<name>.age`: yktool writes it there, encrypted to this host's key only (per-host
scoping), and leaves it alone while it still decrypts to the same authfile.
"""

from __future__ import annotations

import difflib
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from yktool import agefile, nix
from yktool.errors import Refused, UsageError
from yktool.host import Host
from yktool.nixos import tree

HOST_KEY = "/etc/ssh/ssh_host_ed25519_key.pub"


@dataclass
class AgeResult:
    path: Path  # the .age the module points at
    written: bool  # it is (to be) written there
    recipient: agefile.Recipient
    entry: str  # the secrets.nix entry (one binding)
    diff: str = ""  # against the tree's secrets.nix, when it has one ("" = nothing to change)
    secrets_nix: Path | None = None
    source: Path | None = None  # the registry's authfile it is made from
    identity: agefile.Identities | None = None


def host_recipient(host: Host, pub: str) -> agefile.Recipient:
    """This host's key (the one agenix decrypts with at boot), from the root."""
    if not host.exists(pub):
        raise UsageError(
            f"the host key {pub} is not in {host.root}",
            "pass --age-host-key with the host's ssh_host_ed25519_key.pub inside the root",
        )
    recipients = agefile.parse_recipients_text(host.read_text(pub), source=pub)
    if len(recipients) != 1 or recipients[0].kind != "ssh-ed25519":
        raise UsageError(f"{pub} is not one ssh-ed25519 host key", "name the host's ssh_host_ed25519_key.pub")
    return recipients[0]


def host_identity(host: Host, pub: str, age_identity: Path | None) -> agefile.Identities | None:
    """What decrypts the authfile here: --age-identity (a local path), else the host key's
    private half inside the root."""
    if age_identity is not None:
        try:
            data = age_identity.read_bytes()
        except OSError as exc:
            raise UsageError(
                f"--age-identity {age_identity}: {exc.strerror}",
                "name a private key of one of the age file's recipients",
            ) from None
        return agefile.parse_identities(data, source=str(age_identity))
    private = pub.removesuffix(".pub")
    if private != pub and host.exists(private):
        return agefile.parse_identities(host.read_bytes(private), source=private)
    return None


def checkout_owner(path: Path) -> tuple[int, int] | None:
    """Files yktool puts into a person's checkout belong to the checkout's owner (the nearest
    existing folder's), not to root: they commit and edit them."""
    if os.geteuid() != 0:
        return None
    folder = path.parent
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    st = folder.stat()
    return (st.st_uid, st.st_gid) if st.st_uid != 0 else None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise UsageError(
            f"the agenix authfile {path} (named by the registry) does not exist",
            "register a key into it first: yktool pam register --age-file …",
        ) from None
    except OSError as exc:
        raise UsageError(f"{path}: {exc.strerror}", "check the path and its permissions") from None


def _credentials(text: bytes) -> set[tuple[str, bytes]]:
    from yktool.pam.authfile import Authfile

    af = Authfile.parse(text.decode("utf-8", "surrogateescape"))
    return {(user, c.identity) for user in af.users() for c in af.credentials_of(user)}


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def place(
    source: Path,
    target: Path,
    recipient: agefile.Recipient,
    identity: agefile.Identities | None,
    ours: str = "",
    dry_run: bool = False,
) -> bool:
    """Make `target` the authfile of `source`, encrypted to `recipient`; True when written (with
    `dry_run`: when it would be).

    `ours` is the digest of the copy yktool wrote there last: a file that is not that copy (the
    tree's own, or edited since) is overwritten only when the registry's authfile holds every
    credential it holds, so no one's key is dropped from it."""
    data = _read(source)
    tag = agefile.ssh_tag(recipient)
    if source.resolve() == target.resolve():
        tags, _x = agefile.header_recipients(data)
        if tag not in tags:
            raise UsageError(
                f"{source} is not encrypted to this host's key: agenix could not decrypt it at boot",
                "register the keys again with --age-host-key naming this host's key",
            )
        return False
    if identity is None:
        raise UsageError(
            f"copying {source} to {target} needs it decrypted, and no identity was found",
            "pass --age-identity PATH (a private key of one of its recipients), or run where "
            "the root holds the host's private key",
        )
    plain = agefile.decrypt(data, identity, what=str(source))
    if target.is_file():
        old = target.read_bytes()
        tags, x25519 = agefile.header_recipients(old)
        try:
            old_plain: bytes | None = agefile.decrypt(old, identity, what=str(target))
        except UsageError:
            old_plain = None
        if old_plain == plain and tags == [tag] and x25519 == 0:
            return False  # age output is randomised: rewriting an equal file only makes noise in git
        if digest(old) != ours:
            if old_plain is None:
                raise Refused(
                    f"{target} exists, is not the copy yktool wrote, and {identity.source} cannot "
                    "decrypt it: it is not overwritten",
                    "move it away, or pass --age-identity with a key that reads it",
                )
            dropped = _credentials(old_plain) - _credentials(plain)
            if dropped:
                users = ", ".join(sorted({u for u, _c in dropped}))
                raise Refused(
                    f"{target} holds {len(dropped)} pam_u2f credential(s) ({users}) that the "
                    f"registry's authfile {source} does not: writing it would drop them",
                    f"register those keys into {source} (yktool pam register --age-file), or move "
                    f"{target} away, then run again",
                )
    if dry_run:
        return True
    encrypted = agefile.encrypt(plain, [recipient])
    owner = checkout_owner(target)
    # through the walk, never .resolve() or chown by path: as root in a person's checkout, a link
    # of theirs would otherwise send the write (or the chown) anywhere
    local = Host(Path("/"))
    if not local.exists(str(target.parent.absolute())):  # a new secrets/ folder: the owner's too
        local.mkdir(str(target.parent.absolute()), 0o755, owner)
    local.write_file(str(target.absolute()), encrypted, 0o644, owner=owner, backup=False)
    if agefile.decrypt(target.read_bytes(), identity, what=str(target)) != plain:
        raise UsageError(f"{target} does not decrypt to the authfile after writing", "run the command again")
    return True


# ---------------------------------------------------------------------------- secrets.nix
def _key_binding(nf: tree.NixFile, recipient: agefile.Recipient) -> str | None:
    """The name a `let` binding gives this host's key in secrets.nix, if it has one."""
    for b in nf.bindings:
        if len(b.path) == 2 and b.path[0] == "<let>" and b.string and " ".join(b.string.split()[:2]) == recipient.text:
            return b.path[1]
    return None


def uses_nodes(secrets_nix: Path) -> bool:
    """Per-host scoping as the checklist's NixOS configuration does it: entries with a `nodes`
    attribute (filterByNodes)."""
    try:
        nf = tree.parse(secrets_nix.read_text("utf-8", "surrogateescape"))
    except (OSError, tree.NixSyntaxError):
        return False
    return any(len(b.path) == 2 and b.path[1] == "nodes" for b in nf.bindings)


def entry_name(nf: tree.NixFile | None, secret: str) -> str:
    """`<secret>.age` as agenix's CLI names entries, or `<secret>` where the tree's entries
    carry no suffix (as the checklist's configuration does: `"smtp-password".publicKeys`)."""
    names = [b.path[0] for b in nf.bindings if len(b.path) == 2 and b.path[1] == "publicKeys"] if nf else []
    if names and not any(n.endswith(".age") for n in names):
        return secret
    return f"{secret}.age"


def secrets_entry(
    secret: str, recipient: agefile.Recipient, secrets_nix: Path | None, shown: str = "secrets.nix"
) -> tuple[str, str]:
    """(the entry, a unified diff for `secrets_nix` or "") with publicKeys = this host's key only."""
    nf = None
    text = ""
    if secrets_nix is not None:
        text = secrets_nix.read_text("utf-8", "surrogateescape")
        try:
            nf = tree.parse(text)
        except tree.NixSyntaxError:
            nf = None
    name = entry_name(nf, secret)
    key = (_key_binding(nf, recipient) if nf else None) or nix.string(recipient.text)
    keys = f"[ {key} ]"
    entry = f"{nix.string(name)}.publicKeys = {keys};"
    if nf is None or secrets_nix is None:
        return entry, ""
    new = text
    existing = [b for b in nf.bindings if len(b.path) == 2 and b.path == (name, "publicKeys")]
    if existing:
        b = existing[0]
        nested = not text[b.start : b.end].lstrip().startswith(('"', name))
        replacement = f"publicKeys = {keys};" if nested else entry
        new = text[: b.start] + replacement + text[b.end :]
    elif nf.top_braces:
        close = nf.toks[nf.top_braces[-1][1]].start
        line_start = text.rfind("\n", 0, close) + 1
        indent = "  " if text[line_start:close].strip() == "" else ""
        new = (
            text[:line_start] + f"{indent}{entry}\n" + text[line_start:]
            if indent
            else text[:close] + f"  {entry}\n" + text[close:]
        )
    if new == text:
        return entry, ""
    diff = "".join(
        difflib.unified_diff(text.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{shown}", f"b/{shown}")
    )
    return entry, diff
