"""The queue's table: rows whose widths the queue measured lay out as the table would measure them."""

from __future__ import annotations

from typing import Any

from rich.text import Text
from textual.app import App, ComposeResult
from textual.geometry import Region

from runyard.tui.queue import content_widths, shown_cell
from runyard.tui.widgets import VimTable

# What users write: brackets and colons (Rich markup and emoji codes to DataTable, were they
# handed strings), a closing tag that would not parse as markup, a second line, wide characters.
ROWS: list[list[Any]] = [
    [Text("●12", style="bold"), "lr[0.1] x[/]y", ":rocket: run", "two\nlines", "日本語", ""],
    [Text(" 7"), "[bold]plain[/bold]", "step", "carriage\rreturn\u2028separated", "", "0.0001"],
    [Text(" 100000"), "", "s", "", "h", "1e+06"],
]
LABELS = ["ID", "TITLE", "STEP", "NOTE", "HOST", "loss"]


class Tables(App[None]):
    def compose(self) -> ComposeResult:
        yield VimTable(id="measured-by-the-table")
        yield VimTable(id="measured-by-the-queue")


async def test_rows_the_queue_measured_lay_out_as_the_table_measures_them() -> None:
    app = Tables()
    async with app.run_test(size=(100, 20)) as pilot:
        own = app.query_one("#measured-by-the-table", VimTable)
        given = app.query_one("#measured-by-the-queue", VimTable)
        for table in (own, given):
            for label in LABELS:
                table.add_column(label, key=label)
        for i, row in enumerate(ROWS):
            own.add_row(*[shown_cell(c) for c in row], key=str(i))
        given.add_measured_rows(((str(i), [shown_cell(c) for c in row]) for i, row in enumerate(ROWS)),
                                content_widths(ROWS, len(LABELS)))
        await pilot.pause()
        assert [c.content_width for c in given.ordered_columns] == [c.content_width for c in own.ordered_columns]
        assert given.virtual_size == own.virtual_size
        lines = [strip.text for strip in given.render_lines(Region(0, 0, 100, 4))]
        assert lines == [strip.text for strip in own.render_lines(Region(0, 0, 100, 4))]
        # written text is shown as written: no markup, no emoji, the first line of two
        assert "lr[0.1] x[/]y" in lines[1] and ":rocket: run" in lines[1] and "two " in lines[1]
        assert "lines" not in "".join(lines) and "[bold]plain[/bold]" in lines[2]
