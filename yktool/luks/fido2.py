"""FIDO2 enrollment of a LUKS2 volume, in systemd 252's own token format, and its test-unlock.

The token (systemd src/cryptenroll/cryptenroll-fido2.c, src/shared/libfido2-util.c, 252):

    {"type": "systemd-fido2", "keyslots": ["N"], "fido2-credential": b64(credential id),
     "fido2-salt": b64(32 random bytes), "fido2-rp": "io.systemd.cryptsetup",
     "fido2-clientPin-required": bool, "fido2-up-required": bool, "fido2-uv-required": bool}

The keyslot's passphrase is the standard padded base64 of the 32-byte hmac-secret output for that
salt, from a getAssertion on rp `io.systemd.cryptsetup` with an all-zero clientDataHash and the
credential as the only allowed one. A PIN sets the UV flag, and the key derives hmac-secret from a
different secret with UV than without: the passphrase depends on whether the PIN was used.

Two backends write the same token:

- `native` (the default for every key): makeCredential (rk false, hmac-secret,
  user id and name = the volume UUID, display name = the device, rp name "Encrypted Volume", as
  systemd sets them), getAssertion with a fresh salt, `cryptsetup luksAddKey` (pbkdf2, minimal
  iterations, as systemd's `cryptsetup_set_minimal_pbkdf`: the secret is high-entropy) with both
  passphrases on in-memory files, then `cryptsetup token import`. A journal under
  /var/lib/yktool records the pending slot before it is added, so a run killed between "keyslot
  added" and "token imported" is finished (or the orphan slot removed) by the next run.
- `systemd` (`--backend systemd`, real keys only): `systemd-cryptenroll --fido2-device=PATH …` with the existing
  passphrase as `--unlock-key-file=/dev/fd/N` (a sealed memfd) and the key's PIN as the systemd
  credential `fido2-pin` (252's libfido2-util asks `ask_password_auto(…, "fido2-pin",
  "fido2-pin", …)`: the credential is read before any tty or agent), never argv or environment.
  libfido2 sees only hidraw keys, so software keys are refused for this backend. Not the default:
  systemd#31443 (open; 252 to at least 255): on a key that makes a credential without a PIN
  (CTAP 2.1 makeCredUvNotRqd: YubiKey 5.7, the software key) `--fido2-with-client-pin=yes`
  never sends the PIN, so the keyslot gets the secret made without UV while the token says
  "PIN" and systemd-cryptsetup unlocks with it (UV on): a different secret, the slot never opens.

Either way the enrollment ends with the same proof: the token is read back from the header and
the key derives its secret with exactly the UV the token's flags make systemd-cryptsetup ask for
(UV with fido2-clientPin-required or fido2-uv-required; UP changes no output, so the native
proof is silent), and `cryptsetup --test-passphrase` must open the token's keyslot with it. A
new keyslot that fails is removed with its token before the error is raised: nothing half-written.
"""

from __future__ import annotations

import base64
import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from yktool.errors import Refused, ToolFailed, UsageError, YktoolError
from yktool.host import Host, SecretPath
from yktool.keynames import identify_key
from yktool.lock import STATE_DIR
from yktool.luks import cryptenroll
from yktool.luks.header import LuksHeader, read_header
from yktool.luks.journal import FIDO2_JOURNAL, fault
from yktool.luks.tokens import Fido2Token
from yktool.luks.unlock import (
    FAILED,
    NOT_TESTED,
    OPENS,
    PIN_NEEDED,
    PIN_WRONG,
    UnlockContext,
    UnlockResult,
    register_tester,
)
from yktool.plan import Plan, Step

if TYPE_CHECKING:
    from yktool.fido.session import KeySession

RP_ID = "io.systemd.cryptsetup"
RP_NAME = "Encrypted Volume"
TOKEN_TYPE = "systemd-fido2"  # noqa: S105 - a token type name, not a password
SALT_SIZE = 32
ZERO_CLIENT_DATA_HASH = bytes(32)
# systemd 252 `--fido2-credential-algorithm` defaults to es256 (COSE_ES256).
ALGORITHMS = {"es256": -7, "eddsa": -8}
DEFAULT_ALGORITHM = "es256"
BACKENDS = ("systemd", "native")
LUKS2_MAX_KEYSLOTS = 32
# systemd's minimal PBKDF: pbkdf2/sha512, libcryptsetup raises the iterations to its floor of 1000.
MINIMAL_PBKDF = ["--pbkdf", "pbkdf2", "--hash", "sha512", "--pbkdf-force-iterations", "1000"]
JOURNAL_DIR = STATE_DIR / FIDO2_JOURNAL.kind  # where the journal lives (shown in the plan)


def b64(data: bytes) -> str:
    """Standard padded base64, as systemd writes every binary token field and the passphrase."""
    return base64.b64encode(data).decode("ascii")


