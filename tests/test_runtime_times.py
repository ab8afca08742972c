"""When an execution really started and ended, as its runtime saw it (not when the daemon noticed)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import uuid
from datetime import UTC, datetime
from pathlib import Path

import pytest

from runyard.daemon.runtime import ContainerSpec
from runyard.daemon.runtime_docker import DockerRuntime
from runyard.daemon.runtime_process import ProcessRuntime
from runyard.daemon.transport import LocalTransport

from .conftest import BASE_IMAGE

pytestmark = pytest.mark.slow


def _parse(store_time: str) -> datetime:
    return datetime.strptime(store_time, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)


def _as_store_time(docker_time: str) -> str:
    """docker inspect's nanoseconds, cut to the store's microseconds."""
    whole, _, frac = docker_time.rstrip("Z").partition(".")
    return f"{whole}.{(frac + '000000')[:6]}Z"


async def test_a_containers_state_carries_the_engines_start_and_end_times(tmp_path: Path) -> None:
    for sub in ("repository", "inputs", "outputs", "config"):
        (tmp_path / sub).mkdir()
    runtime = DockerRuntime("/var/run/docker.sock", f"t{uuid.uuid4().hex[:8]}", pull="never")
    spec = ContainerSpec(execution_id=1, image=BASE_IMAGE, command="sleep 0.5", environment={},
                         workdir=str(tmp_path), host="local")
    container = await runtime.create(spec)
    try:
        created = await runtime.state(container)
        assert (created.started_at, created.finished_at) == (None, None)  # Docker says year 1: never
        await runtime.start(container)
        running = await runtime.state(container)
        assert running.started_at is not None and running.finished_at is None
        await runtime.wait(container)
        # Asked well after the end: the times are still when it ran, not when we asked.
        await asyncio.sleep(1.0)
        ended = await runtime.state(container)
        inspect = json.loads(subprocess.run(["docker", "inspect", container], capture_output=True, text=True,
                                            check=True).stdout)[0]["State"]
        assert ended.started_at == _as_store_time(inspect["StartedAt"]) == running.started_at
        assert ended.finished_at == _as_store_time(inspect["FinishedAt"])
        assert ended.finished_at is not None
        ran = (_parse(ended.finished_at) - _parse(ended.started_at)).total_seconds()
        assert 0.5 <= ran < 1.0
    finally:
        await runtime.remove(container)
        await runtime.close()


async def test_the_process_runtime_reports_the_wrappers_start_and_end_times(tmp_path: Path) -> None:
    runtime = ProcessRuntime(LocalTransport(), str(tmp_path), host="local")
    spec = ContainerSpec(execution_id=7, image="none", command="sleep 0.5", environment={},
                         workdir=str(tmp_path / "7"), host="local")
    (tmp_path / "7" / "repository").mkdir(parents=True)
    handle = await runtime.create(spec)
    before = datetime.now(UTC)
    await runtime.start(handle)
    await runtime.wait(handle)
    await asyncio.sleep(1.0)
    after = datetime.now(UTC)
    state = await runtime.state(handle)
    assert state.status == "exited" and state.exit_code == 0
    assert state.started_at is not None and state.finished_at is not None
    started, finished = _parse(state.started_at), _parse(state.finished_at)
    assert before <= started < finished
    assert 0.5 <= (finished - started).total_seconds() < 1.0
    assert (after - finished).total_seconds() >= 1.0  # the wrapper's time, not when the daemon looked
    control = Path(handle) / ".runyard"
    wrote = float((control / "finished_at").read_text())
    assert abs(finished.timestamp() - wrote) < 1e-5
    found = await runtime.find(7)
    assert found is not None and (found.started_at, found.finished_at) == (state.started_at, state.finished_at)
    listed = await runtime.list_ours()
    assert [(s.started_at, s.finished_at) for s in listed] == [(state.started_at, state.finished_at)]
