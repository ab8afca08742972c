"""Plain-text rendering for the CLI: tables, durations, sizes, log lines."""

from __future__ import annotations

import os
import sys
import unicodedata
from datetime import UTC, datetime
from typing import TextIO

from runyard.protocol.logformat import LogLine
from runyard.protocol.methods import ExecutionView, HostView

_COLOURS = {"complete": "32", "error": "31", "stopped": "33", "stopping": "33", "started": "36",
            "queued": "37", "created": "37"}


def use_colour(stream: TextIO = sys.stdout) -> bool:
    return stream.isatty() and "NO_COLOR" not in os.environ


def paint(text: str, code: str, colour: bool) -> str:
    return f"\x1b[{code}m{text}\x1b[0m" if colour else text


_HOST_COLOURS = {"ready": "32", "draining": "33", "connecting": "36", "unreachable": "31", "disabled": "37"}


def hosts_text(hosts: list[HostView], colour: bool) -> str:
    """One block per host: its line, then one line per GPU."""
    blocks = []
    for h in hosts:
        cpus = "?" if h.cpus is None else f"{h.cpus_used:g}/{h.cpus}"
        memory = "?" if h.memory_mb is None else f"{h.memory_used_mb}/{h.memory_mb} MB"
        running = ", ".join(str(i) for i in h.executions) or "-"
        sizes = "" if h.cluster is not None else f"CPUs {cpus}  memory {memory}  "  # a cluster: Slurm's, below
        head = (f"{h.name}  {paint(h.state, _HOST_COLOURS.get(h.state, '37'), colour)}  pool {h.pool}  "
                f"{h.runtime}  {h.address}  {sizes}executions {running}")
        lines = [head]
        if h.error and h.state in ("unreachable", "connecting"):
            retry = ""
            if h.retry_in_seconds is not None:
                retry = f" (failed {h.failed_attempts} time(s) in a row; next try in {h.retry_in_seconds:.0f} s)"
            lines.append(f"    {h.error}{retry}")
        for problem in h.problems:
            lines.append(f"    warning: {problem}")
        if h.cluster is not None:
            c = h.cluster
            nodes = ", ".join(f"{n} {state}" for state, n in sorted(c.nodes.items())) or "?"
            lines.append(f"    partition {c.partition}  nodes {nodes}  GPUs {c.gpus_allocated}/{c.gpus_total} "
                         f"allocated  jobs {c.jobs_running} running, {c.jobs_pending} pending")
            blocks.append("\n".join(lines))
            continue
        for g in h.gpus:
            used = "?" if g.memory_used_mb is None else str(g.memory_used_mb)
            total = "?" if g.memory_total_mb is None else str(g.memory_total_mb)
            util = "?" if g.utilization is None else f"{g.utilization}%"
            holder = f"execution {g.execution}" if g.execution is not None else "free"
            lines.append(f"    GPU {g.index}  {g.uuid}  {g.name}  {used}/{total} MiB  {util:>4}  {holder}")
        if not h.gpus:
            lines.append("    no GPUs")
        blocks.append("\n".join(lines))
    return "\n".join(blocks) if blocks else "no hosts"


def status_text(status: str, reason: str | None, colour: bool) -> str:
    text = f"{status} ({reason})" if reason else status
    code = _COLOURS.get(status)
    return f"\x1b[{code}m{text}\x1b[0m" if colour and code else text


def parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    return datetime.fromisoformat(value.replace("Z", "+00:00"))


def duration(start: str | None, end: str | None) -> str:
    begin = parse_time(start)
    if begin is None:
        return "-"
    finish = parse_time(end) or datetime.now(UTC)
    seconds = int((finish - begin).total_seconds())
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def shown(text: str) -> str:
    """``text`` with its control characters escaped visibly (``\\x1b``, ``\\n``).

    Titles, tags, step, parameter and output names come from users and their scripts: printed
    raw, an escape sequence in one would clear or rewrite the screen of whoever lists it.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


def width(text: str) -> int:
    """Terminal cells ``text`` takes: wide characters (CJK, most emoji) two, combining marks none."""
    if text.isascii():
        return len(text)
    cells = 0
    for ch in text:
        if unicodedata.combining(ch) or ch in "\u200b\u200d\ufe0f":
            continue
        cells += 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1
    return cells


def table(headers: list[str], rows: list[list[str]], widths_from_plain: list[list[str]] | None = None) -> str:
    """Left-aligned columns; ``widths_from_plain`` gives the uncoloured text for width math.

    Every cell is shown escaped, except one whose coloured form differs from its plain one (our
    own colour codes around text we chose, such as a status).
    """
    if widths_from_plain is None:
        rows = widths_from_plain = [[shown(cell) for cell in row] for row in rows]
    else:
        rows = [[shown(cell) if cell == plain else cell for cell, plain in zip(row, plain_row, strict=True)]
                for row, plain_row in zip(rows, widths_from_plain, strict=True)]
        widths_from_plain = [[shown(cell) for cell in row] for row in widths_from_plain]
    plain = widths_from_plain
    headers = [shown(h) for h in headers]
    widths = [len(h) for h in headers]
    for row in plain:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], width(cell))
    lines = ["  ".join(h.ljust(widths[i]) for i, h in enumerate(headers)).rstrip()]
    for row, plain_row in zip(rows, plain, strict=True):
        cells = [cell + " " * (widths[i] - width(plain_row[i])) for i, cell in enumerate(row)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def executions_table(executions: list[ExecutionView], colour: bool) -> str:
    tagged = any(e.tags for e in executions)  # the column only when there is something to show
    headers = ["ID", "STATUS", "STEP", "TITLE", "OWNER", "HOST", "DURATION", *(["TAGS"] if tagged else [])]
    rows, plain = [], []
    for e in executions:
        base = [str(e.id), "", e.step, e.title or "", e.owner, e.host or "-",
                duration(e.started_at, e.ended_at), *([",".join(e.tags)] if tagged else [])]
        plain.append([base[0], status_text(e.status, e.reason, False), *base[2:]])
        rows.append([base[0], status_text(e.status, e.reason, colour), *base[2:]])
    return table(headers, rows, plain)


def container_text(container_id: str | None, cluster_job: str | None) -> str:
    """`info`'s container: a Docker id cut short; a Slurm attempt as its job and its whole directory,
    a plain process as its whole directory (cut, "slurm:/srv/a" or "/tmp/acc1-ro" named nothing)."""
    if not container_id:
        return "-"
    if container_id.startswith("slurm:"):
        return f"Slurm job {cluster_job or '(not known yet)'} in {container_id[len('slurm:'):]}"
    if "/" in container_id:  # the process runtime's attempt directory: whole, or it names nothing
        return f"process in {container_id}"
    return container_id[:12]


def seconds_text(value: object) -> str:
    """A limit in seconds as `1h30m`, `90s`; `-` for none."""
    if not isinstance(value, int | float) or isinstance(value, bool) or value <= 0:
        return "-"
    seconds, parts = int(value), []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            parts.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(parts) or f"{value:g}s"


def log_line(line: LogLine, timestamps: bool) -> str:
    prefix = f"{line.time} " if timestamps and line.time else ""
    marker = "runyard: " if line.stream == "system" else ""
    return f"{prefix}{marker}{line.text}"