def _b64decode(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except ValueError:
        raise UsageError(
            f"the token's {what} is not base64", "the token is damaged; check `cryptsetup luksDump`"
        ) from None


def passphrase_from_output(hmac_output: bytes) -> bytes:
    """The keyslot passphrase systemd derives from the 32-byte hmac-secret output."""
    return base64.b64encode(hmac_output)


def token_json(credential_id: bytes, salt: bytes, keyslot: int, *, pin: bool, up: bool, uv: bool) -> dict[str, Any]:
    """The systemd-fido2 token exactly as systemd 252 builds it (same fields, same order)."""
    return {
        "type": TOKEN_TYPE,
        "keyslots": [str(keyslot)],
        "fido2-credential": b64(credential_id),
        "fido2-salt": b64(salt),
        "fido2-rp": RP_ID,
        "fido2-clientPin-required": pin,
        "fido2-up-required": up,
        "fido2-uv-required": uv,
    }


# ------------------------------------------------------------------------------ the key's answer
def derive_passphrase(session: KeySession, token: Fido2Token, *, silent: bool = False) -> bytes:
    """The passphrase of `token`'s keyslot, through the key: one touch when the token wants
    presence, the PIN (asked through the session's interaction) when it wants PIN or UV.
    `silent` asks without presence (up=false, no touch): the hmac-secret output depends on UV
    only, never on UP, so the passphrase is the one an unlock with a touch derives.

    Raises NotThisKey when the key did not make the credential, PinInvalid etc. from the key.
    """
    credential = _b64decode(token.credential, "credential")
    salt = _b64decode(token.salt, "salt")
    if len(salt) != SALT_SIZE:
        raise UsageError(
            f"token {token.id}: the salt is {len(salt)} bytes, not {SALT_SIZE}",
            "the token is damaged; enroll the key again",
        )
    uses_pin = token.pin_required or token.uv_required
    assertion = session.get_assertion(
        token.rp or RP_ID,
        ZERO_CLIENT_DATA_HASH,
        allow=[credential],
        up=token.up_required and not silent,
        uv=uses_pin,
        hmac_salt=salt,
    )
    if assertion.hmac_output is None:
        raise ToolFailed("the key gave no hmac-secret output", "the credential was made without hmac-secret")
    return passphrase_from_output(assertion.hmac_output)


def owns(session: KeySession, token: Fido2Token) -> bool:
    """True when the key in `session` made the token's credential (silent probe: no touch, no PIN)."""
    try:
        credential = base64.b64decode(token.credential, validate=True)
    except ValueError:
        return False
    return bool(credential) and session.probe(token.rp or RP_ID, credential)


def test_fido2(ctx: UnlockContext, token: Any) -> UnlockResult:
    """Derive the token's passphrase through the key at --device and prove it with cryptsetup
    `--test-passphrase` on the token's keyslot (nothing activated)."""
    from yktool.errors import NoPresence, PinAuthBlocked, PinBlocked, PinInvalid

    if not isinstance(token, Fido2Token):
        raise TypeError("test_fido2 needs a systemd-fido2 token")

    def result(status: str, detail: str = "", hints: list[str] | None = None) -> UnlockResult:
        return UnlockResult(token.id, token.type, list(token.keyslots), status, detail, hints or [])

    session = ctx.fido_device
    if session is None:
        return result(NOT_TESTED, "no FIDO2 key present (plug it in, or name it with --device)")
    from yktool.fido.session import KeySession

    if not isinstance(session, KeySession):
        raise TypeError("UnlockContext.fido_device must be a KeySession")
    if not owns(session, token):
        return result(
            NOT_TESTED,
            "the key present did not make this token's credential (another key's token)",
            ["plug in the key this token belongs to (`yktool luks status` names it)"],
        )
    if (token.pin_required or token.uv_required) and not session.pin_is_set:
        return result(
            FAILED,
            "the token wants the key's PIN, but the key has no PIN (was it reset?)",
            ["unlock with a passphrase or the recovery key and enroll the key again"],
        )
    try:
        passphrase = derive_passphrase(session, token)
    except PinInvalid as exc:
        return result(PIN_WRONG, exc.message, [exc.hint])
    except (PinAuthBlocked, PinBlocked) as exc:
        return result(FAILED, exc.message, [exc.hint])
    except NoPresence as exc:
        return result(FAILED, exc.message, [exc.hint])
    except UsageError as exc:
        if "PIN" in exc.message:
            return result(PIN_NEEDED, exc.message, [exc.hint])
        return result(FAILED, exc.message, [exc.hint])
    except YktoolError as exc:
        return result(FAILED, exc.message, [exc.hint])
    slot = token.keyslots[0] if len(token.keyslots) == 1 else None
    if cryptenroll.check_passphrase(ctx.host, ctx.device, passphrase, slot):
        return result(OPENS, f"keyslot {slot if slot is not None else '?'}")
    used = "with" if (token.pin_required or token.uv_required) else "without"
    return result(
        FAILED,
        f"the key answered, but its hmac-secret output (asked {used} user verification, "
        "as the token's PIN/UV flags say) does not open the keyslot",
        [
            "the key derives a different secret with UV (PIN) than without: if the token's "
            "fido2-clientPin-required / fido2-uv-required flags were changed after enrollment, "
            "restore them, or unlock with the passphrase and enroll the key again"
        ],
    )


register_tester(TOKEN_TYPE, test_fido2)


# ------------------------------------------------------------------------------------ who owns it
@dataclass
class TokenOwner:
    """Who a systemd-fido2 token belongs to: by the registry, and by a probe of the present key."""

    token_id: int
    credential: str
    registry: str | None = None
    probe: bool | None = None  # None: no key present to ask
    probe_key: str | None = None  # how the present key is called (nickname, else its device spec)

    @property
    def text(self) -> str:
        parts = []
        if self.registry:
            parts.append(f"key '{self.registry}' (registry)")
        if self.probe:
            confirmed = self.registry is not None and self.probe_key == self.registry
            parts.append(
                "confirmed by the key present"
                if confirmed
                else f"{self.probe_key or 'the key present'} (answers a silent probe)"
            )
        elif self.probe is False and not self.registry:
            parts.append("not the key present")
        return "; ".join(parts) or "unknown key"

    def to_json(self) -> dict[str, Any]:
        return {
            "token": self.token_id,
            "credential": self.credential,
            "registry": self.registry,
            "probe": self.probe,
            "probe_key": self.probe_key,
        }


def token_owners(
    host: Host, header: LuksHeader, session: KeySession | None = None, session_name: str | None = None
) -> dict[int, TokenOwner]:
    """For each systemd-fido2 token: the registry's owner of its credential, and whether the key
    in `session` (if any) answers a silent probe for it (only the key that made it does)."""
    from yktool.inventory import Registry

    try:
        registry: Registry | None = Registry.load(host)
    except YktoolError:
        registry = None
    present_name = session_name
    if session is not None and registry is not None and present_name is None:
        present_name = identify_key(session, host, registry)
    out: dict[int, TokenOwner] = {}
    for token in header.tokens_of_type(TOKEN_TYPE):
        if not isinstance(token, Fido2Token):
            continue
        owner = TokenOwner(token.id, token.credential)
        if registry is not None:
            record = registry.owner_of(token.credential)
            owner.registry = record.nickname if record else None
        if session is not None:
            try:
                owner.probe = owns(session, token)
            except YktoolError:
                owner.probe = None
            if owner.probe:
                owner.probe_key = owner.registry or present_name
        out[token.id] = owner
    return out


# ------------------------------------------------------------------------------------- cryptsetup
def free_keyslot(header: LuksHeader) -> int | None:
    """The lowest keyslot number not in use (LUKS2 has 32), or None when all are taken."""
    return next((n for n in range(LUKS2_MAX_KEYSLOTS) if n not in header.keyslots), None)


def add_keyslot(host: Host, device: str | PurePosixPath, slot: int, unlock: bytes, passphrase: bytes) -> None:
    """`cryptsetup luksAddKey` into `slot` with systemd's minimal PBKDF; both secrets on memfds."""
    real = str(host.path(device))
    argv: list[str | SecretPath] = [
        "cryptsetup",
        "luksAddKey",
        "--batch-mode",
        *MINIMAL_PBKDF,
        "--key-slot",
        str(slot),
        "--key-file",
        SecretPath(0),
        real,
        SecretPath(1),
    ]
    host.run(argv, secrets=[unlock, passphrase], secret_files=True, timeout=120)


def import_token(host: Host, device: str | PurePosixPath, token: dict[str, Any]) -> int:
    """`cryptsetup token import` (JSON on stdin: nothing secret in it); returns the new token id."""
    real = str(host.path(device))
    host.run(["cryptsetup", "token", "import", real], input=json.dumps(token).encode(), timeout=60)
    slot = int(token["keyslots"][0])
    after = read_header(host, device)
    for t in after.tokens_of_type(TOKEN_TYPE):
        if isinstance(t, Fido2Token) and slot in t.keyslots and t.credential == token["fido2-credential"]:
            return t.id
    raise ToolFailed("cryptsetup imported the token but it is not in the header", "check `cryptsetup luksDump`")


# ---------------------------------------------------------------------------------------- journal
def read_journal(host: Host, uuid: str) -> dict[str, Any] | None:
    """The pending enrollment of the volume `uuid`, if a run stopped half-way (no secrets in it)."""
    data = FIDO2_JOURNAL.read(host, uuid)
    return data if data is not None and isinstance(data.get("token"), dict) else None


def write_journal(host: Host, uuid: str, entry: dict[str, Any]) -> None:
    FIDO2_JOURNAL.write(host, uuid, entry)


def clear_journal(host: Host, uuid: str) -> None:
    FIDO2_JOURNAL.clear(host, uuid)


# ------------------------------------------------------------------------------------- enrollment
@dataclass
class Fido2Options:
    """What to enroll: `pin` None means "yes when the key has a PIN" (systemd's default is yes)."""

    pin: bool | None = None
    up: bool = True
    uv: bool = False
    algorithm: str = DEFAULT_ALGORITHM
    nickname: str | None = None


@dataclass
class Fido2Enrollment:
    """A planned FIDO2 enrollment. The caller sets `unlock` and `session` before `plan.apply()`."""

    plan: Plan
    device: str
    uuid: str
    backend: str
    spec: str
    options: Fido2Options
    command: list[str] = field(default_factory=list)  # systemd backend: the argv (secret as /dev/fd/N)
    unlock: bytes | None = field(default=None, repr=False)
    session: KeySession | None = field(default=None, repr=False)
    pin_flag: bool | None = None
    new_slot: int | None = None
    new_token: int | None = None
    credential: str | None = None
    nickname: str | None = None
    already: bool = False
    resumed: str | None = None
    pending_token: dict[str, Any] | None = None  # native: the token to import (no secret in it)
    _passphrase: bytes | None = field(default=None, repr=False)
    _pin: str | None = field(default=None, repr=False)

    @property
    def needs_unlock(self) -> bool:
        return any(s.id in ("check", "enroll") and s.status == "pending" for s in self.plan.steps)

    @property
    def changed(self) -> bool:
        """True when the volume's header was changed (a keyslot, a token, an orphan removed)."""
        writes = ("keyslot", "token", "resume") + (("enroll",) if self.backend == "systemd" else ())
        return any(s.status == "done" and s.id in writes for s in self.plan.steps)

    @property
    def tool_touches(self) -> int:
        """The touches systemd-cryptenroll asked for itself, which the session does not see (the
        person does): none for the native backend, or when it did not run."""
        ran = any(s.id == "enroll" and s.status == "done" for s in self.plan.steps)
        return SYSTEMD_ENROLL_TOUCHES if self.backend == "systemd" and ran else 0

    def summary(self) -> dict[str, Any]:
        return {
            "device": self.device,
            "uuid": self.uuid,
            "backend": self.backend,
            "keyslot": self.new_slot,
            "token": self.new_token,
            "credential": self.credential,
            "nickname": self.nickname,
            "pin": self.pin_flag,
            "up": self.options.up,
            "uv": self.options.uv,
            "algorithm": self.options.algorithm,
            "already_enrolled": self.already,
            "resumed": self.resumed,
            "changed": self.changed,
            "plan": self.plan.to_json(),
            **({"command": self.command} if self.command else {}),
        }


SYSTEMD_ENROLL_TOUCHES = 2  # systemd-cryptenroll makes the credential, then derives the secret (up: yes)


def default_backend(spec: str) -> str:
    """native for every key: libfido2 cannot see software keys, and systemd-cryptenroll enrolls a
    PIN token on a CTAP 2.1 key with a secret systemd-cryptsetup never derives (systemd#31443)."""
    del spec  # the same for every key; kept so that callers say which key they mean
    return "native"


def systemd_argv(
    real_device: str, fido2_device: str, *, pin: bool, up: bool, uv: bool, algorithm: str
) -> list[str | SecretPath]:
    """The systemd-cryptenroll command line; the passphrase is `SecretPath(0)` (a memfd)."""
    return [
        "systemd-cryptenroll",
        f"--fido2-device={fido2_device}",
        f"--fido2-with-client-pin={'yes' if pin else 'no'}",
        f"--fido2-with-user-presence={'yes' if up else 'no'}",
        f"--fido2-with-user-verification={'yes' if uv else 'no'}",
        f"--fido2-credential-algorithm={algorithm}",
        SecretPath(0, "--unlock-key-file="),
        real_device,
    ]


def render_argv(argv: list[str | SecretPath]) -> list[str]:
    return [a if isinstance(a, str) else f"{a.prefix}/dev/fd/<memfd {a.index}>" for a in argv]


def run_systemd_enroll(
    host: Host,
    device: str | PurePosixPath,
    fido2_device: str,
    unlock: bytes,
    pin: bytes | None,
    *,
    pin_flag: bool,
    up: bool,
    uv: bool,
    algorithm: str,
) -> str:
    """Run systemd-cryptenroll for a real key: the passphrase on a memfd, the PIN as the systemd
    credential `fido2-pin`; stdin is /dev/null, so systemd never waits on a tty."""
    argv = systemd_argv(str(host.path(device)), fido2_device, pin=pin_flag, up=up, uv=uv, algorithm=algorithm)
    credentials = {"fido2-pin": pin} if pin else None
    result = host.run(argv, secrets=[unlock], secret_files=True, credentials=credentials, timeout=120, check=False)
    if result.returncode != 0:
        raise ToolFailed(
            f"systemd-cryptenroll failed (exit {result.returncode}): {result.error_text or 'no message'}",
            "nothing was enrolled; check the key (`yktool key info`) and run again",
        )
    return result.error_text


def _device_of(spec: str) -> str:
    kind, _, rest = spec.partition(":")
    return rest if kind == "hid" else spec


def plan_enroll_fido2(
    host: Host, device: str | PurePosixPath, spec: str, options: Fido2Options, *, backend: str | None = None
) -> Fido2Enrollment:
    """Plan enrolling the key `spec` into `device`. Checks before anything is touched: LUKS2, a free
    keyslot, the backend fits the key; a half-done earlier run (journal) is finished first."""
    if options.algorithm not in ALGORITHMS:
        raise UsageError(f"unknown algorithm {options.algorithm!r}", "use es256 (systemd's default) or eddsa")
    backend = backend or default_backend(spec)
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}", "use --backend systemd or --backend native")
    if backend == "systemd" and spec.startswith("sim:"):
        raise UsageError(
            "the systemd backend cannot use a software key: systemd-cryptenroll talks to keys "
            "through libfido2, which sees only USB (hidraw) keys",
            "use --backend native for a sim: key (it writes the same token)",
        )
    header = read_header(host, device)
    op = Fido2Enrollment(
        Plan(f"FIDO2 enrollment of {device} ({backend} backend)"), str(device), header.uuid, backend, spec, options
    )
    plan = op.plan
    pending = read_journal(host, header.uuid)
    if pending is not None:
        plan.add(
            Step(
                "resume",
                f"finish the enrollment a killed run left half-done (keyslot {pending.get('keyslot')})",
                touches=[str(device)],
                verify="the orphan keyslot gets its token, or is removed",
                action=lambda: _resume(host, device, op, pending),
            )
        )
    elif free_keyslot(header) is None:
        raise Refused(
            f"{device} has no free keyslot (all {LUKS2_MAX_KEYSLOTS} are in use)",
            f"remove an unused one first (`yktool luks status {device}`, then `yktool luks wipe {device} --slot N`)",
        )
    if backend == "systemd":
        op.pin_flag = True if options.pin is None else options.pin
        op.command = render_argv(
            systemd_argv(
                str(host.path(device)),
                _device_of(spec),
                pin=op.pin_flag,
                up=options.up,
                uv=options.uv,
                algorithm=options.algorithm,
            )
        )
        if options.pin is None:
            plan.notes.append(
                "--fido2-with-client-pin follows the key: yes when it has a PIN, no when it has none "
                "(say --with-pin or --no-pin to choose)"
            )
    plan.add(
        Step(
            "check",
            "check the passphrase, and that the key has hmac-secret and is not enrolled yet",
            touches=[f"key {spec}"],
            verify="cryptsetup --test-passphrase; a silent probe of each FIDO2 token",
            action=lambda: _check(host, device, op),
        )
    )
    if backend == "native":
        plan.add(
            Step(
                "enroll",
                "make a credential on the key (rp io.systemd.cryptsetup, hmac-secret; one touch) "
                "and derive the slot's passphrase from a fresh 32-byte salt (silently)",
                touches=[f"key {spec}"],
                verify="the key answers with a 32-byte hmac-secret output",
                action=lambda: _make_secret(op),
            )
        )
        plan.add(
            Step(
                "keyslot",
                "add a keyslot with that passphrase (pbkdf2, minimal iterations, as systemd)",
                touches=[str(device), str(JOURNAL_DIR)],
                verify="cryptsetup --test-passphrase on the new slot",
                action=lambda: _add_slot(host, device, op),
            )
        )
        plan.add(
            Step(
                "token",
                "import the systemd-fido2 token that points at it",
                touches=[str(device)],
                verify="`systemd-cryptenroll DEVICE` lists the slot as fido2",
                action=lambda: _import(host, device, op),
            )
        )
    else:
        plan.add(
            Step(
                "enroll",
                f"run {' '.join(op.command)} (PIN as the systemd credential fido2-pin)",
                touches=[str(device), f"key {spec}"],
                verify="one new systemd-fido2 token in the header",
                action=lambda: _systemd_enroll(host, device, op),
            )
        )
    plan.add(
        Step(
            "prove",
            "test the passphrase the key derived on the new keyslot",
            touches=[f"key {spec}"],
            verify="cryptsetup open --test-passphrase (nothing activated)",
            action=lambda: _prove(host, device, op),
        )
    )
    plan.add(
        Step(
            "record",
            "record the key, volume UUID, keyslot, token and credential in the key registry",
            touches=["/etc/yktool/keys.toml"],
            verify="read the registry back",
            action=lambda: _record(host, op),
        )
    )
    return op


