"""The emulated key's touch sensor: who answers when the authenticator asks for user presence.

A `TouchGate` is the software key's `presence` callback. Its policy says what happens when a
touch is requested:

- `auto`: touched at once;  `deny`: refused at once (CTAP2_ERR_OPERATION_DENIED);
- `timeout`: nobody touches; after `timeout` seconds CTAP2_ERR_USER_ACTION_TIMEOUT;
- `ask`: `prompt()` is called (the CLI prints "Touch requested: press Enter") and the request
  waits for `answer(True/False)` from the terminal or the control socket, up to `timeout`.

Under `timeout` and `ask` a control-socket `approve`/`deny` answers the waiting request too.
A CANCEL from the host (the `cancel` event bound for the request) ends the wait at once.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from enum import StrEnum

from fido2.ctap import STATUS

TOUCH_TIMEOUT = 30.0  # seconds a request waits for a touch before USER_ACTION_TIMEOUT


class TouchPolicy(StrEnum):
    AUTO = "auto"
    DENY = "deny"
    TIMEOUT = "timeout"
    ASK = "ask"


@dataclass
class TouchCounts:
    requested: int = 0
    approved: int = 0
    denied: int = 0
    timed_out: int = 0
    cancelled: int = 0

    def to_json(self) -> dict[str, int]:
        return asdict(self)


class TouchGate:
    """See the module docstring. Thread-safe: `presence` runs in the transport's worker thread,
    `answer` and `policy` changes come from the terminal or the control socket."""

    def __init__(
        self,
        policy: TouchPolicy = TouchPolicy.AUTO,
        *,
        timeout: float = TOUCH_TIMEOUT,
        prompt: Callable[[], None] | None = None,
    ) -> None:
        self.timeout = timeout
        self.prompt = prompt
        self._policy = policy
        self._cond = threading.Condition()
        self._counts = TouchCounts()
        self._waiting = False
        self._answer: bool | None = None
        self._cancel: threading.Event | None = None
        self._on_keepalive: Callable[[STATUS], None] | None = None

    @property
    def policy(self) -> TouchPolicy:
        with self._cond:
            return self._policy

    @policy.setter
    def policy(self, value: TouchPolicy) -> None:
        with self._cond:
            self._policy = value

    def bind(self, cancel: threading.Event | None, on_keepalive: Callable[[STATUS], None] | None) -> None:
        """The request about to run: its CANCEL event and keepalive status callback."""
        with self._cond:
            self._cancel, self._on_keepalive = cancel, on_keepalive

    def counts(self) -> TouchCounts:
        with self._cond:
            return TouchCounts(**asdict(self._counts))

    @property
    def waiting(self) -> bool:
        """A touch request is waiting for an answer."""
        with self._cond:
            return self._waiting

    def answer(self, touched: bool) -> bool:
        """Touch (True) or refuse (False) the waiting request; False when none is waiting."""
        with self._cond:
            if not self._waiting or self._answer is not None:
                return False
            self._answer = touched
            self._cond.notify_all()
            return True

    def wait_for_request(self, timeout: float) -> bool:
        """Block until a touch request is waiting (True) or `timeout` passes (False)."""
        with self._cond:
            return self._cond.wait_for(lambda: self._waiting and self._answer is None, timeout)

    def presence(self) -> bool | None:
        """The software key's presence callback: True touched, False refused, None timed out
        or cancelled (the key then answers KEEPALIVE_CANCEL when the cancel event is set)."""
        with self._cond:
            self._counts.requested += 1
            policy, cancel, on_keepalive = self._policy, self._cancel, self._on_keepalive
            if policy is TouchPolicy.AUTO:
                self._counts.approved += 1
                return True
            if policy is TouchPolicy.DENY:
                self._counts.denied += 1
                return False
            self._waiting, self._answer = True, None
            self._cond.notify_all()
        if policy is TouchPolicy.ASK and self.prompt is not None:
            self.prompt()
        result = self._wait(cancel)
        if result is True and on_keepalive is not None:
            on_keepalive(STATUS.PROCESSING)  # touched: the key is working again, not waiting
        return result

    def _wait(self, cancel: threading.Event | None) -> bool | None:
        deadline = time.monotonic() + self.timeout
        with self._cond:
            try:
                while True:
                    if self._answer is not None:
                        if self._answer:
                            self._counts.approved += 1
                        else:
                            self._counts.denied += 1
                        return self._answer
                    if cancel is not None and cancel.is_set():
                        self._counts.cancelled += 1
                        return None
                    left = deadline - time.monotonic()
                    if left <= 0:
                        self._counts.timed_out += 1
                        return None
                    # The cancel event is set by another lock's holder: look again every 20 ms.
                    self._cond.wait(min(left, 0.02))
            finally:
                self._waiting, self._answer = False, None
