"""The CLI's tables line up in a terminal whatever the titles hold: wide characters take two cells."""

from __future__ import annotations

from runyard.cli.render import table, width


def test_columns_after_a_wide_title_line_up() -> None:
    shown = table(["ID", "TITLE", "OWNER"], [["1", "💥 boom", "ana"], ["2", "plain", "bo"], ["3", "日本語", "cy"]])
    lines = shown.splitlines()
    # The OWNER column starts at the same terminal cell on every line.
    starts = {width(line[: line.rindex(owner)]) for line, owner in zip(lines, ["OWNER", "ana", "bo", "cy"],
                                                                       strict=True)}
    assert len(starts) == 1, shown


def test_width_counts_cells() -> None:
    assert (width("abc"), width("💥"), width("日本"), width("é"), width("e\u0301")) == (3, 2, 4, 1, 1)
