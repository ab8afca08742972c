"""Telling a full disk apart from other failures, and waiting for space to come back."""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import sqlite3
from pathlib import Path
from typing import Final

log = logging.getLogger("runyard.disk")

ENOUGH_BYTES: Final = 8 << 20  # free space at which work resumes
CHECK_SECONDS: Final = 2.0


def is_disk_full(exc: BaseException) -> bool:
    """A write refused for lack of space (or quota), by the filesystem or by SQLite."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:  # also when it is the cause of another error
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in (errno.ENOSPC, errno.EDQUOT):
            return True
        if isinstance(current, sqlite3.OperationalError) and "full" in str(current):
            return True
        current = current.__cause__ or current.__context__
    return False


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


async def wait_for_space(path: Path, why: str) -> None:
    """Return once ``path``'s filesystem has room again; says so in the daemon's log."""
    log.error("%s: the data directory %s is full; waiting for free space (nothing recorded is lost)", why, path)
    while True:
        if free_bytes(path) >= ENOUGH_BYTES:
            break
        await asyncio.sleep(CHECK_SECONDS)  # the filesystem has no event for "space was freed"
    log.warning("%s: the data directory %s has space again; going on", why, path)
