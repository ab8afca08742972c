"""The hosts: each one's state, every GPU with its utilisation and holder, CPU and memory, what runs."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.markup import escape
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Static

from runyard.protocol.methods import ClusterView, HostView

from .format import HOST_STATE_STYLES, bar
from .keys import MODE_BINDINGS, KeyFooter
from .widgets import StatusBar, VimTable

if TYPE_CHECKING:
    from .app import RunyardApp


HOST_COLUMNS = ("HOST", "STATE", "POOL", "GPUS FREE", "CPU", "MEMORY", "RUNNING")
GPU_COLUMNS = ("GPU", "MODEL", "MEMORY", "UTIL", "HELD BY")


Row = tuple[str, tuple[object, ...]]  # key, cells


def _fill(table: VimTable, names: tuple[str, ...], rows: list[Row], shown: dict[str, list[Row]]) -> bool:
    """Show ``rows``, unless the table shows them already; False when it did.

    The table is emptied, columns too: a column sized to what it once held (``connecting``, a GPU
    still being scanned) would keep that width, or cut what it holds now. DataTable sizes columns
    when idle, so a refill shows them at their headers' width for a moment: an update that changes
    nothing (most host updates) leaves the table alone instead of making it flicker."""
    key = str(table.id)
    if shown.get(key) == rows and table.row_count == len(rows):
        return False
    shown[key] = rows
    table.clear(columns=True)
    for name in names:
        table.add_column(name, key=name.lower())
    for row_key, cells in rows:
        table.add_row(*cells, key=row_key)
    return True


def cluster_cells(c: ClusterView) -> tuple[str, str, str]:
    """A cluster's GPUS FREE, CPU and MEMORY cells: its partition's idle GPUs of all (sinfo); Slurm
    places by CPU and memory, so runyard has no figures of its own to show there."""
    return f"{c.gpus_total - c.gpus_allocated}/{c.gpus_total}", "Slurm", "Slurm"


def cluster_line(c: ClusterView) -> str:
    """The summary under the table for a cluster: as `runyard hosts` says it."""
    nodes = ", ".join(f"{n} {state}" for state, n in sorted(c.nodes.items())) or "? (not scanned yet)"
    return (f"partition {c.partition} · nodes {nodes} · GPUs {c.gpus_allocated}/{c.gpus_total} allocated · "
            f"jobs {c.jobs_running} running, {c.jobs_pending} pending")


class HostsScreen(Screen[None]):
    TITLE = "Hosts"
    AUTO_FOCUS = "#hosts-table"
    DEFAULT_CSS = """
    HostsScreen #hosts-table { height: 1fr; min-height: 4; }
    HostsScreen #host-summary { height: auto; max-height: 4; padding: 0 1; background: $boost; }
    HostsScreen #gpu-table { height: 2fr; min-height: 5; }
    """
    BINDINGS = [
        Binding("d", "drain", "drain", id="hosts.drain"),
        Binding("e", "enable", "enable", id="hosts.enable"),
        Binding("x", "scan", "rescan", id="hosts.scan"),
        Binding("enter", "open_holder", "open execution", id="hosts.open"),
        Binding("tab", "switch_table", "hosts/GPUs", show=False, id="hosts.switch"),
        Binding("q", "app.quit", "quit", id="hosts.quit"),
        *MODE_BINDINGS,
    ]

    def __init__(self) -> None:
        super().__init__()
        self.hosts: list[HostView] = []
        self._shown: dict[str, list[Row]] = {}  # what each table shows, by its id

    @property
    def ry(self) -> RunyardApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield VimTable(id="hosts-table")
        yield Static("", id="host-summary")
        yield VimTable(id="gpu-table")
        yield StatusBar(id="status")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.ry.host_listeners.append(self.show)
        self.show(self.ry.hosts)  # what is known now; on_screen_resume (also on first show) asks again

    def on_unmount(self) -> None:
        if self.show in self.ry.host_listeners:
            self.ry.host_listeners.remove(self.show)

    def on_screen_resume(self) -> None:
        self.run_worker(self.ry.refresh_hosts(), group="hosts")

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in ("drain", "enable") and self.ry.readonly)

    def show(self, hosts: list[HostView]) -> None:
        self.hosts = hosts
        table = self.query_one("#hosts-table", VimTable)
        current = self.current_host()
        rows: list[Row] = []
        for h in hosts:
            free = sum(1 for g in h.gpus if g.execution is None)
            cpu = f"{h.cpus_used:g}/{h.cpus}" if h.cpus else f"{h.cpus_used:g}/?"
            memory = f"{h.memory_used_mb // 1024}/{h.memory_mb // 1024} GiB" if h.memory_mb else "?"
            state = Text(h.state, style=HOST_STATE_STYLES.get(h.state, ""))
            gpus = f"{free}/{len(h.gpus)}"
            if h.cluster is not None:  # Slurm's, from the last sinfo: runyard fits no CPU or memory there
                gpus, cpu, memory = cluster_cells(h.cluster)
            rows.append((h.name, (h.name, state, h.pool, gpus, cpu, memory,
                                  ",".join(f"#{i}" for i in h.executions) or "-")))
        if _fill(table, HOST_COLUMNS, rows, self._shown) and current and current in table.rows:
            table.move_cursor(row=table.get_row_index(current))
        self._show_gpus()
        ready = sum(1 for h in hosts if h.state == "ready")
        self.query_one(StatusBar).say(f"{len(hosts)} hosts · {ready} ready · "
                                      f"{sum(len(h.gpus) for h in hosts)} GPUs")

    def current_host(self) -> str | None:
        table = self.query_one("#hosts-table", VimTable)
        if not table.row_count:
            return None
        row_key, _ = table.coordinate_to_cell_key(table.cursor_coordinate)
        return str(row_key.value)

    def host(self) -> HostView | None:
        name = self.current_host()
        return next((h for h in self.hosts if h.name == name), None)

    def _show_gpus(self) -> None:
        gpus = self.query_one("#gpu-table", VimTable)
        h = self.host()
        summary = self.query_one("#host-summary", Static)
        rows: list[Row] = []
        if h is None:
            _fill(gpus, GPU_COLUMNS, rows, self._shown)
            summary.update("no hosts configured")
            return
        lines = [f"[b]{escape(h.name)}[/b] {escape(h.address)} · {escape(h.runtime)} · max {h.max_concurrent} at once"
                 + ("" if h.scanned_at else " · not scanned yet")]
        if h.error:
            retry = (f" (failed {h.failed_attempts}×; next try in {h.retry_in_seconds:.0f} s)"
                     if h.retry_in_seconds is not None else "")
            lines.append(f"[red]{escape(h.error)}{retry}[/red]")
        for problem in h.problems:
            lines.append(f"[yellow]{escape(problem)}[/yellow]")
        if h.cluster is not None:
            lines.append(escape(cluster_line(h.cluster)))
        summary.update("\n".join(lines))
        for g in h.gpus:
            if g.memory_total_mb:
                memory = f"{g.memory_used_mb if g.memory_used_mb is not None else '?'}/{g.memory_total_mb} MiB"
            else:
                memory = "?"
            util = g.utilization
            util_text = f"{bar(None if util is None else util / 100)} {util if util is not None else '?':>3}%"
            holder = f"#{g.execution}" if g.execution is not None else "free"
            rows.append((g.uuid, (str(g.index), g.name, memory, util_text, holder)))
        _fill(gpus, GPU_COLUMNS, rows, self._shown)

    def on_data_table_row_highlighted(self, event: DataTable.RowHighlighted) -> None:
        if event.data_table.id == "hosts-table":
            self._show_gpus()

    def on_data_table_row_selected(self, event: DataTable.RowSelected) -> None:
        event.stop()
        self.action_open_holder()

    def action_switch_table(self) -> None:
        hosts = self.query_one("#hosts-table", VimTable)
        gpus = self.query_one("#gpu-table", VimTable)
        (gpus if hosts.has_focus else hosts).focus()

    def action_open_holder(self) -> None:
        h = self.host()
        if h is None:
            return
        gpus = self.query_one("#gpu-table", VimTable)
        if gpus.has_focus and gpus.row_count:
            holder = h.gpus[gpus.cursor_row].execution if gpus.cursor_row < len(h.gpus) else None
        else:
            holder = h.executions[0] if h.executions else None
        if holder is not None:
            self.ry.open_execution(holder)

    def action_drain(self) -> None:
        h = self.host()
        if h is not None:
            self.run_worker(self.ry.confirm_host(h.name, "drain"), group="action")

    def action_enable(self) -> None:
        h = self.host()
        if h is not None:
            self.run_worker(self.ry.confirm_host(h.name, "enable"), group="action")

    def action_scan(self) -> None:
        h = self.host()
        self.run_worker(self.ry.scan_hosts(h.name if h else None), group="action")
