"""Loaded by the daemon that bench_small.py starts (this directory on its PYTHONPATH), never by
runyard itself: times each phase of every execution's fixed cost, as the runner awaits it, and
appends one JSON line per phase to the file named by RUNYARD_BENCH_PHASES."""

from __future__ import annotations

import functools
import json
import os
import time
from typing import Any

_OUT = os.environ.get("RUNYARD_BENCH_PHASES")


def _install() -> None:
    from runyard.daemon import runner, runtime_docker, workspace

    out = open(_OUT, "a", buffering=1)  # noqa: SIM115 (open for the daemon's whole life)

    def timed(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        async def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return await original(*args, **kwargs)
            finally:
                out.write(json.dumps([label, time.perf_counter() - t0]) + "\n")

        setattr(owner, name, wrapper)

    def timed_sync(owner: Any, name: str, label: str) -> None:
        original = getattr(owner, name)

        @functools.wraps(original)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                out.write(json.dumps([label, time.perf_counter() - t0]) + "\n")

        setattr(owner, name, wrapper)

    R, D = runner.Runner, runtime_docker.DockerRuntime
    timed(R, "run", "runner: whole life (placed -> handed back)")
    timed(R, "_create", "workspace + create")
    timed_sync(workspace, "prepare", "  workspace: snapshot extracted, config written (thread)")
    timed(D, "create", "  engine: create")
    timed(D, "start", "engine: start")
    timed(D, "state", "engine: inspect (state)")
    timed(R, "_catch_up_metadata", "metadata catch-up")
    timed(R, "_ingest_logs", "log follow / read")
    timed(D, "wait", "engine: wait")
    timed(R, "_holds_last_line", "final log check (tail read)")
    timed(R, "_collect_outputs", "outputs collected")
    timed(R, "_clean_up", "clean-up (remove container + workspace)")
    timed(D, "remove", "  engine: remove")
    timed(R, "_remove_workspace", "  workspace removed")
    timed(R, "_send", "state change recorded (store + publish)")


if _OUT:
    _install()
