"""The asyncio client that the CLI and the TUI share. It never imports daemon code."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import os
from collections.abc import AsyncIterator, Callable
from typing import Any, Final, TypeVar

import msgspec

from .framing import DEFAULT_MAX_FRAME, FrameDecoder, encode_frame
from .logsearch import LogsSearchResult
from .messages import (
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    Error,
    ErrorCode,
    Event,
    Hello,
    LogData,
    LogEnd,
    Message,
    Request,
    Response,
    Resync,
    ShellData,
    ShellExit,
    Welcome,
    decode_message,
    encode_message,
)
from .methods import (
    METADATA_PAGE_MAX,
    DoctorCheck,
    ExecutionView,
    HostView,
    LogsReadResult,
    MetadataPage,
    MetadataParams,
    MetadataPoint,
    OutputView,
    SnapshotEntry,
    SnapshotFile,
    StopResult,
)

DEFAULT_SOCKET: Final = "/run/runyard/runyard.sock"
T = TypeVar("T")


def default_socket_path() -> str:
    return os.environ.get("RUNYARD_SOCKET") or DEFAULT_SOCKET


class RemoteError(Exception):
    """The daemon refused a request; ``code`` is one of ``ErrorCode``."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class ConnectionLost(Exception):
    pass


class Client:
    """One connection to the daemon. Use ``await Client.connect(path)``."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[Any]] = {}
        self._log_subs: dict[int, asyncio.Queue[LogData | LogEnd | None]] = {}
        self._event_queues: list[asyncio.Queue[Event | Resync | None]] = []
        self._shell_subs: dict[int, asyncio.Queue[ShellData | ShellExit | None]] = {}
        self._decoder = FrameDecoder(DEFAULT_MAX_FRAME)
        self._reader_task: asyncio.Task[None] | None = None
        self._closed = False
        self.welcome: Welcome | None = None

    @classmethod
    async def connect(cls, path: str | None = None, *, client_name: str = "runyard-client") -> Client:
        path = path or default_socket_path()
        try:
            reader, writer = await asyncio.open_unix_connection(path, limit=DEFAULT_MAX_FRAME)
        except (FileNotFoundError, ConnectionRefusedError) as exc:
            raise ConnectionLost(
                f"cannot reach the runyard daemon at {path}: {exc.strerror or exc}. "
                "Is `runyard daemon` running? (set --socket or RUNYARD_SOCKET)"
            ) from exc
        except PermissionError as exc:
            raise ConnectionLost(
                f"no permission to open {path}: ask an admin to add you to the socket's group"
            ) from exc
        client = cls(reader, writer)
        await client._handshake(client_name)
        return client

    async def _handshake(self, client_name: str) -> None:
        self._send(Hello(client=client_name, major=PROTOCOL_MAJOR, minor=PROTOCOL_MINOR))
        first = await self._read_one()
        if isinstance(first, Error):
            raise RemoteError(first.code, first.message)
        if not isinstance(first, Welcome):
            raise ConnectionLost(f"daemon answered hello with {type(first).__name__}")
        self.welcome = first
        self._reader_task = asyncio.create_task(self._read_loop())

    async def _read_one(self) -> Message:
        while True:
            frames = self._decoder.feed(b"")
            if frames:
                raise ConnectionLost("unexpected frames before welcome")
            chunk = await self._reader.read(65536)
            if not chunk:
                raise ConnectionLost("daemon closed the connection during the handshake")
            frames = self._decoder.feed(chunk)
            if frames:
                if len(frames) > 1:
                    # Frames after the welcome belong to the read loop; there are none yet.
                    raise ConnectionLost("daemon sent frames before the handshake completed")
                return decode_message(frames[0])

    def _send(self, message: Message) -> None:
        if self._closed:
            raise ConnectionLost("connection to the daemon is closed")
        self._writer.write(encode_frame(encode_message(message)))

    async def _read_loop(self) -> None:
        try:
            while True:
                chunk = await self._reader.read(262144)
                if not chunk:
                    break
                for payload in self._decoder.feed(chunk):
                    self._dispatch(decode_message(payload))
        except (ConnectionError, msgspec.DecodeError, msgspec.ValidationError):
            pass
        finally:
            self._fail_all()

    def _dispatch(self, message: Message) -> None:
        if isinstance(message, Response):
            fut = self._pending.pop(message.id, None)
            if fut is not None and not fut.done():
                fut.set_result(message.result)
        elif isinstance(message, Error):
            if message.id is None:
                return
            fut = self._pending.pop(message.id, None)
            if fut is not None and not fut.done():
                fut.set_exception(RemoteError(message.code, message.message))
        elif isinstance(message, (Event, Resync)):
            for queue in self._event_queues:
                queue.put_nowait(message)
        elif isinstance(message, (LogData, LogEnd)):
            sub = self._log_subs.get(message.sub)
            if sub is not None:
                sub.put_nowait(message)
        elif isinstance(message, (ShellData, ShellExit)):
            shell = self._shell_subs.get(message.sub)
            if shell is not None:
                shell.put_nowait(message)

    def _fail_all(self) -> None:
        self._closed = True
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionLost("connection to the daemon was lost"))
        self._pending.clear()
        for queue in self._event_queues:
            queue.put_nowait(None)
        for sub in self._log_subs.values():
            sub.put_nowait(None)
        for shell in self._shell_subs.values():
            shell.put_nowait(None)

    @property
    def closed(self) -> bool:
        return self._closed

    async def close(self) -> None:
        self._closed = True
        if self._reader_task is not None:
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        self._writer.close()
        with contextlib.suppress(ConnectionError):
            await self._writer.wait_closed()

    async def __aenter__(self) -> Client:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def call(self, method: str, params: dict[str, Any] | msgspec.Struct | None = None) -> Any:
        """Send one request and wait for its result; raises ``RemoteError``."""
        request_id = next(self._ids)
        plain: dict[str, Any] = msgspec.to_builtins(params) if isinstance(params, msgspec.Struct) else params or {}
        fut: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        self._send(Request(id=request_id, method=method, params=plain))
        await self._writer.drain()
        return await fut

    async def _typed(self, kind: type[T], method: str, params: dict[str, Any]) -> T:
        return msgspec.convert(await self.call(method, params), kind)

    # Typed helpers, one per method, so callers get structs rather than dicts.

    async def submit(self, **params: Any) -> ExecutionView:
        return await self._typed(ExecutionView, "executions.submit", params)

    async def get(self, execution_id: int) -> ExecutionView:
        return await self._typed(ExecutionView, "executions.get", {"id": execution_id})

    async def list_executions(self, *, status: list[str] | None = None, limit: int = 100,
                   before_id: int | None = None, with_metadata: bool = False,
                   tags: list[str] | None = None) -> list[ExecutionView]:
        params: dict[str, Any] = {"status": status or [], "limit": limit, "before_id": before_id,
                                  "with_metadata": with_metadata}
        if tags:
            params["tags"] = tags
        return await self._typed(list[ExecutionView], "executions.list", params)

    async def stop(self, ids: list[int] | None = None, *, all: bool = False) -> StopResult:
        return await self._typed(StopResult, "executions.stop", {"ids": ids or [], "all": all})

    async def hosts(self) -> list[HostView]:
        return await self._typed(list[HostView], "hosts.list", {})

    async def host_drain(self, name: str) -> HostView:
        return await self._typed(HostView, "hosts.drain", {"name": name})

    async def host_enable(self, name: str) -> HostView:
        return await self._typed(HostView, "hosts.enable", {"name": name})

    async def hosts_scan(self, name: str | None = None) -> list[HostView]:
        return await self._typed(list[HostView], "hosts.scan", {"name": name})

    async def doctor(self, name: str) -> list[DoctorCheck]:
        return await self._typed(list[DoctorCheck], "hosts.doctor", {"name": name})

    async def restart(self, execution_id: int, **changes: Any) -> ExecutionView:
        """A new execution like ``execution_id``; ``changes`` are RestartParams' other fields."""
        return await self._typed(ExecutionView, "executions.restart", {"id": execution_id, **changes})

    async def rename(self, execution_id: int, title: str) -> ExecutionView:
        return await self._typed(ExecutionView, "executions.rename", {"id": execution_id, "title": title})

    async def delete(self, execution_id: int, *, purge_outputs: bool = False) -> None:
        await self.call("executions.delete", {"id": execution_id, "purge_outputs": purge_outputs})

    async def metadata_page(self, execution_id: int, *, offset: int = 0, limit: int = 1000,
                            max_points: int | None = None, all_attempts: bool = False) -> MetadataPage:
        """One page of points; pass its ``next`` as ``offset`` for the following one."""
        params = MetadataParams(id=execution_id, offset=offset, limit=limit, max_points=max_points,
                                all_attempts=all_attempts)
        return await self._typed(MetadataPage, "executions.metadata", msgspec.to_builtins(params))

    async def metadata(self, execution_id: int, *, all_attempts: bool = False,
                       max_points: int | None = None) -> list[MetadataPoint]:
        """Every point of the current attempt (or of all), page by page; with ``max_points``, the
        downsampled points a chart draws."""
        points: list[MetadataPoint] = []
        offset = 0
        while True:
            page = await self.metadata_page(execution_id, offset=offset, limit=METADATA_PAGE_MAX,
                                            max_points=max_points, all_attempts=all_attempts)
            points += page.points
            if page.next is None or page.next <= offset:
                return points
            offset = page.next

    async def outputs(self, execution_id: int) -> list[OutputView]:
        return await self._typed(list[OutputView], "outputs.list", {"id": execution_id})

    async def read_output(self, execution_id: int, path: str, offset: int, size: int) -> bytes:
        result = await self.call(
            "outputs.read", {"id": execution_id, "path": path, "offset": offset, "size": size}
        )
        return base64.b64decode(result)  # bytes travel as base64 in JSON

    async def read_logs(self, execution_id: int, **params: Any) -> LogsReadResult:
        return await self._typed(LogsReadResult, "logs.read", {"id": execution_id, **params})

    async def search_logs(self, execution_id: int, pattern: str, **params: Any) -> LogsSearchResult:
        """One request of a search (see LogsSearchParams); go on from the reply's ``next``."""
        return await self._typed(LogsSearchResult, "logs.search", {"id": execution_id, "pattern": pattern, **params})

    async def log_count(self, execution_id: int) -> int:
        return int(await self.call("logs.count", {"id": execution_id}))

    async def snapshot_files(self, execution_id: int) -> list[tuple[str, int]]:
        files = msgspec.convert(await self.call("snapshots.files", {"id": execution_id}), list[SnapshotEntry])
        return [(f.path, f.size) for f in files]

    async def snapshot_file(self, execution_id: int, path: str, max_bytes: int = 1024 * 1024) -> SnapshotFile:
        return await self._typed(SnapshotFile, "snapshots.read", {"id": execution_id, "path": path,
                                                                  "max_bytes": max_bytes})

    async def snapshot_has(self, snapshot_id: str) -> bool:
        return bool(await self.call("snapshots.has", {"id": snapshot_id}))

    async def snapshot_put(self, snapshot_id: str, data: bytes, chunk_size: int = 1024 * 1024) -> None:
        """Upload a snapshot archive in chunks that fit well inside a frame."""
        offset = 0
        while True:
            chunk = data[offset : offset + chunk_size]
            final = offset + len(chunk) >= len(data)
            await self.call(
                "snapshots.put",
                {"id": snapshot_id, "offset": offset, "data": chunk, "final": final},
            )
            offset += len(chunk)
            if final:
                return

    async def follow_logs(self, execution_id: int, offset: int = 0) -> AsyncIterator[LogData]:
        """Yield log blocks from ``offset`` until the execution ends and all was sent."""
        queue: asyncio.Queue[LogData | LogEnd | None] = asyncio.Queue()
        sub = next(self._ids)
        self._log_subs[sub] = queue
        try:
            await self.call("logs.follow", {"id": execution_id, "sub": sub, "offset": offset})
            while True:
                item = await queue.get()
                if item is None:
                    raise ConnectionLost("connection to the daemon was lost while following logs")
                if isinstance(item, LogEnd):
                    if item.error is not None:
                        raise RemoteError(item.code or ErrorCode.INTERNAL, item.error)
                    return
                yield item
        finally:
            self._log_subs.pop(sub, None)
            if not self._closed:
                with contextlib.suppress(RemoteError, ConnectionLost, ConnectionError):
                    await self.call("logs.unfollow", {"sub": sub})

    def shell_channel(self) -> tuple[int, asyncio.Queue[ShellData | ShellExit | None]]:
        """A subscription id for ``shell.open`` and the queue its frames arrive on (None: connection lost)."""
        sub = next(self._ids)
        queue: asyncio.Queue[ShellData | ShellExit | None] = asyncio.Queue()
        self._shell_subs[sub] = queue
        return sub, queue

    async def events(self, since: int | None = None, *,
                     subscribed: Callable[[], None] | None = None) -> AsyncIterator[Event | Resync]:
        """Yield state events after ``since`` (or only new ones), then live ones.

        ``subscribed`` is called once the daemon has the subscription: a caller that reads some
        state after that and then applies events misses none (ephemeral events are never replayed)."""
        queue: asyncio.Queue[Event | Resync | None] = asyncio.Queue()
        self._event_queues.append(queue)
        try:
            await self.call("events.subscribe", {"since": since})
            if subscribed is not None:
                subscribed()
            while True:
                item = await queue.get()
                if item is None:
                    raise ConnectionLost("connection to the daemon was lost")
                yield item
        finally:
            self._event_queues.remove(queue)
