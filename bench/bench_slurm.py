"""Slurm cluster pool benchmarks (issue 14), on the real single-node cluster of scripts/lib.sh's
ensure_slurm, its login node a real sshd on loopback.

1. Submit -> `started` through runyard, against a bare `sbatch` plus a `squeue` polling loop at the
   same interval over the same kind of SSH connection, in the same run (target: at most 1.2x).
2. A line written by the job -> seen by a `logs -f` client: p50 and p99 (target: p99 under 1 s).
3. Controller calls: squeue calls per minute with 1 job of this daemon pending against many pending
   (target: equal; one batched squeue per cluster). Counted by a squeue wrapper on the login node.

Run: .venv/bin/python bench/bench_slurm.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import asyncssh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import save  # noqa: E402
from runyard.protocol import Client  # noqa: E402
from tests.conftest import Daemon, make_repo, step_yaml, submit_repo, wait_for_status  # noqa: E402
from tests.pool import start_lone_host, wait_for_host  # noqa: E402
from tests.test_slurm import cancel_jobs, cluster_config  # noqa: E402

POLL = 0.5
STEPS = (step_yaml("short", "sleep 0.2", extra="environment: hpc")
         + step_yaml("ticks", "python3 ticks.py", extra="environment: hpc")
         + step_yaml("hold", ["sleep 600"], extra="environment: hpc\nresources:\n  devices:\n    nvidia.com/gpu: 2"))

SQUEUE_COUNTER = """#!/bin/sh
echo x >> "$(dirname "$0")/squeue.calls"
exec /usr/bin/squeue "$@"
"""


async def bare_start(conn: asyncssh.SSHClientConnection, work: Path) -> float:
    t0 = time.perf_counter()
    out = await conn.run(f"sbatch --parsable -p gpu -o {work}/bare.out --wrap 'sleep 0.2'", check=True)
    job = str(out.stdout).strip()
    while True:
        state = str((await conn.run(f"squeue -h -t all -j {job} -o %T")).stdout).strip()
        if state not in ("PENDING", "CONFIGURING", ""):
            return time.perf_counter() - t0
        await asyncio.sleep(POLL)


async def main(rounds: int) -> None:
    subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib.sh; ensure_slurm"], check=True)
    cancel_jobs("runyard-")
    tmp = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    login, key, known = start_lone_host(tmp, "login")
    (login.root / "work").mkdir(exist_ok=True)
    counter = login.root / "bin" / "squeue"
    counter.write_text(SQUEUE_COUNTER)
    counter.chmod(0o755)
    daemon = Daemon(root=Path(tempfile.mkdtemp(prefix="ryb-", dir="/tmp")), local_extra="enabled = false",
                    extra_config=cluster_config(login, known).replace("poll_seconds = 0.3", f"poll_seconds = {POLL}")
                    .replace("max_jobs = 3", "max_jobs = 200"))
    ticks = "import time\nfor i in range(60):\n    print(time.time(), flush=True)\n    time.sleep(0.05)\n"
    repo = make_repo(tmp / "repo", {"valohai.yaml": STEPS, "ticks.py": ticks})
    daemon.start()
    conn = await asyncssh.connect("127.0.0.1", port=login.port, username="root", client_keys=[str(key)],
                                  known_hosts=str(known))
    client = await Client.connect(daemon.socket, client_name="bench")
    results: dict[str, float] = {}
    try:
        await wait_for_host(client, "hpc", {"ready"})
        ours, bare = [], []
        for _ in range(rounds):
            t0 = time.perf_counter()
            e = await submit_repo(client, repo, "short")
            await wait_for_status(client, e.id, {"started", "complete", "error"})
            ours.append(time.perf_counter() - t0)
            await wait_for_status(client, e.id)
            bare.append(await bare_start(conn, login.root / "work"))
        results |= {"start_runyard_median_s": statistics.median(ours), "start_bare_median_s": statistics.median(bare),
                    "start_ratio": statistics.median(ours) / statistics.median(bare)}

        e = await submit_repo(client, repo, "ticks")
        await wait_for_status(client, e.id, {"started"})
        lags: list[float] = []
        async for block in client.follow_logs(e.id, 0):
            now = time.time()
            for line in block.data.splitlines():
                text = line.split(" ", 2)[-1]
                try:
                    lags.append(now - float(text))
                except ValueError:
                    pass
            if len(lags) >= 60:
                break
        lags.sort()
        results |= {"line_to_follower_p50_s": lags[len(lags) // 2],
                    "line_to_follower_p99_s": lags[int(len(lags) * 0.99)]}

        async def calls_per_minute(seconds: float) -> float:
            calls = login.root / "bin" / "squeue.calls"
            before = len(calls.read_text().splitlines()) if calls.exists() else 0
            await asyncio.sleep(seconds)
            return (len(calls.read_text().splitlines()) - before) * 60 / seconds

        holder = await submit_repo(client, repo, "hold")
        await wait_for_status(client, holder.id, {"started"})
        one = await submit_repo(client, repo, "hold")
        results["squeue_per_min_1_pending"] = await calls_per_minute(10)
        many = 3 if rounds < 10 else 100
        for _ in range(many - 1):
            await submit_repo(client, repo, "hold")
        await asyncio.sleep(5)  # let the submits land: only the steady state is counted
        results[f"squeue_per_min_{many}_pending"] = await calls_per_minute(10)
        del one
    finally:
        await client.close()
        conn.close()
        cancel_jobs(f"runyard-{daemon.daemon_id}-")
        if daemon.process is not None:
            daemon.process.kill()
        login.kill()
    for name, value in results.items():
        print(f"{name}: {value:.3f}")
    save("slurm", results)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 start rounds and 3 pending jobs, not 15 and 100")
    asyncio.run(main(5 if parser.parse_args().quick else 15))
