"""The log viewer's model: head, gap and tail stay exact while the gap is filled and the tail is trimmed."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runyard.tui.logmodel import GAP, LogModel


def records(first: int, last: int) -> str:
    return "".join(f"O 2026-11-21T00:00:00.000000000Z n={n}\n" for n in range(first, last + 1))


def build(total: int) -> tuple[str, list[int]]:
    """A whole log and the byte offset where each record starts (plus the end)."""
    data = records(1, total)
    offsets = [0]
    for line in data.splitlines(keepends=True):
        offsets.append(offsets[-1] + len(line.encode()))
    return data, offsets


def shown(model: LogModel) -> list[str]:
    out = []
    for i in range(model.rows):
        row = model.row(i)
        out.append("GAP" if row is GAP else str(row).rsplit(" ", 1)[1])
    return out


def opened(total: int, head: int, tail: int) -> tuple[LogModel, str, list[int]]:
    data, offsets = build(total)
    model = LogModel()
    model.load(data[: offsets[head]], offsets[head], data[offsets[total - tail] :], offsets[total - tail],
               offsets[total], total - tail)
    return model, data, offsets


def test_head_gap_tail_counts_exactly() -> None:
    model, _, _ = opened(1000, 10, 20)
    assert model.gap is not None and model.gap.lines == 970
    assert model.total_lines == 1000
    assert shown(model)[:10] == [f"n={n}" for n in range(1, 11)]
    assert shown(model)[10] == "GAP"
    assert shown(model)[11:] == [f"n={n}" for n in range(981, 1001)]
    assert model.line_number(11) == 981  # the first tail row is line 981 of the whole log


@settings(max_examples=200, deadline=None)
@given(total=st.integers(40, 400), head=st.integers(1, 15), tail=st.integers(1, 15),
       chunk=st.integers(1, 900), from_head=st.lists(st.booleans(), min_size=1, max_size=60))
def test_filling_the_gap_from_either_side_yields_the_whole_log(total: int, head: int, tail: int, chunk: int,
                                                               from_head: list[bool]) -> None:
    model, data, _ = opened(total, head, tail)
    raw = data.encode()
    steps = 0
    while model.gap is not None:
        gap = model.gap
        side = from_head[steps % len(from_head)]
        steps += 1
        if side:
            # the daemon's read_range: whole records from the offset, up to max_bytes
            end = raw.rfind(b"\n", gap.start, min(gap.end, gap.start + chunk)) + 1
            if end <= gap.start:
                end = raw.index(b"\n", gap.start) + 1
            model.fill_from_head(raw[gap.start : end].decode(), gap.start, end)
        else:
            size = chunk
            while True:  # as the viewer does: a record longer than the window needs a wider one
                start = max(gap.start, gap.end - size)
                if model.fill_from_tail(raw[start : gap.end].decode(), start, gap.end,
                                        exact_start=start == gap.start):
                    break
                size *= 2
        assert steps < 10_000
    assert shown(model) == [f"n={n}" for n in range(1, total + 1)]
    assert model.total_lines == total


def test_follow_appends_and_dropping_old_tail_chunks_keeps_counts() -> None:
    model, _data, offsets = opened(100, 5, 5)
    end = offsets[100]
    for first in range(101, 20_101, 1000):
        block = records(first, first + 999)
        model.append(block, end, end + len(block.encode()))
        end += len(block.encode())
    assert model.total_lines == 20_100
    dropped = model.drop_oldest_tail(5000)
    assert dropped > 0
    assert model.total_lines == 20_100  # what was dropped went back to the gap, counted
    assert shown(model)[-1] == "n=20100"
    assert model.gap is not None and model.gap.lines == 90 + dropped


def test_an_append_that_does_not_continue_the_log_is_ignored() -> None:
    model, _, offsets = opened(50, 5, 5)
    assert model.append(records(51, 51), offsets[50] + 7, offsets[50] + 50) == 0
    assert model.total_lines == 50


@settings(max_examples=80, deadline=None)
@given(total=st.integers(60, 400), jumps=st.lists(st.integers(0, 10_000), min_size=1, max_size=6),
       window=st.integers(1, 600), from_head=st.lists(st.booleans(), min_size=1, max_size=20))
def test_windows_placed_in_the_gap_keep_counts_exact_and_filling_yields_the_whole_log(
        total: int, jumps: list[int], window: int, from_head: list[bool]) -> None:
    """A search that lands in a skipped part reads a window around its match: the gap splits in
    two, line numbers stay exact, and filling every gap still gives the whole log once."""
    model, data, offsets = opened(total, 10, 10)
    raw = data.encode()
    for jump in jumps:
        line = 11 + jump % (total - 20)  # a line (from 1) in the first gap's range
        gap = model.gap_holding(offsets[line - 1])
        if gap is None:
            continue
        anchor = offsets[line - 1]
        start = max(gap.start, anchor - window)
        end = raw.rfind(b"\n", start, min(gap.end, start + 2 * window)) + 1
        if end <= anchor:
            end = raw.index(b"\n", anchor) + 1
        assert model.place_window(raw[start:end].decode(), start, end, start in offsets, anchor, line)
        row = model.row_at_offset(anchor)
        assert row is not None and model.row(row) == data.splitlines()[line - 1]
        assert model.line_number(row) == line and model.row_of_line(line) == row
        assert model.total_lines == total
    steps = 0
    while model.gap is not None:
        gap = model.gap
        steps += 1
        if from_head[steps % len(from_head)]:
            end = raw.rfind(b"\n", gap.start, min(gap.end, gap.start + 50)) + 1
            if end <= gap.start:
                end = raw.index(b"\n", gap.start) + 1
            assert model.fill_from_head(raw[gap.start : end].decode(), gap.start, end)
        else:
            start = max(gap.start, gap.end - 50)
            while not model.fill_from_tail(raw[start : gap.end].decode(), start, gap.end, start in offsets):
                start = max(gap.start, start - 50)
        assert steps < 10_000
    assert shown(model) == [f"n={n}" for n in range(1, total + 1)]
    assert [model.line_number(i) for i in range(model.rows)] == list(range(1, total + 1))
    assert [model.row_of_line(n) for n in range(1, total + 1)] == list(range(total))
