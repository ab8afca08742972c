"""Searching a stored log (logs.search): bounded work per request, off the event loop.

The log is read in chunks of whole records and the pattern runs over each chunk at once, at
the speed of the regex engine rather than of a Python loop per line; every hit is then checked
against its record's text alone (so a stream letter or a timestamp never matches, and nothing
matches across two records). Patterns that could see past a text's ends (``\\A``, lookarounds,
possessive repeats) are run record by record instead, more slowly but exactly.

A user's regular expression is untrusted: it runs in the ``regex`` module with a time limit
and without the GIL (``concurrent``), in a small pool of threads of its own, so a pattern that
backtracks for ever costs one thread a few seconds and then an error, while the daemon goes on
serving. Counted repeats are capped before compiling, since compiling holds the GIL.

The time limit is the whole search's, not a chunk's or a request's: a search of a long log is many
requests, so each reply says how long it took and the client sends the sum back (``spent``) with
the next one. A client that lies only spends its own requests, each still bounded.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final, NoReturn, TypeVar

import regex

from runyard.protocol.logformat import HEADER_WIDTH, STREAM_LETTERS
from runyard.protocol.logsearch import (
    PATTERN_MAX,
    SEARCH_CONTEXT_MAX,
    SEARCH_LIMIT_MAX,
    LogMatch,
    LogRecord,
    LogsSearchParams,
    LogsSearchResult,
)

from .logfile import RECORD_SHOWN_MAX, LineIndex, cap_records
from .logstore import BlockReader, Reader, open_reader

CHUNK: Final = 4 << 20
# A request's first chunk: a pattern that matches densely (a page of matches wanted) reads little.
FIRST_CHUNK: Final = 256 << 10
SCAN_MAX: Final = 256 << 20  # bytes one request reads at most
SOFT_SECONDS: Final = 0.5  # no new chunk is started after this; the reply says where to go on
REPEAT_PRODUCT_MAX: Final = 10_000  # counted repeats multiplied together, as if all were nested
CONTEXT_SCAN_MAX: Final = 1 << 20  # bytes read for one side of a match's context
_SEARCHERS: Final = 2  # searches running at once; more wait their turn


class SearchError(Exception):
    """The request cannot be searched as asked; the message names why."""


@dataclass(frozen=True)
class Query:
    pattern: regex.Pattern[str]  # what a record's text must match
    chunk: regex.Pattern[str] | None  # finds candidates in a chunk of records; None: go record by record
    letters: frozenset[str] | None  # stream letters kept; None: all


_REPEAT = re.compile(r"\{\s*(\d*)\s*(?:,\s*(\d*)\s*)?\}")
_STREAM_LETTER = {name: letter for name, letter in STREAM_LETTERS.items()}


def compile_query(p: LogsSearchParams) -> Query:
    if len(p.pattern) > PATTERN_MAX:
        raise SearchError(f"the pattern is {len(p.pattern):,} characters; at most {PATTERN_MAX:,}")
    unknown = [s for s in p.streams if s not in _STREAM_LETTER]
    if unknown:
        raise SearchError(f"unknown stream {unknown[0]!r} (stdout, stderr or system)")
    letters = frozenset(_STREAM_LETTER[s] for s in p.streams) if p.streams else None
    flags = regex.MULTILINE | regex.VERSION0 | (regex.IGNORECASE if p.ignore_case else 0)
    if not p.regex:
        plain = regex.compile(regex.escape(p.pattern), flags)
        return Query(plain, plain, letters)
    product = 1
    for low, high in _REPEAT.findall(p.pattern):
        product *= max(int(low or 0), int(high or 0), 1)
        if product > REPEAT_PRODUCT_MAX:
            raise SearchError(f"the pattern's counted repeats ({{n}}) multiply to more than "
                              f"{REPEAT_PRODUCT_MAX:,}; use + or * instead of large counts")
    try:
        pattern = regex.compile(p.pattern, flags)
        chunk_source = _chunk_pattern(p.pattern)
        chunk = None if chunk_source is None else regex.compile(chunk_source, flags)
    except (regex.error, OverflowError, RecursionError) as exc:
        raise SearchError(f"bad regular expression {p.pattern!r}: {exc}") from None
    return Query(pattern, chunk, letters)


# Where a text begins inside a chunk: just after a record's header (or at a record's start, for a
# malformed record that is all text). Spaces written \x20 and no "." so that (?x) and (?s) keep it.
_TEXT_START: Final = r"(?:(?<=^[OES]\x20[^\n]{30}\x20)|^)"


def _chunk_pattern(pattern: str) -> str | None:
    """The pattern to run over a chunk of whole records so that it finds at least every record
    whose text alone matches, or None where that cannot be had cheaply: anchors to the whole
    string, lookarounds, atomic or possessive parts and fuzzy matching could see the header or
    the next record. ``^`` (outside a set) becomes "where a text begins". Errs towards None
    (the slow, exact path)."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_set = False
    while i < n:
        c = pattern[i]
        if c == "\\":
            # Word boundaries are safe: before a text lies a space, after it a newline.
            if not in_set and pattern[i + 1 : i + 2] in ("A", "Z", "z", "G", "K"):
                return None
            out.append(pattern[i : i + 2])
            i += 2
            continue
        if in_set:
            if c == "]":
                in_set = False
            elif c == "[":
                return None  # a nested set or a POSIX class: not worth reading exactly
            out.append(c)
            i += 1
            continue
        if c == "[":
            in_set = True
            j = i + 1
            if pattern[j : j + 1] == "^":
                j += 1
            if pattern[j : j + 1] == "]":
                j += 1  # a ] first in a set is a literal
            out.append(pattern[i:j])
            i = j
            continue
        if c == "^":
            out.append(_TEXT_START)
            i += 1
            continue
        if c == "(" and pattern[i + 1 : i + 2] == "?":
            # lookarounds, atomic groups, conditionals, branch resets
            rest = pattern[i + 2 : i + 4]
            if rest[:1] in ("=", "!", ">", "(", "|") or rest in ("<=", "<!"):
                return None
        if c in "*+?}" and pattern[i + 1 : i + 2] == "+":
            return None  # possessive: would not give back a newline it swallowed in a chunk
        if c == "{" and pattern[i + 1 : i + 2].isalpha():
            return None  # fuzzy matching
        out.append(c)
        i += 1
    return "".join(out)


