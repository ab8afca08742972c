"""What a host has: GPUs from nvidia-smi, CPUs and memory from the kernel. Parsing only, no I/O.

One shell command gathers everything in a single round trip; its output is
split into sections so that a missing or failing nvidia-smi is told apart from
a host with no GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

GPU_QUERY: Final = (
    "nvidia-smi --query-gpu=index,uuid,name,memory.total,memory.used,utilization.gpu "
    "--format=csv,noheader,nounits"
)

# POSIX sh only: pool machines may have nothing else.
INVENTORY_COMMAND: Final = (
    "echo '@cpus'; nproc 2>/dev/null || getconf _NPROCESSORS_ONLN; "
    "echo '@memory'; grep -E '^(MemTotal|MemAvailable):' /proc/meminfo; "
    "echo '@gpus'; if command -v nvidia-smi >/dev/null 2>&1; then "
    f"{GPU_QUERY} 2>&1 || echo \"@nvidia-smi-failed $?\"; "
    "else echo '@no-nvidia-smi'; fi"
)


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    uuid: str
    name: str
    memory_total_mb: int | None
    memory_used_mb: int | None
    utilization: int | None  # percent


@dataclass(frozen=True, slots=True)
class Inventory:
    cpus: int
    memory_mb: int
    memory_available_mb: int | None
    gpus: tuple[Gpu, ...] = ()
    problems: tuple[str, ...] = field(default=())  # what a user should know, e.g. nvidia-smi failing


class InventoryError(Exception):
    pass


def _number(field_: str) -> int | None:
    """nvidia-smi prints [N/A], [Not Supported] and the like where it has no value."""
    text = field_.strip()
    if not text or text.startswith("["):
        return None
    try:
        return int(float(text))
    except ValueError:
        return None


def parse_gpus(text: str) -> tuple[list[Gpu], list[str]]:
    """Rows of the GPU_QUERY CSV; lines that are not rows become problems, not crashes."""
    gpus: list[Gpu] = []
    problems: list[str] = []
    for line in text.splitlines():
        if not line.strip():
            continue
        parts = [p.strip() for p in line.split(",")]
        index = _number(parts[0]) if parts else None
        if len(parts) != 6 or index is None or not parts[1].startswith("GPU-"):
            problems.append(f"nvidia-smi: {line.strip()[:200]}")
            continue
        gpus.append(Gpu(index=index, uuid=parts[1], name=parts[2], memory_total_mb=_number(parts[3]),
                        memory_used_mb=_number(parts[4]), utilization=_number(parts[5])))
    gpus.sort(key=lambda g: g.index)
    return gpus, problems


def parse_inventory(output: str) -> Inventory:
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    flags: list[str] = []
    for line in output.splitlines():
        if line.startswith("@") and line[1:] in ("cpus", "memory", "gpus"):
            current = sections.setdefault(line[1:], [])
        elif line.startswith("@"):
            flags.append(line[1:])
        elif current is not None:
            current.append(line)
    try:
        cpus = int(sections["cpus"][0].strip())
    except (KeyError, IndexError, ValueError):
        raise InventoryError(f"cannot count CPUs from {output[:200]!r}") from None
    memory: dict[str, int] = {}
    for line in sections.get("memory", []):
        key, _, rest = line.partition(":")
        value = _number(rest.split()[0]) if rest.split() else None
        if value is not None:
            memory[key] = value // 1024  # /proc/meminfo counts kB
    if "MemTotal" not in memory:
        raise InventoryError("cannot read MemTotal from /proc/meminfo")
    problems: list[str] = []
    gpus: list[Gpu] = []
    if "no-nvidia-smi" not in flags:
        gpus, problems = parse_gpus("\n".join(sections.get("gpus", [])))
        for flag in flags:
            if flag.startswith("nvidia-smi-failed"):
                problems.append(f"nvidia-smi exited with status {flag.split()[-1]}")
                gpus = []  # a failing nvidia-smi is not an inventory to grant from
    return Inventory(cpus=cpus, memory_mb=memory["MemTotal"], memory_available_mb=memory.get("MemAvailable"),
                     gpus=tuple(gpus), problems=tuple(problems))


def declared_gpus(count: int) -> tuple[Gpu, ...]:
    """GPUs declared by hand (``gpus = N``): granted by index, which Docker and CUDA accept too."""
    return tuple(Gpu(index=i, uuid=str(i), name="declared", memory_total_mb=None,
                     memory_used_mb=None, utilization=None) for i in range(count))
