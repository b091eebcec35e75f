"""One error hierarchy: every error a person sees carries a message, a hint and an exit code.

Exit codes (also in `yktool --help` and docs/exit-codes.md):

  0  ok
  1  a check failed (verify, test-unlock: the thing looked at is not as it should be)
  2  usage or bad input (flags, files, formats)
  3  no device: no FIDO2 key, no TPM at the TCTI, missing block device or image
  4  refused for safety (the step would lock someone out, or overwrite without --force)
  5  an external tool failed or is missing (cryptsetup, systemd-cryptenroll, ssh-keygen, git, age)
  6  wrong PIN (retries are left)
  7  PIN temporarily blocked: too many wrong PINs in a row, remove and re-insert the key
  8  PIN blocked for good: only a reset (which wipes every credential on the key) helps
  9  user presence not given: touch refused or timed out
 10  interrupted (Ctrl-C); nothing half-written is left behind
 11  permission denied: a file or device needs more rights than yktool has (run as root)
"""

from __future__ import annotations

from enum import IntEnum


class ExitCode(IntEnum):
    OK = 0
    CHECK_FAILED = 1
    USAGE = 2
    NO_DEVICE = 3
    REFUSED = 4
    TOOL_FAILED = 5
    PIN_INVALID = 6
    PIN_AUTH_BLOCKED = 7
    PIN_BLOCKED = 8
    NO_PRESENCE = 9
    INTERRUPTED = 10
    PERMISSION_DENIED = 11


class YktoolError(Exception):
    """Base of every error yktool raises on purpose.

    `message` says what went wrong, `hint` what to do next; `exit_code` is what the CLI exits with.
    Never put a secret into either string.
    """

    exit_code: ExitCode = ExitCode.USAGE
    default_hint: str = ""

    def __init__(self, message: str, hint: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint if hint is not None else self.default_hint

    def to_json(self) -> dict[str, object]:
        return {
            "error": type(self).__name__,
            "message": self.message,
            "hint": self.hint,
            "exit_code": int(self.exit_code),
        }


class CheckFailed(YktoolError):
    exit_code = ExitCode.CHECK_FAILED


class UsageError(YktoolError):
    """Bad flags or bad input data (a malformed file, an unparsable value)."""

    exit_code = ExitCode.USAGE


class NoDevice(YktoolError):
    exit_code = ExitCode.NO_DEVICE


class Refused(YktoolError):
    """The step would lock someone out or destroy something without being asked to."""

    exit_code = ExitCode.REFUSED


class ToolFailed(YktoolError):
    """An external program failed or is missing; the message carries its stderr."""

    exit_code = ExitCode.TOOL_FAILED


class PinInvalid(YktoolError):
    exit_code = ExitCode.PIN_INVALID

    def __init__(self, retries: int | None, message: str | None = None) -> None:
        self.retries = retries
        left = f"{retries} attempts left" if retries is not None else "retries left unknown"
        super().__init__(
            message or f"wrong PIN ({left})",
            "check the PIN and try again; after 3 wrong PINs in a row remove and re-insert "
            "the key, after 8 in all the PIN is blocked",
        )


class PinAuthBlocked(YktoolError):
    exit_code = ExitCode.PIN_AUTH_BLOCKED
    default_hint = "remove the key, insert it again, then retry with the right PIN"


class PinBlocked(YktoolError):
    exit_code = ExitCode.PIN_BLOCKED
    default_hint = (
        "the PIN is blocked for good: only a reset helps, and a reset wipes every credential "
        "on the key (disk, sudo and SSH enrollments stop working); unlock with a backup key "
        "or the recovery key first, then `yktool key reset` and enroll the key again"
    )


class NoPresence(YktoolError):
    exit_code = ExitCode.NO_PRESENCE
    default_hint = "touch the key when it blinks, within the timeout"


class Interrupted(YktoolError):
    exit_code = ExitCode.INTERRUPTED
    default_hint = "nothing half-written was left; run the same command again to resume"


class PermissionDenied(UsageError):
    """The operating system refused a file or device: yktool runs without the rights it needs.

    A UsageError (so code that steps past an unreadable input still does) with its own exit code.
    """

    exit_code = ExitCode.PERMISSION_DENIED
    default_hint = "run as root (sudo yktool …), or on a --root folder you own"

    @classmethod
    def from_os(cls, exc: PermissionError) -> PermissionDenied:
        import os

        where = exc.filename if exc.filename is not None else (exc.strerror or "an operation")
        if os.geteuid() == 0:  # root was refused: the cause is not the user
            return cls(
                f"{where}: permission denied",
                "even root was refused: check the file system (read-only, immutable attribute, "
                "NFS root squash) and any security module (AppArmor, SELinux)",
            )
        return cls(f"{where}: permission denied")
