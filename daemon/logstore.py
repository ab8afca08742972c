"""How a log is kept on disk: plain while it grows, compressed in seekable blocks once it ended.

A live log is the plain record format (logfile.py appends to it, anyone may read it directly).
When an execution ends, its log is rewritten once into independent zstd frames of ``BLOCK``
plain bytes each, with an index of where each block lies and how many records come before it,
under the same name. Every reader goes through ``open_reader``, which hands out the log's plain
bytes by offset whichever format is on disk, so offsets and line numbers mean the same before
and after; a follower that was reading the live log goes on from the same offset.

Layout of a compressed log (integers little-endian)::

    header   MAGIC (8 bytes), format version (u32), block size (u32)
    blocks   one zstd frame per block of BLOCK plain bytes (the last may be shorter)
    index    per block: compressed offset (u64), compressed length (u32), records before it (u64)
    trailer  index offset (u64), blocks (u64), plain size (u64), records (u64), END_MAGIC (8 bytes)

The rewrite goes to a temporary file, opened without following links, is synced, and is renamed
over the plain log only if that is still the file it read (same inode, size and change time), so
a ``kill -9`` at any moment leaves the plain log or the whole compressed one, never neither. The
rename and every removal of a log happen under one lock, so a delete or retention pass racing the
rewrite never brings a removed log back.
"""

from __future__ import annotations

import contextlib
import os
import stat
import struct
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final, Generic, NoReturn, Protocol, TypeVar

import zstandard

MAGIC: Final = b"\0RYLOGZ1"  # a plain log starts with a stream letter, never with a NUL
END_MAGIC: Final = b"RYLOGEND"
VERSION: Final = 1
BLOCK: Final = 1 << 18
COMPRESS_MIN: Final = 64 << 10  # smaller logs stay plain: they fill a few file system blocks either way
_HEADER: Final = struct.Struct("<8sII")
_ENTRY: Final = struct.Struct("<QIQ")
_TRAILER: Final = struct.Struct("<QQQQ8s")
_FAST_LEVEL: Final = 3
_SMALL_LEVEL: Final = 15
# A block whose fast compression keeps more than this share of the text printed in it (lines of a
# few characters, where the 33-byte header of each dominates) is compressed again, slower and smaller.
_TEXT_SHARE: Final = 0.45
_HEADER_WIDTH: Final = 33
_CACHED_BLOCKS: Final = 32  # 8 MiB of plain bytes, shared: a follower's next read finds its block here
_CACHED_INDEXES: Final = 64
_INDEX_MAX: Final = 64 << 20  # 2 M blocks: a log of 512 GiB

# Held around renaming a compressed log into place and around removing a log, so neither can
# undo the other (see the module's docstring).
LOG_LOCK: Final = threading.Lock()
_compressing: set[str] = set()

# Blocks and indexes already read, by file identity (device, inode, mtime, size, trailer): each request
# opens the log anew, and a client paging through it or following it asks for neighbouring bytes.
K = TypeVar("K")
V = TypeVar("V")


class _Lru(Generic[K, V]):
    def __init__(self, most: int) -> None:
        self._most = most
        self._items: OrderedDict[K, V] = OrderedDict()
        self._lock = threading.Lock()  # asked from worker threads at once

    def get(self, key: K) -> V | None:
        with self._lock:
            value = self._items.get(key)
            if value is not None:
                self._items.move_to_end(key)
            return value

    def put(self, key: K, value: V) -> None:
        with self._lock:
            self._items[key] = value
            while len(self._items) > self._most:
                self._items.popitem(last=False)


_Identity = tuple[int, int, int, int, bytes]
_blocks: _Lru[tuple[_Identity, int], bytes] = _Lru(_CACHED_BLOCKS)
_indexes: _Lru[_Identity, tuple[list[tuple[int, int, int]], int, int]] = _Lru(_CACHED_INDEXES)


class LogDamaged(Exception):
    """A stored log that cannot be read as what it claims to be; the message names the file and the fault."""


def tmp_path(log_path: Path) -> Path:
    return log_path.with_name(log_path.name + ".z-tmp")


def open_regular(path: Path, flags: int, mode: int = 0o640) -> int:
    """A file descriptor for ``path``, never through a symbolic link, and only for a regular file."""
    fd = os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(f"{path} is not a regular file")
    return fd


class Reader(Protocol):
    """A log's plain bytes by offset, whichever format it is stored in."""

    fd: int
    size: int
    compressed: bool

    def pread(self, size: int, offset: int) -> bytes: ...


class PlainReader:
    compressed = False

    def __init__(self, fd: int, size: int) -> None:
        self.fd = fd
        self.size = size

    def pread(self, size: int, offset: int) -> bytes:
        return os.pread(self.fd, size, offset) if size > 0 else b""


