"""Tasks in the TUI: one queue row per task (its children collapsed under it), and a screen of its
children ranked by the target metric, with their parameters as columns.

Everything comes through protocol/: tasks.list for the rows (refreshed when a `task` event or a
child's change arrives), tasks.stop/restart/delete for the actions, asked first.
"""

from __future__ import annotations

import contextlib
import math
from typing import TYPE_CHECKING, Any

import msgspec
from rich.cells import cell_len
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable

from runyard.protocol.client import ConnectionLost, RemoteError
from runyard.protocol.methods import ExecutionView
from runyard.protocol.tasks import TaskView

from .format import STATUS_STYLES, parse_time, span, status_text, value_text
from .keys import KeyFooter
from .widgets import StatusBar, VimTable

if TYPE_CHECKING:
    from .app import RunyardApp

ENDED = frozenset({"complete", "error", "stopped"})  # a task's end states
TASKS_LISTED = 1000  # the newest tasks the queue knows of
FETCH_CHILDREN = 1000  # children of a task fetched one by one when not already known


def row_key(task_id: int) -> str:
    return f"task:{task_id}"


def task_of_key(key: str) -> int | None:
    name, _, number = key.partition(":")
    return int(number) if name == "task" and number.isdigit() else None


async def refresh(app: RunyardApp) -> None:
    """The tasks' views, from the daemon."""
    with contextlib.suppress(ConnectionLost, RemoteError):
        raw = await app.link.client.call("tasks.list", {"limit": TASKS_LISTED})
        app.tasks = {t.id: t for t in msgspec.convert(raw, list[TaskView])}


def target_metric(task: TaskView, chosen: list[str]) -> str | None:
    """The metric a task is ranked by: its optimization-target-metric, else the first metadata column."""
    return task.optimization_target_metric or (chosen[0] if chosen else None)


def towards(task: TaskView | None, metric: str | None) -> float | None:
    """The value the task's own target metric is ranked towards (its optimization-target-value)."""
    if task is None or metric is None or metric != task.optimization_target_metric:
        return None
    return task.optimization_target_value


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
        return None
    return float(value)


def best(children: list[ExecutionView], metric: str | None,
         target: float | None = None) -> tuple[float, int] | None:
    """The lowest value of ``metric`` among the children (closest to ``target`` if given), and whose."""
    if metric is None:
        return None
    found = [(n, v.id) for v in children if (n := _number(v.metadata.get(metric))) is not None]
    if not found:
        return None
    return min(found, key=lambda f: (abs(f[0] - target) if target is not None else f[0], f[1]))


def progress(task: TaskView) -> str:
    c = task.children
    done = sum(c.get(s, 0) for s in ("complete", "error", "stopped"))
    parts = [f"{done}/{task.total}"]
    if c.get("started"):
        parts.append(f"▶{c['started']}")
    failed = c.get("error", 0)
    if failed:
        parts.append(f"✗{failed}")
    return " ".join(parts)


def task_cells(task: TaskView, children: list[ExecutionView], metric_columns: list[str], now: Any,
               chosen: list[str], *, tagged: bool = False) -> list[Any]:
    """A task's row in the queue, in the queue's columns."""
    metric = target_metric(task, chosen)
    top = best(children, metric, towards(task, metric))
    title = task.title or task.name or task.type.replace("_", " ")
    if top is not None and metric is not None:
        title += f"{BEST}{metric} {value_text(top[0])} (#{top[1]})"
    status = Text(f"{task.status} {progress(task)}", style=STATUS_STYLES.get(task.status, ""))
    created = parse_time(task.created_at)
    cells: list[Any] = [
        Text(f"▸T{task.id}", style="bold"), title, task.step, status, "", "", task.owner,
        span((now - created).total_seconds()) if created else "?", "", *([""] if tagged else []),
    ]
    tops = {k: best(children, k, towards(task, k)) for k in metric_columns}
    cells += [value_text(tops[k][0]) if tops[k] is not None else "" for k in metric_columns]  # type: ignore[index]
    return cells


BEST = " · best "


def title_min(title: str, least: int) -> int:
    """The narrowest a task row's title may be cut to: its best value whole, and a little of its name."""
    _, sep, top = title.rpartition(BEST)
    return max(least, cell_len(sep + top) + 4) if sep else least


def squeeze_title(title: str, width: int) -> str:
    """A task row's title in ``width`` cells: its name gives way, its best value stays whole."""
    name, sep, top = title.rpartition(BEST)
    if not sep or cell_len(title) <= width:
        return title
    cut = Text(name)
    cut.truncate(max(1, width - cell_len(sep + top)), overflow="ellipsis")
    return cut.plain + sep + top


def describe(task: TaskView) -> list[str]:
    return [f"task {task.id} {task.title or task.name or task.step} ({task.status}), {task.total} children"]


async def act(app: RunyardApp, task: TaskView, action: str) -> None:
    """Stop, restart or delete a whole task, asked first (naming it and how many children)."""
    if action == "stop" and task.status in ENDED:
        app.notify(f"task {task.id} has already ended ({task.status}): nothing to stop", severity="warning")
        return
    questions = {"stop": f"Stop task {task.id} and its {task.total} children?",
                 "restart": f"Restart task {task.id} ({task.total} children) as a new task?",
                 "delete": f"Delete task {task.id} and its {task.total} children?"}
    if not await app._confirm(questions[action], describe(task)):
        app.notify(f"{action} cancelled")
        return
    try:
        answer = await app.link.client.call(f"tasks.{action}", {"id": task.id})
    except (RemoteError, ConnectionLost) as exc:
        app.notify(f"{action} refused: {exc}", severity="error")
        return
    if action == "stop":
        app.notify(f"task {task.id}: stopping {len(answer.get('stopped', []))} children")
    elif action == "restart":
        app.notify(f"task {task.id} restarted as task {answer.get('id')}")
    else:
        app.notify(f"task {task.id} deleted")
    await refresh(app)
    app._notify_all(None)


