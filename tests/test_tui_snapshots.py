"""Screenshots of every screen at 80x24 and 200x50, compared with reviewed SVGs in __snapshots__.

The daemon is real and so are its executions; afterwards their times, owner and
snapshot ids are pinned in its SQLite file (with the daemon stopped), and the app's
clock is pinned, so the screens are the same on every machine and every run.
Update after reviewing a change: `pytest tests/test_tui_snapshots.py --snapshot-update`.
Review them as a terminal shows them: in a browser, or with
`sed 's/<svg /<svg xml:space="preserve" /' X.svg | rsvg-convert -o X.png` (without it librsvg and
ImageMagick drop a text run's leading no-break space, so a coloured cell seems a column off and
`gpu-x 127.0.0.1` reads `gpu-x127.0.0.1`). The tests after the screenshots check, at 80x24, what
a person reading them would: every key reachable, nothing that matters cut off.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from textual.app import App
from textual.binding import Binding
from textual.pilot import Pilot
from textual.screen import Screen
from textual.widgets import DataTable, Static, Tree
from textual.widgets._toast import Toast
from textual.widgets.data_table import ColumnKey

from runyard.protocol import Client
from runyard.tui.app import RunyardApp
from runyard.tui.chart import MetadataPane
from runyard.tui.detail import DetailScreen
from runyard.tui.dialogs import ConfirmScreen, HelpScreen, PromptScreen
from runyard.tui.format import BASE_COLUMNS
from runyard.tui.hosts import HostsScreen
from runyard.tui.logview import LogView
from runyard.tui.queue import QueueScreen

from .conftest import Daemon, make_repo, step_yaml, submit_repo, wait_for_status
from .pool import gpu_rows, start_lone_host
from .test_tui import TRAIN

pytestmark = pytest.mark.slow

NOW = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def clock() -> datetime:
    return NOW


async def _make_executions(daemon: Daemon, repo: Path) -> None:
    async with await Client.connect(daemon.socket) as client:
        ids = []
        for step, title in (("train", "baseline"), ("train", "lr-sweep-2"), ("fail", "broken"), ("hold", "held")):
            e = await submit_repo(client, repo, step, title=title, parameters={})
            ids.append(e.id)
            if step == "hold":
                await wait_for_status(client, e.id, {"started"})
                await client.stop([e.id])
            await wait_for_status(client, e.id)


def _pin(database: Path) -> None:
    db = sqlite3.connect(database)
    for i in range(1, 5):
        db.execute(
            # the snapshot id is the hash of the files, the same on every run; the commit's is not
            "UPDATE executions SET created_at = ?, started_at = ?, ended_at = ?, owner = 'ann', host = 'local',"
            " commit_ref = ? WHERE id = ?",
            (f"2026-11-21T11:0{i}:00.000000Z", f"2026-11-21T11:0{i}:05.000000Z",
             f"2026-11-21T11:{i + 2:02d}:35.000000Z", "c0ffee" * 6 + "c0ff", i),
        )
    db.commit()
    db.close()


@pytest.fixture(scope="module")
def screens(docker_engine: None) -> Iterator[Daemon]:
    # The status bar names the daemon's socket, and the screenshots must not vary: the app is given
    # the socket's path relative to the root, which is the working directory while these tests run.
    # A fixed absolute root would be shared with every other checkout's run of these tests.
    root = Path(tempfile.mkdtemp(prefix="ry-snapshots-"))
    cwd = os.getcwd()
    host, _, known = start_lone_host(root, "gpu-x", gpu_rows("NVIDIA H100 80GB HBM3", 2, seed="x"))
    daemon = Daemon(root=root, stop_grace=1, local_extra="cpus = 8\nmemory_mb = 32768\n",
                    extra_config=f'[ssh]\nknown_hosts = "{known}"\n'
                    + host.config(pool="h100", extra="cpus = 16\nmemory_mb = 65536\n"))
    repo = make_repo(root / "repo", {
        # stdout only, and nothing printed before the hold: how Docker interleaves two streams, and
        # what a stopped run printed before its stop, differ from run to run
        "valohai.yaml": step_yaml("train", "WARN=0 N=40 python3 train.py")
        + step_yaml("fail", "echo bad input >&2; exit 3")
        + step_yaml("hold", "HOLD=1 N=0 python3 train.py"),
        "train.py": TRAIN,
    })
    try:
        daemon.start()
        asyncio.run(_make_executions(daemon, repo))
        daemon.terminate()
        _pin(daemon.data_dir / "runyard.sqlite3")
        daemon.start()
        os.chdir(root)
        yield daemon
    finally:
        os.chdir(cwd)
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
        daemon.cleanup_containers()
        host.kill()
        shutil.rmtree(root, ignore_errors=True)


def until(check: Callable[[Pilot[None]], bool]) -> Callable[[Pilot[None]], Any]:
    async def run_before(pilot: Pilot[None]) -> None:
        for _ in range(600):
            if check(pilot):
                break
            await pilot.pause(0.05)
        else:
            lines = screen_lines(pilot.app)  # type: ignore[arg-type]
            raise AssertionError("the screen never settled; it shows:\n" + "\n".join(lines))
        await pilot.pause(0.2)

    return run_before


def queue_loaded(pilot: Pilot[None]) -> bool:
    app = pilot.app
    assert isinstance(app, RunyardApp)
    return app.loaded.is_set() and len(app.cache.views) == 4


def app_for(daemon: Daemon, socket: str | None = None) -> RunyardApp:
    assert Path(daemon.socket).parent == Path.cwd()
    return RunyardApp(socket or Path(daemon.socket).name, clock=clock, metadata_columns=["loss", "acc"])


SIZES = [(80, 24), (200, 50)]


def screen_lines(app: RunyardApp) -> list[str]:
    """What the terminal shows, line by line, as a person reads it."""
    return [strip.text for strip in app.screen._compositor.render_strips()]


def on_queue(pilot: Pilot[None]) -> bool:
    return queue_loaded(pilot)


def on_hosts(pilot: Pilot[None]) -> bool:
    app = pilot.app
    assert isinstance(app, RunyardApp)
    if not isinstance(app.screen, HostsScreen):
        app.switch_mode("hosts")
        return False
    if [h.state for h in app.hosts] != ["ready", "ready"] or len(app.screen.hosts) != 2:
        return False
    table = app.screen.query_one("#hosts-table", DataTable)
    if table.cursor_row != 1:
        table.move_cursor(row=1)  # gpu-x, whose GPUs fill the lower table
        return False
    # Settled once the GPU table's columns are sized to what they hold (DataTable does that when
    # idle: on a busy machine the screenshot could catch the columns at their headers' width).
    gpus = app.screen.query_one("#gpu-table", DataTable)
    return gpus.row_count == 2 and gpus.columns[ColumnKey("model")].get_render_width(gpus) > len("NVIDIA H100")


def on_detail(tab: str, ready: Callable[[DetailScreen], bool], compare: list[int] | None = None,
              execution_id: int = 1) -> Callable[[Pilot[None]], bool]:
    def check(pilot: Pilot[None]) -> bool:
        app = pilot.app
        assert isinstance(app, RunyardApp)
        if not queue_loaded(pilot):
            return False
        if not isinstance(app.screen, DetailScreen):
            app.open_execution(execution_id, tab=tab, compare=compare)
            return False
        return ready(app.screen)

    return check


def logs_ended(screen: DetailScreen) -> bool:
    return screen.query_one(LogView).ended


def charted(screen: DetailScreen) -> bool:
    pane = screen.query_one(MetadataPane)
    return len(pane.points.get(2, [])) == 8 and bool(pane.keys)


def info_shown(screen: DetailScreen) -> bool:
    return "Outputs" in str(screen.query_one("#info-text", Static).render())


def code_shown(screen: DetailScreen) -> bool:
    if screen.shown_file is not None:
        return True
    tree = screen.query_one("#code-tree", Tree)
    leaf = next((n for n in tree.root.children if n.data == "train.py"), None)
    if leaf is not None:
        tree.select_node(leaf)  # as Enter on it does
    return False


def with_keys(ready: Callable[[Pilot[None]], bool], keys: list[str],
              then: Callable[[Pilot[None]], bool]) -> Callable[[Pilot[None]], Any]:
    """Wait for ``ready``, press ``keys`` as a user would, then wait for ``then``."""
    async def run_before(pilot: Pilot[None]) -> None:
        await until(ready)(pilot)
        await pilot.press(*keys)
        await until(then)(pilot)

    return run_before


def is_screen(kind: type[object]) -> Callable[[Pilot[None]], bool]:
    return lambda pilot: isinstance(pilot.app.screen, kind)


# Every screen, as a person first sees it, at the smallest size the README promises and a large one.
SCREENS: dict[str, Callable[[Pilot[None]], Any]] = {
    "queue": until(on_queue),
    "hosts": until(on_hosts),
    "logs": until(on_detail("logs", logs_ended)),
    "metadata": until(on_detail("metadata", charted, compare=[1, 2])),
    "info": until(on_detail("info", info_shown)),
    "code": until(on_detail("code", code_shown)),
    "queue_help": with_keys(on_queue, ["question_mark"], is_screen(HelpScreen)),
    "logs_help": with_keys(on_detail("logs", logs_ended), ["question_mark"], is_screen(HelpScreen)),
    "stop_dialog": with_keys(on_queue, ["s"], is_screen(ConfirmScreen)),
    "command_line": with_keys(on_queue, ["colon", *"sort loss desc"], is_screen(PromptScreen)),
}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(SCREENS))
def test_screen(screens: Daemon, snap_compare: Any, name: str, size: tuple[int, int]) -> None:
    assert snap_compare(app_for(screens), terminal_size=size, run_before=SCREENS[name])


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_daemon_unreachable(screens: Daemon, snap_compare: Any, size: tuple[int, int],
                            monkeypatch: pytest.MonkeyPatch) -> None:
    # One failed try and no second one while the screenshot is taken: the retry count is pinned.
    monkeypatch.setattr("runyard.tui.link.BACKOFF_FIRST", 600.0)
    app = app_for(screens, socket="nowhere.sock")

    def refused(pilot: Pilot[None]) -> bool:
        return app.link.attempt == 1

    assert snap_compare(app, terminal_size=size, run_before=until(refused))


# -- at 80x24, as a new user meets it (issue 16) ------------------------------------------------

NARROW = (80, 24)
TEXTUAL_GENERIC = ("Cursor left", "Page Left", "Copy selected text", "Focus Next", "Scroll Left")
# Keys Textual gives every app and screen (focus next, quit, copy): not the screen's own
TEXTUAL_APP_WIDE = {(key.strip(), b.action) for b in [*App.BINDINGS, *Screen.BINDINGS]
                    if isinstance(b, Binding) for key in b.key.split(",")}


async def settle(pilot: Pilot[None], check: Callable[[Pilot[None]], bool]) -> None:
    await until(check)(pilot)


def help_lines(app: RunyardApp) -> str:
    return str(app.screen.query_one("#keys-table", Static).render())


async def test_help_lists_every_key_first_the_screens_own_and_scrolls(screens: Daemon) -> None:
    app = app_for(screens)
    async with app.run_test(size=NARROW) as pilot:
        places: list[tuple[str, Callable[[Pilot[None]], bool], list[str]]] = [
            ("Queue", on_queue, []), ("Hosts", on_hosts, []), ("Logs", on_detail("logs", logs_ended), []),
            ("Metadata", on_detail("metadata", charted, compare=[1, 2]), []),
            ("Execution #1", on_detail("info", info_shown), []),
            ("code", on_detail("code", code_shown), []),  # the focused pane's keys first
            ("files", on_detail("code", code_shown), ["f"]),  # the file tree focused
        ]
        for first_section, ready, keys in places:
            if isinstance(app.screen, DetailScreen):
                await pilot.press("q")
            await settle(pilot, ready)
            await pilot.press(*keys)
            origin = app.screen
            # every key the screen answers, Enter and PgUp/PgDn included, but Textual's app-wide ones
            wanted = {app.get_key_display(a.binding) for a in origin.active_bindings.values()
                      if (a.binding.key, a.binding.action) not in TEXTUAL_APP_WIDE}
            await pilot.press("question_mark")
            await settle(pilot, is_screen(HelpScreen))
            text = help_lines(app)
            assert text.splitlines()[0] == first_section
            listed = {key for line in text.splitlines() if "  " in line.strip()
                      for key in line.strip().split("  ")[0].split()}
            assert wanted - listed == set(), (origin, app.focused)
            assert not [g for g in TEXTUAL_GENERIC if g in text]
            # the list is longer than the dialog at 80x24; End shows its last key and the closing line
            await pilot.press("end")
            await pilot.pause()
            scroll = app.screen.query_one("#help-scroll")
            assert scroll.max_scroll_y > 0 and scroll.scroll_y == scroll.max_scroll_y
            shown = "\n".join(screen_lines(app))
            assert text.splitlines()[-1].strip() in shown and "close" in shown
            await pilot.press("q")
            await settle(pilot, lambda p, origin=origin: p.app.screen is origin)  # type: ignore[misc]


async def test_footers_end_with_help_and_keep_quit_and_command(screens: Daemon) -> None:
    app = app_for(screens)
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot, on_queue)
        footer = screen_lines(app)[-1].rstrip()
        assert footer.endswith("? help") and "q quit" in footer and ": command" in footer, footer
        await settle(pilot, on_detail("logs", logs_ended))
        footer = screen_lines(app)[-1].rstrip()
        assert footer.endswith("? help") and "q back" in footer and "/ search" in footer, footer
        await pilot.press("2")
        await settle(pilot, lambda p: bool(app.screen.query_one(MetadataPane).keys))
        footer = screen_lines(app)[-1].rstrip()
        assert footer.endswith("? help") and "x x axis" in footer, footer


async def test_chosen_metadata_columns_stay_on_screen(screens: Daemon) -> None:
    app = app_for(screens)  # loss and acc chosen
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot, on_queue)
        header = screen_lines(app)[0]
        assert "loss" in header.split() and "acc" in header.split() and "DURATION" in header.split(), header
        assert "▁" not in "".join(screen_lines(app)) and "more columns" not in screen_lines(app)[-2]
        queue = app.screen
        assert isinstance(queue, QueueScreen) and queue.hidden_columns
        # more than fits: the table scrolls sideways, and the status bar says so
        app.metadata_columns = ["loss", "acc", "step", "a-long-metadata-key", "another-long-key"]  # step: a name
        # that is also a column's
        queue.rebuild()
        await pilot.pause()
        assert "more columns →" in screen_lines(app)[-2]
        await pilot.press("l", "l", "l", "l", "l", "l")
        await settle(pilot, lambda p: "another-long-key" in screen_lines(app)[0])
    # a long owner name gives way too, before any chosen column
    from runyard.tui.queue import fit_columns

    names = [*BASE_COLUMNS, "loss", "acc"]
    row = ["4", "held", "hold", "stopped", "local", "", "a-rather-long-owner-name", "56m00s", "2m30s", "0.1", "0.5"]
    shown = [names[i] for i in fit_columns(names, [n.upper() for n in names], [row], 80)[0]]
    assert {"loss", "acc"} <= set(shown) and "owner" not in shown


async def test_status_bar_keeps_the_connection_and_the_whole_refusal(screens: Daemon) -> None:
    app = app_for(screens)
    async with app.run_test(size=NARROW, notifications=True) as pilot:
        await settle(pilot, on_queue)
        queue = app.screen
        assert isinstance(queue, QueueScreen)
        queue.set_filter("status:complete step:train words that make this filter long")
        await pilot.pause()
        status = screen_lines(app)[-2]
        assert status.rstrip().endswith("connected") and "…" in status, status
        app.notify("a toast that must not cover the status bar")
        await settle(pilot, lambda p: bool(app.screen.query(Toast)))
        toast = app.screen.query_one(Toast)
        bar = app.screen.query_one("#status")
        assert toast.region.bottom <= bar.region.y, (toast.region, bar.region)
    lost = app_for(screens, socket="nowhere.sock")
    async with lost.run_test(size=NARROW) as pilot:
        await settle(pilot, lambda p: lost.link.attempt >= 1)
        shown = " ".join(line.strip() for line in screen_lines(lost))
        assert "Is `runyard daemon` running? (set --socket or RUNYARD_SOCKET)" in shown, shown
        assert "older: scroll down" not in shown and "0 shown" not in shown


async def test_command_line_navigation_replaces_instead_of_stacking(screens: Daemon) -> None:
    app = app_for(screens)
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot, on_queue)
        for command in ("1", "2", "3"):
            await pilot.press("colon", *command, "enter")
            await settle(pilot, lambda p, c=command: isinstance(app.screen, DetailScreen)  # type: ignore[misc]
                         and app.screen.execution_id == int(c))
        await pilot.press("colon", *"queue", "enter")
        await settle(pilot, is_screen(QueueScreen))
        assert len(app.screen_stack) == 1
        await pilot.press("colon", *"4", "enter", "colon", *"2", "enter")
        await settle(pilot, lambda p: isinstance(app.screen, DetailScreen) and app.screen.execution_id == 2)
        await pilot.press("q")  # one q back, however many executions were opened by :
        await settle(pilot, is_screen(QueueScreen))
        assert len(app.screen_stack) == 1


async def test_code_tab_header_tree_keys_and_long_lines(screens: Daemon) -> None:
    app = app_for(screens)
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot, on_detail("code", lambda s: len(s.query_one("#code-tree", Tree).root.children) >= 2))
        tree = app.screen.query_one("#code-tree", Tree)
        assert tree.has_focus
        line = next(t for t in screen_lines(app) if "snapshot" in t)
        assert "choose a file" not in line and "commit c0ffeec0ff" in line, line
        start = tree.cursor_line
        await pilot.press("j", "j")
        assert tree.cursor_line == start + 2
        await pilot.press("k")
        assert tree.cursor_line == start + 1
        await settle(pilot, lambda p: code_shown(app.screen))  # type: ignore[arg-type]
        code = app.screen.query_one("#code-view")
        await settle(pilot, lambda p: code.has_focus and code.max_scroll_x > 0)  # train.py is wider than the pane
        await pilot.press("l", "l", "l")
        await pilot.pause()
        assert code.scroll_x > 0
        await pilot.press("f")
        assert tree.has_focus


async def test_info_shows_resources_in_words(screens: Daemon) -> None:
    app = app_for(screens)
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot, on_detail("info", info_shown))
        text = str(app.screen.query_one("#info-text", Static).render())
        line = next(t for t in text.splitlines() if t.startswith("resources"))
        assert "{" not in line and "'" not in line and "no GPUs" in line, line


async def test_chart_legend_beside_whole_ticks_and_a_mark_per_series(screens: Daemon) -> None:
    app = app_for(screens)
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot, on_detail("metadata", charted, compare=[1, 2]))
        pane = app.screen.query_one(MetadataPane)
        legend = str(pane.query_one("#chart-info", Static).render())
        marks = [legend.split(f" #{i} {key}")[0][-1] for i in (1, 2) for key in ("loss", "acc")]
        assert len(set(marks)) == 4, legend  # four series, four marks
        chart = "\n".join(screen_lines(app)[4:18])
        assert "#1 loss" not in chart  # the legend is not drawn over the lines
        ticks = next(t for t in screen_lines(app) if " 0 " in t and "35" in t)
        assert "." not in ticks, ticks  # steps are whole numbers
        assert "x axis" in screen_lines(app)[-1] and "_time" not in screen_lines(app)[-1]


async def test_logs_fill_the_pane_after_a_resize(screens: Daemon) -> None:
    app = app_for(screens)
    async with app.run_test(size=NARROW) as pilot:
        # opened on another tab: the log is read while its pane has no height yet
        await settle(pilot, on_detail("metadata", lambda s: s.query_one(LogView).ended))
        view = app.screen.query_one(LogView)
        for size, keys in (((200, 50), ["1"]), ((80, 24), []), ((80, 6), []), ((200, 50), ["3", "1"]),
                           ((200, 50), []), ((80, 24), ["2"]), ((200, 50), ["1"])):
            await pilot.resize_terminal(*size)
            await pilot.press(*keys)
            await pilot.pause()
            if not view.display or not view.size.height:
                continue
            shown = str(view.render()).splitlines()
            assert len(shown) == min(view.count, view.size.height), (size, keys, shown)
            assert shown[-1] == "line 39"


async def test_live_updates_keep_the_queues_sideways_position_and_cursor(screens: Daemon) -> None:
    app = app_for(screens)
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot, on_queue)
        await pilot.press("colon", *"cols training_loss_cross_entropy,validation_accuracy_top1,"
                          "learning_rate_schedule_value", "enter")
        await settle(pilot, lambda p: "more columns →" in screen_lines(app)[-2])
        await pilot.press("l", "l", "j", "j")
        await pilot.pause()
        table = app.screen.query_one("#queue-table", DataTable)
        scrolled, header, row = table.scroll_x, screen_lines(app)[0], table.cursor_row
        assert scrolled > 0 and header.split()[0] != "ID", header
        for _ in range(3):  # what each change of an execution does, as its events arrive
            app.cache.dirty |= set(app.cache.views)
            await app._flush_events()
            await pilot.pause()
            assert (table.scroll_x, screen_lines(app)[0], table.cursor_row) == (scrolled, header, row)


def runyard_keys(screen: Any) -> dict[str, set[str]]:
    """Every runyard binding (one with an id) that a key reaches on ``screen`` as focused now: the
    focused widget's, its panes', the screen's and the app's, shadowed or not."""
    keys: dict[str, set[str]] = {}
    for _node, bindings in screen._modal_binding_chain:  # what Textual dispatches a key through
        for key, binding in bindings:
            if binding.id:
                keys.setdefault(key, set()).add(binding.id)
    return keys


async def test_one_key_one_meaning_on_every_screen_and_n_without_a_search(screens: Daemon) -> None:
    app = app_for(screens)
    async with app.run_test(size=NARROW, notifications=True) as pilot:
        places: list[tuple[Callable[[Pilot[None]], bool], list[str]]] = [
            (on_queue, []), (on_hosts, ["tab"]), (on_detail("logs", logs_ended), []),
            (on_detail("metadata", charted, compare=[1, 2]), []), (on_detail("info", info_shown), []),
            (on_detail("code", code_shown), ["f"]),
        ]
        for ready, other_focus in places:
            if isinstance(app.screen, DetailScreen):
                await pilot.press("q")
            await settle(pilot, ready)
            for key in ["", *other_focus]:  # and with the screen's other pane focused
                if key:
                    await pilot.press(key)
                    await pilot.pause()
                shared = {k: ids for k, ids in runyard_keys(app.screen).items() if len(ids) > 1}
                assert shared == {}, (app.screen, app.focused)
        # n and N on the Logs tab with no search say so; rename on an execution is R
        await pilot.press("q")
        await settle(pilot, on_detail("logs", logs_ended))
        await pilot.press("n")
        await settle(pilot, lambda p: any("no search: / to search" in str(t.render()) for t in app.screen.query(Toast)))
        assert isinstance(app.screen, DetailScreen)
        await pilot.press("R")
        await settle(pilot, is_screen(PromptScreen))
        await pilot.press("escape")
        await settle(pilot, is_screen(DetailScreen))


async def test_dialog_text_wraps_whole_at_80_columns(screens: Daemon) -> None:
    app = app_for(screens)
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot, on_hosts)
        await pilot.press("d")
        await settle(pilot, is_screen(ConfirmScreen))
        shown = " ".join(line.strip(" █▀▄") .strip() for line in screen_lines(app))
        assert "Drain host gpu-x? Running executions finish; nothing new starts there." in shown, shown
        await pilot.press("n")
        await settle(pilot, is_screen(HostsScreen))
    # a long list of known keys is cut after a few, saying how many more
    from runyard.tui.dialogs import some_of

    assert some_of([f"key_{i}" for i in range(20)], 3) == "key_0, key_1, key_2 … and 17 more"


async def test_a_long_title_gives_way_in_the_execution_header(screens: Daemon) -> None:
    long = "a rather long title for the narrow-screen test of metadata columns metrics"
    async with await Client.connect(screens.socket) as client:
        await client.rename(1, long)
        try:
            app = app_for(screens)
            async with app.run_test(size=NARROW) as pilot:
                await settle(pilot, on_detail("logs", lambda s: long[:20] in screen_lines(app)[0]))
                header = screen_lines(app)[0]
                assert "…" in header and "complete · local · 2m30s" in header, header
                await pilot.resize_terminal(200, 50)
                await settle(pilot, lambda p: long in screen_lines(app)[0])
        finally:
            await client.rename(1, "baseline")


async def test_sort_skips_hidden_columns_and_rename_edits_the_old_title(screens: Daemon) -> None:
    app = app_for(screens)
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot, on_queue)
        queue = app.screen
        assert isinstance(queue, QueueScreen) and queue.hidden_columns
        sorted_by = []
        for _ in range(len(BASE_COLUMNS) + 3):
            await pilot.press("o")
            await pilot.pause()
            if queue.sort_column is None:
                break
            sorted_by.append(queue.sort_column)
            label = queue.sort_column.upper() if queue.sort_column in BASE_COLUMNS else queue.sort_column
            assert f"{label} ▲" in screen_lines(app)[0], screen_lines(app)[0]
        assert sorted_by and not set(sorted_by) & set(queue.hidden_columns), (sorted_by, queue.hidden_columns)
        # the rename box starts with the cursor after the old title, nothing selected
        queue.table.move_cursor(row=queue.table.get_row_index("4"))
        await pilot.press("n")
        await settle(pilot, is_screen(PromptScreen))
        await pilot.press("X", "enter")
        try:
            await settle(pilot, lambda p: app.cache.views[4].title == "heldX")
        finally:
            async with await Client.connect(screens.socket) as client:
                await client.rename(4, "held")


async def test_toasts_leave_the_log_position_and_dialogs_readable(screens: Daemon) -> None:
    app = app_for(screens)
    async with app.run_test(size=NARROW, notifications=True) as pilot:
        await settle(pilot, on_detail("logs", logs_ended))
        view = app.screen.query_one(LogView)
        view.search_text = "a search long enough that the position line cannot hold all of it at 80 columns"
        view._status()
        await pilot.pause()
        line = next(t for t in screen_lines(app) if "lines " in t and " of " in t)
        assert line.rstrip().endswith("…"), line
        app.notify("a toast that must not cover the log's position line")
        await settle(pilot, lambda p: bool(app.screen.query(Toast)))
        toast, where = app.screen.query_one(Toast), app.screen.query_one("#log-status")
        assert toast.region.bottom <= where.region.y, (toast.region, where.region)
        await pilot.press("s")
        await settle(pilot, is_screen(ConfirmScreen))
        await pilot.pause()
        # none over a dialog: a long list of targets reaches where toasts are
        assert [t.region for t in app.screen.query(Toast) if t.region.area] == []
        await pilot.press("n")


async def test_the_file_tree_leaves_the_code_most_of_80_columns(screens: Daemon) -> None:
    app = app_for(screens)
    async with app.run_test(size=NARROW) as pilot:
        await settle(pilot, on_detail("code", code_shown))
        tree, code = app.screen.query_one("#code-tree"), app.screen.query_one("#code-view")
        assert tree.region.width <= 24 and code.region.width >= 56, (tree.region, code.region)
