"""Many small executions (issue 17): N executions of `true`, 8 at a time, against `docker run --rm`
of the same image with the same parallelism, in the same run.

- baseline: N `docker run --rm IMAGE true`, 8 running at any time (8 threads, each starting the
  next as its last one ends), timed from the first to the last exit.
- runyard: N executions of a step whose command is `true`, submitted one after another through
  the protocol client on one connection to a daemon with `max_concurrent = 8`, timed from the first
  submit to the last `complete` event. Each also gets its ordinary log, outputs directory and
  cleanup.

Rounds alternate which goes first. The figure is throughput: baseline time / runyard time.
The daemon's and dockerd's CPU seconds come from /proc.

Run: .venv/bin/python bench/bench_small.py [--quick] [--count N] [--rounds R]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_foundation import _cpu_seconds, _dockerd_pid  # noqa: E402
from bench.bench_queue import QuietDaemon  # noqa: E402
from bench.common import save  # noqa: E402
from runyard.daemon.snapshots import snapshot_commit  # noqa: E402
from runyard.protocol import Client  # noqa: E402
from tests.conftest import BASE_IMAGE, make_repo, step_yaml  # noqa: E402

PARALLEL = 8


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def docker_round(count: int, engine: str | None) -> dict[str, float]:
    def one(_: int) -> None:
        subprocess.run(["docker", "run", "--rm", BASE_IMAGE, "true"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    cpu0 = _cpu_seconds(engine) or 0.0
    t0 = time.perf_counter()
    with ThreadPoolExecutor(PARALLEL) as pool:
        list(pool.map(one, range(count)))
    seconds = time.perf_counter() - t0
    return {"seconds": seconds, "dockerd_cpu": (_cpu_seconds(engine) or 0.0) - cpu0}


async def runyard_round(daemon: QuietDaemon, snap: str, count: int, engine: str | None) -> dict[str, float]:
    assert daemon.process is not None
    ours = str(daemon.process.pid)
    async with await Client.connect(daemon.socket, client_name="bench") as client:
        ids: set[int] = set()
        ended: dict[int, str] = {}
        subscribed = asyncio.Event()

        async def watch() -> None:
            # Subscribed before the first submit: an early end is never missed.
            async for event in client.events(subscribed=subscribed.set):
                status = getattr(event, "status", None)
                if status in ("complete", "error", "stopped", "failed"):
                    ended[event.execution_id] = status
                    if len(ended) >= count and ids.issubset(ended):
                        return

        watcher = asyncio.create_task(watch())
        await subscribed.wait()
        cpu0, own0 = _cpu_seconds(engine) or 0.0, _cpu_seconds(ours) or 0.0
        t0 = time.perf_counter()
        for _ in range(count):
            ids.add((await client.submit(step="noop", snapshot=snap)).id)
        submitted = time.perf_counter() - t0
        await watcher
        seconds = time.perf_counter() - t0
    failed = sum(1 for i in ids if ended[i] != "complete")
    assert not failed, f"{failed} of {count} did not complete"
    return {"seconds": seconds, "submit_s": submitted, "dockerd_cpu": (_cpu_seconds(engine) or 0.0) - cpu0,
            "daemon_cpu": (_cpu_seconds(ours) or 0.0) - own0}


def _phases(path: Path, executions: int) -> dict[str, dict[str, float]]:
    """Mean time per call of each phase, and calls per execution, from the daemon's phase file."""
    seen: dict[str, list[float]] = {}
    for line in path.read_text().splitlines():
        label, seconds = json.loads(line)
        seen.setdefault(label, []).append(seconds)
    return {label: {"mean_ms": round(statistics.mean(v) * 1000, 1), "median_ms": round(statistics.median(v) * 1000, 1),
                    "calls_per_execution": round(len(v) / executions, 2)} for label, v in seen.items()}


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="100 executions, 1 round each way")
    parser.add_argument("--count", type=int, default=None, help="executions per round (1,000)")
    parser.add_argument("--rounds", type=int, default=None, help="rounds each way (2)")
    parser.add_argument("--phases", action="store_true",
                        help="time each phase of every execution in the daemon (bench/phases/sitecustomize.py); "
                             "adds a little overhead, so not for the ratio")
    args = parser.parse_args()
    count = args.count or (100 if args.quick else 1000)
    rounds = args.rounds or (1 if args.quick else 2)
    engine = _dockerd_pid()
    root = Path(tempfile.mkdtemp(prefix="rys-", dir="/tmp"))
    daemon = QuietDaemon(root=root, max_concurrent=PARALLEL)
    repo = make_repo(root / "repo", {"valohai.yaml": step_yaml("noop", "'true'")})
    base: list[dict[str, float]] = []
    ours: list[dict[str, float]] = []
    loads = [load()]
    phases = root / "phases.jsonl"
    if args.phases:
        os.environ["PYTHONPATH"] = str(Path(__file__).resolve().parent / "phases")
        os.environ["RUNYARD_BENCH_PHASES"] = str(phases)
    daemon.start()
    try:
        async with await Client.connect(daemon.socket, client_name="bench") as client:
            snap = snapshot_commit(repo, "HEAD")
            await client.snapshot_put(snap.id, snap.data)
        for i in range(rounds):
            order = ["docker", "runyard"] if i % 2 == 0 else ["runyard", "docker"]
            for name in order:
                if name == "docker":
                    base.append(docker_round(count, engine))
                else:
                    ours.append(await runyard_round(daemon, snap.id, count, engine))
                print(f"  {name}: {(base if name == 'docker' else ours)[-1]}", flush=True)
            loads.append(load())
            print(f"round {i + 1}: docker run --rm {base[-1]['seconds']:.1f} s "
                  f"(dockerd {base[-1]['dockerd_cpu']:.1f} s CPU), runyard {ours[-1]['seconds']:.1f} s "
                  f"(submits {ours[-1]['submit_s']:.2f} s; dockerd {ours[-1]['dockerd_cpu']:.1f} s, "
                  f"daemon {ours[-1]['daemon_cpu']:.1f} s CPU); load {loads[-1]}", flush=True)
        phase_table = _phases(phases, count * rounds) if args.phases else {}
    finally:
        daemon.terminate()
        daemon.cleanup_containers()
        shutil.rmtree(root, ignore_errors=True)
    ratios = [b["seconds"] / o["seconds"] for b, o in zip(base, ours, strict=True)]
    results: dict[str, Any] = {
        "executions": count, "parallel": PARALLEL, "rounds": rounds, "load": loads,
        "docker_run_rm_s": [round(b["seconds"], 2) for b in base],
        "runyard_s": [round(o["seconds"], 2) for o in ours],
        "throughput_ratio": round(statistics.median(ratios), 3), "ratios": [round(r, 3) for r in ratios],
        # Wall time each slot spends per execution: 8 slots, N executions.
        "per_execution_ms": {name: round(statistics.median(r["seconds"] for r in rows) / count * PARALLEL * 1000, 1)
                             for name, rows in (("docker", base), ("runyard", ours))},
        "dockerd_cpu_s": {"docker": [round(b["dockerd_cpu"], 1) for b in base],
                          "runyard": [round(o["dockerd_cpu"], 1) for o in ours]},
        "daemon_cpu_s": [round(o["daemon_cpu"], 1) for o in ours],
    }
    if phase_table:
        results["phases_ms_per_execution"] = phase_table
        for label, row in phase_table.items():
            print(f"  {label:60} {row['mean_ms']:8.1f} ms  (x{row['calls_per_execution']})")
    save("small", results)
    print(f"\n{count} executions of true, {PARALLEL} at a time: runyard {results['runyard_s']} s vs docker run --rm "
          f"{results['docker_run_rm_s']} s: throughput {results['throughput_ratio']}x (target >= 0.9x)")


if __name__ == "__main__":
    asyncio.run(main())
