"""The task engine: creates a task's children, queues them within its limit, ends and stops it.

A task's children are ordinary executions. The engine never writes an execution's state itself:
a waiting (`created`) child is the scheduler's, so it is queued under Core's queue lock through
the store's transition and Core.track/publish, and children are stopped through Core.stop, which
finds their owner. What the engine owns is the task record: after every change of a child it
counts the children, asks task_lifecycle.decide what the task is now, and acts on the answer
(queue more children, stop the rest). One settle at a time, so the task has one writer too.

A Bayesian task (optimize.py) is asked for its next round in a settle that finds all its
children ended and the task wanting more (_next_round): the round is created in one
transaction before the task's state is decided, so it never looks complete between rounds.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import random
from typing import TYPE_CHECKING, Any, Final

import msgspec

from runyard.protocol.messages import ErrorCode, Event
from runyard.protocol.tasks import TaskCreateParams, TaskView

from . import distributed, optimize, runoptions, stopcondition, taskstore, variants
from .lifecycle import TERMINAL
from .record import SELECT, ExecutionRow, row_of
from .runoptions import RunOptions
from .snapshots import SnapshotError
from .steps import StepError, load_config, parameters_and_command, prepare_step
from .store import utcnow
from .task_lifecycle import (
    DEFAULT_ON_CHILD_ERROR,
    ON_CHILD_ERROR,
    STOP_CONDITION,
    STOPPED_BY_USER,
    TaskState,
    decide,
)
from .tasks import watched

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("runyard.daemon")

WAITING_REASON: Final = "maximum-queued-executions"
# What a submitter chose for an execution (the fields before its id): a later round's children copy them.
_REQUEST_FIELDS: Final = tuple(itertools.takewhile(lambda f: f.name != "id", dataclasses.fields(ExecutionRow)))
_IN_FLIGHT: Final = ("queued", "started", "stopping")


class TaskEngine:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.store = core.store
        self._tasks: dict[int, taskstore.TaskRecord] = {}  # active tasks
        self._task_of: dict[int, int] = {}  # active child -> its task
        self._asked: dict[int, str] = {}  # task -> why it was asked to stop, until settled
        self._stopped_by: dict[int, str] = {}  # task -> who asked it to stop, for its children's logs
        self._dirty: set[int] = set()
        self._wake = asyncio.Event()
        self._lock = asyncio.Lock()  # one settle (or create, stop) at a time: the task's one writer
        self._checking: set[int] = set()  # executions whose stop-condition check is under way

    # -- the daemon's life --------------------------------------------------------------------

    async def start(self) -> None:
        """After Core tracked the active executions: pick up the active tasks and settle each once
        (a daemon killed between a child's end and the next child's queueing catches up here)."""
        for task in await taskstore.active(self.store):
            self._tasks[task.id] = task
            self._dirty.add(task.id)
        for row in self.core.active.values():
            if row.task_id in self._tasks:
                self._task_of[row.id] = row.task_id
        watched(self._settle_forever(), "task engine", self.core._background)
        self._wake.set()

    def noticed(self, event: Event) -> None:
        """Every execution event passes here (from Core.publish): a child's change settles its task."""
        task_id = self._task_of.get(event.execution_id)
        if task_id is None:
            return
        if event.status in TERMINAL or event.kind == "deleted":
            del self._task_of[event.execution_id]
        self._dirty.add(task_id)
        self._wake.set()

    def metadata_added(self, execution_id: int) -> None:
        """New metadata of an execution: check its step's and its task's stop-condition."""
        row = self.core.active.get(execution_id)
        if row is None or row.status != "started" or execution_id in self._checking:
            return  # a stopping one was asked already
        task = self._tasks.get(row.task_id) if row.task_id is not None else None
        task_condition = task.spec.get("stop_condition") if task is not None and task.status != "stopping" else None
        if not row.stop_condition and not task_condition:
            return
        self._checking.add(execution_id)
        watched(self._check(row, task_condition), f"execution {execution_id}: its stop-condition",
                self.core._background)

    async def _check(self, row: ExecutionRow, task_condition: str | None) -> None:
        try:
            latest = await self.store.latest_metadata(row.id)
            if row.stop_condition and stopcondition.met(row.stop_condition, latest):
                log.info("execution %s: its stop-condition %r is met", row.id, row.stop_condition)
                await self.core.stop(row.id, "stop-condition", STOP_CONDITION)
            if task_condition and row.task_id is not None and stopcondition.met(task_condition, latest):
                log.info("task %s: child %s meets its stop-condition %r", row.task_id, row.id, task_condition)
                self._asked.setdefault(row.task_id, STOP_CONDITION)
                self._dirty.add(row.task_id)
                self._wake.set()
        finally:
            self._checking.discard(row.id)

    async def _settle_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._dirty:
                task_id = self._dirty.pop()
                try:
                    await self.settle(task_id)
                except Exception:
                    log.exception("task %s: settling failed; will retry on its next change", task_id)

    # -- settling: what the task is now, and what follows from it -----------------------------

    async def settle(self, task_id: int) -> list[int]:
        """Bring task ``task_id`` up to date with its children; returns the children it stopped."""
        async with self._lock:
            task = self._tasks.get(task_id)
            if task is None:
                return []
            counts = await taskstore.counts(self.store, task_id)
            if task.type == "bayesian_tpe" and await self._next_round(task, counts):
                counts = await taskstore.counts(self.store, task_id)
            if task.type == "distributed" and task.status != "stopping" and task_id not in self._asked:
                # The group is placed whole, in one transaction: some members waiting unplaced
                # while others were placed or ended (stopped before the group started, or sent
                # back to the queue) means it can never be whole again.
                waiting = await distributed.unplaced(self.store, task_id)
                if 0 < waiting < sum(counts.values()):
                    log.info("task %s: %d of its members wait unplaced while the others do not: "
                             "the group cannot start", task_id, waiting)
                    self._asked[task_id] = distributed.GROUP_INCOMPLETE
            before = TaskState(task.status, task.reason)
            after = decide(before, counts, on_child_error=task.spec.get("on_child_error") or DEFAULT_ON_CHILD_ERROR,
                           stop=self._asked.pop(task_id, None))
            if after != before:
                ended = await taskstore.set_state(self.store, task_id, after.status, after.reason)
                # All three at once: a tasks.get that holds this record (it is read across an
                # await) must never see an ended task without its end time.
                task.status, task.reason, task.ended_at = after.status, after.reason, ended
                log.info("task %s: %s%s", task_id, after.status, f" ({after.reason})" if after.reason else "")
                self.core.hub.publish(Event(seq=0, execution_id=0, kind="task", status=after.status,
                                            reason=after.reason, at=utcnow(), task=task_id))
            stopped: list[int] = []
            if after.status == "stopping":
                stopped = await self._stop_children(task)
            elif not after.terminal:
                await self._queue_waiting(task, counts)
            if after.terminal:
                self._tasks.pop(task_id, None)
                self._stopped_by.pop(task_id, None)
            return stopped

    async def _next_round(self, task: taskstore.TaskRecord, counts: dict[str, int]) -> bool:
        """A Bayesian task whose children have all ended and that wants more: ask the optimiser
        for the next round and create it (waiting, for _queue_waiting). Whether it made one."""
        spec = task.spec
        total = sum(counts.values())
        n = min(int(spec.get("execution_batch_size") or optimize.DEFAULT_BATCH_SIZE),
                int(spec.get("execution_count") or 0) - total)
        if (n <= 0 or task.terminal or task.status == "stopping" or task.id in self._asked
                or any(counts.get(s, 0) for s in ("created", *_IN_FLIGHT))
                or (counts.get("error") and spec.get("on_child_error") == "stop-all-and-error")):
            return False
        done = [row_of(r) for r in await self.store.db.execute_fetchall(
            f"SELECT {SELECT} FROM executions WHERE task_id = ? ORDER BY id", (task.id,))]
        if not done:
            return False
        metric = str(spec.get("optimization_target_metric"))
        latest = await self.store.latest_metadata_many([r.id for r in done])
        trials = [optimize.Trial(r.parameters, r.status, _number(latest[r.id].get(metric))) for r in done]
        chosen = [variants.Variant(v["name"], v["style"], dict(v["rules"])) for v in spec.get("variants", [])]
        first = done[0]
        try:
            asked = await asyncio.to_thread(optimize.ask, spec, chosen, trials, n)
            text = await asyncio.to_thread(self.core.snapshots.read_file, first.snapshot, first.config_path)
            config = load_config((text or b"").decode("utf-8", "replace"), first.config_path)
            fixed = {k: variants.raw(v) for k, v in first.parameters.items()}
            made = [parameters_and_command(config, first.step, fixed | {k: variants.raw(v) for k, v in a.items()})
                    for a in asked]
        except (StepError, SnapshotError, variants.VariantError) as exc:
            # Nothing more can be asked (Optuna gone since a restart, the snapshot's file unreadable):
            # the task ends with what it has, saying why.
            log.warning("task %s: no next round: %s", task.id, exc)
            self._asked.setdefault(task.id, f"no next round: {exc}")
            return False
        shared = {f.name: getattr(first, f.name) for f in _REQUEST_FIELDS}
        rows = [ExecutionRow(**{**shared, "parameters": values, "command": command, "restarted_from": None,
                                "reason": WAITING_REASON}) for values, command in made]
        rows, events = await taskstore.add_children(self.store, task.id, rows)
        for row in rows:
            self._task_of[row.id] = task.id
            self.core.track(row)
        for event in events:
            self.core.publish(event)
        log.info("task %s: round of %d children asked of the optimiser (%d so far)", task.id, len(rows),
                 total + len(rows))
        return True

    async def _queue_waiting(self, task: taskstore.TaskRecord, counts: dict[str, int]) -> None:
        """Queue waiting children while the task is under its maximum-queued-executions.

        ``counts`` were read before; meanwhile children can only have left the queue (ended), never
        joined it (only this does that, under the engine's lock), so the limit holds at every instant.
        """
        waiting = counts.get("created", 0)
        if not waiting:
            return
        limit = task.spec.get("maximum_queued_executions")
        room = waiting if limit is None else min(waiting, int(limit) - sum(counts.get(s, 0) for s in _IN_FLIGHT))
        if room <= 0:
            return
        await self.core.release(await taskstore.children(self.store, task.id, ["created"], limit=room))

    async def _stop_children(self, task: taskstore.TaskRecord) -> list[int]:
        reason = STOP_CONDITION if task.reason == STOP_CONDITION else None
        who = self._stopped_by.get(task.id)
        by = (f"{who} (task {task.id})" if who and task.reason == STOPPED_BY_USER
              else f"task {task.id}" + (f" ({task.reason})" if task.reason else ""))
        ids = await taskstore.children(self.store, task.id, ["created", "queued", "started"])
        stopped, _ = await self.core.stop_many(ids, by, reason)  # the waiting ones in one transaction
        return stopped

    # -- operations ----------------------------------------------------------------------------

    async def create(self, p: TaskCreateParams, *, owner: str, owner_uid: int, options: RunOptions) -> TaskView:
        from .core import OperationError

        core = self.core
        if not 0 <= p.retries <= 100:
            raise OperationError(ErrorCode.INVALID_PARAMS, f"retries must be between 0 and 100, not {p.retries}")
        try:
            if not await asyncio.to_thread(core.snapshots.has, p.snapshot):
                raise OperationError(ErrorCode.NOT_FOUND, f"snapshot {p.snapshot[:12]} was not uploaded")
            text = await asyncio.to_thread(core.snapshots.read_file, p.snapshot, p.config_path)
        except SnapshotError as exc:
            raise OperationError(ErrorCode.INVALID_PARAMS, str(exc)) from None
        if text is None:
            raise OperationError(ErrorCode.INVALID_PARAMS, f"the snapshot has no {p.config_path}")
        try:
            config = load_config(text.decode("utf-8", "replace"), p.config_path)
            p = _step_named(config, p)
            spec, children = _plan(config, p)
            fixed: dict[str, Any] = dict(p.parameters)
            raws = [fixed | {k: variants.raw(v) for k, v in kid.items()} for kid in children]
            # The first child is checked in full (inputs, resources ...); the others differ only in
            # their parameters, so only those are checked again and their command built.
            first = prepare_step(config, spec["step"], raws[0], p.inputs)
            commands = [(first.parameters, first.command)] + [
                parameters_and_command(config, first.name, raw) for raw in raws[1:]]
        except (StepError, variants.VariantError, stopcondition.StopConditionError) as exc:
            raise OperationError(ErrorCode.INVALID_PARAMS, str(exc)) from None
        resources = core._resources(first.resources, p.pool, p.gpus)
        if spec["type"] == "distributed":
            self._check_group(len(commands), spec, p.retries, resources)
            resources[distributed.GROUP_KEY] = len(commands)  # its members are placed as one group
        image = p.image or first.image or core.config.defaults.image
        base = runoptions.apply(ExecutionRow(
            step=first.name, title=p.title, owner=owner, owner_uid=owner_uid, parameters=first.parameters,
            inputs=first.inputs, image=image, command=first.command, environment=first.environment,
            snapshot=p.snapshot, commit_ref=p.commit, config_path=p.config_path, resources=resources,
            priority=p.priority, input_options=first.input_options, retries=p.retries,
            stop_condition=first.stop_condition,
        ), options)
        # Children differ only in their parameters and the command built from them (the step, its
        # inputs and environment are the same): they share the rest, which is stored once encoded.
        refused = core.quotas.refusal(base)
        if refused is not None:
            raise OperationError(ErrorCode.INVALID_PARAMS, refused)
        shared = {f.name: getattr(base, f.name) for f in dataclasses.fields(ExecutionRow)}
        rows = [ExecutionRow(**{**shared, "parameters": values, "command": command}) for values, command in commands]
        limit = spec.get("maximum_queued_executions")
        queued = len(rows) if limit is None else min(len(rows), limit)
        for row in rows[queued:]:
            row.reason = WAITING_REASON
        record = taskstore.TaskRecord(
            id=0, name=p.blueprint, title=p.title, type=spec["type"], step=spec["step"], status="created",
            reason=None, owner=owner, owner_uid=owner_uid, spec=spec)
        async with self._lock, core.quota_lock():
            queued = self._admit(spec["type"], rows, queued)  # beyond the owner's quota: created, reason quota
            record, rows, events = await taskstore.create(self.store, record, rows, queued,
                                                          varying=("parameters", "command"))
            self._tasks[record.id] = record
            for row in rows:
                self._task_of[row.id] = record.id
                core.track(row)
            for event in events:
                core.publish(event)
        log.info("task %s: %d children of step %s (%s), %d queued", record.id, len(rows), record.step,
                 record.type, queued)
        return self.view(record, {"queued": queued, "created": len(rows) - queued} if queued < len(rows)
                         else {"queued": queued}, [r.id for r in rows])

    def _admit(self, kind: str, rows: list[ExecutionRow], queued: int) -> int:
        """How many of ``rows`` the owner's quota lets be queued now (under the quota lock). A
        distributed task's members all or none: members held back one by one could fill the
        owner's quota with halves of groups that can never be placed."""
        from .core import OperationError

        admitted = self.core.quotas.admit(rows, queued)
        if kind == "distributed" and admitted < len(rows):
            raise OperationError(ErrorCode.INVALID_PARAMS, (
                f"your quota has room for {admitted} more executions now, and a distributed task's "
                f"{len(rows)} members must all be queued at once: try again when fewer of yours are active"))
        return admitted

    def _check_group(self, count: int, spec: dict[str, Any], retries: int, resources: dict[str, Any]) -> None:
        """Refuse a distributed task that could never run as one group, naming why."""
        from .core import OperationError
        from .runtime_slurm import ClusterHost

        hosts = self.core.hosts.values()
        pool = resources.get("pool")
        known = all(h.cpus is not None and h.memory_mb is not None for h in hosts
                    if (pool is None or h.settings.pool == pool) and not isinstance(h, ClusterHost))
        refused = distributed.refusal(
            count, limit=spec.get("maximum_queued_executions"), retries=retries, resources=resources,
            cluster_pools={h.settings.pool for h in hosts if isinstance(h, ClusterHost)},
            capacities=self.core.capacities([]) if known else None)
        if refused is not None:
            raise OperationError(ErrorCode.INVALID_PARAMS, refused)

    async def get(self, task_id: int) -> taskstore.TaskRecord:
        from .core import OperationError

        task = self._tasks.get(task_id) or await taskstore.get(self.store, task_id)
        if task is None:
            raise OperationError(ErrorCode.NOT_FOUND, f"there is no task {task_id}")
        return task

    async def stop(self, task_id: int, by: str = "") -> list[int]:
        task = await self.get(task_id)
        if task.terminal:
            return []
        self._asked[task_id] = STOPPED_BY_USER
        if by:
            self._stopped_by[task_id] = by
        return await self.settle(task_id)

    async def restart(self, task_id: int, *, owner: str, owner_uid: int) -> TaskView:
        """A new task with the same spec and its children's exact parameters (and snapshot, image)."""
        from .core import OperationError

        old = await self.get(task_id)
        async with self.store.db.execute(f"SELECT {SELECT} FROM executions WHERE task_id = ? ORDER BY id",
                                         (task_id,)) as cur:
            olds = [row_of(r) for r in await cur.fetchall()]
        if not olds:
            raise OperationError(ErrorCode.INVALID_STATE, f"task {task_id} has no children left to restart")
        rows = [ExecutionRow(
            step=o.step, title=o.title, owner=owner, owner_uid=owner_uid, parameters=o.parameters, inputs=o.inputs,
            image=o.image, command=o.command, environment=o.environment, snapshot=o.snapshot,
            commit_ref=o.commit_ref, config_path=o.config_path, restarted_from=o.id, resources=o.resources,
            priority=min(o.priority, 0), input_options=o.input_options, retries=o.retries, variables=o.variables,
            tags=o.tags, stop_condition=o.stop_condition) for o in olds]
        limit = old.spec.get("maximum_queued_executions")
        queued = len(rows) if limit is None else min(len(rows), int(limit))
        for row in rows[queued:]:
            row.reason = WAITING_REASON
        record = dataclasses.replace(old, id=0, status="created", reason=None, owner=owner, owner_uid=owner_uid,
                                     spec={**old.spec, "restarted_from": old.id}, ended_at=None)
        async with self._lock, self.core.quota_lock():
            queued = self._admit(old.type, rows, queued)
            record, rows, events = await taskstore.create(self.store, record, rows, queued)
            self._tasks[record.id] = record
            for row in rows:
                self._task_of[row.id] = record.id
                self.core.track(row)
            for event in events:
                self.core.publish(event)
        return await self.view_of(record, with_ids=True)

    async def delete(self, task_id: int, purge_outputs: bool) -> int:
        from .core import OperationError

        task = await self.get(task_id)
        if not task.terminal:
            raise OperationError(ErrorCode.INVALID_STATE,
                                 f"task {task_id} is {task.status}: stop it before deleting it")
        ids = await taskstore.children(self.store, task_id)
        for execution_id in ids:
            await self.core.delete(execution_id, purge_outputs)
        await taskstore.delete(self.store, task_id)
        return len(ids)

    async def view_of(self, task: taskstore.TaskRecord, *, with_ids: bool = False) -> TaskView:
        ids = await taskstore.children(self.store, task.id) if with_ids else []
        return self.view(task, await taskstore.counts(self.store, task.id), ids)

    def view(self, task: taskstore.TaskRecord, counts: dict[str, int], ids: list[int]) -> TaskView:
        return TaskView(
            id=task.id, name=task.name, title=task.title, type=task.type, step=task.step, status=task.status,
            reason=task.reason, owner=task.owner, owner_uid=task.owner_uid, created_at=task.created_at,
            ended_at=task.ended_at, total=sum(counts.values()), children=counts,
            maximum_queued_executions=task.spec.get("maximum_queued_executions"),
            on_child_error=task.spec.get("on_child_error") or DEFAULT_ON_CHILD_ERROR,
            stop_condition=task.spec.get("stop_condition"), execution_ids=ids,
            **{k: task.spec.get(k) for k in _SHOWN_SPEC},
        )

    def active_children(self) -> int:
        return len(self._task_of)


