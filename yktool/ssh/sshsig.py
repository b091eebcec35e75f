"""SSHSIG signatures (PROTOCOL.sshsig) made by a security key (PROTOCOL.u2f "SSH U2F signatures").

How an sk signature comes about (openssh-portable sshsig.c, ssh-sk.c, ssh-ed25519-sk.c):
- the *signed data* is `"SSHSIG" | string namespace | string reserved | string hash_alg |
  string H(message)`;
- the authenticator gets clientDataHash = SHA-256(signed data) and rp id = the key's application,
  and signs `authData | clientDataHash` where authData = SHA-256(application) | flags | counter
  (no extensions);
- OpenSSH wraps that as `string type | string sig | byte flags | uint32 counter`; for ecdsa-sk
  `sig` is `mpint r | mpint s` (the authenticator returns DER), for ed25519-sk the raw 64 bytes.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from yktool.errors import UsageError
from yktool.ssh.keys import ECDSA_SK, ED25519_SK, SkPublicKey, wrap_base64
from yktool.ssh.wire import Reader, mpint, string, u8, u32

MAGIC = b"SSHSIG"
VERSION = 1
BEGIN = "-----BEGIN SSH SIGNATURE-----\n"
END = "-----END SSH SIGNATURE-----\n"
HASHES = {"sha256": hashlib.sha256, "sha512": hashlib.sha512}


def signed_data(namespace: str, message: bytes, hash_alg: str = "sha512") -> bytes:
    """What the SSH signature covers: the SSHSIG preamble, namespace and the message's hash."""
    if not namespace:
        raise UsageError("the signature namespace cannot be empty", "use -n git (or file, …)")
    if hash_alg not in HASHES:
        raise UsageError(f"unknown hash {hash_alg}", "use sha512 or sha256")
    digest = HASHES[hash_alg](message).digest()
    return MAGIC + string(namespace) + string(b"") + string(hash_alg) + string(digest)


def client_data_hash(data: bytes) -> bytes:
    """The clientDataHash OpenSSH's middleware hands the authenticator (fido_assert_set_clientdata)."""
    return hashlib.sha256(data).digest()


def sk_signature(key: SkPublicKey, authenticator_signature: bytes, flags: int, counter: int) -> bytes:
    """The SSH signature blob of a security key from what getAssertion returned."""
    if key.key_type == ED25519_SK:
        if len(authenticator_signature) != 64:
            raise UsageError("Ed25519 signature from the key is not 64 bytes", "the key answered oddly; retry")
        inner = authenticator_signature
    else:
        try:
            r, s = decode_dss_signature(authenticator_signature)
        except ValueError:
            raise UsageError("ECDSA signature from the key is not valid DER", "the key answered oddly; retry") from None
        inner = mpint(r) + mpint(s)
    return string(key.key_type) + string(inner) + u8(flags) + u32(counter)


@dataclass(frozen=True)
class SkSignature:
    key_type: str
    signature: bytes  # raw 64 bytes (ed25519) or `mpint r | mpint s` (ecdsa)
    flags: int
    counter: int

    @classmethod
    def parse(cls, blob: bytes) -> SkSignature:
        reader = Reader(blob, "sk signature")
        out = cls(reader.text(), reader.string(), reader.u8(), reader.u32())
        reader.done()
        return out


def sshsig_blob(key: SkPublicKey, namespace: str, signature: bytes, hash_alg: str = "sha512") -> bytes:
    """The SSHSIG blob (PROTOCOL.sshsig §2)."""
    return (
        MAGIC
        + u32(VERSION)
        + string(key.blob())
        + string(namespace)
        + string(b"")
        + string(hash_alg)
        + string(signature)
    )


def armor(blob: bytes) -> bytes:
    """The armored form `ssh-keygen -Y sign` writes (sshsig_armor: 70-column base64)."""
    return (BEGIN + wrap_base64(blob) + END).encode("ascii")


@dataclass(frozen=True)
class Sshsig:
    public_key: SkPublicKey
    namespace: str
    hash_alg: str
    signature: SkSignature


def parse_armored(data: bytes) -> Sshsig:
    """Read an armored SSHSIG made by an sk key (used by tests and `ssh sign`'s self-check)."""
    text = data.decode("ascii", "replace")
    if not text.startswith(BEGIN.rstrip("\n")) or END.rstrip("\n") not in text:
        raise UsageError("not an armored SSH signature", "give the .sig file ssh-keygen or yktool wrote")
    inner = text[len(BEGIN) : text.index(END.rstrip("\n"))]
    try:
        blob = base64.b64decode("".join(inner.split()), validate=True)
    except (binascii.Error, ValueError):
        raise UsageError("SSH signature is not valid base64", "the signature is damaged") from None
    reader = Reader(blob, "SSH signature")
    if reader.raw(6) != MAGIC or reader.u32() != VERSION:
        raise UsageError("not an SSHSIG version 1 signature", "the signature is damaged")
    key = SkPublicKey.from_blob(reader.string())
    namespace = reader.text()
    reader.string()
    hash_alg = reader.text()
    sig = SkSignature.parse(reader.string())
    reader.done()
    if sig.key_type not in (ED25519_SK, ECDSA_SK):
        raise UsageError(f"signature type {sig.key_type} is not a security-key type", "the signature is damaged")
    return Sshsig(key, namespace, hash_alg, sig)
