"""The unplaced queue per owner, walked in scheduler.py's fair order without sorting it.

Each owner's executions are kept in the scheduler's order (-priority, submitted, id), as Core
keeps the whole queue. A pass merges the owners' lists lazily through a heap keyed by
(-priority, executions the owner has running, submitted, id): within a priority the owner with
the fewest running goes first, and the count grows as the pass places. A pass that stops early
(no host has room) costs a heap of the owners, not a walk of the queue.
"""

from __future__ import annotations

import bisect
import heapq
from collections.abc import Container, Iterator, MutableMapping

Key = tuple[int, float, int]  # (-priority, submitted, execution id)


class FairQueue:
    def __init__(self) -> None:
        self._by_owner: dict[str, list[Key]] = {}

    def add(self, owner: str, key: Key) -> None:
        bisect.insort(self._by_owner.setdefault(owner, []), key)

    def remove(self, owner: str, key: Key) -> None:
        keys = self._by_owner.get(owner)
        if keys is None:
            return
        at = bisect.bisect_left(keys, key)
        if at < len(keys) and keys[at] == key:
            del keys[at]
            if not keys:
                del self._by_owner[owner]

    def __len__(self) -> int:
        return sum(len(k) for k in self._by_owner.values())

    def walk(self, running: MutableMapping[str, int], skip: Container[int]) -> Iterator[int]:
        """Execution ids in the fair order. ``running`` (owner -> placed executions) is read as the
        walk goes on: the caller counts each placement in it before asking for the next id. The
        lists must not change during the walk (Core walks under its queue lock, without awaiting)."""
        if len(self._by_owner) == 1:  # one owner (the common case): the list is the order
            for keys in self._by_owner.values():
                for _, _, execution_id in keys:
                    if execution_id not in skip:
                        yield execution_id
            return
        heap = [(keys[0][0], running.get(owner, 0), keys[0][1], keys[0][2], owner, 0)
                for owner, keys in self._by_owner.items()]
        heapq.heapify(heap)
        entry = heapq.heappop(heap) if heap else None
        while entry is not None:
            _, _, _, execution_id, owner, at = entry
            if execution_id not in skip:
                yield execution_id
            keys = self._by_owner[owner]
            at += 1
            if at < len(keys):
                priority, submitted, following = keys[at]
                # the same owner goes on while it stays first: no heap change for a run of its own
                entry = heapq.heappushpop(heap, (priority, running.get(owner, 0), submitted, following, owner, at))
            else:
                entry = heapq.heappop(heap) if heap else None
