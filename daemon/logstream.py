"""Decoding Docker's multiplexed log stream into log records, with no I/O.

With ``timestamps=true`` each frame is an 8-byte header (stream, 3 zero bytes,
big-endian length) and a payload ``<RFC3339Nano> <bytes>``. Docker splits lines
longer than 16 KiB into frames without a trailing newline; we join them.

Resuming after a daemon restart is exact because a completed line is one
record. Docker's timestamps are not monotonic across stdout and stderr (it reads
the two pipes separately), so resuming "after the last timestamp" could drop a
line. Instead the daemon asks Docker for every entry since a point safely before
the last stored record, and skips exactly as many lines as it stored in that
window: what was stored is always a prefix of that window, in Docker's order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Final

import msgspec

from runyard.protocol.logformat import TIMESTAMP_WIDTH

_STREAM_LETTER: Final = {1: "O", 2: "E"}
_json_decode = msgspec.json.decode


def normalize_timestamp(ts: str) -> str:
    """Docker trims trailing zeros of the fraction; make every timestamp 30 chars wide."""
    if len(ts) == TIMESTAMP_WIDTH:
        return ts
    if ts.endswith("Z") and len(ts) >= 20:
        base, _, frac = ts[:-1].partition(".")
        return f"{base}.{(frac + '000000000')[:9]}Z"
    return ts  # not Docker's format; keep it rather than lose the line


def collapse_carriage_returns(text: str) -> str:
    """A progress bar rewrites its line with \\r: keep only what a terminal would show last."""
    if "\r" not in text:
        return text
    stripped = text.rstrip("\r")
    return stripped.rsplit("\r", 1)[-1] if stripped else ""


def metadata_of(text: str) -> dict[str, Any] | None:
    """A stdout line that is a JSON object is a metadata point; anything else is just a line."""
    if not text.startswith("{"):
        return None
    try:
        value = _json_decode(text)
    except msgspec.DecodeError:
        import json

        try:  # json accepts NaN and Infinity, which msgspec rejects
            value = json.loads(text)
        except ValueError:
            return None
    return value if isinstance(value, dict) else None


@dataclass(slots=True)
class ResumePoint:
    since: str = ""  # ask Docker for entries at or after this time ("" = from the start)
    skip: int = 0  # lines in that window that are already stored


@dataclass(slots=True)
class DockerLogDecoder:
    resume: ResumePoint = field(default_factory=ResumePoint)
    _buffer: bytearray = field(default_factory=bytearray)
    _partial: dict[int, tuple[str, bytearray]] = field(default_factory=dict)

    def feed(self, chunk: bytes) -> list[tuple[str, str, str]]:
        """Return (stream letter, timestamp, text) for every line completed by ``chunk``."""
        buf = self._buffer
        buf += chunk
        out: list[tuple[str, str, str]] = []
        pos = 0
        end = len(buf)
        while end - pos >= 8:
            stream = buf[pos]
            size = int.from_bytes(buf[pos + 4 : pos + 8], "big")
            if end - pos - 8 < size:
                break
            payload = bytes(buf[pos + 8 : pos + 8 + size])
            pos += 8 + size
            space = payload.find(b" ")
            if space < 0:
                continue
            ts = payload[:space].decode("ascii", "replace")
            content = payload[space + 1 :]
            if content.endswith(b"\n"):
                pending = self._partial.pop(stream, None)
                if pending is not None:
                    pending[1].extend(content)
                    content = bytes(pending[1])
                self._emit(out, stream, ts, content[:-1])
            else:
                pending = self._partial.get(stream)
                if pending is None:
                    self._partial[stream] = (ts, bytearray(content))
                else:
                    pending[1].extend(content)
        del buf[:pos]
        return out

    def flush(self) -> list[tuple[str, str, str]]:
        """Lines still open when the stream ended (a last line without newline)."""
        out: list[tuple[str, str, str]] = []
        for stream, (ts, content) in sorted(self._partial.items()):
            self._emit(out, stream, ts, bytes(content))
        self._partial.clear()
        return out

    def _emit(self, out: list[tuple[str, str, str]], stream: int, ts: str, content: bytes) -> None:
        if self.resume.skip > 0:
            self.resume.skip -= 1
            return
        ts = normalize_timestamp(ts)
        text = content.decode("utf-8", "replace")
        if "\r" in text:
            text = collapse_carriage_returns(text)
        out.append((_STREAM_LETTER.get(stream, "O"), ts, text))
