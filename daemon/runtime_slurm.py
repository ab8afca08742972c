"""Slurm as a runtime: each attempt of an execution is one batch job, submitted on the cluster's login
node over its SSH connection, its files on the file system the nodes share.

The runner drives it like any runtime (create, start, state, read_logs, wait, stop, remove), so what an
ended job means is decided in one place (lifecycle.decide). Here:

- ``start`` submits once (an attempt's job is found again by its name, never submitted twice) and
  returns when the job runs or ended; while it pends, Slurm's reason is reported (``on_pending``).
- every job of this daemon on the cluster is watched through one ``squeue`` per ``poll_seconds``,
  whatever their number, and only while some are watched; a failing controller is asked again with
  backoff, its jobs go on.
- logs are the job's output files, tailed by line on the login node until the job ends.

A cluster pool is also placed differently (``cluster_placements``): runyard does not fit capacity;
it hands executions to the cluster in its own priority order, up to the cluster's ``max_jobs``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Iterator, Sequence
from typing import Final

from runyard.protocol.messages import Event
from runyard.protocol.methods import ClusterView

from . import slurm
from .config import ClusterSection, Config, HostSection
from .hosts import Host, HostSettings
from .inventory import Inventory
from .logfile import LogFile
from .logstream import Decoded, collapse_carriage_returns
from .record import ExecutionRow
from .runtime import SLURM_PREFIX, ContainerGone, ContainerSpec, ContainerState, EngineError, Runtime, attempt_name
from .runtime import store_time_of_epoch as _epoch
from .runtime_process import StreamItem, merged_lines
from .scheduler import Demand, Placement, order
from .store import Store, utcnow
from .tasks import watched
from .transport import LinkError, Transport, q

log = logging.getLogger("runyard.slurm")

_DRAIN_SECONDS: Final = 0.5  # output still being written after the job ended (file system caches)
_MAX_BACKOFF: Final = 30.0
_GONE_POLLS: Final = 2  # polls a submitted job may be missing from squeue before it is looked up alone

OnPending = Callable[[int, str], None]


class SlurmRuntime:
    kind = "slurm"
    in_container = False

    def __init__(self, transport: Transport, work_root: str, *, host: str, daemon_id: str,
                 submit: slurm.Submit, poll_seconds: float, on_pending: OnPending,
                 oci_bundles: dict[str, str] | None = None) -> None:
        self.transport = transport
        self.oci_bundles = oci_bundles  # None: container = "none", the job runs on the node as it is
        self.work_root = work_root
        self.host = host
        self.daemon_id = daemon_id
        self.submit = submit
        self.poll_seconds = poll_seconds
        self.on_pending = on_pending
        self.prefix = slurm.job_name_prefix(daemon_id, host)  # this daemon's jobs of this pool, no one else's
        self.jobs: dict[str, slurm.Job] = {}  # the latest squeue, by job name
        self.polled_at = 0.0
        self.calls = 0  # controller calls made (squeue, sbatch, scancel, scontrol), for the bench
        self._watching: dict[str, int] = {}  # job name -> how many wait on it
        self._poll: asyncio.Event = asyncio.Event()  # set after each poll
        self._error: BaseException | None = None  # the link went away: every waiter hears of it
        self._task: asyncio.Task[None] | None = None
        self._wanted = asyncio.Event()
        self._missing: dict[str, int] = {}
        self._cancelled: dict[str, int] = {}  # names runyard scancelled: polls seen since, while they last
        self._prepared: dict[str, bytes] = {}  # attempt -> its control files, written by start's one command
        self._begun: dict[str, tuple[slurm.Files, float]] = {}  # attempt -> its files when start saw it begin
        # Short commands at once on the login node's one connection: sshd allows 10 sessions per
        # connection (MaxSessions), and each followed job already holds two (its output files' tails).
        self._slots = asyncio.Semaphore(3)

    # -- the one poller ----------------------------------------------------------------------

    def _ensure_poller(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._poll_forever(), name=f"squeue-{self.host}")

    async def _poll_forever(self) -> None:
        delay = self.poll_seconds
        while True:
            if not self._watching:
                self._wanted.clear()
                await self._wanted.wait()
            try:
                await self.poll_now()
                delay = self.poll_seconds
            except LinkError as exc:
                self._error = exc
                self._wake()
                return
            except EngineError as exc:
                # The controller does not answer (restarting, overloaded): jobs go on; ask again later.
                log.warning("cluster %s: squeue failed (%s); asking again in %.0f s", self.host, exc, delay)
                delay = min(delay * 2, _MAX_BACKOFF, self.poll_seconds * 16)
            except Exception as exc:
                # Never a silent end: every waiter would wait forever. They hear of it and retry.
                log.exception("cluster %s: the squeue poller failed", self.host)
                self._error = EngineError(f"{self.host}: polling squeue failed: {exc!r}")
                self._wake()
                return
            await asyncio.sleep(delay)

    async def poll_now(self) -> dict[str, slurm.Job]:
        # Bounded: a controller that hangs (not one that refuses) must not stall every job's watcher.
        timeout = max(30.0, self.poll_seconds * 10)
        try:
            out = await self._run(slurm.SQUEUE, timeout=timeout)
        except LinkError as exc:
            if "did not finish" in str(exc):  # the transport's word for a timeout: the link itself is fine
                raise EngineError(f"{self.host}: squeue did not answer in {timeout:g} s") from None
            raise
        self.jobs = slurm.parse_squeue(out, self.prefix)
        self.polled_at = time.monotonic()
        self._wake()
        return self.jobs

    def _wake(self) -> None:
        self._poll.set()
        self._poll = asyncio.Event()

    async def _next_poll(self) -> None:
        if self._error is not None:
            raise self._error
        await self._poll.wait()
        if self._error is not None:
            raise self._error

    @contextlib.contextmanager
    def _watch(self, name: str) -> Iterator[None]:
        self._watching[name] = self._watching.get(name, 0) + 1
        self._ensure_poller()
        self._wanted.set()
        try:
            yield
        finally:
            self._watching[name] -= 1
            if not self._watching[name]:
                del self._watching[name]

    # -- helpers -----------------------------------------------------------------------------

    def _dir(self, container_id: str) -> str:
        if not container_id.startswith(SLURM_PREFIX):
            raise EngineError(f"{container_id!r} is not a Slurm attempt")
        return container_id[len(SLURM_PREFIX):]

    def _name(self, container_id: str) -> str:
        base = self._dir(container_id).rstrip("/").rsplit("/", 1)[-1]
        execution, _, attempt = base.partition("-")
        return slurm.job_name(self.daemon_id, self.host, int(execution), int(attempt or 0))

    @staticmethod
    def _ids(container_id: str) -> tuple[int, int]:
        base = container_id.rstrip("/").rsplit("/", 1)[-1]
        execution, _, attempt = base.partition("-")
        return (int(execution) if execution.isdigit() else 0, int(attempt) if attempt.isdigit() else 0)

    async def _run(self, command: str, *, input: bytes | None = None, timeout: float | None = None) -> str:
        self.calls += 1
        async with self._slots:
            result = await self.transport.run(command, input=input, timeout=timeout)
        if result.status != 0:
            raise EngineError(f"{self.host}: {result.error_text}")
        return result.stdout.decode("utf-8", "replace")

    async def _files(self, directory: str) -> slurm.Files:
        async with self._slots:
            result = await self.transport.run(f"d={q(directory)}; {slurm.FILES}")
        if result.status != 0:
            raise EngineError(f"{self.host}: reading {directory}/{slurm.CONTROL} failed: {result.error_text}")
        return slurm.parse_files(result.stdout.decode("utf-8", "replace"))

    # -- Runtime -----------------------------------------------------------------------------

    async def ping(self) -> str:
        out = await self._run("sbatch --version && " + slurm.SQUEUE + " > /dev/null")
        return f"Slurm ({out.strip()}) through {self.host}'s login node"

    async def ensure_image(self, image: str) -> None:
        return None  # the job runs on the node as it is (container = "none"); the image is only recorded

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        self._error = self._error or LinkError(f"{self.host}: connection closed")
        self._wake()

    async def create(self, spec: ContainerSpec) -> str:
        d = f"{self.work_root}/{attempt_name(spec.execution_id, spec.attempt)}"
        bundle = await self._oci_bundle(spec.image, d) if self.oci_bundles is not None else ""
        script = slurm.batch_script(d, spec.command, spec.environment, container=bundle)
        r = spec.resources
        limit = r.get("time_limit_seconds")
        argv = slurm.sbatch_argv(
            self.submit, slurm.job_name(self.daemon_id, self.host, spec.execution_id, spec.attempt), d,
            gpus=int(r.get("gpus", 0) or 0), cpus=float(r.get("cpus", 0) or 0),
            memory_mb=int(r.get("memory_mb", 0) or 0),
            time_limit_seconds=float(limit) if limit else None)
        # Written with the submit, in start's one round trip (batch.sh holds the secrets: the
        # directory is 0700 and every file 0600, whatever the umask). Until then the attempt has no
        # control directory, so a daemon killed meanwhile finds nothing to adopt and creates it again.
        self._prepared[SLURM_PREFIX + d] = slurm.control_files(spec.command, script, argv)
        return SLURM_PREFIX + d

    async def _oci_bundle(self, image: str, d: str) -> str:
        """The attempt's own bundle (its config.json, the image's root file system) in its control
        directory: written before the batch script that names it."""
        assert self.oci_bundles is not None
        source = self.oci_bundles.get(image)
        if not source:
            raise EngineError(f"cluster {self.host} has no OCI bundle for image {image!r} (oci_bundles)")
        text = await self._run(f"head -c 1000000 {q(source)}/config.json")
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise EngineError(f"{source}/config.json is not an OCI runtime config: {exc}") from exc
        if not isinstance(spec, dict):
            raise EngineError(f"{source}/config.json is not an OCI runtime config")
        bundle = f"{d}/{slurm.CONTROL}/bundle"
        config = json.dumps(slurm.oci_config(spec, d))
        # Hard links where the bundle and the work directory share a file system (half a second for a
        # Debian image), else a copy.
        rootfs = f"{q(bundle)}/rootfs"
        await self._run(f"umask 077 && mkdir -p {q(bundle)} && cat > {q(bundle)}/config.json && "
                        f"{{ cp -al {q(source)}/rootfs {rootfs} 2>/dev/null || "
                        f"{{ rm -rf {rootfs} && cp -a {q(source)}/rootfs {rootfs}; }}; }}", input=config.encode())
        return bundle

    async def start(self, container_id: str) -> None:
        """Submit (once) and return when the job runs or has ended; Slurm's reason is reported
        while it pends."""
        d = self._dir(container_id)
        name = self._name(container_id)
        files = self._prepared.pop(container_id, None)
        # While this pool's jobs pend, a new one will too: no wait for its script then.
        quick = not any(job.pending for job in self.jobs.values())
        out = await self._run(slurm.start_command(name, d, write=files is not None,
                                                  wait_seconds=slurm.QUICK_START_SECONDS if quick else 0),
                              input=files)
        job_id, seen = slurm.parse_start(out)
        log.info("cluster %s: %s is job %s", self.host, name, job_id)
        if seen.started and seen.exit_code is None:
            # Its script began (so Slurm runs it), its GPUs recorded: no poll needed to say so.
            self._begun[container_id] = (seen, time.monotonic())
            return
        execution_id, _ = self._ids(container_id)
        said = ""
        with self._watch(name):
            while True:
                job = await self._next_sight(container_id, name)
                if job is None:
                    return  # ended and forgotten already: state() looks it up alone
                if not job.pending:
                    return
                # "None" right after the submit: Slurm has not looked at the job yet; nothing to say.
                reason = job.reason if job.reason != "None" else ""
                if reason and reason != said:
                    said = reason
                    self.on_pending(execution_id, reason)

    async def state(self, container_id: str) -> ContainerState:
        d = self._dir(container_id)
        name = self._name(container_id)
        begun = self._begun.pop(container_id, None)
        if begun is not None and time.monotonic() - begun[1] < self.poll_seconds:
            # start() saw its script begin a moment ago: running (wait() hears of its end).
            files = begun[0]
            return await self._state_of(container_id, files, slurm.Job(id=files.job_id, name=name, state="RUNNING",
                                                                       reason="", nodes=""))
        files = await self._files(d)
        if not files.present:
            raise ContainerGone(f"{d} was removed behind runyard's back")
        fresh = self.polled_at and time.monotonic() - self.polled_at < self.poll_seconds / 2
        if not fresh and name not in self._watching:
            # Nobody polls for it right now (asked once, at adoption or the end): ask the controller,
            # unless the last poll was a moment ago (start() just saw it run).
            with contextlib.suppress(EngineError):
                await self.poll_now()
        job = self.jobs.get(name)
        return await self._state_of(container_id, files, job)

    async def _state_of(self, container_id: str, files: slurm.Files, job: slurm.Job | None) -> ContainerState:
        execution_id, attempt = self._ids(container_id)
        started = _epoch(files.started) if files.started else None
        finished = _epoch(files.finished) if files.finished else None

        def made(status: str, code: int = 0, *, oom: bool = False, cause: str = "", said: str = "") -> ContainerState:
            return ContainerState(id=container_id, execution_id=execution_id, status=status, exit_code=code,
                                  oom_killed=oom, gpus=files.gpus, attempt=attempt, started_at=started,
                                  finished_at=finished if status == "exited" else None, cause=cause, said=said,
                                  job=files.job_id or (job.id if job is not None else ""))

        if job is None and not files.job_id:
            return made("created")
        if job is not None and job.pending:
            return made("pending")
        if job is not None and job.running:
            return made("running")
        state = job.state if job is not None else ""
        code = files.exit_code
        if job is None or code is None:
            # Forgotten by squeue (MinJobAge), or ended before its script could record a code.
            looked_state, looked_code = await self._look_up(files.job_id or (job.id if job else ""))
            state = state or looked_state
            code = code if code is not None else looked_code
        code, oom, cause = slurm.outcome(state, code)
        return made("exited", code, oom=oom or files.oom, cause=cause,
                    said=slurm.ended_words(state) if cause else "")

    async def _look_up(self, job_id: str) -> tuple[str, int | None]:
        """One job the poller no longer sees: scontrol while the controller remembers it."""
        if not job_id.replace("_", "").isdigit():
            return "", None
        async with self._slots:
            result = await self.transport.run(slurm.look_up_command(job_id))
        self.calls += 1
        if result.status != 0:
            return "", None
        return slurm.parse_look_up(result.stdout.decode("utf-8", "replace"), job_id)

    async def find(self, execution_id: int, attempt: int = 0) -> ContainerState | None:
        container_id = SLURM_PREFIX + f"{self.work_root}/{attempt_name(execution_id, attempt)}"
        try:
            state = await self.state(container_id)
        except ContainerGone:
            return None
        return None if state.status == "created" else state

    async def list_ours(self) -> list[ContainerState]:
        jobs = await self.poll_now()
        states = []
        for job in jobs.values():
            if job.ended:
                continue
            ids = slurm.parse_job_name(job.name, self.prefix)  # only this pool's (parse_squeue kept no other)
            if ids is not None:
                execution, attempt = ids
                container_id = SLURM_PREFIX + f"{self.work_root}/{attempt_name(execution, attempt)}"
                states.append(ContainerState(id=container_id, execution_id=execution,
                                             status="pending" if job.pending else "running", exit_code=0,
                                             oom_killed=False, attempt=attempt))
        return states

    async def _next_sight(self, container_id: str, name: str) -> slurm.Job | None:
        """The job as the next poll sees it, waiting out polls that miss it; None once it has been
        missing for _GONE_POLLS polls in a row and was not a lost submit made again."""
        while True:
            await self._next_poll()
            job = self.jobs.get(name)
            if job is not None:
                self._missing.pop(name, None)
                return job
            self._missing[name] = self._missing.get(name, 0) + 1
            if self._missing[name] >= _GONE_POLLS:
                self._missing.pop(name, None)
                if not await self._resubmit_if_lost(container_id):
                    return None

    async def wait(self, container_id: str) -> None:
        name = self._name(container_id)
        with self._watch(name):
            while True:
                job = await self._next_sight(container_id, name)
                if job is None:
                    return
                if job.ended:
                    self._cancelled.pop(name, None)
                    return
                if name in self._cancelled:
                    self._cancelled[name] += 1
                    if slurm.cancel_again(job, self._cancelled[name]):
                        # The controller restarted from state saved before runyard's scancel.
                        log.warning("cluster %s: job %s of %s runs again after its cancel; cancelled again",
                                    self.host, job.id, name)
                        self._cancelled[name] = 0
                        await self._run(f"scancel {q(job.id)} 2>/dev/null; true")

    async def last_record(self, container_id: str) -> bytes | None:
        # Its log is the job's output files on the shared file system, read from byte offsets: the
        # final read costs little.
        return None

    async def read_logs(self, container_id: str, log: LogFile, *, follow: bool,
                        final: bool | None = None) -> AsyncIterator[Decoded]:
        counts = await asyncio.to_thread(log.count_by_stream)
        control = f"{self._dir(container_id)}/{slurm.CONTROL}"
        queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        ended = asyncio.create_task(self._ended_then_drain(container_id)) if follow else None
        readers = [
            asyncio.create_task(self._tail(control, name, letter, counts.get(letter, 0), follow, ended,
                                           final if final is not None else not follow, queue))
            for name, letter in (("stdout", "O"), ("stderr", "E"))
        ]
        async for decoded in merged_lines(queue, readers, [ended] if ended else []):
            yield decoded

    async def _ended_then_drain(self, container_id: str) -> None:
        await self.wait(container_id)
        await asyncio.sleep(_DRAIN_SECONDS)

    async def _tail(self, control: str, name: str, letter: str, skip: int, follow: bool,
                    ended: asyncio.Task[None] | None, final: bool,
                    queue: asyncio.Queue[StreamItem]) -> None:
        path = f"{q(control)}/{name}"
        if follow:
            # Its pid first, so the tail is ended on the login node once the job has (no --pid there:
            # the job runs on another machine).
            command = f"echo $$; exec tail -s 0.2 -n +{skip + 1} -F {path} 2>/dev/null"
        else:
            command = f"[ -e {path} ] || exit 0; exec tail -n +{skip + 1} {path}"
        pending = b""
        pid = ""
        stream = self.transport.stream(command)
        try:
            async def read() -> None:
                nonlocal pending, pid
                async for chunk in stream:
                    pending += chunk
                    *lines, pending = pending.split(b"\n")
                    for line in lines:
                        if follow and not pid:
                            pid = line.decode("ascii", "replace").strip()
                            continue
                        queue.put_nowait((letter, collapse_carriage_returns(line.decode("utf-8", "replace"))))

            reader = asyncio.create_task(read())
            waits: set[asyncio.Future[None]] = {reader, *([ended] if ended else [])}
            done, _ = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
            if reader in done:
                reader.result()
            else:
                reader.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await reader
                pending = b""  # the final, non-following read takes it from its first byte
            if pending and final:
                queue.put_nowait((letter, collapse_carriage_returns(pending.decode("utf-8", "replace"))))
            queue.put_nowait(None)
        except (LinkError, EngineError) as exc:
            queue.put_nowait(exc)
        finally:
            await stream.aclose()  # type: ignore[attr-defined]
            if pid.isdigit():
                with contextlib.suppress(LinkError, EngineError):
                    async with self._slots:
                        await self.transport.run(f"kill {int(pid)} 2>/dev/null; true")

    async def stop(self, container_id: str, grace_seconds: int) -> None:
        """TERM to the job's steps (the command), then scancel once the grace has passed."""
        files = await self._files(self._dir(container_id))
        name = self._name(container_id)
        job = self.jobs.get(name)
        job_id = files.job_id or (job.id if job else "")
        if not job_id:
            return
        await self._run(f"scancel --signal=TERM {q(job_id)} 2>/dev/null; true")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.wait(container_id), grace_seconds)
            return
        await self._run(f"scancel {q(job_id)} 2>/dev/null; true")
        self._cancelled[name] = 0

    async def _resubmit_if_lost(self, container_id: str) -> bool:
        """A job squeue no longer lists: if no controller query knows its recorded id and its script
        never began, the controller lost the submit, and it is submitted again under its name (once).
        True when it was: the caller keeps waiting on the new job."""
        d = self._dir(container_id)
        files = await self._files(d)
        if not files.job_id or files.started or files.exit_code is not None:
            return False
        state, _ = await self._look_up(files.job_id)
        if not slurm.lost_submit(files, state):
            return False
        job_id = (await self._run(slurm.resubmit_command(self._name(container_id), f"{d}/{slurm.CONTROL}"))).strip()
        if not job_id:
            return False
        log.warning("cluster %s: the controller lost job %s of %s; submitted again as job %s", self.host,
                    files.job_id, self._name(container_id), job_id)
        return True

    async def remove(self, container_id: str) -> None:
        """Like `docker rm -f`: a job still pending or running is cancelled, then its directory goes."""
        d = self._dir(container_id)
        name = self._name(container_id)
        self._prepared.pop(container_id, None)
        self._begun.pop(container_id, None)
        with contextlib.suppress(LinkError, EngineError):
            self.calls += 1
            await self.transport.run(
                f"r={q(d)}/{slurm.CONTROL}; id=$(cat \"$r/job_id\" 2>/dev/null | tr -cd 0-9_); "
                f"[ -n \"$id\" ] && scancel \"$id\" 2>/dev/null; scancel --me -n {q(name)} 2>/dev/null; "
                f"rm -rf {q(d)}")


