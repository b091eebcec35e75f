"""Device selection (CONTRACT STUB): auto | hid:/dev/hidrawN | sim:PATH -> CtapDevice."""

from __future__ import annotations

from fido2.ctap import CtapDevice


def open_device(spec: str | None = None) -> CtapDevice:
    raise NotImplementedError
