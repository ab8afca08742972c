"""One execution's owner from its placement until it ends or goes back to the queue.

The runner is the only writer of its execution's state while it owns it. Two
coroutines make it up: the *owner loop* takes events from a mailbox one at a time,
asks the state machine (lifecycle.decide) what each means and records that; the
*work* prepares the workspace, creates or finds the container, follows its logs,
waits for it and collects its outputs, and reports what happens as events to the
owner loop. Anyone else (a stop request, the core's shutdown) also sends events
and awaits the answer, so a stop and a requeue can never cross each other.

A runner can start from nothing (a queued execution just placed) or pick up an
execution the daemon was running before it was killed: both paths meet at
"follow the logs from where the stored log ends, wait for the container, collect".
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runyard.protocol.logformat import format_record, parse_records
from runyard.protocol.messages import Event as OutputsEvent

from . import distributed, inputs, workspace
from .diskspace import is_disk_full, wait_for_space
from .hosts import Host
from .lifecycle import STAY, Event, Exited, Failed, HostLost, LimitReached, Move, Started, StopAsked, Vanished, decide
from .logfile import LogFile
from .logstream import Decoded, metadata_points, split_timestamp, timestamp_now
from .outputs import OutputError, OutputStore
from .record import ExecutionRow
from .runtime import ContainerGone, ContainerSpec, EngineError, ImageMissing, Runtime, attempt_name, runtime_of
from .snapshots import SnapshotStore
from .store import Store, utcnow
from .tasks import watched
from .transport import LinkError, remove_local

log = logging.getLogger("runyard.runner")

_METADATA_BATCH = 5000
_METADATA_DELAY = 0.25  # seconds a metadata point may wait to be recorded
_ENGINE_RETRIES = 5  # runtime errors in a row that are taken for the engine going away
_RETRY_SECONDS = 5.0  # before a runner whose outcome could not be recorded tries again

Publish = Callable[[Any], None]


class RuntimeChanged(Exception):
    """The host's runtime is not the one that started this execution (its configuration changed)."""


class InputFailed(Exception):
    def __init__(self, name: str, error: inputs.InputError) -> None:
        super().__init__(f"input {name}: {error}")
        self.name = name
        self.error = error


@dataclass(slots=True)
class RunnerServices:
    store: Store
    snapshots: SnapshotStore
    outputs: OutputStore
    work_root: Path  # on this machine: where workspaces are prepared and outputs come back to
    stop_grace: int
    host_lost_grace: float
    secrets: dict[str, str]  # for every execution
    user_secrets: dict[str, dict[str, str]]  # owner -> for that owner's executions only
    data_dir: Path
    publish: Publish
    open_log: Callable[[int], LogFile]
    release_log: Callable[[int], Awaitable[None]]
    host_of: Callable[[str], Host | None]
    inputs: inputs.InputFetcher
    track: Callable[[ExecutionRow], None] = lambda _: None  # the core's in-memory copy of active rows
    live_outputs_every: float = 0.0
    host_cache_bytes: int = 100 << 30
    input_progress: Callable[[int, str, int, int | None], None] = lambda *_: None
    metadata_added: Callable[[int], None] = lambda _: None  # an execution recorded new metadata points
    log_ended: Callable[[int], None] = lambda _: None  # its log is final: store it compressed (endedlogs)


def stop_note(by: str, stopping: tuple[str, int] | None) -> str:
    """What a stop did, for the execution's log: who asked, and either what is being stopped and its
    grace (``stopping``: what, seconds) or that it had not started."""
    asked = f"stop asked{f' by {by}' if by else ''}"
    if stopping is None:
        return f"{asked}: it had not started; nothing ran"
    what, grace = stopping
    return f"{asked}: stopping {what} ({grace} s to end before it is killed)"


def host_failed_note(host: str | None, event: Exited, said: str) -> str:
    """Why an execution's host failed it, for its log: a cluster's own words (``said``: NODE_FAIL ...)
    where it ended the job, else a container engine that restarted under it."""
    if event.cause == "node-lost" and said:
        return said
    return f"the container engine on host {host} restarted and ended the execution (exit code {event.code})"


def parse_utc(text: str) -> float:
    """Seconds since the epoch of a stored UTC timestamp (microseconds or nanoseconds, with Z)."""
    whole, frac = split_timestamp(text)
    return whole.timestamp() + int(frac) / 1e9


