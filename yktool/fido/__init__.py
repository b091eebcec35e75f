"""FIDO2 keys: finding them, opening them, talking to them.

`open_device(spec)` is the one public way in for scripts and tests: it returns a python-fido2
`CtapDevice` for `auto`, `hid:/dev/hidrawN` or `sim:PATH` (the software key). Higher-level work
(PIN tokens, credentials, hmac-secret, probing) is in `yktool.fido.session.KeySession`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fido2.ctap import CtapDevice


def open_device(spec: str | None = None) -> CtapDevice:
    """Open the key named by `spec` (default: $YKTOOL_DEVICE, else `auto`)."""
    from yktool.fido.devices import open_device as _open

    return _open(spec)
