"""OpenSSH security-key (sk) key formats, byte for byte as OpenSSH writes and reads them.

Sources (openssh-portable): PROTOCOL.u2f (key and signature layouts), PROTOCOL.key and
sshkey.c `sshkey_private_to_blob2` (the openssh-key-v1 private file), sk-api.h (flag bits),
ssh-keygen.c `sk_suffix` (names of downloaded resident keys).

The "private" file of an sk key holds no secret: the private key never leaves the
authenticator. It holds the key handle (the FIDO2 credential id), the application (rp id) and
the flags that say whether a signature needs a touch (0x01) or the PIN (0x04).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass, replace

from yktool.errors import UsageError
from yktool.ssh.wire import Reader, string, u8, u32

ED25519_SK = "sk-ssh-ed25519@openssh.com"
ECDSA_SK = "sk-ecdsa-sha2-nistp256@openssh.com"
SK_TYPES = (ED25519_SK, ECDSA_SK)
NISTP256 = "nistp256"

# sk-api.h
FLAG_USER_PRESENCE = 0x01
FLAG_USER_VERIFICATION = 0x04
FLAG_RESIDENT = 0x20

# The short names `ssh-keygen -t` uses, and the label `ssh-keygen -l` prints.
TYPE_NAMES = {"ed25519-sk": ED25519_SK, "ecdsa-sk": ECDSA_SK}
TYPE_LABELS = {ED25519_SK: "ED25519-SK", ECDSA_SK: "ECDSA-SK"}
DEFAULT_FILES = {ED25519_SK: "id_ed25519_sk", ECDSA_SK: "id_ecdsa_sk"}

AUTH_MAGIC = b"openssh-key-v1\0"
PRIVATE_BEGIN = "-----BEGIN OPENSSH PRIVATE KEY-----\n"
PRIVATE_END = "-----END OPENSSH PRIVATE KEY-----\n"
BLOCK_SIZE = 8  # the "none" cipher's block size


def wrap_base64(data: bytes, width: int = 70) -> str:
    """Base64 in lines of `width` (sshbuf_dtob64 with wrap), each line ending in a newline."""
    text = base64.b64encode(data).decode("ascii")
    return "".join(text[i : i + width] + "\n" for i in range(0, len(text), width))


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise UsageError(f"{what} is not valid base64", "the key text is damaged; copy it again") from None


@dataclass(frozen=True)
class SkPublicKey:
    """The public half: type, raw public key (Ed25519: 32 bytes; P-256: 65-byte point), application."""

    key_type: str
    public: bytes
    application: str

    def __post_init__(self) -> None:
        if self.key_type not in SK_TYPES:
            raise UsageError(f"unsupported key type {self.key_type}", "use an ed25519-sk or ecdsa-sk key")
        want = 32 if self.key_type == ED25519_SK else 65
        if len(self.public) != want or (self.key_type == ECDSA_SK and self.public[0] != 4):
            raise UsageError(f"{self.key_type} public key has the wrong size", "the key is damaged")

    # -- encodings
    def blob(self) -> bytes:
        """The public key blob (PROTOCOL.u2f), as in .pub files and authorized_keys."""
        if self.key_type == ED25519_SK:
            return string(self.key_type) + string(self.public) + string(self.application)
        return string(self.key_type) + string(NISTP256) + string(self.public) + string(self.application)

    def base64(self) -> str:
        return base64.b64encode(self.blob()).decode("ascii")

    def line(self, comment: str = "") -> str:
        """`TYPE BASE64 [COMMENT]` without a newline: a .pub file's line, an authorized_keys key."""
        base = f"{self.key_type} {self.base64()}"
        return f"{base} {comment}" if comment else base

    @property
    def fingerprint(self) -> str:
        """`SHA256:…` exactly as `ssh-keygen -l` prints it (base64 without padding)."""
        digest = hashlib.sha256(self.blob()).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")

    @property
    def label(self) -> str:
        return TYPE_LABELS[self.key_type]

    @property
    def bits(self) -> int:
        return 256

    # -- decoding
    @classmethod
    def read(cls, reader: Reader) -> SkPublicKey:
        key_type = reader.text()
        if key_type == ED25519_SK:
            return cls(key_type, reader.string(), reader.text())
        if key_type == ECDSA_SK:
            curve = reader.text()
            if curve != NISTP256:
                raise UsageError(f"{ECDSA_SK} key on curve {curve}", "only nistp256 exists for ecdsa-sk")
            return cls(key_type, reader.string(), reader.text())
        raise UsageError(
            f"not a security-key SSH key: {key_type}",
            "name an sk-ssh-ed25519@openssh.com or sk-ecdsa-sha2-nistp256@openssh.com key",
        )

    @classmethod
    def from_blob(cls, blob: bytes) -> SkPublicKey:
        reader = Reader(blob, "public key blob")
        key = cls.read(reader)
        reader.done()
        return key

    @classmethod
    def parse_line(cls, line: str) -> tuple[SkPublicKey, str]:
        """Parse a .pub line `TYPE BASE64 [COMMENT]`; returns the key and the comment."""
        parts = line.strip().split(None, 2)
        if len(parts) < 2:
            raise UsageError("not an OpenSSH public key line", "give the .pub file of an sk key")
        key = cls.from_blob(_b64decode(parts[1], "public key"))
        if key.key_type != parts[0]:
            raise UsageError(f"key type {parts[0]} does not match its blob ({key.key_type})", "the key is damaged")
        return key, parts[2] if len(parts) > 2 else ""

    @classmethod
    def from_cose(cls, cose: object, application: str) -> SkPublicKey:
        """From python-fido2's CoseKey (EdDSA -8 or ES256 -7) of a credential."""
        if not isinstance(cose, dict):
            raise UsageError("credential public key is not a COSE key", "this is a bug in yktool")
        alg = cose.get(3)
        if alg == -8:
            return cls(ED25519_SK, bytes(cose[-2]), application)
        if alg == -7:
            return cls(ECDSA_SK, b"\x04" + bytes(cose[-2]) + bytes(cose[-3]), application)
        raise UsageError(
            f"credential algorithm {alg} has no OpenSSH sk key type",
            "OpenSSH knows EdDSA (ed25519-sk) and ES256 (ecdsa-sk) only",
        )


