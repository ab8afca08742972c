"""`[retention]`: removing ended executions' logs, work directories and outputs, oldest first.

What goes: an ended execution's log (replaced by one line saying when and why, so `logs`
explains itself), its work directories on this machine, its stored outputs (and their list),
and its GPU use record. What stays: the execution's record (status, parameters, metadata,
times), so history and `list` are unchanged. Executions carrying a tag in keep_tags ("*": any
tag) are pinned and never removed. An execution is removed once: its id goes into
<data_dir>/retention.done, so later passes skip it without sizing it again.

A pass lists the ended executions from the store (every_hours, and at start; not per request)
and sizes the files of those not yet removed in a worker thread.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from runyard.protocol.logformat import format_record
from runyard.protocol.retention import RetentionItem, RetentionPlan

from . import workspace
from .lifecycle import TERMINAL
from .logfile import append_once, remove_log
from .logstream import timestamp_now
from .outputs import LocalOutputStore
from .tasks import watched

if TYPE_CHECKING:
    from .core import Core

log = logging.getLogger("runyard.retention")

_GB: Final = 1024**3


@dataclass(frozen=True, slots=True)
class _Ended:
    id: int
    owner: str
    ended_at: str
    tags: tuple[str, ...]


def _epoch(iso: str) -> float:
    try:
        return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return time.time()  # unreadable: treated as just ended, so never removed for its age


def _tree_bytes(path: Path) -> int:
    total = 0
    try:
        st = os.lstat(path)
    except OSError:
        return 0
    if not os.path.isdir(path) or os.path.islink(path):
        return st.st_size
    for root, dirs, files in os.walk(path, followlinks=False):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            try:
                total += os.lstat(os.path.join(root, name)).st_size
            except OSError:
                pass
    return total


class Retention:
    def __init__(self, core: Core) -> None:
        self.core = core
        self.section = core.config.retention
        self.done_path = core.config.data_dir / "retention.done"
        self._lock = asyncio.Lock()
        self._task: asyncio.Task[None] | None = None

    @property
    def enabled(self) -> bool:
        return self.section.days > 0 or self.section.max_disk_gb > 0

    def start(self) -> None:
        if self.enabled:
            self._task = watched(self._forever(), "retention")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    async def _forever(self) -> None:
        while True:
            try:
                plan = await self.run(dry_run=False)
                if plan.executions:
                    log.info("retention: removed the files of %d ended executions (%d bytes)",
                             len(plan.executions), plan.bytes)
            except Exception:
                log.exception("retention pass failed; trying again at the next")
            await asyncio.sleep(self.section.every_hours * 3600)

    def _pinned(self, tags: tuple[str, ...]) -> bool:
        keep = self.section.keep_tags
        return bool(tags) and ("*" in keep or any(t in keep for t in tags))

    async def _ended(self, done: set[int]) -> list[_Ended]:
        """Ended executions not yet handled, oldest first; the handled ones are skipped as read,
        so a long history is not held in memory."""
        marks = ",".join("?" * len(TERMINAL))
        left: list[_Ended] = []
        async with self.core.store.db.execute(
            f"SELECT id, owner, ended_at, tags FROM executions WHERE status IN ({marks}) "
            "AND ended_at IS NOT NULL ORDER BY ended_at, id", tuple(sorted(TERMINAL)),
        ) as cur:
            async for r in cur:
                if int(r[0]) not in done and int(r[0]) not in self.core.active:
                    left.append(_Ended(int(r[0]), str(r[1]), str(r[2]), tuple(json.loads(r[3] or "[]"))))
        return left

    async def run(self, *, dry_run: bool) -> RetentionPlan:
        async with self._lock:  # one pass at a time: a dry run never races a real one
            done = await asyncio.to_thread(self._done)
            left = await self._ended(done)
            sizes = await asyncio.to_thread(lambda: {e.id: self._bytes(e.id) for e in left})
            plan = self._plan(left, sizes, dry_run)
            if not dry_run:
                for item in plan.executions:
                    await self._remove(item)
            return plan

    def _plan(self, left: list[_Ended], sizes: dict[int, int], dry_run: bool) -> RetentionPlan:
        s = self.section
        cutoff = time.time() - s.days * 86400 if s.days > 0 else None
        budget = int(s.max_disk_gb * _GB)
        managed = sum(sizes.values())
        chosen: list[RetentionItem] = []
        pinned = 0
        remaining = managed
        for e in left:  # oldest first
            if self._pinned(e.tags):
                pinned += 1
                continue
            why = ""
            if cutoff is not None and _epoch(e.ended_at) < cutoff:
                why = "age"
            elif budget and remaining > budget:
                why = "budget"
            if why:
                chosen.append(RetentionItem(id=e.id, owner=e.owner, ended_at=e.ended_at, bytes=sizes[e.id], why=why))
                remaining -= sizes[e.id]
        return RetentionPlan(dry_run=dry_run, executions=chosen, bytes=sum(i.bytes for i in chosen),
                             kept_pinned=pinned, managed_bytes=managed, budget_bytes=budget, days=s.days)

    def _work_dirs(self, execution_id: int) -> list[Path]:
        root = self.core.work_root
        return [root / str(execution_id), *root.glob(f"{int(execution_id)}-*")]

    def _bytes(self, execution_id: int) -> int:
        log_path = self.core.log_path(execution_id)
        total = sum(_tree_bytes(p) for p in log_path.parent.glob(f"{int(execution_id)}.log*"))
        total += sum(_tree_bytes(p) for p in self._work_dirs(execution_id))
        outputs = self.core.outputs
        if isinstance(outputs, LocalOutputStore):
            total += _tree_bytes(outputs.root / str(int(execution_id)))
        return total

    def _done(self) -> set[int]:
        try:
            fd = os.open(self.done_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return set()
        with os.fdopen(fd) as fh:
            return {int(line) for line in fh if line.strip().isdigit()}

    async def _remove(self, item: RetentionItem) -> None:
        why = (f"it ended more than {self.section.days:g} days ago" if item.why == "age"
               else f"ended executions' files were over the disk budget of {self.section.max_disk_gb:g} GB")
        note = format_record("S", timestamp_now(),
                             f"runyard retention removed this execution's log, work directories and outputs: {why}")
        core = self.core
        if item.id in core.active:
            return  # restarted into the queue meanwhile (never for an ended id, but never touch a live one)

        def files() -> None:
            log_path = core.log_path(item.id)
            remove_log(log_path)
            append_once(log_path, note)
            for work in self._work_dirs(item.id):
                workspace.remove(work)
            core.gpu_use.remove(item.id)

        await asyncio.to_thread(files)
        await core.outputs.purge(item.id)
        await core.store.set_outputs(item.id, [])
        await asyncio.to_thread(self._mark_done, item.id)
        log.info("retention: removed the files of execution %s (%s, %d bytes)", item.id, item.why, item.bytes)

    def _mark_done(self, execution_id: int) -> None:
        fd = os.open(self.done_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            os.write(fd, f"{int(execution_id)}\n".encode())
        finally:
            os.close(fd)
