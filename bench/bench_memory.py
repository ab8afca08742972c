"""Memory and first paint with a big store (issue 17).

1. The daemon's resident memory with 100,000 executions stored, 1,000 of them active, against
   the same daemon with 100 stored and 10 active, in the same run. Then the same with
   1,000,000 stored.
2. The TUI's first paint with 1,000,000 executions stored, against a store of 10 (bench_tui.py's
   method: Textual's headless run_test in this process, a real daemon process).

The store is filled as bench_tui.py does: one real finished execution's row copied straight into
SQLite (the daemon stopped). The active ones are real: one execution holding the only slot (a
`sleep`, plain-process runtime), reattached on restart, and queued copies behind it that the
daemon loads and keeps in its scheduler's queue. RSS is VmRSS from /proc once the daemon serves
and has answered a `list` and a `hosts` (every lazy structure it builds for a client is built).

Targets: daemon < 150 MB RSS at 100,000 stored / 1,000 active; TUI first paint < 1 s at 1,000,000.

Run: .venv/bin/python bench/bench_memory.py [--quick]   (quick: 100,000 stored for the TUI too)
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_queue import QuietDaemon  # noqa: E402
from bench.bench_tui import painted  # noqa: E402
from bench.common import save  # noqa: E402
from runyard.protocol import Client  # noqa: E402
from tests.conftest import Daemon, make_repo, step_yaml, submit_repo  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def seed(daemon: Daemon, ended: int, queued: int) -> None:
    """``ended`` copies of the first (finished) execution and ``queued`` queued copies, straight into SQLite."""
    db = sqlite3.connect(daemon.data_dir / "runyard.sqlite3")
    columns = [r[1] for r in db.execute("PRAGMA table_info(executions)") if r[1] != "id"]
    template = db.execute(f"SELECT {', '.join(columns)} FROM executions ORDER BY id LIMIT 1").fetchone()
    marks = ", ".join("?" * len(columns))
    have = db.execute("SELECT COUNT(*) FROM executions").fetchone()[0]
    db.executemany(f"INSERT INTO executions ({', '.join(columns)}) VALUES ({marks})",
                   (template for _ in range(max(0, ended - have))))
    waiting = dict(zip(columns, template, strict=True))
    waiting.update(status="queued", reason=None, host=None, started_at=None, ended_at=None, exit_code=None,
                   container_id=None, gpu_ids="[]")
    db.executemany(f"INSERT INTO executions ({', '.join(columns)}) VALUES ({marks})",
                   (tuple(waiting[c] for c in columns) for _ in range(queued)))
    db.commit()
    db.close()


async def settled_rss(daemon: Daemon) -> dict[str, Any]:
    assert daemon.process is not None
    async with await Client.connect(daemon.socket) as client:
        await client.list_executions(limit=100)
        await client.hosts()
    return {"rss_mb": round(rss_mb(daemon.process.pid), 1)}


async def first_paint(daemon: Daemon) -> dict[str, Any]:
    async with painted(daemon) as (_, _, seconds, rows):
        pass
    return {"first_paint_s": round(seconds, 3), "rows_loaded": rows}


async def one(root: Path, repo: Path, stored: list[int], queued: int, paint: bool) -> list[dict[str, Any]]:
    """One daemon: a finished template and a slot holder, then the store grown step by step."""
    daemon = QuietDaemon(root=root, max_concurrent=1, local_extra='runtime = "process"\n')
    daemon.root.mkdir()
    out = []
    try:
        daemon.start()
        async with await Client.connect(daemon.socket) as client:
            e = await submit_repo(client, repo, "one")
            async for _ in client.events(since=0):
                if (await client.get(e.id)).status == "complete":
                    break
            holder = await submit_repo(client, repo, "hold")
            async for _ in client.events(since=0):
                if (await client.get(holder.id)).status == "started":
                    break
        daemon.terminate()  # the holder keeps running; reattached on the next start
        have_queued = 0
        for size in stored:
            seed(daemon, size - queued, queued - have_queued)
            have_queued = queued
            t0 = time.perf_counter()
            daemon.start()
            serving = time.perf_counter() - t0
            figures = {"stored": size, "active": queued + 1, "start_to_serving_s": round(serving, 2),
                       **await settled_rss(daemon)}
            if paint:
                figures["tui"] = await first_paint(daemon)
            out.append(figures)
            print(figures, flush=True)
            daemon.terminate()
        daemon.start()
        async with await Client.connect(daemon.socket) as client:
            await client.stop(all=True)
        daemon.terminate()
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
    return out


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="stop at 100,000 stored")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="rym-", dir="/tmp"))
    repo = make_repo(root / "repo", {"valohai.yaml": step_yaml("one", "echo one") + step_yaml("hold", "sleep 100000")})
    try:
        small = await one(root / "small", repo, [100], 9, paint=False)
        small += await one(root / "tiny", repo, [10], 0, paint=True)
        large = await one(root / "large", repo, [100_000] if args.quick else [100_000, 1_000_000], 999, paint=True)
    finally:
        shutil.rmtree(root, ignore_errors=True)
    results = {"small": small, "large": large}
    base, big = small[0], large[0]
    results["daemon_rss_ratio_100k_to_100"] = round(big["rss_mb"] / base["rss_mb"], 2)
    results["tui_first_paint_ratio"] = round(large[-1]["tui"]["first_paint_s"] / small[1]["tui"]["first_paint_s"], 2)
    save("memory", results)
    print(f"\ndaemon RSS: {big['rss_mb']} MB with {big['stored']:,} stored and {big['active']:,} active "
          f"({base['rss_mb']} MB with {base['stored']} stored, {base['active']} active; "
          f"{results['daemon_rss_ratio_100k_to_100']}x); target < 150 MB")
    print(f"TUI first paint with {large[-1]['stored']:,} stored: {large[-1]['tui']['first_paint_s'] * 1000:.0f} ms "
          f"(10 stored: {small[1]['tui']['first_paint_s'] * 1000:.0f} ms, {results['tui_first_paint_ratio']}x); "
          "target < 1 s")


if __name__ == "__main__":
    asyncio.run(main())
