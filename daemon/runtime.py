"""What the runner needs from a runtime (Docker containers, or plain processes), and its errors.

Both runtimes find their executions again from what they left on the host
(container labels; files in the execution's directory), never from daemon
memory, so a restarted daemon can pick everything up.
"""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, Protocol

from .logfile import LogFile
from .logstream import Decoded


class EngineError(Exception):
    """The runtime refused or failed an operation; the message says what and why."""


class ImageMissing(EngineError):
    pass


class ContainerGone(EngineError):
    pass


SLURM_PREFIX: Final = "slurm:"  # a Slurm job's attempt: "slurm:" and its directory on the shared file system
_USER = re.compile(r"[0-9]+:[0-9]+")

# Run where the execution's files are handed to the user it runs as (run_as = "owner"):
# prints nothing and exits 0 there, else says why it cannot.
NEEDS_ROOT: Final = ('[ "$(id -u)" = 0 ] || { echo "run_as = \\"owner\\" needs root on the host to hand an '
                     'execution its files (the SSH user is $(id -un))" >&2; exit 1; }')


def owner_ids(user: str) -> tuple[int, int]:
    """uid and gid of a ContainerSpec.user ("uid:gid"); anything else is refused, never put in a command."""
    if not _USER.fullmatch(user):
        raise EngineError(f"not a uid:gid pair: {user!r}")
    uid, gid = user.split(":")
    return int(uid), int(gid)


def runtime_of(container_id: str) -> str:
    """Which runtime made ``container_id``: the process runtime names an attempt by its directory
    (an absolute path), Docker by a hexadecimal id."""
    if container_id.startswith(SLURM_PREFIX):
        return "slurm"
    return "process" if container_id.startswith("/") else "docker"


def attempt_name(execution_id: int, attempt: int = 0) -> str:
    """How an execution's attempt is named on a host (work directory, container): its id, and after a
    retry also where that attempt's log begins, so no two attempts ever share a name."""
    return f"{int(execution_id)}" + (f"-{int(attempt)}" if attempt else "")


@dataclass(frozen=True, slots=True)
class ContainerSpec:
    execution_id: int
    image: str
    command: str
    environment: dict[str, str]
    workdir: str  # the execution's directory on the host
    host: str
    gpus: tuple[str, ...] = ()  # granted GPU ids (UUIDs, or indexes for declared GPUs)
    cpu_limit: float | None = None
    memory_limit_mb: int | None = None
    # Which attempt: an execution re-queued after losing its host gets a new container, named and
    # labelled apart, so the one left on the lost host is never adopted by mistake.
    attempt: int = 0
    # "uid:gid" the command runs as (run_as = "owner"); None: the image's user, or the SSH user.
    user: str | None = None
    # The execution's resources (gpus, cpus, memory_mb, time_limit_seconds ...): what a cluster's
    # scheduler is asked for, where runyard itself did not place it on a GPU.
    resources: dict[str, Any] = field(default_factory=dict)
    # "host": the container shares the host's network (a distributed task's member, so the others
    # reach it at its host's address); "": the engine's default network.
    network: str = ""


@dataclass(frozen=True, slots=True)
class ContainerState:
    id: str
    execution_id: int
    status: str  # created, running, exited, ...
    exit_code: int
    oom_killed: bool
    gpus: tuple[str, ...] = ()
    attempt: int = 0
    # When the engine (or the process runtime's wrapper) started and ended it, in the store's UTC
    # form; None when not yet (or not known). Not when the daemon noticed: after a daemon kill or a
    # host outage that can be many seconds later.
    started_at: str | None = None
    finished_at: str | None = None
    # Why it ended when not by its command's exit (a cluster's "time-limit", "cancelled", "node-lost"):
    # lifecycle.decide turns it into the execution's reason.
    cause: str = ""
    # What the cluster said when it ended it (for its log), e.g. "Slurm ended the job: NODE_FAIL (...)".
    said: str = ""
    job: str = ""  # a cluster's job id (Slurm's)


def store_time_of_engine(text: object) -> str | None:
    """Docker's RFC 3339 time (nanoseconds, trailing zeros trimmed, always UTC) in the store's form
    ("%Y-%m-%dT%H:%M:%S.%fZ"); None for Docker's "never" (year 1) or anything unreadable."""
    if not isinstance(text, str) or not text.endswith("Z") or text.startswith("0001-"):
        return None
    whole, _, frac = text[:-1].partition(".")
    if not frac.isdigit() and frac:
        return None
    try:
        moment = datetime.fromisoformat(whole).replace(tzinfo=UTC)
    except ValueError:
        return None
    return f"{moment.strftime('%Y-%m-%dT%H:%M:%S')}.{(frac + '000000')[:6]}Z"


def store_time_of_epoch(text: str) -> str | None:
    """Seconds since the epoch as `date +%s.%N` prints them (or `date +%s` where %N is not known)
    in the store's form; None for anything else."""
    seconds, _, frac = text.strip().partition(".")
    if not seconds.isdigit() or len(seconds) > 12:
        return None
    moment = datetime.fromtimestamp(int(seconds), UTC)
    digits = frac if frac.isdigit() else ""
    return f"{moment.strftime('%Y-%m-%dT%H:%M:%S')}.{(digits + '000000')[:6]}Z"


class Runtime(Protocol):
    kind: str
    # Where /valohai lives for the user's command: the container path, or the host directory.
    in_container: bool

    async def ping(self) -> str: ...
    async def ensure_image(self, image: str) -> None: ...
    async def create(self, spec: ContainerSpec) -> str: ...
    async def start(self, container_id: str) -> None: ...
    async def state(self, container_id: str) -> ContainerState: ...
    async def find(self, execution_id: int, attempt: int = 0) -> ContainerState | None: ...
    async def list_ours(self) -> list[ContainerState]: ...
    async def wait(self, container_id: str) -> None: ...
    # ``final``: the container has ended, so a last line left without a newline is stored as it is
    # (default: a read that does not follow is the final one).
    def read_logs(self, container_id: str, log: LogFile, *, follow: bool,
                  final: bool | None = None) -> AsyncIterator[Decoded]: ...
    # The ended container's last line as a record (before masking), to check the stored log
    # against; None when unknown (the runner then reads again from the resume point).
    async def last_record(self, container_id: str) -> bytes | None: ...
    async def stop(self, container_id: str, grace_seconds: int) -> None: ...
    async def remove(self, container_id: str) -> None: ...
    async def close(self) -> None: ...
