"""Fan-out of state events to subscribed connections, never blocking the publisher."""

from __future__ import annotations

import asyncio

from runyard.protocol.messages import Event


class Subscription:
    def __init__(self, maxsize: int) -> None:
        self.queue: asyncio.Queue[Event] = asyncio.Queue(maxsize)
        # A subscriber too slow to keep up is told to resync instead of slowing everyone.
        self.overflowed = False


class EventHub:
    def __init__(self, queue_size: int = 10_000) -> None:
        self.queue_size = queue_size
        self._subs: set[Subscription] = set()

    def subscribe(self) -> Subscription:
        sub = Subscription(self.queue_size)
        self._subs.add(sub)
        return sub

    @property
    def subscribers(self) -> int:
        return len(self._subs)

    def unsubscribe(self, sub: Subscription) -> None:
        self._subs.discard(sub)

    def publish(self, event: Event) -> None:
        for sub in self._subs:
            if sub.overflowed:
                continue
            try:
                sub.queue.put_nowait(event)
            except asyncio.QueueFull:
                sub.overflowed = True
