"""The key registry: which key (by nickname) was enrolled into what.

A small TOML file under the root, `/etc/yktool/keys.toml` (mode 0644, no secrets: credential
IDs and public keys only). Every enrollment records itself here, so `luks status`, `replace`
and `verify` can say which slot, line or file belongs to which physical key.

    version = 1
    [[keys]]
    nickname = "primary"
    aaguid = "…"
    serial = 12345678          # YubiKeys only
    added = "2026-11-28"
    [[keys.enrollments]]
    kind = "luks"              # luks | ssh | git | pam | udev | usbguard
    credential_id = "base64…"  # where a FIDO2 credential stands behind it
    …                          # kind-specific fields (uuid, keyslot, token, path, fingerprint)
"""

from __future__ import annotations

import contextlib
import datetime
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import tomli_w

from yktool.errors import UsageError, YktoolError
from yktool.host import Host
from yktool.lock import root_lock

REGISTRY_PATH = "/etc/yktool/keys.toml"

Scalar = str | int | bool


@dataclass
class KeyRecord:
    nickname: str
    aaguid: str = ""
    serial: int | None = None
    added: str = ""
    enrollments: list[dict[str, Scalar]] = field(default_factory=list)

    def to_toml(self) -> dict[str, Any]:
        out: dict[str, Any] = {"nickname": self.nickname, "aaguid": self.aaguid, "added": self.added}
        if self.serial is not None:
            out["serial"] = self.serial
        out["enrollments"] = [dict(e) for e in self.enrollments]
        return out

    def credential_ids(self) -> set[str]:
        return {str(e["credential_id"]) for e in self.enrollments if "credential_id" in e}


