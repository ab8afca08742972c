"""Each execution's GPU use over time, sampled from the hosts' inventory reads.

Every inventory read of a host (each ssh.inventory_seconds, and `hosts --scan`) adds one
sample per execution holding GPUs there: each held GPU's utilisation and memory in use,
found by UUID. A series is bounded: past MAX_SAMPLES, every other older sample goes, so a
long run keeps its whole span at a coarser grain. It is written to <data_dir>/gpu-use/<id>.json
after each sample (one small file per GPU execution per read, in a worker thread), so it
survives a restart and stays readable after the execution ended.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Final

from runyard.protocol.methods import GpuUseSample

from .private import private_dir
from .tasks import watched

if TYPE_CHECKING:
    from .hosts import Host
    from .record import ExecutionRow

log = logging.getLogger("runyard.gpuuse")

MAX_SAMPLES: Final = 240


def thin(samples: list[GpuUseSample]) -> list[GpuUseSample]:
    """At most MAX_SAMPLES: the older half loses every other sample, the newest are kept whole."""
    if len(samples) <= MAX_SAMPLES:
        return samples
    half = len(samples) // 2
    return samples[:half:2] + samples[half:]


class GpuUse:
    def __init__(self, directory: Path, placed: Mapping[int, ExecutionRow]) -> None:
        self.directory = directory
        self.placed = placed  # Core's placed executions, read only
        self.series: dict[int, list[GpuUseSample]] = {}
        self._writing: set[asyncio.Task[None]] = set()

    def sample(self, host: Host) -> None:
        """After ``host``'s inventory was read: a sample for each execution holding its GPUs."""
        try:
            self._sample(host)
        except Exception:  # a bookkeeping fault must never fail the host's inventory read
            log.exception("host %s: sampling GPU use failed", host.name)

    def _sample(self, host: Host) -> None:
        inventory = host.inventory
        if inventory is None or host.settings.gpus is not None:
            return  # declared GPUs (gpus = N) have no readings
        by_uuid = {g.uuid: g for g in inventory.gpus}
        at = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        dirty: dict[int, list[GpuUseSample]] = {}
        for row in self.placed.values():
            if row.host != host.name or not row.gpu_ids or row.status != "started":
                continue
            gpus = [by_uuid.get(u) for u in row.gpu_ids]
            if all(g is None for g in gpus):
                continue
            point = GpuUseSample(at=at, utilization=[g.utilization if g else None for g in gpus],
                                 memory_used_mb=[g.memory_used_mb if g else None for g in gpus])
            series = self.series.get(row.id)
            if series is None:
                # Once per execution per daemon run, and small (bounded): the series from before a restart.
                series = self._read(row.id)
            series.append(point)
            self.series[row.id] = thin(series)
            dirty[row.id] = list(self.series[row.id])
        for gone in [i for i in self.series if i not in self.placed]:
            del self.series[gone]  # ended: its file has the series
        if dirty:
            watched(asyncio.to_thread(self._write, dirty), "recording GPU use", self._writing)

    async def of(self, row: ExecutionRow) -> list[GpuUseSample]:
        if row.id in self.series:
            return list(self.series[row.id])
        if not row.gpu_ids:
            return []
        return await asyncio.to_thread(self._read, row.id)

    def remove(self, execution_id: int) -> None:
        """Called from a worker thread (retention, delete)."""
        (self.directory / f"{int(execution_id)}.json").unlink(missing_ok=True)

    def _read(self, execution_id: int) -> list[GpuUseSample]:
        path = self.directory / f"{int(execution_id)}.json"
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return []
        try:
            with os.fdopen(fd, "rb") as fh:
                raw = json.loads(fh.read(4 << 20))
            return [GpuUseSample(at=str(s["at"]), utilization=list(s["utilization"]),
                                 memory_used_mb=list(s["memory_used_mb"])) for s in raw]
        except (OSError, ValueError, KeyError, TypeError):
            log.warning("execution %s: its GPU use record is unreadable; starting afresh", execution_id)
            return []

    def _write(self, dirty: dict[int, list[GpuUseSample]]) -> None:
        private_dir(self.directory, "GPU use records")
        for execution_id, series in dirty.items():
            data = json.dumps([{"at": s.at, "utilization": s.utilization, "memory_used_mb": s.memory_used_mb}
                               for s in series]).encode()
            fd, tmp = tempfile.mkstemp(dir=self.directory, prefix=".gpu-")
            try:
                with os.fdopen(fd, "wb") as fh:
                    fh.write(data)
                os.replace(tmp, self.directory / f"{int(execution_id)}.json")
            except OSError as exc:
                os.unlink(tmp)
                log.warning("execution %s: cannot record its GPU use: %s", execution_id, exc)
