"""Small widgets every screen shares: the status bar, and a DataTable that moves like vim."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from rich.text import Text
from textual.binding import Binding
from textual.containers import ScrollableContainer, VerticalScroll
from textual.widgets import DataTable, Static, Tree
from textual.widgets.data_table import Column, ColumnKey, RowKey


class StatusBar(Static):
    """What the screen shows, then the daemon connection's state; never cut off where it matters.

    Online, the screen's part gives way (cut with …) and the socket path is dropped before the
    state is. Offline, the connection's message is all there is to say, and it wraps onto as many
    lines as it needs: its hint (start the daemon, ask for the group) is the part a user needs.
    """

    DEFAULT_CSS = """
    StatusBar { height: auto; max-height: 4; background: $panel; color: $text; padding: 0 1; }
    StatusBar.-down { background: $error; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", **kwargs)
        self.left = ""

    def on_mount(self) -> None:
        self.watch(self.app, "connection", self._show, init=True)
        self.watch(self.app, "frozen", self._show, init=False)

    def on_resize(self) -> None:
        self._show()
        # Toasts sit above the status bar, not on it: it is where the connection's state is read;
        # on an execution, above the log's position line too.
        above = 2 if self.screen.query("#log-status") else 1
        for rack in self.screen.query("#textual-toastrack"):
            rack.styles.margin = (0, 0, self.size.height + above, 0)

    def say(self, text: str) -> None:
        """Show ``text`` as written: it holds titles and the filter a user typed, never Rich markup."""
        self.left = text
        self._show()

    def _show(self, *_: object) -> None:
        app: Any = self.app
        self.set_class(not app.online, "-down")
        state = str(getattr(app, "link_text", "") or "")
        if not app.online:
            self.update(Text.assemble(("● ", "bold"), state or "connecting…"))
            return
        width = max(20, (self.size.width or app.size.width) - 2)
        user = f"{app.link.user}@" if app.link.user else ""
        left = Text(self.left)
        if app.frozen:
            left.append_text(Text.from_markup(" · [b]FROZEN[/b] (Z)"))
        right = Text.assemble(("●", "green"), f" {user}{app.socket_path} {state}")
        if left.cell_len + 3 + right.cell_len > width:
            right = Text.assemble(("●", "green"), f" {user.rstrip('@')} {state}".replace("  ", " "))
        room = width - right.cell_len - 3
        if left.cell_len > room:
            left.truncate(max(1, room), overflow="ellipsis")
        self.update(Text.assemble(left, ("  │ ", "dim"), right))


def as_written(cell: Any) -> Any:
    """A table cell that DataTable shows as written: a string that Rich markup or an emoji code
    (``[``, ``:``) would change becomes a Text; any other string is left one, since DataTable turns
    only the rows it draws into text, and Text objects for a thousand rows cost the queue's rebuild."""
    if isinstance(cell, str) and ("[" in cell or ":" in cell):
        return Text(cell, end="")
    return cell


class VimTable(DataTable[Any], inherit_bindings=False):
    """A row-cursor table with j/k, g/G, PgUp/PgDn, and h/l to scroll columns that do not fit.

    DataTable's own keys are not inherited: its Enter ("select") would hide the screen's Enter
    (open) from the help, and every key the table answers is declared here, so help lists it.
    """

    BINDINGS = [
        Binding("j,down", "cursor_down", "down", show=False, id="table.down"),
        Binding("k,up", "cursor_up", "up", show=False, id="table.up"),
        Binding("pagedown", "page_down", "page down", show=False, id="table.page_down"),
        Binding("pageup", "page_up", "page up", show=False, id="table.page_up"),
        Binding("g,home,ctrl+home", "scroll_top", "first", show=False, id="table.first"),
        Binding("G,end,ctrl+end", "scroll_bottom", "last", show=False, id="table.last"),
        Binding("h,left", "scroll_columns(-1)", "columns left", show=False, id="table.left"),
        Binding("l,right", "scroll_columns(1)", "columns right", show=False, id="table.right"),
    ]
    HELP_TITLE = "moving"
    _columns_now: list[Column] | None = None  # while rows are added: the columns, in order

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)

    # DataTable takes a string cell or label as Rich markup: a title, tag, host name or metadata key
    # holding ``[/]`` would crash the table, ``[b]`` would vanish. Every string here is shown as written.
    def add_column(self, label: str | Text, *, width: int | None = None, key: str | None = None,
                   default: Any = None) -> ColumnKey:
        return super().add_column(as_written(label), width=width, key=key, default=default)

    def add_row(self, *cells: Any, height: int | None = 1, key: str | None = None,
                label: str | Text | None = None) -> RowKey:
        return super().add_row(*map(as_written, cells), height=height, key=key,
                               label=as_written(label) if isinstance(label, str) else label)

    def update_cell(self, row_key: RowKey | str, column_key: ColumnKey | str, value: Any, *,
                    update_width: bool = False) -> None:
        super().update_cell(row_key, column_key, as_written(value), update_width=update_width)

    @property
    def ordered_columns(self) -> list[Column]:
        return super().ordered_columns if self._columns_now is None else self._columns_now

    def add_measured_rows(self, rows: Iterable[tuple[str, Sequence[Any]]], widths: Sequence[int]) -> None:
        """Add rows whose every column's widest cell the caller has measured already, as the table
        measures it (rich's measure of each cell as shown): ``widths``, one per column in order.

        DataTable measures each cell of every row it is given, the next time it is idle: with a
        thousand rows that was a third to a half of the queue's first paint, and the queue has
        measured every cell already to choose its columns.
        """
        # add_row works out the columns' order twice a row: a tenth of a millisecond each, and
        # they do not change while these are added
        self._columns_now = super().ordered_columns
        try:
            keys = [self.add_row(*cells, key=key) for key, cells in rows]
        finally:
            self._columns_now = None
        for column, width in zip(self.ordered_columns, widths, strict=True):
            column.content_width = max(column.content_width, width)
        # what the table would measure when idle; it still works out its size from the columns
        self._new_rows.difference_update(keys)

    def action_scroll_top(self) -> None:
        if self.row_count:
            self.move_cursor(row=0)

    def action_scroll_bottom(self) -> None:
        if self.row_count:
            self.move_cursor(row=self.row_count - 1)

    def action_scroll_columns(self, direction: int) -> None:
        """Scroll sideways by a whole column: a cell at a time takes a dozen presses to show one."""
        starts, x = [], 0
        for column in self.ordered_columns:
            starts.append(x)
            x += column.get_render_width(self)
        if direction > 0:
            target = next((s for s in starts if s > self.scroll_x), self.max_scroll_x)
        else:
            target = max((s for s in starts if s < self.scroll_x), default=0)
        self.scroll_to(x=min(target, self.max_scroll_x), animate=False)


