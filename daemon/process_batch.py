"""Stopping and removing many plain-process executions on one host, a few commands for all of them.

Each command the process runtime sends a host costs the daemon a process (a local `sh -c`) or an
SSH exec, and a `stop --all` of 1,000 executions spent most of its time starting the 1,000 shells
that each signalled one process group and then polled it through its grace (issue 17). Here the
executions being stopped on a host share one round of work at a time: one command TERMs the
command groups of all those asked since the last round, looks through the host's processes once
for every group still in its grace, and KILLs those whose grace has passed. Removals of ended
executions likewise share one command.

What each stop does is what the single command did: TERM to the command's process group, then
KILL to what is left of the group once the grace has passed; a stop returns when the group is
gone or has been KILLed.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Final

from .runtime import EngineError
from .transport import LinkError, Transport

ROUND_SECONDS: Final = 0.2  # between looks at the groups in their grace (as the single stop's loop)
# Stops asked one after another (a stop --all's runners, each recording its own) are gathered before
# they are signalled: until none more came for GATHER_QUIET, at most GATHER_MOST. Signalled early,
# the first ones' endings (each runner then reads its state and log through commands of its own)
# would compete with the recording of the rest and hold the answer back.
GATHER_QUIET: Final = 0.05
GATHER_MOST: Final = 3.0
# Rounds in a row that must find no process of a group before it counts as gone: a look through
# /proc is not atomic, so a process forked during it by one that then exits can be missed once.
_MISSES: Final = 2
_REMOVE_BATCH: Final = 2000  # directories per removal command: `rm` gets them as arguments

# stdin, one line each:
#   "T <execution dir>": TERM its command's process group (the pid in .runyard/child.pid, which is the
#                        group's id: the wrapper starts the command with setsid); prints "T <n> <group>"
#                        for the n-th T line, none when there is no group yet.
#   "W <group>": in its grace: prints "A <group>" when a process of the group lives.
#   "K <group>": past its grace: as W, and KILLs the group when a process of it lives.
# The TERM goes out before any process is looked at. Groups are numbers the daemon checked, and
# child.pid is root's (the wrapper's) and checked here to be a number above 1 before it is used.
# `env kill`: dash's builtin takes no `--` (procps and util-linux both do).
ROUND_SCRIPT: Final = (
    "{ cat; echo .; cat /proc/[0-9]*/stat 2>/dev/null; } | awk '"
    's == 0 && $0 == "." { s = 1; if (t != "") system("env kill -TERM -- " t " 2>/dev/null"); next } '
    's == 0 && $1 == "T" { n++; f = substr($0, 3) "/.runyard/child.pid"; g = ""; '
    'if ((getline g < f) > 0 && g ~ /^[0-9]+$/ && g + 0 > 1) { print "T", n, g; t = t " -" g; w[g] = 1 } '
    "close(f); next } "
    's == 0 && ($1 == "W" || $1 == "K") { w[$2] = 1; if ($1 == "K") k[$2] = 1; next } '
    # /proc/<pid>/stat: "pid (comm) state ppid pgrp ..."; comm may hold anything, so cut at its last ") ".
    's == 1 { sub(/^.*\\) /, ""); g = $3; if ((g in w) && !(g in a)) { a[g] = 1; print "A", g; '
    'if (g in k) x = x " -" g } } '
    'END { if (x != "") system("env kill -KILL -- " x " 2>/dev/null") }'
    "'"
)

# stdin: one execution directory a line. Like `docker rm -f`: whatever still runs of the execution
# is killed, then the directories go. As in Docker, where a container's end kills everything in it,
# that includes what outlived the command: its background jobs, the command of a wrapper that was
# killed, the children of a command that was killed. An execution that ended leaves nothing running.
# The groups it knows (child.pid, the command's, and wrapper.pid's; each started with setsid) may
# have been reused once empty, so a group is KILLed only
# - while its own wrapper still runs (checked by its command line): it has not reaped the command,
#   so neither pid can have been reused; or
# - when a process of it works in the execution's directory (its /proc/PID/cwd is in it): a group's
#   id is not reused while a process is in it, and no unrelated group works in this directory.
# A directory removed behind runyard's back (no child.pid left) has its processes found by their
# working directory alone, which the kernel then names "<path> (deleted)": those are KILLed.
# For the whole batch, one `find` and one `cat` read every process's working directory and groups.
REMOVE_SCRIPT: Final = (
    'set --; while IFS= read -r d; do [ -n "$d" ] && set -- "$@" "$d"; done; [ "$#" -eq 0 ] && exit 0; '
    '{ for d; do r="$d/.runyard"; p=; c=; '
    '{ read -r p < "$r/wrapper.pid"; } 2>/dev/null; { read -r c < "$r/child.pid"; } 2>/dev/null; '
    'case "$p" in ""|*[!0-9]*|0|1) p=;; esac; case "$c" in ""|*[!0-9]*|0|1) c=;; esac; '
    'echo "D ${c:-0} ${p:-0} $d"; '
    'if [ -n "$p" ] && ! [ -e "$r/exit_code" ] && grep -qF "$r/run.sh" "/proc/$p/cmdline" 2>/dev/null; then '
    '[ -n "$c" ] && env kill -KILL -- "-$c" 2>/dev/null; env kill -KILL -- "-$p" 2>/dev/null; fi; done; '
    "echo .; find /proc/[0-9]*/cwd -maxdepth 0 -printf '%h %l\\n' 2>/dev/null; echo .; "
    "cat /proc/[0-9]*/stat 2>/dev/null; } | awk '"
    's == 0 && $0 == "." { s = 1; next } '
    # "D <command group> <wrapper group> <dir>" (0: none known); the dir is the rest of the line.
    's == 0 { d = $0; sub(/^D [0-9]+ [0-9]+ /, "", d); sub(/\\/+$/, "", d); dir[d] = 1; '
    'if ($2 > 1) grp[$2 " " d] = 1; if ($3 > 1) grp[$3 " " d] = 1; else if ($2 <= 1) gone[d] = 1; next } '
    's == 1 && $0 == "." { s = 2; next } '
    # "/proc/<pid> <cwd>": the nearest execution directory up its working directory's path, if any.
    's == 1 { pid = substr($1, 7); w = substr($0, length($1) + 2); deleted = sub(/ \\(deleted\\)$/, "", w); '
    'while (w != "" && !(w in dir)) if (!sub(/\\/[^\\/]*$/, "", w)) w = ""; '
    'if (w != "") { at[pid] = w; if (deleted && (w in gone)) x = x " " pid } next } '
    # /proc/<pid>/stat: "pid (comm) state ppid pgrp ..."; comm may hold anything, so cut at its last ") ".
    's == 2 { pid = $1; if (!(pid in at)) next; sub(/^.*\\) /, ""); k = $3 " " at[pid]; '
    'if ((k in grp) && !(k in hit)) { hit[k] = 1; x = x " -" $3 } } '
    'END { if (x != "") system("env kill -KILL -- " x " 2>/dev/null") }\'; '
    'rm -rf -- "$@"'
)


@dataclass(slots=True)
class _Group:
    deadline: float  # time.monotonic() after which it is KILLed
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    misses: int = 0


def _one_line(path: str) -> None:
    # The commands read one directory a line: a name with a line break would be read as two.
    if "\n" in path:
        raise EngineError(f"refusing a directory name with a line break: {path!r}")


def _settle(waiters: list[asyncio.Future[None]], error: BaseException | None = None) -> None:
    for waiter in waiters:
        if not waiter.done():
            if error is None:
                waiter.set_result(None)
            else:
                waiter.set_exception(error)


async def _cancel(task: asyncio.Task[None] | None) -> None:
    """Cancel a batcher's worker and wait until it has let go of its command."""
    if task is not None:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


