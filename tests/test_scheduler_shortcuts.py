"""scheduler.place's shortcuts (requests dominated by one that did not fit, pools whose hosts are all
reserved, the walk's early end) never change a decision: against the rule written out plainly."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from runyard.daemon.scheduler import Capacity, Demand, Placement, order, place


def rule(queue: list[Demand], hosts: list[Capacity], now: float, reserve_after: float) -> list[Placement]:
    """scheduler.py's docstring, one request at a time, nothing skipped."""
    placements = []
    for d in order(queue):
        candidates = [h for h in hosts if h.accepting and (d.pool is None or h.pool == d.pool)]
        fitting = [h for h in candidates if h.reserved_by in (None, d.execution_id) and h.fits(d)]
        if fitting:
            best = min(fitting, key=lambda h: (len(h.free_gpus), h.free_cpus))
            placements.append(Placement(d.execution_id, best.name, best.take(d)))
        elif now - d.submitted >= reserve_after:
            free = [h for h in candidates if h.reserved_by is None and h.could_ever_fit(d)]
            if free:
                max(free, key=lambda h: (len(h.free_gpus), h.free_cpus)).reserved_by = d.execution_id
    return placements


hosts_st = st.lists(st.tuples(st.sampled_from(["a", "b"]), st.integers(0, 4), st.sampled_from([4.0, 8.0]),
                              st.integers(0, 3), st.one_of(st.none(), st.integers(0, 2)), st.booleans()),
                    min_size=1, max_size=6)
queue_st = st.lists(st.tuples(st.integers(0, 1), st.integers(0, 100), st.sampled_from([None, "a", "b", "c"]),
                              st.integers(0, 5), st.sampled_from([0.0, 2.0, 4.0, 9.0]),
                              st.sampled_from([0, 8000, 16000])), max_size=25)


def build(spec: list[tuple[str, int, float, int, int | None, bool]]) -> list[Capacity]:
    hosts = []
    for i, (pool, gpus, cpus, busy, slots, accepting) in enumerate(spec):
        ids = [f"g{i}-{g}" for g in range(gpus)]
        hosts.append(Capacity(name=f"h{i}", pool=pool, total_gpus=gpus, total_cpus=cpus, total_memory_mb=16000,
                              free_gpus=ids[min(busy, gpus):], free_cpus=cpus, free_memory_mb=16000,
                              free_slots=slots, accepting=accepting))
    return hosts


@settings(max_examples=400, deadline=None)
@given(hosts_st, queue_st, st.sampled_from([0.0, 50.0, 1e9]))
def test_place_decides_as_the_plain_rule(hosts: list[tuple[str, int, float, int, int | None, bool]],
                                         queue: list[tuple[int, int, str | None, int, float, int]],
                                         reserve_after: float) -> None:
    demands = [Demand(i + 1, priority, float(submitted), pool, gpus=gpus, cpus=cpus, memory_mb=memory)
               for i, (priority, submitted, pool, gpus, cpus, memory) in enumerate(queue)]
    mine, plain = build(hosts), build(hosts)
    got = place(demands, mine, now=100.0, reserve_after=reserve_after)
    want = rule(demands, plain, 100.0, reserve_after)
    assert got == want
    # (Reservations left once no host can take anything are not compared: they are made afresh on
    # every pass, and only hold hosts back within it.)
    assert [(h.free_gpus, h.free_cpus, h.free_slots) for h in mine] == [(h.free_gpus, h.free_cpus, h.free_slots)
                                                                       for h in plain]
