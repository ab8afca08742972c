"""Many containers printing at once (issue 17): how far each stored log lags the engine, and the
daemon's CPU per million lines against the engine's own.

N containers (50; 10 with --quick) each print RATE lines/s (1,000) for a fixed time, in small
bursts every 10 ms, each line carrying its number and the time the command printed it.

- runyard: the N submitted through the protocol client, all allowed to run at once, no client
  following their logs. While all N print, every 100 ms the bench reads the tail of each live log
  file and takes the engine's timestamp of the newest stored line: its lag is the sample's time
  minus that timestamp (an upper bound on "stored - engine time" of that line, by up to the 10 ms
  between bursts). p99 and max per execution.
- baseline, the same run: the same N containers by `docker run -d`, each followed by
  `docker logs -f -t` into a file, sampled the same way.

For both, over the window where all N print: dockerd's CPU and the follower's (the runyard
daemon, or the N `docker logs` processes together), from /proc, per million lines stored.

Run: .venv/bin/python bench/bench_printers.py [--quick] [--printers N] [--seconds S]
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
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.bench_foundation import _cpu_seconds, _dockerd_pid, _engine_scheduling  # noqa: E402
from bench.bench_queue import QuietDaemon  # noqa: E402
from bench.common import save  # noqa: E402
from runyard.daemon.snapshots import snapshot_commit  # noqa: E402
from runyard.protocol import Client  # noqa: E402
from tests.conftest import BASE_IMAGE, make_repo, step_yaml  # noqa: E402

SAMPLE_EVERY = 0.1




def printer(rate: int, seconds: float) -> str:
    """Print ``rate`` lines/s for ``seconds``, in bursts every 10 ms; late bursts catch up."""
    return ("import sys, time\n"
            f"rate, seconds = {rate}, {seconds}\n"
            "t0 = time.time(); n = 0; out = sys.stdout\n"
            "while True:\n"
            "    now = time.time()\n"
            "    if now - t0 >= seconds: break\n"
            "    due = int((now - t0) * rate)\n"
            "    if due > n:\n"
            "        out.write(''.join(f'line {i} {now:.6f}\\n' for i in range(n, due))); out.flush(); n = due\n"
            "    time.sleep(0.01)\n")


def engine_time(stamp: bytes) -> float:
    """An RFC 3339 UTC time with up to nanoseconds (Docker's, or runyard's fixed-width copy)."""
    text = stamp.decode()
    whole, _, frac = text.rstrip("Z").partition(".")
    base = datetime.strptime(whole, "%Y-%m-%dT%H:%M:%S").replace(tzinfo=UTC).timestamp()
    return base + (float("0." + frac) if frac else 0.0)


def newest_line(path: Path) -> tuple[float, int] | None:
    """The engine time and number of the newest whole `line N T` in a log file (runyard's records
    `O <time> line N T`, or `docker logs -t` output `<time> line N T`)."""
    try:
        with path.open("rb") as f:
            size = f.seek(0, os.SEEK_END)
            f.seek(max(0, size - 8192))
            data = f.read()
    except OSError:
        return None
    for record in reversed(data.split(b"\n")[:-1]):
        fields = record.split()
        if fields[:1] == [b"O"]:
            fields = fields[1:]
        if len(fields) == 4 and fields[1] == b"line":
            return engine_time(fields[0]), int(fields[2])
    return None


class Sampler:
    """Every 100 ms, each file's newest line: lag behind the engine, and lines stored."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files
        self.lags: dict[str, list[float]] = {name: [] for name in files}
        self.rounds: list[tuple[float, float]] = []  # (time, median lag over the executions) per pass
        self.first: dict[str, int] = {}
        self.last: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        started = time.time()
        while not self._stop.wait(SAMPLE_EVERY):
            this_round = []
            for name, path in self.files.items():
                found = newest_line(path)
                now = time.time()
                if found is None:
                    continue
                stamp, number = found
                self.lags[name].append(now - stamp)
                this_round.append(now - stamp)
                self.first.setdefault(name, number)
                self.last[name] = number
            if this_round:
                self.rounds.append((time.time() - started, statistics.median(this_round)))

    def lines(self) -> int:
        return sum(self.last[n] - self.first[n] for n in self.last)

    def summary(self) -> dict[str, Any]:
        per = []
        for samples in self.lags.values():
            if samples:
                samples = sorted(samples)
                per.append({"p99": samples[max(0, int(len(samples) * 0.99) - 1)], "max": samples[-1],
                            "samples": len(samples)})
        return {
            "executions_sampled": len(per),
            "p99_of_p99_s": round(statistics.median(p["p99"] for p in per), 3) if per else None,
            "worst_p99_s": round(max(p["p99"] for p in per), 3) if per else None,
            "worst_max_s": round(max(p["max"] for p in per), 3) if per else None,
            "over_1s": sum(1 for p in per if p["max"] > 1.0),
            # How the lag moves over the window: growing means the follower cannot keep up.
            "median_lag_over_time_s": [(round(t), round(lag, 3)) for t, lag in self.rounds[::10]],
        }


