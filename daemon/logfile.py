"""One execution's log: an append-only file of records, addressable by byte offset.

Head, tail and ranges read only what they return, so they stay cheap on logs of
millions of lines. Followers wait on a condition that every append notifies.
"""

from __future__ import annotations

import asyncio
import os
from datetime import timedelta
from pathlib import Path
from typing import Final

from runyard.protocol.logformat import HEADER_WIDTH, STREAM_LETTERS, TIMESTAMP_WIDTH

from .logstream import ResumePoint, split_timestamp

_BLOCK: Final = 1 << 16


RECORD_SHOWN_MAX: Final = 1 << 20  # a longer record is sent to clients cut, with a note; the file keeps it whole


def cap_records(data: bytes, limit: int = RECORD_SHOWN_MAX) -> bytes:
    """Whole records, each cut to ``limit`` bytes with a note of what was left out, so that one
    enormous line cannot make a reply larger than a frame."""
    if len(data) <= limit:
        return data
    out = []
    for record in data.split(b"\n")[:-1]:
        if len(record) > limit:
            cut = record[:limit]
            while cut and (cut[-1] & 0xC0) == 0x80:  # do not split a UTF-8 character
                cut = cut[:-1]
            record = cut + f" [... {len(record) - len(cut):,} more bytes of this line not shown]".encode()
        out.append(record)
    return b"\n".join(out) + b"\n"


def _matches(record: bytes, letter: bytes | None) -> bool:
    return letter is None or record[:1] == letter


class LogFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.size = path.stat().st_size if path.exists() else 0
        self.finished = False
        self._changed = asyncio.Condition()
        self._counted_offset = 0
        self._counted_lines = 0
        # Where the current attempt's records begin: resuming a container's or process's output
        # counts only records from here (an execution re-queued after losing its host starts anew).
        self.base = 0

    def open_for_append(self) -> None:
        """Open for writing, first cutting off a torn last record left by a crash."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_APPEND, 0o640)
        size = os.fstat(fd).st_size
        if size:
            tail_start = max(0, size - _BLOCK)
            tail = os.pread(fd, size - tail_start, tail_start)
            cut = tail.rfind(b"\n")
            good = tail_start + cut + 1 if cut >= 0 else 0
            if good != size:
                # Nothing is lost: a torn record was never acknowledged and is re-read from Docker.
                os.ftruncate(fd, good)
                size = good
        self._fd = fd
        self.size = size

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def append(self, data: str | bytes) -> int:
        """Append whole records (valid UTF-8) and wake followers; returns the new size."""
        if not data:
            return self.size
        assert self._fd is not None, "log not opened for append"
        raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
        view = memoryview(raw)
        try:
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        except OSError:
            # Disk full, say: take back what part of this append got written, so the file still
            # ends on a whole record and the same lines can be appended again later.
            os.ftruncate(self._fd, self.size)
            raise
        self.size += len(raw)
        async with self._changed:
            self._changed.notify_all()
        return self.size

    async def finish(self) -> None:
        self.finished = True
        self.close()
        async with self._changed:
            self._changed.notify_all()

    async def wait_beyond(self, offset: int) -> None:
        """Return once the log is longer than ``offset`` or has finished."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.size > offset or self.finished)

    def _pread(self, offset: int, size: int) -> bytes:
        with self.path.open("rb") as fh:
            fh.seek(offset)
            return fh.read(size)

    def read_range(self, offset: int, max_bytes: int) -> tuple[bytes, int]:
        """Whole records from ``offset``; at least one record even if it is longer than max_bytes."""
        offset = max(0, min(offset, self.size))
        data = self._pread(offset, min(max_bytes, self.size - offset))
        cut = data.rfind(b"\n")
        if cut < 0 and offset < self.size:
            with self.path.open("rb") as fh:  # one record longer than max_bytes
                fh.seek(offset)
                line = fh.readline()
            return line, offset + len(line)
        data = data[: cut + 1]
        return data, offset + len(data)

    def head(self, count: int, stream: str | None = None) -> tuple[bytes, int]:
        """The first ``count`` records (of one stream, if given) and the offset after them."""
        letter = STREAM_LETTERS[stream].encode() if stream else None
        picked: list[bytes] = []
        end = 0
        if count <= 0 or not self.path.exists():
            return b"", 0
        with self.path.open("rb") as fh:
            for record in fh:
                if not record.endswith(b"\n"):
                    break
                end += len(record)
                if _matches(record, letter):
                    picked.append(record)
                    if len(picked) >= count:
                        break
        return b"".join(picked), end

    def tail(self, count: int, stream: str | None = None, size: int | None = None) -> tuple[bytes, int]:
        """The last ``count`` records before byte ``size`` (default: the end) and the offset where
        the first of them starts."""
        letter = STREAM_LETTERS[stream].encode() if stream else None
        if size is None:
            size = self.size  # appends may land while this runs in a thread; read what was there
        if count <= 0 or size == 0:
            return b"", size
        picked: list[bytes] = []
        start = size
        pos = size
        fragment = b""  # the end of a record whose start lies in an earlier block
        with self.path.open("rb") as fh:
            while pos > 0 and len(picked) < count:
                step = min(_BLOCK, pos)
                pos -= step
                fh.seek(pos)
                buf = fh.read(step) + fragment
                if pos > 0:
                    first_nl = buf.find(b"\n")
                    if first_nl < 0:
                        fragment = buf
                        continue
                    fragment, complete, base = buf[: first_nl + 1], buf[first_nl + 1 :], pos + first_nl + 1
                else:
                    fragment, complete, base = b"", buf, 0
                starts: list[int] = []
                records = complete.split(b"\n")[:-1]
                offset = base
                for record in records:
                    starts.append(offset)
                    offset += len(record) + 1
                for record, record_start in zip(reversed(records), reversed(starts), strict=True):
                    if _matches(record, letter):
                        picked.append(record + b"\n")
                        start = record_start
                        if len(picked) >= count:
                            break
        picked.reverse()
        return b"".join(picked), start

    def line_count(self, upto: int | None = None) -> int:
        """Records before byte ``upto`` (default: all); counted incrementally, so repeated calls
        cost only the new bytes."""
        limit = self.size if upto is None else upto
        if limit < self._counted_offset:
            with self.path.open("rb") as fh:  # an earlier point: count the difference backwards
                fh.seek(limit)
                return self._counted_lines - fh.read(self._counted_offset - limit).count(b"\n")
        if self._counted_offset < limit:
            with self.path.open("rb") as fh:
                fh.seek(self._counted_offset)
                remaining = limit - self._counted_offset
                while remaining > 0 and (block := fh.read(min(1 << 20, remaining))):
                    self._counted_lines += block.count(b"\n")
                    remaining -= len(block)
            self._counted_offset = limit
        return self._counted_lines

    def tail_numbered(self, count: int) -> tuple[bytes, int, int, int]:
        """The last ``count`` records, where they start, where they end, and how many records
        come before them; all taken against one size, so appends meanwhile do not skew them."""
        size = self.size
        data, start = self.tail(count, size=size)
        # Counting only moves forward, so count to the end and take the tail's records off.
        return data, start, size, self.line_count(size) - data.count(b"\n")

    def count_by_stream(self) -> dict[str, int]:
        """Stored records per stream letter; how many lines of each stream to skip on resume."""
        counts = {"O": 0, "E": 0, "S": 0}
        if not self.path.exists():
            return counts
        carry = b"\n"  # as if a record ended just before the file; 2 bytes carried, patterns are 3
        with self.path.open("rb") as fh:
            fh.seek(self.base)
            while block := fh.read(1 << 20):
                data = carry + block
                for letter in counts:
                    counts[letter] += data.count(b"\n" + letter.encode() + b" ")
                carry = data[-2:]
        return counts

    def resume_point(self, window_seconds: float = 10.0) -> ResumePoint:
        """Where to resume reading Docker's log so that no line is lost or stored twice.

        ``since`` lies ``window_seconds`` before the last stored record; ``skip``
        counts the stored records at or after ``since``. The backward scan goes
        on a minute past ``since`` because stdout and stderr are not ordered.
        """
        if self.size <= self.base:
            return ResumePoint()
        last: str | None = None
        since = ""
        floor = ""
        skip = 0
        chunk = 4096
        while True:
            data, start = self.tail(chunk)
            if start < self.base:  # records of an earlier attempt are not this container's
                data, start = data[self.base - start :], self.base
            records = [r for r in data.split(b"\n") if r]
            skip = 0
            reached_floor = False
            for record in reversed(records):
                if record[:1] == b"S":
                    continue  # runyard's own notes did not come from Docker
                ts = _timestamp(record)
                if ts is None:
                    continue
                if last is None:
                    last = ts
                    since = _shift(ts, -window_seconds)
                    floor = _shift(ts, -window_seconds - 60)
                if ts >= since:
                    skip += 1
                elif ts < floor:
                    reached_floor = True
                    break
            if last is None:
                return ResumePoint()
            if reached_floor or start <= self.base:
                return ResumePoint(since, skip)
            chunk *= 4


def _shift(timestamp: str, seconds: float) -> str:
    whole, frac = split_timestamp(timestamp)
    moved = whole + timedelta(seconds=seconds)
    return f"{moved.strftime('%Y-%m-%dT%H:%M:%S')}.{frac}Z"


def _timestamp(record: bytes) -> str | None:
    if len(record) < HEADER_WIDTH - 1:
        return None
    return record[2 : 2 + TIMESTAMP_WIDTH].decode("ascii", "replace")
