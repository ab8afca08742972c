"""An optional Prometheus text endpoint (`[metrics] listen`): what the lab's monitoring scrapes.

A scrape reads only what the daemon holds in memory (Core.active, Core.hosts and the counters
kept here from the event hub), never the store, so it costs the same whatever the history;
the one file work, the live logs' last lines for the ingestion lag, runs in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Final

from runyard.protocol.logformat import HEADER_WIDTH, TIMESTAMP_WIDTH

from .lifecycle import TERMINAL
from .logstream import split_timestamp
from .opsconfig import listen_address

if TYPE_CHECKING:
    from aiohttp import web

    from .core import Core

log = logging.getLogger("runyard.metrics")

CONTENT_TYPE: Final = "text/plain; version=0.0.4; charset=utf-8"
_LOOP_PROBE_SECONDS: Final = 1.0
_TAIL_BYTES: Final = 64 * 1024


def reason_label(reason: str | None) -> str:
    """A bounded label for a free-text reason: its first word ("host-lost gpu-01" -> "host-lost")."""
    if not reason:
        return "none"
    return reason.replace(":", " ").split()[0][:40] if reason.split() else "none"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


@dataclass
class _Family:
    name: str
    kind: str  # gauge or counter
    help: str
    samples: list[tuple[dict[str, str], float]] = field(default_factory=list)

    def add(self, value: float, **labels: str) -> None:
        self.samples.append((labels, value))

    def text(self) -> str:
        lines = [f"# HELP {self.name} {self.help}", f"# TYPE {self.name} {self.kind}"]
        suffix = "_total" if self.kind == "counter" else ""
        for labels, value in self.samples:
            shown = ",".join(f'{k}="{_escape(v)}"' for k, v in labels.items())
            lines.append(f"{self.name}{suffix}{'{' + shown + '}' if shown else ''} {float(value)!r}")
        return "\n".join(lines) + "\n"


class Metrics:
    """Counters fed from the event hub, and the exposition of Core's state on request."""

    def __init__(self, core: Core) -> None:
        self.core = core
        self.started_at = time.time()
        self.started: Counter[str] = Counter()  # by pool
        self.ended: Counter[tuple[str, str]] = Counter()  # by (status, reason)
        self.events_missed = 0
        self.loop_lag = 0.0
        self.loop_lag_max = 0.0
        self._tasks: set[asyncio.Task[None]] = set()
        self._runner: web.AppRunner | None = None
        self._lags: dict[int, tuple[int, float]] = {}  # execution -> (log size seen, lag then)

    async def start(self, listen: str) -> None:
        """Serve GET /metrics on ``listen``; OSError (address in use, say) is the caller's to report."""
        self._tasks.add(asyncio.create_task(self._count_events(), name="metrics-events"))
        self._tasks.add(asyncio.create_task(self._probe_loop(), name="metrics-loop-probe"))
        # Imported here, after the daemon serves its socket: aiohttp takes a good part of a second.
        from aiohttp import web

        app = web.Application()
        app.router.add_get("/metrics", self._serve)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        host, port = listen_address(listen)
        await web.TCPSite(self._runner, host, port).start()
        log.info("metrics at http://%s/metrics", listen)

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._runner is not None:
            await self._runner.cleanup()

    async def _count_events(self) -> None:
        hub = self.core.hub
        while True:
            sub = hub.subscribe()
            try:
                while not sub.overflowed or not sub.queue.empty():
                    event = await sub.queue.get()
                    if event.kind != "status":
                        continue
                    if event.status == "started":
                        row = self.core.active.get(event.execution_id)
                        self.started[self._pool(row.resources.get("pool"), row.host) if row else "unknown"] += 1
                    elif event.status in TERMINAL:
                        self.ended[(event.status, reason_label(event.reason))] += 1
                self.events_missed += 1  # overflowed (never expected: this loop only counts)
            finally:
                hub.unsubscribe(sub)

    async def _probe_loop(self) -> None:
        """How late the event loop wakes a timer: every request and host waits that long too."""
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(_LOOP_PROBE_SECONDS)
            self.loop_lag = max(0.0, loop.time() - before - _LOOP_PROBE_SECONDS)
            self.loop_lag_max = max(self.loop_lag_max, self.loop_lag)

    def _pool(self, asked: object, host: str | None) -> str:
        if host is not None and host in self.core.hosts:
            return self.core.hosts[host].settings.pool
        return str(asked) if asked else "any"

    async def _serve(self, _request: web.Request) -> web.Response:
        from aiohttp import web  # imported by start already

        text = await self.render()
        return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})

    async def render(self) -> str:
        core = self.core
        running = {r.id: core.log_path(r.id) for r in core.active.values() if r.status == "started"}
        lags = await asyncio.to_thread(self._ingestion_lags, running)
        families = [*self._daemon_families(), *self._queue_families(), *self._host_families(),
                    self._ingestion_family(lags)]
        return "".join(f.text() for f in families)

    def _daemon_families(self) -> Iterable[_Family]:
        up = _Family("runyard_up", "gauge", "1 while the daemon serves.")
        up.add(1)
        start = _Family("runyard_start_time_seconds", "gauge", "When the daemon started, in seconds since the epoch.")
        start.add(self.started_at)
        lag = _Family("runyard_event_loop_lag_seconds", "gauge",
                      "How late the daemon's event loop woke its last 1 s timer; every request waits that long too.")
        lag.add(self.loop_lag)
        lag_max = _Family("runyard_event_loop_lag_max_seconds", "gauge", "The largest event loop lag since start.")
        lag_max.add(self.loop_lag_max)
        subs = _Family("runyard_event_subscribers", "gauge", "Event streams open (clients following and internal).")
        subs.add(self.core.hub.subscribers)
        missed = _Family("runyard_metrics_event_overflows", "counter",
                         "Times the metrics counters fell behind the event hub and missed events.")
        missed.add(self.events_missed)
        started = _Family("runyard_executions_started", "counter", "Executions the engine started, by pool.")
        for pool, n in sorted(self.started.items()):
            started.add(n, pool=pool)
        ended = _Family("runyard_executions_ended", "counter",
                        "Executions that ended, by status (complete, error, stopped) and reason's first word.")
        for (status, reason), n in sorted(self.ended.items()):
            ended.add(n, status=status, reason=reason)
        return [up, start, lag, lag_max, subs, missed, started, ended]

    def _queue_families(self) -> Iterable[_Family]:
        depth: Counter[tuple[str, str]] = Counter()
        for row in self.core.active.values():
            depth[(self._pool(row.resources.get("pool"), row.host), row.status)] += 1
        family = _Family("runyard_executions", "gauge",
                         "Active executions by pool (the one asked for, or the host's once placed) and status.")
        for (pool, status), n in sorted(depth.items()):
            family.add(n, pool=pool, status=status)
        return [family]

    def _host_families(self) -> Iterable[_Family]:
        states = ("connecting", "ready", "draining", "unreachable", "disabled")
        state = _Family("runyard_host_state", "gauge", "1 for the state each host is in, 0 for the others.")
        gpus = _Family("runyard_host_gpus", "gauge", "GPUs of each host, free or held by an execution.")
        util = _Family("runyard_execution_gpu_utilization_ratio", "gauge",
                       "GPU utilisation (0-1) from the host's last nvidia-smi reading, per execution and GPU.")
        memory = _Family("runyard_execution_gpu_memory_used_bytes", "gauge",
                         "GPU memory in use from the host's last nvidia-smi reading, per execution and GPU.")
        scanned = _Family("runyard_host_inventory_age_seconds", "gauge", "Seconds since the host's inventory was read.")
        holders: dict[str, dict[str, tuple[int, str]]] = {}
        for row in self.core.active.values():
            if row.host is not None:
                for uuid in row.gpu_ids:
                    holders.setdefault(row.host, {})[uuid] = (row.id, row.owner)
        now = time.time()
        for host in self.core.hosts.values():
            pool = host.settings.pool
            for s in states:
                state.add(1 if host.state == s else 0, host=host.name, pool=pool, state=s)
            held = holders.get(host.name, {})
            all_gpus = host.gpus
            busy = sum(1 for g in all_gpus if g.uuid in held)
            gpus.add(len(all_gpus) - busy, host=host.name, pool=pool, state="free")
            gpus.add(busy, host=host.name, pool=pool, state="held")
            if host.scanned_at is not None:
                scanned.add(max(0.0, now - host.scanned_at), host=host.name)
            for gpu in all_gpus:
                holder = held.get(gpu.uuid)
                if holder is None:
                    continue
                labels = {"execution": str(holder[0]), "owner": holder[1], "host": host.name, "gpu": gpu.uuid}
                if gpu.utilization is not None:
                    util.add(gpu.utilization / 100, **labels)
                if gpu.memory_used_mb is not None:
                    memory.add(gpu.memory_used_mb * 1024 * 1024, **labels)
        return [state, gpus, util, memory, scanned]

    def _ingestion_family(self, lags: dict[int, float]) -> _Family:
        family = _Family("runyard_log_ingestion_lag_seconds", "gauge",
                         "For each running execution, how long after the engine stamped its last stored "
                         "line that line was stored.")
        for execution_id, lag in sorted(lags.items()):
            family.add(lag, execution=str(execution_id))
        return family

    def _ingestion_lags(self, paths: dict[int, Path]) -> dict[int, float]:
        """The stored-at time (the file's mtime) less the engine's time on the last record; only
        logs that grew since the last scrape are read again."""
        out: dict[int, float] = {}
        for execution_id, path in paths.items():
            with contextlib.suppress(OSError, ValueError):
                fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
                try:
                    st = os.fstat(fd)
                    seen = self._lags.get(execution_id)
                    if seen is not None and seen[0] == st.st_size:
                        out[execution_id] = seen[1]
                        continue
                    tail = os.pread(fd, min(_TAIL_BYTES, st.st_size), max(0, st.st_size - _TAIL_BYTES))
                finally:
                    os.close(fd)
                stamp = _last_stamp(tail)
                if stamp is None:
                    continue
                lag = max(0.0, st.st_mtime - stamp)
                self._lags[execution_id] = (st.st_size, lag)
                out[execution_id] = lag
        for gone in set(self._lags) - set(paths):
            del self._lags[gone]
        return out


def _last_stamp(tail: bytes) -> float | None:
    """The engine's time on the last engine (stdout or stderr) record, in seconds since the epoch."""
    for record in reversed(tail.rstrip(b"\n").split(b"\n")):
        if len(record) >= HEADER_WIDTH - 1 and record[:1] in (b"O", b"E") and record[1:2] == b" ":
            text = record[2:2 + TIMESTAMP_WIDTH].decode("ascii", "replace")
            try:
                whole, frac = split_timestamp(text)
            except ValueError:
                return None
            return whole.timestamp() + float("0." + frac)
    return None
