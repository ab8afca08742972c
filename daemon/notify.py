"""`[[notify]]` webhooks: a POST per ended execution, signed, retried, never in the daemon's way.

Each endpoint has its own bounded queue and one sender task: a slow or failing endpoint
backs up (and, past queue_size, drops the oldest of) its own deliveries only. The sender
reads ended executions from the event hub, so neither the runner nor the scheduler waits on it.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import stat
import uuid
from typing import TYPE_CHECKING, Any, Final

from . import taskstore
from .lifecycle import TERMINAL
from .opsconfig import NotifySection
from .store import utcnow

if TYPE_CHECKING:
    import aiohttp

    from .core import Core

log = logging.getLogger("runyard.notify")

SIGNATURE_HEADER: Final = "X-Runyard-Signature"
_STATUS_EVENT: Final = {"complete": "complete", "error": "failed", "stopped": "stopped"}
_MAX_SECRET: Final = 4096


class NotifyError(Exception):
    pass


def read_secret(path: str) -> bytes:
    """The HMAC key from ``path``: a regular file opened without following links, not empty."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError as exc:
        raise NotifyError(f"notify secret_file {path}: {exc.strerror or exc}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotifyError(f"notify secret_file {path}: not a regular file")
        if st.st_mode & 0o077:
            log.warning("notify secret_file %s is readable by other users (mode %04o): chmod 600 it",
                        path, st.st_mode & 0o777)
        key = os.read(fd, _MAX_SECRET + 1).strip()
    finally:
        os.close(fd)
    if not key or len(key) > _MAX_SECRET:
        raise NotifyError(f"notify secret_file {path}: must hold a key of 1 to {_MAX_SECRET} bytes")
    return key


def signature(key: bytes, body: bytes) -> str:
    return "sha256=" + hmac.new(key, body, hashlib.sha256).hexdigest()


class _Endpoint:
    def __init__(self, hook: NotifySection, key: bytes | None) -> None:
        self.hook = hook
        self.key = key
        self.queue: asyncio.Queue[bytes] = asyncio.Queue(hook.queue_size)
        self.dropped = 0
        self.delivered = 0
        self.failed = 0

    def wants(self, events: set[str], owner: str) -> bool:
        return bool(events & set(self.hook.events)) and (not self.hook.users or owner in self.hook.users)

    def offer(self, body: bytes) -> None:
        if self.queue.full():
            self.queue.get_nowait()  # the oldest goes: a dead endpoint must not hold memory without end
            self.dropped += 1
            log.warning("notify %s: queue full (%d), dropped the oldest delivery", self.hook.url,
                        self.hook.queue_size)
        self.queue.put_nowait(body)

    async def send_forever(self, session: aiohttp.ClientSession) -> None:
        while True:
            body = await self.queue.get()
            await self._deliver(session, body)

    async def _deliver(self, session: aiohttp.ClientSession, body: bytes) -> None:
        headers = {"Content-Type": "application/json", "User-Agent": "runyard",
                   "X-Runyard-Delivery": uuid.uuid4().hex}
        if self.key is not None:
            headers[SIGNATURE_HEADER] = signature(self.key, body)
        delay = self.hook.backoff_seconds
        import aiohttp  # imported by start already: this costs nothing

        timeout = aiohttp.ClientTimeout(total=self.hook.timeout_seconds)
        for attempt in range(self.hook.retries + 1):
            try:
                async with session.post(self.hook.url, data=body, headers=headers, timeout=timeout,
                                        allow_redirects=False) as answer:
                    if 200 <= answer.status < 300:
                        self.delivered += 1
                        return
                    why = f"HTTP {answer.status}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                why = str(exc) or type(exc).__name__
            if attempt == self.hook.retries:
                break
            log.info("notify %s: %s; retrying in %.1f s", self.hook.url, why, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, 300.0)
        self.failed += 1
        log.warning("notify %s: gave up after %d attempts: %s", self.hook.url, self.hook.retries + 1, why)


def payload(events: list[str], view: dict[str, Any]) -> bytes:
    shown = ("id", "status", "reason", "exit_code", "owner", "step", "title", "host", "tags",
             "created_at", "started_at", "ended_at", "commit", "image")
    return json.dumps({"events": events, "at": utcnow(),
                       "execution": {k: view.get(k) for k in shown}}).encode()


def task_payload(events: list[str], task: taskstore.TaskRecord) -> bytes:
    shown = {"id": task.id, "name": task.name, "title": task.title, "type": task.type, "step": task.step,
             "status": task.status, "reason": task.reason, "owner": task.owner,
             "created_at": task.created_at, "ended_at": task.ended_at}
    return json.dumps({"events": events, "at": utcnow(), "task": shown}).encode()


class Notifier:
    def __init__(self, core: Core, hooks: list[NotifySection]) -> None:
        self.core = core
        # Keys are read now, so a missing secret file stops the start with its name.
        self.endpoints = [_Endpoint(h, read_secret(h.secret_file) if h.secret_file else None) for h in hooks]
        self._tasks: set[asyncio.Task[None]] = set()
        self._session: aiohttp.ClientSession | None = None

    def start(self) -> None:
        # Imported here, after the daemon serves its socket: aiohttp takes a good part of a second.
        import aiohttp

        self._session = aiohttp.ClientSession()
        for endpoint in self.endpoints:
            self._tasks.add(asyncio.create_task(endpoint.send_forever(self._session),
                                                name=f"notify {endpoint.hook.url}"))
        self._tasks.add(asyncio.create_task(self._watch(), name="notify-events"))

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._session is not None:
            await self._session.close()

    async def _watch(self) -> None:
        from .record import view_fields

        hub = self.core.hub
        sub = hub.subscribe()
        try:
            while True:
                event = await sub.queue.get()
                if sub.overflowed and sub.queue.empty():
                    log.warning("notify: fell behind the daemon's events; some ends were not notified")
                    hub.unsubscribe(sub)
                    sub = hub.subscribe()
                if event.kind == "task" and event.task is not None and event.status in _STATUS_EVENT:
                    task = await taskstore.get(self.core.store, event.task)
                    if task is None:
                        continue
                    names = {"task-ended", f"task-{_STATUS_EVENT[event.status]}"}
                    wanted = [e for e in self.endpoints if e.wants(names, task.owner)]
                    body = task_payload(sorted(names), task)
                elif event.kind == "status" and event.status in TERMINAL:
                    names = {"ended", _STATUS_EVENT[event.status]}
                    row = await self.core.store.get(event.execution_id)
                    if row is None:
                        continue
                    wanted = [e for e in self.endpoints if e.wants(names, row.owner)]
                    body = payload(sorted(names), view_fields(row))
                else:
                    continue
                for endpoint in wanted:
                    endpoint.offer(body)
        finally:
            hub.unsubscribe(sub)