def _skip_rest(op: Fido2Enrollment, after: str, detail: str) -> None:
    seen = False
    for step in op.plan.steps:
        if seen and step.id in ("enroll", "keyslot", "token", "prove") and step.status == "pending":
            step.status = "already-done"
            step.detail = detail
        if step.id == after:
            seen = True


def _session(op: Fido2Enrollment) -> KeySession:
    if op.session is None:
        raise UsageError("no key session", "this is a bug in yktool: open the key before applying the plan")
    return op.session


def _check(host: Host, device: str | PurePosixPath, op: Fido2Enrollment) -> None:
    if op.already:
        return
    if op.unlock is None:
        raise UsageError("no passphrase to unlock the volume with", "give the current passphrase")
    cryptenroll.require_unlock(host, device, op.unlock)
    session = _session(op)
    if not session.has_hmac_secret:
        raise UsageError(
            "this key has no hmac-secret extension, which LUKS FIDO2 unlocking needs",
            "use a FIDO2 key that lists hmac-secret (`yktool key info`), e.g. a YubiKey 5",
        )
    opts = op.options
    # Not given: PIN at unlock when the key has one (systemd's default is yes, which fails on a
    # key without a PIN).
    op.pin_flag = session.pin_is_set if opts.pin is None else opts.pin
    if op.backend == "systemd":
        op.command = render_argv(
            systemd_argv(
                str(host.path(device)),
                _device_of(op.spec),
                pin=op.pin_flag,
                up=opts.up,
                uv=opts.uv,
                algorithm=opts.algorithm,
            )
        )
    if op.pin_flag and not session.pin_is_set:
        raise UsageError(
            "--with-pin asks for the key's PIN at unlock, but the key has no PIN",
            "set one first (`yktool key pin set`), or enroll with --no-pin",
        )
    if opts.uv and not session.info.options.get("uv"):
        raise UsageError(
            "this key has no built-in user verification (fingerprint); systemd refuses "
            "--fido2-with-user-verification on it",
            "use --with-pin: the PIN is user verification (the key sets the UV flag with it)",
        )
    if ALGORITHMS[opts.algorithm] not in [a.get("alg") for a in session.info.algorithms] and not (
        opts.algorithm == DEFAULT_ALGORITHM and not session.info.algorithms
    ):
        raise UsageError(
            f"the key does not support {opts.algorithm}",
            f"this key offers: {', '.join(session.algorithm_names())}; es256 works on every key",
        )
    header = read_header(host, device)
    for token in header.tokens_of_type(TOKEN_TYPE):
        if isinstance(token, Fido2Token) and owns(session, token):
            op.already = True
            op.new_token, op.credential = token.id, token.credential
            op.new_slot = token.keyslots[0] if token.keyslots else None
            _skip_rest(
                op,
                "check",
                f"this key is already enrolled (token {token.id}, keyslot {', '.join(map(str, token.keyslots))})",
            )
            return
    if op.pin_flag or session.pin_is_set:
        # Ask for (and check) the PIN once, now: a wrong PIN is reported before anything changes.
        from fido2.ctap2.pin import ClientPin

        if op.backend == "native":
            session.pin_token(ClientPin.PERMISSION.MAKE_CREDENTIAL, RP_ID)  # the session keeps the PIN
        else:
            # systemd needs the PIN itself (as the credential fido2-pin)
            pin = session.interaction.request_pin(ClientPin.PERMISSION.MAKE_CREDENTIAL, RP_ID)
            if not pin:
                raise UsageError("the key has a PIN and none was given", "type it when asked, or pipe it in")
            session.verify_pin(pin)
            op._pin = pin


