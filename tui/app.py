"""The Textual app: one daemon link, a cache of executions, and the screens on top.

The app speaks to the daemon only through ``runyard.protocol``. Screens register
listeners; events mark executions dirty and a short timer fetches each dirty one
once, so a burst of state changes costs one repaint, not one per event.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from datetime import datetime
from typing import Any, ClassVar

from textual.app import App
from textual.binding import Binding, BindingType
from textual.notifications import SeverityLevel
from textual.reactive import reactive

from runyard.protocol import ConnectionLost, RemoteError, default_socket_path
from runyard.protocol.messages import Event
from runyard.protocol.methods import HostView
from runyard.protocol.tasks import TaskView

from .cache import PAGE, ExecutionCache
from .dialogs import ConfirmScreen, HelpScreen, PromptScreen
from .format import ACTIVE, now_utc
from .hosts import HostsScreen
from .link import DaemonLink
from .queue import QueueScreen
from .tasks import refresh as refresh_tasks

FLUSH_SECONDS = 0.15  # how long events gather before the changed executions are fetched
ACTIVE_REFRESH_SECONDS = 3.0  # metadata columns and durations of running executions


class RunyardApp(App[None]):
    TITLE = "runyard"
    ENABLE_COMMAND_PALETTE = False  # ":" is the command line here, as in k9s
    CSS = """
    Screen { layers: base overlay; }
    ToastRack { margin-bottom: 2; }
    """
    MODES: ClassVar[dict[str, Any]] = {"queue": QueueScreen, "hosts": HostsScreen}
    DEFAULT_MODE = "queue"
    BINDINGS: ClassVar[list[BindingType]] = [
        # 1 and 2 (queue, hosts) are the queue's and the hosts' own (keys.MODE_BINDINGS): on an
        # execution they choose its tabs, and one key has one meaning on a screen
        Binding("colon", "command", "command", id="app.command"),
        Binding("question_mark", "help", "help", id="app.help"),
        Binding("Z", "freeze", "freeze", id="app.freeze"),
        Binding("ctrl+c", "quit", "quit", show=False, priority=True, id="app.quit"),
    ]

    connection = reactive("connecting…")
    frozen = reactive(False)
    online = reactive(False)

    def __init__(self, socket_path: str | None = None, *, readonly: bool = False,
                 metadata_columns: list[str] | None = None, keymap: dict[str, str] | None = None,
                 clock: Callable[[], datetime] = now_utc) -> None:
        super().__init__()
        self.clock = clock  # ages and durations; tests pin it for screenshots
        self.socket_path = socket_path or default_socket_path()
        self.readonly = readonly
        self.metadata_columns = metadata_columns or []
        self.cache = ExecutionCache()
        self.hosts: list[HostView] = []
        self.tasks: dict[int, TaskView] = {}  # the newest tasks: one queue row each (tui/tasks.py)
        self.tasks_dirty = False
        self.listeners: list[Callable[[set[int] | None], None]] = []
        self.host_listeners: list[Callable[[list[HostView]], None]] = []
        self.link = DaemonLink(self.socket_path, on_event=self._on_event, on_connected=self._on_connected,
                               on_state=self._on_state)
        self.link_text = ""
        self.loaded = asyncio.Event()  # the first page is on screen; benchmarks and tests wait on it
        self._pending_keymap = keymap or {}

    def on_mount(self) -> None:
        if self._pending_keymap:
            self.set_keymap(self._pending_keymap)
        self.run_worker(self.link.run(), group="link", exit_on_error=False)
        self.set_interval(FLUSH_SECONDS, self._flush_events)
        self.set_interval(ACTIVE_REFRESH_SECONDS, self._refresh_active)

    def notify(self, message: str, *, title: str = "", severity: SeverityLevel = "information",
               timeout: float | None = None, markup: bool = False) -> None:
        """A toast, its text shown as written: toasts quote titles, commands and the daemon's errors,
        and a ``[/]`` in one would be Rich markup (a crash); no toast here is styled."""
        super().notify(message, title=title, severity=severity, timeout=timeout, markup=markup)

    # -- the daemon -------------------------------------------------------------

    def _on_state(self, text: str, online: bool) -> None:
        who = f"{self.link.user}@" if online and self.link.user else ""
        self.online = online
        self.link_text = text  # the status bar words it to fit its width
        self.connection = f"[green]●[/green] {who}{self.socket_path} {text}" if online else f"[red]●[/red] {text}"
        if online and text.startswith("reconnected"):
            self.notify("reconnected to the daemon; views resynced")

    async def _on_connected(self, again: bool) -> None:
        client = self.link.client
        # asked at once: the daemon answers the next while this process reads the thousand active
        active, recent, _ = await asyncio.gather(
            client.list_executions(status=sorted(ACTIVE), limit=10_000, with_metadata=True),
            client.list_executions(limit=PAGE, with_metadata=True),
            refresh_tasks(self),
        )
        self.cache.reset(active, recent)
        self._notify_all(None)
        self.loaded.set()
        await self.refresh_hosts()

    def _on_event(self, event: Event) -> None:
        if event.kind == "task":
            self.tasks_dirty = True
        if self.cache.apply(event) and not self.frozen:
            self._notify_all({event.execution_id})

    async def _flush_events(self) -> None:
        if self.cache.hosts_dirty and self.host_listeners and not self.frozen:
            self.cache.hosts_dirty = False
            await self.refresh_hosts()
        if not self.cache.dirty or self.frozen or not self.link.connected.is_set():
            if self.tasks_dirty and not self.frozen and self.link.connected.is_set():
                self.tasks_dirty = False
                await refresh_tasks(self)
                self._notify_all(None)
            return
        ids, self.cache.dirty = self.cache.dirty, set()
        await self._fetch(ids)

    async def _fetch(self, ids: set[int]) -> None:
        try:
            client = self.link.client
            for execution_id in sorted(ids):
                try:
                    self.cache.update(await client.get(execution_id))
                except RemoteError:
                    self.cache.views.pop(execution_id, None)  # deleted meanwhile
            if any(v.task is not None for i in ids if (v := self.cache.views.get(i)) is not None):
                self.tasks_dirty = True  # a child changed: its task's counts did too
        except ConnectionLost:
            self.cache.dirty |= ids
            return
        self._notify_all(ids)

    async def fetch_one(self, execution_id: int) -> None:
        await self._fetch({execution_id})

    async def _refresh_active(self) -> None:
        if self.frozen or not self.link.connected.is_set():
            return
        with contextlib.suppress(ConnectionLost, RemoteError):
            active = await self.link.client.list_executions(status=sorted(ACTIVE), limit=10_000, with_metadata=True)
            for view in active:
                self.cache.update(view)
            self._notify_all({v.id for v in active})

    def _notify_all(self, ids: set[int] | None) -> None:
        if self.frozen or not self.is_running:  # not running: quitting, screens are being taken apart
            return
        for listener in list(self.listeners):
            listener(ids)

    async def load_older(self) -> None:
        if self.cache.exhausted or self.cache.oldest_page_id is None:
            return
        with contextlib.suppress(ConnectionLost, RemoteError):
            page = await self.link.client.list_executions(before_id=self.cache.oldest_page_id, limit=PAGE,
                                                          with_metadata=True)
            self.cache.add_page(page)
            self._notify_all(None)

    async def refresh_hosts(self) -> None:
        with contextlib.suppress(ConnectionLost, RemoteError):
            self.hosts = await self.link.client.hosts()
            self._notify_hosts()

    def _notify_hosts(self) -> None:
        if not self.is_running:  # quitting: screens are being taken apart
            return
        for listener in list(self.host_listeners):
            listener(self.hosts)

    def is_active(self, execution_id: int) -> bool:
        view = self.cache.views.get(execution_id)
        return view is not None and view.status in ACTIVE

    # -- navigation -------------------------------------------------------------

    def open_execution(self, execution_id: int, tab: str = "logs", compare: list[int] | None = None) -> None:
        # imported on the first open, not before the queue's first paint: a fifth of the TUI's imports
        from .detail import DetailScreen

        self.push_screen(DetailScreen(execution_id, tab, compare))

    def _close_details(self) -> None:
        """Going somewhere by ``:`` replaces the open execution instead of stacking another on it."""
        from .detail import DetailScreen

        while len(self.screen_stack) > 1 and isinstance(self.screen, DetailScreen):
            self.screen.detach()
            self.pop_screen()

    def action_mode(self, mode: str) -> None:
        self.switch_mode(mode)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen(self.screen))

    def action_freeze(self) -> None:
        self.frozen = not self.frozen
        self.notify("updates frozen (Z resumes)" if self.frozen else "updates resumed")
        if not self.frozen:
            self._notify_all(None)

    def action_command(self) -> None:
        self.push_screen(PromptScreen(":", "", "queue · hosts · <id> · sort <column> [desc] · "
                                      "cols <key,...> · filter <text> · freeze · quit"), self._run_command)

    def _run_command(self, text: str | None) -> None:
        if not text:
            return
        word, _, rest = text.strip().lstrip(":").partition(" ")
        rest = rest.strip()
        word = word.lower()
        if word.lstrip("#").isdigit():
            self._close_details()
            self.open_execution(int(word.lstrip("#")))
        elif word in ("q", "quit"):
            self.exit()
        elif word in ("queue", "executions", "hosts"):
            self._close_details()
            self.switch_mode("hosts" if word == "hosts" else "queue")
        elif word in ("sort", "cols", "columns", "filter"):
            self._close_details()
            self.switch_mode("queue")
            queue = self.screen
            if not isinstance(queue, QueueScreen):
                return
            if word == "sort":
                column, _, order = rest.partition(" ")
                queue.sort_by(column or "id", order.strip().lower() in ("desc", "reverse", "-"))
            elif word == "filter":
                queue.set_filter(rest)
            else:
                self.metadata_columns = [c for c in rest.replace(",", " ").split() if c]
                queue.rebuild()
        elif word == "freeze":
            self.action_freeze()
        else:
            self.notify(f"unknown command {word!r}: try queue, hosts, an execution id, sort, cols, filter",
                        severity="error")

    # -- actions on executions --------------------------------------------------

    async def _confirm(self, question: str, targets: list[str]) -> bool:
        answer: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
        self.push_screen(ConfirmScreen(question, targets), lambda yes: answer.set_result(bool(yes)))
        return await answer

    async def confirm_and_stop(self, ids: list[int], described: list[str]) -> None:
        if not ids:
            return
        if not await self._confirm(f"Stop {len(ids)} execution{'s' * (len(ids) > 1)}?", described):
            self.notify("stop cancelled")
            return
        try:
            result = await self.link.client.stop(ids)
        except (RemoteError, ConnectionLost) as exc:
            self.notify(f"stop refused: {_message(exc)}", severity="error")
            return
        parts = []
        if result.stopped:
            parts.append("stopping " + ", ".join(f"#{i}" for i in result.stopped))
        if result.already_ended:
            parts.append("already ended " + ", ".join(f"#{i}" for i in result.already_ended))
        self.notify("; ".join(parts) or "nothing to stop")

    async def restart(self, ids: list[int]) -> None:
        for execution_id in ids:
            try:
                new = await self.link.client.restart(execution_id)
            except (RemoteError, ConnectionLost) as exc:
                self.notify(f"restart of #{execution_id} refused: {_message(exc)}", severity="error")
                continue
            self.cache.update(new)
            self.notify(f"restarted #{execution_id} as #{new.id}")
        self._notify_all(None)

    async def confirm_and_delete(self, ids: list[int], described: list[str]) -> bool:
        if not ids:
            return False
        question = f"Delete {len(ids)} execution{'s' * (len(ids) > 1)} and their logs? This cannot be undone."
        if not await self._confirm(question, described):
            self.notify("delete cancelled")
            return False
        deleted = []
        for execution_id in ids:
            try:
                await self.link.client.delete(execution_id)
            except (RemoteError, ConnectionLost) as exc:
                self.notify(f"delete of #{execution_id} refused: {_message(exc)}", severity="error")
                continue
            self.cache.views.pop(execution_id, None)
            deleted.append(execution_id)
        if deleted:
            self.notify("deleted " + ", ".join(f"#{i}" for i in deleted))
        self._notify_all(None)
        return bool(deleted)

    async def rename(self, execution_id: int) -> None:
        view = self.cache.views.get(execution_id)
        answer: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.push_screen(PromptScreen(f"New title for #{execution_id} (Enter saves, Esc cancels)",
                                      # the cursor after the old title: typing edits it
                                      (view.title or "") if view else "", select=False), answer.set_result)
        title = await answer
        if title is None:
            return
        try:
            renamed = await self.link.client.rename(execution_id, title)
        except (RemoteError, ConnectionLost) as exc:
            self.notify(f"rename of #{execution_id} refused: {_message(exc)}", severity="error")
            return
        self.cache.update(renamed)
        self._notify_all({execution_id})
        self.notify(f"renamed #{execution_id} to {title!r}")

    async def confirm_host(self, name: str, action: str) -> None:
        if action == "drain" and not await self._confirm(
            f"Drain host {name}? Running executions finish; nothing new starts there.", [name]
        ):
            self.notify("drain cancelled")
            return
        try:
            client = self.link.client
            view = await (client.host_drain(name) if action == "drain" else client.host_enable(name))
        except (RemoteError, ConnectionLost) as exc:
            self.notify(f"{action} {name} refused: {_message(exc)}", severity="error")
            return
        self.notify(f"{name} is {view.state}")
        await self.refresh_hosts()

    async def scan_hosts(self, name: str | None) -> None:
        try:
            self.hosts = await self.link.client.hosts_scan(name)
        except (RemoteError, ConnectionLost) as exc:
            self.notify(f"scan refused: {_message(exc)}", severity="error")
            return
        self._notify_hosts()
        self.notify(f"rescanned {name or 'all hosts'}")


def _message(exc: Exception) -> str:
    return exc.message if isinstance(exc, RemoteError) else str(exc)
