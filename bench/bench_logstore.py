"""Log storage: a finished 1,000,000-line log stored compressed, and reading it through the daemon.

Two printers, each 1,000,000 lines at a fast printer's pace (nanosecond timestamps about 5 us
apart, at random):
  mix    bench_foundation's printer: 'line N of the log', every 10th a JSON metadata line
  short  print('line', i): the worst case, where the 33-byte header of each record outweighs its text
For each: stored bytes / bytes printed, plain (the live format) and compressed (what an ended
log becomes), and the CPU time of the compression.

Then, on the mix log, through a real daemon's socket (process runtime), each read the TUI and CLI
make, on the compressed log and on the same log plain (the same-run baseline), alternating, median
of ROUNDS: head (the TUI's first 200 lines), tail (its last 2,000, numbered), a middle range
(256 KiB at half the log), search (the line with a needle at the middle, from the start), a
search matching nothing (every request until the whole log is scanned), and `logs -f` by offset
on the ended execution: from 1 MiB before the end (a follower that reconnects) and from the middle
(half the log, 29 MB sent).

Both logs are written into the data directory of two tiny finished executions; the compressed one
by the daemon's own function (logfile.store_ended), as its compressor does when an execution ends.

Run: flock /tmp/runyard-bench.lock .venv/bin/python bench/bench_logstore.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import save  # noqa: E402
from runyard.daemon.logfile import store_ended  # noqa: E402
from runyard.protocol import Client  # noqa: E402
from tests.conftest import Daemon, make_repo, step_yaml, submit_repo, wait_for_status  # noqa: E402

ROUNDS = 7
START = int(datetime(2026, 12, 2, 6, 0, tzinfo=UTC).timestamp()) * 10**9


def text_of(kind: str, i: int, needle: int) -> str:
    if kind == "short":
        return f"line {i}"
    if i == needle:
        return f"line {i} of the log needle"
    return json.dumps({"step": i, "loss": 1 / (i + 1)}) if i % 10 == 0 else f"line {i} of the log"


def write_log(path: Path, kind: str, lines: int, needle: int) -> int:
    """The log a printer of ``lines`` lines leaves; returns the bytes it printed."""
    rng = random.Random(7)
    t = START
    printed = 0
    fresh = path.with_name("new.tmp")
    with fresh.open("w") as fh:
        out: list[str] = []
        for i in range(lines):
            t += int(rng.expovariate(1 / 5000))
            seconds, nanos = divmod(t, 10**9)
            text = text_of(kind, i, needle)
            printed += len(text) + 1
            stamp = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
            out.append(f"O {stamp}.{nanos:09d}Z {text}\n")
            if len(out) >= 10_000:
                fh.write("".join(out))
                out.clear()
        fh.write("".join(out))
    os.replace(fresh, path)
    return printed


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def storage(root: Path, lines: int) -> dict[str, Any]:
    """Writes root/mix.plain, the mix log, for the reads after."""
    out: dict[str, Any] = {}
    for kind in ("mix", "short"):
        path = root / f"{kind}.log"
        printed = write_log(path, kind, lines, lines // 2)
        if kind == "mix":
            shutil.copyfile(path, root / "mix.plain")
        plain = path.stat().st_size
        used, wall = cpu(), time.perf_counter()
        assert store_ended(path)
        used, wall = cpu() - used, time.perf_counter() - wall
        stored = path.stat().st_size
        out[kind] = {"printed_bytes": printed, "plain_bytes": plain, "stored_bytes": stored,
                     "plain_over_printed": plain / printed, "stored_over_printed": stored / printed,
                     "compress_cpu_s": used, "compress_wall_s": wall}
        path.unlink()
    return out


async def timed(read: Callable[[int], Awaitable[Any]], execution_id: int) -> tuple[float, Any]:
    t = time.perf_counter()
    result = await read(execution_id)
    return time.perf_counter() - t, result


async def reads(client: Client, plain_id: int, stored_id: int, size: int, needle: int) -> dict[str, Any]:
    async def search_all(execution_id: int, pattern: str) -> int:
        offset, spent, found = None, 0.0, 0
        while True:
            part = await client.search_logs(execution_id, pattern, offset=offset, spent=spent)
            found += len(part.matches)
            if part.done:
                return found
            offset, spent = part.next, spent + part.seconds

    async def follow(execution_id: int, offset: int) -> int:
        got = 0
        async for block in client.follow_logs(execution_id, offset):
            got += len(block.data)
        return got

    async def search_needle(execution_id: int) -> int:
        """As `logs --grep` and the TUI's / do: requests until the first match."""
        offset, spent = None, 0.0
        while True:
            found = await client.search_logs(execution_id, "needle", offset=offset, spent=spent, limit=1)
            if found.matches or found.done:
                return found.matches[0].line
            offset, spent = found.next, spent + found.seconds

    kinds: dict[str, Callable[[int], Awaitable[Any]]] = {
        "head": lambda i: client.read_logs(i, head=200),
        "tail": lambda i: client.read_logs(i, tail=2000),
        "middle_range": lambda i: client.read_logs(i, offset=size // 2, max_bytes=256 << 10),
        "search_needle_in_the_middle": search_needle,
        "search_whole_log_no_match": lambda i: search_all(i, "no such text anywhere"),
        "follow_from_last_mib": lambda i: follow(i, size - (1 << 20)),
        "follow_from_the_middle": lambda i: follow(i, size // 2),
    }
    results: dict[str, Any] = {}
    for name, read in kinds.items():
        plain: list[float] = []
        stored: list[float] = []
        for n in range(ROUNDS):
            order = [(plain_id, plain), (stored_id, stored)]
            if n % 2:
                order.reverse()
            answers = []
            for execution_id, times in order:
                seconds, answer = await timed(read, execution_id)
                times.append(seconds)
                answers.append(answer if not hasattr(answer, "data") else (answer.data, answer.start, answer.end))
            assert answers[0] == answers[1], name  # the same answer from both formats
        p, s = statistics.median(plain), statistics.median(stored)
        results[name] = {"plain_s": p, "compressed_s": s, "ratio": s / p, "under_0.5_s": s < 0.5}
        print(f"{name}: compressed {s * 1000:.1f} ms, plain {p * 1000:.1f} ms ({s / p:.2f}x)", flush=True)
    return results


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="a 100,000-line log")
    args = parser.parse_args()
    lines = 100_000 if args.quick else 1_000_000
    needle = lines // 2
    root = Path(tempfile.mkdtemp(prefix="ryb-", dir="/tmp"))
    results: dict[str, Any] = {"lines": lines, "load_before": os.getloadavg()}
    daemon = Daemon(root=root, local_extra='runtime = "process"\n')
    try:
        results["storage"] = storage(root, lines)
        for kind, r in results["storage"].items():
            print(f"{kind}: stored {r['stored_over_printed']:.3f}x the bytes printed (plain "
                  f"{r['plain_over_printed']:.2f}x), compressed in {r['compress_cpu_s']:.1f} s CPU", flush=True)
        daemon.start()
        repo = make_repo(root / "repo", {"valohai.yaml": step_yaml("tiny", "echo hi")})
        async with await Client.connect(daemon.socket, client_name="bench") as client:
            ids = []
            for _ in range(2):
                e = await submit_repo(client, repo, "tiny")
                await wait_for_status(client, e.id)
                ids.append(e.id)
            logs = [daemon.data_dir / "logs" / f"{i}.log" for i in ids]
            for log in logs:
                shutil.copyfile(root / "mix.plain", log)
            assert store_ended(logs[1])
            size = logs[0].stat().st_size
            subprocess.run(["cat", str(logs[0]), str(logs[1])], stdout=subprocess.DEVNULL, check=True)
            results["reads"] = await reads(client, ids[0], ids[1], size, needle + 1)
        results["load_after"] = os.getloadavg()
    finally:
        if daemon.process is not None:
            daemon.process.kill()
            daemon.process.wait()
        shutil.rmtree(root, ignore_errors=True)
    save("logstore", results)


if __name__ == "__main__":
    asyncio.run(main())
