"""The daemon's services and the operations on executions that requests ask for.

Placement is event-driven: the scheduler wakes when something is submitted,
stopped or finished, or a host changes state, never on a polling timer.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import dataclasses
import functools
import logging
import time
from collections import Counter
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from runyard.protocol.logformat import format_record
from runyard.protocol.messages import Event
from runyard.protocol.methods import DoctorCheck, ExecutionView, GpuView, HostView

from . import runoptions, shell_leftovers, workspace
from .config import Config
from .distributed import Groups, group_size
from .doctor import diagnose
from .endedlogs import EndedLogs
from .events import EventHub
from .fairqueue import FairQueue
from .gpuuse import GpuUse
from .hosts import Host, all_settings
from .inputs import InputFetcher, remove_partial_downloads
from .lifecycle import TERMINAL, StopAsked, decide
from .logfile import LogFile, append_once, remove_log
from .logstore import plain_size
from .logstream import timestamp_now
from .mlyaml import STEP_NAME, is_ml_yaml, prepare_ml
from .outputs import LocalOutputStore, OutputStore, S3OutputStore
from .quotas import QUOTA, Quotas
from .record import ExecutionRow, view_fields
from .retention import Retention
from .runner import Runner, RunnerServices, stop_note
from .runoptions import RunOptions
from .runtime import EngineError, attempt_name
from .runtime_slurm import ClusterHost, PendingReporter, cluster_hosts, cluster_placements
from .scheduler import Capacity, Demand, place, refusal
from .snapshots import SnapshotError, SnapshotStore
from .steps import StepError, load_config, prepare_step
from .store import Store, utcnow
from .taskengine import TaskEngine
from .tasks import watched
from .titles import TitleError, checked_title
from .transport import LinkError, q

log = logging.getLogger("runyard.daemon")

_PASS_UNPACED = 0.002  # seconds: a pass shorter than this is followed at once by the next
_PASS_SPACING_MAX = 0.25
_NOTES_WAIT = 0.5  # seconds a bulk stop's answer waits for its notes in the logs


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
        self.outputs: OutputStore = LocalOutputStore(config.outputs_dir)
        if config.store.kind == "s3":
            self.outputs = S3OutputStore(config.store.bucket, config.store.prefix, config.s3.options)
        self.logs_root = data / "logs"
        self.logs_root.mkdir(parents=True, exist_ok=True)
        self.work_root = data / "work"
        self.work_root.mkdir(parents=True, exist_ok=True)
        self.hub = EventHub()
        self.hosts: dict[str, Host] = {}
        self._open_logs: dict[int, LogFile] = {}
        # Every active execution, in memory; SQLite is the record. Written only through track().
        self.active: dict[int, ExecutionRow] = {}
        self._demands: dict[int, Demand] = {}  # the unplaced queue, as the scheduler sees it
        # The same queue in the scheduler's order, kept sorted as it changes, so that neither a
        # submit nor a pass pays for sorting a long queue.
        self._order: list[tuple[int, float, int]] = []
        self._fair = FairQueue()  # the same queue per owner, for the fair pass (scheduler.py's rule)
        self._groups = Groups()  # the same queue's members of distributed tasks, per task
        self._running: Counter[str] = Counter()  # placed active executions per owner
        self.quotas = Quotas(config.quotas)
        self._placed: dict[int, ExecutionRow] = {}  # active executions that hold a host
        self.gpu_use = GpuUse(data / "gpu-use", self._placed)  # sampled at each inventory read
        self.retention = Retention(self)  # [retention]: ended executions' files, oldest first
        # The owner of each placed active execution. An unplaced queued one is the scheduler's:
        # it is placed, or stopped before it is, only under this lock.
        self._runners: dict[int, Runner] = {}
        self._runner_tasks: dict[int, asyncio.Task[None]] = {}
        self._queue_lock = asyncio.Lock()
        self._background: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._prune_pending = False
        self._scheduler_task: asyncio.Task[None] | None = None
        self._reconciling: dict[str, asyncio.Task[None]] = {}
        self._host_said: dict[str, tuple[str, str]] = {}
        self._progress: dict[int, dict[str, Any]] = {}  # inputs being fetched, per execution
        self._progress_pushed: dict[int, float] = {}  # when each last went out as an event
        self.ended_logs = EndedLogs(self.logs_root, lambda i: i in self.active or i in self._open_logs)
        self.runner_services = RunnerServices(
            store=store, snapshots=self.snapshots, outputs=self.outputs,
            work_root=self.work_root, stop_grace=config.defaults.stop_grace_seconds,
            host_lost_grace=config.scheduler.host_lost_grace_seconds,
            secrets=dict(config.secrets), user_secrets={u: dict(t) for u, t in config.user_secrets.items()},
            data_dir=config.data_dir,
            live_outputs_every=config.defaults.live_outputs_seconds, input_progress=self._input_progress,
            host_cache_bytes=config.cache.host_inputs_max_mb << 20,
            publish=self.publish, open_log=self.live_log, release_log=self._release_log, track=self.track,
            log_ended=self.ended_logs.ended,
            host_of=self.hosts.get, inputs=InputFetcher(
                data / "cache" / "inputs", self.outputs, s3_options=config.s3.options,
                max_bytes=config.cache.inputs_max_mb << 20),
        )
        self.tasks = TaskEngine(self)  # tasks: their children are ordinary executions of this core
        self.runner_services.metadata_added = self.tasks.metadata_added

    # -- lifecycle ------------------------------------------------------------

    async def start(self) -> None:
        await asyncio.to_thread(self.snapshots.remove_partial_uploads)
        await asyncio.to_thread(remove_partial_downloads, self.config.data_dir / "cache" / "inputs")
        admin = await self.store.host_admin()
        for settings in all_settings(self.config):
            self.hosts[settings.name] = Host(
                settings, daemon_id=self.store.daemon_id, ssh=self.config.ssh,
                sockets_dir=self.config.data_dir / "hosts", on_change=self._host_changed,
                admin="draining" if admin.get(settings.name) == "draining" else "enabled",
            )
            self.hosts[settings.name].on_scan = self.gpu_use.sample
        # Slurm clusters: their login nodes are hosts too (connected and reconciled alike).
        pending = PendingReporter(self.store, self.active, self.track, self.publish)
        for cluster in cluster_hosts(self.config, on_pending=pending, daemon_id=self.store.daemon_id,
                                     ssh=self.config.ssh, sockets_dir=self.config.data_dir / "hosts",
                                     on_change=self._host_changed):
            if admin.get(cluster.name) == "draining" and cluster.admin == "enabled":
                cluster.admin = "draining"
            self.hosts[cluster.name] = cluster
        for row in await self.store.active():
            self.track(row)
        self.quotas.all_waiting()  # room freed while the daemon was down is handed out on the first pass
        for row in list(self.active.values()):
            if row.host is not None:
                # Placed before the daemon stopped: its runner finds the container again (or creates
                # it, or ends it as host-lost if the host is gone from the configuration).
                self._spawn(row)
        self.ended_logs.start()
        await self.tasks.start()
        for host in self.hosts.values():
            host.start()
        self._scheduler_task = asyncio.create_task(self._schedule_forever())

    async def shutdown(self) -> None:
        """Stop managing, not running: containers go on and are picked up on the next start."""
        tasks = [t for t in [self._scheduler_task, *self._runner_tasks.values(), *self._background,
                             *self._reconciling.values()] if t]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await self.ended_logs.close()
        for logfile in self._open_logs.values():
            logfile.close()
        await asyncio.gather(*(host.close() for host in self.hosts.values()), return_exceptions=True)

    def _host_changed(self, host: Host) -> None:
        self._wake.set()
        said = (host.state, host.error)
        if self._host_said.get(host.name) != said:
            self._host_said[host.name] = said
            # Kept referenced until done; cancelled on shutdown.
            watched(self._host_event(host.name, *said), f"host {host.name}: recording its state", self._background)
        if host.link == "ready" and host.name not in self._reconciling:
            task = watched(self._reconcile_host(host, host.generation), f"host {host.name}: reconciling")
            self._reconciling[host.name] = task
            task.add_done_callback(functools.partial(self._reconciled, host.name))

    def _reconciled(self, name: str, _: asyncio.Task[None]) -> None:
        self._reconciling.pop(name, None)
        self._wake.set()  # the host takes placements again

    def _input_progress(self, execution_id: int, name: str, done: int, total: int | None) -> None:
        """Bytes of an execution's inputs fetched so far: shown by `info`, pushed as events.

        Pushed at most four times a second per execution, and always at the end of a file.
        """
        if done < 0:
            self._progress.pop(execution_id, None)
            self._progress_pushed.pop(execution_id, None)
            return
        self._progress[execution_id] = {"input": name, "done": done, "total": total}
        now = time.monotonic()
        if now - self._progress_pushed.get(execution_id, 0.0) < 0.25 and done != total:
            return
        self._progress_pushed[execution_id] = now
        self.hub.publish(Event(seq=0, execution_id=execution_id, kind="progress", status="queued",
                               reason=f"input {name}", at=utcnow(), done=done, total=total))

    async def _host_event(self, name: str, state: str, error: str) -> None:
        try:
            self.hub.publish(await self.store.host_event(name, state, error or None))
        except Exception:  # a store failure (disk full, say) must not end as an unretrieved task exception
            log.exception("host %s: recording its state %s failed", name, state)

    async def _reconcile_host(self, host: Host, generation: int) -> None:
        """Remove what a host that (re)connected holds for this daemon and nobody owns any more.

        Each placed execution's runner finds its own container; what is left is a container
        or work directory of an attempt that ended, was deleted, or went back to the queue
        (and may run elsewhere now) while the host was away: it must not run here too.
        """
        try:
            runtime, transport = host.runtime, host.transport
            if runtime is None or transport is None:
                return
            if runtime.kind == "docker":  # shells a daemon killed with -9 left open here
                await shell_leftovers.end_leftovers(shell_leftovers.ShellRecords(self.config.data_dir / "shells"),
                                                    host.name, runtime.docker)  # type: ignore[attr-defined]
            containers = await runtime.list_ours()
            placed_here = {(r.id, r.log_base) for r in self.active.values() if r.host == host.name}
            for leftover in containers:
                if (leftover.execution_id, leftover.attempt) not in placed_here:
                    log.info("host %s: removing %s of execution %s, no longer placed here", host.name,
                             f"container {leftover.id[:12]}" if runtime.kind == "docker" else leftover.id,
                             leftover.execution_id)
                    await runtime.remove(leftover.id)
            await self._remove_stray_work_dirs(host, placed_here)
        except (EngineError, LinkError, OSError) as exc:
            log.warning("host %s: reconciling failed (%s); will retry when it reconnects", host.name, exc)
        finally:
            self._wake.set()

    async def _remove_stray_work_dirs(self, host: Host, placed_here: set[tuple[int, int]]) -> None:
        """Work directories of attempts that no longer run on a pool host (abandoned when it was lost),
        and uploads into its input cache that were cut off.

        Only on pool hosts: this machine's work directory also holds the staging of every runner and
        outputs kept for rescue after a failed upload, which must stay.
        """
        transport = host.transport
        if transport is None or not host.remote or not host.work_root:
            return
        result = await transport.run(f"ls -1 -- {q(host.work_root)}")
        if result.status != 0:
            return
        keep = {attempt_name(i, a) for i, a in placed_here}
        await transport.remove_cut_off_uploads(f"{host.work_root}/.inputs")
        for name in result.stdout.decode("utf-8", "replace").split():
            execution, _, attempt = name.partition("-")
            if not execution.isdigit() or (attempt and not attempt.isdigit()) or name in keep:
                continue  # not an attempt's directory (the input cache), or one still in use
            log.info("host %s: removing work directory %s of an attempt that no longer runs there", host.name, name)
            await transport.remove_tree(f"{host.work_root}/{name}")

    # -- events and logs ------------------------------------------------------

    def publish(self, event: Event) -> None:
        self.hub.publish(event)
        self.tasks.noticed(event)
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

    def followed_log(self, execution_id: int) -> LogFile:
        """The log a follower reads: live while the execution is active, else the finished one.

        Decided from memory, with no await in between: a row read from the store may already be
        stale (an execution that fails its inputs ends within the read), and a live log made for an
        execution whose runner already finished its own would never end for its follower."""
        live = self._open_logs.get(execution_id)
        if live is not None:
            return live
        return self.live_log(execution_id) if execution_id in self.active else self.log_file(execution_id)

    def live_log(self, execution_id: int) -> LogFile:
        logfile = self._open_logs.get(execution_id)
        if logfile is None:
            logfile = LogFile(self.log_path(execution_id))
            self._open_logs[execution_id] = logfile
        return logfile

    async def _note(self, execution_id: int, text: str) -> None:
        """A line from runyard in the log of an execution no runner owns (the scheduler's, unplaced)."""
        logfile = self.live_log(execution_id)
        await asyncio.to_thread(logfile.open_for_append)
        await logfile.append(format_record("S", timestamp_now(), text))

    async def _release_log(self, execution_id: int) -> None:
        if execution_id in self.active:
            # Back in the queue (its host failed it): the next attempt appends to the same log,
            # and whoever follows it keeps following.
            logfile = self._open_logs.get(execution_id)
            if logfile is not None:
                logfile.close()
            return
        logfile = self._open_logs.pop(execution_id, None)
        if logfile is not None:
            await logfile.finish()

    # -- scheduling -----------------------------------------------------------

    def track(self, row: ExecutionRow) -> None:
        """The one way the in-memory view of active executions changes: after the store recorded ``row``."""
        self.quotas.moved(self.active.get(row.id), row)
        if row.terminal:
            self.active.pop(row.id, None)
        else:
            self.active[row.id] = row
        if row.host is not None and not row.terminal:
            if self._placed.get(row.id) is None:
                self._running[row.owner] += 1
            self._placed[row.id] = row
        elif self._placed.pop(row.id, None) is not None:
            self._running[row.owner] -= 1
        old = self._demands.pop(row.id, None)
        if old is not None:
            at = bisect.bisect_left(self._order, _key(old))
            assert self._order[at] == _key(old), "the queue's order lost an entry"
            del self._order[at]
            self._fair.remove(old.owner, _key(old))
            self._groups.remove(old)
        if row.status == "queued" and row.host is None:
            demand = _demand(row)
            self._demands[row.id] = demand
            bisect.insort(self._order, _key(demand))
            self._fair.add(demand.owner, _key(demand))
            self._groups.add(demand)

    def _spawn(self, row: ExecutionRow, *, just_placed: bool = False) -> None:
        """Hand ``row`` to a new runner, its owner until it ends or goes back to the queue."""
        self.live_log(row.id)
        runner = Runner(self.runner_services, row, just_placed=just_placed)
        self._runners[row.id] = runner
        task = asyncio.create_task(runner.run(), name=f"runner-{row.id}")
        self._runner_tasks[row.id] = task

        def done(finished: asyncio.Task[None]) -> None:
            if self._runners.get(row.id) is runner:
                del self._runners[row.id]
                del self._runner_tasks[row.id]
            if not finished.cancelled() and finished.exception() is not None:
                log.error("execution %s: its runner failed", row.id, exc_info=finished.exception())
            self._wake.set()

        task.add_done_callback(done)

    async def _schedule_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            began = time.perf_counter()
            try:
                await self._place()
            except Exception:
                log.exception("scheduling pass failed; will retry on the next change")
            # A pass over a long queue costs milliseconds, and every submit, stop and end wakes
            # the scheduler: passes are spaced so they take at most a fifth of the loop's time,
            # and the changes that arrive meanwhile are handled by one pass. A short queue's
            # pass takes microseconds, so placement stays immediate there.
            spent = time.perf_counter() - began
            if spent > _PASS_UNPACED:
                await asyncio.sleep(min(spent * 4, _PASS_SPACING_MAX))

    def capacities(self, rows: Iterable[ExecutionRow]) -> list[Capacity]:
        """Every host of runyard's own with a known inventory, less what the executions placed on it
        hold. Not a cluster's login node: Slurm places there (cluster_placements), and an execution
        of no pool ("any host") is never sent to a cluster."""
        capacities: dict[str, Capacity] = {}
        for host in self.hosts.values():
            if isinstance(host, ClusterHost):
                continue
            cpus, memory = host.cpus, host.memory_mb
            if cpus is None or memory is None:
                continue
            limit = host.settings.max_concurrent
            capacities[host.name] = Capacity(
                name=host.name, pool=host.settings.pool, total_gpus=len(host.gpus), total_cpus=float(cpus),
                total_memory_mb=memory, free_gpus=[g.uuid for g in host.gpus], free_cpus=float(cpus),
                free_memory_mb=memory, free_slots=limit or None,
                # Nothing new lands on a host until its reconcile has removed what must not run there
                # (a container of an execution that went back to the queue while it was away).
                accepting=host.accepting and host.name not in self._reconciling,
            )
        for row in rows:
            cap = capacities.get(row.host or "")
            if cap is None or row.terminal:
                continue
            if row.gpu_ids:
                held = set(row.gpu_ids)
                cap.free_gpus = [g for g in cap.free_gpus if g not in held]
            cap.free_cpus -= float(row.resources.get("cpus", 0))
            cap.free_memory_mb -= int(row.resources.get("memory_mb", 0))
            if cap.free_slots is not None:
                cap.free_slots -= 1
        return list(capacities.values())

    async def _place(self) -> None:
        if self._prune_pending:
            self._prune_pending = False
            # Beside the pass, not in it: the delete waits its turn at the store like any write.
            watched(self.store.prune_events(self.config.daemon.events_retained), "pruning old events",
                    self._background)
        async with self._queue_lock:
            if self.quotas.freed:
                await self._release(self.quotas.next_waiting())
            if not self._order:
                return
            # An execution back in the queue is placed only once its last runner has finished.
            running = dict(self._running)
            # Owners take turns within a priority (fewest running first): see scheduler.py.
            queue = (self._demands[i] for i in self._fair.walk(running, self._runners))
            placements = place(queue, self.capacities(self._placed.values()), now=time.time(),
                               reserve_after=self.config.scheduler.reserve_after_seconds, ordered=True,
                               running=running,
                               groups=lambda group: self._groups.members(group, self._runners.__contains__))
            clusters = [h for h in self.hosts.values() if isinstance(h, ClusterHost)]
            if clusters:
                pools = {h.settings.pool for h in clusters}
                waiting = [d for _, _, i in self._order if i not in self._runners
                           and (d := self._demands[i]).pool in pools]
                placements += cluster_placements(waiting, [h for h in clusters if h.name not in self._reconciling],
                                                 self.active.values())
            if not placements:
                return
            # One transaction for the pass; each placement is recorded before its runner exists.
            recorded = await self.store.place([(p.execution_id, p.host, p.gpus) for p in placements])
            for placement in placements:
                row = self.active.get(placement.execution_id)
                if placement.execution_id not in recorded or row is None:
                    continue
                row = dataclasses.replace(row, host=placement.host, gpu_ids=list(placement.gpus))
                self.track(row)
                log.info("execution %s: placed on %s%s", row.id, placement.host,
                         f" with GPUs {', '.join(placement.gpus)}" if placement.gpus else "")
                self._spawn(row, just_placed=True)

    def pools(self) -> set[str]:
        return {h.settings.pool for h in self.hosts.values()}

    # -- operations -------------------------------------------------------------

    async def get(self, execution_id: int) -> ExecutionRow:
        row = await self.store.get(execution_id)
        if row is None:
            raise OperationError("not-found", f"there is no execution {execution_id}")
        return row

    def _resources(self, asked: dict[str, Any], pool: str | None, gpus: int | None) -> dict[str, Any]:
        """The step's resources with the command line's overrides, and the pool resolved."""
        resources = dict(asked)
        environment = resources.pop("environment", None)
        pools = self.pools()
        if pool is not None:
            if pool not in pools:
                raise OperationError("invalid-params",
                                     f"no host is in pool {pool!r} (pools: {', '.join(sorted(pools)) or 'none'})")
            resources["pool"] = pool
        elif environment in pools:
            resources["pool"] = environment
        elif environment:
            # A Valohai environment name that is not one of our pools: run anywhere, as the
            # same repository must run unchanged here.
            resources["environment_ignored"] = environment
        if gpus is not None:
            if gpus < 0:
                raise OperationError("invalid-params", f"--gpus must not be negative, not {gpus}")
            resources["gpus"] = gpus
        demand = _demand_of(0, 0, 0.0, resources)
        known = self.capacities([])
        own = [h for h in self.hosts.values() if not isinstance(h, ClusterHost)]
        if demand.pool is None and not own:
            raise OperationError("invalid-params", "every pool is a Slurm cluster: name one with --pool "
                                                   f"({', '.join(sorted(pools))})")
        unknown_pool = any(h.cpus is None or h.memory_mb is None for h in own
                           if demand.pool is None or h.settings.pool == demand.pool)
        reason = None if unknown_pool else refusal(demand, known, pools)
        if reason is not None:
            raise OperationError("invalid-params", reason)
        return resources

    async def submit(self, *, step: str, snapshot: str, parameters: dict[str, str | list[str]],
                     title: str | None, image: str | None, commit: str | None, inputs: dict[str, list[str]],
                     config_path: str, owner: str, owner_uid: int,
                     restarted_from: int | None = None, pool: str | None = None, gpus: int | None = None,
                     priority: int = 0, retries: int = 0, options: RunOptions | None = None) -> ExecutionRow:
        if not 0 <= retries <= 100:
            raise OperationError("invalid-params", f"retries must be between 0 and 100, not {retries}")
        try:
            known, text = self.snapshots.cached(snapshot, config_path)
            if not known:
                if not await asyncio.to_thread(self.snapshots.has, snapshot):
                    raise OperationError("not-found", f"snapshot {snapshot[:12]} was not uploaded")
                text = await asyncio.to_thread(self.snapshots.read_file, snapshot, config_path)
        except SnapshotError as exc:
            raise OperationError("invalid-params", str(exc)) from None
        if text is None:
            raise OperationError("invalid-params", f"the snapshot has no {config_path}")
        document = text.decode("utf-8", "replace")
        try:
            if _is_ml(document):
                if step not in (STEP_NAME, ""):
                    raise StepError(f"{config_path} is an ml.yaml: its one step is {STEP_NAME!r}, not {step!r}")
                prepared = prepare_ml(document, self.config.mlyaml.images, parameters, inputs, config_path)
            else:
                prepared = prepare_step(load_config(document, config_path), step, parameters, inputs)
        except StepError as exc:
            raise OperationError("invalid-params", str(exc)) from None
        chosen_image = image or prepared.image or self.config.defaults.image
        resources = self._resources(prepared.resources, pool, gpus)
        row = ExecutionRow(
            step=prepared.name, title=title, owner=owner, owner_uid=owner_uid,
            parameters=prepared.parameters, inputs=prepared.inputs, image=chosen_image,
            command=prepared.command, environment=prepared.environment, snapshot=snapshot,
            commit_ref=commit, config_path=config_path, restarted_from=restarted_from,
            resources=resources, priority=priority, input_options=prepared.input_options, retries=retries,
            stop_condition=prepared.stop_condition,
        )
        return await self._create(row if options is None else runoptions.apply(row, options))

    async def restart(self, execution_id: int, owner: str, owner_uid: int, *,
                      priority: int | None = None) -> ExecutionRow:
        """A new execution from the exact snapshot, step, parameters, inputs and image.

        ``priority`` (default: the old one's) is decided by the caller's permissions, in api.py.
        """
        old = await self.get(execution_id)
        if not await asyncio.to_thread(self.snapshots.has, old.snapshot):
            raise OperationError("invalid-state", f"snapshot {old.snapshot[:12]} of execution {execution_id} is gone")
        return await self._create(
            ExecutionRow(
                step=old.step, title=old.title, owner=owner, owner_uid=owner_uid,
                parameters=old.parameters, inputs=old.inputs, image=old.image, command=old.command,
                environment=old.environment, snapshot=old.snapshot, commit_ref=old.commit_ref,
                config_path=old.config_path, restarted_from=old.id, resources=old.resources,
                priority=old.priority if priority is None else priority,
                input_options=old.input_options, retries=old.retries, variables=old.variables, tags=old.tags,
                stop_condition=old.stop_condition,
            )
        )

    async def _create(self, new: ExecutionRow) -> ExecutionRow:
        """Record a new execution: in the store, in memory (the scheduler's queue) and to subscribers."""
        try:
            new.title = checked_title(new.title)
        except TitleError as exc:
            raise OperationError("invalid-params", str(exc)) from None
        if self.quotas.enabled:
            refused = self.quotas.refusal(new)
            if refused is not None:
                raise OperationError("invalid-params", refused)
            # Admitted without the queue lock, which a busy store would turn into a convoy that
            # scheduling passes wait behind: the new execution counts against its owner's quota
            # from the decision on (every admission sees it), and for real once it is tracked.
            status = "queued"
            if not self.quotas.room(new):
                new.reason, status = QUOTA, "created"
            else:
                self.quotas.hold(new, 1)
            try:
                row, event = await self.store.create_execution(new, status)
            finally:
                if status == "queued":
                    self.quotas.hold(new, -1)
            self.track(row)
            self.publish(event)
            return row
        row, event = await self.store.create_execution(new)
        self.track(row)
        self.publish(event)
        return row

    async def stop(self, execution_id: int, by: str = "", reason: str | None = None) -> bool:
        """Ask an execution to stop; True if it was still active. Idempotent.

        Sent to whoever owns it now: its runner, or (unplaced in the queue) the scheduler. An
        owner that hands it on meanwhile (a requeue) answers None, and the new owner is asked.
        """
        while True:
            runner = self._runners.get(execution_id)
            if runner is not None:
                answer = await runner.stop(by, reason)
                if answer is not None:
                    return answer
                task = self._runner_tasks.get(execution_id)
                if task is not None:
                    await asyncio.wait([task])  # its done-callback has handed it on by then
                continue
            async with self._queue_lock:
                if execution_id in self._runners:
                    continue  # placed meanwhile
                row = self.active.get(execution_id)
                if row is None:
                    await self.get(execution_id)  # not-found if it does not exist
                    return False
                move = decide(row.status, row.reason, row.retries, StopAsked())
                if move.status is None:
                    return False
                result = await self.store.transition(row.id, move.status, reason=move.reason)
                if result is None:
                    return False
                self.track(result[0])
                self.publish(result[1])
                await self._note(execution_id, stop_note(by, stopping=None))
            await self._release_log(execution_id)  # a follower of its (empty) log is told it ended
            return True

    async def stop_many(self, ids: list[int], by: str = "",
                        reason: str | None = None) -> tuple[list[int], list[int]]:
        """``stop`` for many executions: (stopped, had already ended), in ``ids``' order.

        The unplaced queued ones, the bulk of a runaway sweep, are stopped together: one
        transaction and one worker-thread pass over their logs, not one of each per execution.
        Placed ones are asked through their runners, all at once.
        """
        answers: dict[int, bool] = {}
        async with self._queue_lock:
            queued = [self.active[i] for i in ids
                      if i not in self._runners and i in self.active and self.active[i].host is None]
            moves = []
            for row in queued:
                move = decide(row.status, row.reason, row.retries, StopAsked(reason))
                if move.status is not None:
                    moves.append((row.id, move.status, move.reason))
            made = await self.store.transition_many(moves) if moves else []
            rows = {row.id: row for row in queued}
            for execution_id, status, reason, at, seq in made:
                ended_at = at if status in TERMINAL else rows[execution_id].ended_at
                self.track(dataclasses.replace(rows[execution_id], status=status, reason=reason, ended_at=ended_at))
                self.publish(Event(seq=seq, execution_id=execution_id, kind="status", status=status,
                                   reason=reason, at=at))
                answers[execution_id] = True
            note = format_record("S", timestamp_now(), stop_note(by, stopping=None))
            paths = {i: self.log_path(i) for i, *_ in made if i not in self._open_logs}
            opened = [self.live_log(i) for i, *_ in made if i not in paths]
        if made:
            # Creating thousands of log files takes seconds on some file systems: the answer waits
            # for the notes a little while, and the rest are written after it (the states are
            # recorded already; a follower of one of these logs is told it ended once its note is in).
            notes = watched(self._write_notes([i for i, *_ in made], paths, opened, note),
                            f"writing the stop note of {len(made)} executions", self._background)
            await asyncio.wait([notes], timeout=_NOTES_WAIT)
        rest = [i for i in ids if i not in answers]
        placed = await asyncio.gather(*(self.stop(i, by, reason) for i in rest))
        answers.update(zip(rest, placed, strict=True))
        return [i for i in ids if answers[i]], [i for i in ids if not answers[i]]

    async def _write_notes(self, ids: list[int], paths: dict[int, Path], opened: list[LogFile], note: str) -> None:
        await asyncio.to_thread(_write_notes, paths, opened, note)
        for execution_id in ids:
            await self._release_log(execution_id)

    def quota_lock(self) -> contextlib.AbstractAsyncContextManager[object]:
        """Held while new executions are admitted under the quotas (only when there are any, so
        submits do not wait for scheduling passes otherwise)."""
        return self._queue_lock if self.quotas.enabled else contextlib.nullcontext()

    async def release(self, execution_ids: list[int]) -> None:
        """Queue executions waiting as created (a task's children beyond its maximum-queued-executions):
        unplaced, they are the scheduler's, so they move under its lock."""
        async with self._queue_lock:
            await self._release(execution_ids)

    async def _release(self, execution_ids: list[int]) -> None:
        """``release`` under the queue lock: each goes only if its owner's quota has room; all that
        go are recorded in one transaction (an end frees room for many on a busy day)."""
        rows: dict[int, ExecutionRow] = {}
        for execution_id in execution_ids:
            row = self.active.get(execution_id)
            if row is not None and row.status == "created":
                rows[row.id] = row
        chosen = self.quotas.releasable(list(rows.values()))
        if not chosen:
            return
        for execution_id, status, reason, at, seq in await self.store.transition_many(
                [(row.id, "queued", None) for row in chosen]):
            self.track(dataclasses.replace(rows[execution_id], status=status, reason=reason))
            self.publish(Event(seq=seq, execution_id=execution_id, kind="status", status=status,
                               reason=reason, at=at))

    async def rename(self, execution_id: int, title: str | None) -> ExecutionRow:
        try:
            title = checked_title(title)
        except TitleError as exc:
            raise OperationError("invalid-params", str(exc)) from None
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
        await asyncio.to_thread(self._remove_files, execution_id)
        if purge_outputs:
            await self.outputs.purge(execution_id)

    def _remove_files(self, execution_id: int) -> None:
        """Its log (with its line index and long-line marks) and whatever workspaces are left here,
        of every attempt: outputs kept for rescue after a failed upload go with it."""
        remove_log(self.log_path(execution_id))
        for attempt in [self.work_root / str(execution_id), *self.work_root.glob(f"{int(execution_id)}-*")]:
            workspace.remove(attempt)

    # -- hosts ------------------------------------------------------------------------------

    def host(self, name: str) -> Host:
        host = self.hosts.get(name)
        if host is None:
            known = ", ".join(sorted(self.hosts)) or "none"
            raise OperationError("not-found", f"there is no host {name!r} (hosts: {known})")
        return host

    async def host_views(self, names: list[str] | None = None) -> list[HostView]:
        rows = [r for r in self.active.values() if r.host is not None]
        views = []
        for host in self.hosts.values():
            if names is not None and host.name not in names:
                continue
            mine = [r for r in rows if r.host == host.name]
            holder = {g: r.id for r in mine for g in r.gpu_ids}
            ssh = host.settings.ssh
            views.append(HostView(
                name=host.name, state=host.state, error=host.error, pool=host.settings.pool,
                failed_attempts=host.failed_attempts,
                retry_in_seconds=max(0.0, host.retry_at - time.time()) if host.retry_at else None,
                runtime=host.runtime_name, cluster=host.view() if isinstance(host, ClusterHost) else None,
                address=(ssh.address or ssh.name) if ssh is not None else "this machine",
                gpus=[GpuView(index=g.index, uuid=g.uuid, name=g.name, memory_total_mb=g.memory_total_mb,
                              memory_used_mb=g.memory_used_mb, utilization=g.utilization,
                              execution=holder.get(g.uuid)) for g in host.gpus],
                cpus=host.cpus, cpus_used=sum(float(r.resources.get("cpus", 0)) for r in mine),
                memory_mb=host.memory_mb,
                memory_used_mb=sum(int(r.resources.get("memory_mb", 0)) for r in mine),
                executions=sorted(r.id for r in mine), max_concurrent=host.settings.max_concurrent,
                scanned_at=_iso(host.scanned_at),
                problems=list(host.inventory.problems) if host.inventory else [],
            ))
        return views

    async def set_host_admin(self, name: str, admin: str) -> HostView:
        host = self.host(name)
        if host.admin == "disabled":
            raise OperationError("invalid-state", f"host {name} is disabled in the configuration (enabled = false)")
        await self.store.set_host_admin(name, admin)
        host.set_admin("draining" if admin == "draining" else "enabled")
        log.info("host %s: %s", name, host.state)
        return (await self.host_views([name]))[0]

    async def scan_hosts(self, name: str | None) -> list[HostView]:
        hosts = [self.host(name)] if name is not None else list(self.hosts.values())
        for host in hosts:
            try:
                await host.scan()
            except Exception as exc:
                if name is not None:
                    raise OperationError("invalid-state", f"cannot scan {host.name}: {exc}") from None
        return await self.host_views([h.name for h in hosts])

    async def doctor(self, name: str) -> list[DoctorCheck]:
        return [DoctorCheck(name=c.name, ok=c.ok, detail=c.detail) for c in await diagnose(self.host(name))]

    def view(self, row: ExecutionRow, metadata: dict[str, Any] | None = None) -> ExecutionView:
        return ExecutionView(
            **view_fields(row), input_progress=self._progress.get(row.id),
            log_size=plain_size(self.log_path(row.id), strict=False), metadata=metadata or {},
        )


def _write_notes(paths: dict[int, Path], opened: list[LogFile], note: str) -> None:
    """One runyard line at the end of each log (a worker thread's part of Core.stop_many)."""
    for logfile in opened:
        logfile.open_for_append()
        logfile.write(note)
    for path in paths.values():
        append_once(path, note)


def _iso(epoch: float | None) -> str | None:
    if epoch is None:
        return None
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _epoch(timestamp: str) -> float:
    return datetime.fromisoformat(timestamp.replace("Z", "+00:00")).timestamp()


def _demand_of(execution_id: int, priority: int, submitted: float, resources: dict[str, Any],
               owner: str = "") -> Demand:
    return Demand(
        execution_id=execution_id, priority=priority, submitted=submitted, pool=resources.get("pool"),
        gpus=int(resources.get("gpus", 0)), cpus=float(resources.get("cpus", 0)),
        memory_mb=int(resources.get("memory_mb", 0)), owner=owner,
    )


def _key(d: Demand) -> tuple[int, float, int]:
    """A demand's place in the queue: scheduler.order's rule."""
    return (-d.priority, d.submitted, d.execution_id)


def _demand(row: ExecutionRow) -> Demand:
    demand = _demand_of(row.id, row.priority, _epoch(row.created_at), row.resources, row.owner)
    size = group_size(row)  # a distributed task's member: placed with its whole group
    return dataclasses.replace(demand, group=row.task_id, group_size=size) if size else demand


@functools.lru_cache(maxsize=64)
def _is_ml(document: str) -> bool:
    """Cached by text, as steps.load_config is: a sweep submits the same file many times."""
    return is_ml_yaml(_yaml_or_none(document))


def _yaml_or_none(text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None  # the valohai.yaml path reports it with its location
