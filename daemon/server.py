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
from runyard.protocol import methods as m
from runyard.protocol.framing import FrameDecoder, FrameTooLarge, encode_frame
from runyard.protocol.messages import ErrorCode
from runyard.protocol.methods import LogsFollowParams, LogsUnfollowParams, SubscribeParams

from . import api
from .core import Core, OperationError
from .diskspace import is_disk_full
from .logfile import cap_records
from .logstore import LogDamaged
from .shell import Shells

log = logging.getLogger("runyard.server")

_PEERCRED = struct.Struct("3i")
LOG_CHUNK = 256 * 1024


class ServerError(Exception):
    pass


def peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _PEERCRED.size)
    _pid, uid, _gid = _PEERCRED.unpack(creds)
    return int(uid)


def _kernel_uid(writer: asyncio.StreamWriter) -> int | None:
    """The peer's uid as the kernel tells it, or None when this transport has no peer credentials."""
    sock = writer.get_extra_info("socket")
    if sock is None or getattr(sock, "family", None) != socket.AF_UNIX:
        return None
    try:
        return peer_uid(sock)
    except OSError:
        return None


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
        # Identity comes only from the kernel. A transport without peer credentials is refused
        # (serve() says so), never taken for the daemon's own user, which is root.
        uid = _kernel_uid(writer)
        self.anonymous = uid is None
        uid = -1 if uid is None else uid
        user = user_name(uid) if uid >= 0 else "unknown"
        self.caller = api.Caller(uid=uid, user=user, admin=uid == 0 or user in server.admins)
        self.tasks: set[asyncio.Task[Any]] = set()
        self.log_tasks: dict[int, asyncio.Task[None]] = {}
        self.followed: dict[int, tuple[int, asyncio.Event]] = {}  # sub -> (execution id, set when it is deleted)
        self.event_task: asyncio.Task[None] | None = None
        self.shells = Shells(self.core, self.caller, self.send)  # `runyard shell`, see daemon/shell.py
        self.write_lock = asyncio.Lock()
        # Requests handled at once; past the cap no more is read until one is answered.
        self.slots = asyncio.Semaphore(server.max_requests_in_flight)

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
            if self.anonymous:
                log.warning("refused a connection without peer credentials (not a Unix socket peer)")
                await self.send(msg.Error(id=None, code=ErrorCode.PERMISSION_DENIED,
                                          message="runyard serves only Unix socket peers whose uid the kernel "
                                                  "reports (SO_PEERCRED); this connection has none"))
                return
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
                        # Waiting here reads nothing more from this client: its further requests
                        # queue in its own socket, which is the backpressure it feels.
                        await self.slots.acquire()
                        self.spawn(self.handle(message))
                    else:
                        await self.send(msg.Error(id=None, code=ErrorCode.BAD_FRAME,
                                                  message=f"clients may not send {type(message).__name__}"))
        except (ConnectionError, asyncio.IncompleteReadError):
            return
        finally:
            with contextlib.suppress(Exception):
                await self.shells.close()  # a client that went away leaves no shell behind
            tasks = [*self.tasks, *self.log_tasks.values(), *([self.event_task] if self.event_task else [])]
            for task in tasks:
                task.cancel()
            # Their store writes finish (or roll back) before the daemon may close the store.
            await asyncio.gather(*tasks, return_exceptions=True)
            self.writer.close()
            with contextlib.suppress(Exception):
                await self.writer.wait_closed()

    async def handle(self, request: msg.Request) -> None:
        try:
            await self._handle(request)
        finally:
            self.slots.release()

    async def _handle(self, request: msg.Request) -> None:
        try:
            result = await self.dispatch(request)
            reply: msg.Message = msg.Response(id=request.id, result=result)
        except OperationError as exc:
            reply = msg.Error(id=request.id, code=exc.code, message=str(exc))
        except LogDamaged as exc:
            log.error("request %s: %s", request.method, exc)
            reply = msg.Error(id=request.id, code=ErrorCode.INTERNAL, message=str(exc))
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
            await self.core.get(follow.id)  # it exists, and the caller may read it
            logfile = self.core.followed_log(follow.id)
            if follow.sub in self.log_tasks:
                raise OperationError(ErrorCode.INVALID_PARAMS, f"subscription {follow.sub} is in use")
            deleted = asyncio.Event()
            self.followed[follow.sub] = (follow.id, deleted)
            self.log_tasks[follow.sub] = asyncio.create_task(
                self.push_logs(follow.sub, follow.id, logfile, max(0, follow.offset), deleted))
            return None
        if name == "logs.unfollow":
            unfollow = msgspec.convert(request.params, LogsUnfollowParams)
            task = self.log_tasks.pop(unfollow.sub, None)
            if task is not None:
                task.cancel()
            return None
        if name.startswith("shell."):
            return await self.shells.handle(name, request.params)
        entry = api.METHODS.get(name)
        if entry is None:
            raise OperationError(ErrorCode.UNKNOWN_METHOD, f"no method named {name!r}")
        params_type, handler = entry
        converted = msgspec.convert(request.params, params_type)
        result = await handler(self.core, self.caller, converted)
        if isinstance(converted, m.DeleteParams):
            self.server.deleted(converted.id)  # whoever follows its log is told, on every connection
        return result

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
        except Exception:
            # The stream has no end message: a client that kept waiting would never learn it
            # stopped. Closing the connection tells it; it resubscribes from its last seq.
            log.exception("the event subscription of %s (uid %s) failed; closing its connection",
                          self.caller.user, self.caller.uid)
            self.writer.transport.abort()
        finally:
            hub.unsubscribe(sub)

    async def push_logs(self, sub: int, execution_id: int, logfile: Any, offset: int,
                        deleted: asyncio.Event) -> None:
        """Send the log from ``offset`` as it grows; end with LogEnd, which says why when it ends early.

        A follower never waits forever: deleting the execution, or any failure here, ends it
        with a LogEnd that carries the reason (and a failure is logged).
        """
        gone = asyncio.ensure_future(deleted.wait())
        try:
            while True:
                while offset < logfile.size and not deleted.is_set():
                    data, end = await asyncio.to_thread(logfile.read_range, offset, LOG_CHUNK)
                    if end <= offset:
                        break
                    await self.send(msg.LogData(sub=sub, execution_id=execution_id, offset=offset,
                                                end=end, data=cap_records(data).decode("utf-8", "replace")))
                    offset = end
                if deleted.is_set():
                    await self._end_deleted(sub, execution_id, offset)
                    return
                if logfile.finished and offset >= logfile.size:
                    await self.send(msg.LogEnd(sub=sub, execution_id=execution_id, offset=offset))
                    return
                grown = asyncio.ensure_future(logfile.wait_beyond(offset))
                try:
                    await asyncio.wait({grown, gone}, return_when=asyncio.FIRST_COMPLETED)
                finally:
                    grown.cancel()
        except ConnectionError:
            pass
        except LogDamaged as exc:
            log.error("following the log of execution %s: %s", execution_id, exc)
            with contextlib.suppress(ConnectionError):
                await self.send(msg.LogEnd(sub=sub, execution_id=execution_id, offset=offset,
                                           code=ErrorCode.INTERNAL, error=str(exc)))
        except FileNotFoundError:
            # Its log was removed under the read: deleted (a delete racing this follow), or lost.
            with contextlib.suppress(ConnectionError):
                if await self.core.store.get(execution_id) is None:
                    await self._end_deleted(sub, execution_id, offset)
                else:
                    log.error("execution %s: its log file %s is missing", execution_id, logfile.path)
                    await self.send(msg.LogEnd(sub=sub, execution_id=execution_id, offset=offset,
                                               code=ErrorCode.INTERNAL,
                                               error=f"the log of execution {execution_id} is missing "
                                                     "on the daemon's disk; see the daemon's log"))
        except Exception:
            log.exception("following the log of execution %s failed", execution_id)
            with contextlib.suppress(Exception):
                await self.send(msg.LogEnd(sub=sub, execution_id=execution_id, offset=offset,
                                           code=ErrorCode.INTERNAL,
                                           error=f"following the log of execution {execution_id} failed "
                                                 "inside the daemon; see its log"))
        finally:
            gone.cancel()
            self.log_tasks.pop(sub, None)
            self.followed.pop(sub, None)

    async def _end_deleted(self, sub: int, execution_id: int, offset: int) -> None:
        await self.send(msg.LogEnd(sub=sub, execution_id=execution_id, offset=offset, code=ErrorCode.NOT_FOUND,
                                   error=f"execution {execution_id} was deleted while its log was followed"))

    def deleted(self, execution_id: int) -> None:
        for followed, deleted in self.followed.values():
            if followed == execution_id:
                deleted.set()


