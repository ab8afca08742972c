"""A scheduling pass with the store (issue 12): 10,000 queued executions over 200 hosts.

The daemon's own pass (Core._place): the queue from the in-memory active set, the
placement decisions, every placement recorded in SQLite (one transaction for the
pass) and the in-memory rows updated, measured against the scheduler alone
(scheduler.place over the same queue and hosts) in the same run. Runners are not
started (each would go on to reach its host); everything before that is the real code.

Two cases: an empty pool filling up, and a full pool where one host frees (what
happens on every "finished" event while a long queue waits).

Target: at least 5,000 queue entries decided per second including the store.

Run: .venv/bin/python bench/bench_scheduling.py
"""

from __future__ import annotations

import asyncio
import random
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import save  # noqa: E402
from runyard.daemon.config import parse_config  # noqa: E402
from runyard.daemon.core import Core  # noqa: E402
from runyard.daemon.record import COLUMNS, ExecutionRow, column_values  # noqa: E402
from runyard.daemon.scheduler import Capacity, place  # noqa: E402
from runyard.daemon.store import Store  # noqa: E402

POOLS = ["a100", "h100", "v100", "l40"]
NAMES = [c for c in COLUMNS if c != "id"]


def hosts(count: int) -> list[Capacity]:
    return [Capacity(name=f"h{i}", pool=POOLS[i % len(POOLS)], total_gpus=8, total_cpus=64,
                     total_memory_mb=512_000, free_gpus=[f"GPU-{i}-{g}" for g in range(8)], free_cpus=64,
                     free_memory_mb=512_000, free_slots=None) for i in range(count)]


async def fill(store: Store, queued: int) -> None:
    """The queue, as `runyard run` leaves it: one row per execution, in one transaction (setup only)."""
    rng = random.Random(7)
    async with store._tx():
        for i in range(queued):
            row = ExecutionRow(step="train", owner="bench", owner_uid=1000, image="img", command="true",
                               snapshot="0" * 64, priority=rng.choice([0, 0, 0, 1]),
                               resources={"pool": rng.choice(POOLS), "gpus": rng.choice([1, 1, 1, 2, 2, 4, 8]),
                                          "cpus": rng.choice([2, 4, 8]),
                                          "memory_mb": rng.choice([8000, 16000, 64000])},
                               created_at=f"2026-12-01T00:{i // 6000 % 60:02d}:{i // 100 % 60:02d}.{i:06d}Z")
            await store.db.execute(f"INSERT INTO executions ({', '.join(NAMES)}) VALUES "
                                   f"({','.join('?' * len(NAMES))})", column_values(row, NAMES))


async def one_case(tmp: Path, queued: int, host_count: int, *, full: bool) -> dict[str, float]:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = parse_config(f'[daemon]\nsocket = "{tmp}/s"\ndata_dir = "{tmp}/data"\n[local]\nenabled = false\n')
    store = await Store.open(tmp / "db.sqlite3")
    try:
        await fill(store, queued)
        core = Core(config, store)
        for row in await store.active():
            core.track(row)
        spawned: list[int] = []
        capacities = hosts(host_count)
        if full:
            # Everything that fits is already placed; then host 1 frees all it had.
            place(list(core._demands.values()), capacities, now=time.time(), reserve_after=1e9)
            capacities[1].free_gpus = [f"GPU-1-{g}" for g in range(8)]
            capacities[1].free_cpus, capacities[1].free_memory_mb = 64, 512_000

        def fresh(_: Any) -> list[Capacity]:
            return [Capacity(**{f: (list(v) if isinstance(v, list) else v)
                                for f, v in ((f, getattr(c, f)) for f in c.__slots__)}) for c in capacities]

        core.capacities = fresh  # type: ignore[method-assign]
        core._spawn = lambda row, just_placed=False: spawned.append(row.id)  # type: ignore[assignment,method-assign,misc,return-value]
        queue = list(core._demands.values())
        t0 = time.perf_counter()
        place(queue, fresh(None), now=time.time(), reserve_after=300)
        alone = time.perf_counter() - t0
        t0 = time.perf_counter()
        await core._place()
        with_store = time.perf_counter() - t0
        recorded = await store.list_executions(statuses=["queued"], limit=queued)
        placed_in_db = sum(1 for r in recorded if r.host is not None)
        assert placed_in_db == len(spawned), (placed_in_db, len(spawned))
        return {"placed": len(spawned), "alone_s": alone, "with_store_s": with_store,
                "decisions_per_s_alone": queued / alone, "decisions_per_s_with_store": queued / with_store,
                "placements_recorded_per_s": len(spawned) / with_store if spawned else 0.0,
                "ratio_to_scheduler_alone": with_store / alone}
    finally:
        await store.close()


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ryb-sched-", dir="/tmp"))
    results: dict[str, Any] = {}
    try:
        for name, full in (("empty_pool", False), ("full_pool_one_host_frees", True)):
            rounds = [await one_case(tmp / name, 10_000, 200, full=full) for _ in range(3)]
            results[name] = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save("scheduling", results)
    for name, r in results.items():
        print(f"{name}: {r['decisions_per_s_with_store']:,.0f} decisions/s with the store "
              f"({r['placed']:.0f} placed, {r['placements_recorded_per_s']:,.0f} placements recorded/s), "
              f"{r['ratio_to_scheduler_alone']:.1f}x the scheduler alone (target >= 5,000 decisions/s)")


if __name__ == "__main__":
    asyncio.run(main())
