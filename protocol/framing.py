"""Length-prefixed framing, with no I/O: bytes in, frames out.

Each frame is a 4-byte big-endian payload length followed by the payload (one
JSON message). A length over the limit is a protocol violation the peer cannot
recover from, because the stream can no longer be re-synchronised; the decoder
raises and the connection is closed after an error reply.
"""

from __future__ import annotations

import struct
from typing import Final

DEFAULT_MAX_FRAME: Final = 4 * 1024 * 1024
_HEADER = struct.Struct(">I")
HEADER_SIZE: Final = _HEADER.size


class FrameTooLarge(Exception):
    def __init__(self, size: int, limit: int) -> None:
        super().__init__(f"frame of {size} bytes exceeds the limit of {limit} bytes")
        self.size = size
        self.limit = limit


def encode_frame(payload: bytes, max_frame: int = DEFAULT_MAX_FRAME) -> bytes:
    if len(payload) > max_frame:
        raise FrameTooLarge(len(payload), max_frame)
    return _HEADER.pack(len(payload)) + payload


class FrameDecoder:
    """Accumulates bytes and yields complete frame payloads."""

    def __init__(self, max_frame: int = DEFAULT_MAX_FRAME) -> None:
        self.max_frame = max_frame
        self._buffer = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer += data
        frames: list[bytes] = []
        while len(self._buffer) >= HEADER_SIZE:
            (size,) = _HEADER.unpack_from(self._buffer)
            if size > self.max_frame:
                raise FrameTooLarge(size, self.max_frame)
            end = HEADER_SIZE + size
            if len(self._buffer) < end:
                break
            frames.append(bytes(self._buffer[HEADER_SIZE:end]))
            del self._buffer[:end]
        return frames

    @property
    def pending(self) -> int:
        return len(self._buffer)