def _step_named(config: Any, p: TaskCreateParams) -> TaskCreateParams:
    """`task run STEP --type distributed --count N` names a step, with no variant flags to say so:
    a name that is no blueprint but a step, given with a type, is the step."""
    if (p.blueprint is not None and p.type is not None and not p.step and p.blueprint not in config.tasks
            and p.blueprint in config.steps):
        return msgspec.structs.replace(p, step=p.blueprint, blueprint=None)
    return p


def _plan(config: Any, p: TaskCreateParams) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The task's spec (what it was asked) and its children's variant values, from the request
    and, with ``blueprint``, the valohai.yaml task of that name (the request's fields win)."""
    blueprint = None
    if p.blueprint is not None:
        blueprint = config.tasks.get(p.blueprint)
        if blueprint is None:
            known = ", ".join(sorted(config.tasks)) or "none"
            raise variants.VariantError(f"no task named {p.blueprint!r} in the valohai.yaml (tasks: {known})")
    step = p.step or (blueprint.step if blueprint is not None else "")
    if not step:
        raise variants.VariantError("name the step the task runs")
    kind = variants.task_type(p.type or (blueprint.type.value if blueprint is not None else None))
    chosen = [variants.Variant(v.name, variants.style_of(v.style), dict(v.rules)) for v in p.variants]
    if blueprint is not None and not chosen:
        chosen = variants.from_yaml(blueprint.parameters)
    sets: list[dict[str, Any]] = list(p.parameter_sets) or (list(blueprint.parameter_sets) if blueprint else [])
    count = p.execution_count if p.execution_count is not None else (
        blueprint.execution_count if blueprint is not None else None)
    limit = p.maximum_queued_executions if p.maximum_queued_executions is not None else (
        blueprint.maximum_queued_executions if blueprint is not None else None)
    if limit is not None and limit < 1:
        raise variants.VariantError(f"maximum-queued-executions must be at least 1, not {limit}")
    on_error = p.on_child_error or (blueprint.on_child_error.value if blueprint is not None
                                    and blueprint.on_child_error is not None else None)
    if on_error is not None:
        on_error = on_error.lower().replace("_", "-")
        if on_error not in ON_CHILD_ERROR:
            raise variants.VariantError(f"on-child-error {on_error!r} is not one of {', '.join(ON_CHILD_ERROR)}")
    condition = p.stop_condition or (blueprint.stop_condition if blueprint is not None else None) or None
    if condition is not None:
        stopcondition.check(condition)
    spec: dict[str, Any] = {
        "step": step, "type": kind, "maximum_queued_executions": limit, "on_child_error": on_error,
        "stop_condition": condition, "variants": [dataclasses.asdict(v) for v in chosen],
        "parameter_sets": sets, "execution_count": count, "seed": p.seed,
    }
    # Any task may name the metric its children are ranked by (the TUI's best, its children's order).
    spec.update(_target(p, blueprint))
    if kind == "bayesian_tpe":
        return spec, _bayesian_plan(spec, chosen, p, blueprint)
    children = variants.expand(kind, chosen, parameter_sets=sets, count=count, seed=p.seed)
    return spec, children


_SHOWN_SPEC = ("execution_count", "execution_batch_size", "seed", "optimization_target_metric",
               "optimization_target_value")


def _target(p: TaskCreateParams, blueprint: Any) -> dict[str, Any]:
    """optimization-target-metric and -value: the request's, else the blueprint's."""
    out: dict[str, Any] = {}
    for name in ("optimization_target_metric", "optimization_target_value"):
        given = getattr(p, name)
        value = given if given is not None else getattr(blueprint, name, None) if blueprint is not None else None
        if value is not None:
            out[name] = float(value) if name == "optimization_target_value" else str(value)
    return out


def _bayesian_plan(spec: dict[str, Any], chosen: list[variants.Variant], p: TaskCreateParams,
                   blueprint: Any) -> list[dict[str, Any]]:
    """A Bayesian task's own fields in ``spec``, and its random first batch (the rest is asked in rounds)."""
    def field(name: str) -> Any:
        given = getattr(p, name)
        return given if given is not None else (getattr(blueprint, name, None) if blueprint is not None else None)

    if spec["seed"] is None:  # a round depends only on what is stored: its seed must be stored too
        spec["seed"] = random.randrange(2**31)
    spec["execution_count"] = count = int(field("execution_count") or optimize.FIRST_BATCH)
    spec["execution_batch_size"] = batch = int(field("execution_batch_size") or optimize.DEFAULT_BATCH_SIZE)
    spec["optimization_target_metric"] = field("optimization_target_metric")
    target = field("optimization_target_value")
    spec["optimization_target_value"] = float(target) if target is not None else None
    if not 1 <= count <= variants.MAX_CHILDREN or batch < 1:
        raise variants.VariantError(f"execution-count must be between 1 and {variants.MAX_CHILDREN} and "
                                    f"execution-batch-size at least 1, not {count} and {batch}")
    optimize.check(spec, chosen)
    return optimize.first_batch(chosen, count, spec["seed"])


def _number(value: Any) -> float | None:
    """A metadata value as the optimiser's number, or None (not printed, not a number)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)
