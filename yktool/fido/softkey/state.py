"""The software key's persistent state and its credential wrapping.

The state lives in one JSON file (the PATH of `--device sim:PATH`), written atomically: a
temporary file in the same folder, created mode 0600, fsync'd, renamed over the old one, then
the folder fsync'd. A kill -9 at any point leaves either the old or the new file, never a torn
one. Every CTAP command re-reads the file under an advisory lock, so several processes (each
CLI run opens the key anew) see one consistent key, like one real key plugged in between
commands.

Non-discoverable credentials are not stored at all: their credential ID is the private key
wrapped with AES-256-GCM under a key derived from the per-device secret, with the rpIdHash as
associated data (so an ID only opens for its own RP). Discoverable ones use the same kind of ID
and additionally keep their RP and user entity in the state file.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import secrets
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from fido2 import cbor
from fido2.cose import ES256, CoseKey, EdDSA
from fido2.utils import hmac_sha256

STATE_VERSION = 1
MAX_PIN_RETRIES = 8
MAX_RESIDENT = 25  # discoverable credentials the state holds at most
ID_VERSION = 0x01
_NONCE_LEN = 12


class StateError(OSError):
    """The state file is missing, unreadable or not a software-key state. An OSError, because
    for python-fido2's callers a state file gone mid-session is a key that went away."""


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _unb64(text: Any) -> bytes:
    if not isinstance(text, str):
        raise StateError("expected a base64 string")
    return base64.b64decode(text, validate=True)


@dataclass
class ResidentCred:
    """A discoverable credential: its ID (which carries the key) plus the entities."""

    credential_id: bytes
    rp_id: str
    rp_name: str | None
    user_id: bytes
    user_name: str | None
    display_name: str | None
    created: int

    def to_json(self) -> dict[str, Any]:
        return {
            "credential_id": _b64(self.credential_id),
            "rp_id": self.rp_id,
            "rp_name": self.rp_name,
            "user_id": _b64(self.user_id),
            "user_name": self.user_name,
            "display_name": self.display_name,
            "created": self.created,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ResidentCred:
        return cls(
            credential_id=_unb64(data["credential_id"]),
            rp_id=str(data["rp_id"]),
            rp_name=data.get("rp_name"),
            user_id=_unb64(data["user_id"]),
            user_name=data.get("user_name"),
            display_name=data.get("display_name"),
            created=int(data["created"]),
        )


@dataclass
class SoftKeyState:
    """Everything a real key keeps in flash (plus the "power-up" time of the simulation)."""

    device_id: bytes
    secret: bytes
    pin_hash: bytes | None = None
    pin_retries: int = MAX_PIN_RETRIES
    # Wrong PINs since the last "power-up": a real key keeps this in RAM while it stays plugged
    # in; each CLI run opens the file anew, so it is persisted and only replug() clears it.
    pin_fails_in_a_row: int = 0
    counter: int = 0
    power_up: float = field(default_factory=time.time)
    creds: list[ResidentCred] = field(default_factory=list)
    sequence: int = 0

    @classmethod
    def new(cls, device_id: bytes | None = None) -> SoftKeyState:
        """A factory-fresh key (a reset keeps the device id: the serial does not change)."""
        return cls(device_id=device_id or secrets.token_bytes(16), secret=secrets.token_bytes(32))

    def to_json(self) -> dict[str, Any]:
        return {
            "format": "yktool-softkey",
            "version": STATE_VERSION,
            "device_id": _b64(self.device_id),
            "secret": _b64(self.secret),
            "pin_hash": _b64(self.pin_hash) if self.pin_hash is not None else None,
            "pin_retries": self.pin_retries,
            "pin_fails_in_a_row": self.pin_fails_in_a_row,
            "counter": self.counter,
            "power_up": self.power_up,
            "sequence": self.sequence,
            "credentials": [c.to_json() for c in self.creds],
        }

    @classmethod
    def from_json(cls, data: Any) -> SoftKeyState:
        if not isinstance(data, dict) or data.get("format") != "yktool-softkey":
            raise StateError("not a yktool software-key state file")
        if data.get("version") != STATE_VERSION:
            raise StateError(f"unsupported software-key state version {data.get('version')!r}")
        try:
            state = cls(
                device_id=_unb64(data["device_id"]),
                secret=_unb64(data["secret"]),
                pin_hash=_unb64(data["pin_hash"]) if data.get("pin_hash") is not None else None,
                pin_retries=int(data["pin_retries"]),
                pin_fails_in_a_row=int(data["pin_fails_in_a_row"]),
                counter=int(data["counter"]),
                power_up=float(data["power_up"]),
                sequence=int(data.get("sequence", 0)),
                creds=[ResidentCred.from_json(c) for c in data.get("credentials", [])],
            )
        except (KeyError, TypeError, ValueError) as e:
            raise StateError(f"malformed software-key state ({type(e).__name__}: {e})") from None
        if len(state.secret) != 32 or len(state.device_id) != 16:
            raise StateError("malformed software-key state (bad secret or device id length)")
        return state

    # -- derived keys
    def _derive(self, info: bytes) -> bytes:
        return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=info).derive(self.secret)

    def wrap_key(self) -> bytes:
        return self._derive(b"yktool softkey: credential wrap")

    def cred_random(self, credential_id: bytes, uv: bool) -> bytes:
        """hmac-secret's CredRandom: one per credential and per UV state (spec: two secrets)."""
        base = self._derive(b"yktool softkey: hmac-secret")
        return hmac_sha256(base, (b"uv:" if uv else b"no-uv:") + credential_id)