@dataclass
class _Outcome:
    matches: list[LogMatch] = field(default_factory=list)
    next: int = 0
    done: bool = False
    size: int = 0
    scanned: int = 0
    seconds: float = 0.0


class _Clock:
    def __init__(self, hard_seconds: float) -> None:
        self.started = time.monotonic()
        self.hard = hard_seconds  # what is left of the search's time, after which it is refused

    def soft_passed(self) -> bool:
        return time.monotonic() - self.started > SOFT_SECONDS

    def hard_passed(self) -> bool:
        return time.monotonic() - self.started >= self.hard

    def seconds(self) -> float:
        return time.monotonic() - self.started

    def left(self) -> float:
        return max(0.001, self.hard - (time.monotonic() - self.started))


class _Positions:
    """Byte offsets and line numbers of places in a decoded chunk, asked in increasing order."""

    def __init__(self, text: str, byte_base: int, line_base: int) -> None:
        self.text = text
        self.ascii = text.isascii()
        self.s = 0
        self.b = byte_base
        self.line = line_base  # records before position s, in the whole log

    def at(self, s: int) -> tuple[int, int]:
        if s < self.s:
            raise ValueError("positions go forward")
        if self.ascii:
            self.b += s - self.s
        else:
            self.b += len(self.text[self.s : s].encode("utf-8", "surrogateescape"))
        self.line += self.text.count("\n", self.s, s)
        self.s = s
        return self.b, self.line


def _body(record: str) -> tuple[str, str]:
    """A record's stream letter and text; a malformed one is all text, of stdout (as clients read it)."""
    if len(record) >= HEADER_WIDTH - 1 and record[1] == " " and record[0] in "OES":
        return record[0], record[HEADER_WIDTH:]
    return "O", record


def _matching_records(text: str, query: Query, clock: _Clock) -> Iterator[tuple[int, int]]:
    """(start, end) in ``text`` of each record that matches, in order; ``text`` is whole records."""
    pattern, letters, chunk = query.pattern, query.letters, query.chunk
    pos = 0
    size = len(text)
    while pos < size:
        left = clock.left()
        hit = None if chunk is None else chunk.search(text, pos, concurrent=True, timeout=left)
        if chunk is None:
            start = pos
        elif hit is None:
            return
        else:
            start = max(text.rfind("\n", 0, hit.start()) + 1, pos)
            if start >= size:
                return  # an empty match after the last newline: no record is there
        end = text.find("\n", start)
        if end < 0:
            end = size
        record = text[start:end]
        letter, body = _body(record)
        # A hit that lies within the text is a match of the text alone (the chunk pattern sees the
        # same characters and assertions there); one that touches the header is checked again.
        inside = hit is not None and hit.start() >= end - len(body) and hit.end() <= end
        if (letters is None or letter in letters) and (
                inside or pattern.search(body, concurrent=True, timeout=left) is not None):
            yield start, end
        pos = end + 1


