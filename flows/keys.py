"""The keys a flow works with: one KeySession per key per run (so one PIN entry per key), opened
when a step first needs it, with the swap ("now insert your backup key") in between, and the
touch / PIN counts that the flows print at the end."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from dataclasses import dataclass, field

from fido2.ctap2.pin import ClientPin

from yktool.errors import PinInvalid, Refused
from yktool.fido.devices import entry_for
from yktool.fido.session import KeySession
from yktool.host import Host
from yktool.keynames import identify_key
from yktool.luks import fido2 as luks_fido2

# (role, device spec or None) -> an open session; the front end supplies it with its interaction
SessionOpener = Callable[[str, "str | None"], AbstractContextManager[KeySession]]


@dataclass
class Counts:
    touches: int = 0
    pin_prompts: int = 0

    def to_json(self) -> dict[str, int]:
        return {"touches": self.touches, "pin_prompts": self.pin_prompts}


@dataclass
class KeyRing:
    """Open sessions by role. Only one key is open at a time: real keys are swapped by hand, and
    `--device auto` must see exactly one."""

    host: Host
    opener: SessionOpener
    specs: dict[str, str | None]
    nicknames: dict[str, str]
    # called before a role other than the first is opened (the person swaps keys)
    on_swap: Callable[[str], None] | None = None
    # a wrong PIN in the PIN step: (role, attempts left) -> True to ask again (the front end says
    # how many are left, and asks before the key gets close to blocking); None: the error stands
    on_wrong_pin: Callable[[str, int | None], bool] | None = None
    counts: dict[str, Counts] = field(default_factory=dict)
    _open_role: str | None = None
    _session: KeySession | None = None
    _stack: contextlib.ExitStack | None = None
    _opened: list[str] = field(default_factory=list)
    _typed_before: int = 0  # the interaction's PIN count when the open session began

    def session(self, role: str) -> KeySession:
        """The session of `role`, opening it (and closing the other) when needed."""
        if self._open_role == role and self._session is not None:
            return self._session
        self.close()
        if self._opened and role not in self._opened and self.on_swap is not None:
            self.on_swap(role)
        elif not self._opened and role != "primary" and self.on_swap is not None:
            # a resumed run that starts with the backup key: say which key to insert
            self.on_swap(role)
        stack = contextlib.ExitStack()
        try:
            session = stack.enter_context(self.opener(role, self.specs.get(role)))
            self._check_identity(role, session)
        except BaseException:
            stack.close()
            raise
        self._stack, self._session, self._open_role = stack, session, role
        self._typed_before = self._typed(session) or 0
        if role not in self._opened:
            self._opened.append(role)
        return session

    def _check_identity(self, role: str, session: KeySession) -> None:
        """Refuse the wrong key in hand (the primary where the backup is wanted, or the reverse),
        found with silent probes of the registry's credentials (no touch, no PIN)."""
        known = identify_key(session, self.host)
        want = self.nicknames.get(role, "")
        if known is not None and want and known != want and known in self.nicknames.values():
            raise Refused(
                f"the key in hand is the one registered as {known!r}, not {want!r}",
                f"remove it and insert the {role} key ({want}), then run the same command again",
            )

    def close(self) -> None:
        """Close the open session, adding its touches and PIN prompts to the counts."""
        if self._session is not None and self._open_role is not None:
            c = self.counts.setdefault(self._open_role, Counts())
            c.touches += self._session.touches
            # what the person typed: the interaction counts it when it can (building blocks may ask
            # it directly); else every PIN request of the session counts. The front end keeps one
            # interaction per key for the whole run, so only what it counted meanwhile is new.
            typed = self._typed(self._session)
            c.pin_prompts += typed - self._typed_before if typed is not None else self._session.pin_prompts
        if self._stack is not None:
            self._stack.close()
        self._stack, self._session, self._open_role = None, None, None

    @staticmethod
    def _typed(session: KeySession) -> int | None:
        return session.interaction.pin_prompts

    def check_pin(self, role: str, new_pin: Callable[[str], str]) -> str:
        """The PIN step of a flow: a key without a PIN gets a first one (`new_pin` asks the person),
        else its PIN is proven with a token. Either way the session holds the PIN for the run."""
        s = self.session(role)
        if not s.pin_is_set:
            pin = new_pin(role)
            self.add_pin_entry(role)
            s.set_pin(pin)
            if hasattr(s.interaction, "pin"):
                # the person just typed it: building blocks that ask the interaction get it too
                s.interaction.pin = pin
            return f"set a first PIN on the {role} key"
        while True:
            try:
                s.pin_token(ClientPin.PERMISSION.GET_ASSERTION, luks_fido2.RP_ID)
                break
            except PinInvalid as exc:  # the session forgot the PIN: the next try asks again
                if self.on_wrong_pin is None or not self.on_wrong_pin(role, exc.retries):
                    raise
        return f"PIN accepted ({s.pin_retries()} attempts left)"

    def add_touches(self, role: str, touches: int) -> None:
        """Touches another program asked for on the key (systemd-cryptenroll): the session saw none."""
        self.counts.setdefault(role, Counts()).touches += touches

    def add_pin_entry(self, role: str) -> None:
        """A PIN typed outside the session's own prompt (setting a first PIN counts as one)."""
        self.counts.setdefault(role, Counts()).pin_prompts += 1

    def totals(self) -> dict[str, dict[str, int]]:
        return {role: c.to_json() for role, c in self.counts.items()}


@contextlib.contextmanager
def ring(
    host: Host,
    opener: SessionOpener,
    specs: dict[str, str | None],
    nicknames: dict[str, str],
    on_swap: Callable[[str], None] | None = None,
    on_wrong_pin: Callable[[str, int | None], bool] | None = None,
) -> Iterator[KeyRing]:
    keys = KeyRing(host, opener, specs, nicknames, on_swap, on_wrong_pin)
    try:
        yield keys
    finally:
        keys.close()


@dataclass
class Passphrases:
    """A LUKS volume's current passphrase: read from `key_file` (inside the root) when given,
    else asked once per device per run; kept in memory only."""

    host: Host
    key_file: str
    ask: Callable[[str], bytes]
    _known: dict[str, bytes] = field(default_factory=dict, repr=False)  # secrets: never in a repr

    def __call__(self, device: str) -> bytes:
        if device not in self._known:
            self._known[device] = self.host.read_bytes(self.key_file) if self.key_file else self.ask(device)
        return self._known[device]


def enroll_luks_fido2(
    host: Host, device: str, session: KeySession, nickname: str, unlock: Passphrases
) -> luks_fido2.Fido2Enrollment:
    """A flow's LUKS2 FIDO2 step: luks.fido2's plan with the flow's session (its PIN typed once
    per run) and the volume's passphrase only when the plan needs it; applied, the plan proves
    the new keyslot opens with the key and records it."""
    spec = entry_for(session.device).spec  # native backend for every key (systemd#31443)
    op = luks_fido2.plan_enroll_fido2(host, device, spec, luks_fido2.Fido2Options(nickname=nickname))
    op.session = session
    if op.needs_unlock:
        op.unlock = unlock(device)
    op.plan.apply()
    return op
