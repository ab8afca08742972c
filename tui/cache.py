"""The executions the TUI knows about: the active ones, and pages of the rest, newest first.

Events name which executions changed; ``dirty`` collects them so that a burst of
events costs one fetch per execution, not one per event.
"""

from __future__ import annotations

from runyard.protocol.messages import Event
from runyard.protocol.methods import ExecutionView

from .format import ACTIVE

PAGE = 200


class ExecutionCache:
    def __init__(self) -> None:
        self.views: dict[int, ExecutionView] = {}
        self.dirty: set[int] = set()
        self.oldest_page_id: int | None = None  # the smallest id of the pages loaded so far
        self.exhausted = False  # no older executions are left to page in
        self.hosts_dirty = False

    def reset(self, active: list[ExecutionView], recent: list[ExecutionView]) -> None:
        self.views = {v.id: v for v in [*recent, *active]}
        self.oldest_page_id = min((v.id for v in recent), default=None)
        self.exhausted = len(recent) < PAGE
        self.dirty.clear()

    def add_page(self, page: list[ExecutionView]) -> None:
        for view in page:
            self.views.setdefault(view.id, view)
        if page:
            self.oldest_page_id = min(v.id for v in page)
        self.exhausted = len(page) < PAGE

    def apply(self, event: Event) -> bool:
        """Note an event; returns whether it changed something shown right away."""
        if event.kind == "host":
            self.hosts_dirty = True
            return False
        if event.kind == "task":  # a task's own state: its children's events say what changed here
            return False
        view = self.views.get(event.execution_id)
        if event.kind == "deleted":
            self.dirty.discard(event.execution_id)
            return self.views.pop(event.execution_id, None) is not None
        if event.kind == "progress":
            if view is not None and event.total:
                view.input_progress = {"done": event.done or 0, "total": event.total}
                return True
            return False
        if event.kind in ("status", "created"):
            self.hosts_dirty = True  # placements change what hosts show
        self.dirty.add(event.execution_id)
        return False

    def update(self, view: ExecutionView) -> None:
        self.views[view.id] = view

    def active_ids(self) -> list[int]:
        return [v.id for v in self.views.values() if v.status in ACTIVE]
