"""systemd-cryptenroll and cryptsetup, driven with secrets in memory only.

The existing passphrase reaches systemd-cryptenroll as `--unlock-key-file=/dev/fd/N` (a sealed
memfd: systemd seeks in key files, so a pipe fails), the new TPM2 PIN as the systemd credential
`cryptenroll.tpm2-pin` (a memfd behind `CREDENTIALS_DIRECTORY`), never in argv or the
environment. systemd 252 would otherwise read `NEWPIN` from the environment or prompt on a tty.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import PurePosixPath

from yktool.errors import ToolFailed, UsageError
from yktool.host import Host, SecretPath
from yktool.luks.header import LuksHeader, read_header
from yktool.tpm import Tcti, flush_leftovers, format_pcrs

MIN_SYSTEMD = 252  # --unlock-key-file arrived in 252


def systemd_version(host: Host) -> int:
    """The major version of the installed systemd-cryptenroll."""
    result = host.run(["systemd-cryptenroll", "--version"], check=False)
    match = re.search(r"systemd (\d+)", result.text)
    if not match:
        raise ToolFailed("cannot tell the version of systemd-cryptenroll", "install systemd 252 or newer")
    return int(match.group(1))


def require_systemd(host: Host) -> int:
    version = systemd_version(host)
    if version < MIN_SYSTEMD:
        raise ToolFailed(
            f"systemd-cryptenroll {version} is too old (needs --unlock-key-file, systemd 252+)",
            "upgrade systemd, or enroll by hand with systemd-cryptenroll",
        )
    return version


def _device(host: Host, device: str | PurePosixPath) -> str:
    return str(host.path(device))


def check_passphrase(host: Host, device: str | PurePosixPath, secret: bytes, slot: int | None = None) -> bool:
    """True when `secret` opens a keyslot (or `slot`) of `device`; nothing is activated."""
    argv: list[str | SecretPath] = ["cryptsetup", "open", "--test-passphrase", "--key-file", SecretPath(0)]
    if slot is not None:
        argv += ["--key-slot", str(slot)]
    argv.append(_device(host, device))
    result = host.run(argv, secrets=[secret], secret_files=True, check=False, timeout=120)
    if result.returncode == 0:
        return True
    if result.returncode in (1, 2):  # 2: no key available with this passphrase; 1: wrong slot
        return False
    raise ToolFailed(
        f"cryptsetup could not test the passphrase: {result.error_text or 'no message'}",
        "check the device with `cryptsetup luksDump`",
    )


def require_unlock(host: Host, device: str | PurePosixPath, secret: bytes) -> None:
    """UsageError (nothing changed) when `secret` is not a current passphrase or recovery key."""
    if not check_passphrase(host, device, secret):
        raise UsageError(
            f"the passphrase given does not open {device}",
            "give a current passphrase or recovery key of this volume (typed, on stdin, "
            "or --unlock-key-file with no trailing newline)",
        )


def enroll_tpm2(
    host: Host, device: str | PurePosixPath, tcti: Tcti, pcrs: Iterable[int], unlock: bytes, pin: bytes | None = None
) -> str:
    """Seal a new keyslot to the TPM's `pcrs` (and `pin`); returns systemd's message."""
    argv: list[str | SecretPath] = [
        "systemd-cryptenroll",
        f"--tpm2-device={tcti.systemd_device}",
        f"--tpm2-pcrs={format_pcrs(pcrs)}",
        f"--tpm2-with-pin={'yes' if pin is not None else 'no'}",
        SecretPath(0, "--unlock-key-file="),
        _device(host, device),
    ]
    credentials = {"cryptenroll.tpm2-pin": pin} if pin is not None else None
    flush_leftovers(tcti)
    try:
        result = host.run(argv, secrets=[unlock], secret_files=True, credentials=credentials, timeout=120)
    finally:
        flush_leftovers(tcti)
    return result.error_text


def enroll_recovery(host: Host, device: str | PurePosixPath, unlock: bytes) -> bytes:
    """Add a systemd recovery key; returns it (the caller shows it once and forgets it)."""
    argv: list[str | SecretPath] = [
        "systemd-cryptenroll",
        "--recovery-key",
        SecretPath(0, "--unlock-key-file="),
        _device(host, device),
    ]
    result = host.run(argv, secrets=[unlock], secret_files=True, timeout=120)
    # stdout is not a terminal, so systemd prints the key alone on one line
    key = result.stdout.strip()
    if not re.fullmatch(rb"[cbdefghijklnrtuv]{8}(-[cbdefghijklnrtuv]{8}){7}", key):
        raise ToolFailed(
            "systemd-cryptenroll printed no recovery key I recognise",
            "check `systemd-cryptenroll DEVICE` for a new recovery slot and wipe it if unwanted",
        )
    return key


def wipe_slots(host: Host, device: str | PurePosixPath, slots: Iterable[int]) -> None:
    """Remove keyslots, then the tokens left pointing at no keyslot. Callers check safety first.

    The order is what makes a kill harmless: a keyslot goes first (libcryptsetup takes it out of
    every token's list in the same header write), its token after. Killed in between, the header
    holds a token that points at nothing, which opens nothing and which `remove_orphan_tokens`
    (run by every wipe) removes. The other order would leave a hardware slot without its token,
    which looks like a typed passphrase and would let the real one be wiped.
    """
    wanted = sorted(set(slots))
    if not wanted:
        return
    real = _device(host, device)
    present = read_header(host, device).keyslots
    for slot in wanted:
        if slot in present:
            host.run(["cryptsetup", "luksKillSlot", "--batch-mode", real, str(slot)], timeout=120)
    remove_orphan_tokens(host, device)


# token types whose keyslot list yktool and systemd always fill: empty, the token is a leftover
_FILLED_TOKENS = frozenset({"systemd-tpm2", "systemd-fido2", "systemd-recovery", "systemd-pkcs11"})


def orphan_tokens(header: LuksHeader) -> list[int]:
    """systemd tokens that point at no existing keyslot (left by a wipe killed half-way)."""
    return [
        t.id
        for _, t in sorted(header.tokens.items())
        if t.type in _FILLED_TOKENS and not any(k in header.keyslots for k in t.keyslots)
    ]


def remove_orphan_tokens(host: Host, device: str | PurePosixPath) -> list[int]:
    """Remove the tokens `orphan_tokens` names; returns their ids."""
    orphans = orphan_tokens(read_header(host, device))
    for token_id in orphans:
        host.run(["cryptsetup", "token", "remove", "--token-id", str(token_id), _device(host, device)], timeout=60)
    return orphans