class BlockReader:
    """A compressed log: the block index is read and checked on opening, blocks on demand."""

    compressed = True

    def __init__(self, fd: int, path: Path, stored: int) -> None:
        self.fd = fd
        self.path = path
        self._dctx = zstandard.ZstdDecompressor()
        if stored < _HEADER.size + _TRAILER.size:
            self._damaged(f"{stored} bytes is too short for a compressed log")
        trailer = os.pread(fd, _TRAILER.size, stored - _TRAILER.size)
        st = os.fstat(fd)
        # The trailer too: a file's times are as coarse as the kernel's clock tick, and an inode
        # freed by a removed log is soon another's.
        self._identity = (st.st_dev, st.st_ino, st.st_mtime_ns, stored, trailer)
        known = _indexes.get(self._identity)
        if known is not None:
            self._entries, self.size, self.records = known
            return
        magic, version, block = _HEADER.unpack(os.pread(fd, _HEADER.size, 0))
        if magic != MAGIC or version != VERSION or block != BLOCK:
            self._damaged(f"format version {version} with blocks of {block} bytes; this runyard reads "
                          f"version {VERSION} with blocks of {BLOCK}")
        index_at, blocks, self.size, self.records, end = _TRAILER.unpack(trailer)
        if end != END_MAGIC:
            self._damaged("its end marker is missing (cut short or overwritten)")
        index_size = blocks * _ENTRY.size
        if (index_size > _INDEX_MAX or index_at + index_size + _TRAILER.size != stored
                or blocks != -(-self.size // BLOCK)):
            self._damaged(f"its index ({blocks} blocks at byte {index_at}) does not fit its size")
        raw = os.pread(fd, index_size, index_at)
        self._entries = [_ENTRY.unpack_from(raw, i * _ENTRY.size) for i in range(blocks)]
        place, records = _HEADER.size, 0
        for number, (at, length, before) in enumerate(self._entries):
            # Frames lie one after another, and records before a block never go back or exceed its bytes.
            if at != place or before < records or before - records > BLOCK or at + length > index_at:
                self._damaged(f"block {number} of its index is inconsistent")
            place, records = at + length, before
        if place != index_at or not records <= self.records <= records + BLOCK:
            self._damaged("its index does not cover its blocks")
        _indexes.put(self._identity, (self._entries, self.size, self.records))

    def _damaged(self, why: str) -> NoReturn:
        raise LogDamaged(f"the stored log {self.path} is damaged: {why}")

    def block(self, number: int) -> bytes:
        key = (self._identity, number)
        data = _blocks.get(key)
        if data is not None:
            return data
        at, length, before = self._entries[number]
        want = min(BLOCK, self.size - number * BLOCK)
        after = self._entries[number + 1][2] if number + 1 < len(self._entries) else self.records
        try:
            data = self._dctx.decompress(os.pread(self.fd, length, at), max_output_size=want)
        except zstandard.ZstdError as exc:
            self._damaged(f"block {number} does not decompress ({exc})")
        if len(data) != want or data.count(b"\n") != after - before:
            self._damaged(f"block {number} holds other bytes than its index says")
        _blocks.put(key, data)
        return data

    def pread(self, size: int, offset: int) -> bytes:
        offset = max(0, offset)
        end = min(self.size, offset + max(0, size))
        if offset >= end:
            return b""
        first, last = offset // BLOCK, (end - 1) // BLOCK
        parts = [self.block(n) for n in range(first, last + 1)]
        data = parts[0] if len(parts) == 1 else b"".join(parts)
        start = offset - first * BLOCK
        return data[start : start + end - offset]

    def count(self, upto: int) -> int:
        """Records before byte ``upto``: from the index and at most one block."""
        upto = min(max(0, upto), self.size)
        number = upto // BLOCK
        if number >= len(self._entries):
            return self.records
        return self._entries[number][2] + self.block(number)[: upto - number * BLOCK].count(b"\n")


def _kind(fd: int) -> bool:
    """Whether the open log is compressed."""
    return os.pread(fd, len(MAGIC), 0) == MAGIC


def block_reader(fd: int, path: Path) -> BlockReader | None:
    """The open log as a BlockReader if it is compressed (the caller keeps ``fd``), else None."""
    return BlockReader(fd, path, os.fstat(fd).st_size) if _kind(fd) else None


@contextlib.contextmanager
def open_reader(path: Path) -> Iterator[PlainReader | BlockReader]:
    """The log at ``path`` for reading, in whichever format it is; FileNotFoundError if there is none."""
    fd = open_regular(path, os.O_RDONLY)
    try:
        stored = os.fstat(fd).st_size
        yield BlockReader(fd, path, stored) if _kind(fd) else PlainReader(fd, stored)
    finally:
        os.close(fd)


def plain_size(path: Path, *, strict: bool = True) -> int:
    """The size of the log's plain bytes (what offsets count), 0 if there is none; reads at most
    the header and the trailer (``list`` asks it of every row). Not ``strict`` (a listing): a log
    whose trailer is damaged counts as its stored size, and only reading it says what is wrong."""
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return 0
    try:
        stored = os.fstat(fd).st_size
        if not _kind(fd):
            return stored
        if stored >= _HEADER.size + _TRAILER.size:
            *_, size, _records, end = _TRAILER.unpack(os.pread(fd, _TRAILER.size, stored - _TRAILER.size))
            if end == END_MAGIC:
                return int(size)
        if strict:
            raise LogDamaged(f"the stored log {path} is damaged: its end marker is missing (cut short or overwritten)")
        return stored
    finally:
        os.close(fd)


def is_compressed(path: Path) -> bool:
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        return _kind(fd)
    finally:
        os.close(fd)


class _Cancelled(Exception):
    pass


def compress_log(path: Path, *, should_stop: Callable[[], bool] = lambda: False,
                 after_block: Callable[[int], None] = lambda _: None) -> bool:
    """Rewrite an ended plain log in compressed blocks, in place. Blocking: run it in a thread.

    Returns whether it did. A log that is small, compressed already, gone, changed meanwhile, or
    being compressed by another thread is left as it is; ``should_stop`` (checked between
    blocks) gives up and keeps the plain log.
    """
    key = str(path)
    with LOG_LOCK:
        if key in _compressing:
            return False
        _compressing.add(key)
    try:
        return _compress(path, should_stop, after_block)
    except _Cancelled:
        return False
    finally:
        with LOG_LOCK:
            _compressing.discard(key)


def _compress(path: Path, should_stop: Callable[[], bool], after_block: Callable[[int], None]) -> bool:
    try:
        fd = open_regular(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    tmp = tmp_path(path)
    out: int | None = None
    try:
        before = os.fstat(fd)
        size = before.st_size
        if size < COMPRESS_MIN or _kind(fd):
            return False
        # Only whole records: a torn last record (a crash mid-append) is for the appender to cut.
        tail = os.pread(fd, 1, size - 1)
        if tail != b"\n":
            return False
        tmp.unlink(missing_ok=True)  # a leftover of a rewrite killed midway
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        # Each frame carries a checksum of its plain bytes: damage reads as an error, never as other text.
        fast = zstandard.ZstdCompressor(level=_FAST_LEVEL, write_checksum=True)
        small = zstandard.ZstdCompressor(level=_SMALL_LEVEL, write_checksum=True)
        entries: list[bytes] = []
        place = _HEADER.size
        records = 0
        _write_all(out, _HEADER.pack(MAGIC, VERSION, BLOCK))
        for number, offset in enumerate(range(0, size, BLOCK)):
            if should_stop():
                raise _Cancelled
            data = os.pread(fd, min(BLOCK, size - offset), offset)
            if len(data) != min(BLOCK, size - offset):
                return False  # cut meanwhile
            lines = data.count(b"\n")
            frame = fast.compress(data)
            if len(frame) > _TEXT_SHARE * max(1, len(data) - _HEADER_WIDTH * lines):
                frame = min(frame, small.compress(data), key=len)
            _write_all(out, frame)
            entries.append(_ENTRY.pack(place, len(frame), records))
            place += len(frame)
            records += lines
            after_block(number)
        _write_all(out, b"".join(entries))
        _write_all(out, _TRAILER.pack(place, len(entries), size, records, END_MAGIC))
        # Whoever could read the plain log reads this one: same owner, same mode.
        os.fchmod(out, stat.S_IMODE(before.st_mode))
        if (before.st_uid, before.st_gid) != (os.getuid(), os.getgid()):
            os.fchown(out, before.st_uid, before.st_gid)
        os.fsync(out)
        os.close(out)
        out = None
        with LOG_LOCK:
            try:
                now = os.stat(path, follow_symlinks=False)
            except FileNotFoundError:
                return False  # removed meanwhile (deleted, retention): it stays removed
            if ((now.st_ino, now.st_dev, now.st_size, now.st_mtime_ns)
                    != (before.st_ino, before.st_dev, before.st_size, before.st_mtime_ns)):
                return False  # appended to or replaced meanwhile
            os.replace(tmp, path)
        _sync_dir(path.parent)
        return True
    finally:
        os.close(fd)
        if out is not None:
            os.close(out)
        tmp.unlink(missing_ok=True)


def decompress_log(path: Path) -> None:
    """Turn a compressed log back into a plain one, in place (to append to an ended execution's log)."""
    tmp = tmp_path(path)
    with open_reader(path) as reader:
        if not reader.compressed:
            return
        tmp.unlink(missing_ok=True)
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
        try:
            for offset in range(0, reader.size, BLOCK):
                _write_all(out, reader.pread(BLOCK, offset))
            os.fchmod(out, stat.S_IMODE(os.fstat(reader.fd).st_mode))
            os.fsync(out)
        except BaseException:
            os.close(out)
            tmp.unlink(missing_ok=True)
            raise
        os.close(out)
    with LOG_LOCK:
        if not path.exists():
            tmp.unlink(missing_ok=True)  # removed meanwhile: it stays removed
            return
        os.replace(tmp, path)
    _sync_dir(path.parent)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _sync_dir(directory: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