class Stopper:
    """The stops under way on one host: one command per round for all of them."""

    def __init__(self, transport: Transport, host: str) -> None:
        self._transport = transport
        self._host = host
        self._asked: list[tuple[str, float, asyncio.Future[None]]] = []  # not TERMed yet: (dir, grace, waiter)
        self._groups: dict[int, _Group] = {}  # TERMed, in their grace
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    async def stop(self, container_dir: str, grace_seconds: float) -> None:
        """TERM the command's process group, KILL what is left of it after ``grace_seconds``;
        returns once it is gone or KILLed (at once when the command has not been started)."""
        _one_line(container_dir)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._asked.append((container_dir, float(grace_seconds), waiter))
        self._wake.set()
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._rounds(), name=f"stopping executions on {self._host}")
        await waiter

    async def close(self) -> None:
        """The host's connection is going: stops under way fail as its commands would."""
        task, self._task = self._task, None
        await _cancel(task)
        self._fail(LinkError(f"{self._host}: connection closed while stopping"))

    def _fail(self, error: BaseException) -> None:
        asked, self._asked = self._asked, []
        groups, self._groups = self._groups, {}
        _settle([w for _, _, w in asked], error)
        for group in groups.values():
            _settle(group.waiters, error)

    async def _rounds(self) -> None:
        while self._asked or self._groups:
            await self._gather()
            self._wake.clear()
            try:
                await self._round()
            except (LinkError, EngineError) as exc:
                self._fail(exc)
                return
            if not self._asked:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), ROUND_SECONDS)

    async def _gather(self) -> None:
        """Until the stops being asked stop coming (see GATHER_QUIET)."""
        loop = asyncio.get_running_loop()
        most = loop.time() + GATHER_MOST
        seen = -1
        while self._asked and len(self._asked) != seen and loop.time() < most:
            seen = len(self._asked)
            await asyncio.sleep(GATHER_QUIET)

    async def _round(self) -> None:
        asked, self._asked = self._asked, []
        now = time.monotonic()
        killing = {g for g, group in self._groups.items() if group.deadline <= now}
        try:
            lines = [f"T {d}" for d, _, _ in asked]
            lines += [f"{'K' if g in killing else 'W'} {g}" for g in self._groups]
            result = await self._transport.run(ROUND_SCRIPT, input=("\n".join(lines) + "\n").encode())
            if result.status != 0:
                raise EngineError(f"{self._host}: {result.error_text}")
        except BaseException:
            self._asked[:0] = asked  # failed (or cancelled) with the rest
            raise
        termed: dict[int, int] = {}
        alive: set[int] = set()
        for line in result.stdout.decode("ascii", "replace").splitlines():
            kind, *values = line.split() or [""]
            if kind == "T" and len(values) == 2 and values[0].isdigit() and values[1].isdigit():
                termed[int(values[0])] = int(values[1])
            elif kind == "A" and len(values) == 1 and values[0].isdigit():
                alive.add(int(values[0]))
        for n, (_, grace, waiter) in enumerate(asked, 1):
            g = termed.get(n)
            if g is None:
                _settle([waiter])  # not started: nothing to stop
                continue
            group = self._groups.setdefault(g, _Group(now + grace))
            group.deadline = min(group.deadline, now + grace)
            group.waiters.append(waiter)
            group.misses = 0
        for g, group in list(self._groups.items()):
            if g in alive:
                group.misses = 0
                if g in killing:  # KILLed by this round
                    del self._groups[g]
                    _settle(group.waiters)
                continue
            group.misses += 1
            if group.misses >= _MISSES:
                del self._groups[g]
                _settle(group.waiters)