@dataclass
class Registry:
    keys: list[KeyRecord] = field(default_factory=list)

    # ------------------------------------------------------------------ load / save
    @classmethod
    def load(cls, host: Host) -> Registry:
        """Read the registry; a missing file is an empty registry, a malformed one an error."""
        real = host.path(REGISTRY_PATH)
        if not real.exists():
            return cls()
        try:
            data = tomllib.loads(host.read_text(REGISTRY_PATH))
        except tomllib.TOMLDecodeError as exc:
            raise UsageError(
                f"{REGISTRY_PATH} is not valid TOML: {exc}",
                f"fix the file by hand or restore it from {host.root}/var/backups/yktool/",
            ) from None

        def malformed(what: str) -> UsageError:
            return UsageError(
                f"{REGISTRY_PATH}: {what}", f"fix the file by hand or restore it from {host.root}/var/backups/yktool/"
            )

        raw_keys = data.get("keys", [])
        if not isinstance(raw_keys, list):
            raise malformed("`keys` is not a list of [[keys]] tables")
        keys = []
        for raw in raw_keys:
            if not isinstance(raw, dict) or "nickname" not in raw:
                raise UsageError(f"{REGISTRY_PATH}: a [[keys]] entry has no nickname", "give every key a nickname")
            serial = raw.get("serial")
            enrollments = raw.get("enrollments", [])
            if serial is not None and (not isinstance(serial, int) or isinstance(serial, bool)):
                raise malformed(f"key {raw['nickname']!r}: serial is not a number")
            if not isinstance(enrollments, list) or not all(isinstance(e, dict) for e in enrollments):
                raise malformed(f"key {raw['nickname']!r}: enrollments are not [[keys.enrollments]] tables")
            keys.append(
                KeyRecord(
                    nickname=str(raw["nickname"]),
                    aaguid=str(raw.get("aaguid", "")),
                    serial=serial,
                    added=str(raw.get("added", "")),
                    enrollments=[dict(e) for e in enrollments],
                )
            )
        return cls(keys)

    def save(self, host: Host) -> None:
        body = tomli_w.dumps({"version": 1, "keys": [k.to_toml() for k in self.keys]})
        header = "# yktool key registry: which key was enrolled into what. No secrets here.\n"
        host.write_file(REGISTRY_PATH, header + body, 0o644, backup=False)

    @classmethod
    @contextlib.contextmanager
    def update(cls, host: Host) -> Iterator[Registry]:
        """Load, let the caller change, save, under the root's lock (two enrollments never race).

        A command already holds that lock from its first read; a library caller gets it here."""
        with root_lock(host, "yktool (key registry)"):
            host.mkdir("/etc/yktool", 0o755)
            registry = cls.load(host)
            yield registry
            registry.save(host)

    # ------------------------------------------------------------------ queries and changes
    def get(self, nickname: str) -> KeyRecord | None:
        return next((k for k in self.keys if k.nickname == nickname), None)

    def ensure_key(self, nickname: str, aaguid: str = "", serial: int | None = None) -> KeyRecord:
        key = self.get(nickname)
        if key is None:
            key = KeyRecord(nickname, aaguid, serial, datetime.date.today().isoformat())
            self.keys.append(key)
        else:
            key.aaguid = key.aaguid or aaguid
            key.serial = key.serial if key.serial is not None else serial
        return key

    def record(self, nickname: str, kind: str, **fields: Scalar) -> bool:
        """Add an enrollment to a key unless an identical one is there; True if added."""
        entry: dict[str, Scalar] = {"kind": kind, **fields}
        key = self.ensure_key(nickname)
        if entry in key.enrollments:
            return False
        key.enrollments.append(entry)
        return True

    def record_git(self, nickname: str, fields: dict[str, Scalar]) -> None:
        """Record a git enrollment: one record per key, email and allowed_signers file, and per
        config file the key signs in. Every key with a line yktool wrote stays known (`replace`
        must expire a lost key's line even after another key took over the signing). A config
        file signs with one key: the key that signed there before keeps its record, as only
        accepted (no config_file) in its allowed_signers file."""
        same = ("public_key", "email", "allowed_signers")
        config = fields.get("config_file", "")

        def ours(e: dict[str, Scalar]) -> bool:
            return all(e.get(k) == fields.get(k) for k in same)

        def known_as_accepted(e: dict[str, Scalar]) -> bool:
            return any(
                ours_e is not e and all(ours_e.get(k) == e.get(k) for k in same) and not ours_e.get("config_file")
                for _k, ours_e in self.enrollments("git")
            )

        if not config:
            if any(ours(e) for _k, e in self.enrollments("git")):
                return  # already accepted there (or signing there, which accepts it too)
        for key in self.keys:
            kept: list[dict[str, Scalar]] = []
            for e in key.enrollments:
                if e.get("kind") != "git":
                    kept.append(e)
                elif ours(e) and e.get("config_file") in ("", config):
                    continue  # this key's earlier record for this file and config: replaced
                elif config and e.get("config_file") == config:
                    if not known_as_accepted(e):  # another key signed here: now only accepted
                        kept.append(
                            {k: v for k, v in e.items() if k not in ("config_file", "config_scope")}
                            | {"config_file": ""}
                        )
                else:
                    kept.append(e)
            key.enrollments = kept
        self.ensure_key(nickname).enrollments.append({"kind": "git", **fields})

    def forget(self, kind: str, **match: Scalar) -> int:
        """Drop every enrollment of `kind` whose fields include `match`; returns how many."""
        dropped = 0
        for key in self.keys:
            keep = [
                e
                for e in key.enrollments
                if not (e.get("kind") == kind and all(e.get(k) == v for k, v in match.items()))
            ]
            dropped += len(key.enrollments) - len(keep)
            key.enrollments = keep
        return dropped

    def remove_keys(self, nicknames: list[str]) -> None:
        """Drop these keys and every enrollment they have (`replace`, once the lost key is revoked)."""
        self.keys = [k for k in self.keys if k.nickname not in nicknames]

    def owner_of(self, credential_id: str) -> KeyRecord | None:
        """The key that made a credential (base64 id as stored), if recorded."""
        return next((k for k in self.keys if credential_id in k.credential_ids()), None)

    def enrollments(self, kind: str) -> list[tuple[KeyRecord, dict[str, Scalar]]]:
        return [(k, e) for k in self.keys for e in k.enrollments if e.get("kind") == kind]


def nickname_of_credential(host: Host, credential_id: str, requested: str | None) -> str:
    """For steps without the key in hand: --nickname, else the key that made the credential."""
    if requested:
        return requested
    try:
        owner = Registry.load(host).owner_of(credential_id) if credential_id else None
    except YktoolError:
        owner = None
    return owner.nickname if owner else "primary"
