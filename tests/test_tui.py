"""The TUI driven by Textual's Pilot against a real daemon running real executions."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable, Static, Tree

from runyard.protocol import Client, RemoteError
from runyard.tui.app import RunyardApp
from runyard.tui.chart import MetadataPane
from runyard.tui.detail import DetailScreen
from runyard.tui.dialogs import ConfirmScreen, HelpScreen, PromptScreen
from runyard.tui.hosts import HostsScreen
from runyard.tui.logview import LogView
from runyard.tui.queue import QueueScreen

from .conftest import Daemon, make_repo, step_yaml, submit_repo, wait_for_status
from .pool import gpu_rows, start_lone_host

pytestmark = pytest.mark.slow

SIZE = (120, 36)

TRAIN = """\
import json, os, sys, time
n = int(os.environ.get("N", "40"))
for i in range(n):
    print(f"line {i}", flush=True)
    if i % 5 == 0:
        print(json.dumps({"step": i, "loss": 1.0 / (i + 1), "acc": i / n}), flush=True)
    if i % 7 == 0 and os.environ.get("WARN", "1") == "1":
        print(f"warn {i}", file=sys.stderr, flush=True)
    time.sleep(float(os.environ.get("DELAY", "0")))
if os.path.exists("/valohai/inputs/hold") or os.environ.get("HOLD"):
    while True:
        print("tick", flush=True)
        time.sleep(0.05)
"""


def project(tmp_path: Path) -> Path:
    steps = (
        step_yaml("train", "python3 train.py")
        + step_yaml("hold", "HOLD=1 python3 train.py")
        + step_yaml("big", "seq 1 60000")
        + step_yaml("slow", "DELAY=0.1 N=80 python3 train.py")
    )
    return make_repo(tmp_path / "repo", {"valohai.yaml": steps, "train.py": TRAIN})


async def until(pilot: Pilot[None], check: Callable[[], object], what: str, timeout: float = 60) -> None:
    """Let the app run until ``check()`` holds; the UI has no event to await, so look after each frame."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what} (screen {app_state(pilot)})")
        await pilot.pause(0.05)


def app_state(pilot: Pilot[None]) -> str:
    app = pilot.app
    focused = app.focused
    extra = ""
    if isinstance(app.screen, QueueScreen):
        extra = f" filter {app.screen.filter_text!r} rows {rows(app)}"
    return f"{type(app.screen).__name__}, focus {focused!r}, toasts {[n.message for n in app._notifications]}{extra}"


def rows(app: RunyardApp) -> list[int]:
    table = app.screen.query_one("#queue-table", DataTable)
    return [int(str(k.value)) for k in table.rows]


def text_of(widget: Static) -> str:
    return str(widget.render())


def log_text(app: RunyardApp) -> str:
    return str(app.screen.query_one(LogView).render())


async def move_to(pilot: Pilot[None], app: RunyardApp, execution_id: int) -> None:
    table = app.screen.query_one("#queue-table", DataTable)
    table.move_cursor(row=table.get_row_index(str(execution_id)))
    await pilot.pause()


@pytest.fixture
async def live(daemon: Daemon, tmp_path: Path) -> tuple[Daemon, Client, Path]:
    client = await Client.connect(daemon.socket, client_name="tests")
    yield daemon, client, project(tmp_path)  # type: ignore[misc]
    await client.close()


