"""logs.search: find lines of a stored log by text or regular expression, anywhere in it.

A search goes from a byte offset towards the end (or, ``backward``, towards the start) and
answers with the matches it found and where a search in the same direction goes on. Each
request does a bounded amount of work (bytes read and time), so a search of a huge log is a
few requests, each answered quickly, and a client can stop whenever it has what it wants.
"""

from __future__ import annotations

from typing import Final

import msgspec

SEARCH_LIMIT_MAX: Final = 1000  # matches in one reply
SEARCH_CONTEXT_MAX: Final = 100  # lines of context on each side of a match
PATTERN_MAX: Final = 1000  # characters


class LogsSearchParams(msgspec.Struct, forbid_unknown_fields=True):
    """Records (lines) whose text matches ``pattern``: plain text unless ``regex``.

    Forward, the records that start at or after ``offset``; ``backward``, those that start
    before it (offset None: from the log's start, or backward from its end). ``streams``
    keeps only records of those streams ("stdout", "stderr", "system"; empty: all). The
    timestamp and stream letter of a record are never searched, only its text.
    """

    id: int
    pattern: str
    regex: bool = False  # Python regular expression syntax (the `regex` module's, version 0)
    ignore_case: bool = False
    offset: int | None = None
    backward: bool = False
    streams: list[str] = []
    limit: int = 1  # 1 to SEARCH_LIMIT_MAX
    context: int = 0  # lines before and after each match, of the same streams; 0 to SEARCH_CONTEXT_MAX
    # Seconds the earlier requests of the same search took (the sum of their replies' ``seconds``):
    # the daemon's time limit (daemon.search_seconds) is the whole search's, and refuses it past that.
    spent: float = 0.0


class LogRecord(msgspec.Struct):
    offset: int  # where the record starts in the log, in bytes
    line: int  # its line number in the whole log, from 1
    record: str  # as stored (stream letter, time, text), cut like logs.read cuts very long lines


class LogMatch(msgspec.Struct):
    offset: int
    end: int  # the byte after the record's newline
    line: int
    record: str
    before: list[LogRecord] = []  # context, oldest first
    after: list[LogRecord] = []


class LogsSearchResult(msgspec.Struct):
    matches: list[LogMatch]  # in the search's direction: backward, the nearest first
    next: int  # the offset a search in the same direction continues from
    done: bool  # nothing more in that direction (as far as the log reached when searched)
    size: int  # the log's size when searched
    scanned: int  # bytes this request read
    seconds: float = 0.0  # how long this request took; add it to ``spent`` for the next one
