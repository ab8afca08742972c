"""What the log viewer holds of a log: a head, a tail and, between them, a gap of known size.

A log of any length opens with its first and last lines and a "N lines skipped"
row between. Scrolling into the gap fills it from either side with byte ranges
read from the daemon, so the whole log can be read without ever holding it all.
Lines are kept in chunks with exact byte offsets, which lets a long follow drop
its oldest chunks back into the gap (bounded memory) and fetch them again later.

Pure: no I/O, no Textual, so its arithmetic is tested on its own.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field
from typing import Final

from runyard.protocol.logformat import HEADER_WIDTH, STREAM_NAMES, TIMESTAMP_WIDTH

CHUNK_LINES: Final = 4096  # follow data is cut into chunks this long so they can be dropped whole


@dataclass
class Chunk:
    start: int  # byte offset of the first record
    end: int  # byte offset after the last record
    lines: list[str] = field(default_factory=list)


@dataclass
class Gap:
    start: int
    end: int
    lines: int  # records between start and end


GAP: Final = object()  # what ``row`` returns for the gap's one row


def split_records(data: str) -> list[str]:
    # str.splitlines would also split on \f, \x1c and friends that programs print.
    records = data.split("\n")
    if records and records[-1] == "":
        records.pop()
    return records


def stream_of(record: str) -> str:
    if len(record) >= HEADER_WIDTH - 1 and record[1] == " " and record[0] in STREAM_NAMES:
        return STREAM_NAMES[record[0]]
    return "stdout"


def text_of(record: str) -> str:
    if len(record) >= HEADER_WIDTH - 1 and record[1] == " " and record[0] in STREAM_NAMES:
        return record[HEADER_WIDTH:]
    return record


def time_of(record: str) -> str:
    if len(record) >= HEADER_WIDTH - 1 and record[1] == " " and record[0] in STREAM_NAMES:
        return record[2 : 2 + TIMESTAMP_WIDTH]
    return ""


class LogModel:
    """Rows are the loaded lines in order, with one row standing for the gap if there is one."""

    def __init__(self) -> None:
        self.head: list[Chunk] = []
        self.gap: Gap | None = None
        self.tail: list[Chunk] = []
        self._starts: list[int] = []  # first row of each block, rebuilt on structural change
        self._blocks: list[Chunk | Gap] = []
        self.rows = 0
        self._end_hint = 0
        self.revision = 0  # bumped on any structural change (rows inserted or removed)

    # -- building ---------------------------------------------------------------

    def load(self, head: str, head_end: int, tail: str | None = None, tail_start: int = 0, tail_end: int = 0,
             lines_before_tail: int = 0) -> None:
        """Start from a head read and, for a long log, a tail read whose first record is line
        ``lines_before_tail`` (0-based); the lines between become the gap."""
        head_lines = split_records(head)
        self.head = [Chunk(0, head_end, head_lines)] if head_lines else []
        self.tail = []
        self.gap = None
        self._end_hint = head_end
        if tail is None or tail_start <= head_end:
            # Short log, or head and tail overlap: keep the head; the caller appends what follows it.
            self._index()
            return
        tail_lines = split_records(tail)
        skipped = lines_before_tail - len(head_lines)
        if skipped > 0:
            self.gap = Gap(head_end, tail_start, skipped)
        self.tail = [Chunk(tail_start, tail_end, tail_lines)]
        self._index()

    @property
    def end(self) -> int:
        """Byte offset after the last loaded record: where following continues."""
        if self.tail:
            return self.tail[-1].end
        if self.head:
            return self.head[-1].end
        return self._end_hint

    def append(self, data: str, start: int, end: int) -> int:
        """Records that follow the last one; returns how many rows were added."""
        records = split_records(data)
        if start != self.end or not records:
            return 0
        side = self.tail if (self.tail or self.gap) else self.head
        if side and len(side[-1].lines) < CHUNK_LINES:
            side[-1].lines.extend(records)
            side[-1].end = end
            self.rows += len(records)  # the last block grew: no row before it moved
        else:
            # A full head chunk starts the tail, so a long follow can later give chunks back.
            self.tail.append(Chunk(start, end, records))
            self._index()
        return len(records)

    def fill_from_tail(self, data: str, start: int, end: int, exact_start: bool) -> int:
        """Records read just before the tail (ending at the gap's end). Unless the read began on a
        record boundary, its first partial record is dropped. Returns rows inserted before the tail."""
        if self.gap is None or end != self.gap.end:
            return 0
        if not exact_start:
            cut = data.find("\n")
            if cut < 0:
                return 0
            start += len(data[: cut + 1].encode("utf-8", "surrogateescape"))
            data = data[cut + 1 :]
        records = split_records(data)
        if not records:
            return 0
        self.tail.insert(0, Chunk(start, end, records))
        self.gap.end = start
        self._gap_filled(len(records))
        return len(records)

    def fill_from_head(self, data: str, start: int, end: int) -> int:
        """Whole records read just after the head (starting at the gap's start)."""
        if self.gap is None or start != self.gap.start or end > self.gap.end:
            return 0
        records = split_records(data)
        if not records:
            return 0
        self.head.append(Chunk(start, end, records))
        self.gap.start = end
        self._gap_filled(len(records))
        return len(records)

    def _gap_filled(self, lines: int) -> None:
        """``lines`` of the gap were read in; a gap with no bytes or lines left is gone."""
        assert self.gap is not None
        self.gap.lines -= lines
        if self.gap.end <= self.gap.start or self.gap.lines <= 0:
            self.gap = None
        self._index()

    def drop_oldest_tail(self, keep_lines: int) -> int:
        """Give whole chunks at the front of the tail back to the gap until at most ``keep_lines``
        tail lines stay (never the last chunk); returns how many rows went."""
        dropped = 0
        while len(self.tail) > 1 and sum(len(c.lines) for c in self.tail) > keep_lines:
            chunk = self.tail.pop(0)
            if self.gap is None:
                head_end = self.head[-1].end if self.head else 0
                self.gap = Gap(head_end, chunk.end, 0)
            self.gap.end = chunk.end
            self.gap.lines += len(chunk.lines)
            dropped += len(chunk.lines)
        if dropped:
            self._index()
        return dropped

    # -- reading ----------------------------------------------------------------

    def _index(self) -> None:
        self._blocks = [*self.head, *([self.gap] if self.gap else []), *self.tail]
        self._starts = []
        row = 0
        for block in self._blocks:
            self._starts.append(row)
            row += 1 if isinstance(block, Gap) else len(block.lines)
        self.rows = row
        self.revision += 1

    def row(self, index: int) -> str | object:
        """The record at ``index`` (a string), or ``GAP``."""
        if not 0 <= index < self.rows:
            raise IndexError(index)
        if self._blocks and index >= self._starts[-1]:
            block: Chunk | Gap = self._blocks[-1]
            first = self._starts[-1]
        else:
            at = bisect.bisect_right(self._starts, index) - 1
            block, first = self._blocks[at], self._starts[at]
        if isinstance(block, Gap):
            return GAP
        return block.lines[index - first]

    @property
    def gap_row(self) -> int | None:
        if self.gap is None:
            return None
        return sum(len(c.lines) for c in self.head)

    @property
    def total_lines(self) -> int:
        return self.rows - (1 if self.gap else 0) + (self.gap.lines if self.gap else 0)

    def line_number(self, index: int) -> int:
        """The 1-based line number in the whole log of the row at ``index``."""
        gap_row = self.gap_row
        if gap_row is None or index <= gap_row or self.gap is None:
            return index + 1
        return index + self.gap.lines  # the gap row stands for gap.lines lines