def _read_whole(fd: Reader, start: int, end: int, forward: bool, size: int) -> tuple[bytes, int, int]:
    """Whole records within [start, end) near one side: forward, those from ``start`` (at least
    one, however long); backward, those ending at ``end`` (at least one). ``start``/``end`` are
    record boundaries. Returns the bytes and where they start and end."""
    while True:
        if forward:
            data = fd.pread(min(size, end - start), start)
            cut = data.rfind(b"\n")
            if cut >= 0:
                return data[: cut + 1], start, start + cut + 1
            if start + len(data) >= end:
                return b"", start, start  # a torn last record: not a record yet
        else:
            first = max(start, end - size)
            data = fd.pread(end - first, first)
            if first == start:
                return data, first, end
            cut = data.find(b"\n")
            if 0 <= cut < len(data) - 1:
                return data[cut + 1 :], first + cut + 1, end
        size *= 2


def _boundary_at_or_after(fd: Reader, offset: int, size: int) -> int:
    """The first record start at or after ``offset``."""
    if offset <= 0:
        return 0
    if offset >= size:
        return size
    pos = offset - 1
    while pos < size:
        block = fd.pread(min(1 << 16, size - pos), pos)
        if not block:
            return size
        nl = block.find(b"\n")
        if nl >= 0:
            return pos + nl + 1
        pos += len(block)
    return size


def _whole_size(fd: Reader, size: int) -> int:
    """The end of the last whole record: a record being appended is not searched yet."""
    pos = size
    while pos > 0:
        start = max(0, pos - (1 << 16))
        block = fd.pread(pos - start, start)
        nl = block.rfind(b"\n")
        if nl >= 0:
            return start + nl + 1
        pos = start
    return 0


