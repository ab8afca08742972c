"""Ending `runyard shell` commands in Docker containers, now or after the daemon restarts.

The engine has no call that kills an exec: closing its stream hangs up a terminal at best, and a
command without one (``shell -T -- sleep 600``) runs on after its client has gone. So each exec
runs under a small wrapper that writes its pid (in the container's pid namespace) to a file in
the container's /tmp, and ending the shell is a second exec that signals that process group:
SIGHUP (an interactive bash passes it to its jobs), SIGTERM, then SIGKILL if it is still there
three seconds later. Both execs run as the container's own user, so they can do nothing its
command could not.

Every open shell is recorded in the daemon's ``shells/`` folder until it has been ended. A daemon
killed with -9 leaves its records behind; when the host is next reconciled the recorded shells are
ended, because their clients are gone with the old daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import aiodocker

log = logging.getLogger("runyard.shell")

# $0 is the pid file; the pid written is the command's, as exec keeps it.
WRAPPER: Final = '{ echo $$ >"$0"; } 2>/dev/null; exec "$@"'
KILLER: Final = (
    'p=$(cat "$0" 2>/dev/null); rm -f "$0"; case "$p" in ""|*[!0-9]*) exit 0;; esac; '
    'for s in HUP TERM; do kill -$s -"$p" 2>/dev/null || kill -$s "$p" 2>/dev/null; done; '
    'for i in 1 2 3; do kill -0 "$p" 2>/dev/null || exit 0; sleep 1; done; '
    'kill -KILL -"$p" 2>/dev/null || kill -KILL "$p" 2>/dev/null; exit 0'
)
# A bound for a hung engine only: a loaded engine takes seconds to run an exec, and a shell given
# up on keeps running its command.
KILL_TIMEOUT: Final = 60.0


def new_pid_file() -> str:
    return f"/tmp/.runyard-shell-{secrets.token_hex(8)}"


def wrapped(argv: list[str], pid_file: str) -> list[str]:
    return ["/bin/sh", "-c", WRAPPER, pid_file, *argv]


async def end_in_container(docker: aiodocker.Docker, container_id: str, pid_file: str, *,
                           signal: bool = True) -> None:
    """Signal the shell's process group inside the container; its pid file goes in any case."""
    container = docker.containers.container(container_id)
    argv = ["/bin/sh", "-c", KILLER, pid_file] if signal else ["rm", "-f", pid_file]
    killer = await container.exec(argv, stdin=False, tty=False)
    async with killer.start(detach=False) as stream:
        while await stream.read_out() is not None:
            pass


class ShellRecords:
    """One file per open Docker shell: its host, container and pid file."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def add(self, host: str, container_id: str, pid_file: str) -> Path:
        self.directory.mkdir(mode=0o700, exist_ok=True)
        path = self.directory / pid_file.rsplit("-", 1)[-1]
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump({"host": host, "container": container_id, "pid_file": pid_file}, fh)
        return path

    def remove(self, path: Path) -> None:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()

    def of_host(self, host: str) -> list[tuple[Path, str, str]]:
        found = []
        with contextlib.suppress(FileNotFoundError):
            for path in sorted(self.directory.iterdir()):
                try:
                    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
                    with os.fdopen(fd) as fh:
                        record: Any = json.load(fh)
                except (OSError, ValueError):
                    self.remove(path)
                    continue
                if not isinstance(record, dict) or not all(isinstance(record.get(k), str)
                                                           for k in ("host", "container", "pid_file")):
                    self.remove(path)
                elif record["host"] == host:
                    found.append((path, record["container"], record["pid_file"]))
        return found


async def end_leftovers(records: ShellRecords, host: str, docker: aiodocker.Docker) -> None:
    """End the shells a previous daemon left open on ``host``: their clients went with it."""
    import aiodocker  # imported by the Docker host's runtime already
    import aiohttp

    for path, container_id, pid_file in await asyncio.to_thread(records.of_host, host):
        try:
            await asyncio.wait_for(end_in_container(docker, container_id, pid_file), KILL_TIMEOUT)
            log.info("host %s: ended a shell left open in container %s by the previous daemon", host,
                     container_id[:12])
        except (aiodocker.DockerError, aiohttp.ClientError, OSError, TimeoutError) as exc:
            # its container is gone (and the shell with it), or the engine is: nothing is left to end
            log.info("host %s: a shell left in container %s: %s", host, container_id[:12], exc)
        records.remove(path)
