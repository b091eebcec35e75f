"""The LUKS2 header as cryptsetup reads it: version, keyslots, tokens, and which token owns a slot.

`read_header(host, device)` is the one way in. It reads the JSON metadata with
`cryptsetup luksDump --dump-json-metadata` (the consumer's own parser), and the binary header's
first 512 bytes for the version, UUID and label. It never writes.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from yktool.errors import NoDevice, PermissionDenied, UsageError
from yktool.host import Host
from yktool.luks.tokens import (
    HARDWARE_ROLES,
    KNOWLEDGE_ROLES,
    ROLE_PASSWORD,
    Token,
    parse_token,
)

LUKS_MAGIC = b"LUKS\xba\xbe"

CONVERT_HINT = (
    "systemd's TPM2, FIDO2 and recovery tokens need LUKS2. Convert the closed volume after a "
    "header backup: `cryptsetup luksHeaderBackup DEV --header-backup-file HDR.img` then "
    "`cryptsetup convert --type luks2 DEV`"
)


class NotLuks(UsageError):
    """The file or device does not start with a LUKS header."""


class Luks1Device(UsageError):
    """A LUKS1 volume: readable by cryptsetup, but systemd tokens need LUKS2."""


# LUKS2 metadata outside the schema yktool relies on (damaged, or written by a tool that puts
# other shapes where LUKS2 has objects, strings and numbers) is a NotLuks: bad input, exit 2.
DAMAGED_HINT = (
    "check it with `cryptsetup luksDump DEVICE`: if cryptsetup reads it too, a tool wrote "
    "fields yktool does not know (leave the volume as it is and report it); if not, the "
    "header is damaged: restore it from a `cryptsetup luksHeaderBackup` copy"
)


@dataclass
class Keyslot:
    """One keyslot: how its passphrase is stretched, and what (by its tokens) opens it."""

    id: int
    type: str
    key_size: int
    kdf: str
    kdf_hash: str | None = None
    iterations: int | None = None
    time_cost: int | None = None
    memory_kib: int | None = None
    cpus: int | None = None
    priority: int | None = None
    tokens: list[int] = field(default_factory=list)
    role: str = ROLE_PASSWORD

    @property
    def cost(self) -> str:
        """The KDF cost in words, e.g. `1000 iterations` or `time 4, 1048576 KiB, 4 threads`."""
        if self.kdf == "pbkdf2":
            return f"{self.iterations} iterations ({self.kdf_hash})"
        if self.kdf.startswith("argon2"):
            return f"time {self.time_cost}, {self.memory_kib} KiB, {self.cpus} threads"
        return "?"

    @property
    def opens_volume(self) -> bool:
        """False for the reencryption slot, which holds no way in."""
        return self.type == "luks2"

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "type": self.type,
            "key_size": self.key_size,
            "kdf": self.kdf,
            "kdf_hash": self.kdf_hash,
            "iterations": self.iterations,
            "time_cost": self.time_cost,
            "memory_kib": self.memory_kib,
            "cpus": self.cpus,
            "priority": self.priority,
            "tokens": list(self.tokens),
            "role": self.role,
        }


@dataclass
class LuksHeader:
    """A LUKS2 header: `keyslots` and `tokens` by id, each slot's `role` set from its tokens."""

    device: str
    version: int
    uuid: str
    label: str
    keyslots: dict[int, Keyslot]
    tokens: dict[int, Token]
    raw: dict[str, Any] = field(repr=False)

    def tokens_of_type(self, type_name: str) -> list[Token]:
        """The tokens of one type (e.g. `systemd-tpm2`), by id."""
        return [t for _, t in sorted(self.tokens.items()) if t.type == type_name]

    def slots_with_role(self, *roles: str) -> list[int]:
        """Keyslots (that open the volume) whose role is one of `roles`."""
        return sorted(s.id for s in self.keyslots.values() if s.opens_volume and s.role in roles)

    @property
    def usable_slots(self) -> list[int]:
        """Every keyslot that can open the volume."""
        return sorted(s.id for s in self.keyslots.values() if s.opens_volume)

    @property
    def knowledge_slots(self) -> list[int]:
        """Slots a person can open by typing: passphrases and recovery keys."""
        return self.slots_with_role(*KNOWLEDGE_ROLES)

    @property
    def hardware_slots(self) -> list[int]:
        """Slots bound to a piece of hardware (this TPM, one FIDO2 key, a smart card)."""
        return self.slots_with_role(*HARDWARE_ROLES)

    def to_json(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "version": self.version,
            "uuid": self.uuid,
            "label": self.label,
            "keyslots": [s.to_json() for _, s in sorted(self.keyslots.items())],
            "tokens": [t.to_json() for _, t in sorted(self.tokens.items())],
            "slot_tokens": {str(s.id): list(s.tokens) for _, s in sorted(self.keyslots.items())},
        }