async def test_queue_filter_open_logs_follow_pause_and_resume(live: tuple[Daemon, Client, Path]) -> None:
    daemon, client, repo = live
    done = await submit_repo(client, repo, "train", title="finished-one", parameters={})
    await wait_for_status(client, done.id)
    held = await submit_repo(client, repo, "hold", title="still-running")
    await wait_for_status(client, held.id, {"started"})
    app = RunyardApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: set(rows(app)) >= {done.id, held.id}, "both executions in the queue")
        assert rows(app)[0] == held.id  # running first
        assert "connected" in app.connection
        # / filters live, as each key is typed
        await pilot.press("slash", *"status:complete")
        await until(pilot, lambda: rows(app) == [done.id], "the filter to leave only the complete one")
        await pilot.press("ctrl+g")
        await until(pilot, lambda: set(rows(app)) >= {done.id, held.id}, "the filter to clear")
        # Enter opens the running one on its logs, which follow live
        await move_to(pilot, app, held.id)
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen), "the detail screen")
        view = app.screen.query_one(LogView)
        await until(pilot, lambda: "tick" in log_text(app), "live lines in the log view")
        assert view.following
        # scrolling up pauses following and counts what arrives meanwhile
        await pilot.press("k", "k", "k")
        assert not view.following
        await until(pilot, lambda: view.waiting > 5, "new lines counted while paused")
        status = app.screen.query_one("#log-status", Static)
        await until(pilot, lambda: "new lines" in text_of(status), "the paused status")
        top = view.top
        await until(pilot, lambda: view.waiting > 20, "more new lines")
        assert view.top == top  # the view stayed where the reader put it
        await pilot.press("G")
        assert view.following and view.waiting == 0
        assert view.top == view._max_top()
        # stderr filter and back
        await pilot.press("e", "e")
        assert view.stream == "stderr"
        await until(pilot, lambda: "warn 0" in log_text(app) or "tick" not in log_text(app), "stderr only")
        assert "tick" not in log_text(app)
        await pilot.press("e")
        # timestamps and wrapping toggle
        await pilot.press("G", "t")
        await until(pilot, lambda: any(line.startswith("20") and " tick" in line
                                       for line in log_text(app).splitlines()), "timestamps shown")
        await pilot.press("t", "w")
        assert view.wrap and not view.show_times
        assert "wrap" in text_of(status)
        await pilot.press("w", "q")
        await until(pilot, lambda: isinstance(app.screen, QueueScreen), "back to the queue")
    await client.stop([held.id])


async def test_stop_needs_confirmation_naming_the_target(live: tuple[Daemon, Client, Path]) -> None:
    daemon, client, repo = live
    held = await submit_repo(client, repo, "hold", title="victim")
    await wait_for_status(client, held.id, {"started"})
    app = RunyardApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: held.id in rows(app), "the execution in the queue")
        await move_to(pilot, app, held.id)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        assert f"#{held.id} victim (started)" in text_of(app.screen.query_one("#targets", Static))
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, QueueScreen), "the queue again")
        assert (await client.get(held.id)).status == "started"  # nothing happened
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the confirmation")
        await pilot.press("y")
        ended = await wait_for_status(client, held.id)
        assert ended.status == "stopped"
        await until(pilot, lambda: "stopped" in str(app.screen.query_one("#queue-table", DataTable).get_row(
            str(held.id))[3]), "the queue to show stopped")


async def test_rename_and_delete_refused_then_confirmed(live: tuple[Daemon, Client, Path]) -> None:
    daemon, client, repo = live
    held = await submit_repo(client, repo, "hold", title="old-name")
    await wait_for_status(client, held.id, {"started"})
    app = RunyardApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: held.id in rows(app), "the execution in the queue")
        await move_to(pilot, app, held.id)
        await pilot.press("n")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen), "the rename prompt")
        await pilot.press(*["backspace"] * 10, *"new-name", "enter")
        await until(pilot, lambda: app.cache.views[held.id].title == "new-name", "the new title")
        assert (await client.get(held.id)).title == "new-name"
        # deleting a running execution is refused by the daemon, and the refusal is shown
        await pilot.press("ctrl+d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the delete confirmation")
        assert f"#{held.id} new-name" in text_of(app.screen.query_one("#targets", Static))
        await pilot.press("y")
        await until(pilot, lambda: any("refused" in n.message for n in app._notifications), "a refusal toast")
        assert (await client.get(held.id)).status == "started"
        await client.stop([held.id])
        await wait_for_status(client, held.id)
        await until(pilot, lambda: app.cache.views[held.id].status == "stopped", "the queue to see it stopped")
        await pilot.press("ctrl+d")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the delete confirmation")
        await pilot.press("y")
        await until(pilot, lambda: held.id not in rows(app), "the row to go")
        with pytest.raises(RemoteError):
            await client.get(held.id)


