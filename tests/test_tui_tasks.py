"""Tasks in the TUI, against a real daemon and a real task: one queue row per task with its progress
and best loss, its children on their own screen ranked by loss with their parameters as columns,
marked children charted together, `task:N` in the filter, and a whole-task action asked first.
Screenshots at 80x24 and 200x50 (reviewed SVGs in __snapshots__, as tests/test_tui_snapshots.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import sqlite3
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runyard.protocol import Client
from runyard.tui.app import RunyardApp
from runyard.tui.detail import DetailScreen
from runyard.tui.dialogs import ConfirmScreen
from runyard.tui.queue import QueueScreen
from runyard.tui.tasks import TaskScreen

from .conftest import Daemon, make_repo, run_cli, submit_repo, wait_for_status
from .test_tasks import STEPS, TRAIN
from .test_tui_snapshots import SIZES, clock, screen_lines, until, with_keys

pytestmark = pytest.mark.slow


def _pin(database: Path) -> None:
    db = sqlite3.connect(database)
    for i in range(1, 6):
        db.execute("UPDATE executions SET created_at = ?, started_at = ?, ended_at = ?, owner = 'ann' WHERE id = ?",
                   (f"2026-11-21T11:0{i}:00.000000Z", f"2026-11-21T11:0{i}:05.000000Z",
                    f"2026-11-21T11:0{i}:35.000000Z", i))
    db.execute("UPDATE tasks SET created_at = '2026-11-21T11:02:00.000000Z', "
               "ended_at = '2026-11-21T11:05:35.000000Z', owner = 'ann'")
    db.commit()
    db.close()


@pytest.fixture(scope="module")
def tasks_daemon(docker_engine: None) -> Iterator[Daemon]:
    root = Path(tempfile.mkdtemp(prefix="ry-tui-tasks-"))
    cwd = os.getcwd()
    daemon = Daemon(root=root, stop_grace=1, local_extra='runtime = "process"\n')
    repo = make_repo(root / "repo", {"valohai.yaml": STEPS, "train.py": TRAIN})

    async def make() -> None:
        async with await Client.connect(daemon.socket) as client:
            plain = await submit_repo(client, repo, "train", title="baseline", parameters={})
            await wait_for_status(client, plain.id)
        made = run_cli(daemon, "task", "run", "train", "--grid", "lr=0.5,0.25", "--grid", "x=3,4",
                       "--title", "lr sweep", "--target-metric", "loss", "--watch", "--json", cwd=repo)
        assert made.returncode == 0, made.stderr

    try:
        daemon.start()
        asyncio.run(make())
        daemon.terminate()
        _pin(daemon.data_dir / "runyard.sqlite3")
        daemon.start()
        os.chdir(root)
        yield daemon
    finally:
        os.chdir(cwd)
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
        shutil.rmtree(root, ignore_errors=True)


def app_for(daemon: Daemon) -> RunyardApp:
    return RunyardApp(Path(daemon.socket).name, clock=clock, metadata_columns=["loss"])


def task_row_shown(pilot: Any) -> bool:
    app = pilot.app
    return (isinstance(app.screen, QueueScreen) and app.loaded.is_set() and 1 in app.tasks
            and app.screen.table.row_count == 2 and app.tasks[1].status == "complete")


def children_shown(pilot: Any) -> bool:
    return isinstance(pilot.app.screen, TaskScreen) and pilot.app.screen.query_one("#task-table").row_count == 4


SCREENS = {
    "task_queue": until(task_row_shown),
    "task_children": with_keys(task_row_shown, ["enter"], children_shown),
    "task_delete_dialog": with_keys(task_row_shown, ["ctrl+d"], lambda p: isinstance(p.app.screen, ConfirmScreen)),
}


@pytest.mark.parametrize("size", SIZES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", list(SCREENS))
def test_task_screen(tasks_daemon: Daemon, snap_compare: Any, name: str, size: tuple[int, int]) -> None:
    assert snap_compare(app_for(tasks_daemon), terminal_size=size, run_before=SCREENS[name])


async def test_a_task_ranks_by_its_own_target_metric_and_an_ended_task_is_not_stopped(tasks_daemon: Daemon) -> None:
    # No metadata column chosen: the task's --target-metric alone ranks it and names its best.
    app = RunyardApp(Path(tasks_daemon.socket).name, clock=clock, metadata_columns=[])
    async with app.run_test(size=(120, 30), notifications=True) as pilot:
        await until(task_row_shown)(pilot)
        assert "lr sweep · best loss 0.75 (#4)" in "\n".join(screen_lines(app))
        await pilot.press("s")  # on the ended task's row: nothing to stop, and no dialog offering to
        await until(lambda p: any("already ended" in n.message for n in p.app._notifications))(pilot)
        assert "task 1 has already ended (complete): nothing to stop" in [n.message for n in app._notifications]
        assert isinstance(app.screen, QueueScreen)
        await pilot.press("enter")
        await until(children_shown)(pilot)
        assert "sorted by loss" in "\n".join(screen_lines(app))
        table = app.screen.query_one("#task-table")
        assert [str(table.get_row_at(r)[0]).strip() for r in range(4)] == ["4", "5", "2", "3"]


async def test_a_task_is_one_row_its_children_rank_by_loss_and_it_is_deleted_whole(tasks_daemon: Daemon) -> None:
    app = app_for(tasks_daemon)
    async with app.run_test(size=(120, 30)) as pilot:
        await until(task_row_shown)(pilot)
        lines = "\n".join(screen_lines(app))
        assert "▸T1" in lines and "lr sweep · best loss 0.75 (#4)" in lines and "complete 4/4" in lines, lines
        queue = app.screen
        assert isinstance(queue, QueueScreen)
        queue.set_filter("task:1")  # the filter opens the task in the queue: its children, one row each
        await pilot.pause(0.1)
        assert queue.table.row_count == 4 and "▸T1" not in "\n".join(screen_lines(app))
        queue.set_filter("")
        await until(task_row_shown)(pilot)

        await pilot.press("enter")
        await until(children_shown)(pilot)
        screen = app.screen
        assert isinstance(screen, TaskScreen)
        table = screen.query_one("#task-table")
        header = [str(c.label) for c in table.columns.values()]
        assert header == ["ID", "STATUS", "lr", "x", "loss"], header
        ranked = [[str(c) for c in table.get_row_at(r)] for r in range(table.row_count)]
        assert [r[2:] for r in ranked] == [["0.25", "3", "0.75"], ["0.25", "4", "1"],
                                           ["0.5", "3", "1.5"], ["0.5", "4", "2"]], ranked
        await pilot.press("space", "space", "m")  # the two best, charted together
        await until(lambda p: isinstance(p.app.screen, DetailScreen))(pilot)
        assert app.screen.compare == [4, 5]  # type: ignore[attr-defined]
        await pilot.press("q")
        await until(children_shown)(pilot)
        await pilot.press("q")
        await until(task_row_shown)(pilot)

        await pilot.press("ctrl+d")  # on the task's row: the whole task, named with its children
        await until(lambda p: isinstance(p.app.screen, ConfirmScreen))(pilot)
        asked = "\n".join(screen_lines(app))
        assert "Delete task 1 and its 4 children?" in asked and "task 1 lr sweep (complete), 4 children" in asked
        await pilot.press("y")
        await until(lambda p: 1 not in p.app.tasks and p.app.screen.table.row_count == 1)(pilot)
    listed = run_cli(tasks_daemon, "task", "list", "--json")
    assert json.loads(listed.stdout) == []
