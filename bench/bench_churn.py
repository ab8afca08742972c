"""The full daemon's scheduling at scale, while executions end and start (issue 17).

10,000 queued executions over 200 hosts of 8 GPUs (4 pools, mixed sizes), five owners of
unequal shares (one a 6,000-run sweep), ``[quotas] max_active_per_user = 3000`` so that
3,000 more wait as ``created`` for their owner's quota. The daemon's own parts run: Core
with its scheduling loop (``_schedule_forever``: woken by every end, passes spaced when
they grow), the fair walk (daemon/fairqueue.py), the quota releases, the real Host objects
(their inventory set as a scan would, no SSH) and the SQLite store. Only the runner is a
stand-in: it records ``started``, holds its host for 1-5 s, records ``complete`` through the
same store calls the real Runner makes, and its owner submits a replacement (Core._create),
so the queue stays at its size while about 200-300 executions end and start every second.

Figures:

- the first pass (the empty pool fills), against ``scheduler.place`` alone over the same
  queue and hosts in the same run: placements recorded per second;
- under churn: every pass's duration (p50, p99, max), the placements made, and placements
  per second of pass time; the scheduler's own share (scheduler.place) of each pass.

Target: >= 5,000 placements/s, a pass under 20 ms at p99.

Run: .venv/bin/python bench/bench_churn.py [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import random
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import save  # noqa: E402
from runyard.daemon import core as core_module  # noqa: E402
from runyard.daemon.config import parse_config  # noqa: E402
from runyard.daemon.core import Core  # noqa: E402
from runyard.daemon.hosts import Host, all_settings  # noqa: E402
from runyard.daemon.inventory import Gpu, Inventory  # noqa: E402
from runyard.daemon.record import COLUMNS, ExecutionRow, column_values  # noqa: E402
from runyard.daemon.runner import RunnerServices  # noqa: E402
from runyard.daemon.scheduler import place  # noqa: E402
from runyard.daemon.store import Store  # noqa: E402

POOLS = ["a100", "h100", "v100", "l40"]
NAMES = [c for c in COLUMNS if c != "id"]
OWNERS = {"alice": 6000, "bob": 3000, "carol": 2000, "dave": 1500, "erin": 500}
QUOTA = 3000
HOSTS = 200


def config_text(tmp: Path) -> str:
    hosts = "".join(f'[[hosts]]\nname = "h{i}"\naddress = "192.0.2.1"\npool = "{POOLS[i % len(POOLS)]}"\n'
                    for i in range(HOSTS))
    return (f'[daemon]\nsocket = "{tmp}/s"\ndata_dir = "{tmp}/data"\nlog_level = "warning"\n'
            f'[local]\nenabled = false\n[quotas]\nmax_active_per_user = {QUOTA}\n{hosts}')


def new_row(rng: random.Random, owner: str) -> ExecutionRow:
    return ExecutionRow(step="train", owner=owner, owner_uid=1000, image="img", command="true",
                        snapshot="0" * 64, priority=rng.choice([0, 0, 0, 1]),
                        resources={"pool": rng.choice(POOLS), "gpus": rng.choice([1, 1, 1, 2, 2, 4, 8]),
                                   "cpus": rng.choice([2, 4, 8]), "memory_mb": rng.choice([8000, 16000, 64000])})


async def fill(store: Store, rng: random.Random) -> None:
    """The owners' submissions, as `runyard run` and the quotas leave them (setup only, one transaction):
    each owner's first QUOTA queued, the rest created and waiting for the quota."""
    order = [o for o, n in OWNERS.items() for _ in range(n)]
    rng.shuffle(order)
    seen: dict[str, int] = {}
    async with store._tx():
        for i, owner in enumerate(order):
            seen[owner] = seen.get(owner, 0) + 1
            row = new_row(rng, owner)
            row.created_at = f"2026-12-01T00:{i // 6000 % 60:02d}:{i // 100 % 60:02d}.{i:06d}Z"
            if seen[owner] > QUOTA:
                row.status, row.reason = "created", "quota"
            await store.db.execute(f"INSERT INTO executions ({', '.join(NAMES)}) VALUES "
                                   f"({','.join('?' * len(NAMES))})", column_values(row, NAMES))


class Churn:
    """What the stand-in runners share: the core, the figures, and whether churn is on."""

    def __init__(self, core: Core, rng: random.Random) -> None:
        self.core = core
        self.rng = rng
        self.placed = 0
        self.ended = 0
        self.on = asyncio.Event()
        self.started = 0
        self.all_started = asyncio.Event()  # every runner placed so far recorded started
        self.first_pass = asyncio.Event()
        self.hold = (1.0, 5.0)  # seconds an execution holds its host, uniform


CHURN: Churn | None = None


