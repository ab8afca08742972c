"""Background tasks whose failure is always seen.

A task nobody awaits that raises ends as "Task exception was never retrieved",
logged late (when it is garbage collected) or never. Every fire-and-forget task
of the daemon goes through :func:`watched`, which logs its failure at once with
what it was doing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine
from typing import Any, TypeVar

log = logging.getLogger("runyard.daemon")

T = TypeVar("T")


def watched(coro: Coroutine[Any, Any, T], what: str, keep: set[asyncio.Task[Any]] | None = None) -> asyncio.Task[T]:
    """Start ``coro`` as a task; its failure is logged naming ``what``. With ``keep``, the task is held
    there (a strong reference, so it is not collected mid-run) until it is done."""
    task = asyncio.create_task(coro, name=what)
    if keep is not None:
        keep.add(task)
    task.add_done_callback(lambda t: _seen(t, what, keep))
    return task


def _seen(task: asyncio.Task[Any], what: str, keep: set[asyncio.Task[Any]] | None) -> None:
    if keep is not None:
        keep.discard(task)
    if not task.cancelled() and (exc := task.exception()) is not None:
        log.error("%s failed: %s", what, exc, exc_info=exc)
