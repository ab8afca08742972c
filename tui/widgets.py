"""Small widgets every screen shares: the status bar, and a DataTable that moves like vim."""

from __future__ import annotations

from typing import Any

from textual.binding import Binding
from textual.widgets import DataTable, Static


class StatusBar(Static):
    """One line at the bottom: what the screen shows, then the daemon connection's state."""

    DEFAULT_CSS = """
    StatusBar { height: 1; background: $panel; color: $text; padding: 0 1; }
    StatusBar.-down { background: $error; }
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__("", **kwargs)
        self.left = ""

    def on_mount(self) -> None:
        self.watch(self.app, "connection", self._show, init=True)
        self.watch(self.app, "frozen", self._show, init=False)

    def say(self, text: str) -> None:
        self.left = text
        self._show()

    def _show(self, *_: object) -> None:
        app: Any = self.app
        connection = app.connection
        self.set_class(not app.online, "-down")
        frozen = " · [b]FROZEN[/b] (Z)" if app.frozen else ""
        self.update(f"{self.left}{frozen}  [dim]│[/dim] {connection}")


class VimTable(DataTable[Any]):
    """A row-cursor table with j/k, g/G and PgUp/PgDn."""

    BINDINGS = [
        Binding("j", "cursor_down", "down", show=False, id="table.down"),
        Binding("k", "cursor_up", "up", show=False, id="table.up"),
        Binding("g", "scroll_top", "first", show=False, id="table.first"),
        Binding("G", "scroll_bottom", "last", show=False, id="table.last"),
    ]

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(cursor_type="row", zebra_stripes=True, **kwargs)

    def action_scroll_top(self) -> None:
        if self.row_count:
            self.move_cursor(row=0)

    def action_scroll_bottom(self) -> None:
        if self.row_count:
            self.move_cursor(row=self.row_count - 1)
