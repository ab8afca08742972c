"""A line longer than Docker's 16 KiB fragments, still being written when the log stream restarts.

A progress bar redrawn with \\r and no newline is one ever-growing line to Docker, sent in 16 KiB
fragments that all carry the first fragment's time. Killing the daemon, or taking the host away,
while it is pending must lose and double nothing: every tick on stdout once, in order, and the bar
stored once, complete, as a terminal would show it last.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from runyard.protocol import Client
from runyard.protocol.logformat import parse_records

from .conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status
from .pool import start_hosts, wait_for_host

pytestmark = pytest.mark.slow

BAR = 17_000  # each redraw alone is longer than a Docker fragment

PROGRESS = f"""\
import os, sys, time
k = 0
while True:
    k += 1
    sys.stderr.write(f"\\rprogress {{k:06d}} " + "#" * {BAR})
    sys.stderr.flush()
    if k % 10 == 0:
        print(f"tick {{k // 10}}", flush=True)
        if os.path.exists("/valohai/outputs/go"):
            break
    time.sleep(0.01)
sys.stderr.write("\\n")
sys.stderr.flush()
print(f"final {{k}}", flush=True)
"""


def _repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("progress", "python3 progress.py"),
                                         "progress.py": PROGRESS})


async def _ticks_beyond(client: Client, execution_id: int, beyond: int) -> int:
    """Follow the log until a tick past ``beyond`` is stored; the highest tick seen."""
    highest = 0
    follow = client.follow_logs(execution_id)
    async for block in follow:
        for line in parse_records(block.data):
            if line.text.startswith("tick "):
                highest = max(highest, int(line.text.split()[1]))
        if highest > beyond:
            break
    await follow.aclose()
    return highest


def _assert_whole(data: str) -> None:
    lines = [line for line in parse_records(data) if line.stream != "system"]
    stdout = [line.text for line in lines if line.stream == "stdout"]
    stderr = [line.text for line in lines if line.stream == "stderr"]
    assert stdout[-1].startswith("final "), stdout[-3:]
    last = int(stdout[-1].split()[1])
    assert stdout[:-1] == [f"tick {n}" for n in range(1, last // 10 + 1)]
    assert [text[:40] for text in stderr] == [f"progress {last:06d} " + "#" * 24]
    assert stderr == [f"progress {last:06d} " + "#" * BAR]


async def test_a_pending_long_line_survives_a_daemon_kill9(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    daemon = daemon_factory()
    daemon.start()
    async with await Client.connect(daemon.socket) as client:
        execution = await submit_repo(client, _repo(tmp_path), "progress")
        seen = await _ticks_beyond(client, execution.id, 5)
    daemon.kill9()  # the bar goes on being drawn while no daemon reads it
    daemon.start()
    async with await Client.connect(daemon.socket) as client:
        await _ticks_beyond(client, execution.id, seen + 3)  # read again, past where the kill was
        (daemon.data_dir / "work" / str(execution.id) / "outputs" / "go").write_text("")
        final = await wait_for_status(client, execution.id)
        assert final.status == "complete", final.reason
        _assert_whole((await client.read_logs(execution.id, offset=0, max_bytes=8 << 20)).data)


async def test_a_pending_long_line_survives_a_host_outage(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    hosts, ssh = start_hosts(tmp_path, {"h1": None})
    host = hosts["h1"]
    daemon = daemon_factory(local_extra="enabled = false", extra_config=ssh + host.config(pool="p"))
    daemon.start()
    try:
        async with await Client.connect(daemon.socket) as client:
            await wait_for_host(client, "h1", {"ready"})
            execution = await submit_repo(client, _repo(tmp_path), "progress")
            seen = await _ticks_beyond(client, execution.id, 5)
            host.kill()  # the log stream breaks off mid-line; the container goes on
            await wait_for_host(client, "h1", {"unreachable"})
            host.start()
            await wait_for_host(client, "h1", {"ready"})
            await _ticks_beyond(client, execution.id, seen + 3)
            (host.root / "work" / daemon.daemon_id / str(execution.id) / "outputs" / "go").write_text("")
            final = await wait_for_status(client, execution.id)
            assert final.status == "complete", final.reason
            _assert_whole((await client.read_logs(execution.id, offset=0, max_bytes=8 << 20)).data)
            assert f"lost contact with host {host.name}" in run_cli(daemon, "logs", str(execution.id)).stdout
    finally:
        host.kill()
