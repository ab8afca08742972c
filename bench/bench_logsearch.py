"""Finding a line near the middle of a 1,000,000-line log, against `grep -n` on the same file.

1. logs.search through the daemon's socket: the one request that finds the match.
2. The TUI (headless, Textual's run_test, in this process): Enter pressed on the / prompt →
   the match drawn, with the lines around it loaded from the skipped middle of the log.
Baseline: `grep -n -m1 PATTERN FILE` on the log file itself, in the same run.

The daemon is a real process (process runtime); the log is written straight into its data
directory, in its record format, after a tiny execution finished.

Run: .venv/bin/python bench/bench_logsearch.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import save  # noqa: E402
from runyard.protocol import Client  # noqa: E402
from runyard.tui.app import RunyardApp  # noqa: E402
from runyard.tui.detail import DetailScreen  # noqa: E402
from runyard.tui.dialogs import PromptScreen  # noqa: E402
from runyard.tui.logview import LogView  # noqa: E402
from tests.conftest import Daemon, make_repo, step_yaml, submit_repo, wait_for_status  # noqa: E402

ROUNDS = 7


def write_log(path: Path, lines: int, needle: int) -> None:
    fresh = path.with_name("new.tmp")
    with fresh.open("w") as fh:
        for first in range(1, lines + 1, 10_000):
            fh.write("".join(
                f"O 2026-11-21T00:00:00.000000000Z line {n} of the big one{' needle' if n == needle else ''}\n"
                for n in range(first, min(lines, first + 9_999) + 1)))
    os.replace(fresh, path)


async def until(check: object, pause: object, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    while not check():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise TimeoutError
        await pause()  # type: ignore[operator]


async def tui_round(socket: str, execution: int, needle: int) -> float:
    """Open the log, type the search; seconds from Enter to the match on screen."""
    app = RunyardApp(socket)
    async with app.run_test(size=(160, 48)) as pilot:
        await app.loaded.wait()
        await pilot.press("colon", *str(execution), "enter")
        await until(lambda: isinstance(app.screen, DetailScreen), pilot.pause)
        view = app.screen.query_one(LogView)
        await asyncio.wait_for(view.shown.wait(), 30)
        await pilot.press("slash")
        await until(lambda: isinstance(app.screen, PromptScreen), pilot.pause)
        await pilot.press(*"needle")
        target = f"line {needle} of the big one needle"
        t = time.perf_counter()
        await pilot.press("enter")
        await until(lambda: target in str(view.render()), lambda: pilot.pause(0.005))
        return time.perf_counter() - t


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a 100,000-line log")
    args = parser.parse_args()
    lines = 100_000 if args.quick else 1_000_000
    needle = lines // 2 + 1
    root = Path(tempfile.mkdtemp(prefix="ryb-", dir="/tmp"))
    daemon = Daemon(root=root, local_extra='runtime = "process"\n')
    results: dict[str, object] = {"lines": lines}
    try:
        daemon.start()
        repo = make_repo(root / "repo", {"valohai.yaml": step_yaml("tiny", "echo hi")})
        async with await Client.connect(daemon.socket, client_name="bench") as client:
            e = await submit_repo(client, repo, "tiny")
            await wait_for_status(client, e.id)
            log = daemon.data_dir / "logs" / f"{e.id}.log"
            write_log(log, lines, needle)
            results["log_bytes"] = log.stat().st_size
            subprocess.run(["cat", str(log)], stdout=subprocess.DEVNULL, check=True)  # both start from the page cache
            grep: list[float] = []
            daemon_times: list[float] = []
            for _ in range(ROUNDS):
                t = time.perf_counter()
                out = subprocess.run(["grep", "-n", "-m1", "needle", str(log)], capture_output=True, text=True)
                grep.append(time.perf_counter() - t)
                assert out.stdout.startswith(f"{needle}:"), out.stdout
                t = time.perf_counter()
                found = await client.search_logs(e.id, "needle", ignore_case=True)
                daemon_times.append(time.perf_counter() - t)
                assert found.matches[0].line == needle
        tui = [await tui_round(daemon.socket, e.id, needle) for _ in range(ROUNDS)]
        g, d, u = statistics.median(grep), statistics.median(daemon_times), statistics.median(tui)
        results.update({
            "grep_n_median_s": round(g, 4),
            "logs_search_median_s": round(d, 4), "logs_search_ratio": round(d / g, 2),
            "tui_enter_to_match_median_s": round(u, 4), "tui_enter_to_match_max_s": round(max(tui), 4),
            "tui_ratio": round(u / g, 2),
        })
    finally:
        if daemon.process is not None:
            daemon.process.kill()
            daemon.process.wait()
        shutil.rmtree(root, ignore_errors=True)
    save("logsearch", results)


if __name__ == "__main__":
    asyncio.run(main())
