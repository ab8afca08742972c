"""Compressing ended executions' logs (logstore.compress_log), one at a time, in a worker thread.

A runner hands its execution's log here once the execution has ended and the log is released
(``ended``), so the state is recorded first and the rewrite costs no one a wait. On start, the
logs left plain by a daemon that stopped (or was killed) before compressing them are found and
queued, and the temporary files of rewrites killed midway are removed.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable
from pathlib import Path

from .logfile import store_ended
from .logstore import COMPRESS_MIN, is_compressed

log = logging.getLogger("runyard.logs")


class EndedLogs:
    def __init__(self, logs_root: Path, in_use: Callable[[int], bool]) -> None:
        self.root = logs_root
        self._in_use = in_use  # active, or its log still open: not to be rewritten
        self._queue: asyncio.Queue[int] = asyncio.Queue()
        self._queued: set[int] = set()
        self._stopping = threading.Event()  # a rewrite in a thread gives up between blocks
        self._worker: asyncio.Task[None] | None = None

    def ended(self, execution_id: int) -> None:
        """The execution ended and nobody appends to its log any more: compress it soon."""
        if execution_id not in self._queued:
            self._queued.add(execution_id)
            self._queue.put_nowait(execution_id)

    def start(self) -> None:
        self._worker = asyncio.create_task(self._work(), name="compressing ended logs")

    async def close(self) -> None:
        self._stopping.set()
        if self._worker is not None:
            self._worker.cancel()
            await asyncio.gather(self._worker, return_exceptions=True)

    async def _work(self) -> None:
        for execution_id in await asyncio.to_thread(self._left_plain):
            self.ended(execution_id)
        while True:
            execution_id = await self._queue.get()
            self._queued.discard(execution_id)
            if self._in_use(execution_id):
                continue
            path = self.root / f"{int(execution_id)}.log"
            try:
                await asyncio.to_thread(store_ended, path, self._stopping.is_set)
            except Exception:
                # Only the disk saving is lost: the plain log stays, as readable as before.
                log.exception("execution %s: compressing its ended log %s failed; it stays plain",
                              execution_id, path)

    def _left_plain(self) -> list[int]:
        """Ended logs a previous daemon left plain, oldest first; removes half-written compressed copies."""
        found: list[tuple[int, int]] = []
        try:
            entries = list(os.scandir(self.root))
        except OSError:
            return []
        for entry in entries:
            name = entry.name
            if name.endswith(".log.z-tmp") and name.split(".", 1)[0].isdigit():
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass
                continue
            stem, dot, ext = name.partition(".")
            if ext != "log" or not stem.isdigit() or not dot:
                continue
            try:
                st = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            if st.st_size < COMPRESS_MIN or self._in_use(int(stem)) or is_compressed(Path(entry.path)):
                continue
            found.append((st.st_mtime_ns, int(stem)))
        return [execution_id for _, execution_id in sorted(found)]
