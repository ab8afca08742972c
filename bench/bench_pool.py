"""Pool benchmarks (issue 3).

1. The scheduler alone: 10,000 queued executions over 200 hosts of 8 GPUs,
   in-process: placement decisions per second (target: at least 5,000).
2. Submit -> `started` on a host reached over SSH (a real sshd on loopback),
   against a bare aiodocker create+start through the same forwarded socket
   (target: at most 1.2x).
3. Daemon memory with 200 connected hosts (asyncssh servers in this process):
   the daemon's RSS with them, less its RSS with none, per host (target: under 2 MB).

Run: .venv/bin/python bench/bench_pool.py [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import aiodocker
import asyncssh

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import save  # noqa: E402
from runyard.daemon.scheduler import Capacity, Demand, place  # noqa: E402
from runyard.protocol import Client  # noqa: E402
from tests.conftest import BASE_IMAGE, Daemon, make_repo, step_yaml, submit_repo  # noqa: E402
from tests.pool import start_lone_host, wait_for_host  # noqa: E402


def bench_scheduler(queued: int = 10_000, hosts: int = 200, passes: int = 5) -> dict[str, float]:
    rng = random.Random(7)
    pools = ["a100", "h100", "v100", "l40"]
    queue = [Demand(i, rng.choice([0, 0, 0, 1]), float(i), rng.choice(pools),
                    gpus=rng.choice([1, 1, 1, 2, 2, 4, 8]), cpus=rng.choice([2, 4, 8]),
                    memory_mb=rng.choice([8000, 16000, 64000])) for i in range(queued)]

    def fresh() -> list[Capacity]:
        return [Capacity(name=f"h{i}", pool=pools[i % len(pools)], total_gpus=8, total_cpus=64,
                         total_memory_mb=512_000, free_gpus=[f"GPU-{i}-{g}" for g in range(8)], free_cpus=64,
                         free_memory_mb=512_000, free_slots=None) for i in range(hosts)]

    # First pass: an empty pool fills up. Later passes: a full pool where one host frees
    # (what happens on every "finished" event), with the big ones' reservations in force.
    timings = []
    placed_first = 0
    for n in range(passes):
        capacities = fresh()
        if n > 0:
            place(queue, capacities, now=1e6, reserve_after=300)  # fill it
            capacities[n].free_gpus = [f"GPU-{n}-{g}" for g in range(8)]
            capacities[n].free_cpus, capacities[n].free_memory_mb = 64, 512_000
        t0 = time.perf_counter()
        placements = place(queue, capacities, now=1e6, reserve_after=300)
        timings.append(time.perf_counter() - t0)
        if n == 0:
            placed_first = len(placements)
    return {"queued": queued, "hosts": hosts, "placed_on_empty_pool": placed_first,
            "empty_pool_decisions_per_s": queued / timings[0],
            "full_pool_decisions_per_s": queued / statistics.median(timings[1:])}


async def bench_ssh_start(tmp: Path, rounds: int) -> dict[str, float]:
    host, _, known = start_lone_host(tmp)
    daemon = Daemon(root=Path(tempfile.mkdtemp(prefix="ryb-", dir="/tmp")), local_extra="enabled = false",
                    extra_config=f'[ssh]\nknown_hosts = "{known}"\n' + host.config(pool="default"))
    repo = make_repo(tmp / "repo", {"valohai.yaml": step_yaml("short", "sleep 0.2")})
    daemon.start()
    bare: list[float] = []
    ours: list[float] = []
    try:
        async with await Client.connect(daemon.socket) as client:
            await wait_for_host(client, "gpu-01", {"ready"})
            # The daemon's own forward of the host's Docker socket over its SSH connection.
            forwarded = daemon.data_dir / "hosts" / "gpu-01.sock"
            docker = aiodocker.Docker(url=f"unix://{forwarded}")
            try:
                for _ in range(rounds):
                    t0 = time.perf_counter()
                    container = await docker.containers.create(
                        {"Image": BASE_IMAGE, "Cmd": ["sleep", "0.2"], "HostConfig": {"Init": True}})
                    await container.start()
                    bare.append(time.perf_counter() - t0)
                    await container.delete(force=True)

                    events = client.events()
                    waiter = asyncio.ensure_future(_next_started(events))
                    await asyncio.sleep(0)  # let the subscription register before submitting
                    t0 = time.perf_counter()
                    execution = await submit_repo(client, repo, "short")
                    assert await waiter == execution.id
                    ours.append(time.perf_counter() - t0)
                    await events.aclose()
            finally:
                await docker.close()
    finally:
        daemon.terminate()
        daemon.cleanup_containers()
        host.kill()
        shutil.rmtree(daemon.root, ignore_errors=True)
    return {"bare_create_start_over_ssh_ms": statistics.median(bare) * 1000,
            "submit_to_started_over_ssh_ms": statistics.median(ours) * 1000,
            "ratio": statistics.median(ours) / statistics.median(bare)}


async def _next_started(events: object) -> int:
    async for event in events:  # type: ignore[attr-defined]
        if getattr(event, "kind", "") == "status" and getattr(event, "status", None) == "started":
            return int(event.execution_id)
    raise AssertionError("no started event")


async def _serve_commands(process: asyncssh.SSHServerProcess[bytes]) -> None:
    """Run each command with the local shell, as sshd would (no streaming: the daemon only asks short ones)."""
    local = await asyncio.create_subprocess_shell(
        process.command or "true", stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE)
    out, err = await local.communicate()
    process.stdout.write(out)
    process.stderr.write(err)
    process.exit(local.returncode or 0)


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


async def bench_memory(tmp: Path, count: int) -> dict[str, float]:
    tmp = tmp / "memory"
    tmp.mkdir()
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    client_key = asyncssh.generate_private_key("ssh-ed25519")
    (tmp / "client_key").write_bytes(client_key.export_private_key())
    (tmp / "authorized_keys").write_bytes(client_key.export_public_key())
    servers = []
    for _ in range(count):
        server = await asyncssh.create_server(
            asyncssh.SSHServer, "127.0.0.1", 0, server_host_keys=[host_key],
            authorized_client_keys=str(tmp / "authorized_keys"), process_factory=_serve_commands,
            encoding=None)
        servers.append(server)
    ports = [s.sockets[0].getsockname()[1] for s in servers]
    public = host_key.export_public_key().decode().split()
    (tmp / "known_hosts").write_text("".join(f"[127.0.0.1]:{p} {public[0]} {public[1]}\n" for p in ports))
    hosts = "".join(textwrap.dedent(f"""\
        [[hosts]]
        name = "h{i:03d}"
        address = "127.0.0.1"
        port = {port}
        identity = "{tmp / 'client_key'}"
        runtime = "process"
        work_dir = "{tmp / 'work'}"
        gpus = 8
        """) for i, port in enumerate(ports))
    ssh = f'[ssh]\nknown_hosts = "{tmp / "known_hosts"}"\ninventory_seconds = 3600\n'
    results: dict[str, float] = {}
    try:
        for label, extra in (("none", ssh), ("all", ssh + hosts)):
            daemon = Daemon(root=Path(tempfile.mkdtemp(prefix="ryb-", dir="/tmp")), local_extra="enabled = false",
                            extra_config=extra)
            daemon.start()
            try:
                async with await Client.connect(daemon.socket) as client:
                    if label == "all":
                        t0 = time.perf_counter()
                        for i in range(count):
                            await wait_for_host(client, f"h{i:03d}", {"ready"}, timeout=300)
                        results["all_ready_s"] = time.perf_counter() - t0
                    await client.hosts()
                    await asyncio.sleep(2)  # settle: let startup garbage be collected before reading RSS
                    assert daemon.process is not None
                    results[f"rss_{label}_mib"] = rss_kib(daemon.process.pid) / 1024
            finally:
                daemon.terminate()
                shutil.rmtree(daemon.root, ignore_errors=True)
    finally:
        for server in servers:
            server.close()
    results["hosts"] = count
    results["per_host_mib"] = (results["rss_all_mib"] - results["rss_none_mib"]) / count
    return results


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="fewer rounds")
    args = parser.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ryb-pool-", dir="/tmp"))
    try:
        results = {
            "scheduler": bench_scheduler(),
            "submit_to_started_ssh": await bench_ssh_start(tmp, 5 if args.quick else 15),
            "memory": await bench_memory(tmp, 200),
        }
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save("pool", results)
    s, t, m = results["scheduler"], results["submit_to_started_ssh"], results["memory"]
    print(f"\nscheduler: {s['empty_pool_decisions_per_s']:,.0f} decisions/s on an empty pool, "
          f"{s['full_pool_decisions_per_s']:,.0f} on a full one (target >= 5,000)")
    print(f"submit->started over ssh {t['submit_to_started_over_ssh_ms']:.1f} ms vs bare create+start through "
          f"the same forward {t['bare_create_start_over_ssh_ms']:.1f} ms: {t['ratio']:.2f}x (target <= 1.2x)")
    print(f"memory: {m['per_host_mib']:.2f} MiB per connected host over {m['hosts']:.0f} hosts (target < 2 MB)")


if __name__ == "__main__":
    asyncio.run(main())
