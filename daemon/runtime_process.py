"""Executions as plain processes, for hosts without Docker (and this machine without Docker).

The command runs detached (its own session, started with setsid) under a small
POSIX sh wrapper that writes stdout, stderr and the exit status into files in
the execution's directory on the host. Neither a dropped SSH connection nor a
daemon restart touches it; the daemon finds it again from those files.

Logs are read with `tail`, resuming after the lines already stored, so nothing
is lost or stored twice. Their timestamps are the daemon's reading time.
Needs POSIX sh, setsid (util-linux) and GNU tail on the host.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
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

# Prints "<state> <exit code> <started> <finished>" for the execution directory in $d; the times are
# the wrapper's own (seconds since the epoch), "-" where not written (yet).
_STATE: Final = (
    'r="$d/.runyard"; '
    'if [ -e "$r/exit_code" ]; then s="exited $(cat "$r/exit_code")"; '
    'elif [ -e "$r/wrapper.pid" ]; then p=$(cat "$r/wrapper.pid"); '
    'if kill -0 "$p" 2>/dev/null && grep -q run.sh "/proc/$p/cmdline" 2>/dev/null; '
    'then s="running 0"; else s="exited -1"; fi; '
    'elif [ -e "$r/run.sh" ]; then s="created 0"; else s="missing 0"; fi; '
    't1=$(head -c 40 "$r/started_at" 2>/dev/null | tr -cd 0-9.); '
    't2=$(head -c 40 "$r/finished_at" 2>/dev/null | tr -cd 0-9.); '
    'echo "$s ${t1:--} ${t2:--}"'
)


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
        out = await self._run(f"d={q(container_id)}; {_STATE}")
        state = _parse_state(container_id, out)
        if state.status == "missing":
            raise ContainerGone(f"{container_id} was removed behind runyard's back")
        return state

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
        await self._run(
            f"d={q(container_id)}; while :; do s=$({_STATE}); case $s in running*) sleep 0.5;; *) break;; esac; done"
        )

    async def last_record(self, container_id: str) -> bytes | None:
        # Its log is a file on the host, read from a byte offset: the final read costs little.
        return None

    async def read_logs(self, container_id: str, log: LogFile, *, follow: bool,
                        final: bool | None = None) -> AsyncIterator[Decoded]:
        counts = await asyncio.to_thread(log.count_by_stream)
        r = f"{container_id}/{CONTROL}"
        queue: asyncio.Queue[StreamItem] = asyncio.Queue()
        readers = [
            asyncio.create_task(self._tail(r, name, letter, counts.get(letter, 0), follow,
                                           final if final is not None else not follow, queue))
            for name, letter in (("stdout", "O"), ("stderr", "E"))
        ]
        async for decoded in merged_lines(queue, readers):
            yield decoded

    async def _tail(self, r: str, name: str, letter: str, skip: int, follow: bool, final: bool,
                    queue: asyncio.Queue[StreamItem]) -> None:
        path = f"{q(r)}/{name}"
        if follow:
            command = (f"p=$(cat {q(r)}/wrapper.pid 2>/dev/null || echo 1); "
                       f"exec tail -s 0.2 -n +{skip + 1} -F --pid=\"$p\" {path} 2>/dev/null")
        else:
            command = f"[ -e {path} ] || exit 0; exec tail -n +{skip + 1} {path}"
        pending = b""
        try:
            async for chunk in self.transport.stream(command):
                pending += chunk
                *lines, pending = pending.split(b"\n")
                for line in lines:
                    queue.put_nowait((letter, collapse_carriage_returns(line.decode("utf-8", "replace"))))
            if pending and final:
                # The process ended without a final newline: the last line is still a line. (Before
                # the end it is left for the next read, which starts again at its first byte.)
                queue.put_nowait((letter, collapse_carriage_returns(pending.decode("utf-8", "replace"))))
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
