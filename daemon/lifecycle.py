"""The execution state machine: the legal moves, and which move each event makes. No I/O.

An execution's owner (the scheduler while it waits unplaced in the queue, its runner from
placement until it ends or goes back to the queue) turns what happens into an event, asks
:func:`decide` what that means, and records the answer. Nothing else decides a status, so
every path through the daemon agrees on what "the container exited with 137 while its
engine restarted" or "stop asked while its inputs download" means.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

ACTIVE_STATUSES: Final = ("created", "queued", "started", "stopping")
TERMINAL: Final = frozenset({"complete", "error", "stopped"})

# Which status changes are legal; the store refuses any other (a bug or a race lost).
ALLOWED: Final[dict[str, frozenset[str]]] = {
    "created": frozenset({"queued", "stopped", "error"}),
    "queued": frozenset({"started", "stopped", "error"}),
    # started -> queued: its host failed it and it has retries left
    "started": frozenset({"complete", "error", "stopping", "stopped", "queued"}),
    "stopping": frozenset({"stopped", "complete", "error"}),
}

LIMIT_REASONS: Final = ("time-limit", "no-output-timeout")
PROCESS_LOST: Final = -1  # the exit code a runtime reports when the process vanished without one
SIGNAL_CODES: Final = (137, 143)  # SIGKILL, SIGTERM: what an engine restart ends a container with


# -- events ----------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Started:
    """The engine started the container (or the process runtime its command)."""


@dataclass(frozen=True, slots=True)
class Exited:
    code: int
    oom_killed: bool = False
    engine_restarted: bool = False  # the engine went away while it ran (a restart ends with a signal)
    # Ended by a cluster's scheduler, not by its command: "time-limit", "cancelled" (by someone other
    # than runyard), "node-lost" (NODE_FAIL, BOOT_FAIL, PREEMPTED: a new attempt if retries are left).
    cause: str = ""


@dataclass(frozen=True, slots=True)
class StopAsked:
    # Why, when not a user's stop: "stop-condition" (its metadata met the step's or its task's
    # stop-condition); kept through stopping to the stopped status.
    reason: str | None = None


@dataclass(frozen=True, slots=True)
class LimitReached:
    reason: str  # one of LIMIT_REASONS


@dataclass(frozen=True, slots=True)
class HostLost:
    """Its host stayed away past the grace period, is no longer configured, or its engine
    restarted and ended the container."""


@dataclass(frozen=True, slots=True)
class Vanished:
    """Its container (or process directory) is gone: removed behind runyard's back."""


@dataclass(frozen=True, slots=True)
class Failed:
    """Could not be run at all: image-missing, input-failed ..., runtime-error, internal-error."""

    reason: str


Event = Started | Exited | StopAsked | LimitReached | HostLost | Vanished | Failed


@dataclass(frozen=True, slots=True)
class Move:
    """What an event does: the new status (None: stays), its reason, and for a queued
    execution whether it leaves its host (unplace) or for a started one goes back to the queue."""

    status: str | None
    reason: str | None = None
    requeue: bool = False  # started -> queued, one retry fewer, on another host if need be
    unplace: bool = False  # placed but never started: free to be placed anew
    stop_container: bool = False  # ask the runtime to stop it (with the grace period)

    @property
    def ends(self) -> bool:
        return self.status in TERMINAL

    @property
    def hands_back(self) -> bool:
        """The runner stops owning it: it ended, or it is back in the scheduler's queue."""
        return self.ends or self.requeue or self.unplace


STAY: Final = Move(None)


def decide(status: str, reason: str | None, retries: int, event: Event) -> Move:
    """The move ``event`` makes for an execution in ``status`` (with ``reason`` and ``retries`` left).

    Returns STAY when the event changes nothing (it came too late: the execution already
    ended, or asks for what is already so).
    """
    if status in TERMINAL:
        return STAY
    match event:
        case Started():
            return Move("started") if status == "queued" else STAY
        case StopAsked(reason=why):
            if status in ("created", "queued"):
                return Move("stopped", "stopped-before-start")
            if status == "started":
                return Move("stopping", why, stop_container=True)
            return Move(None, stop_container=True)  # stopping: ask the engine again
        case LimitReached(reason=why):
            return Move(None, why, stop_container=True) if status == "started" else STAY
        case Exited(code=code, oom_killed=oom, engine_restarted=engine, cause=cause):
            if status == "stopping":
                return Move("stopped", reason)
            if status != "started":
                return STAY
            if reason in LIMIT_REASONS:
                return Move("error", reason)
            if cause == "node-lost":
                return _host_failed(retries)
            if cause == "time-limit":
                return Move("error", "time-limit")
            if cause == "cancelled":
                return Move("error", "cancelled-outside-runyard")
            if engine and code in SIGNAL_CODES:
                return _host_failed(retries)
            if code == PROCESS_LOST:
                return Move("error", "process-lost")
            if oom:
                return Move("error", "oom-killed")
            if code != 0:
                return Move("error", f"exit-code {code}")
            return Move("complete")
        case HostLost():
            if status == "stopping":
                return Move("stopped", reason)
            if status == "started":
                return _host_failed(retries)
            return Move(None, unplace=True)  # placed, never created there
        case Vanished():
            if status == "stopping":
                return Move("stopped", reason)
            return Move("error", "container-removed")
        case Failed(reason=why):
            if status == "stopping":
                return Move("stopped", reason)
            return Move("error", why)
    raise AssertionError(f"unknown event {event!r}")


def _host_failed(retries: int) -> Move:
    if retries > 0:
        return Move("queued", "host-lost, retrying", requeue=True)
    return Move("error", "host-lost")
