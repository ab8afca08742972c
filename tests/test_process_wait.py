"""The process runtime's wait: one watcher per host tells each execution's end, however it ended."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path

from runyard.daemon.runtime import ContainerSpec
from runyard.daemon.runtime_process import ProcessRuntime
from runyard.daemon.transport import LocalTransport


async def _started(runtime: ProcessRuntime, root: Path, execution_id: int, command: str) -> str:
    (root / str(execution_id) / "repository").mkdir(parents=True)
    spec = ContainerSpec(execution_id=execution_id, image="none", command=command, environment={},
                         workdir=str(root / str(execution_id)), host="local")
    handle = await runtime.create(spec)
    await runtime.start(handle)
    return handle


async def test_each_wait_ends_with_its_own_execution_whether_it_exited_or_was_killed(tmp_path: Path) -> None:
    runtime = ProcessRuntime(LocalTransport(), str(tmp_path), host="local")
    long = await _started(runtime, tmp_path, 1, "sleep 100")
    short = await _started(runtime, tmp_path, 2, "sleep 0.3; exit 3")
    killed = await _started(runtime, tmp_path, 3, "sleep 100")
    reused = await _started(runtime, tmp_path, 4, "sleep 100")
    stranger = subprocess.Popen(["sleep", "100"], cwd=tmp_path)
    try:
        waits = {h: asyncio.create_task(runtime.wait(h)) for h in (long, short, killed, reused)}
        await asyncio.wait_for(waits[short], 10)
        assert ((await runtime.state(short)).status, (await runtime.state(short)).exit_code) == ("exited", 3)
        # Wrappers killed without recording an exit code (a host's OOM killer, say): their executions
        # ended. One's pid is then taken by an unrelated process, which must not pass for it.
        for handle in (killed, reused):
            os.killpg(int((Path(handle) / ".runyard" / "wrapper.pid").read_text()), signal.SIGKILL)
            os.killpg(int((Path(handle) / ".runyard" / "child.pid").read_text()), signal.SIGKILL)
        (Path(reused) / ".runyard" / "wrapper.pid").write_text(f"{stranger.pid}\n")
        for handle in (killed, reused):
            await asyncio.wait_for(waits[handle], 10)
            state = await runtime.state(handle)
            assert (state.status, state.exit_code) == ("exited", -1)
        assert not waits[long].done() and (await runtime.state(long)).status == "running"
    finally:
        stranger.kill()
        stranger.wait()
        os.killpg(int((Path(long) / ".runyard" / "child.pid").read_text()), signal.SIGKILL)
        await asyncio.wait_for(waits[long], 10)
        await runtime.close()


def live_with_marker(marker: str) -> list[int]:
    """The live processes whose command line holds ``marker`` (none of them zombies)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if marker.encode() not in (entry / "cmdline").read_bytes():
                continue
            if (entry / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z":
                found.append(int(entry.name))
        except (OSError, IndexError):
            continue  # ended meanwhile
    return found


async def until(check: Callable[[], object], what: str, timeout: float = 10) -> None:
    """Until ``check()`` holds: a process's start or end on the host is no event the test can await."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.02)


async def test_removing_an_ended_execution_kills_what_it_left_running_as_a_container_end_would(
        tmp_path: Path) -> None:
    """Whatever an execution started still runs after its end has been seen: a background job of a
    command that exited, the child of a command killed with -9, the command of a wrapper killed with
    -9, and all of a work directory removed behind runyard's back. remove() kills it, and nothing else."""
    marker = f"{os.getpid()}{id(tmp_path) % 1000}"
    runtime = ProcessRuntime(LocalTransport(), str(tmp_path), host="local")
    background = await _started(runtime, tmp_path, 1, f"sleep 1000.{marker}1 & echo started")
    orphaned = await _started(runtime, tmp_path, 2, f"sleep 1000.{marker}2 & wait")
    lost = await _started(runtime, tmp_path, 3, f"sleep 1000.{marker}3; echo never")
    wiped = await _started(runtime, tmp_path, 4, f"sleep 1000.{marker}4")
    stranger = subprocess.Popen(["sleep", f"1000.{marker}9"], cwd=tmp_path)  # works beside them, not in them
    handles = (background, orphaned, lost, wiped)
    try:
        for i in range(1, len(handles) + 1):
            await until(lambda: live_with_marker(f"1000.{marker}{i}"), f"sleep {i} to start")  # noqa: B023
        waits = [asyncio.create_task(runtime.wait(h)) for h in (background, orphaned, lost)]  # one watcher
        await asyncio.wait_for(asyncio.shield(waits[0]), 10)
        assert (await runtime.state(background)).exit_code == 0
        os.kill(int((Path(orphaned) / ".runyard" / "child.pid").read_text()), signal.SIGKILL)
        os.kill(int((Path(lost) / ".runyard" / "wrapper.pid").read_text()), signal.SIGKILL)
        os.kill(int((Path(wiped) / ".runyard" / "wrapper.pid").read_text()), signal.SIGKILL)
        subprocess.run(["rm", "-rf", wiped], check=True)
        await asyncio.wait_for(asyncio.gather(*waits), 10)
        assert (await runtime.state(orphaned)).exit_code == 128 + signal.SIGKILL
        assert (await runtime.state(lost)).exit_code == -1
        assert [bool(live_with_marker(f"1000.{marker}{i}")) for i in range(1, 5)] == [True] * 4  # all left running
        await asyncio.gather(*(runtime.remove(h) for h in handles))
        assert [live_with_marker(f"1000.{marker}{i}") for i in range(1, 5)] == [[]] * 4
        assert live_with_marker(f"1000.{marker}9") == [stranger.pid]
        assert not any(Path(h).exists() for h in handles)
    finally:
        stranger.kill()
        stranger.wait()
        for pid in live_with_marker(f"1000.{marker}"):
            os.kill(pid, signal.SIGKILL)
        await runtime.close()
