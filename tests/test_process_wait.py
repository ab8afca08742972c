"""The process runtime's wait: one watcher per host tells each execution's end, however it ended."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
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