class Batched:
    """Calls of ``run_batch`` for items asked one at a time: one call in flight, and what is asked
    meanwhile goes into the next (at most ``limit`` items a call). Each asker hears its call's outcome."""

    def __init__(self, run_batch: Callable[[list[str]], Awaitable[None]], what: str, limit: int) -> None:
        self._run_batch = run_batch
        self._what = what
        self._limit = limit
        self._pending: list[tuple[str, asyncio.Future[None]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __call__(self, item: str) -> None:
        _one_line(item)
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((item, waiter))
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._drain(), name=self._what)
        await waiter

    async def close(self) -> None:
        task, self._task = self._task, None
        await _cancel(task)
        pending, self._pending = self._pending, []
        _settle([w for _, w in pending], LinkError(f"{self._what}: connection closed"))

    async def _drain(self) -> None:
        await asyncio.sleep(0)  # the same turn's askers go together
        while self._pending:
            batch, self._pending = self._pending[:self._limit], self._pending[self._limit:]
            try:
                await self._run_batch([item for item, _ in batch])
            except Exception as exc:
                _settle([w for _, w in batch], exc)
            except BaseException:
                self._pending[:0] = batch
                raise
            else:
                _settle([w for _, w in batch])


def removals(transport: Transport, host: str) -> Batched:
    """Removal of ended executions' directories on ``host``, many to a command."""

    async def remove(dirs: list[str]) -> None:
        result = await transport.run(REMOVE_SCRIPT, input="".join(f"{d}\n" for d in dirs).encode())
        if result.status != 0:
            raise EngineError(f"{host}: {result.error_text}")

    return Batched(remove, f"removing executions on {host}", _REMOVE_BATCH)
