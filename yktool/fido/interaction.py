"""KeyInteraction: python-fido2's `UserInteraction` plus the two moments yktool's session reports.

python-fido2 tells its interaction when a touch is wanted (`prompt_up`) and asks it for a PIN
(`request_pin`), but has no word for "the touch is over" or "the key refused that PIN".
`KeySession` calls `touch_done` after every exchange with the key and `pin_rejected` when the
key refuses a PIN; both do nothing here, subclasses (the terminal's, the demo's) override them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fido2.ctap2.pin import ClientPin


class KeyInteraction:
    """A person (or a script) at the key: PIN, touches, and the two reports above.

    The same methods as python-fido2's `UserInteraction`, not a subclass of it: importing
    fido2.client pulls in U2F, attestation and X.509 (a quarter of yktool's start-up, several
    seconds in the VM tier), and no yktool code hands this to python-fido2's client.
    """

    def prompt_up(self) -> None:
        """The key wants a touch."""

    def request_pin(self, permissions: ClientPin.PERMISSION, rp_id: str | None) -> str | None:
        """The PIN to use, or None to give up."""
        return None

    def request_uv(self, permissions: ClientPin.PERMISSION, rp_id: str | None) -> bool:
        """Whether built-in user verification may be used (python-fido2's default: yes)."""
        return True

    # the PINs the person typed, for an interaction that counts them (the terminal's, the demo's);
    # None: it does not, and a flow counts the session's PIN requests instead
    pin_prompts: int | None = None

    def touch_done(self) -> None:
        """The exchange that may have wanted a touch is over (stop a spinner, say)."""

    def pin_rejected(self) -> None:
        """The key refused the PIN it was given: never hand the same one out again."""