class Server:
    def __init__(self, core: Core, path: str, *, mode: int, group: str, admins: list[str],
                 max_frame: int, slow_client_seconds: float = 30.0, max_requests_in_flight: int = 64) -> None:
        self.core = core
        self.slow_client_seconds = slow_client_seconds
        self.max_requests_in_flight = max_requests_in_flight
        self.path = path
        self.mode = mode
        self.group = group
        self.admins = set(admins)
        self.max_frame = max_frame
        self._server: asyncio.base_events.Server | None = None
        self._connections: dict[asyncio.Task[Any], Connection] = {}
        self._ids = itertools.count(1)

    async def start(self) -> None:
        path = Path(self.path)
        await asyncio.to_thread(path.parent.mkdir, parents=True, exist_ok=True)
        if await asyncio.to_thread(os.path.lexists, path):
            if await _someone_listening(self.path):
                raise ServerError(f"another runyard daemon is already serving {self.path}")
            await asyncio.to_thread(path.unlink)  # stale socket from a daemon that was killed
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
        try:
            connection = Connection(self, reader, writer)
            self._connections[task] = connection
            await connection.serve()
        except asyncio.CancelledError:
            # The daemon is shutting down (close() cancels every connection). asyncio's stream
            # server logs a cancelled connection task as an error with a traceback, so this one
            # ends as a normal return: the connection was closed on purpose.
            pass
        finally:
            self._connections.pop(task, None)

    def deleted(self, execution_id: int) -> None:
        """An execution was deleted: its log followers, on any connection, are told and end."""
        for connection in self._connections.values():
            connection.deleted(execution_id)

    async def ensure_free(self) -> None:
        """Refuse early (before any host is reached) when another daemon serves this socket."""
        if await _someone_listening(self.path):
            raise ServerError(f"another runyard daemon is already serving {self.path}")

    async def close(self) -> None:
        if self._server is None:
            return  # never bound: the socket there, if any, is another daemon's
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
