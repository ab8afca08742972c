"""Screenshots of the main screens at 80x24 and 160x48, compared with reviewed SVGs in __snapshots__.

The daemon is real and so are its executions; afterwards their times, owner and
snapshot ids are pinned in its SQLite file (with the daemon stopped), and the app's
clock is pinned, so the screens are the same on every machine and every run.
Update after reviewing a change: `pytest tests/test_tui_snapshots.py --snapshot-update`.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from textual.pilot import Pilot
from textual.widgets import DataTable

from runyard.protocol import Client
from runyard.tui.app import RunyardApp
from runyard.tui.detail import DetailScreen
from runyard.tui.hosts import HostsScreen
from runyard.tui.logview import LogView

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
            "UPDATE executions SET created_at = ?, started_at = ?, ended_at = ?, owner = 'ann', host = 'local',"
            " snapshot = ?, commit_ref = ? WHERE id = ?",
            (f"2026-11-21T11:0{i}:00.000000Z", f"2026-11-21T11:0{i}:05.000000Z",
             f"2026-11-21T11:{i + 2:02d}:35.000000Z", f"{i}" * 64, "c0ffee" * 6 + "c0ff", i),
        )
    db.commit()
    db.close()


@pytest.fixture(scope="module")
def screens(docker_engine: None) -> Iterator[Daemon]:
    # A fixed root: the status bar names the daemon's socket, and the screenshots must not vary.
    root = Path("/tmp/ry-snapshots")
    shutil.rmtree(root, ignore_errors=True)
    root.mkdir()
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
        yield daemon
    finally:
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
            raise AssertionError("the screen never settled")
        await pilot.pause(0.2)

    return run_before


def queue_loaded(pilot: Pilot[None]) -> bool:
    app = pilot.app
    assert isinstance(app, RunyardApp)
    return app.loaded.is_set() and len(app.cache.views) == 4


def app_for(daemon: Daemon) -> RunyardApp:
    return RunyardApp(daemon.socket, clock=clock, metadata_columns=["loss"])


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_queue(screens: Daemon, snap_compare: Any, size: tuple[int, int]) -> None:
    assert snap_compare(app_for(screens), terminal_size=size, run_before=until(queue_loaded))


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_hosts(screens: Daemon, snap_compare: Any, size: tuple[int, int]) -> None:
    def ready(pilot: Pilot[None]) -> bool:
        app = pilot.app
        assert isinstance(app, RunyardApp)
        if not isinstance(app.screen, HostsScreen):
            app.switch_mode("hosts")
            return False
        if [h.state for h in app.hosts] != ["ready", "ready"] or len(app.screen.hosts) != 2:
            return False
        table = app.screen.query_one("#hosts-table", DataTable)
        table.move_cursor(row=1)  # gpu-x, whose GPUs fill the lower table
        return True

    assert snap_compare(app_for(screens), terminal_size=size, run_before=until(ready))


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_logs(screens: Daemon, snap_compare: Any, size: tuple[int, int]) -> None:
    def opened(pilot: Pilot[None]) -> bool:
        app = pilot.app
        assert isinstance(app, RunyardApp)
        if not queue_loaded(pilot):
            return False
        if not isinstance(app.screen, DetailScreen):
            app.open_execution(1)
            return False
        return app.screen.query_one(LogView).ended

    assert snap_compare(app_for(screens), terminal_size=size, run_before=until(opened))


@pytest.mark.parametrize("size", [(80, 24), (160, 48)])
def test_metadata(screens: Daemon, snap_compare: Any, size: tuple[int, int]) -> None:
    def charted(pilot: Pilot[None]) -> bool:
        app = pilot.app
        assert isinstance(app, RunyardApp)
        if not queue_loaded(pilot):
            return False
        if not isinstance(app.screen, DetailScreen):
            app.open_execution(1, tab="metadata", compare=[1, 2])
            return False
        from runyard.tui.chart import MetadataPane

        pane = app.screen.query_one(MetadataPane)
        return len(pane.points.get(2, [])) == 8 and bool(pane.keys)

    assert snap_compare(app_for(screens), terminal_size=size, run_before=until(charted))