async def test_metadata_chart_compares_marked_executions(live: tuple[Daemon, Client, Path]) -> None:
    daemon, client, repo = live
    first = await submit_repo(client, repo, "train", title="a")
    second = await submit_repo(client, repo, "train", title="b")
    for e in (first, second):
        await wait_for_status(client, e.id)
    app = RunyardApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: {first.id, second.id} <= set(rows(app)), "both in the queue")
        await move_to(pilot, app, first.id)
        await pilot.press("space")
        await move_to(pilot, app, second.id)
        await pilot.press("space", "m")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen), "the detail screen")
        pane = app.screen.query_one(MetadataPane)
        info = pane.query_one("#chart-info", Static)
        await until(pilot, lambda: f"#{first.id} loss" in text_of(info), "the chart of both")
        assert f"#{second.id} loss" in text_of(info) and f"#{first.id} acc" in text_of(info)
        assert len(pane.points[first.id]) == 8  # one point every 5 lines of 40
        latest = pane.query_one("#latest", DataTable)
        assert latest.get_row("step")[1:] == ["35", "35"]
        # choose the keys: just loss
        await pilot.press("a")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen), "the key prompt")
        await pilot.press(*["backspace"] * 20, *"loss", "enter")
        await until(pilot, lambda: "acc" not in text_of(info), "the chart of loss only")
        assert f"#{first.id} loss" in text_of(info)
        # Info and Code tabs
        await pilot.press("3")
        info_text = app.screen.query_one("#info-text", Static)
        await until(pilot, lambda: "Parameters" in text_of(info_text), "the info tab")
        assert f"#{first.id}" in text_of(info_text) and "python3 train.py" in text_of(info_text)
        await pilot.press("4")
        tree = app.screen.query_one("#code-tree", Tree)
        await until(pilot, lambda: len(tree.root.children) >= 2, "the snapshot's files")
        leaf = next(n for n in tree.root.children if n.data == "train.py")
        tree.select_node(leaf)
        await pilot.press("enter")
        screen = app.screen
        assert isinstance(screen, DetailScreen)
        await until(pilot, lambda: screen.shown_file is not None, "the code of train.py")
        assert screen.shown_file == ("train.py", TRAIN)


async def test_long_log_opens_on_head_and_tail_and_reads_the_gap(live: tuple[Daemon, Client, Path]) -> None:
    daemon, client, repo = live
    big = await submit_repo(client, repo, "big")
    await wait_for_status(client, big.id)
    app = RunyardApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.loaded.is_set, "the queue")
        await pilot.press("colon", *str(big.id), "enter")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen), "the detail screen")
        view = app.screen.query_one(LogView)
        await until(pilot, lambda: "60000" in log_text(app), "the tail")
        assert view.model.gap is not None
        skipped = view.model.gap.lines
        assert skipped == 60000 - 200 - 2000
        assert view.model.total_lines == 60000
        # g goes to the head; paging down reaches the gap, which loads from the head's side
        await pilot.press("g")
        assert log_text(app).splitlines()[0] == "1"
        view.scroll_to_row(190)
        await until(pilot, lambda: view.model.gap is None or view.model.gap.lines < skipped, "the gap to shrink")
        lines = log_text(app).splitlines()
        assert lines[:12] == [str(n) for n in range(191, 203)]
        # search finds a line in what was loaded
        await pilot.press("slash")
        await until(pilot, lambda: isinstance(app.screen, PromptScreen), "the search prompt")
        await pilot.press(*"1000", "enter")
        await until(pilot, lambda: "1000" in log_text(app).splitlines(), "the match on screen")


async def test_readonly_hides_actions_and_help_lists_keys(live: tuple[Daemon, Client, Path]) -> None:
    daemon, client, repo = live
    held = await submit_repo(client, repo, "hold")
    await wait_for_status(client, held.id, {"started"})
    app = RunyardApp(daemon.socket, readonly=True)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: held.id in rows(app), "the queue")
        await move_to(pilot, app, held.id)
        await pilot.press("s")
        await pilot.pause()
        assert isinstance(app.screen, QueueScreen)  # no confirmation: stop is not there
        await pilot.press("question_mark")
        await until(pilot, lambda: isinstance(app.screen, HelpScreen), "the help")
        keys = text_of(app.screen.query_one("#keys-table", Static))
        assert "filter" in keys and "stop" not in keys
        await pilot.press("q")
        await pilot.press("2")
        await until(pilot, lambda: isinstance(app.screen, HostsScreen), "the hosts screen")
    assert (await client.get(held.id)).status == "started"
    await client.stop([held.id])


