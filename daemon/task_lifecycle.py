"""A task's state, decided from its children's: no I/O.

A task (Valohai's grid, random or manual search) has no process of its own: what it is follows
from what its children are, and from what was asked of it (a stop by a user, its stop-condition
met, a child's error under ``stop-all-and-error``). The task engine counts the children, asks
:func:`decide`, and records the answer, so every path agrees on what a task is.

States, as Valohai's: created (no child has started yet) -> started -> stopping -> stopped,
or -> error, or -> complete.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Final

TASK_STATUSES: Final = ("created", "started", "stopping", "stopped", "error", "complete")
TASK_TERMINAL: Final = frozenset({"stopped", "error", "complete"})
TASK_ACTIVE: Final = ("created", "started", "stopping")

ON_CHILD_ERROR: Final = ("continue-and-complete", "continue-and-error", "stop-all-and-error")
DEFAULT_ON_CHILD_ERROR: Final = "continue-and-complete"

# Why a task is stopping (and then stopped or in error): the reasons a task records.
STOPPED_BY_USER: Final = "stopped"
STOP_CONDITION: Final = "stop-condition"
CHILD_ERROR: Final = "child-error"
CHILDREN_STOPPED: Final = "children-stopped"

_CHILD_ACTIVE: Final = frozenset({"created", "queued", "started", "stopping"})
_CHILD_RAN: Final = frozenset({"started", "stopping", "complete", "error", "stopped"})


@dataclass(frozen=True, slots=True)
class TaskState:
    status: str
    reason: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TASK_TERMINAL


def decide(current: TaskState, children: Mapping[str, int], *, on_child_error: str = DEFAULT_ON_CHILD_ERROR,
           stop: str | None = None) -> TaskState:
    """The task's state now, from how many children are in each status and what was asked.

    ``stop`` is why the task is being stopped, if it is (STOPPED_BY_USER, STOP_CONDITION): the
    caller asks its active children to stop. A task that already ended stays as it is.
    """
    if current.terminal:
        return current
    errors = children.get("error", 0)
    if stop is None and current.status == "stopping":
        stop = current.reason  # asked earlier: keeps its reason until the children have ended
    if stop is None and errors and on_child_error == "stop-all-and-error":
        stop = CHILD_ERROR
    active = sum(n for status, n in children.items() if status in _CHILD_ACTIVE)
    if active:
        if stop is not None:
            return TaskState("stopping", stop)
        if any(children.get(s, 0) for s in _CHILD_RAN):
            return TaskState("started")
        return TaskState("created")
    # Every child has ended.
    if stop == CHILD_ERROR:
        return TaskState("error", CHILD_ERROR)
    if stop is not None:
        return TaskState("stopped", stop)
    if errors and on_child_error == "continue-and-error":
        return TaskState("error", f"{errors} child{'ren' if errors != 1 else ''} failed")
    if children and children.get("stopped", 0) == sum(children.values()):
        return TaskState("stopped", CHILDREN_STOPPED)  # each stopped on its own: nothing completed
    return TaskState("complete")


def must_stop_children(before: TaskState, after: TaskState) -> bool:
    """Whether this change is the one that asks the active children to stop."""
    return after.status == "stopping" and before.status != "stopping"
