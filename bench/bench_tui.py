"""TUI benchmarks, each against a baseline measured in the same run, against a real daemon.

1. First paint of the queue with 100,000 executions in the store, against a store of 10.
2. Opening the log tab of a 1,000,000-line log, against a 100-line log.
3. With 50 executions printing 1,000 lines/s each and the TUI following one of them:
   how long a key press takes to repaint the log view, against the same with nothing
   running; and the TUI's resident memory.

The app runs headless in this process (Textual's run_test), so "paint" is the
widget's render, not the terminal's; the daemon is a separate process.

Run: .venv/bin/python bench/bench_tui.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from textual.pilot import Pilot  # noqa: E402

from bench.common import save  # noqa: E402
from runyard.protocol import Client  # noqa: E402
from runyard.tui.app import RunyardApp  # noqa: E402
from runyard.tui.detail import DetailScreen  # noqa: E402
from runyard.tui.logview import LogView  # noqa: E402
from tests.conftest import Daemon, make_repo, step_yaml, submit_repo  # noqa: E402

SIZE = (160, 48)


def rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def seed(daemon: Daemon, executions: int, log_lines: int) -> None:
    """Copy one real finished execution ``executions`` times, straight into SQLite (daemon stopped),
    and give the newest a log of ``log_lines`` lines."""
    db = sqlite3.connect(daemon.data_dir / "runyard.sqlite3")
    columns = [r[1] for r in db.execute("PRAGMA table_info(executions)") if r[1] != "id"]
    template = db.execute(f"SELECT {', '.join(columns)} FROM executions ORDER BY id LIMIT 1").fetchone()
    have = db.execute("SELECT COUNT(*) FROM executions").fetchone()[0]
    marks = ", ".join("?" * len(columns))
    db.executemany(f"INSERT INTO executions ({', '.join(columns)}) VALUES ({marks})",
                   (template for _ in range(executions - have)))
    db.commit()
    newest = db.execute("SELECT MAX(id) FROM executions").fetchone()[0]
    db.close()
    logs = daemon.data_dir / "logs"
    logs.mkdir(exist_ok=True)
    with (logs / f"{newest}.log").open("w") as fh:
        block = 10_000
        for first in range(0, log_lines, block):
            fh.write("".join(f"O 2026-11-21T00:00:00.000000000Z line {n} of the big one\n"
                             for n in range(first + 1, min(log_lines, first + block) + 1)))


@contextlib.asynccontextmanager
async def painted(daemon: Daemon) -> AsyncIterator[tuple[RunyardApp, Pilot[None], float, int]]:
    """The TUI against ``daemon`` once its queue is loaded and laid out: the app, its pilot, the
    seconds from creating the app to that first paint, and the queue's rows then."""
    started = time.perf_counter()
    app = RunyardApp(daemon.socket)
    async with app.run_test(size=SIZE) as pilot:
        await app.loaded.wait()
        await pilot.pause()  # the table is built and laid out
        seconds = time.perf_counter() - started
        rows = app.screen.query_one("#queue-table").row_count  # type: ignore[attr-defined]
        yield app, pilot, seconds, rows


async def first_paint_and_log_open(daemon: Daemon, expected_rows: int, log_lines: int) -> dict[str, float]:
    async with painted(daemon) as (app, pilot, painted_s, rows):
        newest = max(app.cache.views)
        opens: list[float] = []
        mounted: asyncio.Queue[LogView] = asyncio.Queue()
        original = LogView.on_mount

        def on_mount(self: LogView) -> None:
            original(self)
            mounted.put_nowait(self)

        LogView.on_mount = on_mount  # type: ignore[method-assign]
        for _ in range(5):
            opened_at = time.perf_counter()
            app.open_execution(newest)
            view = await mounted.get()
            await view.shown.wait()  # the first lines are drawn
            opens.append(time.perf_counter() - opened_at)
            assert view.model.total_lines == log_lines, (view.model.total_lines, log_lines)
            app.pop_screen()
            await pilot.pause()
        LogView.on_mount = original  # type: ignore[method-assign]
    assert rows <= expected_rows
    return {"first_paint_s": painted_s, "rows_loaded": rows, "log_open_s": statistics.median(opens),
            "log_open_max_s": max(opens)}


