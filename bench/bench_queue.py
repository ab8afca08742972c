"""The queue at scale, as a client meets it (issue 17): submit, list and stop with a long queue.

A real `runyard daemon` process on a private socket, plain-process runtime on this
machine with one slot, held by a sleeping execution, so everything submitted after it
stays queued. Through the protocol client on one connection:

- submit, one after another, until the queue holds N (100, 1,000, 10,000): the mean
  round trip and the daemon's CPU time per submit (from /proc), for the last 100 submits;
- `list` (the newest 100) with the queue at N;
- `stop --all` of the N queued ones;
- with ``--running N``: N executions running at once (plain `sleep` processes), then `stop
  --all`: the answer, the time until no process of theirs runs any more (all signalled:
  `sleep` ends on TERM; looked at in /proc every 50 ms), and the time until every one of them
  has ended `stopped` (signalled, exited, recorded). There is no baseline for that one: the
  target (all signalled within 5 s for 1,000) is absolute.

The baseline, in the same run, is the same request with the queue nearly empty (the
first 100 submits), so the figure is the cost's growth with the queue: flat is 1.0x.

Run: .venv/bin/python bench/bench_queue.py [--sizes 100,1000,10000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import save  # noqa: E402
from runyard.daemon.snapshots import snapshot_commit  # noqa: E402
from runyard.protocol.client import Client  # noqa: E402
from runyard.protocol.messages import Event  # noqa: E402
from tests.conftest import Daemon, make_repo, step_yaml  # noqa: E402

TICKS = os.sysconf("SC_CLK_TCK")
SLEEP = f"sleep {100_000 + os.getpid() % 100_000}"  # this run's own: nobody else's sleep is counted or ended


def sleeps_running() -> int:
    """How many of this run's sleeps still run (zombies not counted: they have ended)."""
    count = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if Path(entry.path, "cmdline").read_bytes() == SLEEP.replace(" ", "\0").encode() + b"\0":
                count += Path(entry.path, "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
        except OSError:
            continue
    return count


async def until_no_sleeps() -> float:
    """perf_counter() when this run's last sleep has gone (looked at every 50 ms)."""
    # A process's end is seen only by looking: no event to await.
    while await asyncio.to_thread(sleeps_running):  # noqa: ASYNC110
        await asyncio.sleep(0.05)
    return time.perf_counter()


class QuietDaemon(Daemon):
    """The tests' daemon with the settings an operator runs: logging what they would keep (not every
    request), and live outputs looked for every 10 s, the shipped default (the tests' daemon looks
    every 0.2 s: with 1,000 running, 5,000 directory walks a second, which the benches measured)."""

    def write_config(self) -> Path:
        path = super().write_config()
        path.write_text(path.read_text().replace('log_level = "debug"', 'log_level = "info"')
                        .replace("live_outputs_seconds = 0.2", "live_outputs_seconds = 10.0"))
        return path


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


async def submits(client: Client, snap: str, pid: int, count: int) -> dict[str, float]:
    """``count`` submits; the mean round trip and daemon CPU per submit, in ms."""
    cpu = cpu_seconds(pid)
    started = time.perf_counter()
    for _ in range(count):
        await client.submit(step="wait", snapshot=snap)
    wall = time.perf_counter() - started
    return {"round_trip_ms": wall / count * 1000, "daemon_cpu_ms": (cpu_seconds(pid) - cpu) / count * 1000}


async def lists(client: Client, rounds: int = 20) -> float:
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        await client.list_executions(limit=100)
        times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000


@contextlib.asynccontextmanager
async def queue_daemon(max_concurrent: int, stop_grace: int = 10) -> AsyncIterator[tuple[int, Client, str]]:
    """A quiet daemon (plain-process runtime, this machine) whose step ``wait`` sleeps, its snapshot
    uploaded: (the daemon's pid, a client, the snapshot id). Each run's sleep is its own length, so
    what a killed daemon left running is ended without touching anyone else's sleep."""
    root = Path(tempfile.mkdtemp(prefix="ry-bench-queue-", dir="/tmp"))
    sleep = SLEEP
    daemon = QuietDaemon(root=root, max_concurrent=max_concurrent, stop_grace=stop_grace,
                         local_extra='runtime = "process"\n')
    try:
        repo = make_repo(root / "repo", {"valohai.yaml": step_yaml("wait", sleep)})
        daemon.start()
        assert daemon.process is not None
        async with await Client.connect(daemon.socket, client_name="bench") as client:
            snap = snapshot_commit(repo, "HEAD")
            await client.snapshot_put(snap.id, snap.data)
            yield daemon.process.pid, client, snap.id
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
        subprocess.run(["pkill", "-x", "-f", sleep], check=False)
        shutil.rmtree(root, ignore_errors=True)


async def one_size(size: int) -> dict[str, Any]:
    async with queue_daemon(max_concurrent=1) as (pid, client, snap):
        holder = await client.submit(step="wait", snapshot=snap)
        baseline = await submits(client, snap, pid, min(100, size))
        list_base = await lists(client)
        if size > 200:
            await submits(client, snap, pid, size - 200)
        at_size = await submits(client, snap, pid, 100) if size > 100 else baseline
        list_at = await lists(client)
        cpu = cpu_seconds(pid)
        started = time.perf_counter()
        result = await client.stop(all=True)
        stop_s = time.perf_counter() - started
        stop_cpu = cpu_seconds(pid) - cpu
        assert holder.id in result.stopped
        return {
            "queued": size,
            "submit_round_trip_ms": {"near_empty": round(baseline["round_trip_ms"], 3),
                                     "at_size": round(at_size["round_trip_ms"], 3),
                                     "ratio": round(at_size["round_trip_ms"] / baseline["round_trip_ms"], 2)},
            "submit_daemon_cpu_ms": {"near_empty": round(baseline["daemon_cpu_ms"], 3),
                                     "at_size": round(at_size["daemon_cpu_ms"], 3)},
            "list_ms": {"near_empty": round(list_base, 2), "at_size": round(list_at, 2),
                        "ratio": round(list_at / list_base, 2)},
            "stop_all": {"stopped": len(result.stopped), "seconds": round(stop_s, 3),
                         "daemon_cpu_s": round(stop_cpu, 3)},
        }


async def until_all(client: Client, ids: set[int], statuses: set[str]) -> None:
    """Until every one of ``ids`` is in one of ``statuses``: the state once subscribed, then events."""
    subscribed = asyncio.Event()
    changes: asyncio.Queue[Event] = asyncio.Queue()

    async def follow() -> None:
        async for event in client.events(subscribed=subscribed.set):
            if isinstance(event, Event) and event.kind != "host":
                changes.put_nowait(event)

    follower = asyncio.create_task(follow())
    try:
        await subscribed.wait()
        status = {v.id: v.status for v in await client.list_executions(limit=len(ids) + 10)}
        while not all(status.get(i) in statuses for i in ids):
            event = await changes.get()
            status[event.execution_id] = event.status
    finally:
        follower.cancel()


async def running(count: int) -> dict[str, Any]:
    async with queue_daemon(max_concurrent=count, stop_grace=30) as (pid, client, snap):
        ids = {(await client.submit(step="wait", snapshot=snap)).id for _ in range(count)}
        started = time.perf_counter()
        await until_all(client, ids, {"started"})
        all_started_s = time.perf_counter() - started
        # "started" is recorded once the wrapper is launched: its command's process follows a moment later.
        while await asyncio.to_thread(sleeps_running) < count:  # noqa: ASYNC110
            await asyncio.sleep(0.1)
        cpu = cpu_seconds(pid)
        started = time.perf_counter()
        gone = asyncio.create_task(until_no_sleeps())
        result = await client.stop(all=True)
        answer_s = time.perf_counter() - started
        await until_all(client, ids, {"stopped", "error", "complete"})
        ended_s = time.perf_counter() - started
        signalled_s = await gone - started
        stop_cpu = cpu_seconds(pid) - cpu
        stopped = sum(1 for v in await client.list_executions(status=["stopped"], limit=count + 10) if v.id in ids)
        return {"running": count, "all_started_after_s": round(all_started_s, 1),
                "stop_all": {"asked": len(result.stopped), "answer_s": round(answer_s, 3),
                             "all_signalled_and_gone_s": round(signalled_s, 3),
                             "all_stopped_s": round(ended_s, 3), "stopped": stopped,
                             "daemon_cpu_s": round(stop_cpu, 3)}}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="100,1000,10000")
    parser.add_argument("--running", type=int, default=0, help="instead: N running at once, then stop --all")
    args = parser.parse_args()
    if args.running:
        save("queue_running", await running(args.running))
        return
    results = [await one_size(int(s)) for s in args.sizes.split(",")]
    save("queue", {"sizes": results})


if __name__ == "__main__":
    asyncio.run(main())