def _make_secret(op: Fido2Enrollment) -> None:
    session = _session(op)
    uuid = op.uuid
    credential = session.make_credential(
        RP_ID,
        client_data_hash=ZERO_CLIENT_DATA_HASH,
        user_id=uuid.encode(),
        user_name=uuid,
        rp_name=RP_NAME,
        algorithms=[ALGORITHMS[op.options.algorithm]],
        resident=False,
        hmac_secret=True,
    )
    if not credential.hmac_secret:
        raise ToolFailed("the key made the credential without hmac-secret", "use a key that supports hmac-secret")
    salt = secrets.token_bytes(SALT_SIZE)
    slot_token = Fido2Token(
        id=-1,
        type=TOKEN_TYPE,
        keyslots=[],
        raw={},
        credential=b64(credential.credential_id),
        salt=b64(salt),
        rp=RP_ID,
        pin_required=bool(op.pin_flag),
        up_required=op.options.up,
        uv_required=op.options.uv,
    )
    # the credential was just touched into being: read its secret silently (one touch, not two)
    op._passphrase = derive_passphrase(session, slot_token, silent=True)
    op.credential = slot_token.credential
    op.pending_token = token_json(
        credential.credential_id, salt, 0, pin=bool(op.pin_flag), up=op.options.up, uv=op.options.uv
    )