async def keypress_repaint(daemon: Daemon, follow_id: int, presses: int) -> dict[str, float]:
    app = RunyardApp(daemon.socket)
    drawn: dict[int, asyncio.Event] = {}  # top row wanted -> set when a render shows it
    drawn_at: dict[int, float] = {}
    original = LogView.render

    def timed(self: LogView) -> object:
        out = original(self)
        event = drawn.get(self.top)
        if event is not None and not event.is_set():
            drawn_at[self.top] = time.perf_counter()
            event.set()
        return out

    LogView.render = timed  # type: ignore[method-assign]
    try:
        async with app.run_test(size=SIZE) as pilot:
            await app.loaded.wait()
            app.open_execution(follow_id)
            while not (isinstance(app.screen, DetailScreen) and app.screen.query(LogView)
                       and app.screen.query_one(LogView).model.rows > 200):
                await pilot.pause(0.01)
            view = app.screen.query_one(LogView)
            await pilot.press("g")  # stop following so each key moves a known distance
            delays: list[float] = []
            for i in range(presses):
                key = "j" if i % 2 == 0 else "k"
                want = view.top + (1 if key == "j" else -1)
                drawn[want] = asyncio.Event()
                pressed = time.perf_counter()
                await pilot.press(key)
                await drawn.pop(want).wait()
                delays.append((drawn_at.pop(want) - pressed) * 1000)
            memory = rss_mb()
            followed = view.model.total_lines
    finally:
        LogView.render = original  # type: ignore[method-assign]
    delays.sort()
    return {"p50_ms": statistics.median(delays), "p95_ms": delays[int(len(delays) * 0.95) - 1],
            "max_ms": delays[-1], "rss_mb": memory, "followed_lines": followed}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="10,000 executions, a 100,000-line log, 10 printers")
    args = parser.parse_args()
    many, big, printers = (10_000, 100_000, 10) if args.quick else (100_000, 1_000_000, 50)
    results: dict[str, object] = {"rss_before_app_mb": rss_mb()}
    root = Path(tempfile.mkdtemp(prefix="ryb-", dir="/tmp"))
    repo = make_repo(root / "repo", {
        "valohai.yaml": step_yaml("one", "echo one") + step_yaml("printer", "python3 printer.py"),
        # 1,000 lines a second, in ten bursts of 100
        "printer.py": "import time\nn = 0\nwhile True:\n    t = time.time()\n"
                      "    print('\\n'.join(f'line {n + i} at {t}' for i in range(100)), flush=True)\n"
                      "    n += 100\n    time.sleep(max(0, 0.1 - (time.time() - t)))\n",
    })
    try:
        for name, executions, lines in (("small", 10, 100), ("large", many, big)):
            daemon = Daemon(root=root / name, max_concurrent=printers + 2)
            daemon.root.mkdir()
            daemon.start()
            async with await Client.connect(daemon.socket) as client:
                e = await submit_repo(client, repo, "one")
                async for _ in client.events(since=0):
                    if (await client.get(e.id)).status == "complete":
                        break
            daemon.terminate()
            seed(daemon, executions, lines)
            daemon.start()
            results[name] = await first_paint_and_log_open(daemon, executions, lines)
            if name == "small":
                daemon.terminate()
                continue
            idle = await keypress_repaint(daemon, executions, 100)  # the seeded ids run 1..executions
            async with await Client.connect(daemon.socket) as client:
                running = [(await submit_repo(client, repo, "printer")).id for _ in range(printers)]
                started = 0
                async for _ in client.events(since=0):
                    started = sum([(await client.get(i)).status == "started" for i in running])
                    if started == printers:
                        break
                loaded = await keypress_repaint(daemon, running[0], 100)
                await client.stop(running)
            daemon.terminate()
            daemon.cleanup_containers()
            results["keypress_idle"] = idle
            results["keypress_under_load"] = loaded
            results["printers"] = printers
    finally:
        shutil.rmtree(root, ignore_errors=True)
    small, large = results["small"], results["large"]
    assert isinstance(small, dict) and isinstance(large, dict)
    results["first_paint_ratio"] = large["first_paint_s"] / small["first_paint_s"]
    results["log_open_ratio"] = large["log_open_s"] / small["log_open_s"]
    save("tui", results)
    idle, loaded = results["keypress_idle"], results["keypress_under_load"]
    assert isinstance(idle, dict) and isinstance(loaded, dict)
    print(f"\nfirst paint, {many:,} executions: {large['first_paint_s'] * 1000:.0f} ms "
          f"(10 executions: {small['first_paint_s'] * 1000:.0f} ms, {results['first_paint_ratio']:.2f}x); "
          "target < 1 s")
    print(f"log tab, {big:,} lines: median of 5 {large['log_open_s'] * 1000:.0f} ms, "
          f"max {large['log_open_max_s'] * 1000:.0f} ms (100 lines: "
          f"{small['log_open_s'] * 1000:.0f} ms, {results['log_open_ratio']:.2f}x); target < 0.5 s")
    print(f"key -> repaint with {printers} printers at 1,000 lines/s: p50 {loaded['p50_ms']:.1f} ms, "
          f"p95 {loaded['p95_ms']:.1f} ms, max {loaded['max_ms']:.1f} ms (idle p50 {idle['p50_ms']:.1f} ms); "
          f"target < 100 ms. TUI RSS {loaded['rss_mb']:.0f} MB (target < 200 MB)")


if __name__ == "__main__":
    asyncio.run(main())