@dataclass(frozen=True)
class SkPrivateKey:
    """The key-handle file: public key, flags, key handle (credential id), reserved, comment."""

    public: SkPublicKey
    flags: int
    key_handle: bytes
    comment: str = ""
    reserved: bytes = b""

    def __post_init__(self) -> None:
        if "\n" in self.comment or "\r" in self.comment:
            raise UsageError("a key comment cannot contain a line break", "give a one-line --comment")

    @property
    def touch_required(self) -> bool:
        return bool(self.flags & FLAG_USER_PRESENCE)

    @property
    def verify_required(self) -> bool:
        return bool(self.flags & FLAG_USER_VERIFICATION)

    @property
    def resident(self) -> bool:
        return bool(self.flags & FLAG_RESIDENT)

    def with_comment(self, comment: str) -> SkPrivateKey:
        return replace(self, comment=comment)

    def private_blob(self) -> bytes:
        """sshkey_private_serialize for sk keys: public fields, then flags, handle, reserved."""
        pub = self.public
        head = string(pub.key_type)
        if pub.key_type == ECDSA_SK:
            head += string(NISTP256)
        return (
            head
            + string(pub.public)
            + string(pub.application)
            + u8(self.flags)
            + string(self.key_handle)
            + string(self.reserved)
        )

    def checkint(self) -> int:
        # OpenSSH draws this at random; it only detects a wrong passphrase on encrypted files.
        # Deriving it from the key makes the file a pure function of the key, so `ssh download`
        # can recreate a deleted file byte for byte.
        return int.from_bytes(hashlib.sha256(self.public.blob() + self.key_handle).digest()[:4], "big")

    def to_file(self) -> bytes:
        """The unencrypted openssh-key-v1 file (PROTOCOL.key), armored like ssh-keygen writes it."""
        check = self.checkint()
        section = u32(check) + u32(check) + self.private_blob() + string(self.comment)
        pad = 0
        while len(section) % BLOCK_SIZE:
            pad += 1
            section += u8(pad)
        body = (
            AUTH_MAGIC
            + string("none")
            + string("none")
            + string(b"")
            + u32(1)
            + string(self.public.blob())
            + string(section)
        )
        return (PRIVATE_BEGIN + wrap_base64(body) + PRIVATE_END).encode("ascii")

    def pub_file(self) -> bytes:
        """The .pub file: one line and a newline."""
        return (self.public.line(self.comment) + "\n").encode("utf-8")

    @classmethod
    def from_file(cls, data: bytes, what: str = "private key file") -> SkPrivateKey:
        """Read an unencrypted openssh-key-v1 file holding one sk key."""
        text = data.decode("ascii", "replace").replace("\r\n", "\n")
        start = text.find(PRIVATE_BEGIN)
        end = text.find(PRIVATE_END)
        if start < 0 or end < start:
            raise UsageError(
                f"{what} is not an OpenSSH private key file",
                "name the key file (without .pub) that `yktool ssh keygen` wrote",
            )
        body = _b64decode("".join(text[start + len(PRIVATE_BEGIN) : end].split()), what)
        reader = Reader(body, what)
        if reader.raw(len(AUTH_MAGIC)) != AUTH_MAGIC:
            raise UsageError(f"{what} is not an openssh-key-v1 file", "the file is damaged")
        cipher, kdf = reader.text(), reader.text()
        reader.string()  # kdf options
        if cipher != "none" or kdf != "none":
            raise UsageError(
                f"{what} is passphrase-protected",
                "yktool reads only unprotected sk key files (the key handle is not a secret); "
                "remove the passphrase with `ssh-keygen -p`",
            )
        if reader.u32() != 1:
            raise UsageError(f"{what} holds more than one key", "name a file with one key")
        outer_public = SkPublicKey.from_blob(reader.string())
        section = Reader(reader.string(), what)
        reader.done()
        if section.u32() != section.u32():
            raise UsageError(f"{what}: check bytes differ", "the file is damaged")
        public = SkPublicKey.read(section)
        flags = section.u8()
        key_handle = section.string()
        reserved = section.string()
        comment = section.text()
        pad = section.raw(section.remaining)
        if pad != bytes(range(1, len(pad) + 1)):
            raise UsageError(f"{what}: bad padding", "the file is damaged")
        if public != outer_public:
            raise UsageError(f"{what}: public and private parts differ", "the file is damaged")
        return cls(public, flags, key_handle, comment, reserved)


def sk_suffix(application: str, user_id: bytes) -> str:
    """The file-name suffix `ssh-keygen -K` gives a resident key (ssh-keygen.c sk_suffix)."""
    if application.startswith("ssh://"):
        out = application[len("ssh://") :]
    elif application.startswith("ssh:"):
        out = application[len("ssh:") :]
    else:
        out = application
    user = user_id.rstrip(b"\0")
    if not user:
        return out
    try:
        text = user.decode("utf-8")
        if not text.isprintable():
            raise ValueError
    except ValueError:
        text = user.hex()
    if "/" in text or ".." in text or "\\" in text:
        text = user.hex()
    return f"{out}_{text}" if out else text