def _key_facts(op: Fido2Enrollment) -> tuple[str, int | None]:
    session = _session(op)
    serial: int | None = None
    try:
        from yktool.fido.yubikey import read_facts

        facts = read_facts(session.device)
        serial = facts.serial if facts else None
    except Exception:  # noqa: BLE001 - a serial is nice to have, never worth failing for
        serial = None
    return session.aaguid, serial


def _nickname(host: Host, op: Fido2Enrollment) -> str:
    if op.nickname is None:
        from yktool.keynames import choose_nickname

        op.nickname = choose_nickname(_session(op), host, op.options.nickname)
    return op.nickname


def _add_slot(host: Host, device: str | PurePosixPath, op: Fido2Enrollment) -> None:
    if op.unlock is None or op._passphrase is None or op.pending_token is None:
        raise UsageError("nothing to add", "this is a bug in yktool")
    header = read_header(host, device)
    slot = free_keyslot(header)
    if slot is None:
        raise Refused(
            f"{device} has no free keyslot", f"remove an unused one first (`yktool luks wipe {device} --slot N`)"
        )
    token: dict[str, Any] = dict(op.pending_token)
    token["keyslots"] = [str(slot)]
    aaguid, serial = _key_facts(op)
    nickname = _nickname(host, op)
    # The journal is written before the slot exists: a run killed after luksAddKey leaves a record
    # of which slot is ours and which token belongs to it (no secret: both are public header data).
    write_journal(
        host,
        op.uuid,
        {
            "uuid": op.uuid,
            "device": str(device),
            "keyslot": slot,
            "token": token,
            "nickname": nickname,
            "aaguid": aaguid,
            "serial": serial,
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        },
    )
    try:
        add_keyslot(host, device, slot, op.unlock, op._passphrase)
    except YktoolError:
        # no slot was added: a journal left behind would name a slot that is not ours
        if slot not in read_header(host, device).keyslots:
            clear_journal(host, op.uuid)
        raise
    fault("after-keyslot")
    op.new_slot = slot
    op.pending_token = token


