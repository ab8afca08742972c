"""`runyard shell N [-- CMD]`: a shell (or one command) inside a running execution, relayed over the socket.

Who may: the execution's owner, or an admin (root and ``daemon.admins``): the shell sees what the
command sees, its owner's secrets included. A plain process that runs as its owner (process
runtime, ``run_as = "owner"``) is that user's login on the host, so there only the owner or root
may open one; an admin who is neither is refused.

As whom, and where: nothing of it comes from the client, which names only the execution and the
argv to run. The container or directory, the host and the user are the daemon's own record:

- Docker: ``docker exec`` through the host's forwarded engine socket, in the container the daemon
  recorded for this execution (its runyard labels are checked first), as the container's own user
  (the image's, or the owner's uid:gid with ``run_as = "owner"``), in /valohai/repository.
- Process runtime: a process on the host (over the host's SSH connection, or on this machine),
  in the execution's repository folder, with its VH_* variables; as the user its command runs as:
  the owner's uid and gid through setpriv with ``run_as = "owner"``, else the SSH user (this
  machine: the daemon's user), as the command itself. Only PATH and LANG of the daemon's own
  environment are passed on.

A shell ends when its command exits, when the client closes it or goes away, or when the execution
ends (a plain process would otherwise outlive it in a removed folder). Every shell opened is logged.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
import pwd
import signal
import struct
import termios
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final, Protocol

import asyncssh
import msgspec

from runyard.protocol import messages as msg
from runyard.protocol import methods as m
from runyard.protocol.messages import ErrorCode

from .core import OperationError
from .shell_leftovers import KILL_TIMEOUT, ShellRecords, end_in_container, new_pid_file, wrapped
from .transport import SshTransport, q
from .workspace import container_environment

if TYPE_CHECKING:
    import aiodocker

    from .api import Caller
    from .core import Core
    from .hosts import Host
    from .record import ExecutionRow

log = logging.getLogger("runyard.shell")

MAX_SESSIONS: Final = 8  # per connection
# bash if the image or host has it, else sh: what a user expects from "a shell".
INTERACTIVE: Final = ["/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -i; else exec sh -i; fi"]
# No terminal and no command (`shell N -T < script`): a shell reading commands from stdin, with
# no prompts or job-control noise on stderr.
READING_STDIN: Final = ["/bin/sh", "-c", "if command -v bash >/dev/null 2>&1; then exec bash -s; else exec sh -s; fi"]
Send = Callable[[msg.Message], Awaitable[None]]


class Backend(Protocol):
    async def read(self) -> tuple[int, bytes] | None: ...  # (stream, data); None at the end
    async def write(self, data: bytes) -> None: ...
    async def write_eof(self) -> None: ...
    async def resize(self, rows: int, cols: int) -> None: ...
    async def exit_code(self) -> int | None: ...
    async def close(self) -> None: ...


class Shells:
    """The shells one client connection has open."""

    def __init__(self, core: Core, caller: Caller, send: Send) -> None:
        self.core = core
        self.caller = caller
        self.send = send
        self.sessions: dict[int, Session] = {}

    async def handle(self, name: str, params: dict[str, Any]) -> None:
        # shell.input is queued before the first await, so a client's keystrokes stay in order
        # although each request is handled in a task of its own.
        if name == "shell.input":
            p = msgspec.convert(params, m.ShellInputParams)
            session = self._session(p.sub)
            if session.input_done:
                return None  # its input side has ended; what is sent now goes nowhere
            written: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            session.inbox.put_nowait((None if p.eof else p.data, written))
            # Answered once written: a client sending faster than the command reads waits, and
            # the daemon holds no more of its input than the requests it has in flight.
            await written
            return None
        if name == "shell.resize":
            r = msgspec.convert(params, m.ShellResizeParams)
            await self._session(r.sub).backend.resize(_clamp(r.rows), _clamp(r.cols))
            return None
        if name == "shell.close":
            c = msgspec.convert(params, m.ShellCloseParams)
            closing = self.sessions.get(c.sub)
            if closing is not None:
                await closing.end()
            return None
        if name == "shell.open":
            await self._open(msgspec.convert(params, m.ShellOpenParams))
            return None
        raise OperationError(ErrorCode.UNKNOWN_METHOD, f"no method named {name!r}")

    def _session(self, sub: int) -> Session:
        session = self.sessions.get(sub)
        if session is None:
            raise OperationError(ErrorCode.NOT_FOUND, f"no open shell {sub}")
        return session

    async def _open(self, p: m.ShellOpenParams) -> None:
        if p.sub in self.sessions:
            raise OperationError(ErrorCode.INVALID_PARAMS, f"shell {p.sub} is in use")
        if len(self.sessions) >= MAX_SESSIONS:
            raise OperationError(ErrorCode.INVALID_STATE, f"at most {MAX_SESSIONS} shells per connection")
        if any("\0" in arg for arg in p.command) or (p.command and not p.command[0]):
            raise OperationError(ErrorCode.INVALID_PARAMS, "the command is an argv of non-empty strings without NUL")
        if not p.term.replace("-", "").replace(".", "").isalnum() or len(p.term) > 64:
            raise OperationError(ErrorCode.INVALID_PARAMS, f"not a terminal type: {p.term!r}")
        row = await self.core.get(p.id)
        host = await self._allowed(row)
        argv = list(p.command) or (INTERACTIVE if p.tty else READING_STDIN)
        backend = await _start(self.core, host, row, argv, p.tty, _clamp(p.rows), _clamp(p.cols), p.term)
        log.info("shell opened by %s (uid %s) in execution %s on %s: %s", self.caller.user, self.caller.uid,
                 row.id, host.name, " ".join(p.command) or "interactive shell")
        session = Session(self, p.sub, row.id, backend)
        self.sessions[p.sub] = session
        session.start()

    async def _allowed(self, row: ExecutionRow) -> Host:
        caller = self.caller
        if not (caller.admin or row.owner_uid == caller.uid):
            raise OperationError(ErrorCode.PERMISSION_DENIED,
                                 f"execution {row.id} belongs to {row.owner}; only they or an admin may open a "
                                 "shell in it")
        if row.status != "started":
            raise OperationError(ErrorCode.INVALID_STATE,
                                 f"execution {row.id} is {row.status}: a shell needs a running execution")
        host = self.core.hosts.get(row.host or "")
        if host is None or host.runtime is None or host.transport is None or not row.container_id:
            raise OperationError(ErrorCode.INVALID_STATE,
                                 f"execution {row.id}: its host {row.host} cannot be reached now")
        if (host.runtime.kind == "process" and host.settings.run_as == "owner"
                and caller.uid not in (0, row.owner_uid)):
            raise OperationError(ErrorCode.PERMISSION_DENIED,
                                 f"execution {row.id} runs as {row.owner} on {host.name}: only they or root may "
                                 "open a shell there")
        return host

    async def close(self) -> None:
        await asyncio.gather(*(s.end() for s in list(self.sessions.values())), return_exceptions=True)


class Session:
    def __init__(self, shells: Shells, sub: int, execution_id: int, backend: Backend) -> None:
        self.shells = shells
        self.sub = sub
        self.execution_id = execution_id
        self.backend = backend
        self.inbox: asyncio.Queue[tuple[bytes | None, asyncio.Future[None]]] = asyncio.Queue()
        self.tasks: list[asyncio.Task[None]] = []
        self.ended = False
        self.note: str | None = None  # why the daemon ended it, if it did
        self.input_done = False

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._pump()), asyncio.create_task(self._feed()),
                      asyncio.create_task(self._watch())]

    async def _pump(self) -> None:
        error: str | None = None
        code: int | None = None
        try:
            while (chunk := await self.backend.read()) is not None:
                stream, data = chunk
                await self.shells.send(msg.ShellData(sub=self.sub, data=data, stream=stream))
            code = await self.backend.exit_code()
        except ConnectionError:
            return  # the client is gone; end() below cleans up
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("shell %s of execution %s: %r", self.sub, self.execution_id, exc)
            error = f"the shell's connection to its host was lost ({type(exc).__name__})"
        finally:
            if not self.ended:
                asyncio.get_running_loop().call_soon(lambda: asyncio.ensure_future(self.end()))
        with contextlib.suppress(ConnectionError):
            await self.shells.send(msg.ShellExit(sub=self.sub, code=code, error=error or self.note))

    async def _feed(self) -> None:
        import aiohttp  # imported with the Docker runtime (an SSH shell raises none of its errors)

        try:
            while True:
                data, written = await self.inbox.get()
                try:
                    if data is None:
                        await self.backend.write_eof()
                    else:
                        await self.backend.write(data)
                except (OSError, asyncssh.Error, aiohttp.ClientError, RuntimeError):
                    written.set_result(None)
                    return  # it has ended; the pump reports how
                written.set_result(None)
        finally:
            self.input_done = True
            while not self.inbox.empty():  # nobody waits forever on input that will never be written
                _, left = self.inbox.get_nowait()
                if not left.done():
                    left.set_result(None)

    async def _watch(self) -> None:
        """A plain process would outlive its execution: the shell ends with it."""
        hub = self.shells.core.hub
        sub = hub.subscribe()
        try:
            while True:
                if (await self.shells.core.get(self.execution_id)).status != "started":
                    break
                event = await sub.queue.get()
                while event.execution_id != self.execution_id:
                    event = await sub.queue.get()
        except OperationError:
            pass  # deleted
        finally:
            hub.unsubscribe(sub)
        self.note = f"execution {self.execution_id} has ended; its shell was closed"
        await self.backend.close()

    async def end(self) -> None:
        if self.ended:
            return
        self.ended = True
        self.shells.sessions.pop(self.sub, None)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current and task is not self.tasks[0]:
                task.cancel()
        with contextlib.suppress(Exception):
            await self.backend.close()


def _clamp(value: int) -> int:
    return max(1, min(value, 4096))


async def _start(core: Core, host: Host, row: ExecutionRow, argv: list[str], tty: bool, rows: int, cols: int,
                 term: str) -> Backend:
    runtime = host.runtime
    assert runtime is not None and row.container_id is not None
    if runtime.kind == "docker":
        docker: aiodocker.Docker = runtime.docker  # type: ignore[attr-defined]
        records = ShellRecords(core.config.data_dir / "shells")
        return await DockerShell.start(docker, core.store.daemon_id, row, argv, tty, rows, cols, term,
                                       records=records, host=host.name)
    # The directory is where the daemon laid out this attempt, never a path from elsewhere.
    workdir = host.work_dir(row.id, row.log_base)
    if row.container_id != workdir:
        raise OperationError(ErrorCode.INVALID_STATE, f"execution {row.id}: its work directory is not where "
                                                      "runyard put it; no shell is opened")
    env = container_environment(row, root=workdir, in_container=False)
    prefix: list[str] = []
    user = host.run_as_user(row.owner_uid)
    if user is not None:
        uid, gid = user.split(":")
        prefix = ["setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups"]
        with contextlib.suppress(KeyError):
            account = pwd.getpwuid(int(uid))
            env.update(HOME=account.pw_dir, USER=account.pw_name, LOGNAME=account.pw_name)
    if tty:
        env["TERM"] = term
    assignments = " ".join(q(f"{k}={v}") for k, v in env.items() if k.isidentifier())
    command = (f"cd {q(workdir + '/repository')} && exec env {assignments} "
               + " ".join(q(a) for a in [*prefix, *argv]))
    transport = host.transport
    if isinstance(transport, SshTransport):
        return await SshShell.start(transport.conn, command, tty, rows, cols, term)
    return await LocalShell.start(command, tty, rows, cols)


class DockerShell:
    def __init__(self, execution: Any, stream: Any, docker: aiodocker.Docker, container_id: str, pid_file: str,
                 records: ShellRecords, record: Path) -> None:
        self.exec = execution
        self.stream = stream
        self.docker = docker
        self.container_id = container_id
        self.pid_file = pid_file
        self.records = records
        self.record: Path | None = record

    @classmethod
    async def start(cls, docker: aiodocker.Docker, daemon_id: str, row: ExecutionRow, argv: list[str], tty: bool,
                    rows: int, cols: int, term: str, *, records: ShellRecords, host: str) -> DockerShell:
        import aiodocker  # imported with the Docker runtime already
        import aiohttp

        from .runtime_docker import LABEL_DAEMON, LABEL_EXECUTION

        container = docker.containers.container(row.container_id or "")
        pid_file = new_pid_file()
        # Recorded before it starts: a daemon killed at any moment after leaves it to be ended.
        record = await asyncio.to_thread(records.add, host, row.container_id or "", pid_file)
        try:
            info = await container.show()
            labels = info.get("Config", {}).get("Labels") or {}
            if labels.get(LABEL_DAEMON) != daemon_id or labels.get(LABEL_EXECUTION) != str(row.id):
                raise OperationError(ErrorCode.INVALID_STATE,
                                     f"execution {row.id}: its container is not the one runyard made")
            if not info.get("State", {}).get("Running"):
                raise OperationError(ErrorCode.INVALID_STATE, f"execution {row.id}: its container is not running")
            # Under a wrapper that records its pid: the engine cannot kill an exec (shell_leftovers.py).
            execution = await container.exec(wrapped(argv, pid_file), stdin=True, tty=tty,
                                             environment={"TERM": term} if tty else None)
            stream = execution.start(detach=False)
            await stream.__aenter__()
            if tty:
                await execution.resize(h=rows, w=cols)
        except aiodocker.DockerError as exc:
            records.remove(record)
            raise OperationError(ErrorCode.INVALID_STATE,
                                 f"execution {row.id}: the engine refused the shell: {exc.message}") from None
        except (aiohttp.ClientError, OSError) as exc:
            records.remove(record)
            raise OperationError(ErrorCode.INVALID_STATE, f"execution {row.id}: the engine on its host cannot be "
                                                          f"reached now ({type(exc).__name__})") from None
        except BaseException:
            records.remove(record)
            raise
        return cls(execution, stream, docker, row.container_id or "", pid_file, records, record)

    async def read(self) -> tuple[int, bytes] | None:
        message = await self.stream.read_out()
        return None if message is None else (2 if message.stream == 2 else 1, bytes(message.data))

    async def write(self, data: bytes) -> None:
        await self.stream.write_in(data)

    async def write_eof(self) -> None:
        # Half-close: the command reads end-of-file, and its output still comes back.
        connection = getattr(getattr(self.stream, "_resp", None), "connection", None)
        transport = getattr(connection, "transport", None)
        if transport is not None and transport.can_write_eof():
            transport.write_eof()

    async def resize(self, rows: int, cols: int) -> None:
        import aiodocker  # imported with the Docker runtime already

        with contextlib.suppress(aiodocker.DockerError):
            await self.exec.resize(h=rows, w=cols)

    async def exit_code(self) -> int | None:
        for _ in range(50):  # the engine records the exit a moment after the stream ends
            info = await self.exec.inspect()
            if not info.get("Running"):
                code = info.get("ExitCode")
                return int(code) if code is not None else None
            await asyncio.sleep(0.02)
        return None

    async def close(self) -> None:
        # Closing the stream hangs up the exec's terminal (or closes its stdin), which ends a shell
        # but not a command that ignores both: that one is signalled (shell_leftovers.py).
        with contextlib.suppress(Exception):
            await self.stream.close()
        record, self.record = self.record, None
        if record is None:
            return
        import aiodocker  # imported with the Docker runtime already
        import aiohttp

        try:
            running = (await self.exec.inspect()).get("Running")
            # An ended command's pid may be another process's by now: only its pid file goes.
            await asyncio.wait_for(end_in_container(self.docker, self.container_id, self.pid_file,
                                                    signal=bool(running)), KILL_TIMEOUT)
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            log.info("shell in container %s: ending it: %r", self.container_id[:12], exc)  # gone with its container
        await asyncio.to_thread(self.records.remove, record)


class _Output:
    """A shell's output as (stream, bytes), from readers that each put None once they are done."""

    queue: asyncio.Queue[tuple[int, bytes] | None]
    open_readers: int

    async def _read(self, stream: int, reader: _Readable) -> None:
        try:
            while data := await reader.read(65536):
                await self.queue.put((stream, data))
        finally:
            await self.queue.put(None)

    async def read(self) -> tuple[int, bytes] | None:
        while self.open_readers:
            item = await self.queue.get()
            if item is not None:
                return item
            self.open_readers -= 1
        return None