def _cstr(data: bytes) -> str:
    return data.split(b"\0", 1)[0].decode("ascii", "replace")


def probe(host: Host, device: str | PurePosixPath) -> tuple[int, str, str]:
    """(LUKS version, UUID, label) from the binary header; raises NoDevice / NotLuks."""
    real = host.path(device)
    if not real.exists():
        raise NoDevice(
            f"{device}: no such file or block device", "check the path (`lsblk -f` lists the LUKS partitions)"
        )
    if real.is_dir():
        raise UsageError(f"{device} is a folder, not a LUKS device or image", "name the device or image file")
    try:
        with open(real, "rb") as fh:
            head = fh.read(512)
    except PermissionError:
        raise PermissionDenied(f"{device}: permission denied", "run as root to read a LUKS header") from None
    if len(head) < 8 or head[:6] != LUKS_MAGIC:
        raise NotLuks(
            f"{device} is not a LUKS device (no LUKS header at its start)",
            "check the path: `lsblk -f` shows which partition has FSTYPE crypto_LUKS",
        )
    version = int.from_bytes(head[6:8], "big")
    if version == 1:
        # LUKS1 header: uuid at offset 168 (40 bytes); no label
        return 1, _cstr(head[168:208]), ""
    # LUKS2 binary header: label at 24 (48 bytes), uuid at 168 (40 bytes)
    return version, _cstr(head[168:208]), _cstr(head[24:72])


def _int(value: object) -> int | None:
    try:
        return int(value)  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return None


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(key: object) -> bool:
    return isinstance(key, str) and key.isascii() and key.isdecimal() and len(key) < 10


def schema_problems(meta: object) -> list[str]:
    """Where the metadata leaves the part of the LUKS2 schema yktool reads (empty: it fits).

    keyslots: {"N": {"type": str, "key_size": int, "kdf": {"type": str, "hash"?: str,
    "iterations"?/"time"?/"memory"?/"cpus"?: int}, "priority"?: int}}; tokens: {"N": {"type": str,
    "keyslots": ["N", ...]}} (a token's own fields are its type's business: a bad one is shown
    raw). Anything else is left alone.
    """
    if not isinstance(meta, dict):
        return [f"the metadata is a JSON {type(meta).__name__}, not an object"]
    problems: list[str] = []
    for section in ("keyslots", "tokens"):
        value = meta.get(section, {})
        if not isinstance(value, dict):
            problems.append(f"{section} is a JSON {type(value).__name__}, not an object")
            continue
        for key, entry in value.items():
            where = f"{section[:-1]} {key!r}"
            if not _is_id(key):
                problems.append(f"{where}: the id is not a number")
            if not isinstance(entry, dict):
                problems.append(f"{where} is a JSON {type(entry).__name__}, not an object")
                continue
            if not isinstance(entry.get("type"), str):
                problems.append(f"{where}: its type is not a string")
            if section == "tokens":
                slots = entry.get("keyslots")
                if not isinstance(slots, list) or not all(_is_id(s) for s in slots):
                    problems.append(f"{where}: keyslots is not a list of keyslot numbers")
                continue
            if not _is_int(entry.get("key_size")):
                problems.append(f"{where}: key_size is not a number")
            if "priority" in entry and not _is_int(entry["priority"]):
                problems.append(f"{where}: priority is not a number")
            kdf = entry.get("kdf")
            if not isinstance(kdf, dict) or not isinstance(kdf.get("type"), str):
                problems.append(f"{where}: kdf is not an object with a type")
                continue
            if "hash" in kdf and not isinstance(kdf["hash"], str):
                problems.append(f"{where}: the kdf hash is not a string")
            for name in ("iterations", "time", "memory", "cpus"):
                if name in kdf and not _is_int(kdf[name]):
                    problems.append(f"{where}: the kdf {name} is not a number")
    return problems