def _import(host: Host, device: str | PurePosixPath, op: Fido2Enrollment) -> None:
    if op.pending_token is None:
        raise UsageError("no token to import", "this is a bug in yktool")
    op.new_token = import_token(host, device, op.pending_token)
    fault("after-token")
    clear_journal(host, op.uuid)


def _systemd_enroll(host: Host, device: str | PurePosixPath, op: Fido2Enrollment) -> None:
    if op.unlock is None:
        raise UsageError("no passphrase to unlock the volume with", "give the current passphrase")
    session = _session(op)
    pin = op._pin.encode() if op._pin else None  # verified in the check step
    fido2_device = _device_of(op.spec)
    if fido2_device == "auto":
        from yktool.fido.devices import hid_spec

        fido2_device = _device_of(hid_spec(session.device))
    before = set(read_header(host, device).tokens)
    try:
        run_systemd_enroll(
            host,
            device,
            fido2_device,
            op.unlock,
            pin,
            pin_flag=bool(op.pin_flag),
            up=op.options.up,
            uv=op.options.uv,
            algorithm=op.options.algorithm,
        )
    finally:
        # systemd-cryptenroll's conversation with the key is queued on our handle too
        from yktool.fido.devices import discard_stale_reports

        discard_stale_reports(session.device)
    after = read_header(host, device)
    new = [t for t in after.tokens_of_type(TOKEN_TYPE) if t.id not in before and isinstance(t, Fido2Token)]
    if len(new) != 1:
        raise ToolFailed(
            "systemd-cryptenroll finished but no new FIDO2 token is in the header", "check `systemd-cryptenroll DEVICE`"
        )
    token = new[0]
    op.new_token, op.credential = token.id, token.credential
    op.new_slot = token.keyslots[0] if token.keyslots else None


