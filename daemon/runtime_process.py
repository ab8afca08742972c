"""Executions as plain processes, for hosts without Docker (and this machine without Docker).

The command runs detached (its own session, started with setsid) under a small
POSIX sh wrapper that writes stdout, stderr and the exit status into files in
the execution's directory on the host. Neither a dropped SSH connection nor a
daemon restart touches it; the daemon finds it again from those files.

Logs are read with `tail`, resuming after the lines already stored, so nothing
is lost or stored twice. Their timestamps are the daemon's reading time. One
watcher command per host, a loop of shell builtins, tells every wait of that host
when its execution ends: following an execution costs its host next to nothing.
Needs POSIX sh, setsid (util-linux) and GNU tail on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from typing import Final

from runyard.protocol.logformat import format_record

from .command_script import command_argv, shebang_argv_or_none
from .logfile import LogFile
from .logstream import Decoded, collapse_carriage_returns, timestamp_now
from .process_batch import Stopper, removals
from .runtime import (
    NEEDS_ROOT,
    ContainerGone,
    ContainerSpec,
    ContainerState,
    EngineError,
    attempt_name,
    owner_ids,
    store_time_of_epoch,
)
from .transport import LinkError, Transport, q

# What a stream's reader puts in the shared queue: (letter, line), its failure, or None when done.
StreamItem = tuple[str, str] | BaseException | None

CONTROL: Final = ".runyard"  # inside the execution's directory, beside repository/ and outputs/
LOST: Final = -1  # exit code reported when the wrapper vanished without recording one

# Whether the wrapper whose pid is in $p is alive and still this execution's, not a process that
# reused its pid after it was killed without recording an exit code: its command line names this
# execution's run.sh. Read with the shell's own `read` (which drops the NULs between the arguments),
# as the watcher does it for every execution each round: no fork.
_ALIVE: Final = (
    '{ c=; [ -n "$p" ] && kill -0 "$p" && read -r c < "/proc/$p/cmdline"; } 2>/dev/null; '
    'case $c in *"$r/run.sh"*) true;; *) false;; esac'
)

# Prints "<state> <exit code> <started> <finished>" for the execution directory in $d; the times are
# the wrapper's own (seconds since the epoch), "-" where not written (yet).
_STATE: Final = (
    'r="$d/.runyard"; '
    'if [ -e "$r/exit_code" ]; then s="exited $(cat "$r/exit_code")"; '
    'elif [ -e "$r/wrapper.pid" ]; then p=; read -r p < "$r/wrapper.pid" 2>/dev/null; '
    f'if {_ALIVE}; '
    'then s="running 0"; else s="exited -1"; fi; '
    'elif [ -e "$r/run.sh" ]; then s="created 0"; else s="missing 0"; fi; '
    't1=$(head -c 40 "$r/started_at" 2>/dev/null | tr -cd 0-9.); '
    't2=$(head -c 40 "$r/finished_at" 2>/dev/null | tr -cd 0-9.); '
    'echo "$s ${t1:--} ${t2:--}"'
)

_MARK: Final = "runyard-begins"  # what a log reader prints first on each output (_tail)

_GATHER_SECONDS: Final = 0.01  # how long a state look-up waits for others to make in the same command
_STATES_AT_ONCE: Final = 200  # at most in one command (its length: a path each)

WATCH_SECONDS: Final = 0.5  # how often the host's watcher looks at its executions

# The host's one watcher, for all its executions' waits: each round, with the shell's builtins only
# (and one `sleep`), the names of the execution directories under $w whose wrapper still runs,
# printed as "runyard-running <name>..." when that set changed, and every tenth round anyway (so a
# wait that missed a change still hears the state). A closed channel ends it at its next print.
_WATCH: Final = (
    'prev=-; n=0; while :; do run=; for d in "$w"/*; do r="$d/.runyard"; x=${d##*/}; '
    'case $x in ""|*[!0-9-]*) continue;; esac; '
    '[ -e "$r/exit_code" ] && continue; [ -e "$r/wrapper.pid" ] || continue; '
    'p=; read -r p < "$r/wrapper.pid" 2>/dev/null; '
    f'if {_ALIVE}; then run="$run $x"; fi; done; n=$((n+1)); '
    'if [ "$run" != "$prev" ] || [ "$n" -ge 10 ]; then echo "runyard-running$run" || exit 0; prev=$run; n=0; fi; '
    f'sleep {WATCH_SECONDS}; done'
)


_RUNNING: Final = b"runyard-running"  # begins each of the watcher's reports
_ATTEMPT: Final = re.compile(r"[0-9]+(-[0-9]+)?")  # attempt_name's directory names


@dataclass(eq=False)
class _Wait:
    container_id: str
    name: str
    done: asyncio.Future[None]
    seen: bool = False  # named running in a watcher's report since the wait began
    checking: bool = False  # its state is being looked up


class ProcessRuntime:
    kind = "process"
    in_container = False

    def __init__(self, transport: Transport, work_root: str, *, host: str, run_as_owner: bool = False) -> None:
        self.transport = transport
        self.work_root = work_root
        self.host = host
        self.run_as_owner = run_as_owner
        self._stopper = Stopper(transport, host)
        self._removals = removals(transport, host)
        # The waits of this host's executions, all answered by one watcher command on the host.
        self._waits: set[_Wait] = set()
        self._watcher: asyncio.Task[None] | None = None
        self._running: set[str] | None = None  # the names in the watcher's latest report
        self._background: set[asyncio.Task[None]] = set()
        self._asked: list[tuple[str, asyncio.Future[str]]] = []  # state look-ups to make in one command
        self._ending: set[asyncio.Task[None]] = set()  # watchers cancelled, until they have closed their command

    def _dir(self, execution_id: int, attempt: int = 0) -> str:
        # The same directory Host.work_dir gives the runner for this attempt.
        return f"{self.work_root}/{attempt_name(execution_id, attempt)}"

    async def _run(self, command: str, *, input: bytes | None = None) -> str:
        result = await self.transport.run(command, input=input)
        if result.status != 0:
            raise EngineError(f"{self.host}: {result.error_text}")
        return result.stdout.decode("utf-8", "replace")

    async def ping(self) -> str:
        owner = ""
        if self.run_as_owner:
            # The wrapper (root) hands the workspace over and starts the command as its owner.
            owner = (f"{NEEDS_ROOT}; command -v setpriv >/dev/null || {{ echo 'run_as = \"owner\" needs setpriv "
                     "(util-linux) on the host' >&2; exit 1; }; ")
        out = await self._run(f"{owner}command -v setsid >/dev/null && command -v tail >/dev/null && uname -sr")
        return f"process runtime on {out.strip()}"

    async def ensure_image(self, image: str) -> None:
        return None  # processes run on the host as it is; the image is only recorded

    async def close(self) -> None:
        await self._stopper.close()
        await self._removals.close()
        tasks = [*self._ending, *([self._watcher] if self._watcher is not None else [])]
        for task in tasks:
            task.cancel()
        # A state look-up under way is left to end: cancelled, a local one would leave its process.
        for task in [*tasks, *self._background]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def create(self, spec: ContainerSpec) -> str:
        d = self._dir(spec.execution_id, spec.attempt)
        r = f"{d}/{CONTROL}"
        exports = "".join(f"export {name}={q(value)}\n" for name, value in spec.environment.items()
                          if name.isidentifier())
        # A shebang's interpreter gets the script as -c's argument (as in a container); without one,
        # sh reads the file, which has no limit on its size.
        launcher = " ".join(q(a) for a in command_argv(spec.command)[:-1])
        shebang = shebang_argv_or_none(spec.command) is not None
        handover, command = "", (f'{launcher} "$(cat "$r/command.sh")"' if shebang else 'sh "$r/command.sh"')
        if spec.user:
            # The wrapper stays root, and so do its control files (.runyard): the daemon kills the
            # process group they name. The owner gets the workspace's folders, 0700; the directory
            # stays root's, 0711, so they can reach them and nobody can list it (whatever groups
            # the host has). command.sh stays root's, so the command is passed as an argument
            # (at most 128 KiB: Linux's limit on one argument).
            uid, gid = owner_ids(spec.user)
            folders = '"$d/repository" "$d/inputs" "$d/outputs" "$d/config"'
            handover = (f'chown -R -h -P -- {uid}:{gid} {folders} && chmod 0700 {folders} && chmod 0711 "$d" '
                        f'|| {{ echo "runyard: cannot hand the workspace to {uid}:{gid}" >> "$r/stderr"; '
                        'echo 126 > "$r/exit_code"; exit 1; }\n')
            command = f'setpriv --reuid={uid} --regid={gid} --clear-groups {launcher} "$(cat "$r/command.sh")"'
        wrapper = (
            "#!/bin/sh\n"
            "# Written by runyard: runs the execution detached and records how it ended.\n"
            "umask 077\n"  # its logs and status files are the execution's alone
            f"r={q(r)}\n"
            f"d={q(d)}\n"
            f"{handover}"
            'cd "$d/repository" || { echo 127 > "$r/exit_code"; exit 1; }\n'
            f"{exports}"
            # Its own start and end times: the daemon may notice either much later (a daemon
            # restart, a host outage), and the execution's times must be when it really ran.
            'date +%s.%N > "$r/started_at.tmp"; mv "$r/started_at.tmp" "$r/started_at"\n'
            f'setsid {command} > "$r/stdout" 2> "$r/stderr" < /dev/null &\n'
            'echo $! > "$r/child.pid"\n'
            "wait $!\n"
            "c=$?\n"
            'date +%s.%N > "$r/finished_at.tmp"; mv "$r/finished_at.tmp" "$r/finished_at"\n'
            'echo $c > "$r/exit_code.tmp" && mv "$r/exit_code.tmp" "$r/exit_code"\n'
        )
        # run.sh holds the secrets: the directory is 0700 and every file 0600, whatever the host's umask.
        await self._run(f"umask 077 && mkdir -p {q(r)} && chmod 0700 {q(d)} {q(r)} && cat > {q(r)}/command.sh",
                        input=spec.command.encode())
        await self._run(f"umask 077 && cat > {q(r)}/run.sh", input=wrapper.encode())
        return d

    async def start(self, container_id: str) -> None:
        r = f"{container_id}/{CONTROL}"
        await self._run(
            f"umask 077; [ -e {q(r)}/wrapper.pid ] && exit 0; "
            f"setsid sh {q(r)}/run.sh </dev/null >/dev/null 2>&1 & echo $! > {q(r)}/wrapper.pid"
        )

    async def state(self, container_id: str) -> ContainerState:
        state = _parse_state(container_id, await self._state_text(container_id))
        if state.status == "missing":
            raise ContainerGone(f"{container_id} was removed behind runyard's back")
        return state

    async def _state_text(self, container_id: str) -> str:
        """_STATE's line for one execution. Asked together (a restart's runners all ask at once), one
        command answers them all: each SSH command starts the login shell, which may take a tenth of a
        second of the host's CPU."""
        answer: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._asked.append((container_id, answer))
        if len(self._asked) == 1:
            task = asyncio.create_task(self._look_up())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        return await answer

    async def _look_up(self) -> None:
        await asyncio.sleep(_GATHER_SECONDS)  # the others asking at the same time
        batch, self._asked = self._asked[:_STATES_AT_ONCE], self._asked[_STATES_AT_ONCE:]
        if self._asked:
            task = asyncio.create_task(self._look_up())
            self._background.add(task)
            task.add_done_callback(self._background.discard)
        try:
            out = await self._run("; ".join(f"d={q(c)}; printf '%s ' {i}; {_STATE}" for i, (c, _) in enumerate(batch)))
        except (LinkError, EngineError) as exc:
            for _, answer in batch:
                if not answer.done():
                    answer.set_exception(exc)
            return
        lines = dict(line.partition(" ")[::2] for line in out.splitlines())
        for i, (container_id, answer) in enumerate(batch):
            if answer.done():
                continue
            if str(i) in lines:
                answer.set_result(lines[str(i)])
            else:
                answer.set_exception(EngineError(f"{self.host}: no state of {container_id} in {out[:200]!r}"))

    async def find(self, execution_id: int, attempt: int = 0) -> ContainerState | None:
        d = self._dir(execution_id, attempt)
        state = _parse_state(d, await self._run(f"d={q(d)}; {_STATE}"))
        return None if state.status in ("missing", "created") else state

    async def list_ours(self) -> list[ContainerState]:
        out = await self._run(
            f"for d in {q(self.work_root)}/*; do [ -d \"$d/{CONTROL}\" ] || continue; "
            f'printf "%s " "$d"; {_STATE}; done'
        )
        states = []
        for line in out.splitlines():
            path, _, rest = line.partition(" ")
            state = _parse_state(path, rest)
            if state.status not in ("missing", "created"):
                states.append(state)
        return states

    async def wait(self, container_id: str) -> None:
        parent, _, name = container_id.rstrip("/").rpartition("/")
        if parent != self.work_root or not _ATTEMPT.fullmatch(name):
            await self._run(f"d={q(container_id)}; while :; do s=$({_STATE}); "
                            f"case $s in running*) sleep {WATCH_SECONDS};; *) break;; esac; done")
            return
        waiting = _Wait(container_id, name, asyncio.get_running_loop().create_future())
        waiting.seen = self._running is not None and name in self._running
        self._waits.add(waiting)
        if self._watcher is None or self._watcher.done():
            self._running = None
            self._watcher = asyncio.create_task(self._watch())
        try:
            await waiting.done
        finally:
            self._waits.discard(waiting)
            if waiting.done.done() and not waiting.done.cancelled():
                waiting.done.exception()  # retrieved: a wait cancelled after its watcher failed
            if not self._waits and self._watcher is not None:
                # Nothing waits on this host any more: its watcher ends (a later wait starts another).
                self._watcher.cancel()
                self._ending.add(self._watcher)
                self._watcher.add_done_callback(self._ending.discard)
                self._watcher, self._running = None, None

    async def _watch(self) -> None:
        """The host's watcher: hands each report of what still runs to the waits, until cancelled."""
        pending = b""
        try:
            # Cancelled while reading, the stream's own clean-up closes the command's channel.
            async for chunk in self.transport.stream(f"w={q(self.work_root)}; {_WATCH}"):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    if line.startswith(_RUNNING):
                        self._heard(set(line[len(_RUNNING):].decode("ascii", "replace").split()))
            raise LinkError(f"{self.host}: the executions' watcher ended")
        except (LinkError, EngineError) as exc:
            self._running = None
            for waiting in self._waits:
                if not waiting.done.done():
                    waiting.done.set_exception(exc)

    def _heard(self, running: set[str]) -> None:
        self._running = running
        for waiting in self._waits:
            if waiting.done.done():
                continue
            if waiting.name in running:
                waiting.seen = True
            elif waiting.seen:
                # Named running in an earlier report, not in this later one: it ended (or went).
                waiting.done.set_result(None)
            elif not waiting.checking:
                # Never named running since it began waiting: it may have ended before the watcher
                # looked, or this report may be from a look before it started. Its state says which.
                waiting.checking = True
                check = asyncio.create_task(self._check(waiting))
                self._background.add(check)
                check.add_done_callback(self._background.discard)

    async def _check(self, waiting: _Wait) -> None:
        try:
            state = await self.state(waiting.container_id)
        except ContainerGone:
            state = None
        except (LinkError, EngineError) as exc:
            if not waiting.done.done():
                waiting.done.set_exception(exc)
            return
        finally:
            waiting.checking = False
        if state is not None and state.status == "running":
            waiting.seen = True
        elif not waiting.done.done():
            waiting.done.set_result(None)

    async def last_record(self, container_id: str) -> bytes | None:
        # Its log is a file on the host, read from a byte offset: the final read costs little.
        return None

    async def read_logs(self, container_id: str, log: LogFile, *, follow: bool,
                        final: bool | None = None) -> AsyncIterator[Decoded]:
        counts = await asyncio.to_thread(log.count_by_stream)
        queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        reader = asyncio.create_task(self._tail(f"{container_id}/{CONTROL}", counts.get("O", 0), counts.get("E", 0),
                                                follow, final if final is not None else not follow, queue))
        async for decoded in merged_lines(queue, [reader]):
            yield decoded

    async def _tail(self, r: str, skip_out: int, skip_err: int, follow: bool, final: bool,
                    queue: asyncio.Queue[StreamItem]) -> None:
        """Both logs, each from the first line not stored yet, through one command: stdout's lines come
        on its stdout, stderr's on its stderr (the shell's and tail's own messages go nowhere)."""
        out, err = '"$r"/stdout', '"$r"/stderr'
        if follow:
            how = 'tail -s 0.2 -F --pid="$p"'
            tails = (f"{how} -n +{skip_out + 1} {out} & {how} -n +{skip_err + 1} {err} >&3; wait")
        else:
            tails = (f"if [ -e {out} ]; then tail -n +{skip_out + 1} {out} & fi; "
                     f"if [ -e {err} ]; then tail -n +{skip_err + 1} {err} >&3; fi; wait")
        # The marker on each output begins what is read: whatever the login shell printed before the
        # command ran (a noisy .bashrc) is no execution's output.
        command = (f"exec 3>&2 2>/dev/null; r={q(r)}; p=1; read -r p < \"$r/wrapper.pid\"; [ -n \"$p\" ] || p=1; "
                   f"echo {_MARK}; echo {_MARK} >&3; {tails}")
        mark = _MARK.encode() + b"\n"
        pending = {1: b"", 2: b""}
        begun = {1: False, 2: False}
        try:
            async for fd, chunk in self.transport.stream_both(command):
                data = pending[fd] + chunk
                if not begun[fd]:
                    before, found, data = data.partition(mark)
                    if not found:
                        pending[fd] = before
                        continue
                    begun[fd] = True
                *lines, pending[fd] = data.split(b"\n")
                letter = "O" if fd == 1 else "E"
                for line in lines:
                    queue.put_nowait((letter, collapse_carriage_returns(line.decode("utf-8", "replace"))))
            for fd, letter in ((1, "O"), (2, "E")):
                if begun[fd] and pending[fd] and final:
                    # The process ended without a final newline: the last line is still a line. (Before
                    # the end it is left for the next read, which starts again at its first byte.)
                    queue.put_nowait((letter, collapse_carriage_returns(pending[fd].decode("utf-8", "replace"))))
            queue.put_nowait(None)
        except (LinkError, EngineError) as exc:
            queue.put_nowait(exc)

    async def stop(self, container_id: str, grace_seconds: int) -> None:
        # TERM to the command's whole process group, KILL to what is left after the grace: with the
        # other stops on this host at the time, one command a round for all of them (process_batch).
        await self._stopper.stop(container_id, grace_seconds)

    async def remove(self, container_id: str) -> None:
        """Like `docker rm -f`: what still runs there (an attempt abandoned while its host was away,
        one stopped meanwhile) is killed, then its directory goes (with the others removed meanwhile)."""
        with contextlib.suppress(LinkError, EngineError):
            await self._removals(container_id)


