"""Slurm cluster pool benchmarks (issue 14), on the real single-node cluster of scripts/lib.sh's
ensure_slurm, its login node a real sshd on loopback.

1. Submit -> `started` through runyard (from the submit request to the `started` event a subscriber
   receives; the code snapshot is made and uploaded before), against a bare `sbatch` plus a `squeue`
   polling loop at the same interval over the same kind of SSH connection, in the same run
   (target: at most 1.2x).
2. A line written by the job -> seen by a `logs -f` client: p50 and p99 (target: p99 under 1 s).
3. Controller calls per minute (squeue, sacct, scontrol, sbatch, scancel, sinfo: counted by wrappers
   on the login node's PATH) with 1 job of this daemon queued against 1,000 queued (held: they stay
   PENDING), in the steady state after the submits (target: equal; one batched squeue per cluster).

Run: flock /tmp/runyard-bench.lock .venv/bin/python bench/bench_slurm.py [--quick] [--queued N]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import asyncssh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import save  # noqa: E402
from runyard.daemon.snapshots import Snapshot, snapshot_commit  # noqa: E402
from runyard.protocol import Client  # noqa: E402
from runyard.protocol.messages import Event  # noqa: E402
from tests.conftest import Daemon, make_repo, step_yaml, submit_repo, wait_for_status  # noqa: E402
from tests.pool import SshHost, make_client_key, wait_for_host  # noqa: E402
from tests.test_slurm import cancel_jobs, cluster_config  # noqa: E402

POLL = 0.5
STEPS = (step_yaml("short", "sleep 0.2", extra="environment: hpc")
         + step_yaml("ticks", "python3 ticks.py", extra="environment: hpc")
         + step_yaml("held", "sleep 1", extra="environment: held"))
TOOLS = ("squeue", "sacct", "scontrol", "sbatch", "scancel", "sinfo")
COUNTER = """#!/bin/sh
echo {tool} >> "$(dirname "$0")/controller.calls"
exec /usr/bin/{tool} "$@"
"""
# A second pool on the same cluster whose jobs Slurm holds (sbatch --hold): they stay PENDING, as
# many as the bench asks, with no cap of runyard's in the way.
HELD = """
[[clusters]]
name = "held"
address = "127.0.0.1"
port = {port}
user = "root"
identity = "{key}"
work_dir = "{work}"
partition = "gpu"
sbatch_args = ["--hold"]
max_jobs = 5000
poll_seconds = {poll}
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


async def runyard_start(client: Client, snap: Snapshot, step: str) -> float:
    """From the submit request to the `started` event, as a subscriber of the daemon's events sees it."""
    seen: dict[int, float] = {}
    changed = asyncio.Event()
    subscribed = asyncio.Event()

    async def watch() -> None:
        async for event in client.events(subscribed=subscribed.set):
            if isinstance(event, Event) and event.status in ("started", "complete", "error"):
                seen.setdefault(event.execution_id, time.perf_counter())
                changed.set()

    watcher = asyncio.create_task(watch())
    try:
        await subscribed.wait()
        t0 = time.perf_counter()
        e = await client.submit(step=step, snapshot=snap.id, commit=snap.commit)
        while e.id not in seen:
            changed.clear()
            await changed.wait()
        await wait_for_status(client, e.id)
        return seen[e.id] - t0
    finally:
        watcher.cancel()


def calls(path: Path) -> Counter[str]:
    return Counter(path.read_text().split()) if path.exists() else Counter()


async def per_minute(path: Path, seconds: float) -> dict[str, float]:
    before = calls(path)
    await asyncio.sleep(seconds)
    after = calls(path)
    return {tool: (after[tool] - before[tool]) * 60 / seconds for tool in TOOLS}


