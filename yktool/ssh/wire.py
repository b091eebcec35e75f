"""The SSH wire encoding (RFC 4251 §5): uint32, string, mpint; a reader that refuses garbage."""

from __future__ import annotations

import struct

from yktool.errors import UsageError


def u8(value: int) -> bytes:
    return bytes([value & 0xFF])


def u32(value: int) -> bytes:
    return struct.pack(">I", value)


def string(value: bytes | str) -> bytes:
    """A length-prefixed byte string (text is UTF-8)."""
    data = value.encode("utf-8") if isinstance(value, str) else value
    return u32(len(data)) + data


def mpint(value: int) -> bytes:
    """A non-negative multiple-precision integer: big-endian, minimal, a 0x00 lead if the top bit is set."""
    if value < 0:
        raise ValueError("negative mpint")
    if value == 0:
        return u32(0)
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    if raw[0] & 0x80:
        raw = b"\0" + raw
    return string(raw)


class Reader:
    """Reads wire fields from a buffer; running past the end raises UsageError naming `what`."""

    def __init__(self, data: bytes, what: str = "SSH data") -> None:
        self.data = data
        self.pos = 0
        self.what = what

    def _take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise UsageError(
                f"{self.what} is truncated or malformed", "the file is damaged; restore it or make it again"
            )
        out = self.data[self.pos : self.pos + n]
        self.pos += n
        return out

    def raw(self, n: int) -> bytes:
        return self._take(n)

    def u8(self) -> int:
        return self._take(1)[0]

    def u32(self) -> int:
        value: int = struct.unpack(">I", self._take(4))[0]
        return value

    def string(self) -> bytes:
        return self._take(self.u32())

    def text(self) -> str:
        try:
            return self.string().decode("utf-8")
        except UnicodeDecodeError:
            raise UsageError(f"{self.what} holds a name that is not UTF-8", "the file is damaged") from None

    def mpint(self) -> int:
        return int.from_bytes(self.string(), "big")

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def done(self) -> None:
        """Insist the buffer was consumed exactly."""
        if self.remaining:
            raise UsageError(f"{self.what} has {self.remaining} unexpected trailing bytes", "the file is damaged")