@dataclass(frozen=True, slots=True)
class _WorkDone:
    """The work coroutine has finished; the owner loop ends after it."""


@dataclass(slots=True)
class _Letter:
    event: Event | _WorkDone
    fields: dict[str, Any]  # what to record with the move (container id, exit code, engine times ...)
    answer: asyncio.Future[Move | None]
    why: str = ""  # for host failures: what happened, for the note in the log


class Runner:
    def __init__(self, services: RunnerServices, row: ExecutionRow, *, just_placed: bool = False) -> None:
        self.s = services
        # Placed by this daemon a moment ago: no container can exist yet, so skip looking for one
        # (a create that collides by name adopts the existing container anyway).
        self.just_placed = just_placed
        self.row = row
        self.id = row.id
        self.container_id: str | None = row.container_id
        self.log = services.open_log(row.id)
        self.host: Host | None = None
        # Where the attempt being worked on begins in the log, which also names its container and
        # workspace. Kept apart from the row: a requeue moves the row on to the next attempt while
        # this one is still being cleaned up.
        self._base = row.log_base
        self._mailbox: asyncio.Queue[_Letter] = asyncio.Queue()
        self._work: asyncio.Task[None] | None = None
        self._stopping_work = False  # the owner cancelled the work because the execution ended early
        self._side: set[asyncio.Task[None]] = set()  # container stops asked, while they run
        self.finished = asyncio.Event()  # set once it no longer owns the execution
        self._keep_workspace = False
        self._points: list[tuple[str, str, dict[str, Any]]] = []  # metadata not yet recorded
        self._points_end = 0
        self._flush_timer: asyncio.TimerHandle | None = None
        self._flushes: set[asyncio.Task[None]] = set()  # timed flushes under way
        self._live: dict[str, tuple[int, str]] = {}  # live outputs stored so far: path -> (size, sha256)
        self._last_output = time.time()  # wall clock of the newest log line, for no-output-timeout
        self._engine_lost = False  # the engine went away while this execution ran
        self._engine_retries = 0
        # Longest first, so a secret that contains another is masked whole.
        self.secrets = {**services.secrets, **services.user_secrets.get(row.owner, {})}
        self._secrets = sorted({v.encode() for v in self.secrets.values()}, key=len, reverse=True)
        self._secret_texts = [v.decode() for v in self._secrets]

    # -- what others may ask ---------------------------------------------------------------

    async def stop(self, by: str = "", reason: str | None = None) -> bool | None:
        """Ask the execution to stop (``by``: who asked, for its log). True: it was active (now
        stopping or stopped); False: it had already ended; None: this runner no longer owns it (ask
        its new owner)."""
        move = await self._send(StopAsked(reason), why=by)
        if move is None:
            return None
        return move is not STAY or self.row.status == "stopping"

    async def _send(self, event: Event | _WorkDone, why: str = "", **fields: Any) -> Move | None:
        """Hand ``event`` to the owner loop and wait for the move it made (None: no longer owned)."""
        if self.finished.is_set():
            return None
        answer: asyncio.Future[Move | None] = asyncio.get_running_loop().create_future()
        self._mailbox.put_nowait(_Letter(event, fields, answer, why))
        return await answer

    # -- the owner loop ----------------------------------------------------------------------

    async def run(self) -> None:
        """Own the execution until it ends or goes back to the queue. Cancelling this (daemon
        shutdown) leaves the container running, to be picked up by the next daemon."""
        opened = False
        try:
            while True:
                try:
                    if not opened:
                        await asyncio.to_thread(self.log.open_for_append)
                        opened = True
                    self.log.base = self.row.log_base
                    self._work = asyncio.create_task(self._work_guarded(), name=f"work-{self.id}")
                    await self._serve_mailbox()
                except OSError as exc:
                    log.error("execution %s: cannot open its log: %s", self.id, exc)
                if self._handed_back():
                    break
                # The work ended with no outcome recorded (the store refused the write: a full disk,
                # say). The execution is still this runner's: try again rather than leave it orphaned.
                log.error("execution %s: its work ended with nothing recorded; trying again in %g s",
                          self.id, _RETRY_SECONDS)
                await asyncio.sleep(_RETRY_SECONDS)
        finally:
            self.finished.set()
            tasks = [*self._side, *([self._work] if self._work is not None else [])]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            while not self._mailbox.empty():
                letter = self._mailbox.get_nowait()
                if not letter.answer.done():
                    letter.answer.set_result(None)
            await self.s.release_log(self.id)
            if self.row.terminal:
                self.s.log_ended(self.id)

    async def _serve_mailbox(self) -> None:
        """Decide letters one at a time until the work says it is done."""
        while True:
            letter = await self._mailbox.get()
            if isinstance(letter.event, _WorkDone):
                letter.answer.set_result(None)
                return
            try:
                move = await self._decide(letter)
            except Exception as exc:
                # Recording failed (the disk is full, say): the sender hears of it and decides.
                log.exception("execution %s: recording %s failed", self.id, letter.event)
                if not letter.answer.done():
                    letter.answer.set_exception(exc)
                continue
            if not letter.answer.done():
                letter.answer.set_result(move)

    def _handed_back(self) -> bool:
        """Ended, or back in the scheduler's queue: no longer this runner's."""
        return self.row.terminal or (self.row.status == "queued" and self.row.host is None)

    async def _decide(self, letter: _Letter) -> Move:
        event = letter.event
        assert not isinstance(event, _WorkDone)
        row = self.row
        move = decide(row.status, row.reason, row.retries, event)
        if move is STAY:
            return move
        fields = dict(letter.fields)
        node_lost = isinstance(event, Exited) and event.cause == "node-lost"
        if isinstance(event, Exited) and (move.requeue or move.reason == "host-lost"):
            await self._note(host_failed_note(row.host, event, letter.why))
        # What failed it, for the notes below: the host (its engine restarted, it went away) or Slurm.
        failed = "Slurm ended its job" if node_lost else f"host {row.host} {letter.why}"
        if move.unplace:
            await self._note(f"host {row.host} {letter.why}; placing it elsewhere")
            await self.s.store.place([(self.id, None, ())])
            self._set(dataclasses.replace(row, host=None, gpu_ids=[]))
        elif move.requeue:
            await self._note(f"{failed}: back to the queue ({row.retries - 1} retries left "
                             "after this one); if the host returns, whatever is left there is removed")
            # The next attempt's container starts its output from scratch: resume from here.
            await self._record(move.status, f"host-lost {row.host}, retrying", host=None, gpu_ids=[],
                               container_id=None, started_at=None, log_base=self.log.size,
                               retries=row.retries - 1, new_attempt=True)
        elif move.status is not None:
            if move.reason == "host-lost":
                await self._note(f"{failed}: giving the execution up")
            elif isinstance(event, HostLost) and row.status == "stopping":
                await self._note(f"host {row.host} {letter.why}: recorded as stopped; if anything of it still "
                                 "runs there, it is removed when the host returns")
            if move.ends:
                fields.setdefault("metadata_offset", self.log.size)
            await self._record(move.status, move.reason, **fields)
        elif move.reason is not None:
            # A limit passed: recorded before the stop, so a daemon killed in between still ends
            # the execution with this reason.
            await self.s.store.update(self.id, reason=move.reason)
            self._set(dataclasses.replace(row, reason=move.reason))
        if isinstance(event, StopAsked) and move.status is not None:
            what = "the container" if runtime_of(self.container_id or "") == "docker" else "the command"
            await self._note(stop_note(letter.why, stopping=(what, self.s.stop_grace)
                                       if move.status == "stopping" else None))
        if move.stop_container:
            self._stop_container()
        if isinstance(event, StopAsked) and move.ends and self._work is not None and not self._work.done():
            # Stopped before it started: whatever the work was preparing is dropped and cleaned up.
            self._stopping_work = True
            self._work.cancel()
        return move

    async def _record(self, status: str | None, reason: str | None, **fields: Any) -> None:
        assert status is not None
        result = await self.s.store.transition(self.id, status, reason=reason, **fields)
        if result is None:  # cannot happen while this runner is the only writer; say so if it does
            log.error("execution %s: the store refused %s -> %s", self.id, self.row.status, status)
            return
        row, event = result
        self._set(row)
        self.s.publish(event)

    def _set(self, row: ExecutionRow) -> None:
        self.row = row
        self.s.track(row)

    def _stop_container(self) -> None:
        host, container = self.host, self.container_id
        runtime = host.runtime if host is not None else None
        if runtime is None or container is None:
            return  # unreachable: asked again when it reattaches (it is "stopping" then)

        async def stop() -> None:
            with contextlib.suppress(EngineError, LinkError, OSError):
                await runtime.stop(container, self.s.stop_grace)

        watched(stop(), f"execution {self.id}: stopping its container", self._side)

    async def _note(self, text: str) -> None:
        """A line from runyard itself in the execution's log (stream S)."""
        await self.log.append(format_record("S", timestamp_now(), text))

    # -- the work ----------------------------------------------------------------------------

    async def _work_guarded(self) -> None:
        try:
            await self._work_on()
        except asyncio.CancelledError:
            if not self._stopping_work:
                raise  # daemon shutdown: the container keeps running and is picked up on restart
            await self._clean_up(remove_any=True)
        except Exception:
            # Only a failure to record the outcome gets here (every other failure is an outcome).
            log.exception("execution %s: recording its outcome failed", self.id)
        finally:
            self._mailbox.put_nowait(_Letter(_WorkDone(), {}, asyncio.get_running_loop().create_future()))

    async def _work_on(self) -> None:
        try:
            while not await self._attempt():
                pass
        except ImageMissing as exc:
            await self._note(str(exc))
            await self._fail("image-missing")
        except InputFailed as exc:
            await self._note(f"input {exc.name}: {exc.error}")
            await self._fail(f"input-failed {exc.name} {exc.error.url}")
        except RuntimeChanged as exc:
            await self._note(str(exc))
            self._keep_workspace = True  # its container may still be using it
            await self._send(Failed("runtime-changed"))
        except ContainerGone as exc:
            await self._note(str(exc))
            await self._collect_outputs()
            await self._send(Vanished())
            await self._clean_up()
        except (EngineError, LinkError) as exc:
            # Named and in the daemon's log too: the note alone once read "runtime error: hpc: -".
            log.error("execution %s: runtime error (%s): %s", self.id, type(exc).__name__, exc)
            await self._note(f"runtime error ({type(exc).__name__}): {exc}")
            await self._fail("runtime-error")
        except Exception:
            log.exception("execution %s failed inside runyard", self.id)
            await self._fail("internal-error")

    async def _fail(self, reason: str) -> None:
        await self._send(Failed(reason))
        await self._clean_up()

    async def _attempt(self) -> bool:
        """One go at the execution on its host; False when the host was lost and it must wait."""
        self._base = self.row.log_base
        host = self.s.host_of(self.row.host or "")
        if host is None:
            await self._send(HostLost(), why="is no longer configured; its work cannot be followed there")
            await asyncio.to_thread(workspace.remove, self._staging())
            return True
        self.host = host
        try:
            # An unreachable host keeps its executions for a grace period: it may come back, and
            # what ran there goes on. Past it, the work is given up or sent back to the queue.
            generation = await asyncio.wait_for(host.wait_ready(), self.s.host_lost_grace)
        except TimeoutError:
            await self._send(HostLost(), why=f"unreachable for {self.s.host_lost_grace:g} s")
            # This attempt's copy here; the host's is removed when the host returns.
            await asyncio.to_thread(workspace.remove, self._staging())
            return True
        try:
            await self._run(host)
            return True
        except (ImageMissing, ContainerGone, InputFailed, RuntimeChanged):
            raise
        except Exception as exc:
            if is_disk_full(exc):
                # The container goes on and its engine keeps its output: once there is space,
                # the next attempt adopts it and reads on from the exact resume point.
                await wait_for_space(self.s.data_dir, f"execution {self.id}")
                return False
            if not await host.still_up(generation):
                await self._note(f"lost contact with host {host.name} ({exc}); the execution goes on there, "
                                 "and runyard picks it up again when the host is back")
                log.warning("execution %s: host %s lost; waiting for it", self.id, host.name)
                return False
            if isinstance(exc, EngineError) and self._engine_retries < _ENGINE_RETRIES:
                # The link is up but the engine failed under us (restarted, crashed). A lost engine
                # has the grace period to come back, like a lost host; what became of the
                # container is seen when it does. One that already answers again gets a new look.
                self._engine_lost = True
                self._engine_retries += 1
                if not await host.engine_answers():
                    await self._note(f"the container engine on host {host.name} stopped answering ({exc}); "
                                     "waiting for it")
                    log.warning("execution %s: engine on %s not answering; waiting", self.id, host.name)
                    host.engine_lost(str(exc))
                else:
                    await asyncio.sleep(1.0)  # a short backoff before looking again
                return False
            raise

    async def _fetch_inputs(self) -> dict[str, list[inputs.InputFile]]:
        """Every input, fetched (or found in the cache) before the execution may start."""
        fetched: dict[str, list[inputs.InputFile]] = {}
        for name, urls in self.row.inputs.items():
            fetched[name] = []
            for url in urls:
                try:
                    files = await self.s.inputs.fetch(
                        url, self.row.owner_uid,
                        functools.partial(self.s.input_progress, self.id, name))
                    fetched[name].extend(inputs.layout(files, url, self.row.input_options.get(name, {})))
                except inputs.InputError as exc:
                    raise InputFailed(name, exc) from None
        return fetched

    def _staging(self) -> Path:
        return self.s.work_root / attempt_name(self.id, self._base)

    async def _run(self, host: Host) -> None:
        runtime, transport = host.runtime, host.transport
        if runtime is None or transport is None:
            raise LinkError(f"host {host.name} is not connected")
        remote = host.work_dir(self.id, self._base)
        if self.container_id is not None and runtime_of(self.container_id) != runtime.kind:
            raise RuntimeChanged(
                f"host {host.name} now runs executions with the {runtime.kind} runtime, but this one was "
                f"started with {runtime_of(self.container_id)} ({self.container_id}): runyard cannot follow "
                "it any more; it is left as it is on the host. Change the host's runtime only when nothing "
                "runs there")
        fresh = False
        if self.container_id is None:
            existing = None if self.just_placed else await runtime.find(self.id, self._base)
            if existing is not None and existing.status == "created":
                # Created before a crash but never started: its workspace may be half copied (the
                # copy overlaps the create), so it is made again rather than started as it is.
                await runtime.remove(existing.id)
                existing = None
            if existing is not None:
                # Created before a crash, never recorded: adopt it so nothing runs twice.
                self.container_id = existing.id
            else:
                self.container_id = await self._create(host, runtime, remote)
                fresh = True
        state = None if fresh else await runtime.state(self.container_id)
        if state is None or state.status in ("created", "pending"):
            # A cluster's job that still pends: start waits for it to run (adopting, never resubmitting).
            await runtime.start(self.container_id)
            state = await runtime.state(self.container_id)
        if state.gpus and list(state.gpus) != self.row.gpu_ids:
            # The labels (or the GPUs a cluster granted the job) are the truth about which GPUs it holds.
            await self.s.store.update(self.id, gpu_ids=list(state.gpus))
            self._set(dataclasses.replace(self.row, gpu_ids=list(state.gpus)))
        if state.job and state.job != self.row.cluster_job:
            # A cluster's job id, for info (a resubmitted attempt's is new).
            await self.s.store.update(self.id, cluster_job=state.job)
            self._set(dataclasses.replace(self.row, cluster_job=state.job))
        if self.row.status == "queued":
            # "started" means the engine has started it; a crash before this is healed on restart
            # by adopting the labelled container, so nothing runs twice. The time is the engine's.
            await self._send(Started(), host=host.name, container_id=self.container_id,
                             **({"started_at": state.started_at} if state.started_at else {}))
        elif self.row.container_id != self.container_id:
            await self.s.store.update(self.id, container_id=self.container_id)
            self._set(dataclasses.replace(self.row, container_id=self.container_id))
        if self.row.status == "stopping":
            # The stop was asked while the daemon was down or the host unreachable: ask again.
            await runtime.stop(self.container_id, self.s.stop_grace)
        await self._catch_up_metadata()
        if not fresh:
            # What it printed while nobody followed goes into the log before anything the daemon
            # itself says now (a time limit that passed meanwhile), so the log reads in order.
            await self._ingest_logs(runtime, follow=False, final=False)
        side = [asyncio.create_task(self._live_outputs(host))] if self.s.live_outputs_every > 0 else []
        if any(self._limits()):
            side.append(asyncio.create_task(self._enforce_limits()))
        try:
            await self._ingest_logs(runtime, follow=True)
            await runtime.wait(self.container_id)
        finally:
            await _cancel_and_check(side, f"execution {self.id}")
        # The stored log is complete if it ends with the engine's last line: the follow stream
        # stores the engine's lines in order, so holding the last means holding all. Otherwise
        # (the stream ended early: engine restart, blip; or a last line left open) one more read
        # from the exact resume point completes it. That read makes the engine decode everything
        # since 10 s before the last stored line, the whole log of a fast printer: only if needed.
        if not await self._holds_last_line(runtime):
            log.debug("execution %s: the stored log lacks the engine's last line: reading from the resume point",
                      self.id)
            await self._ingest_logs(runtime, follow=False)
        state = await runtime.state(self.container_id)
        await self._collect_outputs()
        move = await self._send(Exited(state.exit_code, state.oom_killed, engine_restarted=self._engine_lost,
                                       cause=state.cause),
                                why=state.said or "restarted its container engine", exit_code=state.exit_code,
                                **({"ended_at": state.finished_at} if state.finished_at else {}))
        if move is not None and move.reason == "process-lost":
            await self._note("the process vanished without an exit status (host rebooted?)")
        await self._clean_up()

    async def _create(self, host: Host, runtime: Runtime, remote: str) -> str:
        """The attempt's workspace, laid out on the host, and its container, created (not started)."""
        transport = host.transport
        assert transport is not None
        staging = self._staging()
        root = workspace.CONTAINER_ROOT if runtime.in_container else remote
        try:
            fetched = await self._fetch_inputs()
        finally:
            self.s.input_progress(self.id, "", -1, None)  # done with inputs: no progress to show
        described, wanted = await asyncio.to_thread(
            functools.partial(inputs.place, fetched, staging, root, copy=not host.remote,
                              link=runtime.in_container))
        await asyncio.to_thread(workspace.prepare, staging, self.row, self.s.snapshots, described)
        group = await distributed.member_config(self.s.store, self.row, self.s.host_of)
        if group is not None:  # a distributed task's member: the others' addresses, as Valohai gives them
            await asyncio.to_thread(workspace.write_config, staging / "config", "distributed", group)
        spec = ContainerSpec(
            execution_id=self.id,
            image=self.row.image,
            command=self.row.command,
            environment={**workspace.container_environment(self.row, root=root,
                                                           in_container=runtime.in_container),
                         **(distributed.environment(group) if group is not None else {}),
                         **self.secrets},
            workdir=remote,
            host=host.name,
            gpus=tuple(self.row.gpu_ids),
            cpu_limit=self.row.resources.get("cpu_max"),
            memory_limit_mb=self.row.resources.get("memory_max_mb"),
            attempt=self._base,
            user=host.run_as_user(self.row.owner_uid),
            resources=dict(self.row.resources),
            network="host" if group is not None else "",
        )
        if not host.remote:
            return await runtime.create(spec)

        async def copy() -> None:
            await transport.put_tree(staging, remote)
            # Inputs go through the host's own cache: each file crosses the link once.
            await transport.put_cached(
                [(f.source, f.sha256, f.size, rel) for f, rel in wanted], f"{host.work_root}/.inputs",
                remote, link=runtime.in_container, cache_limit=self.s.host_cache_bytes)

        # The copy and the create overlap: the files only need to be there at start. If either
        # fails the other is cancelled; a container left created is removed by the next attempt.
        try:
            async with asyncio.TaskGroup() as both:
                both.create_task(copy())
                created = both.create_task(runtime.create(spec))
        except ExceptionGroup as group:
            raise group.exceptions[0] from None  # the runner's handlers know the single errors
        await asyncio.to_thread(remove_local, staging)
        return created.result()

    def _limits(self) -> tuple[float | None, float | None]:
        r = self.row.resources
        limit, quiet = r.get("time_limit_seconds"), r.get("no_output_timeout_seconds")
        return (float(limit) if limit else None, float(quiet) if quiet else None)

    def _limits_reached(self, now: float) -> tuple[str | None, float]:
        """Which limit has passed at ``now`` (wall clock), or how long until the next could."""
        limit, quiet = self._limits()
        started = parse_utc(self.row.started_at) if self.row.started_at else now
        waits: list[float] = []
        if limit is not None:
            if now >= started + limit:
                return "time-limit", 0.0
            waits.append(started + limit - now)
        if quiet is not None:
            if now >= self._last_output + quiet:
                return "no-output-timeout", 0.0
            waits.append(self._last_output + quiet - now)
        return None, min(waits, default=3600.0)

    async def _enforce_limits(self) -> None:
        """Stop the execution when valohai.yaml's time-limit or no-output-timeout passes."""
        last = self._last_record_time()
        if last is not None:
            self._last_output = max(last, parse_utc(self.row.started_at) if self.row.started_at else last)
        while True:
            reason, wait = self._limits_reached(time.time())
            if reason is not None:
                break
            await asyncio.sleep(min(wait, 60.0) + 0.01)
        limit, quiet = self._limits()
        seconds = limit if reason == "time-limit" else quiet
        await self._note(f"{reason} of {seconds:g} s reached: stopping the execution")
        await self._send(LimitReached(reason))

    def _last_record_time(self) -> float | None:
        data, _ = self.log.tail(1)
        lines = parse_records(data.decode("utf-8", "replace"))
        if not lines or not lines[0].time:
            return None
        try:
            return parse_utc(lines[0].time)
        except ValueError:
            return None

    async def _catch_up_metadata(self) -> None:
        """Metadata from log records written before a crash but not yet recorded."""
        offset = self.row.metadata_offset
        if offset >= self.log.size:
            return
        while offset < self.log.size:
            data, end = await asyncio.to_thread(self.log.read_range, offset, 4 << 20)
            lines = parse_records(data.decode("utf-8", "replace"))
            points = metadata_points((line.time, line.text) for line in lines if line.stream == "stdout")
            await self.s.store.add_metadata(self.id, points, end, attempt=self._base)
            offset = end

    async def _ingest_logs(self, runtime: Runtime, *, follow: bool, final: bool | None = None) -> None:
        assert self.container_id is not None
        try:
            async for decoded in runtime.read_logs(self.container_id, self.log, follow=follow, final=final):
                await self._write_lines(decoded)
        finally:
            await self._flush_metadata()
            if self._flushes:  # a timed flush still writing: done before anything reads the offset
                await asyncio.gather(*self._flushes)

    async def _holds_last_line(self, runtime: Runtime) -> bool:
        assert self.container_id is not None
        last = await runtime.last_record(self.container_id)
        if last is None:
            return False
        last, _ = self._mask(_valid_utf8(last), [])
        stream = "stderr" if last.startswith(b"E ") else "stdout"
        stored, _ = await asyncio.to_thread(self.log.tail, 1, stream)
        return stored == last

    async def _write_lines(self, decoded: Decoded) -> None:
        if not decoded.records:
            return
        data = decoded.records[0] if len(decoded.records) == 1 else b"".join(decoded.records)
        data = _valid_utf8(data)
        candidates = decoded.candidates
        if self._secrets:
            data, candidates = self._mask(data, candidates)
        points = metadata_points(candidates)
        end = await self.log.append(data)
        self._last_output = time.time()
        if points:
            self._points += points
            self._points_end = end
            # One transaction per batch, not per chunk. The offset recorded with a batch is
            # where its last point ends, so after a crash the points not yet recorded are
            # found again in the log (_catch_up_metadata): none lost, none doubled.
            if len(self._points) >= _METADATA_BATCH:
                await self._flush_metadata()
            elif self._flush_timer is None:
                # Also when the command then goes quiet for an hour: a point waits at most this long.
                self._flush_timer = asyncio.get_running_loop().call_later(_METADATA_DELAY, self._spawn_flush)

    def _mask(self, data: bytes, candidates: list[tuple[str, str]]) -> tuple[bytes, list[tuple[str, str]]]:
        """Secret values printed by the command are stored as ***, in the log and in metadata."""
        for secret in self._secrets:
            if secret in data:
                data = data.replace(secret, b"***")
        masked = []
        for at, text in candidates:
            for value in self._secret_texts:
                if value in text:
                    text = text.replace(value, "***")
            masked.append((at, text))
        return data, masked

    def _spawn_flush(self) -> None:
        self._flush_timer = None
        watched(self._flush_metadata(), f"execution {self.id}: recording metadata", self._flushes)

    async def _flush_metadata(self) -> None:
        if self._flush_timer is not None:
            self._flush_timer.cancel()
            self._flush_timer = None
        if self._points:
            points, self._points = self._points, []
            await self.s.store.add_metadata(self.id, points, self._points_end, attempt=self._base)
            self.s.metadata_added(self.id)  # stop-conditions are checked against the new latest values

    async def _live_outputs(self, host: Host) -> None:
        """Store files the command made read-only while it runs (Valohai's live outputs)."""
        local = self._staging() / "outputs"
        remote = f"{host.work_dir(self.id, self._base)}/outputs" if host.remote else str(local)
        while True:
            await asyncio.sleep(self.s.live_outputs_every)
            transport = host.transport
            if transport is None:
                continue
            try:
                ready = await transport.read_only_files(remote)
                new = [rel for rel, size in ready.items() if self._live.get(rel, (-1, ""))[0] != size]
                if not new:
                    continue
                if host.remote:
                    await transport.get_files(remote, new, local)
                collected = await self.s.outputs.collect(self.id, local, only=set(new))
                await self.s.store.add_outputs(self.id, collected.files)
                for rel, size, sha in collected.files:
                    self._live[rel] = (size, sha)
                    await self._note(f"live output stored: {rel}")
                if collected.files:  # `outputs --sync` fetches them now (seq 0: never stored or replayed)
                    self.s.publish(OutputsEvent(seq=0, execution_id=self.id, kind="outputs", status=self.row.status,
                                                reason=None, at=utcnow()))
            except (LinkError, OutputError, OSError) as exc:
                log.warning("execution %s: live outputs: %s", self.id, exc)

    async def _collect_outputs(self) -> None:
        source = self._staging() / "outputs"
        host = self.host
        if host is not None and host.remote and host.transport is not None:
            await host.transport.get_tree(f"{host.work_dir(self.id, self._base)}/outputs", source)
        try:
            collected = await self.s.outputs.collect(
                self.id, source, skip={rel: size for rel, (size, _) in self._live.items()})
        except OutputError as exc:
            # The run's result stands; its files stay where they are for someone to rescue.
            self._keep_workspace = True
            await self._note(f"outputs not stored: {exc}; they are kept in {source}")
            log.error("execution %s: %s", self.id, exc)
            return
        for refused in collected.refused:
            await self._note(f"output refused: {refused}")
        files = {rel: (rel, size, sha) for rel, (size, sha) in self._live.items()}
        files.update({f[0]: f for f in collected.files})
        if files or source.is_dir():
            await self.s.store.set_outputs(self.id, sorted(files.values()), collected.properties)

    async def _clean_up(self, *, remove_any: bool = False) -> None:
        """Remove this attempt's container and workspace once the execution has ended (or gone back
        to the queue). With ``remove_any``, also a container whose creation was cut short."""
        host = self.host
        runtime = host.runtime if host is not None else None
        if runtime is not None:
            with contextlib.suppress(EngineError, LinkError, OSError):
                container = self.container_id
                if container is None and remove_any:
                    found = await runtime.find(self.id, self._base)
                    container = found.id if found is not None else None
                if container is not None:
                    await runtime.remove(container)
        await self._remove_workspace()

    async def _remove_workspace(self) -> None:
        if self._keep_workspace:
            return
        staging = self._staging()
        host = self.host
        if host is not None and host.remote and host.transport is not None:
            with contextlib.suppress(LinkError):
                await host.transport.remove_tree(host.work_dir(self.id, self._base))
        await asyncio.to_thread(workspace.remove, staging)


async def _cancel_and_check(tasks: list[asyncio.Task[None]], what: str) -> None:
    """Cancel helper tasks and wait for them; a failure of theirs is logged, never left unseen."""
    for task in tasks:
        task.cancel()
    for result in await asyncio.gather(*tasks, return_exceptions=True):
        if isinstance(result, Exception):
            log.error("%s: a helper task failed: %r", what, result)


def _valid_utf8(data: bytes) -> bytes:
    if not data.isascii():  # ASCII (most logs) is valid UTF-8: no need to decode it to know
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            # Binary output: the stored log stays valid UTF-8, bad bytes become U+FFFD.
            data = data.decode("utf-8", "replace").encode("utf-8")
    return data