class VimTree(Tree[Any], inherit_bindings=False):
    """A tree that moves like vim too: j/k, g/G. Every key it answers is declared here (none
    inherited), so the help lists each."""

    BINDINGS = [
        Binding("j,down", "cursor_down", "down", show=False, id="tree.down"),
        Binding("k,up", "cursor_up", "up", show=False, id="tree.up"),
        Binding("pagedown", "page_down", "page down", show=False, id="tree.page_down"),
        Binding("pageup", "page_up", "page up", show=False, id="tree.page_up"),
        Binding("g,home", "scroll_home", "first", show=False, id="tree.first"),
        Binding("G,end", "scroll_end", "last", show=False, id="tree.last"),
        Binding("enter", "select_cursor", "show file", show=False, id="tree.open"),
        Binding("space", "toggle_node", "open/close folder", show=False, id="tree.toggle"),
    ]
    HELP_TITLE = "files"
    HELP_FIRST = True  # the focused pane's keys first, as on Logs and Metadata


class InfoView(VerticalScroll, inherit_bindings=False):
    """The Info tab's text: focused on that tab, so that it scrolls at 80x24 and the tab bar
    (whose arrows would switch tabs behind the help's back) does not take the keys."""

    BINDINGS = [
        Binding("j,down", "scroll_down", "down", show=False, id="info.down"),
        Binding("k,up", "scroll_up", "up", show=False, id="info.up"),
        Binding("pagedown", "page_down", "page down", show=False, id="info.page_down"),
        Binding("pageup", "page_up", "page up", show=False, id="info.page_up"),
        Binding("g,home", "scroll_home", "top", show=False, id="info.top"),
        Binding("G,end", "scroll_end", "end", show=False, id="info.end"),
    ]
    HELP_TITLE = "info"


class CodeView(ScrollableContainer, can_focus=True, inherit_bindings=False):
    """A file's code: it scrolls both ways, since code lines are not wrapped. Every key it
    answers is declared here (none inherited), so the help lists each."""

    BINDINGS = [
        Binding("j,down", "scroll_down", "down", show=False, id="code.down"),
        Binding("k,up", "scroll_up", "up", show=False, id="code.up"),
        Binding("pagedown", "page_down", "page down", show=False, id="code.page_down"),
        Binding("pageup", "page_up", "page up", show=False, id="code.page_up"),
        Binding("h,left", "scroll_left", "scroll left", show=False, id="code.left"),
        Binding("l,right", "scroll_right", "scroll right", show=False, id="code.right"),
        Binding("g,home", "scroll_home", "top", show=False, id="code.top"),
        Binding("G,end", "scroll_end", "end", show=False, id="code.end"),
        Binding("f", "files", "files", id="code.files"),
    ]
    HELP_TITLE = "code"
    HELP_FIRST = True

    def action_files(self) -> None:
        self.screen.query_one(VimTree).focus()