def _parse_state(path: str, text: str) -> ContainerState:
    parts = text.split()
    status = parts[0] if parts else "missing"
    try:
        code = int(parts[1]) if len(parts) > 1 else 0
    except ValueError:
        code = LOST
    name = path.rstrip("/").rsplit("/", 1)[-1]
    execution, _, attempt = name.partition("-")  # as attempt_name makes them: <id> or <id>-<attempt>
    started = store_time_of_epoch(parts[2]) if len(parts) > 2 else None
    finished = store_time_of_epoch(parts[3]) if len(parts) > 3 and status == "exited" else None
    return ContainerState(id=path, execution_id=int(execution) if execution.isdigit() else 0, status=status,
                          exit_code=code, oom_killed=False, attempt=int(attempt) if attempt.isdigit() else 0,
                          started_at=started, finished_at=finished)


async def merged_lines(queue: asyncio.Queue[StreamItem], readers: list[asyncio.Task[None]],
                       also: Sequence[asyncio.Task[None]] = ()) -> AsyncIterator[Decoded]:
    """The lines the stream readers put in ``queue``, stamped as they arrive and batched, until every
    reader has put None; a reader's failure is raised here. The readers (and ``also``) are cancelled
    and awaited when it ends, however it ends."""
    finished = 0
    try:
        while finished < len(readers):
            item = await queue.get()
            batch = [item]
            while not queue.empty():
                batch.append(queue.get_nowait())
            out = Decoded()
            for entry in batch:
                if entry is None:
                    finished += 1
                elif isinstance(entry, BaseException):
                    raise entry
                else:
                    letter, text = entry
                    now = timestamp_now()
                    out.records.append(format_record(letter, now, text).encode())
                    if letter == "O" and text.startswith("{"):
                        out.candidates.append((now, text))
            if out.records:
                yield out
    finally:
        tasks = [*readers, *also]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
