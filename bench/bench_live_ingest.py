"""Live ingestion of a container printing as fast as it can (issue 17), against the engine's own
follower in the same run.

Each round, alternating: `docker run -d` + `docker logs -f -t` until the container ends (the
baseline), then the same command submitted to runyard and timed until the `complete` event (no client
following its log). Both from the start of the request to the end of the log. For each: dockerd's
CPU seconds (from /proc), and for runyard the daemon's own CPU and how long after the log's last
write `complete` arrived. Medians over the rounds.

Run: .venv/bin/python bench/bench_live_ingest.py [--lines N] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_foundation import _cpu_seconds, _dockerd_pid, _engine_scheduling  # noqa: E402
from bench.common import save  # noqa: E402
from runyard.daemon.logstore import open_reader  # noqa: E402
from runyard.protocol import Client  # noqa: E402
from tests.conftest import BASE_IMAGE, Daemon, make_repo, step_yaml, submit_repo  # noqa: E402


def _printer(lines: int) -> str:
    return f"for i in range({lines}): print('line', i)"


def _baseline(lines: int, engine: str | None) -> dict[str, float]:
    cpu0 = _cpu_seconds(engine)
    t0 = time.perf_counter()
    container = subprocess.run(["docker", "run", "-d", BASE_IMAGE, "python3", "-c", _printer(lines)],
                               capture_output=True, text=True, check=True).stdout.strip()
    follow = subprocess.run(["docker", "logs", "-f", "-t", container], stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, check=True)
    seconds = time.perf_counter() - t0
    cpu1 = _cpu_seconds(engine)
    got = follow.stdout.count(b"\n")
    subprocess.run(["docker", "rm", "-f", container], capture_output=True)
    # The engine's follower sometimes ends before the last lines of a container that exits while
    # it streams (about one run in four here): the baseline is then timed short, in its favour.
    return {"seconds": seconds, "engine_cpu": (cpu1 or 0) - (cpu0 or 0), "lost": lines - got}


async def _runyard(daemon: Daemon, repo: Path, lines: int, engine: str | None) -> dict[str, float]:
    assert daemon.process is not None
    ours = str(daemon.process.pid)
    async with await Client.connect(daemon.socket) as client:
        events = client.events()
        cpu0, own0 = _cpu_seconds(engine), _cpu_seconds(ours)
        t0 = time.perf_counter()
        execution = await submit_repo(client, repo, "flood")
        async for event in events:
            if getattr(event, "execution_id", None) == execution.id and getattr(event, "status", None) == "complete":
                break
        seconds = time.perf_counter() - t0
        reread = f"execution {execution.id}: the stored log lacks" in daemon.log_text()
        arrived = time.time()
        cpu1, own1 = _cpu_seconds(engine), _cpu_seconds(ours)
        await events.aclose()
        log = daemon.data_dir / "logs" / f"{execution.id}.log"
        last_write = log.stat().st_mtime
        count = await client.call("logs.count", {"id": execution.id})
    # The runner's own notes (S records) are not the command's lines.
    with open_reader(log) as reader:  # compressed by now, or soon: the daemon does so once it ended
        plain = reader.pread(reader.size, 0)
    stored = sum(1 for line in plain.splitlines() if line[:1] in (b"O", b"E"))
    assert stored == lines, f"runyard stored {stored} lines of {lines} ({count} records)"
    return {"seconds": seconds, "engine_cpu": (cpu1 or 0) - (cpu0 or 0), "daemon_cpu": (own1 or 0) - (own0 or 0),
            "complete_after_last_write_s": arrived - last_write, "reread": reread}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines the container prints")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each way, alternating")
    args = parser.parse_args()
    engine = _dockerd_pid()
    root = Path(tempfile.mkdtemp(prefix="ryb-", dir="/tmp"))
    daemon = Daemon(root=root, max_concurrent=2)
    repo = make_repo(root / "repo", {"valohai.yaml": step_yaml("flood", "python3 flood.py"),
                                     "flood.py": _printer(args.lines) + "\n"})
    daemon.start()
    base: list[dict[str, float]] = []
    ours: list[dict[str, float]] = []
    try:
        for i in range(args.rounds):
            # Alternate which goes first: the machine is shared and its load drifts.
            if i % 2 == 0:
                base.append(_baseline(args.lines, engine))
                ours.append(await _runyard(daemon, repo, args.lines, engine))
            else:
                ours.append(await _runyard(daemon, repo, args.lines, engine))
                base.append(_baseline(args.lines, engine))
            print(f"round {i + 1}: docker {base[-1]['seconds']:.2f} s ({base[-1]['lost']} lost, "
                  f"dockerd {base[-1]['engine_cpu']:.1f} s CPU), "
                  f"runyard {ours[-1]['seconds']:.2f} s (dockerd {ours[-1]['engine_cpu']:.1f} s, "
                  f"daemon {ours[-1]['daemon_cpu']:.1f} s CPU; complete "
                  f"{ours[-1]['complete_after_last_write_s'] * 1000:.0f} ms after the log's last write; "
                  f"re-read: {ours[-1]['reread']})", flush=True)
    finally:
        daemon.terminate()
        daemon.cleanup_containers()
        shutil.rmtree(root, ignore_errors=True)

    def median(rows: list[dict[str, float]], key: str) -> float:
        return statistics.median(r[key] for r in rows)

    ratios = [b["seconds"] / o["seconds"] for b, o in zip(base, ours, strict=True)]
    results: dict[str, Any] = {
        "lines": args.lines, "rounds": args.rounds, "engine_scheduling": _engine_scheduling(engine),
        "docker_run_logs_f_t_s": median(base, "seconds"), "runyard_to_complete_s": median(ours, "seconds"),
        "throughput_ratio": median(base, "seconds") / median(ours, "seconds"),
        "ratios": ratios, "ratio_median_of_rounds": statistics.median(ratios),
        "dockerd_cpu_docker_logs_s": median(base, "engine_cpu"), "dockerd_cpu_runyard_s": median(ours, "engine_cpu"),
        "daemon_cpu_s": median(ours, "daemon_cpu"),
        "complete_after_last_write_s": median(ours, "complete_after_last_write_s"),
        "complete_after_last_write_max_s": max(r["complete_after_last_write_s"] for r in ours),
        "baseline_rounds_short": sum(1 for r in base if r["lost"]),
        "runyard_rounds_reread": sum(1 for r in ours if r["reread"]),
    }
    save("live_ingest", results)
    print(f"\nlive ingestion of {args.lines:,} lines: runyard {results['runyard_to_complete_s']:.2f} s "
          f"vs docker run -d + logs -f -t {results['docker_run_logs_f_t_s']:.2f} s: "
          f"{results['throughput_ratio']:.2f}x, median of the rounds' ratios {results['ratio_median_of_rounds']:.2f}x "
          f"(target >= 0.9x); "
          f"dockerd CPU {results['dockerd_cpu_runyard_s']:.1f} s vs {results['dockerd_cpu_docker_logs_s']:.1f} s; "
          f"complete {results['complete_after_last_write_max_s'] * 1000:.0f} ms at most after the last write "
          f"(target <= 1 s)")


if __name__ == "__main__":
    asyncio.run(main())