async def main(rounds: int, queued: int, window: float) -> None:
    subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib.sh; ensure_slurm"], check=True)
    cancel_jobs("runyard-")
    tmp = Path(tempfile.mkdtemp(prefix="bench-slurm-"))
    key = make_client_key(tmp)
    login = SshHost("login", tmp / "login", key, None)
    login.prepare()
    with (login.root / "sshd_config").open("a") as config:
        config.write("MaxSessions 64\n")  # as the README asks of a login node
    login.start()
    known = tmp / "known_hosts"
    known.write_text(login.known_hosts_line())
    (login.root / "work").mkdir(exist_ok=True)
    for tool in TOOLS:
        wrapper = login.root / "bin" / tool
        wrapper.write_text(COUNTER.format(tool=tool))
        wrapper.chmod(0o755)
    counted = login.root / "bin" / "controller.calls"
    held = HELD.format(port=login.port, key=login.client_key, work=login.root / "work", poll=POLL)
    daemon = Daemon(root=Path(tempfile.mkdtemp(prefix="ryb-", dir="/tmp")), local_extra="enabled = false",
                    extra_config=cluster_config(login, known).replace("poll_seconds = 0.3", f"poll_seconds = {POLL}")
                    .replace("max_jobs = 3", "max_jobs = 200") + held)
    ticks = "import time\nfor i in range(60):\n    print(time.time(), flush=True)\n    time.sleep(0.05)\n"
    repo = make_repo(tmp / "repo", {"valohai.yaml": STEPS, "ticks.py": ticks})
    daemon.start()
    conn = await asyncssh.connect("127.0.0.1", port=login.port, username="root", client_keys=[str(key)],
                                  known_hosts=str(known))
    client = await Client.connect(daemon.socket, client_name="bench")
    results: dict[str, object] = {"load_before": Path("/proc/loadavg").read_text().split()[:3]}
    try:
        await wait_for_host(client, "hpc", {"ready"})
        await wait_for_host(client, "held", {"ready"})
        snap = snapshot_commit(repo, "HEAD")
        if not await client.snapshot_has(snap.id):
            await client.snapshot_put(snap.id, snap.data)
        ours, bare = [], []
        for _ in range(rounds):
            ours.append(await runyard_start(client, snap, "short"))
            bare.append(await bare_start(conn, login.root / "work"))
        results |= {"start_runyard_s": sorted(ours), "start_bare_s": sorted(bare),
                    "start_runyard_median_s": statistics.median(ours), "start_bare_median_s": statistics.median(bare),
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
                    "line_to_follower_p99_s": lags[int(len(lags) * 0.99)],
                    "line_to_follower_first_s": lags[-1]}

        await submit_held(client, snap, 1)
        results["calls_per_min_1_queued"] = await per_minute(counted, window)
        t0 = time.perf_counter()
        # Every one submitted and seen pending (held) by a poll since: the steady state.
        await submit_held(client, snap, queued - 1)
        results[f"submit_{queued}_s"] = time.perf_counter() - t0
        pending = subprocess.run(["squeue", "--me", "-h", "-t", "PD", "-o", "%j"], capture_output=True,
                                 text=True).stdout.split()
        results["queued_held_jobs"] = sum(1 for name in pending if name.startswith(f"runyard-{daemon.daemon_id}-held-"))
        results[f"calls_per_min_{queued}_queued"] = await per_minute(counted, window)
    finally:
        await client.close()
        conn.close()
        cancel_jobs(f"runyard-{daemon.daemon_id}-")
        if daemon.process is not None:
            daemon.process.kill()
        login.kill()
    results["load_after"] = Path("/proc/loadavg").read_text().split()[:3]
    save("slurm", results)


async def submit_held(client: Client, snap: Snapshot, count: int) -> None:
    """Submit ``count`` held jobs; return once each execution has shown Slurm's reason for holding it
    (its job submitted, and polled since)."""
    held: set[int] = set()
    changed = asyncio.Event()
    subscribed = asyncio.Event()

    async def watch() -> None:
        async for event in client.events(subscribed=subscribed.set):
            if isinstance(event, Event) and event.kind == "pending" and "JobHeld" in (event.reason or ""):
                held.add(event.execution_id)
                changed.set()

    watcher = asyncio.create_task(watch())
    try:
        await subscribed.wait()
        ids = {(await client.submit(step="held", snapshot=snap.id, commit=snap.commit)).id for _ in range(count)}
        while not ids <= held:
            changed.clear()
            await changed.wait()
    finally:
        watcher.cancel()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 start rounds, not 15, and 100 jobs queued")
    parser.add_argument("--queued", type=int, default=0, help="jobs queued for the controller-call count (1000)")
    parser.add_argument("--window", type=float, default=30.0, help="seconds each controller-call count lasts")
    args = parser.parse_args()
    asyncio.run(main(5 if args.quick else 15, args.queued or (100 if args.quick else 1000), args.window))
