"""Decoding Docker's multiplexed log stream into log records, with no I/O.

With ``timestamps=true`` each frame is an 8-byte header (stream, 3 zero bytes,
big-endian length) and a payload ``<RFC3339Nano> <bytes>``. Docker splits lines
longer than 16 KiB into frames without a trailing newline; we join them.

Resuming after a daemon restart is exact because a completed line is one
record. Docker's timestamps are not monotonic across stdout and stderr (it reads
the two pipes separately), so resuming "after the last timestamp" could drop a
line. Instead the daemon asks Docker for every entry since a point safely before
the last stored record, and skips, per stream, exactly as many lines as it stored
of that stream in that window: within one stream, what was stored is always a
prefix of that window in Docker's order. Every fragment of a long line carries
its first fragment's time, so a line still pending when the stream broke off is
only seen again if the window reaches back to that time: the log keeps the time
of pending long lines beside it (LogFile.mark_long_lines) for this.
"""

from __future__ import annotations

import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

import msgspec

from runyard.protocol.logformat import TIMESTAMP_WIDTH

_STREAM_LETTER: Final = {1: "O", 2: "E"}
_HEADER: Final = struct.Struct(">BxxxI")
_json_decode = msgspec.json.decode


def normalize_timestamp(ts: str) -> str:
    """Docker trims trailing zeros of the fraction; make every timestamp 30 chars wide."""
    if len(ts) == TIMESTAMP_WIDTH:
        return ts
    if ts.endswith("Z") and len(ts) >= 20:
        base, _, frac = ts[:-1].partition(".")
        return f"{base}.{(frac + '000000000')[:9]}Z"
    return ts  # not Docker's format; keep it rather than lose the line


def split_timestamp(timestamp: str) -> tuple[datetime, str]:
    """Our fixed-width "YYYY-MM-DDTHH:MM:SS.nnnnnnnnnZ" as whole seconds (UTC) and 9 fraction digits."""
    base, _, frac = timestamp.rstrip("Z").partition(".")
    return datetime.fromisoformat(base + "+00:00"), (frac + "000000000")[:9]


