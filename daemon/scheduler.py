"""Placement of queued executions on hosts: pure functions over plain data, no I/O.

The rule (also in the README):

1. Queued executions are considered in priority order (higher first). Within a
   priority, the owner with the fewest executions running (placed) goes first,
   then the oldest submitted; each placement counts at once, so owners take turns.
   One user's 1,000-child sweep thus never holds the lab while another user's
   single run waits: the run takes the next free slot. (Per-user quotas, in
   daemon/quotas.py, act before this: they decide what is queued at all.)
2. Each goes to a host of its pool that is ready and has enough free GPUs,
   CPUs, memory and execution slots. Among those it takes the tightest fit
   (fewest free GPUs, then fewest free CPUs), which keeps large holes open for
   large executions.
3. One that fits nowhere lets later, smaller ones fill gaps, unless it has
   waited at least ``reserve_after`` seconds: then it reserves the host of its
   pool that could hold it and has the most free GPUs, and nothing behind it in
   the queue is placed on that host until it starts. So a 4-GPU execution
   cannot be starved by a stream of 1-GPU ones; at worst it waits for the
   executions already running on its reserved host.
4. The members of a distributed task (a group) are placed all in one pass or
   not at all, when the walk reaches the first of them, each by rule 2; a
   group none of whose hosts can hold it whole places nobody, so a half-placed
   group never holds GPUs waiting for the rest. Past ``reserve_after`` each
   member reserves a host as in rule 3, and a host reserved by a member takes
   any member of its group.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, MutableMapping, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class Demand:
    execution_id: int
    priority: int
    submitted: float  # seconds since the epoch; the queue order within a priority
    pool: str | None  # None: any host
    gpus: int = 0
    cpus: float = 0.0
    memory_mb: int = 0
    owner: str = ""  # whose: the fair order takes turns between owners
    # A distributed task's member: its group (the task id) is placed whole or not at all (rule 4).
    group: int | None = None
    group_size: int = 0


@dataclass(slots=True)
class Capacity:
    """A host as the scheduler sees it: what it has and what is still free."""

    name: str
    pool: str
    total_gpus: int
    total_cpus: float
    total_memory_mb: int
    free_gpus: list[str]  # ids (UUIDs) in index order
    free_cpus: float
    free_memory_mb: int
    free_slots: int | None  # None: no limit on the number of executions
    accepting: bool = True  # ready and not draining
    reserved_by: int | None = field(default=None)

    def fits(self, d: Demand) -> bool:
        return (
            len(self.free_gpus) >= d.gpus
            and self.free_cpus >= d.cpus
            and self.free_memory_mb >= d.memory_mb
            and (self.free_slots is None or self.free_slots >= 1)
        )

    def could_ever_fit(self, d: Demand) -> bool:
        return self.total_gpus >= d.gpus and self.total_cpus >= d.cpus and self.total_memory_mb >= d.memory_mb

    def take(self, d: Demand) -> tuple[str, ...]:
        granted = tuple(self.free_gpus[: d.gpus])
        del self.free_gpus[: d.gpus]
        self.free_cpus -= d.cpus
        self.free_memory_mb -= d.memory_mb
        if self.free_slots is not None:
            self.free_slots -= 1
        return granted


@dataclass(frozen=True, slots=True)
class Placement:
    execution_id: int
    host: str
    gpus: tuple[str, ...]


def order(queue: Iterable[Demand]) -> list[Demand]:
    return sorted(queue, key=lambda d: (-d.priority, d.submitted, d.execution_id))


def place(queue: Iterable[Demand], hosts: Sequence[Capacity], *, now: float,
          reserve_after: float, ordered: bool = False,
          running: MutableMapping[str, int] | None = None,
          groups: Callable[[int], Sequence[Demand]] | None = None) -> list[Placement]:
    """Decide where queued executions go now; ``hosts`` is updated to what remains free.

    ``ordered``: the queue already comes in the rule's order (the daemon walks it fairly,
    daemon/fairqueue.py). ``running``: executions placed per owner, counted up as this places
    (the fair walk reads it). ``groups``: a group's members that may be placed now (rule 4).
    """
    pools: dict[str | None, list[Capacity]] = {None: [h for h in hosts if h.accepting]}
    for h in pools[None]:
        pools.setdefault(h.pool, []).append(h)
    placements: list[Placement] = []
    # Hosts that can still take an execution at all: once none can, the rest of the queue
    # (10,000 entries on a busy day) need not be walked. Reservations only hold hosts back,
    # and are made afresh on every pass.
    open_hosts = sum(1 for h in pools[None] if h.free_slots is None or h.free_slots >= 1)
    # Per pool, the requests already found not to fit (none at least as large as another): any
    # request at least as large as one of them cannot fit either in this pass, which keeps a long
    # full queue cheap to walk.
    hopeless: dict[str | None, list[tuple[int, float, int]]] = {}
    # Per pool, hosts not reserved yet. Once every host of a pool is reserved, nothing later in
    # the queue can be placed there or reserve anything there in this pass (each execution comes
    # once, and its own reservation would have been made at its turn): its requests are skipped,
    # and once every host is reserved the walk ends.
    unreserved: dict[str | None, int] = {p: sum(1 for h in members if h.reserved_by is None)
                                         for p, members in pools.items()}
    tried: set[int] = set()  # groups already placed or found not to fit in this pass
    for d in queue if ordered else order(queue):
        if not open_hosts or not unreserved[None]:
            break
        candidates = pools.get(d.pool, [])
        if not candidates or not unreserved[d.pool]:
            continue
        if d.group is not None:
            if d.group in tried:
                continue
            tried.add(d.group)
            members = groups(d.group) if groups is not None else []
            if len(members) < d.group_size:
                continue  # not all of it is queued (yet): nobody goes
            placed = place_group(members, candidates)
            if placed is None:
                if now - min(m.submitted for m in members) >= reserve_after:
                    for m in members:
                        _reserve(m, candidates, unreserved)
                continue
            placements += placed
            if running is not None:
                running[d.owner] = running.get(d.owner, 0) + len(placed)
            open_hosts = sum(1 for h in pools[None] if h.free_slots is None or h.free_slots >= 1)
            continue
        failed = hopeless.setdefault(d.pool, [])
        if any(d.gpus >= g and d.cpus >= c and d.memory_mb >= m for g, c, m in failed):
            if now - d.submitted >= reserve_after:
                _reserve(d, candidates, unreserved)
            continue
        best: Capacity | None = None
        for h in candidates:
            if h.reserved_by is not None and h.reserved_by != d.execution_id:
                continue
            if h.fits(d) and (best is None or (len(h.free_gpus), h.free_cpus) < (len(best.free_gpus), best.free_cpus)):
                best = h
        if best is not None:
            placements.append(Placement(d.execution_id, best.name, best.take(d)))
            if running is not None:
                running[d.owner] = running.get(d.owner, 0) + 1
            if best.free_slots == 0:
                open_hosts -= 1
            continue
        failed[:] = [f for f in failed if not (f[0] >= d.gpus and f[1] >= d.cpus and f[2] >= d.memory_mb)]
        failed.append((d.gpus, d.cpus, d.memory_mb))
        if now - d.submitted >= reserve_after:
            _reserve(d, candidates, unreserved)
    return placements


def place_group(members: Sequence[Demand], candidates: Sequence[Capacity]) -> list[Placement] | None:
    """Every member on a host (each by the tightest fit), or None and ``candidates`` untouched.

    The tightest fit keeps a group on one host where it fits there: the host a member took is
    then the tightest for the next one, so members share a machine before they span several."""
    ids = {m.execution_id for m in members}
    saved = [(h, list(h.free_gpus), h.free_cpus, h.free_memory_mb, h.free_slots) for h in candidates]
    placed: list[Placement] = []
    for m in members:
        best: Capacity | None = None
        for h in candidates:
            if h.reserved_by is not None and h.reserved_by not in ids:
                continue
            if h.fits(m) and (best is None or (len(h.free_gpus), h.free_cpus) < (len(best.free_gpus), best.free_cpus)):
                best = h
        if best is None:
            for h, gpus, cpus, memory, slots in saved:
                h.free_gpus, h.free_cpus, h.free_memory_mb, h.free_slots = gpus, cpus, memory, slots
            return None
        placed.append(Placement(m.execution_id, best.name, best.take(m)))
    return placed


def _reserve(d: Demand, candidates: list[Capacity], unreserved: dict[str | None, int]) -> None:
    if not unreserved[d.pool]:
        return
    choice: Capacity | None = None
    for h in candidates:
        if h.reserved_by is None and h.could_ever_fit(d) and (
            choice is None or (len(h.free_gpus), h.free_cpus) > (len(choice.free_gpus), choice.free_cpus)
        ):
            choice = h
    if choice is not None:
        choice.reserved_by = d.execution_id
        unreserved[None] -= 1
        unreserved[choice.pool] -= 1


def refusal(d: Demand, hosts: Sequence[Capacity], pools: Iterable[str]) -> str | None:
    """Why no host could ever run ``d``, or None if some host could (or might, once known)."""
    known_pools = sorted(set(pools))
    if d.pool is not None and d.pool not in known_pools:
        return f"no host is in pool {d.pool!r} (pools: {', '.join(known_pools) or 'none'})"
    members = [h for h in hosts if d.pool is None or h.pool == d.pool]
    if not members or any(h.could_ever_fit(d) for h in members):
        return None
    where = f"pool {d.pool!r}" if d.pool else "the pool"
    most_gpus = max(h.total_gpus for h in members)
    most_cpus = max(h.total_cpus for h in members)
    most_memory = max(h.total_memory_mb for h in members)
    return (
        f"no host of {where} could ever run it: it asks for {d.gpus} GPUs, {d.cpus:g} CPUs and "
        f"{d.memory_mb} MB of memory; the largest host there has {most_gpus} GPUs, "
        f"{most_cpus:g} CPUs and {most_memory} MB"
    )
