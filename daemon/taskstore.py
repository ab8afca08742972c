"""The task record in SQLite: a task and all its children are created in one transaction.

Kept out of store.py (the executions' store) but on its connection and its transaction lock, so
a task's rows and its children's can never disagree: after a crash during creation there is the
whole task or nothing of it.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from runyard.protocol.messages import Event

from .record import COLUMNS, ExecutionRow, column_values, encode_field
from .store import Store, utcnow
from .task_lifecycle import TASK_ACTIVE, TASK_TERMINAL

_NAMES: Final = [c for c in COLUMNS if c != "id"]
_TASK_COLUMNS: Final = ("id, name, title, type, step, status, reason, owner, owner_uid, spec, created_at, ended_at")


@dataclass(slots=True)
class TaskRecord:
    id: int
    name: str | None
    title: str | None
    type: str
    step: str
    status: str
    reason: str | None
    owner: str
    owner_uid: int
    spec: dict[str, Any] = field(default_factory=dict)  # maximum_queued_executions, on_child_error, ...
    created_at: str = ""
    ended_at: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status in TASK_TERMINAL


def _task(r: Sequence[Any]) -> TaskRecord:
    return TaskRecord(id=r[0], name=r[1], title=r[2], type=r[3], step=r[4], status=r[5], reason=r[6],
                      owner=r[7], owner_uid=r[8], spec=json.loads(r[9]), created_at=r[10], ended_at=r[11])


async def create(store: Store, task: TaskRecord, children: list[ExecutionRow], queued: int,
                 varying: Sequence[str] | None = None) -> tuple[TaskRecord, list[ExecutionRow], list[Event]]:
    """Record ``task`` and its children: the first ``queued`` queued, the others created (waiting
    for the task's maximum-queued-executions). One transaction; ids and times are assigned here.

    ``varying``: the only fields in which the children differ (besides status and reason), so the
    rest is encoded once; None: every field of every child is encoded."""
    now = utcnow()
    for i, child in enumerate(children):
        child.status = "queued" if i < queued else "created"
        child.created_at = now
    async with store._tx():
        cur = await store.db.execute(
            "INSERT INTO tasks (name, title, type, step, status, reason, owner, owner_uid, spec, created_at) "
            "VALUES (?,?,?,?,?,?,?,?,?,?)",
            (task.name, task.title, task.type, task.step, task.status, task.reason, task.owner, task.owner_uid,
             json.dumps(task.spec), now))
        task.id = int(cur.lastrowid or 0)
        task.created_at = now
        for child in children:
            child.task_id = task.id
        events = await _insert_children(store, task.id, children, now, varying)
    return task, children, events


async def add_children(store: Store, task_id: int,
                       children: list[ExecutionRow]) -> tuple[list[ExecutionRow], list[Event]]:
    """A later round of a task's children (Bayesian search), all waiting as created: one
    transaction, so after a crash the round is all there or not at all."""
    now = utcnow()
    for child in children:
        child.status, child.created_at = "created", now
    async with store._tx():
        events = await _insert_children(store, task_id, children, now, ("parameters", "command"))
    return children, events


async def _insert_children(store: Store, task_id: int, children: list[ExecutionRow], now: str,
                           varying: Sequence[str] | None) -> list[Event]:
    """Insert ``children`` of task ``task_id`` and their created events, inside the caller's transaction."""
    for child in children:
        child.task_id = task_id
    async with store.db.execute("SELECT COALESCE(MAX(id), 0) FROM executions") as c:
        r = await c.fetchone()
    last = int(r[0]) if r else 0
    await store.db.executemany(
        f"INSERT INTO executions ({', '.join(_NAMES)}) VALUES ({','.join('?' * len(_NAMES))})",
        _encoded(children, varying))
    async with store.db.execute("SELECT id FROM executions WHERE task_id = ? AND id > ? ORDER BY id",
                                (task_id, last)) as c:
        ids = [int(r[0]) for r in await c.fetchall()]
    assert len(ids) == len(children)
    for child, execution_id in zip(children, ids, strict=True):
        child.id = execution_id
    async with store.db.execute("SELECT COALESCE(MAX(seq), 0) FROM events") as c:
        r = await c.fetchone()
    before = int(r[0]) if r else 0
    await store.db.executemany(
        "INSERT INTO events (execution_id, kind, status, reason, at) VALUES (?, 'created', ?, NULL, ?)",
        [(c.id, c.status, now) for c in children])
    async with store.db.execute(
        "SELECT seq, execution_id, status FROM events WHERE seq > ? AND kind = 'created' ORDER BY seq",
        (before,),
    ) as c:
        events = [Event(seq=r[0], execution_id=r[1], kind="created", status=r[2], reason=None, at=now)
                  for r in await c.fetchall()]
    return events


def _encoded(children: list[ExecutionRow], varying: Sequence[str] | None) -> list[list[Any]]:
    """Each child's column values."""
    if varying is None or not children:
        return [column_values(c, _NAMES) for c in children]
    base = column_values(children[0], _NAMES)
    slots = [(_NAMES.index(n), n) for n in ("status", "reason", *varying)]
    out = []
    for child in children:
        values = base.copy()
        for i, name in slots:
            values[i] = encode_field(name, getattr(child, name))
        out.append(values)
    return out


async def get(store: Store, task_id: int) -> TaskRecord | None:
    async with store.db.execute(f"SELECT {_TASK_COLUMNS} FROM tasks WHERE id = ?", (task_id,)) as cur:
        r = await cur.fetchone()
    return _task(r) if r else None


async def listed(store: Store, *, limit: int, statuses: Iterable[str] = ()) -> list[TaskRecord]:
    statuses = list(statuses)
    where = f" WHERE status IN ({','.join('?' * len(statuses))})" if statuses else ""
    async with store.db.execute(f"SELECT {_TASK_COLUMNS} FROM tasks{where} ORDER BY id DESC LIMIT ?",
                                (*statuses, limit)) as cur:
        return [_task(r) for r in await cur.fetchall()]


async def active(store: Store) -> list[TaskRecord]:
    return await listed(store, limit=1 << 30, statuses=TASK_ACTIVE)


async def counts(store: Store, task_id: int) -> dict[str, int]:
    """How many of the task's children are in each status."""
    # One call for the statement and its rows: between a cursor's first step and its fetchall, a
    # write of the same connection (a child's status) can run, and the half-read GROUP BY then
    # gave NULL statuses.
    rows = await store.db.execute_fetchall(
        "SELECT status, COUNT(*) FROM executions WHERE task_id = ? GROUP BY status", (task_id,))
    return {r[0]: int(r[1]) for r in rows}


async def children(store: Store, task_id: int, statuses: Iterable[str] = (), limit: int = -1) -> list[int]:
    """The task's children's ids in the order they were made (only those in ``statuses``, if given)."""
    statuses = list(statuses)
    where = f" AND status IN ({','.join('?' * len(statuses))})" if statuses else ""
    rows = await store.db.execute_fetchall(f"SELECT id FROM executions WHERE task_id = ?{where} ORDER BY id LIMIT ?",
                                           (task_id, *statuses, limit))
    return [int(r[0]) for r in rows]


async def set_state(store: Store, task_id: int, status: str, reason: str | None) -> str | None:
    """Record the task's new state; returns its ended_at (set as it reaches a terminal state)."""
    ended = utcnow() if status in TASK_TERMINAL else None
    async with store._tx():
        await store.db.execute("UPDATE tasks SET status = ?, reason = ?, ended_at = ? WHERE id = ?",
                               (status, reason, ended, task_id))
    return ended


async def delete(store: Store, task_id: int) -> None:
    """The task's own row; its children are deleted first, each as an execution is."""
    async with store._tx():
        await store.db.execute("DELETE FROM tasks WHERE id = ?", (task_id,))
