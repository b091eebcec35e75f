"""LUKS2 tokens as systemd writes them, and every other kind kept as it is.

A token is a JSON object in the LUKS2 header that tells an unlocker how to get a keyslot's
passphrase (systemd-tpm2: a TPM-sealed secret; systemd-fido2: a FIDO2 credential and salt;
systemd-recovery: only a marker that the slot holds a recovery key). Known types get typed fields;
unknown ones are kept raw so `luks status` can show them and nothing is lost. A later token type
registers itself with `register_token_type`.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, ClassVar

# The role a keyslot plays, from the token that references it (see `header.Keyslot.role`).
ROLE_PASSWORD = "password"  # noqa: S105 - a role name, not a password
ROLE_RECOVERY = "recovery"
ROLE_TPM2 = "tpm2"
ROLE_FIDO2 = "fido2"
ROLE_PKCS11 = "pkcs11"
# A recovery key an interrupted `add-recovery` made and nobody was shown (see luks.recovery): it
# opens the volume, but no person knows it, so it is no way in for anyone.
ROLE_UNSEEN = "unseen-recovery"

# Roles that need a particular piece of hardware (this machine's TPM, one key) to open the slot.
HARDWARE_ROLES = frozenset({ROLE_TPM2, ROLE_FIDO2, ROLE_PKCS11})
# Roles a person can type in when every piece of hardware is gone.
KNOWLEDGE_ROLES = frozenset({ROLE_PASSWORD, ROLE_RECOVERY})


@dataclass
class Token:
    """A LUKS2 token: its id, type, the keyslots it opens and its JSON as read."""

    id: int
    type: str
    keyslots: list[int]
    raw: dict[str, Any] = field(repr=False)

    # which keyslot role a token of this type gives; subclasses override
    role: ClassVar[str | None] = None

    @property
    def summary(self) -> str:
        """A short human description (subclasses add their fields)."""
        return self.type

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "keyslots": list(self.keyslots), "known": False, "raw": self.raw}


@dataclass
class Tpm2Token(Token):
    """systemd-tpm2: a secret sealed by the TPM to a PCR policy (and optionally a PIN)."""

    pcrs: list[int] = field(default_factory=list)
    pcr_bank: str = "sha256"
    primary_alg: str = "ecc"
    policy_hash: str = ""
    pin: bool = False
    pubkey_pcrs: list[int] = field(default_factory=list)
    has_pubkey: bool = False

    role: ClassVar[str | None] = ROLE_TPM2

    @property
    def summary(self) -> str:
        pcrs = "+".join(str(p) for p in self.pcrs) or "none"
        extra = ", PIN" if self.pin else ""
        if self.has_pubkey:
            extra += f", signed policy on PCRs {'+'.join(str(p) for p in self.pubkey_pcrs)}"
        return f"TPM2, PCRs {pcrs} ({self.pcr_bank}){extra}"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "keyslots": list(self.keyslots),
            "known": True,
            "pcrs": list(self.pcrs),
            "pcr_bank": self.pcr_bank,
            "primary_alg": self.primary_alg,
            "policy_hash": self.policy_hash,
            "pin": self.pin,
            "pubkey_pcrs": list(self.pubkey_pcrs),
            "signed_policy": self.has_pubkey,
        }


@dataclass
class Fido2Token(Token):
    """systemd-fido2: a FIDO2 credential whose hmac-secret output is the slot's passphrase."""

    credential: str = ""
    salt: str = ""
    rp: str = "io.systemd.cryptsetup"
    pin_required: bool = False
    up_required: bool = True
    uv_required: bool = False

    role: ClassVar[str | None] = ROLE_FIDO2

    @property
    def summary(self) -> str:
        needs = [
            n for n, on in (("PIN", self.pin_required), ("touch", self.up_required), ("UV", self.uv_required)) if on
        ]
        return f"FIDO2 (rp {self.rp}; needs {', '.join(needs) or 'nothing'})"

    def to_json(self) -> dict[str, Any]:
        # the credential id is public (it is in the header for anyone to read), the salt too
        return {
            "id": self.id,
            "type": self.type,
            "keyslots": list(self.keyslots),
            "known": True,
            "rp": self.rp,
            "credential": self.credential,
            "pin_required": self.pin_required,
            "up_required": self.up_required,
            "uv_required": self.uv_required,
        }


