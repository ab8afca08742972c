"""One execution's life on a host: workspace, container, logs, metadata, outputs, end state.

A runner can start from nothing (a queued execution) or pick up an execution
the daemon was running before it was killed: both paths meet at "follow the
logs from where the stored log ends, wait for the container, collect".
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runyard.protocol.logformat import format_record, parse_records

from . import workspace
from .logfile import LogFile
from .logstream import Decoded, DockerLogDecoder, metadata_of
from .outputs import LocalOutputStore
from .runtime_docker import ContainerGone, ContainerSpec, DockerRuntime, EngineError, ImageMissing
from .snapshots import SnapshotStore
from .store import ExecutionRow, Store, utcnow

log = logging.getLogger("runyard.runner")

Publish = Callable[[Any], None]


@dataclass(slots=True)
class RunnerServices:
    store: Store
    runtime: DockerRuntime
    snapshots: SnapshotStore
    outputs: LocalOutputStore
    work_root: Path
    stop_grace: int
    host: str
    publish: Publish
    open_log: Callable[[int], LogFile]
    release_log: Callable[[int], Awaitable[None]]


class Runner:
    def __init__(self, services: RunnerServices, row: ExecutionRow) -> None:
        self.s = services
        self.row = row
        self.id = row.id
        self.container_id: str | None = row.container_id
        self.log = services.open_log(row.id)

    async def _transition(self, status: str, reason: str | None = None, **fields: Any) -> bool:
        result = await self.s.store.transition(self.id, status, reason=reason, **fields)
        if result is None:
            return False
        self.row, event = result
        self.s.publish(event)
        return True

    async def _note(self, text: str) -> None:
        """A line from runyard itself in the execution's log (stream S)."""
        await self.log.append(format_record("S", _now_ns(), text))

    async def run(self) -> None:
        try:
            self.log.open_for_append()
            await self._run()
        except asyncio.CancelledError:
            raise  # daemon shutdown: the container keeps running and is picked up on restart
        except ImageMissing as exc:
            await self._note(str(exc))
            await self._finish_error("image-missing")
        except ContainerGone as exc:
            await self._note(str(exc))
            await self._collect_outputs()
            await self._finish_error("container-removed")
        except EngineError as exc:
            await self._note(f"runtime error: {exc}")
            await self._finish_error("runtime-error")
        except Exception:
            log.exception("execution %s failed inside runyard", self.id)
            await self._finish_error("internal-error")
        finally:
            await self.s.release_log(self.id)

    async def _run(self) -> None:
        work = self.s.work_root / str(self.id)
        fresh = False
        if self.container_id is None:
            existing = await self.s.runtime.find(self.id)
            if existing is not None:
                # Created before a crash, never recorded: adopt it so nothing runs twice.
                self.container_id = existing.id
            else:
                await asyncio.to_thread(workspace.prepare, work, self.row, self.s.snapshots)
                await self.s.runtime.ensure_image(self.row.image)
                spec = ContainerSpec(
                    execution_id=self.id,
                    image=self.row.image,
                    command=self.row.command,
                    environment=workspace.container_environment(self.row),
                    workdir=work,
                    host=self.s.host,
                )
                self.container_id = await self.s.runtime.create(spec)
                fresh = True
        current = await self.s.store.get(self.id)
        if current is None or current.terminal:
            # Stopped (or deleted) while we were preparing: it must not start at all.
            await self.s.runtime.remove(self.container_id)
            workspace.remove(work)
            return
        if fresh or (await self.s.runtime.state(self.container_id)).status == "created":
            await self.s.runtime.start(self.container_id)
        if self.row.status in ("queued", "created"):
            # "started" means the engine has started it; a crash before this line is healed
            # on restart by adopting the labelled container, so nothing runs twice.
            if not await self._transition("started", host=self.s.host, container_id=self.container_id):
                # Stopped in the instant between the check above and the start.
                await self.s.runtime.remove(self.container_id)
                workspace.remove(work)
                return
        elif self.row.container_id != self.container_id:
            await self.s.store.update(self.id, container_id=self.container_id)
        if self.row.status == "stopping":
            # The daemon died between "stopping" and the engine's stop: ask again.
            await self.s.runtime.stop(self.container_id, self.s.stop_grace)
        await self._catch_up_metadata()
        await self._ingest_logs(follow=True)
        await self.s.runtime.wait(self.container_id)
        # One more read from the exact resume point after exit: costs one request, and makes
        # the stored log complete even if the follow stream ended early (engine restart, blip).
        await self._ingest_logs(follow=False)
        state = await self.s.runtime.state(self.container_id)
        await self._collect_outputs()
        await self._finish(state.exit_code, state.oom_killed)
        await self.s.runtime.remove(self.container_id)
        workspace.remove(work)

    async def _catch_up_metadata(self) -> None:
        """Metadata from log records written before a crash but not yet recorded."""
        offset = self.row.metadata_offset
        if offset >= self.log.size:
            return
        while offset < self.log.size:
            data, end = self.log.read_range(offset, 4 << 20)
            points = []
            for line in parse_records(data.decode("utf-8", "replace")):
                if line.stream == "stdout":
                    values = metadata_of(line.text)
                    if values is not None:
                        points.append((line.time, line.text, values))
            await self.s.store.add_metadata(self.id, points, end)
            offset = end

    async def _ingest_logs(self, *, follow: bool) -> None:
        assert self.container_id is not None
        resume = self.log.resume_point()
        decoder = DockerLogDecoder(resume=resume)
        async for chunk in self.s.runtime.logs(self.container_id, resume.since or None, follow=follow):
            await self._write_lines(decoder.feed(chunk))
        await self._write_lines(decoder.flush())

    async def _write_lines(self, decoded: Decoded) -> None:
        if not decoded.records:
            return
        data = b"".join(decoded.records)
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            # Binary output: the stored log stays valid UTF-8, bad bytes become U+FFFD.
            data = data.decode("utf-8", "replace").encode("utf-8")
        points = []
        for ts, text in decoded.candidates:
            values = metadata_of(text)
            if values is not None:
                points.append((ts, text, values))
        end = await self.log.append(data)
        if points:
            await self.s.store.add_metadata(self.id, points, end)

    async def _collect_outputs(self) -> None:
        source = self.s.work_root / str(self.id) / "outputs"
        collected = await asyncio.to_thread(self.s.outputs.collect, self.id, source)
        for refused in collected.refused:
            await self._note(f"output refused: {refused}")
        if collected.files or source.is_dir():
            await self.s.store.set_outputs(self.id, collected.files)

    async def _finish(self, exit_code: int, oom_killed: bool) -> None:
        current = await self.s.store.get(self.id)
        if current is None or current.terminal:
            return
        await self.s.store.update(self.id, metadata_offset=self.log.size)
        if current.status == "stopping":
            await self._transition("stopped", exit_code=exit_code)
        elif oom_killed:
            await self._transition("error", "oom-killed", exit_code=exit_code)
        elif exit_code != 0:
            await self._transition("error", f"exit-code {exit_code}", exit_code=exit_code)
        else:
            await self._transition("complete", exit_code=0)

    async def _finish_error(self, reason: str) -> None:
        current = await self.s.store.get(self.id)
        if current is None or current.terminal:
            return
        if current.status == "stopping":
            await self._transition("stopped")
        else:
            await self._transition("error", reason)
        if self.container_id is not None:
            await self.s.runtime.remove(self.container_id)
        workspace.remove(self.s.work_root / str(self.id))


def _now_ns() -> str:
    now = utcnow()  # microseconds; pad to the fixed nanosecond width
    return now[:-1] + "000Z"
