"""Request methods for tasks, registered in api.METHODS next to the executions' methods."""

from __future__ import annotations

from runyard.protocol import tasks as t
from runyard.protocol.messages import ErrorCode

from . import runoptions, taskstore
from .api import Caller, _secret_names, method
from .core import Core, OperationError
from .task_lifecycle import TASK_STATUSES
from .titles import TitleError, checked_title


async def _owned(core: Core, caller: Caller, task_id: int, action: str) -> taskstore.TaskRecord:
    task = await core.tasks.get(task_id)
    if caller.admin or task.owner_uid == caller.uid:
        return task
    raise OperationError(ErrorCode.PERMISSION_DENIED,
                         f"task {task_id} belongs to {task.owner}; only they or an admin may {action} it")


@method("tasks.create", t.TaskCreateParams)
async def create(core: Core, caller: Caller, p: t.TaskCreateParams) -> t.TaskView:
    if p.priority > 0 and not caller.admin:
        raise OperationError(ErrorCode.PERMISSION_DENIED,
                             "only admins may raise priority above 0 (anyone may lower their own)")
    try:
        checked_title(p.title)
    except TitleError as exc:
        raise OperationError(ErrorCode.INVALID_PARAMS, str(exc)) from None
    try:
        options = runoptions.checked(p.environment, p.tags, p.time_limit, p.no_output_timeout,
                                     _secret_names(core, caller))
    except runoptions.RunOptionError as exc:
        raise OperationError(ErrorCode.INVALID_PARAMS, str(exc)) from None
    return await core.tasks.create(p, owner=caller.user, owner_uid=caller.uid, options=options)


@method("tasks.get", t.TaskIdParams)
async def get(core: Core, caller: Caller, p: t.TaskIdParams) -> t.TaskView:
    return await core.tasks.view_of(await core.tasks.get(p.id), with_ids=True)


@method("tasks.list", t.TaskListParams)
async def list_(core: Core, caller: Caller, p: t.TaskListParams) -> list[t.TaskView]:
    unknown = sorted(set(p.status) - set(TASK_STATUSES))
    if unknown:
        raise OperationError(ErrorCode.INVALID_PARAMS,
                             f"unknown task status {unknown[0]!r} (one of {', '.join(TASK_STATUSES)})")
    if not 1 <= p.limit <= 10_000:
        raise OperationError(ErrorCode.INVALID_PARAMS, "limit must be between 1 and 10000")
    return [await core.tasks.view_of(task) for task in await taskstore.listed(core.store, limit=p.limit,
                                                                              statuses=p.status)]


@method("tasks.stop", t.TaskIdParams)
async def stop(core: Core, caller: Caller, p: t.TaskIdParams) -> t.TaskStopResult:
    await _owned(core, caller, p.id, "stop")
    return t.TaskStopResult(task=p.id, stopped=await core.tasks.stop(p.id, caller.user))


@method("tasks.restart", t.TaskIdParams)
async def restart(core: Core, caller: Caller, p: t.TaskIdParams) -> t.TaskView:
    # As for an execution's restart: the new children run as the caller, with no raised priority.
    await _owned(core, caller, p.id, "restart")
    return await core.tasks.restart(p.id, owner=caller.user, owner_uid=caller.uid)


@method("tasks.delete", t.TaskDeleteParams)
async def delete(core: Core, caller: Caller, p: t.TaskDeleteParams) -> int:
    await _owned(core, caller, p.id, "delete")
    return await core.tasks.delete(p.id, p.purge_outputs)