def parse_metadata(device: str, version: int, uuid: str, label: str, meta: dict[str, Any]) -> LuksHeader:
    """Build a LuksHeader from the JSON metadata cryptsetup printed; NotLuks (exit 2, "damaged
    or of an unknown kind") when it is outside the schema `schema_problems` checks."""
    problems = schema_problems(meta)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise NotLuks(
            f"{device}: the LUKS2 metadata is damaged or of an unknown kind: " + "; ".join(problems[:3]) + more,
            DAMAGED_HINT.replace("DEVICE", device),
        )
    tokens: dict[int, Token] = {}
    for key, raw in (meta.get("tokens") or {}).items():
        token_id = _int(key)
        if token_id is not None and isinstance(raw, dict):
            tokens[token_id] = parse_token(token_id, raw)
    keyslots: dict[int, Keyslot] = {}
    for key, raw in (meta.get("keyslots") or {}).items():
        slot_id = _int(key)
        if slot_id is None or not isinstance(raw, dict):
            continue
        kdf = raw["kdf"]
        slot = Keyslot(
            id=slot_id,
            type=str(raw.get("type", "?")),
            key_size=_int(raw.get("key_size")) or 0,
            kdf=str(kdf.get("type", "?")),
            kdf_hash=kdf.get("hash"),
            iterations=_int(kdf.get("iterations")),
            time_cost=_int(kdf.get("time")),
            memory_kib=_int(kdf.get("memory")),
            cpus=_int(kdf.get("cpus")),
            priority=_int(raw.get("priority")),
        )
        slot.tokens = sorted(t.id for t in tokens.values() if slot_id in t.keyslots)
        roles = [tokens[t].role for t in slot.tokens]
        known = [r for r in roles if r]
        if known:
            slot.role = known[0]
        elif slot.tokens:
            # a token yktool does not know: a way in, but neither typed nor one of ours
            slot.role = f"token:{tokens[slot.tokens[0]].type}"
        keyslots[slot_id] = slot
    return LuksHeader(
        device=device, version=version, uuid=uuid, label=label, keyslots=keyslots, tokens=tokens, raw=meta
    )


def read_header(host: Host, device: str | PurePosixPath) -> LuksHeader:
    """Read the LUKS2 header of `device` (a block device or image file inside the root).

    Raises NoDevice (missing), NotLuks, Luks1Device (with how to convert), ToolFailed (no
    cryptsetup). Reads only.
    """
    version, uuid, label = probe(host, device)
    if version == 1:
        raise Luks1Device(
            f"{device} is LUKS1; systemd's TPM2/FIDO2/recovery tokens need LUKS2",
            CONVERT_HINT.replace("DEV", str(device)),
        )
    if version != 2:
        raise NotLuks(f"{device} has an unknown LUKS version {version}", "check the device with `cryptsetup luksDump`")
    real = host.path(device)
    result = host.run(["cryptsetup", "luksDump", "--dump-json-metadata", str(real)], check=False)
    if result.returncode != 0:
        raise NotLuks(
            f"{device}: cryptsetup cannot read the LUKS2 header: {result.error_text or 'no message'}",
            "the header may be damaged; restore it from a `cryptsetup luksHeaderBackup` copy",
        )
    try:
        meta = json.loads(result.stdout)
    except (ValueError, RecursionError):  # not JSON, not UTF-8, or nested beyond reason
        raise NotLuks(
            f"{device}: cryptsetup printed metadata that is not JSON",
            "check `cryptsetup luksDump` by hand; the header may be damaged",
        ) from None
    return parse_metadata(str(device), version, uuid, label, meta)
