"""The Unix socket server: one connection task per client, requests handled concurrently.

A malformed frame gets an error reply and the connection goes on; an oversized
one cannot be skipped safely, so it gets an error reply and the connection is
closed. Neither affects any other client.
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import itertools
import logging
import os
import pwd
import socket
import struct
from pathlib import Path
from typing import Any

import msgspec

from runyard.protocol import messages as msg
from runyard.protocol.framing import FrameDecoder, FrameTooLarge, encode_frame
from runyard.protocol.messages import ErrorCode
from runyard.protocol.methods import LogsFollowParams, LogsUnfollowParams, SubscribeParams

from . import api
from .core import Core, OperationError
from .diskspace import is_disk_full
from .logfile import cap_records

log = logging.getLogger("runyard.server")

_PEERCRED = struct.Struct("3i")
LOG_CHUNK = 256 * 1024


class ServerError(Exception):
    pass


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    _pid, uid, _gid = _PEERCRED.unpack(creds)
    return int(uid)


def user_name(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid{uid}"


class Connection:
    def __init__(self, server: Server, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.server = server
        self.core = server.core
        self.reader = reader
        self.writer = writer
        sock = writer.get_extra_info("socket")
        uid = peer_uid(sock) if sock is not None else os.getuid()
        user = user_name(uid)
        self.caller = api.Caller(uid=uid, user=user, admin=uid == 0 or user in server.admins)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.log_tasks: dict[int, asyncio.Task[None]] = {}
        self.event_task: asyncio.Task[None] | None = None
        self.write_lock = asyncio.Lock()

    async def send(self, message: msg.Message) -> None:
        frame = encode_frame(msg.encode_message(message), self.server.max_frame)
        async with self.write_lock:
            self.writer.write(frame)
            try:
                await asyncio.wait_for(self.writer.drain(), self.server.slow_client_seconds)
            except TimeoutError:
                # A client that stops reading only ever holds up itself; past this, it is let go.
                log.warning("dropping client %s (uid %s): it read nothing for %.0f s",
                            self.caller.user, self.caller.uid, self.server.slow_client_seconds)
                self.writer.transport.abort()
                raise ConnectionResetError("client too slow") from None

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)
        return task

    async def serve(self) -> None:
        decoder = FrameDecoder(self.server.max_frame)
        greeted = False
        try:
            while True:
                chunk = await self.reader.read(65536)
                if not chunk:
                    return
                try:
                    frames = decoder.feed(chunk)
                except FrameTooLarge as exc:
                    await self.send(msg.Error(id=None, code=ErrorCode.FRAME_TOO_LARGE, message=str(exc)))
                    return
                for payload in frames:
                    try:
                        message = msg.decode_message(payload)
                    except (msgspec.DecodeError, msgspec.ValidationError) as exc:
                        await self.send(msg.Error(id=None, code=ErrorCode.BAD_FRAME,
                                                  message=f"not a valid message: {exc}"))
                        continue
                    if not greeted:
                        if not isinstance(message, msg.Hello):
                            await self.send(msg.Error(id=None, code=ErrorCode.BAD_FRAME,
                                                      message="the first message must be hello"))
                            continue
                        if message.major != msg.PROTOCOL_MAJOR:
                            await self.send(msg.Error(
                                id=None, code=ErrorCode.PROTOCOL_VERSION,
                                message=f"daemon speaks protocol {msg.PROTOCOL_MAJOR}.x, "
                                        f"client {message.major}.{message.minor}"))
                            return
                        greeted = True
                        await self.send(msg.Welcome(
                            server="runyard", major=msg.PROTOCOL_MAJOR, minor=msg.PROTOCOL_MINOR,
                            capabilities=list(msg.CAPABILITIES), daemon_id=self.core.store.daemon_id,
                            uid=self.caller.uid, user=self.caller.user))
                        continue
                    if isinstance(message, msg.Request):
                        self.spawn(self.handle(message))
                    else:
                        await self.send(msg.Error(id=None, code=ErrorCode.BAD_FRAME,
                                                  message=f"clients may not send {type(message).__name__}"))
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            for task in [*self.tasks, *self.log_tasks.values(), *([self.event_task] if self.event_task else [])]:
                task.cancel()
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def handle(self, request: msg.Request) -> None:
        try:
            result = await self.dispatch(request)
            reply: msg.Message = msg.Response(id=request.id, result=result)
        except OperationError as exc:
            reply = msg.Error(id=request.id, code=exc.code, message=str(exc))
        except msgspec.ValidationError as exc:
            reply = msg.Error(id=request.id, code=ErrorCode.INVALID_PARAMS,
                              message=f"{request.method}: {str(exc).replace('$.', 'params.')}")
        except Exception as exc:
            if is_disk_full(exc):
                log.error("request %s refused: the data directory is full", request.method)
                reply = msg.Error(id=request.id, code=ErrorCode.INTERNAL,
                                  message=f"{request.method}: runyard's data directory "
                                          f"{self.core.config.data_dir} is full; nothing was changed. "
                                          "Free space there and try again")
            else:
                log.exception("request %s failed", request.method)
                reply = msg.Error(id=request.id, code=ErrorCode.INTERNAL,
                                  message=f"{request.method} failed inside the daemon; see its log")
        try:
            await self.send(reply)
        except FrameTooLarge:
            await self.send(msg.Error(id=request.id, code=ErrorCode.INTERNAL, message="reply too large"))
        except ConnectionError:
            pass

    async def dispatch(self, request: msg.Request) -> Any:
        name = request.method
        if name == "events.subscribe":
            params = msgspec.convert(request.params, SubscribeParams)
            if self.event_task is not None:
                self.event_task.cancel()
            sub = self.core.hub.subscribe()
            self.event_task = asyncio.create_task(self.push_events(sub, params.since))
            return None
        if name == "logs.follow":
            follow = msgspec.convert(request.params, LogsFollowParams)
            row = await self.core.get(follow.id)
            logfile = self.core.log_file(follow.id) if row.terminal else self.core.live_log(follow.id)
            if follow.sub in self.log_tasks:
                raise OperationError(ErrorCode.INVALID_PARAMS, f"subscription {follow.sub} is in use")
            self.log_tasks[follow.sub] = asyncio.create_task(
                self.push_logs(follow.sub, follow.id, logfile, max(0, follow.offset)))
            return None
        if name == "logs.unfollow":
            unfollow = msgspec.convert(request.params, LogsUnfollowParams)
            task = self.log_tasks.pop(unfollow.sub, None)
            if task is not None:
                task.cancel()
            return None
        entry = api.METHODS.get(name)
        if entry is None:
            raise OperationError(ErrorCode.UNKNOWN_METHOD, f"no method named {name!r}")
        params_type, handler = entry
        return await handler(self.core, self.caller, msgspec.convert(request.params, params_type))

    async def push_events(self, sub: Any, since: int | None) -> None:
        hub = self.core.hub
        try:
            last = since
            if since is not None:
                oldest, latest = await self.core.store.event_bounds()
                if since + 1 < oldest:
                    await self.send(msg.Resync(oldest=oldest, latest=latest))
                    last = latest
                else:
                    while True:
                        batch = await self.core.store.events_since(last or 0)
                        if not batch:
                            break
                        for event in batch:
                            await self.send(event)
                        last = batch[-1].seq
            while True:
                if sub.overflowed:
                    oldest, latest = await self.core.store.event_bounds()
                    while not sub.queue.empty():
                        sub.queue.get_nowait()
                    sub.overflowed = False
                    await self.send(msg.Resync(oldest=oldest, latest=latest))
                    last = latest
                event = await sub.queue.get()
                if event.seq == 0:  # ephemeral (progress): not in the store, never replayed
                    await self.send(event)
                    continue
                if last is not None and event.seq <= last:
                    continue  # already sent while replaying from the store
                await self.send(event)
        except ConnectionError:
            pass
        finally:
            hub.unsubscribe(sub)

    async def push_logs(self, sub: int, execution_id: int, logfile: Any, offset: int) -> None:
        try:
            while True:
                while offset < logfile.size:
                    data, end = await asyncio.to_thread(logfile.read_range, offset, LOG_CHUNK)
                    if end <= offset:
                        break
                    await self.send(msg.LogData(sub=sub, execution_id=execution_id, offset=offset,
                                                end=end, data=cap_records(data).decode("utf-8", "replace")))
                    offset = end
                if logfile.finished and offset >= logfile.size:
                    await self.send(msg.LogEnd(sub=sub, execution_id=execution_id, offset=offset))
                    return
                await logfile.wait_beyond(offset)
        except ConnectionError:
            pass
        finally:
            self.log_tasks.pop(sub, None)


class Server:
    def __init__(self, core: Core, path: str, *, mode: int, group: str, admins: list[str],
                 max_frame: int, slow_client_seconds: float = 30.0) -> None:
        self.core = core
        self.slow_client_seconds = slow_client_seconds
        self.path = path
        self.mode = mode
        self.group = group
        self.admins = set(admins)
        self.max_frame = max_frame
        self._server: asyncio.base_events.Server | None = None
        self._connections: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)

    async def start(self) -> None:
        path = Path(self.path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() or path.is_symlink():
            if await _someone_listening(self.path):
                raise ServerError(f"another runyard daemon is already serving {self.path}")
            path.unlink()  # stale socket from a daemon that was killed
        old_umask = os.umask(0o177)
        try:
            self._server = await asyncio.start_unix_server(self._accept, path=self.path, limit=self.max_frame)
        finally:
            os.umask(old_umask)
        if self.group:
            try:
                gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                raise ServerError(f"daemon.socket_group: no group named {self.group!r}") from None
            os.chown(self.path, -1, gid)
        os.chmod(self.path, self.mode)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            await Connection(self, reader, writer).serve()
        finally:
            self._connections.discard(task)

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._connections):
            task.cancel()
        await asyncio.gather(*self._connections, return_exceptions=True)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)


async def _someone_listening(path: str) -> bool:
    try:
        _, writer = await asyncio.open_unix_connection(path)
    except OSError:
        return False
    writer.close()
    return True
