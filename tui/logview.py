"""The log viewer: head, "N lines skipped", tail; follows live; reads the rest by byte ranges.

Only the lines on screen are turned into text, so a log of a million lines costs
what its visible part costs. Scrolling up pauses following and counts what
arrives meanwhile; ``G``/End resumes. Scrolling onto the skipped-lines row loads
the lines behind it from the daemon, from whichever side the reader comes.
"""

from __future__ import annotations

import asyncio
import bisect
from collections.abc import Callable
from typing import TYPE_CHECKING, Final

import regex
from rich.markup import escape
from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.widget import Widget

from runyard.protocol import Client, ConnectionLost, RemoteError

from .logmodel import GAP, Gap, LogModel, stream_of, text_of, time_of
from .logsearch import LogSearch

if TYPE_CHECKING:
    from .app import RunyardApp

HEAD_LINES: Final = 200
TAIL_LINES: Final = 2000
WHOLE_BELOW: Final = 1 << 20  # logs smaller than this are read whole
FILL_BYTES: Final = 256 * 1024
WINDOW_BYTES: Final = 128 * 1024  # read around a match found in a skipped part
KEEP_FOLLOWED: Final = 100_000  # lines kept in memory while following; older ones go back to the gap
STREAMS: Final = (None, "stdout", "stderr")

_STYLES: Final = {"stdout": "", "stderr": "red", "system": "yellow italic"}