class _Readable(Protocol):
    async def read(self, n: int) -> bytes: ...


class SshShell(_Output):
    def __init__(self, process: asyncssh.SSHClientProcess[bytes], tty: bool) -> None:
        self.process = process
        self.tty = tty
        self.queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(16)
        self.readers = [asyncio.create_task(self._read(1, process.stdout))]
        if not tty:
            self.readers.append(asyncio.create_task(self._read(2, process.stderr)))
        self.open_readers = len(self.readers)

    @classmethod
    async def start(cls, conn: asyncssh.SSHClientConnection, command: str, tty: bool, rows: int, cols: int,
                    term: str) -> SshShell:
        options: dict[str, Any] = {"term_type": term, "term_size": (cols, rows)} if tty else {}
        try:
            process = await conn.create_process(command, encoding=None, **options)
        except (asyncssh.Error, OSError) as exc:
            raise OperationError(ErrorCode.INVALID_STATE, f"the host refused the shell: {exc}") from None
        return cls(process, tty)

    async def write(self, data: bytes) -> None:
        self.process.stdin.write(data)
        await self.process.stdin.drain()

    async def write_eof(self) -> None:
        self.process.stdin.write_eof()

    async def resize(self, rows: int, cols: int) -> None:
        if self.tty:
            self.process.change_terminal_size(cols, rows)

    async def exit_code(self) -> int | None:
        done = await self.process.wait(check=False)
        return done.exit_status

    async def close(self) -> None:
        for task in self.readers:
            task.cancel()
        self.process.close()