def opens_as_at_boot(
    host: Host, device: str | PurePosixPath, session: KeySession, token: Fido2Token, *, silent: bool
) -> bool:
    """True when the key's secret for `token`, derived as systemd-cryptsetup derives it from the
    token's own flags (UV exactly when fido2-clientPin-required or fido2-uv-required), opens the
    token's one keyslot. Never a secret remembered from the enrollment: that one was made with
    whatever UV the enroller used, which is the very thing to check."""
    if len(token.keyslots) != 1:
        return False
    return cryptenroll.check_passphrase(
        host, device, derive_passphrase(session, token, silent=silent), token.keyslots[0]
    )


def _prove(host: Host, device: str | PurePosixPath, op: Fido2Enrollment) -> None:
    op._passphrase = None  # the enrollment's own secret proves nothing about the boot's
    header = read_header(host, device)
    token = header.tokens.get(op.new_token) if op.new_token is not None else None
    if not isinstance(token, Fido2Token):
        raise ToolFailed("the new FIDO2 token is not in the header", "check `yktool luks status`")
    # native: silent (UP changes no hmac-secret output; the touch budget stays one). systemd: the
    # token's own UP, as before.
    try:
        opens = opens_as_at_boot(host, device, _session(op), token, silent=op.backend == "native")
    except BaseException:
        _roll_back(host, device, op, token)
        raise
    if opens:
        return
    _roll_back(host, device, op, token)
    slots = ", ".join(map(str, token.keyslots)) or "?"
    asked = "with the PIN (UV)" if token.pin_required or token.uv_required else "without the PIN (no UV)"
    raise ToolFailed(
        f"the new FIDO2 keyslot {slots} does not open with the secret the key derives {asked}, "
        "as the token tells systemd-cryptsetup to ask it at boot: the keyslot and its token were "
        "removed again (the volume is as before)",
        "enroll again with the default backend (`--backend native`): systemd-cryptenroll "
        "--fido2-with-client-pin=yes skips the PIN on CTAP 2.1 keys (systemd#31443)"
        if op.backend == "systemd"
        else "check the key (`yktool key info`) and enroll again",
    )


def _roll_back(host: Host, device: str | PurePosixPath, op: Fido2Enrollment, token: Fido2Token) -> None:
    """Remove the keyslot (and then its token) this run just added, when it fails its proof. Only
    ever this run's new one (never an earlier enrollment's), and the passphrase the check step
    proved still opens the volume, so nothing is lost."""
    if op.already or op.new_token is None:
        return
    # the keyslot first, its token after (wipe_slots' order: a kill in between leaves an orphan
    # token, which opens nothing and the next wipe removes)
    cryptenroll.wipe_slots(host, device, [s for s in token.keyslots if s == op.new_slot])
    clear_journal(host, op.uuid)
    op.new_slot = op.new_token = op.credential = None


