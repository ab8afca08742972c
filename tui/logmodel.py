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
from collections.abc import Callable
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
    # Streams known to have no record here (a stream-filtered view skips such a gap unseen).
    without: frozenset[str] = frozenset()


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
    """Rows are the loaded lines in order, with one row standing for each gap.

    Blocks (chunks of lines and gaps of known size) lie in the order of the log. A log opens as
    head, gap, tail; a search that lands in a gap reads a window around its match, which splits
    that gap in two, so the model may hold several gaps at once.
    """

    def __init__(self) -> None:
        self._blocks: list[Chunk | Gap] = []
        self._starts: list[int] = []  # first row of each block, rebuilt on structural change
        self._lines: list[int] = []  # lines of the log before each block
        self.rows = 0
        self._end_hint = 0
        self.revision = 0  # bumped on any structural change (rows inserted or removed)

    @property
    def head(self) -> list[Chunk]:
        """The chunks before the first gap."""
        out: list[Chunk] = []
        for block in self._blocks:
            if isinstance(block, Gap):
                break
            out.append(block)
        return out

    @property
    def tail(self) -> list[Chunk]:
        """The chunks after the last gap (none while there is no gap)."""
        out: list[Chunk] = []
        for block in reversed(self._blocks):
            if isinstance(block, Gap):
                out.reverse()
                return out
            out.append(block)
        return []

    @property
    def gaps(self) -> list[Gap]:
        return [b for b in self._blocks if isinstance(b, Gap)]

    @property
    def gap(self) -> Gap | None:
        """The first gap, if any."""
        return next((b for b in self._blocks if isinstance(b, Gap)), None)

    # -- building ---------------------------------------------------------------

    def load(self, head: str, head_end: int, tail: str | None = None, tail_start: int = 0, tail_end: int = 0,
             lines_before_tail: int = 0) -> None:
        """Start from a head read and, for a long log, a tail read whose first record is line
        ``lines_before_tail`` (0-based); the lines between become the gap."""
        head_lines = split_records(head)
        self._blocks = [Chunk(0, head_end, head_lines)] if head_lines else []
        self._end_hint = head_end
        if tail is None or tail_start <= head_end:
            # Short log, or head and tail overlap: keep the head; the caller appends what follows it.
            self._index()
            return
        tail_lines = split_records(tail)
        skipped = lines_before_tail - len(head_lines)
        if skipped > 0:
            self._blocks.append(Gap(head_end, tail_start, skipped))
        self._blocks.append(Chunk(tail_start, tail_end, tail_lines))
        self._index()

    @property
    def end(self) -> int:
        """Byte offset after the last loaded record: where following continues."""
        for block in reversed(self._blocks):
            if isinstance(block, Chunk):
                return block.end
        return self._end_hint

    def append(self, data: str, start: int, end: int) -> int:
        """Records that follow the last one; returns how many rows were added."""
        records = split_records(data)
        if start != self.end or not records:
            return 0
        last = self._blocks[-1] if self._blocks else None
        if isinstance(last, Chunk) and len(last.lines) < CHUNK_LINES:
            last.lines.extend(records)
            last.end = end
            self.rows += len(records)  # the last block grew: no row before it moved
        else:
            # A full chunk starts another, so a long follow can later give chunks back.
            self._blocks.append(Chunk(start, end, records))
            self._index()
        return len(records)

    def _gap_where(self, test: Callable[[Gap], bool]) -> int | None:
        return next((i for i, b in enumerate(self._blocks) if isinstance(b, Gap) and test(b)), None)

    def fill_from_tail(self, data: str, start: int, end: int, exact_start: bool) -> int:
        """Records read just before the lines after a gap (ending at the gap's end). Unless the read
        began on a record boundary, its first partial record is dropped. Returns rows inserted."""
        at = self._gap_where(lambda g: g.end == end)
        if at is None:
            return 0
        gap = self._blocks[at]
        assert isinstance(gap, Gap)
        if not exact_start:
            cut = data.find("\n")
            if cut < 0:
                return 0
            start += len(data[: cut + 1].encode("utf-8", "surrogateescape"))
            data = data[cut + 1 :]
        records = split_records(data)
        if not records or start < gap.start:
            return 0
        self._blocks.insert(at + 1, Chunk(start, end, records))
        gap.end = start
        self._gap_filled(gap, len(records))
        return len(records)

    def fill_from_head(self, data: str, start: int, end: int) -> int:
        """Whole records read just after the lines before a gap (starting at the gap's start)."""
        at = self._gap_where(lambda g: g.start == start and end <= g.end)
        if at is None:
            return 0
        gap = self._blocks[at]
        assert isinstance(gap, Gap)
        records = split_records(data)
        if not records:
            return 0
        self._blocks.insert(at, Chunk(start, end, records))
        gap.start = end
        self._gap_filled(gap, len(records))
        return len(records)

    def place_window(self, data: str, start: int, end: int, exact_start: bool, anchor: int, anchor_line: int,
                     left_without: frozenset[str] = frozenset(), right_without: frozenset[str] = frozenset()) -> bool:
        """Records read from inside a gap, around the record at byte ``anchor``, which is line
        ``anchor_line`` (from 1): they split the gap in two, known to lack the streams named in
        ``left_without`` and ``right_without``. Unless the read began on a record boundary its
        first partial record is dropped. Returns whether the anchor is now loaded."""
        at = self._gap_where(lambda g: g.start <= start and end <= g.end)
        if at is None or not start <= anchor < end:
            return False
        gap = self._blocks[at]
        assert isinstance(gap, Gap)
        if not exact_start:
            cut = data.find("\n")
            if cut < 0:
                return False
            start += len(data[: cut + 1].encode("utf-8", "surrogateescape"))
            data = data[cut + 1 :]
        records = split_records(data)
        before = 0  # records of the window before the anchor
        pos = start
        for record in records:
            if pos >= anchor:
                break
            pos += len(record.encode("utf-8", "surrogateescape")) + 1
            before += 1
        if pos != anchor or before >= len(records):
            return False
        left_lines = anchor_line - 1 - before - self._lines[at]
        right_lines = gap.lines - left_lines - len(records)
        if left_lines < 0 or right_lines < 0:
            return False
        parts: list[Chunk | Gap] = []
        if start > gap.start and left_lines > 0:
            parts.append(Gap(gap.start, start, left_lines, gap.without | left_without))
        parts.append(Chunk(start, end, records))
        if gap.end > end and right_lines > 0:
            parts.append(Gap(end, gap.end, right_lines, gap.without | right_without))
        self._blocks[at : at + 1] = parts
        self._index()
        return True

    def mark_without(self, gap: Gap, streams: frozenset[str]) -> None:
        """The gap holds no record of these streams."""
        gap.without |= streams
        self.revision += 1  # what a filtered view shows changed

    def _gap_filled(self, gap: Gap, lines: int) -> None:
        """``lines`` of the gap were read in; a gap with no bytes or lines left is gone."""
        gap.lines -= lines
        if gap.end <= gap.start or gap.lines <= 0:
            self._blocks.remove(gap)
        self._index()

    def drop_oldest_tail(self, keep_lines: int) -> int:
        """Give whole chunks at the front of the lines after the last gap (after the first chunk,
        when there is no gap) back to a gap until at most ``keep_lines`` of them stay (never the
        last chunk); returns how many rows went."""
        first = 1
        for i in range(len(self._blocks) - 1, -1, -1):
            if isinstance(self._blocks[i], Gap):
                first = i + 1
                break
        dropped = 0
        while len(self._blocks) - first > 1 and sum(
                len(b.lines) for b in self._blocks[first:] if isinstance(b, Chunk)) > keep_lines:
            chunk = self._blocks.pop(first)
            assert isinstance(chunk, Chunk)
            before = self._blocks[first - 1]
            if isinstance(before, Gap):
                before.end = chunk.end
                before.lines += len(chunk.lines)
                before.without = frozenset()  # the chunk's lines may be of any stream
            else:
                self._blocks.insert(first, Gap(before.end, chunk.end, len(chunk.lines)))
                first += 1
            dropped += len(chunk.lines)
        if dropped:
            self._index()
        return dropped

    # -- reading ----------------------------------------------------------------

    def _index(self) -> None:
        self._starts = []
        self._lines = []
        row = 0
        lines = 0
        for block in self._blocks:
            self._starts.append(row)
            self._lines.append(lines)
            row += 1 if isinstance(block, Gap) else len(block.lines)
            lines += block.lines if isinstance(block, Gap) else len(block.lines)
        self.rows = row
        self.revision += 1

    def _block_of(self, index: int) -> int:
        if self._blocks and index >= self._starts[-1]:
            return len(self._blocks) - 1
        return bisect.bisect_right(self._starts, index) - 1

    def row(self, index: int) -> str | object:
        """The record at ``index`` (a string), or ``GAP``."""
        if not 0 <= index < self.rows:
            raise IndexError(index)
        at = self._block_of(index)
        block = self._blocks[at]
        if isinstance(block, Gap):
            return GAP
        return block.lines[index - self._starts[at]]

    def gap_at(self, index: int) -> Gap | None:
        """The gap whose row is ``index``, if it is one."""
        block = self._blocks[self._block_of(index)] if 0 <= index < self.rows else None
        return block if isinstance(block, Gap) else None

    def row_of(self, gap: Gap) -> int | None:
        for block, row in zip(self._blocks, self._starts, strict=True):
            if block is gap:
                return row
        return None

    @property
    def gap_row(self) -> int | None:
        gap = self.gap
        return None if gap is None else self.row_of(gap)

    def offset_of(self, index: int) -> int:
        """Byte offset where the record at row ``index`` starts (a gap's row: the gap's start)."""
        at = self._block_of(index)
        block = self._blocks[at]
        if isinstance(block, Gap):
            return block.start
        pos = block.start
        for record in block.lines[: index - self._starts[at]]:
            pos += len(record.encode("utf-8", "surrogateescape")) + 1
        return pos

    def row_at_offset(self, offset: int) -> int | None:
        """The row of the loaded record that starts at byte ``offset``."""
        for at, block in enumerate(self._blocks):
            if isinstance(block, Chunk) and block.start <= offset < block.end:
                pos = block.start
                for i, record in enumerate(block.lines):
                    if pos == offset:
                        return self._starts[at] + i
                    pos += len(record.encode("utf-8", "surrogateescape")) + 1
                return None
        return None

    def row_of_line(self, line: int) -> int | None:
        """The row of line ``line`` (from 1) of the log, if it is loaded."""
        at = bisect.bisect_right(self._lines, line - 1) - 1
        if at < 0:
            return None
        block = self._blocks[at]
        if isinstance(block, Gap) or line - 1 - self._lines[at] >= len(block.lines):
            return None
        return self._starts[at] + line - 1 - self._lines[at]

    def gap_holding(self, offset: int) -> Gap | None:
        return next((b for b in self._blocks if isinstance(b, Gap) and b.start <= offset < b.end), None)

    @property
    def total_lines(self) -> int:
        return sum(b.lines if isinstance(b, Gap) else len(b.lines) for b in self._blocks)

    def line_number(self, index: int) -> int:
        """The 1-based line number in the whole log of the row at ``index``."""
        if not self._blocks:
            return index + 1
        at = self._block_of(index)
        return self._lines[at] + (index - self._starts[at]) + 1