class LocalShell(_Output):
    """A process on this machine: with a terminal of its own (a pty) or with pipes."""

    def __init__(self, process: asyncio.subprocess.Process, master: int | None) -> None:
        self.process = process
        self.master = master
        self.queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue()
        self.open_readers = 0
        loop = asyncio.get_running_loop()
        if master is not None:
            self.open_readers = 1
            loop.add_reader(master, self._readable)
        else:
            assert process.stdout is not None and process.stderr is not None
            self.readers = [asyncio.create_task(self._read(1, process.stdout)),
                            asyncio.create_task(self._read(2, process.stderr))]
            self.open_readers = 2

    @classmethod
    async def start(cls, command: str, tty: bool, rows: int, cols: int) -> LocalShell:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG")}
        if not tty:
            process = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, start_new_session=True, env=env)
            return cls(process, None)
        master, slave = os.openpty()
        try:
            fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
            # setsid -c makes the pty its controlling terminal: job control and ^C work, and
            # closing the master hangs up the whole session.
            process = await asyncio.create_subprocess_exec(
                "setsid", "-w", "-c", "/bin/sh", "-c", command, stdin=slave, stdout=slave, stderr=slave, env=env)
        except BaseException:
            os.close(master)
            raise
        finally:
            os.close(slave)
        os.set_blocking(master, False)
        return cls(process, master)

    def _readable(self) -> None:
        assert self.master is not None
        try:
            data = os.read(self.master, 65536)
        except BlockingIOError:
            return
        except OSError:  # EIO: every holder of the terminal has exited
            data = b""
        if data:
            self.queue.put_nowait((1, data))
        else:
            asyncio.get_running_loop().remove_reader(self.master)
            self.queue.put_nowait(None)

    async def write(self, data: bytes) -> None:
        if self.master is None:
            assert self.process.stdin is not None
            self.process.stdin.write(data)
            await self.process.stdin.drain()
            return
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self.master, view):]
            except BlockingIOError:
                await asyncio.sleep(0.01)  # the terminal's input buffer is full until the shell reads

    async def write_eof(self) -> None:
        if self.master is None and self.process.stdin is not None:
            self.process.stdin.close()

    async def resize(self, rows: int, cols: int) -> None:
        if self.master is not None:
            fcntl.ioctl(self.master, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    async def exit_code(self) -> int | None:
        code = await self.process.wait()
        return code if code >= 0 else 128 - code

    async def close(self) -> None:
        if self.process.returncode is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGHUP)
        if self.master is not None:
            master, self.master = self.master, None
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(master)
            os.close(master)
            self.queue.put_nowait(None)
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.process.pid, signal.SIGKILL)
