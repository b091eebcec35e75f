"""age encryption for agenix secrets (pyrage), and the `secrets.nix` entry that goes with them.

Recipients are what agenix accepts for a host or an admin: an OpenSSH `ssh-ed25519` public key
(the host key, `/etc/ssh/ssh_host_ed25519_key.pub`) or an age X25519 recipient (`age1…`).
Identities are the matching private halves: an unencrypted OpenSSH ed25519 private key or an age
identity file (`AGE-SECRET-KEY-1…` lines). Files encrypted here are read back by the real `age`
command and by agenix unchanged (binary age format, the whole plaintext in one file).
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import pyrage

from yktool import nix
from yktool.errors import UsageError

RECIPIENT_HINT = (
    "give an `ssh-ed25519 AAAA…` public key (e.g. the host's "
    "/etc/ssh/ssh_host_ed25519_key.pub) or an age recipient `age1…`"
)


@dataclass(frozen=True)
class Recipient:
    """One age recipient, normalised: `ssh-ed25519 AAAA…` (no comment) or `age1…`."""

    kind: str  # "ssh-ed25519" | "x25519"
    text: str
    comment: str = ""

    def to_json(self) -> dict[str, str]:
        return {"kind": self.kind, "recipient": self.text, "comment": self.comment}

    def _pyrage(self) -> Any:
        if self.kind == "ssh-ed25519":
            return pyrage.ssh.Recipient.from_str(self.text)
        return pyrage.x25519.Recipient.from_str(self.text)


def parse_recipient(text: str, *, source: str = "recipient") -> Recipient:
    """A recipient from its text; anything but ssh-ed25519 or age1… is a UsageError."""
    words = text.strip().split()
    if not words:
        raise UsageError(f"{source}: empty recipient", RECIPIENT_HINT)
    if words[0].startswith("age1") and len(words) == 1:
        try:
            pyrage.x25519.Recipient.from_str(words[0])
        except Exception:  # noqa: BLE001 - pyrage raises its own RecipientError/ValueError
            raise UsageError(f"{source}: {words[0][:16]}… is not a valid age recipient", RECIPIENT_HINT) from None
        return Recipient("x25519", words[0])
    if words[0] == "ssh-ed25519" and len(words) >= 2:
        normalised = f"ssh-ed25519 {words[1]}"
        try:
            blob = base64.b64decode(words[1], validate=True)
            pyrage.ssh.Recipient.from_str(normalised)
        except Exception:  # noqa: BLE001
            raise UsageError(f"{source}: not a valid ssh-ed25519 public key", RECIPIENT_HINT) from None
        if b"ssh-ed25519" not in blob[:20]:
            raise UsageError(f"{source}: key type and key blob disagree", RECIPIENT_HINT)
        return Recipient("ssh-ed25519", normalised, " ".join(words[2:]))
    kind = words[0] if len(words[0]) < 40 else words[0][:12] + "…"
    raise UsageError(
        f"{source}: recipient type {kind!r} is not supported (only ssh-ed25519 and age X25519)", RECIPIENT_HINT
    )


def parse_recipients_text(text: str, *, source: str) -> list[Recipient]:
    """Every recipient in a `.pub` / recipients file (blank lines and `#` comments skipped)."""
    out = [
        parse_recipient(line, source=f"{source}:{n}")
        for n, line in enumerate(text.splitlines(), 1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not out:
        raise UsageError(f"{source}: no recipient in the file", RECIPIENT_HINT)
    return out


def encrypt(plaintext: bytes, recipients: list[Recipient]) -> bytes:
    """The age file (binary format) for `recipients`."""
    if not recipients:
        raise UsageError("no age recipient given", RECIPIENT_HINT)
    try:
        data: bytes = pyrage.encrypt(plaintext, [r._pyrage() for r in recipients])
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"age encryption failed: {exc}", RECIPIENT_HINT) from None
    return data


@dataclass
class Identities:
    """Identities loaded from one file (never printed; `source` names the file only)."""

    source: str
    items: list[Any]


def parse_identities(data: bytes, *, source: str) -> Identities:
    """An OpenSSH ed25519 private key, or an age identity file, from its bytes."""
    text = data.decode("utf-8", "replace")
    if "-----BEGIN OPENSSH PRIVATE KEY-----" in text:
        try:
            return Identities(source, [pyrage.ssh.Identity.from_buffer(data)])
        except Exception as exc:  # noqa: BLE001
            reason = "it is passphrase-protected" if "decrypted" in str(exc) else "unsupported key"
            raise UsageError(
                f"{source}: cannot use this SSH private key as an age identity ({reason})",
                "use an unencrypted ssh-ed25519 key (the host key) or an age "
                "identity file; `age -d` can also decrypt by hand",
            ) from None
    keys = [ln.strip() for ln in text.splitlines() if ln.strip().startswith("AGE-SECRET-KEY-1")]
    items = []
    for key in keys:
        try:
            items.append(pyrage.x25519.Identity.from_str(key))
        except Exception:  # noqa: BLE001
            raise UsageError(f"{source}: an AGE-SECRET-KEY line is not valid", "check the identity file") from None
    if not items:
        raise UsageError(
            f"{source}: no identity found (neither an OpenSSH private key nor AGE-SECRET-KEY lines)",
            "name the ssh-ed25519 private key or age identity file that matches one of the file's recipients",
        )
    return Identities(source, items)


def decrypt(ciphertext: bytes, identities: Identities, *, what: str) -> bytes:
    """Decrypt an age file; a non-matching identity is a UsageError naming both files."""
    try:
        data: bytes = pyrage.decrypt(ciphertext, identities.items)
    except Exception as exc:  # noqa: BLE001 - DecryptError and friends
        if "No matching keys" in str(exc) or "no matching" in str(exc).lower():
            raise UsageError(
                f"{what}: the identity {identities.source} is not one of its recipients",
                "use the private key of a recipient the file was encrypted to "
                "(e.g. the host key, or your admin age identity)",
            ) from None
        raise UsageError(
            f"{what}: not a readable age file ({exc})", "check that it is the right file and not truncated"
        ) from None
    return data


def secrets_nix_entry(name: str, recipients: list[Recipient]) -> str:
    """`"yubikey-auth.age".publicKeys = [ "ssh-ed25519 …" "age1…" ];` for secrets.nix."""
    return f"{nix.string(name)}.publicKeys = {nix.string_list([r.text for r in recipients])};"


def ssh_tag(recipient: Recipient) -> str | None:
    """The 4-byte tag age writes in an ssh-ed25519 stanza (SHA-256 of the key blob, base64)."""
    if recipient.kind != "ssh-ed25519":
        return None
    import hashlib

    blob = base64.b64decode(recipient.text.split()[1])
    return base64.b64encode(hashlib.sha256(blob).digest()[:4]).decode().rstrip("=")


def header_recipients(data: bytes) -> tuple[list[str], int]:
    """What an age file's header says about its recipients: the ssh-ed25519 tags, and how many
    X25519 stanzas (those are anonymous). Grease and other stanzas are ignored."""
    tags: list[str] = []
    x25519 = 0
    if not data.startswith(b"age-encryption.org/v1\n"):
        return tags, x25519
    for line in data.split(b"\n")[1:]:
        if line.startswith(b"---"):
            break
        if line.startswith(b"-> "):
            words = line[3:].decode("ascii", "replace").split()
            if words[:1] == ["ssh-ed25519"] and len(words) >= 2:
                tags.append(words[1])
            elif words[:1] == ["X25519"]:
                x25519 += 1
    return tags, x25519
