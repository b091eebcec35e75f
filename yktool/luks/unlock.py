"""Test-unlock: does each token still open the volume? Proven without activating anything.

For a systemd-tpm2 token yktool asks libcryptsetup itself (through ctypes) to unlock with that
token via systemd's own token plugin, with a NULL volume name: the plugin unseals from the TPM
and libcryptsetup checks the passphrase against the keyslot, but no device-mapper device is made.
Before that, the token's policy digest is compared with one computed from the current PCR values,
so a changed PCR is reported as such without spending a TPM authorisation attempt.

Each token type has a tester (`register_tester`); a later module adds systemd-fido2.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import Any

from yktool.errors import ToolFailed, UsageError
from yktool.host import Host
from yktool.luks.header import LuksHeader
from yktool.luks.tokens import Token, Tpm2Token
from yktool.tpm import Tcti, flush_leftovers, pcr_policy_digest, read_pcrs

OPENS = "opens"
PCR_CHANGED = "pcr-changed"
PIN_WRONG = "pin-wrong"
PIN_NEEDED = "pin-needed"
NOT_TESTED = "not-tested"
FAILED = "failed"

MESSAGES = {
    OPENS: "opens",
    PCR_CHANGED: "PCR policy no longer matches (firmware or Secure Boot changed?)",
    PIN_WRONG: "PIN wrong",
    PIN_NEEDED: "needs a PIN (give it with --pin-stdin or on the terminal)",
    NOT_TESTED: "not tested",
    FAILED: "does not open",
}


@dataclass
class UnlockResult:
    """The outcome for one token: `status` is one of the constants above."""

    token_id: int
    token_type: str
    keyslots: list[int]
    status: str
    detail: str = ""
    hints: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == OPENS

    @property
    def failed(self) -> bool:
        """A real failure (not-tested tokens are neither ok nor failed)."""
        return self.status not in (OPENS, NOT_TESTED)

    @property
    def message(self) -> str:
        base = MESSAGES.get(self.status, self.status)
        return f"{base}: {self.detail}" if self.detail else base

    def to_json(self) -> dict[str, Any]:
        return {
            "token": self.token_id,
            "type": self.token_type,
            "keyslots": self.keyslots,
            "status": self.status,
            "ok": self.ok,
            "message": self.message,
            "hints": self.hints,
        }


PinProvider = Callable[[Token], "bytes | None"]


@dataclass
class UnlockContext:
    """What a tester needs: the host, the device, the TPM, and a way to get a PIN for a token."""

    host: Host
    device: str | PurePosixPath
    header: LuksHeader
    tcti: Tcti | None = None
    pin_for: PinProvider | None = None
    fido_device: object | None = None  # for the FIDO2 tester (a later module)

    @property
    def real_device(self) -> str:
        return str(self.host.path(self.device))


Tester = Callable[[UnlockContext, Token], UnlockResult]
TESTERS: dict[str, Tester] = {}


def register_tester(token_type: str, tester: Tester) -> None:
    """Install the test-unlock routine for one token type."""
    TESTERS[token_type] = tester


# -------------------------------------------------------------------------------- libcryptsetup
class _Tpm2Params(ctypes.Structure):
    # struct systemd_tpm2_plugin_params (systemd src/shared/cryptsetup-tpm2.h, 252)
    _fields_ = [("search_pcr_mask", ctypes.c_uint32), ("device", ctypes.c_char_p), ("signature_path", ctypes.c_char_p)]


_LIB: ctypes.CDLL | None = None


def _lib() -> ctypes.CDLL:
    global _LIB
    if _LIB is None:
        try:
            lib = ctypes.CDLL("libcryptsetup.so.12", use_errno=True)
        except OSError:
            raise ToolFailed("libcryptsetup is not installed", "install it: apt-get install libcryptsetup12") from None
        lib.crypt_init.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_char_p]
        lib.crypt_load.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_void_p]
        lib.crypt_free.argtypes = [ctypes.c_void_p]
        lib.crypt_activate_by_token_pin.argtypes = [
            ctypes.c_void_p,
            ctypes.c_char_p,
            ctypes.c_char_p,
            ctypes.c_int,
            ctypes.c_char_p,
            ctypes.c_size_t,
            ctypes.c_void_p,
            ctypes.c_uint32,
        ]
        _LIB = lib
    return _LIB


@contextlib.contextmanager
def _captured_stderr() -> Iterator[list[str]]:
    """Collect what C code (the token plugin, tpm2-tss) writes to fd 2, instead of showing it."""
    out: list[str] = []
    with tempfile.TemporaryFile() as tmp:
        saved = os.dup(2)
        try:
            os.dup2(tmp.fileno(), 2)
            yield out
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            tmp.seek(0)
            out.append(tmp.read().decode("utf-8", "replace"))


def activate_by_token(
    device: str, token_id: int, token_type: str, pin: bytes | None, params: ctypes.Structure | None
) -> tuple[int, str]:
    """libcryptsetup `crypt_activate_by_token_pin` with a NULL name: test only, nothing activated.

    Returns (keyslot or -errno, what the plugin logged).
    """
    lib = _lib()
    cd = ctypes.c_void_p()
    rc = lib.crypt_init(ctypes.byref(cd), device.encode())
    if rc < 0:
        raise ToolFailed(f"libcryptsetup cannot open {device}: {os.strerror(-rc)}", "check the path and permissions")
    try:
        rc = lib.crypt_load(cd, b"LUKS2", None)
        if rc < 0:
            raise UsageError(
                f"{device}: libcryptsetup cannot load the LUKS2 header ({os.strerror(-rc)})",
                "check it with `yktool luks status`",
            )
        buf = ctypes.create_string_buffer(pin, len(pin)) if pin is not None else None
        with _captured_stderr() as log:
            rc = lib.crypt_activate_by_token_pin(
                cd,
                None,
                token_type.encode(),
                token_id,
                buf,
                len(pin) if pin is not None else 0,
                ctypes.byref(params) if params is not None else None,
                0,
            )
        if buf is not None:
            ctypes.memset(buf, 0, len(pin or b""))
        return rc, "".join(log)
    finally:
        lib.crypt_free(cd)


def _errno_text(rc: int) -> str:
    code = -rc
    return f"{errno.errorcode.get(code, str(code))}: {os.strerror(code)}"


# ------------------------------------------------------------------------------------ testers
def policy_matches(tcti: Tcti, token: Tpm2Token) -> bool | None:
    """Whether the token's PCR policy matches the current PCR values (None: cannot tell, e.g. a
    signed policy, whose digest yktool cannot recompute)."""
    if token.has_pubkey or not token.policy_hash:
        return None
    values = read_pcrs(tcti, token.pcrs, token.pcr_bank)
    expected = pcr_policy_digest(token.pcr_bank, values, with_pin=token.pin)
    return expected.hex() == token.policy_hash.lower()


def test_tpm2(ctx: UnlockContext, token: Token) -> UnlockResult:
    """Unseal through systemd's token plugin; PCR and PIN failures told apart."""
    if not isinstance(token, Tpm2Token):
        raise TypeError("test_tpm2 needs a systemd-tpm2 token")

    def result(status: str, detail: str = "", hints: list[str] | None = None) -> UnlockResult:
        return UnlockResult(token.id, token.type, list(token.keyslots), status, detail, hints or [])

    if ctx.tcti is None:
        return result(NOT_TESTED, "no TPM given (--tpm)")
    flush_leftovers(ctx.tcti)
    matches = policy_matches(ctx.tcti, token)
    if matches is False:
        pcrs = "+".join(map(str, token.pcrs))
        return result(
            PCR_CHANGED,
            f"the current values of PCRs {pcrs} differ from those it was sealed to",
            [
                "boot with the old firmware/Secure Boot settings, or unlock with the recovery key "
                "and run `yktool luks enroll-tpm2 --replace`"
            ],
        )
    pin = None
    if token.pin:
        pin = ctx.pin_for(token) if ctx.pin_for else None
        if pin is None:
            return result(PIN_NEEDED)
    # NULL device: the plugin picks the kernel's TPM itself (it does not parse "auto")
    device = None if ctx.tcti.spec == "auto" else ctx.tcti.systemd_device.encode()
    params = _Tpm2Params(0xFFFFFFFF, device, None)
    try:
        rc, log = activate_by_token(ctx.real_device, token.id, token.type, pin, params)
    finally:
        flush_leftovers(ctx.tcti)
    if rc >= 0:
        return result(OPENS, f"keyslot {rc}")
    low = log.lower()
    if "lockout" in low:
        return result(
            FAILED,
            "the TPM is in dictionary-attack lockout after too many wrong PINs",
            ["wait for the lockout to expire (or clear it with the lockout authorisation)"],
        )
    if token.pin and (
        "authorization hmac check failed" in low
        or "auth_fail" in low
        or "bad_auth" in low
        or rc in (-errno.ENOTRECOVERABLE, -errno.EACCES, -errno.EPERM)
    ):
        return result(PIN_WRONG, "", ["check the PIN; wrong PINs count towards the TPM's lockout"])
    if matches is None and "policy" in low:
        return result(PCR_CHANGED, "the TPM refused the policy")
    last = [line for line in log.splitlines() if line.strip()]
    return result(
        FAILED,
        f"{_errno_text(rc)}" + (f" ({last[-1].strip()})" if last else ""),
        ["is this the TPM the token was sealed with? `yktool tpm status`"],
    )


register_tester("systemd-tpm2", test_tpm2)


def test_tokens(ctx: UnlockContext, token_ids: list[int] | None = None) -> list[UnlockResult]:
    """Test every token (or `token_ids`) of the header; unknown types are reported not tested."""
    results = []
    ids = sorted(ctx.header.tokens) if token_ids is None else token_ids
    for token_id in ids:
        token = ctx.header.tokens.get(token_id)
        if token is None:
            raise UsageError(
                f"{ctx.device} has no token {token_id}",
                f"its tokens are: {', '.join(map(str, sorted(ctx.header.tokens))) or 'none'}",
            )
        tester = TESTERS.get(token.type)
        if tester is None:
            why = (
                "a recovery key is typed in; check it with `cryptsetup open --test-passphrase`"
                if token.type == "systemd-recovery"
                else f"yktool cannot test {token.type} tokens"
            )
            results.append(UnlockResult(token.id, token.type, list(token.keyslots), NOT_TESTED, why))
            continue
        results.append(tester(ctx, token))
    return results
