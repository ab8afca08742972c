"""How the TUI words and colours things: ages, durations, statuses, bars, filters, sorting.

Pure functions over protocol views, so they are tested without a terminal.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final

from runyard.protocol.methods import ALL_STATUSES, TERMINAL_STATUSES, ExecutionView

ACTIVE: Final = frozenset(ALL_STATUSES) - TERMINAL_STATUSES

STATUS_STYLES: Final = {
    "created": "dim",
    "queued": "yellow",
    "started": "bold green",
    "stopping": "magenta",
    "complete": "green",
    "error": "bold red",
    "stopped": "bright_black",
}

HOST_STATE_STYLES: Final = {
    "ready": "green",
    "connecting": "yellow",
    "unreachable": "bold red",
    "draining": "magenta",
    "disabled": "bright_black",
}


def parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None


def span(seconds: float) -> str:
    """A compact length of time: 42s, 3m05s, 2h07m, 3d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def age(view: ExecutionView, now: datetime) -> str:
    created = parse_time(view.created_at)
    return span((now - created).total_seconds()) if created else "?"


def duration(view: ExecutionView, now: datetime) -> str:
    started = parse_time(view.started_at)
    if started is None:
        return ""
    ended = parse_time(view.ended_at) or now
    return span((ended - started).total_seconds())


def duration_seconds(view: ExecutionView, now: datetime) -> float:
    started = parse_time(view.started_at)
    if started is None:
        return -1.0
    return ((parse_time(view.ended_at) or now) - started).total_seconds()


def status_text(view: ExecutionView) -> str:
    return f"{view.status} ({view.reason})" if view.reason else view.status


def value_text(value: object) -> str:
    """A metadata value in a cell: numbers short, everything else as text."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.4g}"
    return str(value)


def memory_text(mb: float) -> str:
    return f"{mb / 1024:g} GiB" if mb >= 1024 else f"{mb:g} MiB"


def resources_text(resources: dict[str, object]) -> str:
    """What an execution asked of its host, in words: "1 GPU · 4 CPUs (at most 8) · 16 GiB · pool h100"."""
    def number(key: str) -> float:
        value = resources.get(key)
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0

    gpus, cpus, memory = number("gpus"), number("cpus"), number("memory_mb")
    parts = [f"{gpus:g} GPU{'s' * (gpus != 1)}" if gpus else "no GPUs"]
    cpu = f"{cpus:g} CPU{'s' * (cpus != 1)}" if cpus else "any CPUs"
    if number("cpu_max"):
        cpu += f" (at most {number('cpu_max'):g})"
    parts.append(cpu)
    mem = f"{memory_text(memory)} memory" if memory else "any memory"
    if number("memory_max_mb"):
        mem += f" (at most {memory_text(number('memory_max_mb'))})"
    parts.append(mem)
    if resources.get("environment"):
        parts.append(f"pool {resources['environment']}")
    for key, words in (("time_limit_seconds", "time limit"), ("no_output_timeout_seconds", "no-output timeout")):
        if number(key):
            parts.append(f"{words} {span(number(key))}")
    known = {"gpus", "cpus", "memory_mb", "cpu_max", "memory_max_mb", "environment", "time_limit_seconds",
             "no_output_timeout_seconds"}
    parts += [f"{key} {value}" for key, value in resources.items() if key not in known]
    return " · ".join(parts)


def bar(fraction: float | None, width: int = 10) -> str:
    """A text bar for utilisation; unknown shows as dots."""
    if fraction is None:
        return "·" * width
    fraction = min(1.0, max(0.0, fraction))
    filled = round(fraction * width)
    return "█" * filled + "░" * (width - filled)


def now_utc() -> datetime:
    return datetime.now(UTC)


# -- filtering ------------------------------------------------------------------

_FIELDS: Final = ("status", "step", "owner", "host", "id", "title", "tag", "task")


@dataclass
class Filter:
    """``/`` text: words match anywhere; ``status:``, ``step:``, ``owner:``, ``host:``, ``tag:``, ``task:`` match
    one field (``task:N``: the children of task N, one row each).

    Several words must all match; a field given twice matches either value.
    """

    words: list[str] = field(default_factory=list)
    fields: dict[str, set[str]] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Filter:
        parsed = cls()
        for token in text.split():
            name, sep, value = token.partition(":")
            if sep and name.lower() in _FIELDS and value:
                parsed.fields.setdefault(name.lower(), set()).add(value.lower())
            else:
                parsed.words.append(token.lower())
        return parsed

    def __bool__(self) -> bool:
        return bool(self.words or self.fields)

    def matches(self, view: ExecutionView) -> bool:
        values = {
            "status": view.status, "step": view.step, "owner": view.owner, "host": view.host or "",
            "id": str(view.id), "title": view.title or "", "task": str(view.task or ""),
        }
        tags = {t.lower() for t in view.tags}
        for name, wanted in self.fields.items():
            if name == "tag":
                if not tags & wanted:
                    return False
                continue
            have = values[name].lower()
            if not any(have == w or (name in ("step", "host", "title") and w in have) for w in wanted):
                return False
        if self.words:
            haystack = " ".join([*values.values(), view.reason or "", *view.tags,
                                 *map(str, view.parameters.values())]).lower()
            return all(word in haystack for word in self.words)
        return True


# -- sorting --------------------------------------------------------------------

BASE_COLUMNS: Final = ("id", "title", "step", "status", "host", "gpus", "owner", "age", "duration")


def sort_key(column: str, now: datetime) -> Callable[[ExecutionView], Any]:
    """A key that sorts any column, metadata included; missing values sort last either way."""
    if column == "id":
        return lambda v: (0, v.id)
    if column == "age":
        return lambda v: (0, -v.id)  # ids grow with submit time
    if column == "duration":
        return lambda v: (0, duration_seconds(v, now))
    if column == "gpus":
        return lambda v: (0, len(v.gpus))
    if column in ("title", "step", "status", "host", "owner"):
        return lambda v: (0 if getattr(v, column) else 1, str(getattr(v, column) or "").lower())

    def by_metadata(v: ExecutionView) -> Any:
        value = v.metadata.get(column)
        if isinstance(value, bool) or not isinstance(value, int | float) or math.isnan(value):
            return (1, str(value) if value is not None else "")
        return (0, value)

    return by_metadata


def default_order(views: list[ExecutionView]) -> list[ExecutionView]:
    """Running and queued first (oldest submitted first), then the rest newest first."""
    active = sorted((v for v in views if v.status in ACTIVE), key=lambda v: (-v.priority, v.id))
    ended = sorted((v for v in views if v.status not in ACTIVE), key=lambda v: -v.id)
    return active + ended
