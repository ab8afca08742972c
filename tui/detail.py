"""One execution: its logs, metadata charts, everything about it, and the exact code that ran."""

from __future__ import annotations

import json
from pathlib import PurePosixPath
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.syntax import Syntax
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal
from textual.screen import Screen
from textual.widgets import Static, TabbedContent, TabPane, Tree

from runyard.protocol import ConnectionLost, RemoteError
from runyard.protocol.gpuuse import gpu_use_lines
from runyard.protocol.methods import ExecutionView, OutputView
from runyard.protocol.units import human_size as size_text

from .chart import MetadataPane
from .format import STATUS_STYLES, duration, resources_text, status_text
from .keys import KeyFooter
from .logview import LogView
from .widgets import CodeView, InfoView, StatusBar, VimTree

if TYPE_CHECKING:
    from .app import RunyardApp

TABS = ("logs", "metadata", "info", "code")


class DetailScreen(Screen[None]):
    DEFAULT_CSS = """
    DetailScreen #detail-header { height: 1; padding: 0 1; background: $boost; }
    DetailScreen #log-status {
        height: 1; padding: 0 1; color: $text-muted; text-wrap: nowrap; text-overflow: ellipsis;
    }
    DetailScreen #code-header { height: 1; padding: 0 1; color: $text-muted; }
    DetailScreen #code-tree { width: 26; max-width: 30%; border-right: vkey $primary-muted; }
    DetailScreen #code-view { width: 1fr; padding: 0 0 0 1; }
    DetailScreen #code-text { width: auto; }
    DetailScreen #tabs { height: 1fr; }
    DetailScreen ContentSwitcher { height: 1fr; }
    DetailScreen TabPane { padding: 0; height: 1fr; }
    """
    BINDINGS = [
        Binding("q,escape", "back", "back", id="detail.back"),
        Binding("1", "tab('logs')", "logs", show=False, id="detail.logs"),
        Binding("2", "tab('metadata')", "metadata", show=False, id="detail.metadata"),
        Binding("3", "tab('info')", "info", show=False, id="detail.info"),
        Binding("4", "tab('code')", "code", show=False, id="detail.code"),
        Binding("tab", "next_tab(1)", "next tab", show=False, id="detail.next_tab"),
        Binding("shift+tab", "next_tab(-1)", "previous tab", show=False, id="detail.previous_tab"),
        Binding("s", "stop", "stop", id="detail.stop"),
        Binding("r", "restart", "restart", id="detail.restart"),
        Binding("ctrl+d", "delete", "delete", id="detail.delete"),
        # not n: on the Logs tab n is the next match
        Binding("R", "rename", "rename", id="detail.rename"),
        Binding("exclamation_mark", "shell", "shell", show=False, id="detail.shell"),
    ]

    def __init__(self, execution_id: int, tab: str = "logs", compare: list[int] | None = None) -> None:
        super().__init__()
        self.execution_id = execution_id
        self.first_tab = tab
        self.compare = compare or [execution_id]
        self.title = f"Execution #{execution_id}"
        self._code_loaded = False
        self.shown_file: tuple[str, str] | None = None  # what the code viewer shows

    @property
    def ry(self) -> RunyardApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        yield Static("", id="detail-header")
        with TabbedContent(initial=self.first_tab, id="tabs"):
            with TabPane("1 Logs", id="logs"):
                yield LogView(self.execution_id, on_status=self._log_status, id="log-view")
                yield Static("", id="log-status")
            with TabPane("2 Metadata", id="metadata"):
                yield MetadataPane(self.execution_id, self.compare)
            with TabPane("3 Info", id="info"), InfoView(id="info-view"):
                yield Static("loading…", id="info-text")
            with TabPane("4 Code", id="code"):
                yield Static("snapshot", id="code-header")
                with Horizontal():
                    yield VimTree("files", id="code-tree")
                    with CodeView(id="code-view"):
                        yield Static("choose a file on the left (Enter)", id="code-text")
        yield StatusBar(id="status")
        yield KeyFooter()

    def on_mount(self) -> None:
        self.ry.listeners.append(self.data_changed)
        self.data_changed({self.execution_id})
        # The tab panes mount after this screen does; focus once they are there.
        self.call_after_refresh(self._focus_tab, self.first_tab)

    def on_unmount(self) -> None:
        self._stop_listening()

    def _stop_listening(self) -> None:
        if self.data_changed in self.ry.listeners:
            self.ry.listeners.remove(self.data_changed)

    def detach(self) -> None:
        """Stop taking updates: called before this screen is removed.

        Unsubscribed before leaving, not on unmount: Textual removes a screen's widgets
        before the screen itself, and an update arriving in between would find them gone.
        """
        self._stop_listening()

    def _leave(self) -> None:
        self.detach()
        self.dismiss()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        return not (action in ("stop", "restart", "delete", "rename", "shell") and self.ry.readonly)

    def view(self) -> ExecutionView | None:
        return self.ry.cache.views.get(self.execution_id)

    def data_changed(self, ids: set[int] | None) -> None:
        if ids is not None and self.execution_id not in ids:
            return
        v = self.view()
        header = self.query_one("#detail-header", Static)
        if v is None:
            header.update(f"#{self.execution_id} (loading, or deleted)")
            self.run_worker(self.ry.fetch_one(self.execution_id), group="fetch")
            return
        header.update(self._header(v))
        self.query_one(StatusBar).say(f"#{v.id} · {v.owner}")
        if self.query_one("#tabs", TabbedContent).active == "info":
            self.run_worker(self._show_info(), group="info")

    def _header(self, v: ExecutionView) -> Text:
        """The execution in one line; a long title is cut with … so that status, host and
        duration stay in view."""
        status = Text(status_text(v), style=STATUS_STYLES.get(v.status, ""))
        rest = Text.assemble(
            f" {v.step} · ", status, f" · {v.host or 'no host'}", f" · GPUs {len(v.gpus)}" if v.gpus else "",
            f" · {duration(v, self.ry.clock())}" if v.started_at else "",
        )
        head = Text(f"#{v.id} ", style="bold")
        width = (self.size.width or self.app.size.width) - 2  # the header's padding
        title = Text(v.title or "", style="bold")
        room = width - head.cell_len - rest.cell_len
        if title.cell_len > room:
            title.truncate(max(1, room), overflow="ellipsis")
        return Text.assemble(head, title, rest)

    def on_resize(self) -> None:
        v = self.view()
        if v is not None:
            self.query_one("#detail-header", Static).update(self._header(v))

    def _log_status(self, text: str) -> None:
        self.query_one("#log-status", Static).update(text)

    # -- tabs -------------------------------------------------------------------

    def action_tab(self, name: str) -> None:
        self.query_one("#tabs", TabbedContent).active = name
        self._focus_tab(name)

    def action_next_tab(self, step: int) -> None:
        current = self.query_one("#tabs", TabbedContent).active
        at = TABS.index(current) if current in TABS else 0
        self.action_tab(TABS[(at + step) % len(TABS)])

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        self._focus_tab(event.pane.id or "logs")

    def _focus_tab(self, name: str) -> None:
        if not self.query(LogView):
            self.call_after_refresh(self._focus_tab, name)
            return
        if name == "logs":
            self.query_one(LogView).focus()
        elif name == "metadata":
            pane = self.query_one(MetadataPane)
            pane.focus()
            self.run_worker(pane.reload(), group="metadata", exclusive=True)
        elif name == "info":
            self.query_one(InfoView).focus()
            self.run_worker(self._show_info(), group="info")
        elif name == "code":
            self.query_one("#code-tree", Tree).focus()
            if not self._code_loaded:
                self._code_loaded = True
                self.run_worker(self._load_code(), group="code", exclusive=True)

    def action_back(self) -> None:
        self._leave()

    # -- info -------------------------------------------------------------------

    async def _show_info(self) -> None:
        try:
            client = self.ry.link.client
            v = await client.get(self.execution_id)
            outputs = await client.outputs(self.execution_id) if v.status not in ("created", "queued") else []
        except (ConnectionLost, RemoteError) as exc:
            self.query_one("#info-text", Static).update(f"[red]{escape(str(exc))}[/red]")
            return
        self.ry.cache.update(v)
        self.query_one("#info-text", Static).update(info_text(v, outputs))

    # -- code -------------------------------------------------------------------

    async def _load_code(self) -> None:
        tree = self.query_one("#code-tree", Tree)
        try:
            files = await self.ry.link.client.snapshot_files(self.execution_id)
        except (ConnectionLost, RemoteError) as exc:
            self.query_one("#code-text", Static).update(f"[red]{escape(str(exc))}[/red]")
            return
        v = self.view()
        where = ""
        if v is not None:
            where = f"snapshot {v.snapshot[:12]}" + (f" · commit {v.commit[:10]}" if v.commit else " · ad-hoc tree")
        self.query_one("#code-header", Static).update(f"{where} · {len(files)} files")
        folders: dict[PurePosixPath, Any] = {PurePosixPath("."): tree.root}
        for path, size in sorted(files):
            p = PurePosixPath(path)
            parent = PurePosixPath(".")
            node = tree.root
            for part in p.parts[:-1]:
                parent = parent / part
                if parent not in folders:
                    # a snapshot's file names are the user's: shown as written, not as Rich markup
                    folders[parent] = node.add(Text(part + "/"), expand=False)
                node = folders[parent]
            node.add_leaf(Text.assemble(p.name, "  ", (size_text(size), "dim")), data=path)
        tree.root.expand()

    async def on_tree_node_selected(self, event: Tree.NodeSelected[Any]) -> None:
        path = event.node.data
        if not isinstance(path, str):
            return
        view = self.query_one("#code-text", Static)
        try:
            f = await self.ry.link.client.snapshot_file(self.execution_id, path)
        except (ConnectionLost, RemoteError) as exc:
            view.update(f"[red]{escape(str(exc))}[/red]")
            return
        if f.binary:
            view.update(f"{escape(path)}: binary file, {size_text(f.size)}")
            return
        self.shown_file = (path, f.data)
        lexer = Syntax.guess_lexer(path, f.data)
        note = f"\n… cut at {size_text(len(f.data))} of {size_text(f.size)}" if f.truncated else ""
        view.update(Syntax(f.data + note, lexer, line_numbers=True, word_wrap=False, theme="ansi_dark"))
        code = self.query_one(CodeView)
        code.scroll_home(animate=False)
        code.focus()  # long lines scroll sideways there; f goes back to the files

    # -- actions ----------------------------------------------------------------

    def _describe(self) -> list[str]:
        v = self.view()
        return [f"#{self.execution_id} {(v.title or v.step) if v else ''} ({v.status if v else '?'})"]

    def action_stop(self) -> None:
        self.run_worker(self.ry.confirm_and_stop([self.execution_id], self._describe()), group="action")

    def action_restart(self) -> None:
        self.run_worker(self.ry.restart([self.execution_id]), group="action")

    def action_delete(self) -> None:
        async def delete() -> None:
            if await self.ry.confirm_and_delete([self.execution_id], self._describe()):
                self._leave()

        self.run_worker(delete(), group="action")

    def action_rename(self) -> None:
        self.run_worker(self.ry.rename(self.execution_id), group="action")

    def action_shell(self) -> None:
        from .shellkey import open_shell

        self.run_worker(open_shell(self.app, self.ry.socket_path, self.execution_id, self.view()), group="action")


