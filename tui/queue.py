"""The queue: every execution of interest, live, filtered, sorted, marked and acted on."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.control import strip_control_codes
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Input

from runyard.protocol.methods import ExecutionView
from runyard.protocol.tasks import TaskView

from .format import (
    ACTIVE,
    BASE_COLUMNS,
    STATUS_STYLES,
    Filter,
    age,
    default_order,
    duration,
    sort_key,
    status_text,
    value_text,
)
from .keys import MODE_BINDINGS, KeyFooter
from .tasks import TaskScreen, row_key, squeeze_title, task_cells, task_of_key, title_min
from .tasks import act as act_on_task
from .widgets import StatusBar, VimTable

if TYPE_CHECKING:
    from .app import RunyardApp

ACTION_BINDINGS = ("stop", "restart", "delete", "rename", "shell")


class QueueScreen(Screen[None]):
    TITLE = "Queue"
    AUTO_FOCUS = "#queue-table"
    DEFAULT_CSS = """
    QueueScreen #queue-filter { display: none; height: 1; border: none; padding: 0 1; }
    QueueScreen #queue-table { height: 1fr; }
    QueueScreen.-filtering #queue-filter { display: block; }
    """
    BINDINGS = [
        Binding("enter", "open", "open", id="queue.open"),
        Binding("slash", "filter", "filter", id="queue.filter"),
        Binding("space", "mark", "mark", id="queue.mark"),
        Binding("s", "stop", "stop", id="queue.stop"),
        Binding("r", "restart", "restart", id="queue.restart"),
        Binding("ctrl+d", "delete", "delete", id="queue.delete"),
        Binding("n", "rename", "rename", id="queue.rename"),
        Binding("exclamation_mark", "shell", "shell", show=False, id="queue.shell"),
        Binding("o", "sort_next", "sort", id="queue.sort"),
        Binding("O", "sort_reverse", "reverse", show=False, id="queue.sort_reverse"),
        Binding("c", "columns", "metadata cols", id="queue.columns"),
        Binding("m", "compare", "compare charts", show=False, id="queue.compare"),
        Binding("q", "app.quit", "quit", id="queue.quit"),
        Binding("escape,ctrl+g", "filter_close", "clear filter", show=False, id="queue.filter_clear"),
        *MODE_BINDINGS,
    ]

    def __init__(self) -> None:
        super().__init__()
        self.filter_text = ""
        self.filter = Filter()
        self.sort_column: str | None = None
        self.sort_reverse = False
        self.marked: set[int] = set()
        self._columns: object = None  # the columns' layout last built; None: build again
        self._shown_keys: list[str] = []  # the rows last built, in order, and their cells
        self._shown_cells: list[list[Any]] = []
        self.hidden_columns: list[str] = []  # what gave way to a narrow terminal
        self._paging = False

    @property
    def ry(self) -> RunyardApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Input(id="queue-filter",
                    placeholder="filter: words, status: step: owner: host: tag: task: — Enter keeps, Esc clears")
        yield VimTable(id="queue-table")
        yield StatusBar(id="status")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.ry.listeners.append(self.data_changed)
        self.watch(self.table, "scroll_x", self._table_scrolled, init=False)
        self.rebuild()

    def on_unmount(self) -> None:
        if self.data_changed in self.ry.listeners:
            self.ry.listeners.remove(self.data_changed)

    def on_screen_resume(self) -> None:
        self.rebuild()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in ACTION_BINDINGS and self.ry.readonly)

    # -- the table --------------------------------------------------------------

    @property
    def table(self) -> VimTable:
        return self.query_one("#queue-table", VimTable)

    def data_changed(self, ids: set[int] | None) -> None:
        if self.is_current:
            self.rebuild()

    def shown_views(self) -> list[ExecutionView]:
        views = [v for v in self.ry.cache.views.values() if self.filter.matches(v)]
        if self.sort_column is None:
            return default_order(views)
        return sorted(views, key=sort_key(self.sort_column, self.ry.clock()), reverse=self.sort_reverse)

    def shown_entries(self, views: list[ExecutionView]) -> list[ExecutionView | TaskView]:
        """A task's children collapse into one row for the task, where its first child would be;
        filtered by ``task:N``, they are shown one row each."""
        if "task" in self.filter.fields:
            return list(views)
        entries: list[ExecutionView | TaskView] = []
        seen: set[int] = set()
        for view in views:
            task = self.ry.tasks.get(view.task) if view.task is not None else None
            if task is None:
                entries.append(view)
            elif task.id not in seen:
                seen.add(task.id)
                entries.append(task)
        return entries

    def rebuild(self) -> None:
        table = self.table
        metadata_columns = list(self.ry.metadata_columns)
        now = self.ry.clock()
        flat = self.shown_views()
        views = self.shown_entries(flat)
        children: dict[int, list[ExecutionView]] = {}
        if any(isinstance(v, TaskView) for v in views):
            for child in self.ry.cache.views.values():
                if child.task is not None:
                    children.setdefault(child.task, []).append(child)
        # TAGS, after the base columns, only while a row shown has tags
        tagged = any(view.tags for view in views if isinstance(view, ExecutionView))
        rows = [self._cells(view, metadata_columns, now, tagged) if isinstance(view, ExecutionView)
                else task_cells(view, children.get(view.id, []), metadata_columns, now, metadata_columns,
                                tagged=tagged)
                for view in views]
        own = [*BASE_COLUMNS, *(["tags"] if tagged else [])]
        all_columns = [*own, *metadata_columns]
        labels = [self._label(name) for name in all_columns]
        at = BASE_COLUMNS.index("title")
        least = max([TITLE_MIN, *(title_min(r[at], TITLE_MIN) for v, r in zip(views, rows, strict=True)
                                  if isinstance(v, TaskView))])
        content = content_widths(rows, len(all_columns))
        keep, title_width = fit_columns(all_columns, labels, rows, self._room(len(rows)), tagged=tagged,
                                        title_least=least, content=content)
        if title_width is not None:  # a task's best value stays readable: its name is cut instead
            for v, r in zip(views, rows, strict=True):
                if isinstance(v, TaskView):
                    r[at] = squeeze_title(r[at], title_width)
        layout = (keep, title_width, labels)
        keys = [str(view.id) if isinstance(view, ExecutionView) else row_key(view.id) for view in views]
        shown = [[cells[i] for i in keep] for cells in rows]
        if layout == self._columns and keys == self._shown_keys:
            # The same rows in the same order (a refresh of the active ones, a host's event): only
            # the cells that changed are redrawn. Rebuilding makes the table measure every cell of
            # every row again, seconds a minute with a thousand active executions.
            self._update_cells(keys, shown)
            self.hidden_columns = [name for i, name in enumerate(all_columns) if i not in keep]
            self._say(flat)
            return
        self._shown_keys, self._shown_cells = keys, shown
        if layout != self._columns:
            table.clear(columns=True)
            for i in keep:
                # a metadata key may be named like a column ("step"): keys of its own keep them apart
                key = all_columns[i] if i < len(own) else f"metadata:{all_columns[i]}"
                table.add_column(labels[i], key=key, width=title_width if all_columns[i] == "title" else None)
            self._columns = layout
        cursor_key = self.cursor_id()
        # DataTable.clear() scrolls back to the first column and row: a live update must not
        # move what the user scrolled to (the old size still holds until the table is measured)
        x, y = table.scroll_x, table.scroll_y
        table.clear()
        cursor_task = self.cursor_task()
        if cursor_task is not None:
            cursor_key = row_key(cursor_task.id)  # type: ignore[assignment]
        table.add_measured_rows(((key, [shown_cell(c) for c in cells]) for key, cells in zip(keys, shown, strict=True)),
                                [content[i] for i in keep])
        table.scroll_x = table.scroll_target_x = x
        table.scroll_y = table.scroll_target_y = y
        if cursor_key is not None and str(cursor_key) in table.rows:
            table.move_cursor(row=table.get_row_index(str(cursor_key)))
        self.hidden_columns = [name for i, name in enumerate(all_columns) if i not in keep]
        self._say(flat)
        # whether columns are left over to scroll to is known once the table is laid out again
        self.call_after_refresh(self._say, flat)

    def _update_cells(self, keys: list[str], shown: list[list[Any]]) -> None:
        table = self.table
        columns = list(table.columns)
        for key, new, old in zip(keys, shown, self._shown_cells, strict=True):
            if new != old:
                for column, cell, was in zip(columns, new, old, strict=True):
                    if cell != was:
                        table.update_cell(key, column, shown_cell(cell), update_width=True)
        self._shown_cells = shown

    def _label(self, name: str) -> str:
        label = name.upper() if name in BASE_COLUMNS or name == "tags" else name
        if name == self.sort_column:
            label += " ▼" if self.sort_reverse else " ▲"
        return label

    def _room(self, rows: int) -> int:
        """Cells the table has for its columns: the screen's width, less the scrollbar when rows overflow."""
        width = self.size.width or self.app.size.width
        visible = max(1, (self.size.height or self.app.size.height) - 4)
        return width - (2 if rows > visible else 0)

    def on_resize(self) -> None:
        self.rebuild()

    def _table_scrolled(self, _: float) -> None:
        self._say(self.shown_views())

    def _cells(self, v: ExecutionView, metadata_columns: list[str], now: Any, tagged: bool = False) -> list[Any]:
        mark = "●" if v.id in self.marked else " "
        status = Text(status_text(v), style=STATUS_STYLES.get(v.status, ""))
        if v.input_progress and v.status in ACTIVE and v.input_progress.get("total"):
            done, total = int(str(v.input_progress.get("done", 0))), int(str(v.input_progress["total"]))
            status.append(f" ⇣{100 * done // max(1, total)}%", style="cyan")
        cells: list[Any] = [
            Text(f"{mark}{v.id}", style="bold" if v.id in self.marked else ""),
            v.title or "", v.step, status, v.host or "", ",".join(g[-4:] for g in v.gpus) or "",
            v.owner, age(v, now), duration(v, now), *([",".join(v.tags)] if tagged else []),
        ]
        cells += [value_text(v.metadata[k]) if k in v.metadata else "" for k in metadata_columns]
        return cells

    def _say(self, views: list[ExecutionView]) -> None:
        running = sum(1 for v in views if v.status == "started")
        queued = sum(1 for v in views if v.status in ("queued", "created"))
        rows = self.table.row_count  # a task's children share its one row
        parts = [f"{rows} shown" + (f" ({len(views)} executions)" if rows != len(views) else ""),
                 f"{running} running", f"{queued} queued"]
        if self.marked:
            parts.append(f"{len(self.marked)} marked")
        if self.filter_text:
            parts.append(f"filter: {self.filter_text}")
        if self.sort_column:
            parts.append(f"sort: {self.sort_column} {'▼' if self.sort_reverse else '▲'}")
        if not self.ry.loaded.is_set():
            parts = ["waiting for the daemon"]
        elif not self.ry.cache.exhausted:
            parts.append("older: scroll down")
        table = self.table
        if table.max_scroll_x > 0:
            parts.insert(0, "← more columns" if table.scroll_x >= table.max_scroll_x else "more columns →")
        self.query_one(StatusBar).say(" · ".join(parts))

    def _cursor_key(self) -> str | None:
        table = self.table
        if not table.row_count:
            return None
        try:
            key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        except Exception:
            return None
        return str(key.value) if key.value is not None else None

    def cursor_id(self) -> int | None:
        """The execution on the cursor row (None on a task's row)."""
        key = self._cursor_key()
        return int(key) if key is not None and key.isdigit() else None

    def cursor_task(self) -> TaskView | None:
        key = self._cursor_key()
        task_id = task_of_key(key) if key is not None else None
        return self.ry.tasks.get(task_id) if task_id is not None else None

    def _task_action(self, action: str) -> bool:
        """A task's row with nothing marked: the action is on the whole task, asked first."""
        task = self.cursor_task() if not self.marked else None
        if task is None:
            return False
        self.run_worker(act_on_task(self.ry, task, action), group="action")
        return True

    def targets(self) -> list[int]:
        if self.marked:
            return sorted(i for i in self.marked if i in self.ry.cache.views)
        current = self.cursor_id()
        return [current] if current is not None else []

    def describe(self, ids: list[int]) -> list[str]:
        out = []
        for i in ids:
            v = self.ry.cache.views.get(i)
            out.append(f"#{i} {v.title or v.step} ({v.status})" if v else f"#{i}")
        return out

    async def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        table = self.table
        if (event.cursor_row >= table.row_count - 5 and not self.ry.cache.exhausted and not self._paging):
            self._paging = True
            try:
                await self.ry.load_older()
            finally:
                self._paging = False

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    # -- actions ----------------------------------------------------------------

    def action_open(self) -> None:
        task = self.cursor_task()
        if task is not None:
            self.app.push_screen(TaskScreen(task.id))
            return
        current = self.cursor_id()
        if current is not None:
            self.ry.open_execution(current)

    def action_filter(self) -> None:
        self.add_class("-filtering")
        box = self.query_one("#queue-filter", Input)
        box.value = self.filter_text
        box.focus()

    def set_filter(self, text: str) -> None:
        self.filter_text = text.strip()
        self.filter = Filter.parse(self.filter_text)
        self.rebuild()

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "queue-filter":
            self.set_filter(event.value)  # live: every key narrows the table

    def on_input_submitted(self, event: Input.Submitted) -> None:
        if event.input.id == "queue-filter":
            if not self.filter_text:
                self.remove_class("-filtering")
            self.table.focus()

    def action_filter_close(self) -> None:
        if self.filter_text or self.has_class("-filtering"):
            self.query_one("#queue-filter", Input).value = ""
            self.set_filter("")
            self.remove_class("-filtering")
            self.table.focus()

    def action_mark(self) -> None:
        current = self.cursor_id()
        if current is None:
            return
        self.marked.symmetric_difference_update({current})
        row = self.table.cursor_row
        self.rebuild()
        if row + 1 < self.table.row_count:
            self.table.move_cursor(row=row + 1)

    def action_sort_next(self) -> None:
        # only the columns on screen: sorting by one that gave way to a narrow pane shows nothing
        columns = [c for c in (*BASE_COLUMNS, *self.ry.metadata_columns) if c not in self.hidden_columns]
        if self.sort_column is None:
            self.sort_column = columns[0]
        else:
            at = columns.index(self.sort_column) if self.sort_column in columns else -1
            self.sort_column = columns[at + 1] if at + 1 < len(columns) else None
        self._columns = None  # relabel the headers
        self.rebuild()
        self.app.notify(f"sorted by {self.sort_column}" if self.sort_column else "default order: active first")

    def action_sort_reverse(self) -> None:
        self.sort_reverse = not self.sort_reverse
        self._columns = None
        self.rebuild()

    def sort_by(self, column: str, reverse: bool = False) -> None:
        self.sort_column = column
        self.sort_reverse = reverse
        self._columns = None
        self.rebuild()

    def action_columns(self) -> None:
        known = sorted({k for v in self.ry.cache.views.values() for k in v.metadata})

        def apply(text: str | None) -> None:
            if text is None:
                return
            self.ry.metadata_columns = [c.strip() for c in text.replace(",", " ").split() if c.strip()]
            self._columns = None
            self.rebuild()

        from .dialogs import PromptScreen, some_of

        self.app.push_screen(PromptScreen(f"Metadata columns, comma separated (known: {some_of(known)})",
                                          ", ".join(self.ry.metadata_columns)), apply)

    def action_compare(self) -> None:
        ids = self.targets()
        if ids:
            self.ry.open_execution(ids[0], tab="metadata", compare=ids)

    # Flows that wait on a dialog run as workers: a dialog's answer is delivered through this
    # screen's message queue, which must not be blocked by the action awaiting it.
    def action_stop(self) -> None:
        if self._task_action("stop"):
            return
        ids = self.targets()
        self.run_worker(self.ry.confirm_and_stop(ids, self.describe(ids)), group="action")

    def action_restart(self) -> None:
        if self._task_action("restart"):
            return
        self.run_worker(self.ry.restart(self.targets()), group="action")

    def action_delete(self) -> None:
        if self._task_action("delete"):
            return
        ids = self.targets()

        async def delete() -> None:
            if await self.ry.confirm_and_delete(ids, self.describe(ids)):
                self.marked -= set(ids)
                self.rebuild()

        self.run_worker(delete(), group="action")

    def action_rename(self) -> None:
        current = self.cursor_id()
        if current is not None:
            self.run_worker(self.ry.rename(current), group="action")

    def action_shell(self) -> None:
        from .shellkey import open_shell

        current = self.cursor_id()
        if current is not None:
            self.run_worker(open_shell(self.app, self.ry.socket_path, current, self.ry.cache.views.get(current)),
                            group="action")

