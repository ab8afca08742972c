"""Per-user quotas: how many executions a user has in flight, and who waits for room.

An execution in flight is queued, started or stopping. One that would take its owner past
``[quotas]`` is recorded as ``created`` with reason ``quota`` instead of queued, and queued, in
the scheduler's order, as its owner's others end. The counts here follow Core.track, the one
place the daemon's view of active executions changes, so they are exact at every instant; a task's
admission and every created -> queued move (Core.release, the quota pass of Core._place) read them
under Core's queue lock, and Core._create holds its admission in them (``hold``) while recording it.
After a restart they are rebuilt from the store's active rows like the rest of Core's view.
"""

from __future__ import annotations

import bisect
from collections import Counter
from typing import Final

from .config import QuotasSection
from .record import ExecutionRow

QUOTA: Final = "quota"  # the reason of an execution waiting for its owner's quota
_IN_FLIGHT: Final = frozenset({"queued", "started", "stopping"})


def _gpus(row: ExecutionRow) -> int:
    return int(row.resources.get("gpus", 0) or 0)


def _pool(row: ExecutionRow) -> str | None:
    pool = row.resources.get("pool")
    return str(pool) if pool else None


class Quotas:
    def __init__(self, section: QuotasSection) -> None:
        self.section = section
        self.enabled = section.enabled
        self._active: Counter[str] = Counter()  # owner -> executions in flight
        self._pool_active: Counter[tuple[str, str]] = Counter()  # (owner, pool) -> in flight there
        self._gpus: Counter[str] = Counter()  # owner -> GPUs its executions in flight ask for
        self._waiting: dict[str, list[tuple[int, int]]] = {}  # owner -> (-priority, id), waiting for quota
        self.freed: set[str] = set()  # owners with waiting executions whose in-flight count went down

    def moved(self, old: ExecutionRow | None, new: ExecutionRow) -> None:
        """``new`` was recorded; ``old`` is how Core knew it before (None: new to it)."""
        if not self.enabled:
            return
        if old is not None:
            self._count(old, -1)
        if not new.terminal:
            self._count(new, 1)

    def _count(self, row: ExecutionRow, sign: int) -> None:
        owner = row.owner
        if row.status in _IN_FLIGHT:
            self._in_flight(row, sign)
            if sign < 0 and owner in self._waiting:
                self.freed.add(owner)
        elif row.status == "created" and row.reason == QUOTA:
            waiting = self._waiting.setdefault(owner, [])
            key = (-row.priority, row.id)
            at = bisect.bisect_left(waiting, key)
            if sign > 0:
                if at == len(waiting) or waiting[at] != key:
                    waiting.insert(at, key)
            elif at < len(waiting) and waiting[at] == key:
                del waiting[at]
                if not waiting:
                    del self._waiting[owner]

    def _in_flight(self, row: ExecutionRow, sign: int) -> None:
        self._active[row.owner] += sign
        pool = _pool(row)
        if pool is not None:
            self._pool_active[row.owner, pool] += sign
        self._gpus[row.owner] += sign * _gpus(row)

    def hold(self, row: ExecutionRow, sign: int) -> None:
        """Count ``row`` as in flight (1) while its admission is being recorded, or stop (-1) just
        before it is tracked: admissions meanwhile see it."""
        if self.enabled:
            self._in_flight(row, sign)

    def releasable(self, rows: list[ExecutionRow]) -> list[ExecutionRow]:
        """Of ``rows`` (waiting as created), in order, those that may go in flight now, each counted
        as the later ones are looked at: what one transaction may queue together."""
        chosen = []
        for row in rows:
            if self.room(row):
                self._in_flight(row, 1)
                chosen.append(row)
        for row in chosen:  # counted for real by moved() once the store has recorded them
            self._in_flight(row, -1)
        return chosen

    def room(self, row: ExecutionRow, more: int = 0) -> bool:
        """Whether ``row`` may go in flight now, with ``more`` like it already admitted alongside."""
        if not self.enabled:
            return True
        q, owner = self.section, row.owner
        if q.max_active_per_user and self._active[owner] + more + 1 > q.max_active_per_user:
            return False
        if q.max_gpus_per_user and self._gpus[owner] + (more + 1) * _gpus(row) > q.max_gpus_per_user:
            return False
        pool = _pool(row)
        limit = q.pools.get(pool) if pool is not None else None
        return not (limit is not None and limit.max_active_per_user
                    and self._pool_active[owner, pool or ""] + more + 1 > limit.max_active_per_user)

    def admit(self, rows: list[ExecutionRow], queued: int) -> int:
        """Of the first ``queued`` of ``rows`` (one owner, alike), how many may be queued now;
        the others among them are marked to wait for the quota."""
        if not self.enabled:
            return queued
        allowed = 0
        while allowed < queued and self.room(rows[allowed], allowed):
            allowed += 1
        for row in rows[allowed:queued]:
            row.reason = QUOTA
        return allowed

    def refusal(self, row: ExecutionRow) -> str | None:
        """Why ``row`` could never go in flight under the quotas, or None."""
        limit = self.section.max_gpus_per_user
        if self.enabled and limit and _gpus(row) > limit:
            return f"it asks for {_gpus(row)} GPUs and a user may have at most {limit} (quotas.max_gpus_per_user)"
        return None

    def next_waiting(self) -> list[int]:
        """Executions waiting for quota whose owners may have room now, oldest of each owner first."""
        ids: list[int] = []
        for owner in sorted(self.freed):
            ids += [i for _, i in self._waiting.get(owner, [])]
        self.freed.clear()
        return ids

    def all_waiting(self) -> None:
        """After a restart: every owner with waiting executions is looked at once."""
        self.freed.update(self._waiting)