async def test_survives_a_daemon_restart(live: tuple[Daemon, Client, Path]) -> None:
    daemon, client, repo = live
    first = await submit_repo(client, repo, "train")
    await wait_for_status(client, first.id)
    app = RunyardApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, lambda: first.id in rows(app), "the queue")
        daemon.kill9()
        await until(pilot, lambda: not app.online, "the lost daemon to show")
        bar = app.screen.query_one("#status", Static)
        await until(pilot, lambda: "retry" in text_of(bar) or "lost" in text_of(bar), "the status bar to say so")
        daemon.start()
        await until(pilot, lambda: app.online and "reconnected" in app.connection, "the reconnect")
        other = Client.connect(daemon.socket)
        c2 = await other
        second = await submit_repo(c2, repo, "train")
        await c2.close()
        await until(pilot, lambda: second.id in rows(app), "a new execution seen through the new link")
        assert first.id in rows(app)


async def test_hosts_screen_shows_gpus_and_drains(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    host, _, known = start_lone_host(tmp_path, "gpu-x", gpu_rows("NVIDIA H100 80GB HBM3", 2, seed="x"))
    daemon = daemon_factory(local_extra="enabled = false",
                            extra_config=f'[ssh]\nknown_hosts = "{known}"\n' + host.config(pool="h100"))
    daemon.start()
    app = RunyardApp(daemon.socket)
    try:
        async with app.run_test(size=SIZE) as pilot:
            await until(pilot, app.loaded.is_set, "the queue")
            await pilot.press("2")
            await until(pilot, lambda: isinstance(app.screen, HostsScreen), "the hosts screen")
            table = app.screen.query_one("#hosts-table", DataTable)
            await until(pilot, lambda: table.row_count == 1 and str(table.get_row("gpu-x")[1]) == "ready",
                        "gpu-x ready")
            assert table.get_row("gpu-x")[3] == "2/2"
            gpus = app.screen.query_one("#gpu-table", DataTable)
            assert gpus.row_count == 2
            assert "H100" in str(gpus.get_row_at(0)[1]) and gpus.get_row_at(0)[4] == "free"
            await pilot.press("d")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "the drain confirmation")
            assert "gpu-x" in text_of(app.screen.query_one("#targets", Static))
            await pilot.press("y")
            await until(pilot, lambda: str(app.screen.query_one("#hosts-table", DataTable).get_row("gpu-x")[1])
                        == "draining", "gpu-x draining")
            await pilot.press("e")
            await until(pilot, lambda: str(app.screen.query_one("#hosts-table", DataTable).get_row("gpu-x")[1])
                        == "ready", "gpu-x ready again")
    finally:
        host.kill()


def test_metadata_parsing_reaches_queue_columns() -> None:
    from runyard.protocol.methods import ExecutionView
    from runyard.tui.format import Filter, sort_key

    def view(i: int, loss: float | None, status: str = "complete") -> ExecutionView:
        return ExecutionView(id=i, step="train", title=None, status=status, reason=None, owner="ann", owner_uid=1,
                             parameters={}, inputs={}, image="", command="", snapshot="", commit=None, host="h",
                             container_id=None, exit_code=None, created_at="2026-01-01T00:00:00Z", started_at=None,
                             ended_at=None, restarted_from=None, metadata={} if loss is None else {"loss": loss})

    from datetime import UTC, datetime

    views = [view(1, 0.5), view(2, None), view(3, 0.1), view(4, float("nan"))]
    ordered = sorted(views, key=sort_key("loss", datetime.now(UTC)))
    assert [v.id for v in ordered][:2] == [3, 1]  # numbers first, ascending; missing and NaN last
    assert Filter.parse("status:complete owner:ann").matches(views[0])
    assert not Filter.parse("status:error").matches(views[0])
    assert json.dumps(sorted(Filter.parse("host:h x").fields)) == '["host"]'


async def test_quitting_cleanly(live: tuple[Daemon, Client, Path]) -> None:
    daemon, _client, _repo = live
    app = RunyardApp(daemon.socket)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, app.loaded.is_set, "the queue")
        await pilot.press("q")
        await asyncio.wait_for(pilot.pause(), 5)
    assert app.return_code in (0, None)