class ClusterHost(Host):
    """A cluster's login node: connected, reconnected and checked like a pool host, its runtime
    Slurm's. It has no capacity of its own for runyard to fit: Slurm places."""

    def __init__(self, cluster: ClusterSection, *, on_pending: OnPending, **kwargs: object) -> None:
        section = HostSection(name=cluster.name, pool=cluster.pool or cluster.name, address=cluster.address,
                              port=cluster.port, user=cluster.user, identity=cluster.identity,
                              known_hosts=cluster.known_hosts, work_dir=cluster.work_dir,
                              runtime="process", max_concurrent=cluster.max_jobs, enabled=cluster.enabled)
        super().__init__(HostSettings.of_host(section), **kwargs)  # type: ignore[arg-type]
        self.cluster = cluster
        self.on_pending = on_pending
        self.partition: slurm.Partition | None = None  # the last sinfo

    @property
    def runtime_name(self) -> str:
        return "slurm"

    def view(self) -> ClusterView:
        """What `runyard hosts` shows of the cluster: the last sinfo, and this daemon's jobs from the
        last squeue (no call of its own)."""
        runtime = self.runtime
        jobs = list(runtime.jobs.values()) if isinstance(runtime, SlurmRuntime) else []
        p = self.partition or slurm.Partition(nodes={}, gpus_total=0, gpus_allocated=0)
        return ClusterView(partition=self.cluster.partition or "(default)", nodes=dict(p.nodes),
                           gpus_total=p.gpus_total, gpus_allocated=p.gpus_allocated,
                           jobs_pending=sum(j.pending for j in jobs), jobs_running=sum(j.running for j in jobs))

    @property
    def cpus(self) -> int | None:
        return None  # never fitted by runyard's scheduler (cluster_placements hands work to Slurm)

    @property
    def memory_mb(self) -> int | None:
        return None

    async def _scan(self) -> Inventory:
        assert self.transport is not None
        result = await self.transport.run(slurm.sinfo_command(self.cluster.partition), timeout=60)
        if result.status != 0:
            raise EngineError(f"sinfo failed: {result.error_text}")
        self.partition = slurm.parse_sinfo(result.stdout.decode("utf-8", "replace"))
        if not self.partition.nodes:
            raise EngineError(f"sinfo shows no nodes in partition {self.cluster.partition or '(the default)'}")
        inventory = Inventory(cpus=0, memory_mb=0, memory_available_mb=None)
        changed = self.inventory is None
        self.inventory = inventory
        self.scanned_at = time.time()
        if changed:
            self.on_change(self)
        return inventory

    async def _make_runtime(self) -> Runtime:
        assert self.transport is not None
        c = self.cluster
        # Each cluster pool has a directory of its own: pools of one daemon may share a work_dir (two
        # partitions of one cluster), and one pool's reconciling must not take the other's attempts
        # for strays.
        own = f"{self.work_root}/{self.name}"
        result = await self.transport.run(f"mkdir -p {q(own)}")
        if result.status != 0:
            raise EngineError(f"cannot create work directory {own}: {result.error_text}")
        self.work_root = own
        runtime = SlurmRuntime(self.transport, self.work_root, host=self.name, daemon_id=self.daemon_id,
                               submit=slurm.Submit(partition=c.partition, gres_type=c.gres_type, account=c.account,
                                                   qos=c.qos, extra=tuple(c.sbatch_args)),
                               poll_seconds=c.poll_seconds, on_pending=self.on_pending,
                               oci_bundles=dict(c.oci_bundles) if c.container == "oci" else None)
        await runtime.ping()
        return runtime