# Given up first, in this order, when the columns do not fit: what a narrow pane can do without.
GIVE_WAY = ("tags", "owner", "age")
TITLE_MIN = 12


def shown_cell(cell: object) -> object:
    """A cell as handed to the table: its text as written (a title's ``[`` or ``:`` is not Rich markup
    or an emoji code, as DataTable would take a string's), and only its first line (a row is one high).

    A string DataTable would show as written anyway is left one: the table turns only the rows it
    draws into text, and a thousand rows' Text objects made here were a tenth of the rebuild.
    """
    if isinstance(cell, Text):
        return cell
    text = str(cell)
    if text.isprintable() and "[" not in text and ":" not in text:
        return text
    return Text(text.split("\n", 1)[0], no_wrap=True, end="")


def cell_width(cell: object) -> int:
    """How wide DataTable measures ``shown_cell(cell)``: rich's measure of a text, its widest line."""
    plain = cell.plain if isinstance(cell, Text) else str(cell)
    if plain.isprintable():  # one line, no control codes: most cells
        return cell_len(plain)
    if not isinstance(cell, Text):  # as shown_cell makes it: a Text drops control codes (a carriage return)
        plain = strip_control_codes(plain.split("\n", 1)[0])
    return max(map(cell_len, plain.splitlines()), default=0)