def timestamp_now() -> str:
    """Now, in the log's fixed-width form (the clock gives microseconds; pad to nanoseconds)."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f000Z")


def collapse_carriage_returns(text: str) -> str:
    """A progress bar rewrites its line with \\r: keep only what a terminal would show last."""
    if "\r" not in text:
        return text
    stripped = text.rstrip("\r")
    return stripped.rsplit("\r", 1)[-1] if stripped else ""


def metadata_points(lines: Iterable[tuple[str, str]]) -> list[tuple[str, str, dict[str, Any]]]:
    """(time, text, values) for each stdout line, given as (time, text), that is a metadata point."""
    points = []
    for ts, text in lines:
        values = metadata_of(text)
        if values is not None:
            points.append((ts, text, values))
    return points


METADATA_MAX_BYTES: Final = 256 * 1024  # a longer JSON line is kept in the log, not as a metadata point


def metadata_of(text: str) -> dict[str, Any] | None:
    """A stdout line that is a JSON object is a metadata point; anything else is just a line."""
    if not text.startswith("{") or len(text) > METADATA_MAX_BYTES:
        return None
    try:
        value = _json_decode(text)
    except (RecursionError, UnicodeError):  # too deep, or bytes that were not UTF-8: a line, not a point
        return None
    except msgspec.DecodeError:
        import json

        try:  # json accepts NaN and Infinity, which msgspec rejects
            value = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nesting deeper than Python's stack
            return None
    # Points keep the program's own JSON text; big integers and NaN travel as they are (NaN as null).
    return value if isinstance(value, dict) else None


@dataclass(slots=True)
class ResumePoint:
    since: str = ""  # ask Docker for entries at or after this time ("" = from the start)
    # Lines of each stream in that window that are already stored. Counted per stream: within one
    # stream Docker's order is the order of writing, but across the two it is not, and once a long
    # line is pending the stored records are no prefix of Docker's order of both together.
    stdout: int = 0
    stderr: int = 0


@dataclass(slots=True)
class Decoded:
    records: list[bytes] = field(default_factory=list)  # whole records in the log format
    candidates: list[tuple[str, str]] = field(default_factory=list)  # (time, text) of stdout lines starting "{"
    # Long lines (Docker sent them in 16 KiB fragments, each stamped with the first one's time):
    # (letter, time) of those now pending, first seen in this chunk, and of those completed in it
    # (stored or skipped). The log keeps both, so a resume can reach back to a pending line's start.
    started: list[tuple[str, str]] = field(default_factory=list)
    ended: list[tuple[str, str]] = field(default_factory=list)


@dataclass(slots=True)
class _Partial:
    ts: str
    data: bytearray
    announced: bool = False  # reported in Decoded.started


def _collapse_partial(data: bytearray) -> None:
    """Drop what a terminal would no longer show of a line still being written: everything up to
    the last \r that has more text after it, and all but one of a run of trailing \r. Collapsing
    the rest later (collapse_carriage_returns) gives the same text, and a progress bar that never
    ends its line keeps this buffer at the size of one bar."""
    end = len(data)
    while end and data[end - 1] == 13:
        end -= 1
    if len(data) - end > 1:
        del data[end + 1 :]
    cut = data.rfind(b"\r", 0, end)
    if cut >= 0:
        del data[: cut + 1]


_PREFIX: Final = {stream: f"{letter} ".encode() for stream, letter in _STREAM_LETTER.items()}


@dataclass(slots=True)
class DockerLogDecoder:
    resume: ResumePoint = field(default_factory=ResumePoint)
    _buffer: bytearray = field(default_factory=bytearray)
    _partial: dict[int, _Partial] = field(default_factory=dict)

    def feed(self, chunk: bytes) -> Decoded:
        """Every line completed by ``chunk``, as log records (bytes, possibly invalid UTF-8)."""
        buf = self._buffer
        buf += chunk
        out = Decoded()
        joined = bytearray()  # the records, back to back: one object instead of one per line
        candidates = out.candidates
        unpack = _HEADER.unpack_from
        partial = self._partial
        resume = self.resume
        skipping = resume.stdout > 0 or resume.stderr > 0
        pos = 0
        end = len(buf)
        # Checked once per chunk rather than once per line: most chunks have no \r at all.
        has_cr = buf.find(b"\r") >= 0
        prefixes = _PREFIX
        width = TIMESTAMP_WIDTH
        # The hot loop of log ingestion. A Docker payload is "<timestamp> <text>\n", which is
        # already a record once the stream letter is put in front: no per-line decoding.
        while end - pos >= 8:
            stream, size = unpack(buf, pos)
            start = pos + 8
            stop = start + size
            if stop > end:
                break
            pos = stop
            # A full-width timestamp puts the space at a fixed place; Docker trims trailing
            # zeros of the fraction (one line in ten), and those are padded back here.
            # (A space there after a trimmed one is the text's own: an indented line.)
            space = start + width
            if space >= stop or buf[space] != 32 or buf[space - 1] != 90:  # 90: "Z"
                space = buf.find(b" ", start, stop)
                if space < 0:
                    continue
            # Lines being skipped on resume (a short stretch) take the careful path below.
            if buf[stop - 1] == 10 and not skipping and not (partial and stream in partial) and not (
                has_cr and buf.find(b"\r", space, stop) >= 0
            ):
                short = width - (space - start)
                if short and (short > 10 or buf[space - 1] != 90):  # 90: "Z"
                    short = -1  # not Docker's timestamp form: take the careful path below
                if short >= 0:
                    joined += prefixes.get(stream) or b"O "
                    if short:
                        joined += buf[start : space - 1]
                        if buf.find(b".", start, space) < 0:
                            joined += b"."
                            short -= 1
                        joined += b"0" * short
                        joined += b"Z"
                        joined += buf[space:stop]
                    else:
                        joined += buf[start:stop]
                    if stream == 1 and buf[space + 1] == 123:  # "{": maybe a metadata point
                        candidates.append((normalize_timestamp(buf[start:space].decode("ascii")),
                                           buf[space + 1 : stop - 1].decode("utf-8", "replace")))
                    continue
            ts = buf[start:space].decode("ascii", "replace")
            content = bytes(buf[space + 1 : stop])
            if content.endswith(b"\n"):
                pending = partial.pop(stream, None)
                if pending is not None:
                    pending.data += content
                    content = bytes(pending.data)
                    ts = pending.ts
                    out.ended.append((_STREAM_LETTER.get(stream, "O"), normalize_timestamp(ts)))
                if joined:
                    out.records.append(bytes(joined))
                    joined.clear()
                self._emit(out, stream, ts, content[:-1])
                skipping = resume.stdout > 0 or resume.stderr > 0
            else:
                pending = partial.get(stream)
                if pending is None:
                    pending = partial[stream] = _Partial(ts, bytearray(content))
                else:
                    pending.data += content
                if b"\r" in content:
                    _collapse_partial(pending.data)
        if joined:
            out.records.append(bytes(joined))
        if partial:
            for stream, pending in partial.items():
                if not pending.announced:
                    pending.announced = True
                    out.started.append((_STREAM_LETTER.get(stream, "O"), normalize_timestamp(pending.ts)))
        del buf[:pos]
        return out

    def flush(self) -> Decoded:
        """Lines still open when the container ended (a last line without newline). Only then: a
        stream that broke off (a host outage) leaves them pending, to be read again on resume."""
        out = Decoded()
        for stream, pending in sorted(self._partial.items()):
            out.ended.append((_STREAM_LETTER.get(stream, "O"), normalize_timestamp(pending.ts)))
            self._emit(out, stream, pending.ts, bytes(pending.data))
        self._partial.clear()
        return out

    def _emit(self, out: Decoded, stream: int, ts: str, content: bytes) -> None:
        resume = self.resume
        if stream == 2:
            if resume.stderr > 0:
                resume.stderr -= 1
                return
        elif resume.stdout > 0:
            resume.stdout -= 1
            return
        ts = normalize_timestamp(ts)
        text = content.decode("utf-8", "replace")
        if "\r" in text:
            text = collapse_carriage_returns(text)
        letter = _STREAM_LETTER.get(stream, "O")
        out.records.append(f"{letter} {ts} {text}\n".encode())
        if letter == "O" and text[:1] == "{":
            out.candidates.append((ts, text))
