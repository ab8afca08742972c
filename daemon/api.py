"""Request methods: parameter structs in, plain data out, permission checks on the way."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import msgspec

from runyard.protocol import methods as m
from runyard.protocol.logsearch import SEARCH_CONTEXT_MAX, SEARCH_LIMIT_MAX, LogsSearchParams, LogsSearchResult
from runyard.protocol.messages import ErrorCode
from runyard.protocol.retention import RetentionParams, RetentionPlan

from . import restarts, runoptions
from .core import Core, OperationError
from .logfile import cap_records
from .logsearch import SEARCHER, SearchError
from .outputs import OutputError
from .snapshots import SnapshotError


@dataclass(frozen=True, slots=True)
class Caller:
    """Who is asking, from the kernel (SO_PEERCRED), never from the request."""

    uid: int
    user: str
    admin: bool


# What a method may answer: typed structs (or lists of them), or a plain scalar; never a bare dict.
Reply = msgspec.Struct | list[Any] | bytes | bool | int | None
Handler = Callable[[Core, Caller, Any], Awaitable[Reply]]
METHODS: dict[str, tuple[type[msgspec.Struct], Handler]] = {}


def method(name: str, params: type[msgspec.Struct]) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        METHODS[name] = (params, fn)
        return fn

    return register


async def _owned(core: Core, caller: Caller, execution_id: int, action: str) -> None:
    row = await core.get(execution_id)
    if caller.admin or row.owner_uid == caller.uid:
        return
    raise OperationError(
        ErrorCode.PERMISSION_DENIED,
        f"execution {execution_id} belongs to {row.owner}; only they or an admin may {action} it",
    )


@method("executions.submit", m.SubmitParams)
async def submit(core: Core, caller: Caller, p: m.SubmitParams) -> m.ExecutionView:
    if p.priority > 0 and not caller.admin:
        raise OperationError(ErrorCode.PERMISSION_DENIED,
                             "only admins may raise priority above 0 (anyone may lower their own)")
    try:
        options = runoptions.checked(p.environment, p.tags, p.time_limit, p.no_output_timeout,
                                     _secret_names(core, caller))
    except runoptions.RunOptionError as exc:
        raise OperationError(ErrorCode.INVALID_PARAMS, str(exc)) from None
    row = await core.submit(
        step=p.step, snapshot=p.snapshot, parameters=p.parameters, title=p.title, image=p.image,
        commit=p.commit, inputs=p.inputs, config_path=p.config_path, owner=caller.user,
        owner_uid=caller.uid, pool=p.pool, gpus=p.gpus, priority=p.priority, retries=p.retries, options=options,
    )
    return core.view(row)


def _secret_names(core: Core, caller: Caller) -> set[str]:
    """Variables the daemon fills from its secrets for this caller: a --var may not name them."""
    return set(core.config.secrets) | set(core.config.user_secrets.get(caller.user, {}))


@method("executions.get", m.IdParams)
async def get(core: Core, caller: Caller, p: m.IdParams) -> m.ExecutionView:
    row = await core.get(p.id)
    view = core.view(row, await core.store.latest_metadata(p.id))
    view.gpu_use = await core.gpu_use.of(row)
    return view


@method("executions.list", m.ListParams)
async def list_(core: Core, caller: Caller, p: m.ListParams) -> list[m.ExecutionView]:
    unknown = sorted(set(p.status) - set(m.ALL_STATUSES))
    if unknown:
        raise OperationError(ErrorCode.INVALID_PARAMS,
                             f"unknown status {unknown[0]!r} (one of {', '.join(m.ALL_STATUSES)})")
    if not 1 <= p.limit <= 10_000:
        raise OperationError(ErrorCode.INVALID_PARAMS, "limit must be between 1 and 10000")
    if len(p.tags) > runoptions.MAX_TAGS:
        raise OperationError(ErrorCode.INVALID_PARAMS, f"at most {runoptions.MAX_TAGS} tags to list by")
    rows = await core.store.list_executions(statuses=p.status, limit=p.limit, before_id=p.before_id, tags=p.tags)
    if not p.with_metadata:
        return [core.view(r) for r in rows]
    # SQLite caps bound parameters; pages of up to 10,000 go in slices.
    latest: dict[int, dict[str, Any]] = {}
    for i in range(0, len(rows), 500):
        latest.update(await core.store.latest_metadata_many([r.id for r in rows[i : i + 500]]))
    return [core.view(r, latest.get(r.id, {})) for r in rows]


@method("executions.stop", m.StopParams)
async def stop(core: Core, caller: Caller, p: m.StopParams) -> m.StopResult:
    if p.all:
        ids = sorted(r.id for r in core.active.values() if caller.admin or r.owner_uid == caller.uid)
    else:
        ids = p.ids
        if not ids:
            raise OperationError(ErrorCode.INVALID_PARAMS, "name at least one execution id, or all")
        for execution_id in ids:
            await _owned(core, caller, execution_id, "stop")
    stopped, ended = await core.stop_many(ids, caller.user)
    return m.StopResult(stopped=stopped, already_ended=ended)


@method("executions.restart", m.RestartParams)
async def restart(core: Core, caller: Caller, p: m.RestartParams) -> m.ExecutionView:
    # A restart is a new execution of the caller: it runs with the caller's secrets, so running
    # someone else's code that way is for admins, and it gets no priority the caller could not ask for.
    await _owned(core, caller, p.id, "restart")
    old = await core.get(p.id)
    priority = old.priority if caller.admin else min(old.priority, 0)
    if restarts.has_changes(p):
        return core.view(await restarts.restart_changed(core, old, p, owner=caller.user, owner_uid=caller.uid,
                                                        priority=priority, secret_names=_secret_names(core, caller)))
    return core.view(await core.restart(p.id, caller.user, caller.uid, priority=priority))


@method("executions.rename", m.RenameParams)
async def rename(core: Core, caller: Caller, p: m.RenameParams) -> m.ExecutionView:
    await _owned(core, caller, p.id, "rename")
    return core.view(await core.rename(p.id, p.title))


@method("executions.delete", m.DeleteParams)
async def delete(core: Core, caller: Caller, p: m.DeleteParams) -> None:
    await _owned(core, caller, p.id, "delete")
    task = (await core.get(p.id)).task_id
    if task is not None:  # a task's children go with it, so its count of children stays true
        raise OperationError(ErrorCode.INVALID_STATE, f"execution {p.id} is a child of task {task}: delete the "
                             f"whole task (runyard task delete {task}), not one of its children")
    await core.delete(p.id, p.purge_outputs)
    return None


@method("executions.metadata", m.MetadataParams)
async def metadata(core: Core, caller: Caller, p: m.MetadataParams) -> m.MetadataPage:
    """One page of points; a chart asks for ``max_points`` and gets every k-th point and the last."""
    row = await core.get(p.id)
    if not 1 <= p.limit <= m.METADATA_PAGE_MAX:
        raise OperationError(ErrorCode.INVALID_PARAMS, f"limit must be between 1 and {m.METADATA_PAGE_MAX}")
    if p.max_points is not None and not 2 <= p.max_points <= m.CHART_POINTS_MAX:
        raise OperationError(ErrorCode.INVALID_PARAMS, f"max_points must be between 2 and {m.CHART_POINTS_MAX}")
    attempt = None if p.all_attempts else row.log_base
    total = await core.store.metadata_count(p.id, attempt)
    every = 1
    if p.max_points is not None and total > p.max_points:
        every = -(-total // (p.max_points - 1))  # at most max_points - 1 picked, and the last
    found = await core.store.metadata(p.id, attempt=attempt, offset=max(0, p.offset), limit=p.limit + 1,
                                      every=every)
    # Points are up to 256 KiB each: a page stops well before the frame limit, JSON escaping included.
    budget = core.config.daemon.max_frame_bytes // 4
    points: list[m.MetadataPoint] = []
    used = 0
    next_offset: int | None = None
    for point in found:
        if len(points) == p.limit or (points and used + point.size > budget):
            next_offset = point.n
            break
        used += point.size + 64
        points.append(m.MetadataPoint(n=point.n, time=point.at, values=point.values, attempt=point.attempt))
    return m.MetadataPage(points=points, next=next_offset, total=total, attempt=row.log_base)


@method("outputs.list", m.IdParams)
async def outputs(core: Core, caller: Caller, p: m.IdParams) -> list[m.OutputView]:
    await core.get(p.id)
    return [m.OutputView(path=path, size=size, sha256=sha, properties=props)
            for path, size, sha, props in await core.store.outputs(p.id)]


class OutputReadParams(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    path: str
    offset: int = 0
    size: int = 1 << 20


@method("outputs.read", OutputReadParams)
async def output_read(core: Core, caller: Caller, p: OutputReadParams) -> bytes:
    await core.get(p.id)
    size = max(0, min(p.size, 2 << 20))
    try:
        return await core.outputs.read(p.id, p.path, max(0, p.offset), size)
    except OutputError as exc:
        raise OperationError(ErrorCode.NOT_FOUND, str(exc)) from None


@method("logs.read", m.LogsReadParams)
async def logs_read(core: Core, caller: Caller, p: m.LogsReadParams) -> m.LogsReadResult:
    await core.get(p.id)
    if p.stream not in (None, "stdout", "stderr"):
        raise OperationError(ErrorCode.INVALID_PARAMS, "stream is stdout or stderr")
    if p.max_bytes < 1 or p.max_bytes > 8 << 20:
        raise OperationError(ErrorCode.INVALID_PARAMS, "max_bytes must be between 1 and 8 MiB")
    logfile = core.log_file(p.id)
    max_bytes = _fits_a_frame(core, p.max_bytes)  # larger asks get less and say where they ended
    first_line: int | None = None
    if p.head is not None:
        data, end = await asyncio.to_thread(logfile.head, p.head, p.stream)
        start = 0
        first_line = 0
    elif p.tail is not None and p.stream is None:
        data, start, end, first_line = await asyncio.to_thread(logfile.tail_numbered, p.tail)
    elif p.tail is not None:
        data, start = await asyncio.to_thread(logfile.tail, p.tail, p.stream)
        end = logfile.size
    else:
        start = p.offset or 0
        data, end = await asyncio.to_thread(logfile.read_range, start, max_bytes)
    return m.LogsReadResult(data=cap_records(data).decode("utf-8", "replace"), start=start, end=end,
                            size=logfile.size, first_line=first_line)


@method("logs.count", m.IdParams)
async def logs_count(core: Core, caller: Caller, p: m.IdParams) -> int:
    await core.get(p.id)
    return await asyncio.to_thread(core.log_file(p.id).line_count)


@method("logs.search", LogsSearchParams)
async def logs_search(core: Core, caller: Caller, p: LogsSearchParams) -> LogsSearchResult:
    await core.get(p.id)  # whoever may read a log may search it
    if not 1 <= p.limit <= SEARCH_LIMIT_MAX or not 0 <= p.context <= SEARCH_CONTEXT_MAX:
        raise OperationError(ErrorCode.INVALID_PARAMS, f"limit must be between 1 and {SEARCH_LIMIT_MAX}, "
                             f"context between 0 and {SEARCH_CONTEXT_MAX}")
    try:
        return await SEARCHER.run(core.log_file(p.id).path, p, core.config.daemon.max_frame_bytes // 4,
                                  core.config.daemon.search_seconds)
    except SearchError as exc:
        raise OperationError(ErrorCode.INVALID_PARAMS, str(exc)) from None


@method("snapshots.has", m.SnapshotHasParams)
async def snapshot_has(core: Core, caller: Caller, p: m.SnapshotHasParams) -> bool:
    try:
        return await asyncio.to_thread(core.snapshots.has, p.id)
    except SnapshotError as exc:
        raise OperationError(ErrorCode.INVALID_PARAMS, str(exc)) from None


@method("snapshots.put", m.SnapshotPutParams)
async def snapshot_put(core: Core, caller: Caller, p: m.SnapshotPutParams) -> None:
    try:
        await asyncio.to_thread(core.snapshots.put_chunk, p.id, p.offset, p.data, p.final,
                                core.config.daemon.max_snapshot_mb << 20)
    except SnapshotError as exc:
        raise OperationError(ErrorCode.INVALID_PARAMS, str(exc)) from None
    return None


@method("snapshots.files", m.IdParams)
async def snapshot_files(core: Core, caller: Caller, p: m.IdParams) -> list[m.SnapshotEntry]:
    row = await core.get(p.id)
    files = await asyncio.to_thread(core.snapshots.list_files, row.snapshot)  # a scan of the whole tar
    return [m.SnapshotEntry(path=name, size=size) for name, size in files]


@method("snapshots.read", m.SnapshotFileParams)
async def snapshot_read(core: Core, caller: Caller, p: m.SnapshotFileParams) -> m.SnapshotFile:
    row = await core.get(p.id)
    if not 1 <= p.max_bytes <= 8 << 20:
        raise OperationError(ErrorCode.INVALID_PARAMS, "max_bytes must be between 1 and 8 MiB")
    try:
        data = await asyncio.to_thread(core.snapshots.read_file, row.snapshot, p.path)
    except SnapshotError as exc:
        raise OperationError(ErrorCode.INVALID_PARAMS, str(exc)) from None
    if data is None:
        raise OperationError(ErrorCode.NOT_FOUND, f"the snapshot of execution {p.id} has no file {p.path!r}")
    limit = _fits_a_frame(core, p.max_bytes)
    head = data[:limit]
    return m.SnapshotFile(path=p.path, size=len(data), data=head.decode("utf-8", "replace"),
                          truncated=len(data) > limit, binary=b"\0" in head[:8192])


@method("hosts.list", m.HostsScanParams)
async def hosts_list(core: Core, caller: Caller, p: m.HostsScanParams) -> list[m.HostView]:
    return await core.host_views()


@method("hosts.drain", m.HostNameParams)
async def hosts_drain(core: Core, caller: Caller, p: m.HostNameParams) -> m.HostView:
    _admin(caller, "drain a host")
    return await core.set_host_admin(p.name, "draining")


@method("hosts.enable", m.HostNameParams)
async def hosts_enable(core: Core, caller: Caller, p: m.HostNameParams) -> m.HostView:
    _admin(caller, "enable a host")
    return await core.set_host_admin(p.name, "enabled")


@method("hosts.scan", m.HostsScanParams)
async def hosts_scan(core: Core, caller: Caller, p: m.HostsScanParams) -> list[m.HostView]:
    # Each scan runs commands on every host at once: not for anyone who can reach the socket.
    _admin(caller, "scan hosts")
    return await core.scan_hosts(p.name)


@method("hosts.doctor", m.HostNameParams)
async def hosts_doctor(core: Core, caller: Caller, p: m.HostNameParams) -> list[m.DoctorCheck]:
    _admin(caller, "run doctor on a host")
    return await core.doctor(p.name)


def _fits_a_frame(core: Core, asked: int) -> int:
    """At most ``asked`` bytes, and few enough that the reply fits one frame with JSON escaping."""
    return min(asked, core.config.daemon.max_frame_bytes // 2)


def _admin(caller: Caller, action: str) -> None:
    if not caller.admin:
        raise OperationError(ErrorCode.PERMISSION_DENIED,
                             f"only root and daemon.admins may {action} (you are {caller.user})")


@method("retention.run", RetentionParams)
async def retention_run(core: Core, caller: Caller, p: RetentionParams) -> RetentionPlan:
    _admin(caller, "run retention" + (" (even as a dry run: it lists everyone's executions)" if p.dry_run else ""))
    return await core.retention.run(dry_run=p.dry_run)


from . import taskapi  # noqa: E402,F401  registers the tasks.* methods