def search_log(path: Path, p: LogsSearchParams, query: Query, reply_budget: int,
               hard_seconds: float = 5.0) -> _Outcome:
    """Blocking: run it in a thread (``Searcher.run`` does)."""
    clock = _Clock(hard_seconds - max(0.0, p.spent))
    out = _Outcome()
    if clock.hard <= 0:
        _too_slow(p, hard_seconds, 0)
    stack = contextlib.ExitStack()
    try:
        fd = stack.enter_context(open_reader(path))  # plain or compressed: the same bytes by offset
    except FileNotFoundError:
        out.done = True
        return out
    try:
        out.size = size = _whole_size(fd, fd.size)
        index = fd if isinstance(fd, BlockReader) else LineIndex.of(path)
        limit = max(1, min(p.limit, SEARCH_LIMIT_MAX))
        chunk_size = min(FIRST_CHUNK, CHUNK)
        used = 0
        found: list[tuple[int, int, int, str]] = []  # offset, end, line, record

        def take(chunk: str, positions: _Positions, spans: list[tuple[int, int]]) -> None:
            for s, e in spans:  # e: the record's newline
                offset, line = positions.at(s)
                end, _ = positions.at(e + 1)
                found.append((offset, end, line + 1, chunk[s : e + 1]))

        if not p.backward:
            pos = _boundary_at_or_after(fd, 0 if p.offset is None else p.offset, size)
            line_base = index.count(pos)
            while True:
                if pos >= size:
                    out.done = True
                    break
                if out.scanned and clock.hard_passed():
                    _too_slow(p, hard_seconds, out.scanned)
                if out.scanned and (out.scanned >= SCAN_MAX or clock.soft_passed()):
                    break
                data, _, end = _read_whole(fd, pos, size, True, chunk_size)
                chunk_size = min(CHUNK, chunk_size * 2)
                if not data:
                    out.done = True
                    break
                chunk = data.decode("utf-8", "surrogateescape")
                positions = _Positions(chunk, pos, line_base)
                spans: list[tuple[int, int]] = []
                try:
                    for span in _matching_records(chunk, query, clock):
                        spans.append(span)
                        if len(found) + len(spans) >= limit:
                            break
                except TimeoutError:
                    _too_slow(p, hard_seconds, out.scanned + len(data))
                take(chunk, positions, spans)
                out.scanned += len(data)
                if len(found) >= limit:
                    pos = found[-1][1]
                    break
                pos = end
                line_base += chunk.count("\n")
            out.next = pos
        else:
            end = size if p.offset is None else _boundary_at_or_after(fd, p.offset, size)
            while True:
                if end <= 0:
                    out.done = True
                    break
                if out.scanned and clock.hard_passed():
                    _too_slow(p, hard_seconds, out.scanned)
                if out.scanned and (out.scanned >= SCAN_MAX or clock.soft_passed()):
                    break
                data, start, _ = _read_whole(fd, 0, end, False, chunk_size)
                chunk_size = min(CHUNK, chunk_size * 2)
                chunk = data.decode("utf-8", "surrogateescape")
                positions = _Positions(chunk, start, index.count(start))
                try:
                    spans = list(_matching_records(chunk, query, clock))
                except TimeoutError:
                    _too_slow(p, hard_seconds, out.scanned + len(data))
                out.scanned += len(data)
                before = len(found)
                take(chunk, positions, spans)
                found[before:] = reversed(found[before:])  # nearest first
                if len(found) >= limit:
                    del found[limit:]
                    end = found[-1][0]
                    break
                end = start
            out.next = end
        n = min(max(0, p.context), SEARCH_CONTEXT_MAX)
        cut = min(RECORD_SHOWN_MAX, max(4096, reply_budget // (2 * n + 1)))
        for offset, end_, line, record in found:
            if out.matches and used > reply_budget:
                # The reply would not fit a frame: go on from this match next time.
                out.next = offset if not p.backward else end_
                out.done = False
                break
            match = LogMatch(offset=offset, end=end_, line=line, record=_shown(record, cut))
            if n:
                match.before = _context(fd, offset, line, n, query.letters, cut, backward=True, size=size)
                match.after = _context(fd, end_, line, n, query.letters, cut, backward=False, size=size)
            used += len(match.record) + sum(len(r.record) for r in (*match.before, *match.after)) + 64
            out.matches.append(match)
        out.seconds = clock.seconds()
        return out
    finally:
        stack.close()


def _too_slow(p: LogsSearchParams, seconds: float, scanned: int) -> NoReturn:
    """Refuse the whole search: its time (all its requests together) is up."""
    raise SearchError(
        f"the search for {p.pattern!r} took over {seconds:g} s (daemon.search_seconds) and was stopped "
        f"{scanned:,} bytes into this part of the log; nested repeats such as (a+)+ or (a|aa)+ backtrack "
        "without end: simplify the pattern, or search plain text")


def _shown(record: str, cut: int) -> str:
    """A record as logs.read would send it: invalid UTF-8 replaced, a very long one cut with a note."""
    raw = record.rstrip("\n").encode("utf-8", "surrogateescape") + b"\n"
    return cap_records(raw, cut).decode("utf-8", "replace").rstrip("\n")


def _context(fd: Reader, at: int, line: int, n: int, letters: frozenset[str] | None, cut: int, *,
             backward: bool, size: int) -> list[LogRecord]:
    """Up to ``n`` records of the kept streams just before (or after) byte ``at``, reading at most
    CONTEXT_SCAN_MAX bytes; ``line`` is the match's line number."""
    if backward:
        start = max(0, at - CONTEXT_SCAN_MAX)
        data = fd.pread(at - start, start)
        if start > 0:
            nl = data.find(b"\n")
            data, start = (data[nl + 1 :], start + nl + 1) if nl >= 0 else (b"", at)
        records = data.split(b"\n")[:-1]
        picked: list[LogRecord] = []
        offset = at
        number = line
        for raw in reversed(records):
            offset -= len(raw) + 1
            number -= 1
            text = raw.decode("utf-8", "surrogateescape")
            if letters is None or _body(text)[0] in letters:
                picked.append(LogRecord(offset=offset, line=number, record=_shown(text, cut)))
                if len(picked) >= n:
                    break
        picked.reverse()
        return picked
    data = fd.pread(min(CONTEXT_SCAN_MAX, size - at), at)
    nl = data.rfind(b"\n")
    data = data[: nl + 1] if nl >= 0 else b""
    picked = []
    offset = at
    number = line
    for raw in data.split(b"\n")[:-1]:
        number += 1
        text = raw.decode("utf-8", "surrogateescape")
        if letters is None or _body(text)[0] in letters:
            picked.append(LogRecord(offset=offset, line=number, record=_shown(text, cut)))
            if len(picked) >= n:
                break
        offset += len(raw) + 1
    return picked


T = TypeVar("T")


class Searcher:
    """Runs searches in threads of their own, at most a few at once, so that neither the event
    loop nor the threads that read logs for everyone else ever wait on a user's pattern."""

    def __init__(self) -> None:
        self._pool = ThreadPoolExecutor(max_workers=_SEARCHERS, thread_name_prefix="logsearch")
        self._slots = asyncio.Semaphore(_SEARCHERS)

    async def _in_pool(self, fn: Callable[[], T]) -> T:
        async with self._slots:
            return await asyncio.get_running_loop().run_in_executor(self._pool, fn)

    async def run(self, path: Path, p: LogsSearchParams, reply_budget: int, seconds: float) -> LogsSearchResult:
        query = await self._in_pool(lambda: compile_query(p))
        out = await self._in_pool(lambda: search_log(path, p, query, reply_budget, seconds))
        return LogsSearchResult(matches=out.matches, next=out.next, done=out.done, size=out.size,
                                scanned=out.scanned, seconds=out.seconds)


SEARCHER: Final = Searcher()