def _record(host: Host, op: Fido2Enrollment) -> None:
    from yktool.inventory import Registry

    if op.new_token is None or op.credential is None:
        return
    aaguid, serial = _key_facts(op) if op.session is not None else ("", None)
    nickname = op.nickname or (_nickname(host, op) if op.session is not None else op.options.nickname or "primary")
    with Registry.update(host) as registry:
        owner = registry.owner_of(op.credential)
        if owner is not None and op.already and not op.options.nickname:
            nickname = owner.nickname
        registry.ensure_key(nickname, aaguid, serial)
        registry.forget("luks", uuid=op.uuid, token=op.new_token)
        registry.record(
            nickname,
            "luks",
            type="fido2",
            uuid=op.uuid,
            device=op.device,
            keyslot=op.new_slot if op.new_slot is not None else -1,
            token=op.new_token,
            credential_id=op.credential,
            rp_id=RP_ID,
        )
    op.nickname = nickname


def _resume(host: Host, device: str | PurePosixPath, op: Fido2Enrollment, pending: dict[str, Any]) -> None:
    """Finish (import the token, when the present key proves the slot is its own) or remove the
    orphan keyslot a killed run left; the original passphrase opens the volume throughout."""
    from yktool.luks.pending import see_pending
    from yktool.luks.safety import check_remaining

    header = read_header(host, device)
    token: dict[str, Any] = pending["token"]
    slot = int(pending.get("keyslot", -1))
    step = next(s for s in op.plan.steps if s.id == "resume")
    referenced = any(slot in t.keyslots for t in header.tokens.values())
    if slot not in header.keyslots:
        clear_journal(host, op.uuid)
        op.resumed = "nothing to finish: the keyslot was never added"
    elif referenced:
        existing = next((t for t in header.tokens_of_type(TOKEN_TYPE) if slot in t.keyslots), None)
        clear_journal(host, op.uuid)
        op.resumed = "the token had been imported; the journal was stale"
        if isinstance(existing, Fido2Token) and existing.credential == token.get("fido2-credential"):
            op.nickname = str(pending.get("nickname") or "") or None
    else:
        session = op.session
        proven = False
        if session is not None:
            probe = Fido2Token(
                id=-1,
                type=TOKEN_TYPE,
                keyslots=[slot],
                raw=token,
                credential=str(token.get("fido2-credential", "")),
                salt=str(token.get("fido2-salt", "")),
                pin_required=bool(token.get("fido2-clientPin-required")),
                up_required=bool(token.get("fido2-up-required", True)),
                uv_required=bool(token.get("fido2-uv-required")),
            )
            if owns(session, probe):
                passphrase = derive_passphrase(session, probe)
                proven = cryptenroll.check_passphrase(host, device, passphrase, slot)
        if proven:
            op.new_slot = slot
            op.new_token = import_token(host, device, token)
            op.credential = str(token["fido2-credential"])
            op.nickname = str(pending.get("nickname") or "") or None
            clear_journal(host, op.uuid)
            op.resumed = f"finished: token {op.new_token} imported for orphan keyslot {slot}"
            op.already = True
            _skip_rest(op, "check", f"finished the interrupted enrollment (token {op.new_token}, keyslot {slot})")
        elif not looks_like_ours(header, slot):
            # Not the slot yktool was adding (pbkdf2/sha512, 1000 iterations): someone added a slot
            # with that number since. Leave it alone; only the journal goes.
            clear_journal(host, op.uuid)
            op.resumed = f"left keyslot {slot} alone: it is not the one the interrupted run was adding"
        else:
            check_remaining(see_pending(host, read_header(host, device)), [slot])
            cryptenroll.wipe_slots(host, device, [slot])
            clear_journal(host, op.uuid)
            op.resumed = f"removed orphan keyslot {slot} (the key present did not prove it its own)"
    step.detail = op.resumed or ""


def looks_like_ours(header: LuksHeader, slot: int) -> bool:
    """True when `slot` has the KDF yktool gives a FIDO2 keyslot (pbkdf2/sha512, 1000 iterations)."""
    from yktool.luks.pending import minimal_pbkdf

    ks = header.keyslots.get(slot)
    return ks is not None and minimal_pbkdf(ks)


def pending_enrollment(host: Host, uuid: str) -> dict[str, Any] | None:
    """The journal of a half-done enrollment of volume `uuid` (for `luks status`)."""
    return read_journal(host, uuid)


__all__ = [
    "ALGORITHMS",
    "BACKENDS",
    "DEFAULT_ALGORITHM",
    "RP_ID",
    "Fido2Enrollment",
    "Fido2Options",
    "TokenOwner",
    "add_keyslot",
    "default_backend",
    "derive_passphrase",
    "import_token",
    "looks_like_ours",
    "owns",
    "pending_enrollment",
    "plan_enroll_fido2",
    "render_argv",
    "run_systemd_enroll",
    "systemd_argv",
    "test_fido2",
    "token_json",
    "token_owners",
]
