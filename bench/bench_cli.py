"""The CLI's own start-up (issue 17): `runyard --help` and `runyard list` against a running daemon,
against `python -c pass` on the same interpreter, in the same run.

The three commands alternate, round after round (the order rotating), and each figure is the
median wall time of its runs. Byte code is cached as an installed package has it (in a private
PYTHONPYCACHEPREFIX, warmed first), since this machine's environment sets
PYTHONDONTWRITEBYTECODE and would otherwise compile every module on every start. The figure
that the target is about is the CLI's own share: the command's time minus the bare interpreter's.

Run: .venv/bin/python bench/bench_cli.py [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
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

from bench.bench_queue import QuietDaemon  # noqa: E402
from bench.common import save  # noqa: E402
from runyard.daemon.snapshots import snapshot_commit  # noqa: E402
from runyard.protocol import Client  # noqa: E402
from tests.conftest import make_repo, step_yaml  # noqa: E402


def load() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float]:
    """Wall seconds, and the CPU seconds the command used (user + system): on a machine shared with
    other work, the CPU time is the start-up's own cost, and the wall time adds the wait for a core."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(argv, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30, help="runs of each command")
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="ryc-", dir="/tmp"))
    daemon = QuietDaemon(root=root / "d", max_concurrent=1, local_extra='runtime = "process"\n')
    (root / "d").mkdir()
    try:
        repo = make_repo(root / "repo", {"valohai.yaml": step_yaml("echo", "echo hello")})
        daemon.start()
        async with await Client.connect(daemon.socket, client_name="bench") as client:
            snap = snapshot_commit(repo, "HEAD")
            await client.snapshot_put(snap.id, snap.data)
            for _ in range(10):  # a short queue to list, as on a quiet day
                await client.submit(step="echo", snapshot=snap.id)
        env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
        env.update(PYTHONPYCACHEPREFIX=str(root / "pycache"), RUNYARD_SOCKET=daemon.socket, NO_COLOR="1")
        runyard = str(Path(sys.executable).parent / "runyard")
        commands = {"python -c pass": [sys.executable, "-c", "pass"],
                    "runyard --help": [runyard, "--help"],
                    "runyard list": [runyard, "list"]}
        for argv in commands.values():  # warm the byte-code cache and the page cache
            timed(argv, env)
        times: dict[str, list[float]] = {name: [] for name in commands}
        cpu: dict[str, list[float]] = {name: [] for name in commands}
        loads = [load()]
        names = list(commands)
        for i in range(args.rounds):
            for name in names[i % 3:] + names[:i % 3]:
                wall, used = timed(commands[name], env)
                times[name].append(wall)
                cpu[name].append(used)
        loads.append(load())
    finally:
        daemon.terminate()
        shutil.rmtree(root, ignore_errors=True)
    med = {name: statistics.median(t) * 1000 for name, t in times.items()}
    base = med["python -c pass"]
    med_cpu = {name: statistics.median(t) * 1000 for name, t in cpu.items()}
    base_cpu = med_cpu["python -c pass"]
    results: dict[str, Any] = {
        "rounds": args.rounds, "load": loads,
        "median_ms": {k: round(v, 1) for k, v in med.items()},
        "min_ms": {k: round(min(t) * 1000, 1) for k, v in times.items() for t in [v]},
        "cli_own_ms": {k: round(v - base, 1) for k, v in med.items() if k != "python -c pass"},
        "ratio_to_python": {k: round(v / base, 2) for k, v in med.items() if k != "python -c pass"},
        "cpu_median_ms": {k: round(v, 1) for k, v in med_cpu.items()},
        "cpu_own_ms": {k: round(v - base_cpu, 1) for k, v in med_cpu.items() if k != "python -c pass"},
    }
    save("cli", results)
    print(f"\nmedian of {args.rounds}, wall (CPU): python -c pass {base:.0f} ms ({base_cpu:.0f} ms); " + "; ".join(
        f"{k} {med[k]:.0f} ms ({med_cpu[k]:.0f} ms; its own {med[k] - base:.0f} ms ({med_cpu[k] - base_cpu:.0f} ms), "
        "target < 150 ms)" for k in names[1:]))


if __name__ == "__main__":
    asyncio.run(main())