async def test_leaving_screens_and_quitting_while_runs_change(live: tuple[Daemon, Client, Path],
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """Updates keep arriving while a screen is taken apart (back, or ctrl+c on the detail screen)."""
    daemon, client, repo = live
    held = await submit_repo(client, repo, "hold", title="changing")
    await wait_for_status(client, held.id, {"started"})
    # Refresh the running execution as often as the app can, so that refreshes land while
    # screens are being removed; at the usual 3 s most teardowns would see none.
    monkeypatch.setattr("runyard.tui.app.ACTIVE_REFRESH_SECONDS", 0.05)
    app = RunyardApp(daemon.socket)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: held.id in rows(app), "the queue")
        await move_to(pilot, app, held.id)
        for _ in range(6):
            await pilot.press("enter")
            await until(pilot, lambda: isinstance(app.screen, DetailScreen), "the detail screen")
            await pilot.press("q")
            await until(pilot, lambda: isinstance(app.screen, QueueScreen), "back on the queue")
        await pilot.press("enter")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen), "the detail screen")
        await pilot.press("ctrl+c")
        await asyncio.wait_for(pilot.pause(), 5)
    # run_test re-raises anything that escaped a handler, a timer or a worker while it ran.
    assert app.return_code in (0, None)


async def test_remapped_key_and_command_line(live: tuple[Daemon, Client, Path]) -> None:
    daemon, client, repo = live
    held = await submit_repo(client, repo, "hold", title="remapped")
    await wait_for_status(client, held.id, {"started"})
    app = RunyardApp(daemon.socket, keymap={"queue.stop": "x"})
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: held.id in rows(app), "the queue")
        await move_to(pilot, app, held.id)
        await pilot.press("s")  # no longer stop
        await pilot.pause()
        assert isinstance(app.screen, QueueScreen)
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), "stop's confirmation on the new key")
        await pilot.press("n")
        await pilot.press("colon", *"hosts", "enter")
        await until(pilot, lambda: isinstance(app.screen, HostsScreen), ":hosts")
        await pilot.press("colon", *"nonsense", "enter")
        await until(pilot, lambda: any("unknown command" in n.message for n in app._notifications), "a toast")
        await pilot.press("colon", *"sort duration desc", "enter")
        await until(pilot, lambda: isinstance(app.screen, QueueScreen) and app.screen.sort_column == "duration",
                    ":sort")
        await pilot.press("Z")
        assert app.frozen
        await pilot.press("Z")
        assert not app.frozen
    await client.stop([held.id])


async def test_older_executions_are_paged_in_as_the_cursor_reaches_the_end(daemon: Daemon, tmp_path: Path) -> None:
    repo = project(tmp_path)
    async with await Client.connect(daemon.socket) as client:
        first = await submit_repo(client, repo, "train", parameters={})
        await wait_for_status(client, first.id)
    daemon.terminate()
    # 450 more finished executions, copied from the real one with the daemon stopped
    import sqlite3

    db = sqlite3.connect(daemon.data_dir / "runyard.sqlite3")
    columns = [r[1] for r in db.execute("PRAGMA table_info(executions)") if r[1] != "id"]
    row = db.execute(f"SELECT {', '.join(columns)} FROM executions").fetchone()
    db.executemany(f"INSERT INTO executions ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})",
                   [row] * 450)
    db.commit()
    db.close()
    daemon.start()
    app = RunyardApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.loaded.is_set, "the queue")
        assert len(rows(app)) == 200  # one page, never the whole store
        for expected in (400, 451):
            await pilot.press("G")
            await until(pilot, lambda expected=expected: len(rows(app)) == expected, f"{expected} rows")  # type: ignore[misc]
        assert app.cache.exhausted
        assert rows(app)[-1] == 1


async def test_the_chart_grows_while_the_execution_runs(live: tuple[Daemon, Client, Path]) -> None:
    daemon, client, repo = live
    slow = await submit_repo(client, repo, "slow")
    await wait_for_status(client, slow.id, {"started"})
    app = RunyardApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await until(pilot, app.loaded.is_set, "the queue")
        app.open_execution(slow.id, tab="metadata")
        await until(pilot, lambda: isinstance(app.screen, DetailScreen) and bool(app.screen.query(MetadataPane)),
                    "the metadata tab")
        pane = app.screen.query_one(MetadataPane)
        await until(pilot, lambda: len(pane.points.get(slow.id, [])) >= 2, "the first points")
        first = len(pane.points[slow.id])
        await until(pilot, lambda: len(pane.points[slow.id]) > first, "more points while it runs", timeout=30)
        assert "loss" in text_of(pane.query_one("#chart-info", Static))
    await wait_for_status(client, slow.id)