class TaskScreen(Screen[None]):
    """A task's children, best first by its target metric, with their parameters as columns."""

    TITLE = "Task"
    AUTO_FOCUS = "#task-table"
    DEFAULT_CSS = "TaskScreen #task-table { height: 1fr; }"
    BINDINGS = [
        Binding("enter", "open", "open", id="task.open"),
        Binding("space", "mark", "mark", id="task.mark"),
        Binding("m", "compare", "compare charts", id="task.compare"),
        Binding("q,escape", "back", "back", id="task.back"),
    ]

    def __init__(self, task_id: int) -> None:
        super().__init__()
        self.task_id = task_id
        self.marked: set[int] = set()

    @property
    def ry(self) -> RunyardApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield VimTable(id="task-table")
        yield StatusBar(id="status")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.ry.listeners.append(self.data_changed)
        self.rebuild()
        self.run_worker(self._fetch_missing(), group="task-children")

    def on_unmount(self) -> None:
        if self.data_changed in self.ry.listeners:
            self.ry.listeners.remove(self.data_changed)

    async def _fetch_missing(self) -> None:
        with contextlib.suppress(ConnectionLost, RemoteError):
            raw = await self.ry.link.client.call("tasks.get", {"id": self.task_id})
            ids = [i for i in msgspec.convert(raw, TaskView).execution_ids if i not in self.ry.cache.views]
            for execution_id in ids[:FETCH_CHILDREN]:
                self.ry.cache.update(await self.ry.link.client.get(execution_id))
            if ids:
                self.ry._notify_all(set(ids))

    def data_changed(self, ids: set[int] | None) -> None:
        if self.is_current:
            self.rebuild()

    def child_views(self) -> list[ExecutionView]:
        task = self.ry.tasks.get(self.task_id)
        metric = target_metric(task, self.ry.metadata_columns) if task else None
        kids = [v for v in self.ry.cache.views.values() if v.task == self.task_id]
        target = towards(task, metric)

        def rank(v: ExecutionView) -> tuple[int, float, int]:
            value = _number(v.metadata.get(metric)) if metric else None
            if value is not None and target is not None:
                value = abs(value - target)
            return (value is None, value if value is not None else 0.0, v.id)

        return sorted(kids, key=rank)

    def rebuild(self) -> None:
        table = self.query_one(VimTable)
        task = self.ry.tasks.get(self.task_id)
        kids = self.child_views()
        metric = target_metric(task, self.ry.metadata_columns) if task else None
        varying = sorted({k for v in kids for k in v.parameters
                          if len({str(w.parameters.get(k)) for w in kids}) > 1}) or sorted(
            {k for v in kids for k in v.parameters})
        metrics = [m for m in dict.fromkeys([*([metric] if metric else []), *self.ry.metadata_columns])]
        cursor = table.cursor_row
        table.clear(columns=True)
        for name in ["ID", "STATUS", *varying, *metrics]:
            table.add_column(name, key=name)
        for v in kids:
            mark = "●" if v.id in self.marked else " "
            table.add_row(
                Text(f"{mark}{v.id}", style="bold" if v.id in self.marked else ""),
                Text(status_text(v), style=STATUS_STYLES.get(v.status, "")),
                *[value_text(v.parameters[k]) if k in v.parameters else "" for k in varying],
                *[value_text(v.metadata[k]) if k in v.metadata else "" for k in metrics],
                key=str(v.id))
        if table.row_count:
            table.move_cursor(row=min(cursor, table.row_count - 1))
        what = task.title or task.name or task.step if task else ""
        parts = [f"task {self.task_id} {what}".strip()]
        if task is not None:
            parts.append(f"{task.status} {progress(task)}")
        target = towards(task, metric)
        order = f" (closest to {target:g} first)" if target is not None else ""
        parts.append(f"sorted by {metric}{order}" if metric else "no target metric (c on the queue picks one)")
        if self.marked:
            parts.append(f"{len(self.marked)} marked")
        self.query_one(StatusBar).say(" · ".join(parts))

    def cursor_id(self) -> int | None:
        table = self.query_one(VimTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return int(str(row_key.value)) if row_key.value is not None else None

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open()

    def action_open(self) -> None:
        current = self.cursor_id()
        if current is not None:
            self.ry.open_execution(current)

    def action_mark(self) -> None:
        current = self.cursor_id()
        if current is None:
            return
        self.marked.symmetric_difference_update({current})
        table = self.query_one(VimTable)
        row = table.cursor_row
        self.rebuild()
        if row + 1 < table.row_count:
            table.move_cursor(row=row + 1)

    def action_compare(self) -> None:
        ids = sorted(self.marked) or ([c] if (c := self.cursor_id()) is not None else [])
        if ids:
            self.ry.open_execution(ids[0], tab="metadata", compare=ids)

    def action_back(self) -> None:
        self.app.pop_screen()