class StandInRunner:
    """Core._spawn's Runner, less the host: the same store calls for started and complete."""

    def __init__(self, services: RunnerServices, row: ExecutionRow, *, just_placed: bool = False) -> None:
        self.s, self.row = services, row
        assert CHURN is not None
        CHURN.placed += 1

    async def _record(self, status: str) -> None:
        result = await self.s.store.transition(self.row.id, status)
        assert result is not None, (self.row.id, status)
        self.row = result[0]
        self.s.track(result[0])
        self.s.publish(result[1])

    async def run(self) -> None:
        churn = CHURN
        assert churn is not None
        await self._record("started")
        churn.started += 1
        if churn.started == churn.placed:
            churn.all_started.set()
        await churn.on.wait()
        await asyncio.sleep(churn.rng.uniform(*churn.hold))
        await self._record("complete")
        await self.s.release_log(self.row.id)
        churn.ended += 1
        await churn.core._create(new_row(churn.rng, self.row.owner))

    async def stop(self, by: str, reason: str | None) -> bool | None:
        return None


async def run(tmp: Path, seconds: float, hold: tuple[float, float]) -> dict[str, Any]:
    global CHURN
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = parse_config(config_text(tmp))
    store = await Store.open(tmp / "db.sqlite3")
    rng = random.Random(7)
    core = Core(config, store)
    CHURN = churn = Churn(core, rng)
    churn.hold = hold
    scheduler_s = 0.0

    def timed_place(*args: Any, **kwargs: Any) -> Any:
        nonlocal scheduler_s
        t0 = time.perf_counter()
        try:
            return place(*args, **kwargs)
        finally:
            scheduler_s += time.perf_counter() - t0

    passes: list[tuple[float, int, float]] = []  # (seconds, placed, of which scheduler.place)
    real_place = core._place
    # Where a pass's time goes, summed over the passes under churn (wall time of each part, waits included).
    parts: dict[str, float] = {}
    in_pass: asyncio.Task[Any] | None = None  # the pass's own task: other tasks' waits are not its

    def part(name: str, fn: Any) -> Any:
        async def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await fn(*args, **kwargs)
            finally:
                if in_pass is asyncio.current_task():
                    parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0
        return timed

    def sync_part(name: str, fn: Any) -> Any:
        def timed(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                if in_pass is asyncio.current_task():
                    parts[name] = parts.get(name, 0.0) + time.perf_counter() - t0
        return timed

    core._queue_lock.acquire = part("waiting for the queue lock", core._queue_lock.acquire)  # type: ignore[method-assign]
    core._release = part("quota releases (store)", core._release)  # type: ignore[method-assign]
    store.place = part("recording placements (store, waits included)", store.place)  # type: ignore[method-assign]
    core.capacities = sync_part("host capacities", core.capacities)  # type: ignore[method-assign]
    core._spawn = sync_part("handing to runners", core._spawn)  # type: ignore[method-assign]
    core.track = sync_part("in-memory queue updates", core.track)  # type: ignore[method-assign]

    async def timed_pass() -> None:
        nonlocal scheduler_s, in_pass
        placed, scheduler_s = churn.placed, 0.0
        in_pass = asyncio.current_task()
        t0 = time.perf_counter()
        try:
            await real_place()
        finally:
            in_pass = None
        passes.append((time.perf_counter() - t0, churn.placed - placed, scheduler_s))
        churn.first_pass.set()
        parts["scheduler.place (fair walk and decisions)"] = parts.get(
            "scheduler.place (fair walk and decisions)", 0.0) + scheduler_s

    transactions = [0, 0.0]  # write transactions, seconds the store's lock was held by them
    real_tx = store._tx

    @contextlib.asynccontextmanager
    async def counted_tx() -> Any:
        async with real_tx():
            t0 = time.perf_counter()
            try:
                yield
            finally:
                transactions[0] += 1
                transactions[1] += time.perf_counter() - t0

    store._tx = counted_tx  # type: ignore[method-assign]
    saved = core_module.Runner, core_module.place
    core_module.Runner, core_module.place = StandInRunner, timed_place  # type: ignore[assignment,misc]
    core._place = timed_pass  # type: ignore[method-assign]
    try:
        await fill(store, rng)
        for settings in all_settings(config):
            host = Host(settings, daemon_id=store.daemon_id, ssh=config.ssh, sockets_dir=tmp / "hosts",
                        on_change=lambda _: None)
            # What a scan of an 8-GPU machine leaves; the link as a connected host's.
            host.inventory = Inventory(cpus=64, memory_mb=512_000, memory_available_mb=None, gpus=tuple(
                Gpu(index=g, uuid=f"GPU-{host.name}-{g}", name="A100", memory_total_mb=81920,
                    memory_used_mb=0, utilization=0) for g in range(8)))
            host.link = "ready"
            core.hosts[host.name] = host
        for row in await store.active():
            core.track(row)
        core.quotas.all_waiting()
        queued = len(core._demands)
        waiting = sum(1 for r in core.active.values() if r.status == "created")
        # Baseline, same run: the scheduler alone over the same queue and hosts.
        demands = [core._demands[i] for _, _, i in core._order]
        t0 = time.perf_counter()
        alone = place(demands, core.capacities([]), now=time.time(), reserve_after=300)
        alone_s = time.perf_counter() - t0
        core._scheduler_task = asyncio.create_task(core._schedule_forever())
        core._wake.set()
        await churn.first_pass.wait()
        first = passes[0]
        await churn.all_started.wait()
        passes.clear()
        parts.clear()
        churn.on.set()
        started_at, placed_before, ended_before = time.perf_counter(), churn.placed, churn.ended
        cpu_before, tx_before = time.process_time(), transactions[0]
        await asyncio.sleep(seconds)
        wall = time.perf_counter() - started_at
        cpu_share = (time.process_time() - cpu_before) / wall
        tx_per_s = (transactions[0] - tx_before) / wall
        placed, ended = churn.placed - placed_before, churn.ended - ended_before
        churned = list(passes)
        statuses = {s: sum(1 for r in core.active.values() if r.status == s) for s in ("created", "queued", "started")}
    finally:
        core_module.Runner, core_module.place = saved  # type: ignore[misc]
        tasks = [t for t in [core._scheduler_task, *core._runner_tasks.values(), *core._background] if t]
        for task in tasks:
            task.cancel()
        with contextlib.suppress(Exception):
            await asyncio.gather(*tasks, return_exceptions=True)
        await store.close()
        shutil.rmtree(tmp, ignore_errors=True)
    durations = sorted(p[0] for p in churned)
    with_placements = [p for p in churned if p[1]]
    pass_time = sum(p[0] for p in churned)

    def pct(q: float) -> float:
        return durations[min(len(durations) - 1, int(len(durations) * q))] * 1000

    return {
        "queued": queued, "waiting_for_quota": waiting,
        "first_pass": {"placed": first[1], "seconds": round(first[0], 4),
                       "placements_per_s": round(first[1] / first[0]),
                       "scheduler_alone_s": round(alone_s, 4), "scheduler_alone_placed": len(alone),
                       "ratio_to_scheduler_alone": round(first[0] / alone_s, 2)},
        "churn": {"seconds": round(wall, 1), "ended": ended, "placed": placed, "passes": len(churned),
                  "passes_placing": len(with_placements),
                  "pass_ms": {"p50": round(pct(0.5), 2), "p99": round(pct(0.99), 2),
                              "max": round(durations[-1] * 1000, 2)},
                  "placements_per_s_of_pass_time": round(sum(p[1] for p in churned) / pass_time) if pass_time else 0,
                  "scheduler_share_of_pass_time": round(sum(p[2] for p in churned) / pass_time, 3) if pass_time else 0,
                  "placements_per_s_wall": round(placed / wall),
                  "store_write_transactions_per_s": round(tx_per_s),
                  "bench_process_cpu_share": round(cpu_share, 2),
                  "at_end": statuses,
                  "pass_time_by_part_s": {k: round(v, 3) for k, v in sorted(parts.items(), key=lambda kv: -kv[1])},
                  "pass_time_total_s": round(pass_time, 3)},
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="how long executions end and start")
    parser.add_argument("--hold", default="5,15,1,5",
                        help="pairs of min,max seconds an execution holds its host: one churn run per pair")
    args = parser.parse_args()
    numbers = [float(x) for x in args.hold.split(",")]
    results: dict[str, Any] = {"runs": []}
    for low, high in zip(numbers[::2], numbers[1::2], strict=True):
        tmp = Path(tempfile.mkdtemp(prefix="ryb-churn-", dir="/tmp"))
        results["runs"].append({"hold_s": [low, high], **await run(tmp, args.seconds, (low, high))})
    save("churn", results)
    for r in results["runs"]:
        report(r)


def report(results: dict[str, Any]) -> None:
    f, c = results["first_pass"], results["churn"]
    print(f"\nholding {results['hold_s'][0]:g}-{results['hold_s'][1]:g} s:")
    print(f"first pass: {f['placed']} placed in {f['seconds'] * 1000:.0f} ms = {f['placements_per_s']:,} placements/s "
          f"({f['ratio_to_scheduler_alone']}x the scheduler alone); target >= 5,000/s")
    print(f"churn: {c['ended']} ended and {c['placed']} placed in {c['seconds']} s over {c['passes']} passes; "
          f"pass p50 {c['pass_ms']['p50']} ms, p99 {c['pass_ms']['p99']} ms, max {c['pass_ms']['max']} ms "
          f"(target p99 < 20 ms); {c['placements_per_s_of_pass_time']:,} placements per second of pass time")


if __name__ == "__main__":
    asyncio.run(main())