# -- file I/O


def load_state(path: Path) -> SoftKeyState:
    """Read the state file; StateError when it is missing or malformed."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StateError(f"no software-key state at {path}") from None
    except OSError as e:
        raise StateError(f"cannot read {path}: {e.strerror}") from None
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise StateError(f"{path} is not a software-key state file (not JSON)") from None
    return SoftKeyState.from_json(data)


def save_state(path: Path, state: SoftKeyState) -> None:
    """Replace the state file atomically (old or new after a crash, never torn), mode 0600."""
    data = (json.dumps(state.to_json(), indent=1, sort_keys=True) + "\n").encode()
    folder = path.parent
    # mkstemp creates the file 0600 before anything is written into it.
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def remove_stale_temp_files(path: Path) -> None:
    """Delete temporary files a killed writer left behind. Call with the lock held: every
    writer holds it, so no temporary file is in use then."""
    prefix = f".{path.name}."  # as save_state's mkstemp names them (no glob: names may hold [ or *)
    for tmp in path.parent.iterdir():
        if tmp.name.startswith(prefix) and tmp.name.endswith(".tmp"):
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """Serialise read-modify-write of one state file across processes (advisory flock on a
    sibling `.lock` file, because the state file itself is replaced by rename)."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


# -- credential keys and IDs


@dataclass
class CredKey:
    """What a credential ID carries: the private key and the per-credential options."""

    alg: int
    private: bytes
    cred_protect: int
    hmac_secret: bool
    resident: bool

    def signer(self) -> ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey:
        if self.alg == EdDSA.ALGORITHM:
            return ed25519.Ed25519PrivateKey.from_private_bytes(self.private)
        return ec.derive_private_key(int.from_bytes(self.private, "big"), ec.SECP256R1())

    def public_key(self) -> CoseKey:
        key = self.signer()
        # through CoseKey's annotated classmethod (EdDSA's and ES256's overrides carry none)
        kind: type[CoseKey] = EdDSA if isinstance(key, ed25519.Ed25519PrivateKey) else ES256
        return kind.from_cryptography_key(key.public_key())

    def sign(self, message: bytes) -> bytes:
        """ES256: DER ECDSA over SHA-256; EdDSA: the raw 64-byte Ed25519 signature."""
        key = self.signer()
        if isinstance(key, ed25519.Ed25519PrivateKey):
            return key.sign(message)
        return key.sign(message, ec.ECDSA(hashes.SHA256()))

    @classmethod
    def generate(cls, alg: int, cred_protect: int, hmac_secret: bool, resident: bool) -> CredKey:
        if alg == EdDSA.ALGORITHM:
            priv = ed25519.Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
            )
        elif alg == ES256.ALGORITHM:
            priv = ec.generate_private_key(ec.SECP256R1()).private_numbers().private_value.to_bytes(32, "big")
        else:
            raise ValueError(f"unsupported algorithm {alg}")
        return cls(alg, priv, cred_protect, hmac_secret, resident)


def wrap_credential(state: SoftKeyState, rp_id_hash: bytes, key: CredKey) -> bytes:
    """Credential ID = version | nonce | AES-GCM(wrap key, CBOR(key), aad=rpIdHash)."""
    payload = cbor.encode({1: key.alg, 2: key.private, 3: key.cred_protect, 4: key.hmac_secret, 5: key.resident})
    nonce = secrets.token_bytes(_NONCE_LEN)
    return bytes([ID_VERSION]) + nonce + AESGCM(state.wrap_key()).encrypt(nonce, payload, rp_id_hash)


def unwrap_credential(state: SoftKeyState, rp_id_hash: bytes, credential_id: bytes) -> CredKey | None:
    """The key inside `credential_id` if this key made it for this RP, else None."""
    if len(credential_id) < 1 + _NONCE_LEN + 16 or credential_id[0] != ID_VERSION:
        return None
    nonce, ct = credential_id[1 : 1 + _NONCE_LEN], credential_id[1 + _NONCE_LEN :]
    try:
        payload = AESGCM(state.wrap_key()).decrypt(nonce, ct, rp_id_hash)
    except InvalidTag:  # another key's credential, or this key's for another RP
        return None
    data = cbor.decode(payload)
    if not isinstance(data, dict):
        return None
    return CredKey(int(data[1]), bytes(data[2]), int(data[3]), bool(data[4]), bool(data[5]))