def info_text(v: ExecutionView, outputs: list[OutputView]) -> str:
    e = escape
    lines = [
        f"[b]#{v.id}[/b] {e(v.title or '')}  step [b]{e(v.step)}[/b]  owner {e(v.owner)}",
        f"status   {e(status_text(v))}   exit code {v.exit_code if v.exit_code is not None else '-'}",
        f"image    {e(v.image)}",
        f"command  {e(v.command)}",
        f"host     {e(v.host or '-')}   GPUs {e(', '.join(v.gpus) or 'none')}   priority {v.priority}"
        + (f"   retries left {v.retries}" if v.retries else ""),
        f"snapshot {v.snapshot[:16]}" + (f"  commit {e(v.commit)}" if v.commit else "  (ad-hoc working tree)"),
        f"created  {v.created_at}   started {v.started_at or '-'}   ended {v.ended_at or '-'}",
    ]
    if v.restarted_from:
        lines.append(f"restarted from #{v.restarted_from}")
    if v.resources:
        lines.append(f"resources {e(resources_text(v.resources))}")
    if v.tags:
        lines.append(f"tags     {e(', '.join(v.tags))}")
    lines.append("")
    lines.append("[b]Parameters[/b]" if v.parameters else "[b]Parameters[/b] none")
    lines += [f"  {e(k)} = {e(val if isinstance(val, str) else json.dumps(val))}" for k, val in v.parameters.items()]
    if v.variables:
        lines.append("[b]Variables[/b] (--var)")
        lines += [f"  {e(k)} = {e(json.dumps(val))}" for k, val in v.variables.items()]
    lines.append("[b]Inputs[/b]" if v.inputs else "[b]Inputs[/b] none")
    for name, urls in v.inputs.items():
        lines.append(f"  {e(name)}: {e(', '.join(urls))}")
    progress = v.input_progress
    if progress and progress.get("total"):
        done, total = int(str(progress.get("done", 0))), int(str(progress["total"]))
        lines.append(f"  fetching: {size_text(done)} of {size_text(total)} ({100 * done // max(1, total)}%)")
    if v.gpu_use:
        lines.append("[b]GPU use[/b]")
        lines += [f"  {e(line)}" for line in gpu_use_lines(v.gpus, v.gpu_use)]
    lines.append("[b]Outputs[/b]" if outputs else "[b]Outputs[/b] none")
    lines += [f"  {e(o.path)}  {size_text(o.size)}  sha256 {o.sha256[:12]}" for o in outputs]
    return "\n".join(lines)
