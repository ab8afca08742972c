"""Execution faults end with the reason a user needs to see, also across a daemon restart."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from runyard.protocol import Client
from runyard.protocol.logformat import parse_records

from .conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status

pytestmark = pytest.mark.slow

STEPS = (
    step_yaml("slow", "echo begun; sleep 120", extra="time-limit: 2s")
    + step_yaml("quiet", "echo one line; sleep 120", extra="no-output-timeout: 2s")
    + step_yaml("chatty", "for i in $(seq 1 8); do echo tick $i; sleep 0.5; done", extra="no-output-timeout: 2s")
    + step_yaml("hog", "python3 -c 'x = bytearray(400 * 1024 * 1024); print(len(x))'",
                extra="resources:\n  memory:\n    max: 64")
    + step_yaml("long", "echo begun; sleep 120", extra="time-limit: 6s")
    + step_yaml("hold", "echo begun; sleep 120")
    + step_yaml("ticks", "i=0; while true; do echo t $i; i=$((i+1)); sleep 0.1; done", extra="time-limit: 2s")
)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"valohai.yaml": STEPS})


async def test_time_limit_and_no_output_timeout_end_with_their_reasons(client: Client, repo: Path,
                                                                        daemon: Daemon) -> None:
    slow = await submit_repo(client, repo, "slow")
    quiet = await submit_repo(client, repo, "quiet")
    chatty = await submit_repo(client, repo, "chatty")
    ended = {e.id: await wait_for_status(client, e.id, timeout=60) for e in (slow, quiet, chatty)}
    assert (ended[slow.id].status, ended[slow.id].reason) == ("error", "time-limit")
    assert (ended[quiet.id].status, ended[quiet.id].reason) == ("error", "no-output-timeout")
    # Output every 0.5 s keeps a 2 s no-output-timeout from firing, over 4 s in all.
    assert ended[chatty.id].status == "complete"
    log = run_cli(daemon, "logs", str(slow.id)).stdout
    assert "begun" in log and "time-limit of 2 s reached" in log
    assert "no-output-timeout of 2 s reached" in run_cli(daemon, "logs", str(quiet.id)).stdout


async def test_out_of_memory_under_a_memory_limit(client: Client, repo: Path) -> None:
    hog = await wait_for_status(client, (await submit_repo(client, repo, "hog")).id)
    assert (hog.status, hog.reason) == ("error", "oom-killed")


async def test_time_limit_holds_across_a_daemon_kill(daemon: Daemon, repo: Path) -> None:
    async with await Client.connect(daemon.socket) as client:
        long = await wait_for_status(client, (await submit_repo(client, repo, "long")).id, {"started"})
    daemon.kill9()
    daemon.start()
    async with await Client.connect(daemon.socket) as client:
        ended = await wait_for_status(client, long.id, timeout=60)
    assert (ended.status, ended.reason) == ("error", "time-limit")


async def test_a_limit_passed_while_the_daemon_was_down_is_noted_after_what_was_printed(
        daemon: Daemon, repo: Path) -> None:
    async with await Client.connect(daemon.socket) as client:
        e = await wait_for_status(client, (await submit_repo(client, repo, "ticks")).id, {"started"})
    assert e.container_id is not None
    daemon.kill9()
    # Down until the container has printed well past its 2 s limit: its own output says when.
    with subprocess.Popen(["docker", "logs", "-f", e.container_id], stdout=subprocess.PIPE, text=True) as follow:
        assert follow.stdout is not None
        for line in follow.stdout:
            if line.strip() == "t 30":
                break
        follow.kill()
    daemon.start()
    async with await Client.connect(daemon.socket) as client:
        ended = await wait_for_status(client, e.id, timeout=60)
        records = parse_records((await client.read_logs(e.id, offset=0, max_bytes=8 << 20)).data)
    assert (ended.status, ended.reason) == ("error", "time-limit")
    note = next(i for i, r in enumerate(records) if "time-limit of 2 s reached" in r.text)
    # Every line printed while nobody followed comes before the note, not after it.
    assert [r.text for r in records[:note] if r.stream == "stdout"][:31] == [f"t {i}" for i in range(31)]


async def test_container_deleted_behind_the_daemons_back(client: Client, repo: Path, daemon: Daemon) -> None:
    held = await wait_for_status(client, (await submit_repo(client, repo, "hold")).id, {"started"})
    assert held.container_id
    subprocess.run(["docker", "rm", "-f", held.container_id], check=True, capture_output=True)
    ended = await wait_for_status(client, held.id, timeout=60)
    assert (ended.status, ended.reason) == ("error", "container-removed")
    assert "removed behind runyard's back" in run_cli(daemon, "logs", str(held.id)).stdout