def cluster_placements(queue: Sequence[Demand], hosts: Iterable[Host],
                       active: Iterable[ExecutionRow]) -> list[Placement]:
    """Queued executions of cluster pools handed to their cluster in runyard's priority order, up to
    each cluster's cap on jobs not yet ended. No fitting: Slurm decides where and when they run."""
    clusters = {h.settings.pool: h for h in hosts if isinstance(h, ClusterHost) and h.accepting}
    if not clusters:
        return []
    outstanding: dict[str, int] = {}
    for row in active:
        if row.host is not None and not row.terminal:
            outstanding[row.host] = outstanding.get(row.host, 0) + 1
    placements = []
    for d in order(x for x in queue if x.pool in clusters):
        host = clusters[d.pool or ""]
        if outstanding.get(host.name, 0) >= host.cluster.max_jobs:
            continue
        outstanding[host.name] = outstanding.get(host.name, 0) + 1
        placements.append(Placement(d.execution_id, host.name, ()))
    return placements


class PendingReporter:
    """Slurm's pending reason on the execution while its job waits (``reason``, "slurm: Resources"),
    recorded and pushed to whoever follows the queue."""

    def __init__(self, store: Store, active: dict[int, ExecutionRow], track: Callable[[ExecutionRow], None],
                 publish: Callable[[Event], None]) -> None:
        self.store, self.active, self.track, self.publish = store, active, track, publish
        self._tasks: set[asyncio.Task[None]] = set()

    def __call__(self, execution_id: int, reason: str) -> None:
        watched(self._record(execution_id, f"slurm: {reason}"), f"execution {execution_id}: pending reason",
                self._tasks)

    async def _record(self, execution_id: int, reason: str) -> None:
        row = self.active.get(execution_id)
        if row is None or row.status != "queued":
            return
        await self.store.update(execution_id, reason=reason)
        # Looked up again: while the store wrote, its runner may have moved it on (started, ended), and
        # a stale copy must not bring it back.
        row = self.active.get(execution_id)
        if row is None or row.status != "queued":
            return
        self.track(dataclasses.replace(row, reason=reason))
        self.publish(Event(seq=0, execution_id=execution_id, kind="pending", status="queued", reason=reason,
                           at=utcnow(), host=row.host))


def cluster_hosts(config: Config, *, on_pending: OnPending, **kwargs: object) -> list[ClusterHost]:
    """A host for each enabled [[clusters]] entry (its login node)."""
    return [ClusterHost(c, on_pending=on_pending, **kwargs) for c in config.clusters]
