"""Waiting for the person to swap keys ("remove the key, insert the backup") before a flow opens
the next key with `--device auto`: without the wait, auto opens whatever is in the port at that
instant (the key just used, which the flow then refuses as the wrong one, or nothing at all).

A key counts as swapped in once one of the keys present when the wait began has been seen gone
and exactly one key is present. Keys are told apart by hidraw node and the kernel's HID device
name under it (0003:VVVV:PPPP.NNNN, its sequence number new for every device the kernel adds), so
a backup that gets the node the primary just left is still seen as a new key.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass

from yktool.errors import NoDevice

SWAP_TIMEOUT = 300.0  # seconds a person gets for the swap; a resumed run picks up where this one stopped
POLL_INTERVAL = 0.2

KeysPresent = Callable[[], "frozenset[str] | None"]


def keys_present() -> frozenset[str] | None:
    """One name per FIDO HID key present, unique per plug-in; None where keys cannot be listed
    (no hidraw here: the flow cannot see a swap and must ask the person instead)."""
    try:
        from fido2.hid import list_descriptors

        descriptors = list(list_descriptors())  # type: ignore[no-untyped-call]
    except (ImportError, OSError):
        return None
    names = set()
    for d in descriptors:
        path = d.path.decode("utf-8", "replace") if isinstance(d.path, bytes) else str(d.path)
        names.add(f"{path}@{_kernel_device(path)}")
    return frozenset(names)


def _kernel_device(hidraw: str) -> str:
    try:
        return os.path.basename(os.path.realpath(f"/sys/class/hidraw/{os.path.basename(hidraw)}/device"))
    except OSError:
        return ""


@dataclass
class SwapWait:
    """The keys present when the person was told to swap; `until_swapped` waits for the swap."""

    before: frozenset[str]
    present: KeysPresent = keys_present
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep

    @classmethod
    def begin(cls, present: KeysPresent = keys_present) -> SwapWait | None:
        """Note the keys in now (before the instruction is acted on); None when keys cannot be listed."""
        before = present()
        return None if before is None else cls(before, present)

    def until_swapped(
        self, role: str, timeout: float = SWAP_TIMEOUT, on_removed: Callable[[], None] | None = None
    ) -> None:
        """Return once a key was removed (when one was in) and exactly one key is present."""
        removed = not self.before
        deadline = self.clock() + timeout
        while True:
            now = self.present() or frozenset()
            if not removed and self.before - now:
                removed = True
                if on_removed is not None:
                    on_removed()
            if removed and len(now) == 1:
                return
            if self.clock() >= deadline:
                raise NoDevice(
                    f"the {role} key was not swapped in within {timeout:.0f} s "
                    f"({'no key removed yet' if not removed else f'{len(now)} keys present, want exactly 1'})",
                    f"remove the other key, insert the {role} key, then run the same command again "
                    "(it resumes where it stopped)",
                )
            self.sleep(POLL_INTERVAL)