def _containers_cpu() -> float:
    """CPU seconds of every container on the engine (cgroup v1's docker group; 0 where absent)."""
    try:
        return int(Path("/sys/fs/cgroup/cpuacct/docker/cpuacct.usage").read_text()) / 1e9
    except (OSError, ValueError):
        return 0.0


def _machine_idle() -> float:
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return (int(fields[3]) + int(fields[4])) / os.sysconf("SC_CLK_TCK")  # idle + iowait


def _run_queue_wait(pid: str) -> float:
    """Seconds the process's main thread (the daemon's event loop) waited for a CPU while runnable."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class CpuWindow:
    """CPU seconds of some processes between start() and stop(), with the containers' (the printers'),
    the machine's idle time, and how long the first follower's main thread waited for a CPU."""

    def __init__(self, pids: dict[str, list[str]]) -> None:
        self.pids = pids
        self.cpu: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        got = {name: sum(_cpu_seconds(p) or 0.0 for p in pids) for name, pids in self.pids.items()}
        got["containers"] = _containers_cpu()
        got["machine_idle"] = _machine_idle()
        got["follower_waited_for_cpu"] = _run_queue_wait(self.pids["follower"][0])
        return got

    def start(self) -> None:
        self._at = time.perf_counter()
        self._cpu0 = self._read()

    def stop(self) -> None:
        self.seconds = time.perf_counter() - self._at
        self.cpu = {name: value - self._cpu0[name] for name, value in self._read().items()}


def measure(sampler: Sampler, cpu: CpuWindow, window: float, profile: list[str] | None = None) -> dict[str, Any]:
    sampler.start()
    cpu.start()
    profiler = subprocess.Popen(profile) if profile else None
    time.sleep(window)  # the window is what is measured: the printers run on their own clock
    cpu.stop()
    sampler.stop()
    if profiler is not None:
        profiler.wait()
    lines = sampler.lines()
    return {"window_s": round(cpu.seconds, 2), "lines_stored": lines,
            "lines_per_s": round(lines / cpu.seconds),
            "cpu_s": {k: round(v, 2) for k, v in cpu.cpu.items()},
            "cpu_s_per_million_lines": {k: round(v * 1e6 / max(lines, 1), 2) for k, v in cpu.cpu.items()
                                        if k in ("dockerd", "follower", "containers")},
            "lag": sampler.summary()}


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


async def runyard_round(root: Path, count: int, rate: int, seconds: float, engine: str | None,
                        py_spy: str | None = None) -> dict[str, Any]:
    daemon = QuietDaemon(root=root / "d", max_concurrent=count + 2)
    daemon.root.mkdir(parents=True, exist_ok=True)
    repo = make_repo(root / "repo", {"valohai.yaml": step_yaml("print", "python3 printer.py"),
                                     "printer.py": printer(rate, seconds)})
    daemon.start()
    assert daemon.process is not None
    try:
        async with await Client.connect(daemon.socket, client_name="bench") as client:
            subscribed = asyncio.Event()
            events = client.events(subscribed=subscribed.set)
            # Subscribed before the first submit, so that no start or end is missed.
            first = asyncio.ensure_future(events.__anext__())
            await subscribed.wait()
            snap = snapshot_commit(repo, "HEAD")
            await client.snapshot_put(snap.id, snap.data)
            t0 = time.perf_counter()
            ids = [(await client.submit(step="print", snapshot=snap.id)).id for _ in range(count)]
            started: set[int] = set()
            ended: set[int] = set()

            def seen(event: Any) -> None:
                status = getattr(event, "status", None)
                if status == "started":
                    started.add(event.execution_id)
                elif status == "complete":
                    ended.add(event.execution_id)

            seen(await first)
            while not started.issuperset(ids):
                seen(await events.__anext__())
            all_started = time.perf_counter() - t0
            files = {str(i): daemon.data_dir / "logs" / f"{i}.log" for i in ids}
            window = seconds - all_started - 3.0
            if window < 5:
                raise SystemExit(f"starting {count} took {all_started:.1f} s: give --seconds more room")
            await asyncio.sleep(1.0)
            cpu = CpuWindow({"dockerd": [engine] if engine else [], "follower": [str(daemon.process.pid)]})
            # A sampling profile of the daemon over part of the window, to see where its time goes.
            profile = [py_spy, "record", "--format", "raw", "--idle", "-d", str(int(window * 0.8)), "-r", "50",
                       "-o", str(Path(tempfile.gettempdir()) / "runyard-printers-profile.txt"),
                       "--pid", str(daemon.process.pid)] if py_spy else None
            result = await asyncio.to_thread(measure, Sampler(files), cpu, window, profile)
            result["all_started_s"] = round(all_started, 2)
            while not ended.issuperset(ids):
                seen(await events.__anext__())
            await events.aclose()
        return result
    finally:
        daemon.terminate()
        daemon.cleanup_containers()


def docker_round(root: Path, count: int, rate: int, seconds: float, engine: str | None) -> dict[str, Any]:
    script = printer(rate, seconds)
    t0 = time.perf_counter()
    containers, followers, files = [], [], {}
    try:
        for i in range(count):
            cid = subprocess.run(["docker", "run", "-d", BASE_IMAGE, "python3", "-c", script],
                                 capture_output=True, text=True, check=True).stdout.strip()
            containers.append(cid)
            path = root / f"follow-{i}.log"
            files[str(i)] = path
            with path.open("wb") as out:
                followers.append(subprocess.Popen(["docker", "logs", "-f", "-t", cid], stdout=out,
                                                  stderr=subprocess.DEVNULL))
        all_started = time.perf_counter() - t0
        window = seconds - all_started - 3.0
        if window < 5:
            raise SystemExit(f"starting {count} took {all_started:.1f} s: give --seconds more room")
        time.sleep(1.0)
        cpu = CpuWindow({"dockerd": [engine] if engine else [], "follower": [str(p.pid) for p in followers]})
        result = measure(Sampler(files), cpu, window)
        result["all_started_s"] = round(all_started, 2)
        for p in followers:
            p.wait()
        return result
    finally:
        for p in followers:
            if p.poll() is None:
                p.kill()
        if containers:
            subprocess.run(["docker", "rm", "-f", *containers], capture_output=True)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10 printers for 30 s")
    parser.add_argument("--printers", type=int, default=None, help="containers printing at once (50)")
    parser.add_argument("--rate", type=int, default=1000, help="lines per second each prints")
    parser.add_argument("--seconds", type=float, default=None, help="how long each prints (60)")
    parser.add_argument("--skip-baseline", action="store_true", help="runyard only")
    parser.add_argument("--py-spy", default=None,
                        help="path to py-spy: profile the daemon into /tmp/runyard-printers-profile.txt")
    args = parser.parse_args()
    count = args.printers or (10 if args.quick else 50)
    seconds = args.seconds or (30.0 if args.quick else 60.0)
    engine = _dockerd_pid()
    root = Path(tempfile.mkdtemp(prefix="ryp-", dir="/tmp"))
    results: dict[str, Any] = {"printers": count, "rate": count * args.rate, "seconds": seconds,
                               "engine_scheduling": _engine_scheduling(engine)}
    try:
        results["load_before"] = load()
        results["runyard"] = await runyard_round(root / "ry", count, args.rate, seconds, engine, args.py_spy)
        print("runyard:", results["runyard"], flush=True)
        if not args.skip_baseline:
            results["load_between"] = load()
            results["docker_logs"] = docker_round(root, count, args.rate, seconds, engine)
            print("docker logs -f -t:", results["docker_logs"], flush=True)
        results["load_after"] = load()
    finally:
        shutil.rmtree(root, ignore_errors=True)
    save("printers", results)
    r = results["runyard"]
    per_m = r["cpu_s_per_million_lines"]
    print(f"\n{count} printers x {args.rate} lines/s: {r['lines_per_s']:,} lines/s stored; lag behind the engine "
          f"worst p99 {r['lag']['worst_p99_s']} s, worst max {r['lag']['worst_max_s']} s "
          f"({r['lag']['over_1s']} executions over 1 s; target: none); daemon CPU {per_m['follower']} s per 1M lines "
          f"vs dockerd {per_m['dockerd']} s (target: below)")
    if "docker_logs" in results:
        b = results["docker_logs"]
        print(f"baseline docker logs -f -t: {b['lines_per_s']:,} lines/s; lag worst p99 {b['lag']['worst_p99_s']} s, "
              f"max {b['lag']['worst_max_s']} s; followers' CPU {b['cpu_s_per_million_lines']['follower']} s per 1M "
              f"lines, dockerd {b['cpu_s_per_million_lines']['dockerd']} s")


if __name__ == "__main__":
    asyncio.run(main())
