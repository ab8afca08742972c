"""How an execution's GPU use reads in a client: per GPU, now, mean and a sparkline. Pure text."""

from __future__ import annotations

from typing import Final

from .methods import GpuUseSample

_BARS: Final = " ▁▂▃▄▅▆▇█"
_WIDTH: Final = 40


def sparkline(values: list[int | None], width: int = _WIDTH) -> str:
    """Utilisation percentages as bars, the last ``width`` readings; "?" where there was none."""
    return "".join("?" if v is None else _BARS[min(8, max(0, round(v * 8 / 100)))] for v in values[-width:])


def gpu_use_lines(gpus: list[str], samples: list[GpuUseSample]) -> list[str]:
    """One line per GPU: utilisation now and on average, memory in use now, and the recent trend."""
    if not samples:
        return []
    lines = [f"{len(samples)} readings from {samples[0].at} to {samples[-1].at}"]
    for i, uuid in enumerate(gpus):
        util = [s.utilization[i] if i < len(s.utilization) else None for s in samples]
        memory = [s.memory_used_mb[i] if i < len(s.memory_used_mb) else None for s in samples]
        known = [u for u in util if u is not None]
        mean = f"{sum(known) / len(known):.0f}%" if known else "?"
        now = f"{util[-1]}%" if util[-1] is not None else "?"
        mem = f"{memory[-1]} MiB" if memory[-1] is not None else "?"
        lines.append(f"{uuid}: now {now:>4}, mean {mean:>4}, memory {mem}  {sparkline(util)}")
    return lines
