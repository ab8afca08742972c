"""Sizes as every client shows them (the CLI and the TUI alike)."""

from __future__ import annotations


def human_size(size: int) -> str:
    """1536 -> '1.5 KiB'; bytes below 1 KiB stay whole."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"