def content_widths(rows: list[list[Any]], columns: int) -> list[int]:
    """Each column's widest cell, as the table measures it."""
    widths = []
    for i in range(columns):
        cells = [row[i] for row in rows]
        plains = [c.plain if isinstance(c, Text) else str(c) for c in cells]
        every = "".join(plains)
        if every.isascii() and every.isprintable():  # a character a cell, one line each: most columns
            widths.append(max(map(len, plains), default=0))
        else:
            widths.append(max(map(cell_width, cells), default=0))
    return widths


def fit_columns(names: list[str], labels: list[str], rows: list[list[Any]], room: int, *,
                tagged: bool = False, title_least: int = TITLE_MIN,
                content: list[int] | None = None) -> tuple[list[int], int | None]:
    """Which columns (by index) fit in ``room`` cells, and the title's width (None: as wide as it needs).

    Chosen metadata columns are why a user widened the table, so they stay: first an empty GPUs
    column goes, then the least useful ones, then long titles are cut. What still does not fit
    scrolls sideways, and the status bar says so. ``content``: ``content_widths(rows)`` when known.
    """
    if content is None:
        content = content_widths(rows, len(labels))
    # DataTable pads each cell by one each side
    widths = [max(cell_len(label), content[i]) + 2 for i, label in enumerate(labels)]
    shown = list(range(len(names)))
    # with ``tagged``, TAGS follows the base columns; it gives way first
    base = {name: i for i, name in enumerate([*BASE_COLUMNS, *(["tags"] if tagged else [])])}

    def total() -> int:
        return sum(widths[i] for i in shown)

    if total() > room and not any(row[base["gpus"]] for row in rows):
        shown.remove(base["gpus"])
    for name in GIVE_WAY:
        if total() <= room:
            break
        if name in base:
            shown.remove(base[name])
    title_width = None
    over = total() - room
    title = widths[base["title"]] - 2
    if over > 0 and title > title_least:
        title_width = max(title_least, title - over)
    return shown, title_width
