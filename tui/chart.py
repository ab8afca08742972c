"""The metadata tab: plotext charts of chosen keys for one or several executions, and latest values."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.widgets import DataTable, Static
from textual_plotext import PlotextPlot

from runyard.protocol import ConnectionLost, RemoteError
from runyard.protocol.methods import MetadataPoint

from .format import parse_time, value_text
from .widgets import as_written

if TYPE_CHECKING:
    from .app import RunyardApp


STEP_KEYS = ("step", "epoch", "iteration", "iter")  # what "step" means, in the order looked for
# Each series' mark and colour (plotext's ANSI number, and Rich's name of it for the legend).
MARKERS = ("•", "x", "+", "o", "*", "#", "=", "%")
PALETTE = ((14, "bright_cyan"), (11, "bright_yellow"), (13, "bright_magenta"), (10, "bright_green"),
           (9, "bright_red"), (12, "bright_blue"))
CHART_POINTS = 2000  # a chart is at most a few hundred columns wide: the daemon sends every k-th point


def series(points: list[MetadataPoint], key: str, x_axis: str) -> tuple[list[float], list[float]]:
    """(x, y) of one numeric key: x is the point's step (or epoch, iteration; else its number) or seconds
    since the first point."""
    xs: list[float] = []
    ys: list[float] = []
    t0 = parse_time(points[0].time) if points else None
    for point in points:
        y = point.values.get(key)
        if isinstance(y, bool) or not isinstance(y, int | float) or math.isnan(y) or math.isinf(y):
            continue
        if x_axis == "_time":
            t = parse_time(point.time)
            x: object = (t - t0).total_seconds() if t and t0 else point.n
        else:
            x = next((point.values[k] for k in STEP_KEYS if k in point.values), point.n)
        if isinstance(x, bool) or not isinstance(x, int | float):
            x = point.n
        xs.append(float(x))
        ys.append(float(y))
    return xs, ys


def integer_ticks(xs: list[float], most: int) -> list[int]:
    """Whole-number ticks (1, 2 or 5 times a power of ten apart) when every x is whole; else none."""
    if not xs or any(x != int(x) for x in xs):
        return []
    low, high = int(min(xs)), int(max(xs))
    if high == low:
        return [low]
    steps = (base * 10**power for power in range(20) for base in (1, 2, 5))
    step = next(s for s in steps if (high - low) / s <= most)
    first = (low + step - 1) // step * step
    return list(range(first, high + 1, step))


def numeric_keys(points: list[MetadataPoint]) -> list[str]:
    keys: dict[str, None] = {}
    for point in points:
        for key, value in point.values.items():
            if key not in (*STEP_KEYS, "_time") and isinstance(value, int | float) and not isinstance(value, bool):
                keys.setdefault(key)
    return list(keys)


class MetadataPane(Vertical, can_focus=True):
    DEFAULT_CSS = """
    MetadataPane PlotextPlot { height: 2fr; min-height: 8; }
    MetadataPane #latest { height: 1fr; min-height: 3; }
    MetadataPane #chart-info { height: auto; max-height: 2; padding: 0 1; }
    """
    BINDINGS = [
        Binding("a", "choose_keys", "keys", id="metadata.keys"),
        Binding("x", "toggle_x", "x axis", id="metadata.x_axis"),
    ]
    HELP_TITLE = "Metadata"
    HELP_FIRST = True

    def __init__(self, execution_id: int, compare: list[int] | None = None) -> None:
        super().__init__(id="metadata-pane")
        self.execution_id = execution_id
        self.compare = compare or [execution_id]
        self.keys: list[str] = []
        self.x_axis = "step"
        self.points: dict[int, list[MetadataPoint]] = {}  # downsampled, the current attempt's
        self.latest: dict[int, dict[str, object]] = {}  # the current attempt's latest value of every key

    @property
    def ry(self) -> RunyardApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static("", id="chart-info")
        yield PlotextPlot(id="chart")
        yield DataTable(id="latest", cursor_type="row")

    def on_mount(self) -> None:
        table = self.query_one("#latest", DataTable)
        # Fixed widths: live updates must not make the columns jump.
        table.add_column("KEY", key="key", width=24)
        for i in self.compare:
            table.add_column(f"#{i}", key=str(i), width=14)
        self.set_interval(2.0, self._tick)

    async def _tick(self) -> None:
        if self.ry.frozen or not self.display or not self.is_on_screen:
            return
        active = any(self.ry.is_active(i) for i in self.compare)
        if active or not self.points:
            await self.reload()

    async def reload(self) -> None:
        try:
            client = self.ry.link.client
            for i in self.compare:
                self.points[i] = await client.metadata(i, max_points=CHART_POINTS)
                # Every key's latest value, also of keys that the downsampled points leave out.
                self.latest[i] = dict((await client.get(i)).metadata)
        except (ConnectionLost, RemoteError) as exc:
            self.query_one("#chart-info", Static).update(Text(f"metadata unavailable: {exc}", style="red"))
            return
        if not self.keys:
            self.keys = numeric_keys(self.points.get(self.execution_id, []))[:3]
        self.draw()

    def draw(self) -> None:
        plot = self.query_one(PlotextPlot)
        plt = plot.plt
        plt.clear_data()
        plt.clear_figure()
        legend = Text()
        all_xs: list[float] = []
        drawn = 0
        for i in self.compare:
            for key in self.keys:
                xs, ys = series(self.points.get(i, []), key, self.x_axis)
                if not xs:
                    continue
                color, rich_color = PALETTE[drawn % len(PALETTE)]
                marker = MARKERS[drawn % len(MARKERS)]
                # A fine braille line, and each point drawn with the series' own mark: series apart
                # by shape, not by colour alone. The legend sits above the chart, not on the lines.
                plt.plot(xs, ys, marker="braille", color=color)
                plt.scatter(xs, ys, marker=marker, color=color)
                if legend:
                    legend.append("  ")
                legend.append(f"{marker} ", style=f"bold {rich_color}")
                legend.append(f"#{i} {key}" if len(self.compare) > 1 else key, style=rich_color)
                all_xs += xs
                drawn += 1
        ticks = integer_ticks(all_xs, max(2, plot.size.width // 10))
        if ticks:
            plt.xticks([float(t) for t in ticks], [str(t) for t in ticks])
        plt.xlabel("seconds since start" if self.x_axis == "_time" else "step")
        plot.refresh()
        info = self.query_one("#chart-info", Static)
        if not drawn:
            legend = Text("no numeric metadata yet")
        legend.append(f"  · x: {'time' if self.x_axis == '_time' else 'step'}", style="dim")
        info.update(legend)
        self._latest()

    def _latest(self) -> None:
        table = self.query_one("#latest", DataTable)
        table.clear()
        latest = self.latest
        keys = sorted({k for values in latest.values() for k in values if k != "_time"})
        for key in keys:
            # a key or value is shown as written, not taken as Rich markup (``[/]`` would crash the table)
            table.add_row(as_written(key), *[as_written(value_text(latest.get(i, {}).get(key, "")))
                                             for i in self.compare], key=key)

    def action_choose_keys(self) -> None:
        from .dialogs import PromptScreen, some_of

        known = numeric_keys([p for points in self.points.values() for p in points])

        def apply(text: str | None) -> None:
            if text is not None:
                self.keys = [k.strip() for k in text.replace(",", " ").split() if k.strip()]
                self.draw()

        self.app.push_screen(PromptScreen(f"Keys to chart (known: {some_of(known)})",
                                          ", ".join(self.keys)), apply)

    def action_toggle_x(self) -> None:
        self.x_axis = "_time" if self.x_axis == "step" else "step"
        self.draw()