class LogView(Widget, can_focus=True):
    DEFAULT_CSS = """
    LogView { height: 1fr; padding: 0 0 0 1; }
    LogView:focus { background: $boost; }
    """
    BINDINGS = [
        Binding("j,down", "scroll_lines(1)", "down", show=False, id="logs.down"),
        Binding("k,up", "scroll_lines(-1)", "up", show=False, id="logs.up"),
        Binding("pagedown,ctrl+f", "page(1)", "page down", show=False, id="logs.page_down"),
        Binding("pageup,ctrl+b", "page(-1)", "page up", show=False, id="logs.page_up"),
        Binding("g,home", "top", "top", show=False, id="logs.top"),
        Binding("G,end", "follow", "follow", id="logs.follow"),
        Binding("slash", "search", "search", id="logs.search"),
        Binding("n", "next_match(1)", "next", show=False, id="logs.next"),
        Binding("N", "next_match(-1)", "previous", show=False, id="logs.previous"),
        Binding("e", "cycle_stream", "stdout/stderr", id="logs.stream"),
        Binding("t", "toggle_times", "timestamps", id="logs.times"),
        Binding("w", "toggle_wrap", "wrap", id="logs.wrap"),
    ]
    HELP_TITLE = "Logs"
    HELP_FIRST = True  # its keys are what the Logs tab is for: listed before the screen's

    def __init__(self, execution_id: int, on_status: Callable[[str], None] | None = None, **kwargs: object) -> None:
        super().__init__(**kwargs)  # type: ignore[arg-type]
        self.execution_id = execution_id
        self.model = LogModel()
        self.top = 0
        self.following = True
        self.waiting = 0  # lines that arrived while following was paused
        self.stream: str | None = None
        self.show_times = False
        self.wrap = False
        self.search_text: str | None = None
        self._search: LogSearch | None = None
        self._highlight: regex.Pattern[str] | None = None
        self._match_offset: int | None = None  # byte offset of the match last shown
        self._match_line = 0
        self._searching = ""  # what the status line says while a search is on its way
        self.opened = False
        self.ended = False
        self._filtered: list[int] | None = None
        self._filtered_revision = -1
        self._filtered_rows = 0
        self._filling = False
        self._on_status = on_status
        self._last_status = ""
        self.shown = asyncio.Event()  # set once the opened log has been drawn; tests and benchmarks wait on it

    @property
    def ry(self) -> RunyardApp:
        return self.app  # type: ignore[return-value]

    # -- rows through the stream filter ----------------------------------------

    def _rows(self) -> list[int] | None:
        """Model rows that pass the stream filter (None: all of them)."""
        if self.stream is None:
            return None
        model = self.model
        if self._filtered is None or self._filtered_revision != model.revision:
            self._filtered = [i for i in range(model.rows) if self._passes(i)]
            self._filtered_revision = model.revision
            self._filtered_rows = model.rows
        elif self._filtered_rows < model.rows:
            self._filtered += [i for i in range(self._filtered_rows, model.rows) if self._passes(i)]
            self._filtered_rows = model.rows
        return self._filtered

    def _passes(self, row: int) -> bool:
        record = self.model.row(row)
        if record is GAP:  # shown unless known to hold none of what the filter shows
            gap = self.model.gap_at(row)
            return gap is None or not self._shown_streams() <= gap.without
        return isinstance(record, str) and stream_of(record) in (self.stream, "system")

    def _shown_streams(self) -> frozenset[str]:
        return frozenset((self.stream, "system")) if self.stream else frozenset()

    @property
    def count(self) -> int:
        rows = self._rows()
        return self.model.rows if rows is None else len(rows)

    def model_row(self, index: int) -> int:
        rows = self._rows()
        return index if rows is None else rows[index]

    # -- loading ----------------------------------------------------------------

    def on_mount(self) -> None:
        self.run_worker(self._load_and_follow(), group=f"log-{self.execution_id}", exclusive=True)

    async def _load_and_follow(self) -> None:
        """Open at once on head and tail, then follow; after a lost daemon, go on where it stopped."""
        while True:
            try:
                await self.ry.link.connected.wait()
                client = self.ry.link.client
                if not self.opened:
                    await self._open(client)
                    self.opened = True
                    self.refresh()
                    self._status()
                if self.ended:
                    return
                async for block in client.follow_logs(self.execution_id, self.model.end):
                    self._arrived(block.data, block.offset, block.end)
                self.ended = True
                self._status()
                return
            except RemoteError as exc:
                self.ry.notify(f"logs of #{self.execution_id}: {exc.message}", severity="error")
                return
            except (ConnectionLost, ConnectionError, OSError):
                await asyncio.sleep(0.2)  # the link reconnects; wait for it at the top of the loop

    async def _open(self, client: object) -> None:
        assert isinstance(client, Client)
        head = await client.read_logs(self.execution_id, head=HEAD_LINES)
        model = self.model
        if head.size <= WHOLE_BELOW or head.end >= head.size:
            whole = await client.read_logs(self.execution_id, offset=0, max_bytes=max(1, min(head.size, 8 << 20)))
            model.load(whole.data, whole.end)
        else:
            tail = await client.read_logs(self.execution_id, tail=TAIL_LINES)
            model.load(head.data, head.end, tail.data, tail.start, tail.end,
                       tail.first_line if tail.first_line is not None else 0)
            if tail.start <= head.end:  # very long lines: head and tail overlap
                rest = await client.read_logs(self.execution_id, offset=head.end, max_bytes=8 << 20)
                model.append(rest.data, rest.start, rest.end)
        self._to_bottom()

    def _arrived(self, data: str, start: int, end: int) -> None:
        before = self.count
        added = self.model.append(data, start, end)
        if not added:
            return
        if self.following:
            if self.model.rows > KEEP_FOLLOWED * 1.5:
                self.model.drop_oldest_tail(KEEP_FOLLOWED)
            self._to_bottom()
            self.refresh()
        else:
            # Nothing on screen moved: only the count of waiting lines changes.
            self.waiting += self.count - before
            self._status()

    async def _fill(self, gap: Gap, from_head: bool) -> None:
        model = self.model
        if self._filling or model.row_of(gap) is None:
            return
        self._filling = True
        try:
            client = self.ry.link.client
            rows_before, gap_row = model.rows, model.row_of(gap) or 0
            anchor = self.model_row(min(self.top, self.count - 1)) if self.count else 0
            if self.stream:
                await self._fill_filtered(client, gap, from_head)
            elif from_head:
                size = min(FILL_BYTES, gap.end - gap.start)
                part = await client.read_logs(self.execution_id, offset=gap.start, max_bytes=size)
                model.fill_from_head(part.data, part.start, part.end)
            else:
                size = FILL_BYTES
                while True:  # a record longer than the window needs a wider one
                    start = max(gap.start, gap.end - size)
                    part = await client.read_logs(self.execution_id, offset=start,
                                                  max_bytes=min(8 << 20, gap.end - start))
                    if model.fill_from_tail(part.data, part.start, part.end, exact_start=start == gap.start):
                        break
                    if start == gap.start or size >= 8 << 20:
                        break
                    size *= 2
            if anchor > gap_row:
                anchor += model.rows - rows_before  # keep the lines the reader is looking at in place
            self._place(anchor)
        except (ConnectionLost, RemoteError, OSError) as exc:
            self.ry.notify(f"could not read more of the log: {exc}", severity="warning")
        finally:
            self._filling = False
        self.refresh()
        self._status()

    async def _fill_filtered(self, client: Client, gap: Gap, from_head: bool) -> None:
        """With one stream shown, read the gap's next record of that stream (the daemon finds it
        by searching, however far) and the lines after it, or (from below) the last one and the
        lines before it; what lies between is known to hold none and is skipped unseen."""
        shown = self._shown_streams()
        offset = gap.start if from_head else gap.end
        while True:
            result = await client.search_logs(self.execution_id, "", offset=offset, backward=not from_head,
                                              streams=sorted(shown))
            if result.matches or result.done or not gap.start <= result.next <= gap.end:
                break
            offset = result.next
        match = result.matches[0] if result.matches else None
        if match is None or not gap.start <= match.offset < gap.end:
            self.model.mark_without(gap, shown)
        elif from_head:
            part = await client.read_logs(self.execution_id, offset=match.offset,
                                          max_bytes=max(1, min(FILL_BYTES, gap.end - match.offset)))
            self.model.place_window(part.data, part.start, part.end, True, match.offset, match.line,
                                    left_without=shown)
        else:
            start = min(match.offset, max(gap.start, match.end - FILL_BYTES))
            part = await client.read_logs(self.execution_id, offset=start, max_bytes=max(1, match.end - start))
            self.model.place_window(part.data, part.start, part.end, start in (gap.start, match.offset),
                                    match.offset, match.line, right_without=shown)

    # -- scrolling --------------------------------------------------------------

    @property
    def page_size(self) -> int:
        return max(1, self.size.height)

    def _max_top(self) -> int:
        return max(0, self.count - self.page_size)

    def _to_bottom(self) -> None:
        self.top = self._max_top()

    def scroll_to_row(self, top: int) -> None:
        self.top = max(0, min(top, self._max_top()))
        self.following = self.top >= self._max_top()
        if self.following:
            self.waiting = 0
        self.refresh()
        self._status()

    def action_scroll_lines(self, delta: int) -> None:
        self.scroll_to_row(self.top + delta)

    def action_page(self, direction: int) -> None:
        self.scroll_to_row(self.top + direction * max(1, self.page_size - 1))

    def action_top(self) -> None:
        self.scroll_to_row(0)

    def action_follow(self) -> None:
        self.following = True
        self.waiting = 0
        self._to_bottom()
        self.refresh()
        self._status()

    def on_mouse_scroll_down(self, event: events.MouseScrollDown) -> None:
        event.stop()
        self.action_scroll_lines(3)

    def on_mouse_scroll_up(self, event: events.MouseScrollUp) -> None:
        event.stop()
        self.action_scroll_lines(-3)

    def on_resize(self, event: events.Resize) -> None:
        if self.following:
            self._to_bottom()

    # -- options ----------------------------------------------------------------

    def _place(self, anchor: int) -> None:
        """Put model row ``anchor`` (or the first shown row after it) at the top."""
        rows = self._rows()
        self.top = anchor if rows is None else bisect.bisect_left(rows, anchor)
        if self.following:
            self._to_bottom()

    def action_cycle_stream(self) -> None:
        at = STREAMS.index(self.stream)
        anchor = self.model_row(min(self.top, self.count - 1)) if self.count else 0
        self.stream = STREAMS[(at + 1) % len(STREAMS)]
        self._filtered = None
        self._place(anchor)
        self.scroll_to_row(self.top)
        self.ry.notify(f"showing {self.stream or 'stdout and stderr'}")

    def action_toggle_times(self) -> None:
        self.show_times = not self.show_times
        self.refresh()
        self._status()

    def action_toggle_wrap(self) -> None:
        self.wrap = not self.wrap
        self.refresh()
        self._status()

    def action_search(self) -> None:
        from .dialogs import PromptScreen

        def apply(text: str | None) -> None:
            if text:
                try:
                    search = LogSearch.parse(text)
                except regex.error as exc:
                    self.ry.notify(f"bad regular expression {text!r}: {exc}", severity="error")
                    return
                self.search_text = text
                self._search = search
                self._highlight = search.highlight
                self._match_offset = None
                self._start_search(1, from_current=True)
            elif text == "":
                self.search_text = None
                self._search = None
                self._highlight = None
                self.refresh()

        self.app.push_screen(PromptScreen("Search the whole log: text, or /regex/ (empty: clear)\n"
                                          "a capital letter makes case count · n/N next/previous",
                                          self.search_text or ""), apply)

    def action_next_match(self, direction: int) -> None:
        if not self.search_text:
            self.ry.notify("no search: / to search")
            return
        self._start_search(direction)

    def _start_search(self, direction: int, from_current: bool = False) -> None:
        self.run_worker(self._find(direction, from_current), group=f"search-{self.execution_id}", exclusive=True)

    async def _find(self, direction: int, from_current: bool) -> None:
        """Ask the daemon for the next match in ``direction`` from the current match (or, first,
        from the top line on screen), anywhere in the log; load the lines around it if they lie in
        a skipped part; put it on screen. At the log's end the search goes round once."""
        search = self._search
        if search is None or not self.count:
            return
        client = self.ry.link.client
        top_offset = self.model.offset_of(self.model_row(min(self.top, self.count - 1)))
        offset: int | None
        if self._match_offset is not None and not from_current and self._match_on_screen():
            offset = self._match_offset if direction < 0 else self._match_offset + 1
        else:
            offset = top_offset
        streams = [self.stream, "system"] if self.stream else []
        wrapped = False
        spent = 0.0  # the daemon's time limit is the whole search's, all its requests together
        try:
            while True:
                result = await client.search_logs(self.execution_id, search.pattern, regex=search.regex,
                                                  ignore_case=search.ignore_case, offset=offset,
                                                  backward=direction < 0, streams=streams, spent=spent)
                spent += result.seconds
                if result.matches:
                    match = result.matches[0]
                    break
                if not result.done:
                    offset = result.next
                    # a long way to the next match: say how far the search has come
                    self._searching = f"searching… {100 * offset // max(1, result.size)}%"
                    self._status()
                    continue
                if wrapped:
                    self.ry.notify(f"no match for {self.search_text!r} in the whole log", severity="warning")
                    return
                wrapped = True
                offset = None
            if not await self._show_match(client, match.offset, match.line):
                self.ry.notify(f"could not load the lines around line {match.line:,}", severity="warning")
                return
            if wrapped:
                self.ry.notify("search went round to the " + ("top" if direction > 0 else "bottom"))
        except RemoteError as exc:
            self.ry.notify(exc.message, severity="error")
        except (ConnectionLost, OSError) as exc:
            self.ry.notify(f"could not search the log: {exc}", severity="warning")
        finally:
            self._searching = ""
            self._status()

    def _match_on_screen(self) -> bool:
        """Whether the match last shown is still in view: n/N go on from it, else from the screen."""
        row = self.model.row_of_line(self._match_line)
        if row is None:
            return False
        rows = self._rows()
        index = row if rows is None else bisect.bisect_left(rows, row)
        return self.top <= index < self.top + self.page_size

    async def _show_match(self, client: Client, offset: int, line: int) -> bool:
        model = self.model
        # By line number: exact however the daemon's text was decoded (offsets are not, past a
        # line of invalid UTF-8, whose replacement characters are longer).
        row = model.row_of_line(line)
        if row is None:
            gap = model.gap_holding(offset)
            if gap is None:
                return False
            start = max(gap.start, offset - WINDOW_BYTES // 2)
            part = await client.read_logs(self.execution_id, offset=start,
                                          max_bytes=max(1, min(WINDOW_BYTES, gap.end - start)))
            anchor = self.model_row(min(self.top, self.count - 1)) if self.count else 0
            gap_row = model.row_of(gap) or 0
            rows_before = model.rows
            if not model.place_window(part.data, part.start, part.end, start == gap.start, offset, line):
                return False
            if anchor > gap_row:
                anchor += model.rows - rows_before
            self._place(anchor)
            row = model.row_of_line(line)
            if row is None:
                return False
        self._match_offset, self._match_line = offset, line
        rows = self._rows()
        index = row if rows is None else bisect.bisect_left(rows, row)
        self.scroll_to_row(index - min(3, self.page_size // 3))
        self.refresh()
        return True

    # -- drawing ----------------------------------------------------------------

    def render(self) -> Text:
        height, width = self.size.height, max(1, self.size.width - 1)
        # Where the view starts follows from the height it is drawn at, not from the height some
        # earlier resize event saw: a resize seen in between (a hidden tab, a pane being laid out)
        # would otherwise leave a following view showing only the last line.
        self.top = self._max_top() if self.following else min(self.top, self._max_top())
        out: list[Text] = []
        console = self.app.console
        i = self.top
        count = self.count
        gap_seen: tuple[int, Gap] | None = None
        while len(out) < height and i < count:
            row = self.model_row(i)
            record = self.model.row(row)
            if record is GAP:
                gap = self.model.gap_at(row)
                n = gap.lines if gap else 0
                line = Text(f"··· {n:,} lines skipped (scroll here to load them) ···", style="reverse")
                if gap is not None and gap_seen is None:
                    gap_seen = (len(out), gap)
            else:
                assert isinstance(record, str)
                line = self._line(record, row, self._highlight)
            if self.wrap:
                out.extend(line.wrap(console, width))
            else:
                line.truncate(width, overflow="ellipsis")
                out.append(line)
            i += 1
        if gap_seen is not None and self.opened and not self._filling:
            # The reader sees the gap: fill it from the side they are coming from.
            # Head lines above it on screen mean the reader came down from the head.
            from_head = gap_seen[0] > 0 or self.top == 0
            self.run_worker(self._fill(gap_seen[1], from_head), group=f"fill-{self.execution_id}")
        self._status()  # the line count shown depends on the height just laid out
        if self.opened and out:
            self.shown.set()
        if not out:
            return Text("(no log lines yet)" if self.opened else "loading…", style="dim")
        return Text("\n").join(out[:height])

    def _line(self, record: str, row: int, pattern: regex.Pattern[str] | None) -> Text:
        stream = stream_of(record)
        line = Text(no_wrap=not self.wrap)
        if self.show_times:
            line.append(time_of(record)[:23] + " ", style="dim")
        body = Text(text_of(record), style=_STYLES.get(stream, ""))
        if pattern is not None:
            try:  # the user's pattern: a time limit, so that one that backtracks cannot hang the screen
                for hit in pattern.finditer(body.plain, timeout=0.02):
                    if hit.end() > hit.start():
                        body.stylize("black on yellow", hit.start(), hit.end())
            except TimeoutError:
                pass
        line.append_text(body)
        return line

    def _status(self) -> None:
        if self._on_status is None:
            return
        model = self.model
        count = self.count
        if count:
            first = model.line_number(self.model_row(min(self.top, count - 1)))
            last = model.line_number(self.model_row(min(self.top + self.page_size, count) - 1))
            where = f"lines {first:,}–{last:,} of {model.total_lines:,}"
        else:
            where = "empty"
        if self.ended:
            mode = "ended"
        elif self.following:
            mode = "[green]following[/green]"
        else:
            mode = f"[yellow]paused[/yellow]: {self.waiting:,} new lines (G follows)" if self.waiting else (
                "[yellow]paused[/yellow] (G follows)")
        parts = [where, mode, f"stream: {self.stream or 'all'}"]
        if self.show_times:
            parts.append("timestamps")
        if self.wrap:
            parts.append("wrap")
        if self.search_text:
            # the status line is markup (its colours): what the user typed is escaped into it
            parts.append(self._searching or f"search: {escape(repr(self.search_text))}")
        text = " · ".join(parts)
        if text != self._last_status:  # every update costs the screen a repaint
            self._last_status = text
            self._on_status(text)
