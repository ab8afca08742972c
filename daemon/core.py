"""The daemon's services and the operations on executions that requests ask for.

Placement is event-driven: the scheduler wakes when something is submitted,
stopped or finished, never on a polling timer.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from runyard.protocol.messages import Event

from . import workspace
from .config import Config
from .events import EventHub
from .logfile import LogFile
from .outputs import LocalOutputStore
from .runner import Runner, RunnerServices
from .runtime_docker import DockerRuntime
from .snapshots import SnapshotError, SnapshotStore
from .steps import StepError, load_config, prepare_step
from .store import TERMINAL, ExecutionRow, NewExecution, Store

log = logging.getLogger("runyard.daemon")

LOCAL_HOST = "local"


class OperationError(Exception):
    """A request that cannot be done; ``code`` is a protocol ErrorCode."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


class Core:
    def __init__(self, config: Config, store: Store) -> None:
        self.config = config
        self.store = store
        data = config.data_dir
        self.snapshots = SnapshotStore(data / "snapshots")
        self.outputs = LocalOutputStore(config.outputs_dir)
        self.logs_root = data / "logs"
        self.logs_root.mkdir(parents=True, exist_ok=True)
        self.work_root = data / "work"
        self.work_root.mkdir(parents=True, exist_ok=True)
        self.hub = EventHub()
        self.runtime = DockerRuntime(
            config.local.docker_socket, store.daemon_id,
            pull=config.local.pull, pull_timeout=config.local.pull_timeout_seconds,
        )
        self._open_logs: dict[int, LogFile] = {}
        self._runners: dict[int, asyncio.Task[None]] = {}
        self._stop_tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._prune_pending = False
        self._scheduler_task: asyncio.Task[None] | None = None
        self.runner_services = RunnerServices(
            store=store, runtime=self.runtime, snapshots=self.snapshots, outputs=self.outputs,
            work_root=self.work_root, stop_grace=config.defaults.stop_grace_seconds,
            host=LOCAL_HOST, publish=self.publish, open_log=self.live_log,
            release_log=self._release_log,
        )

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        version = await self.runtime.ping()
        log.info("Docker engine %s at %s", version, self.config.local.docker_socket)
        await self.reconcile()
        self._scheduler_task = asyncio.create_task(self._schedule_forever())

    async def shutdown(self) -> None:
        """Stop managing, not running: containers go on and are picked up on the next start."""
        tasks = [t for t in [self._scheduler_task, *self._runners.values(), *self._stop_tasks] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for logfile in self._open_logs.values():
            logfile.close()
        await self.runtime.close()

    async def reconcile(self) -> None:
        """Match the store against the containers the engine has for this daemon."""
        containers = {c.execution_id: c for c in await self.runtime.list_ours()}
        for row in await self.store.active():
            container = containers.pop(row.id, None)
            if row.status in ("started", "stopping") and container is None:
                log.warning("execution %s: its container is gone", row.id)
                runner = Runner(self.runner_services, row)
                await runner._collect_outputs()
                await runner._note("the container disappeared while runyard was not running")
                await runner._finish_error("container-removed")
                await self._release_log(row.id)
            elif container is not None:
                log.info("execution %s: reattaching to container %s (%s)", row.id, container.id[:12],
                         container.status)
                self._spawn(row)
        for leftover in containers.values():
            # The execution ended (or was deleted) but removal did not happen before a crash.
            await self.runtime.remove(leftover.id)
        self._wake.set()

    # -- events and logs ------------------------------------------------------

    def publish(self, event: Event) -> None:
        self.hub.publish(event)
        if event.status in TERMINAL or event.status == "queued":
            self._wake.set()
        if event.seq % 1000 == 0:
            self._prune_pending = True
            self._wake.set()

    def log_path(self, execution_id: int) -> Path:
        return self.logs_root / f"{int(execution_id)}.log"

    def log_file(self, execution_id: int) -> LogFile:
        """The live LogFile of a running execution, or a read-only view of a finished one."""
        live = self._open_logs.get(execution_id)
        if live is not None:
            return live
        logfile = LogFile(self.log_path(execution_id))
        logfile.finished = True
        return logfile

    def live_log(self, execution_id: int) -> LogFile:
        logfile = self._open_logs.get(execution_id)
        if logfile is None:
            logfile = LogFile(self.log_path(execution_id))
            self._open_logs[execution_id] = logfile
        return logfile

    async def _release_log(self, execution_id: int) -> None:
        logfile = self._open_logs.pop(execution_id, None)
        if logfile is not None:
            await logfile.finish()

    # -- scheduling -----------------------------------------------------------

    def _spawn(self, row: ExecutionRow) -> None:
        self.live_log(row.id)
        task = asyncio.create_task(Runner(self.runner_services, row).run(), name=f"runner-{row.id}")
        self._runners[row.id] = task

        def done(_: asyncio.Task[None]) -> None:
            self._runners.pop(row.id, None)
            self._wake.set()

        task.add_done_callback(done)

    async def _schedule_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            try:
                await self._place()
            except Exception:
                log.exception("scheduling pass failed; will retry on the next change")

    async def _place(self) -> None:
        if self._prune_pending:
            self._prune_pending = False
            await self.store.prune_events(self.config.daemon.events_retained)
        if not self.config.local.enabled:
            return
        free = self.config.local.max_concurrent - len(self._runners)
        if free <= 0:
            return
        for row in await self.store.active():
            if free <= 0:
                break
            if row.status == "queued" and row.id not in self._runners:
                self._spawn(row)
                free -= 1

    # -- operations -------------------------------------------------------------

    async def get(self, execution_id: int) -> ExecutionRow:
        row = await self.store.get(execution_id)
        if row is None:
            raise OperationError("not-found", f"there is no execution {execution_id}")
        return row

    async def submit(self, *, step: str, snapshot: str, parameters: dict[str, str], title: str | None,
                     image: str | None, commit: str | None, inputs: dict[str, list[str]],
                     config_path: str, owner: str, owner_uid: int,
                     restarted_from: int | None = None) -> ExecutionRow:
        try:
            if not self.snapshots.has(snapshot):
                raise OperationError("not-found", f"snapshot {snapshot[:12]} was not uploaded")
            text = self.snapshots.read_file(snapshot, config_path)
        except SnapshotError as exc:
            raise OperationError("invalid-params", str(exc)) from None
        if text is None:
            raise OperationError("invalid-params", f"the snapshot has no {config_path}")
        try:
            prepared = prepare_step(load_config(text.decode("utf-8", "replace"), config_path),
                                    step, parameters, inputs)
        except StepError as exc:
            raise OperationError("invalid-params", str(exc)) from None
        chosen_image = image or prepared.image or self.config.defaults.image
        row, event = await self.store.create_execution(
            NewExecution(
                step=prepared.name, title=title, owner=owner, owner_uid=owner_uid,
                parameters=prepared.parameters, inputs=prepared.inputs, image=chosen_image,
                command=prepared.command, environment=prepared.environment, snapshot=snapshot,
                commit_ref=commit, config_path=config_path, restarted_from=restarted_from,
            )
        )
        self.publish(event)
        return row

    async def restart(self, execution_id: int, owner: str, owner_uid: int) -> ExecutionRow:
        """A new execution from the exact snapshot, step, parameters, inputs and image."""
        old = await self.get(execution_id)
        if not self.snapshots.has(old.snapshot):
            raise OperationError("invalid-state", f"snapshot {old.snapshot[:12]} of execution {execution_id} is gone")
        row, event = await self.store.create_execution(
            NewExecution(
                step=old.step, title=old.title, owner=owner, owner_uid=owner_uid,
                parameters=old.parameters, inputs=old.inputs, image=old.image, command=old.command,
                environment=old.environment, snapshot=old.snapshot, commit_ref=old.commit_ref,
                config_path=old.config_path, restarted_from=old.id,
            )
        )
        self.publish(event)
        return row

    async def stop(self, execution_id: int) -> bool:
        """Ask an execution to stop; True if it was still active. Idempotent."""
        row = await self.get(execution_id)
        if row.status in ("created", "queued"):
            result = await self.store.transition(row.id, "stopped", reason="stopped-before-start")
            if result is not None:
                self.publish(result[1])
                return True
            row = await self.get(execution_id)  # it started meanwhile; stop it below
        if row.status == "started":
            result = await self.store.transition(row.id, "stopping")
            if result is not None:
                self.publish(result[1])
                row = result[0]
        if row.status == "stopping":
            if row.container_id is not None:
                task = asyncio.create_task(self.runtime.stop(row.container_id, self.config.defaults.stop_grace_seconds))
                self._stop_tasks.add(task)
                task.add_done_callback(self._stop_tasks.discard)
            return True
        return False

    async def rename(self, execution_id: int, title: str) -> ExecutionRow:
        await self.get(execution_id)
        self.publish(await self.store.rename(execution_id, title))
        return await self.get(execution_id)

    async def delete(self, execution_id: int, purge_outputs: bool) -> None:
        row = await self.get(execution_id)
        if not row.terminal:
            raise OperationError(
                "invalid-state", f"execution {execution_id} is {row.status}: stop it before deleting it"
            )
        self.publish(await self.store.delete(execution_id))
        self.log_path(execution_id).unlink(missing_ok=True)
        workspace.remove(self.work_root / str(execution_id))
        if purge_outputs:
            self.outputs.purge(execution_id)

    def view(self, row: ExecutionRow, metadata: dict[str, Any] | None = None) -> dict[str, Any]:
        path = self.log_path(row.id)
        return {
            "id": row.id, "step": row.step, "title": row.title, "status": row.status,
            "reason": row.reason, "owner": row.owner, "owner_uid": row.owner_uid,
            "parameters": row.parameters, "inputs": row.inputs, "image": row.image,
            "command": row.command, "snapshot": row.snapshot, "commit": row.commit_ref,
            "host": row.host, "container_id": row.container_id, "exit_code": row.exit_code,
            "created_at": row.created_at, "started_at": row.started_at, "ended_at": row.ended_at,
            "restarted_from": row.restarted_from,
            "log_size": path.stat().st_size if path.exists() else 0,
            "metadata": metadata or {},
        }