@dataclass
class RecoveryToken(Token):
    """systemd-recovery: marks a keyslot whose passphrase is a systemd recovery key."""

    role: ClassVar[str | None] = ROLE_RECOVERY

    @property
    def summary(self) -> str:
        return "recovery key"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "type": self.type, "keyslots": list(self.keyslots), "known": True}


@dataclass
class Pkcs11Token(Token):
    """systemd-pkcs11: a smart-card-encrypted passphrase (shown, not managed, by yktool)."""

    role: ClassVar[str | None] = ROLE_PKCS11

    @property
    def summary(self) -> str:
        return f"PKCS#11 ({self.raw.get('pkcs11-uri', '?')})"


def _keyslots(raw: Mapping[str, Any]) -> list[int]:
    out: list[int] = []
    for value in raw.get("keyslots", []) or []:
        try:
            out.append(int(value))
        except (TypeError, ValueError):
            continue  # a malformed entry is not ours to fix; status shows the raw token
    return out


def _int_list(value: object) -> list[int]:
    if not isinstance(value, list):
        return []
    return [v for v in value if isinstance(v, int) and not isinstance(v, bool)]


def _tpm2(token_id: int, raw: dict[str, Any]) -> Token:
    return Tpm2Token(
        id=token_id,
        type=str(raw.get("type")),
        keyslots=_keyslots(raw),
        raw=raw,
        pcrs=_int_list(raw.get("tpm2-pcrs")),
        pcr_bank=str(raw.get("tpm2-pcr-bank", "sha256")),
        primary_alg=str(raw.get("tpm2-primary-alg", "ecc")),
        policy_hash=str(raw.get("tpm2-policy-hash", "")),
        pin=bool(raw.get("tpm2-pin", False)),
        pubkey_pcrs=_int_list(raw.get("tpm2_pubkey_pcrs", raw.get("tpm2-pubkey-pcrs"))),
        has_pubkey=bool(raw.get("tpm2_pubkey") or raw.get("tpm2-pubkey")),
    )


def _fido2(token_id: int, raw: dict[str, Any]) -> Token:
    return Fido2Token(
        id=token_id,
        type=str(raw.get("type")),
        keyslots=_keyslots(raw),
        raw=raw,
        credential=str(raw.get("fido2-credential", "")),
        salt=str(raw.get("fido2-salt", "")),
        rp=str(raw.get("fido2-rp", "io.systemd.cryptsetup")),
        pin_required=bool(raw.get("fido2-clientPin-required", False)),
        # systemd treats a missing field as "required" for presence (older enrollments)
        up_required=bool(raw.get("fido2-up-required", True)),
        uv_required=bool(raw.get("fido2-uv-required", False)),
    )


def _simple(cls: type[Token]) -> Callable[[int, dict[str, Any]], Token]:
    def make(token_id: int, raw: dict[str, Any]) -> Token:
        return cls(id=token_id, type=str(raw.get("type")), keyslots=_keyslots(raw), raw=raw)

    return make


TOKEN_TYPES: dict[str, Callable[[int, dict[str, Any]], Token]] = {
    "systemd-tpm2": _tpm2,
    "systemd-fido2": _fido2,
    "systemd-recovery": _simple(RecoveryToken),
    "systemd-pkcs11": _simple(Pkcs11Token),
}


def register_token_type(type_name: str, parser: Callable[[int, dict[str, Any]], Token]) -> None:
    """Teach `parse_token` a token type (a later module may refine a systemd one)."""
    TOKEN_TYPES[type_name] = parser


def parse_token(token_id: int, raw: dict[str, Any]) -> Token:
    """A typed token for a known type; a plain `Token` (raw JSON kept) for any other."""
    parser = TOKEN_TYPES.get(str(raw.get("type")))
    if parser is None:
        return Token(id=token_id, type=str(raw.get("type", "?")), keyslots=_keyslots(raw), raw=raw)
    try:
        return parser(token_id, raw)
    except (TypeError, ValueError, AttributeError):
        # a damaged token of a known type is shown raw rather than hiding the whole header
        return Token(id=token_id, type=str(raw.get("type", "?")), keyslots=_keyslots(raw), raw=raw)
