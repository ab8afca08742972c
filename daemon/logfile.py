"""One execution's log: an append-only file of records, addressable by byte offset.

Head, tail and ranges read only what they return, so they stay cheap on logs of
millions of lines. Followers wait on a condition that every append notifies.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import struct
import threading
import weakref
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Final

from runyard.protocol.logformat import HEADER_WIDTH, STREAM_LETTERS, TIMESTAMP_WIDTH

from .logstore import (
    LOG_LOCK,
    BlockReader,
    PlainReader,
    block_reader,
    compress_log,
    decompress_log,
    is_compressed,
    open_reader,
    open_regular,
    plain_size,
    tmp_path,
)
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


INDEX_BLOCK: Final = 1 << 18
_MARKS_READ: Final = 1 << 18
# Docker sends a line in fragments of 16 KiB: a record this long may be one, with an older time.
_MAYBE_LONG: Final = 16 * 1024
_INDEX_HEADER: Final = struct.Struct("<8sQQQ")  # magic, block size, the log's st_dev and st_ino
_INDEX_MAGIC: Final = b"RYLIDX01"
_ENTRY: Final = struct.Struct("<Q")


def index_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + ".idx")


def marks_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + ".long")


def remove_log(log_path: Path) -> None:
    """Delete a log and the files kept beside it (its line index, its long-line marks, a compressed
    copy being written); under the lock a compression renames under, so it cannot bring it back."""
    with LOG_LOCK:
        for path in (log_path, index_path(log_path), marks_path(log_path), tmp_path(log_path)):
            path.unlink(missing_ok=True)


def store_ended(log_path: Path, should_stop: Callable[[], bool] = lambda: False) -> bool:
    """Compress an ended execution's log in place (logstore.compress_log) and drop what only a
    live log needs: its line index (the compressed log has its own) and its long-line marks.
    Blocking: call it in a thread."""
    done = compress_log(log_path, should_stop=should_stop)
    if done:
        for path in (index_path(log_path), marks_path(log_path)):
            path.unlink(missing_ok=True)
    return done


_open_regular = open_regular


class LineIndex:
    """How many records (newlines) a log has before each multiple of INDEX_BLOCK bytes.

    Kept in ``<log>.idx`` and extended as readers reach further, so counting the records before
    any offset reads at most one block of the log, and a finished log is never counted again when
    reopened. One instance per log file in this process (``of``), guarded by a lock: counts are
    asked from worker threads at the same time. The file is only a cache: one that does not match
    its log (another file's, torn, from another block size) is thrown away and built again.
    """

    _instances: weakref.WeakValueDictionary[str, LineIndex] = weakref.WeakValueDictionary()
    _instances_lock = threading.Lock()

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.path = index_path(log_path)
        self._lock = threading.Lock()
        self._counts: list[int] = [0]  # _counts[k]: newlines in the log's first k * INDEX_BLOCK bytes
        self._identity: tuple[int, int] | None = None
        self._stored = 0  # entries already in the index file
        self.scanned = 0  # bytes of the log read to build or extend the index

    @classmethod
    def of(cls, log_path: Path) -> LineIndex:
        key = str(log_path)
        with cls._instances_lock:
            index = cls._instances.get(key)
            if index is None:
                index = cls(log_path)
                cls._instances[key] = index
            return index

    def count(self, upto: int) -> int:
        """Records (newlines) in the log's first ``upto`` bytes."""
        if upto <= 0:
            return 0
        with self._lock:
            try:
                fd = _open_regular(self.log_path, os.O_RDONLY)
            except FileNotFoundError:
                return 0
            try:
                compressed = block_reader(fd, self.log_path)
                if compressed is not None:
                    return compressed.count(upto)
                st = os.fstat(fd)
                upto = min(upto, st.st_size)
                if upto <= 0:
                    return 0
                if self._identity != (st.st_dev, st.st_ino):
                    self._load(fd, (st.st_dev, st.st_ino), st.st_size)
                # Only bytes that end on a whole record are final: a torn last record (a crash
                # mid-append) is cut and written again, so no index entry may cover it.
                if upto // INDEX_BLOCK >= len(self._counts) and os.pread(fd, 1, upto - 1) == b"\n":
                    self._extend(fd, upto // INDEX_BLOCK)
                block = min(upto // INDEX_BLOCK, len(self._counts) - 1)
                total = self._counts[block]
                pos = block * INDEX_BLOCK
                while pos < upto:
                    data = os.pread(fd, min(1 << 20, upto - pos), pos)
                    if not data:
                        break
                    total += data.count(b"\n")
                    pos += len(data)
                return total
            finally:
                os.close(fd)

    def _load(self, fd: int, identity: tuple[int, int], size: int) -> None:
        self._identity = identity
        self._counts = [0]
        self._stored = 0
        try:
            index_fd = _open_regular(self.path, os.O_RDONLY)
        except (FileNotFoundError, OSError):
            return
        try:
            raw = os.pread(index_fd, 8 << 20, 0)  # 8 MiB of entries: a log of 256 TiB
        finally:
            os.close(index_fd)
        if len(raw) < _INDEX_HEADER.size:
            return
        magic, block, dev, ino = _INDEX_HEADER.unpack_from(raw)
        if (magic, block, (dev, ino)) != (_INDEX_MAGIC, INDEX_BLOCK, identity):
            return
        body = raw[_INDEX_HEADER.size :]
        counts = [0, *(value for (value,) in _ENTRY.iter_unpack(body[: len(body) - len(body) % 8]))]
        # Entries past the log's end, going backwards, or more records than bytes: not this log's.
        if (len(counts) - 1) * INDEX_BLOCK > size or any(
                not 0 <= b - a <= INDEX_BLOCK for a, b in itertools.pairwise(counts)):
            return
        if len(counts) > 1:  # the last block counted again: cheap, and catches a log rewritten in place
            last = len(counts) - 1
            if os.pread(fd, INDEX_BLOCK, (last - 1) * INDEX_BLOCK).count(b"\n") != counts[last] - counts[last - 1]:
                return
        self._counts = counts
        self._stored = len(counts) - 1

    def _extend(self, fd: int, blocks: int) -> None:
        counts = self._counts
        while len(counts) - 1 < blocks:
            data = os.pread(fd, INDEX_BLOCK, (len(counts) - 1) * INDEX_BLOCK)
            if len(data) < INDEX_BLOCK:
                break
            self.scanned += len(data)
            counts.append(counts[-1] + data.count(b"\n"))
        self._persist()

    def _persist(self) -> None:
        """Write the entries the file lacks; a failure (disk full) only costs a later rescan."""
        if self._identity is None or len(self._counts) - 1 <= self._stored:
            return
        with contextlib.suppress(OSError):
            fd = _open_regular(self.path, os.O_WRONLY | os.O_CREAT)
            try:
                if self._stored == 0:
                    os.ftruncate(fd, 0)
                    os.pwrite(fd, _INDEX_HEADER.pack(_INDEX_MAGIC, INDEX_BLOCK, *self._identity), 0)
                new = self._counts[self._stored + 1 :]
                os.pwrite(fd, b"".join(_ENTRY.pack(v) for v in new),
                          _INDEX_HEADER.size + self._stored * _ENTRY.size)
                self._stored = len(self._counts) - 1
            finally:
                os.close(fd)


def _open_whole(path: Path) -> tuple[int, int]:
    """Open a log for appending, first cutting off a torn last record left by a crash: (fd, size)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_compressed(path):
        decompress_log(path)  # appending to an ended execution's log: it grows plain again
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_NOFOLLOW, 0o640)
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
    return fd, size


def append_once(path: Path, data: str) -> None:
    """Append whole records to a log nobody has open (a note in the log of a queued execution
    that is stopped): no LogFile, whose index a batch of thousands would load for nothing."""
    fd, _ = _open_whole(path)
    try:
        view = memoryview(data.encode("utf-8", "surrogateescape"))
        while view:
            view = view[os.write(fd, view):]
    finally:
        os.close(fd)


class LogFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd: int | None = None
        self.size = plain_size(path)  # of the plain bytes, whether the log is stored compressed or not
        self.finished = False
        self._changed = asyncio.Condition()
        self._index = LineIndex.of(path)
        # Records per stream from base, counted incrementally (the process runtime's resume point).
        self._streams_lock = threading.Lock()
        self._stream_counts: tuple[int, int, dict[str, int]] = (0, 0, {"O": 0, "E": 0, "S": 0})
        # Where the current attempt's records begin: resuming a container's or process's output
        # counts only records from here (an execution re-queued after losing its host starts anew).
        self.base = 0

    def open_for_append(self) -> None:
        """Open for writing, first cutting off a torn last record left by a crash."""
        self._fd, self.size = _open_whole(self.path)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    async def append(self, data: str | bytes) -> int:
        """Append whole records (valid UTF-8) and wake followers; returns the new size."""
        if not data:
            return self.size
        self.write(data)
        async with self._changed:
            self._changed.notify_all()
        return self.size

    def write(self, data: str | bytes) -> None:
        """Append whole records without waking followers (a worker thread's part of a batch;
        finish() or the next append wakes them)."""
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

    async def finish(self) -> None:
        self.finished = True
        self.close()
        async with self._changed:
            self._changed.notify_all()

    async def wait_beyond(self, offset: int) -> None:
        """Return once the log is longer than ``offset`` or has finished."""
        async with self._changed:
            await self._changed.wait_for(lambda: self.size > offset or self.finished)

    def read_range(self, offset: int, max_bytes: int) -> tuple[bytes, int]:
        """Whole records from ``offset``; at least one record even if it is longer than max_bytes."""
        offset = max(0, min(offset, self.size))
        if offset >= self.size:  # nothing to read, and a log not written yet has no file
            return b"", offset
        with open_reader(self.path) as reader:
            data = reader.pread(min(max_bytes, self.size - offset), offset)
            cut = data.rfind(b"\n")
            if cut < 0 and offset < self.size:
                return _one_record(reader, offset, data)  # one record longer than max_bytes
        data = data[: cut + 1]
        return data, offset + len(data)

    def head(self, count: int, stream: str | None = None) -> tuple[bytes, int]:
        """The first ``count`` records (of one stream, if given) and the offset after them."""
        letter = STREAM_LETTERS[stream].encode() if stream else None
        picked: list[bytes] = []
        end = 0
        if count <= 0 or not self.path.exists():
            return b"", 0
        with open_reader(self.path) as reader:
            pos = 0
            carry = b""
            chunk = 1 << 16
            while len(picked) < count:
                data = reader.pread(chunk, pos)
                if not data:
                    break
                pos += len(data)
                chunk = min(chunk * 2, 1 << 20)
                records = (carry + data).split(b"\n")
                carry = records.pop()
                for record in records:
                    end += len(record) + 1
                    if _matches(record, letter):
                        picked.append(record + b"\n")
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
        with open_reader(self.path) as reader:
            while pos > 0 and len(picked) < count:
                step = min(_BLOCK, pos)
                pos -= step
                buf = reader.pread(step, pos) + fragment
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
        """Records before byte ``upto`` (default: all); from the log's line index, so a call reads at
        most one block of the log once the index reaches there. Safe from any number of threads."""
        return self._index.count(self.size if upto is None else upto)

    def tail_numbered(self, count: int) -> tuple[bytes, int, int, int]:
        """The last ``count`` records, where they start, where they end, and how many records
        come before them; all taken against one size, so appends meanwhile do not skew them."""
        size = self.size
        data, start = self.tail(count, size=size)
        return data, start, size, self._index.count(start)

    def count_by_stream(self) -> dict[str, int]:
        """Stored records per stream letter since ``base``; how many lines of each stream to skip on
        resume. Counts only what was appended since the last call (blocking: call it in a thread)."""
        size = self.size
        with self._streams_lock:
            base, offset, counts = self._stream_counts
            if base != self.base or offset > size or offset < self.base:
                base, offset, counts = self.base, self.base, {"O": 0, "E": 0, "S": 0}
            counts = dict(counts)
            if offset < size:
                try:
                    fd = _open_regular(self.path, os.O_RDONLY)
                except FileNotFoundError:
                    return counts
                try:
                    # offset is a record boundary (or base): as if a record ended just before it.
                    # 2 bytes carried, the patterns are 3.
                    carry = b"\n"
                    pos = offset
                    while pos < size and (block := os.pread(fd, min(1 << 20, size - pos), pos)):
                        data = carry + block
                        for letter in counts:
                            counts[letter] += data.count(b"\n" + letter.encode() + b" ")
                        carry = data[-2:]
                        pos += len(block)
                finally:
                    os.close(fd)
                self._stream_counts = (base, pos, counts)
            return dict(counts)

    def mark_long_lines(self, kind: str, lines: list[tuple[str, str]]) -> None:
        """Note long lines (letter, first fragment's time) of the current attempt: ``P`` when one
        starts pending, ``D`` once it is stored. Written only at those two moments, so cheap; read
        by resume_point. Note ``P`` before the line's first fragment is dropped with the daemon,
        and ``D`` only after its record is appended: a mark too many only widens a resume window."""
        if not lines:
            return
        text = "".join(f"{kind} {self.base} {letter} {ts}\n" for letter, ts in lines).encode("ascii", "replace")
        fd = _open_regular(marks_path(self.path), os.O_WRONLY | os.O_APPEND | os.O_CREAT)
        try:
            os.write(fd, text)
        finally:
            os.close(fd)

    def _long_lines(self) -> tuple[dict[str, str], set[tuple[str, str]]]:
        """From the marks of the current attempt: the first fragment's time of each stream's pending
        long line, and every long line's (letter, time)."""
        pending: dict[str, str] = {}
        long: set[tuple[str, str]] = set()
        try:
            fd = _open_regular(marks_path(self.path), os.O_RDONLY)
        except (FileNotFoundError, OSError):
            return pending, long
        try:
            size = os.fstat(fd).st_size
            # Only recent marks matter: a resume looks back a little past the last stored record.
            start = max(0, size - _MARKS_READ)
            data = os.pread(fd, size - start, start)
        finally:
            os.close(fd)
        if start:
            data = data[data.find(b"\n") + 1 :]
        base = str(self.base)
        for line in data.decode("ascii", "replace").splitlines():
            parts = line.split(" ")
            if len(parts) != 4 or parts[1] != base or parts[2] not in ("O", "E"):
                continue
            kind, _, letter, ts = parts
            long.add((letter, ts))
            if kind == "P":
                pending[letter] = ts
            elif kind == "D" and pending.get(letter) == ts:
                del pending[letter]
        return pending, long

    def resume_point(self, window_seconds: float = 10.0) -> ResumePoint:
        """Where to resume reading Docker's log so that no line is lost or stored twice.

        ``since`` lies ``window_seconds`` before the last stored record, or at the start of a long
        line that was still pending, whichever is earlier; the skips count each stream's stored
        records at or after ``since``. Within a stream times only grow (a long line carries its
        first fragment's time, which is after the stream's line before it), but the two streams
        are not ordered, so the backward scan goes on until a record of ordinary length (not a
        long line, whose time may be far older than its place) lies a minute before ``since``.
        Blocking: call it in a thread.
        """
        if self.size <= self.base:
            return ResumePoint()
        pending, long = self._long_lines()
        last: str | None = None
        since = ""
        floor = ""
        skips = {"O": 0, "E": 0}
        chunk = 4096
        while True:
            data, start = self.tail(chunk)
            if start < self.base:  # records of an earlier attempt are not this container's
                data, start = data[self.base - start :], self.base
            records = [r for r in data.split(b"\n") if r]
            skips = {"O": 0, "E": 0}
            reached_floor = False
            for record in reversed(records):
                letter = record[:1].decode("ascii", "replace")
                if letter not in skips:
                    continue  # runyard's own notes (S) did not come from Docker
                ts = _timestamp(record)
                if ts is None:
                    continue
                if last is None:
                    last = ts
                    since = min([_shift(ts, -window_seconds), *pending.values()])
                    floor = _shift(since, -60)
                if ts >= since:
                    skips[letter] += 1
                elif ts < floor and len(record) < _MAYBE_LONG and (letter, ts) not in long:
                    reached_floor = True
                    break
            if last is None:
                return ResumePoint()
            if reached_floor or start <= self.base:
                return ResumePoint(since, skips["O"], skips["E"])
            chunk *= 4


def _one_record(reader: PlainReader | BlockReader, offset: int, data: bytes) -> tuple[bytes, int]:
    """The record at ``offset`` whole, however long; ``data`` is its start, already read."""
    parts = [data]
    pos = offset + len(data)
    while pos < reader.size:
        more = reader.pread(1 << 20, pos)
        if not more:
            break
        cut = more.find(b"\n")
        if cut >= 0:
            parts.append(more[: cut + 1])
            break
        parts.append(more)
        pos += len(more)
    line = b"".join(parts)
    return line, offset + len(line)


def _shift(timestamp: str, seconds: float) -> str:
    whole, frac = split_timestamp(timestamp)
    moved = whole + timedelta(seconds=seconds)
    return f"{moved.strftime('%Y-%m-%dT%H:%M:%S')}.{frac}Z"


def _timestamp(record: bytes) -> str | None:
    if len(record) < HEADER_WIDTH - 1:
        return None
    return record[2 : 2 + TIMESTAMP_WIDTH].decode("ascii", "replace")
