"""Large logs, live follow, and the daemon killed with SIGKILL mid-run."""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
from pathlib import Path

import aiodocker
import pytest

from runyard.protocol import Client
from runyard.protocol.logformat import parse_records

from .conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status

pytestmark = pytest.mark.slow

LINES = 200_000

STEPS = (
    step_yaml("flood", f"python3 -c \"[print(f'line {{i}}') for i in range({LINES})]\"")
    # A steady producer: numbered lines on both streams, then an output file.
    + step_yaml("steady", "python3 steady.py {parameters}", """\
        - name: count
          type: integer
          default: 400
        """)
    + step_yaml("ticker", ['echo first', 'while [ ! -e /valohai/outputs/go ]; do sleep 0.05; done',
                           'echo "after go"'])
    + step_yaml("epoch-then-quiet", ['python3 -c "import json; print(json.dumps(dict(epoch=1, loss=0.5)))"',
                                     'echo printed',
                                     'while [ ! -e /valohai/outputs/go ]; do sleep 0.05; done'])
)

STEADY = """\
import json, os, sys, time
n = int(sys.argv[1].split("=")[1])
for i in range(n):
    stream = sys.stderr if i % 7 == 0 else sys.stdout
    print(f"n={i}", file=stream)
    if i % 50 == 0:
        print(json.dumps({"step": i, "acc": i / n}))
    time.sleep(0.01)
open(os.environ["VH_OUTPUTS_DIR"] + "/done.txt", "w").write(str(n))
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {"valohai.yaml": STEPS, "steady.py": STEADY})


async def test_head_tail_and_skipped_marker_on_a_large_log(client: Client, daemon: Daemon, repo: Path) -> None:
    execution = await submit_repo(client, repo, "flood")
    assert (await wait_for_status(client, execution.id)).status == "complete"
    assert await client.call("logs.count", {"id": execution.id}) == LINES
    result = run_cli(daemon, "logs", str(execution.id), "--head", "2", "--tail", "2")
    assert result.stdout.splitlines() == [
        "line 0", "line 1", f"... {LINES - 4} lines skipped ...", f"line {LINES - 2}", f"line {LINES - 1}"]
    tail = await client.read_logs(execution.id, tail=3)
    assert [line.text for line in parse_records(tail.data)] == [f"line {i}" for i in range(LINES - 3, LINES)]
    whole = run_cli(daemon, "logs", str(execution.id))
    assert whole.stdout == "".join(f"line {i}\n" for i in range(LINES))


async def test_follow_sees_lines_while_running_then_ends(client: Client, daemon: Daemon, repo: Path) -> None:
    execution = await submit_repo(client, repo, "ticker")
    seen = ""
    released = False
    async for block in client.follow_logs(execution.id):
        seen += block.data
        if "first" in seen and not released:
            assert "after go" not in seen  # it is really live: the step is still waiting
            (daemon.data_dir / "work" / str(execution.id) / "outputs" / "go").write_text("")
            released = True
    texts = [line.text for line in parse_records(seen)]
    assert texts == ["first", "after go"]
    assert (await client.get(execution.id)).status == "complete"


def _docker_lines(container_id: str) -> list[str]:
    result = subprocess.run(["docker", "logs", container_id], capture_output=True, text=True, check=True)
    return sorted(result.stdout.splitlines() + result.stderr.splitlines())


async def test_kill9_mid_run_loses_and_doubles_no_line(daemon_factory: type[Daemon], repo: Path) -> None:
    daemon = daemon_factory()
    daemon.start()
    count = 400
    async with await Client.connect(daemon.socket) as client:
        execution = await submit_repo(client, repo, "steady", parameters={"count": str(count)})
        follow = client.follow_logs(execution.id)
        async for block in follow:
            if "n=100" in block.data:
                break
        await follow.aclose()
    daemon.kill9()  # mid-run: the container keeps printing while no daemon reads it
    daemon.start()
    async with await Client.connect(daemon.socket) as client:
        final = await wait_for_status(client, execution.id)
        assert final.status == "complete", final.reason
        data = (await client.read_logs(execution.id, offset=0, max_bytes=8 << 20)).data
        records = [line for line in parse_records(data) if line.text.startswith("n=")]
        # Each stream's lines in order, none lost or doubled. Across the two streams the order is the
        # engine's: it stamps each pipe's lines as it reads them, so a burst (a starved container)
        # can put a stderr line a few microseconds before the stdout line printed just before it.
        for stream, wanted in (("stdout", [i for i in range(count) if i % 7]),
                               ("stderr", [i for i in range(count) if not i % 7])):
            assert [r.text for r in records if r.stream == stream] == [f"n={i}" for i in wanted]
        points = await client.metadata(execution.id)
        assert [p.values["step"] for p in points] == list(range(0, count, 50))
        assert [o.path for o in await client.outputs(execution.id)] == ["done.txt"]


async def test_container_that_finished_while_daemon_was_down_is_collected(daemon_factory: type[Daemon],
                                                                          repo: Path) -> None:
    daemon = daemon_factory()
    daemon.start()
    async with await Client.connect(daemon.socket) as client:
        execution = await submit_repo(client, repo, "steady", parameters={"count": "30"})
        started = await wait_for_status(client, execution.id, {"started", "complete"})
        container = started.container_id
    daemon.kill9()
    assert container is not None
    subprocess.run(["docker", "wait", container], check=True, capture_output=True)
    expected = _docker_lines(container)
    daemon.start()
    async with await Client.connect(daemon.socket) as client:
        final = await wait_for_status(client, execution.id)
        assert final.status == "complete" and final.exit_code == 0
        data = (await client.read_logs(execution.id, offset=0)).data
        stored = sorted(line.text for line in parse_records(data) if line.stream != "system")
        assert stored == expected
        assert [o.path for o in await client.outputs(execution.id)] == ["done.txt"]
    # The runner removes the container after recording the end: wait for the engine to say so.
    async with aiodocker.Docker() as docker:
        with contextlib.suppress(aiodocker.DockerError):  # 404: already removed
            await docker.containers.container(container).wait(condition="removed", timeout=60)
    gone = subprocess.run(["docker", "inspect", container], capture_output=True)
    assert gone.returncode != 0, "the collected container is removed"


async def test_sigterm_shuts_down_cleanly_and_leaves_executions_running(daemon_factory: type[Daemon],
                                                                        repo: Path) -> None:
    daemon = daemon_factory()
    daemon.start()
    async with await Client.connect(daemon.socket) as client:
        execution = await submit_repo(client, repo, "ticker")
        started = await wait_for_status(client, execution.id, {"started"})
    assert daemon.terminate() == 0
    assert not Path(daemon.socket).exists()
    running = subprocess.run(["docker", "inspect", "-f", "{{.State.Running}}", str(started.container_id)],
                             capture_output=True, text=True)
    assert running.stdout.strip() == "true"
    daemon.start()
    async with await Client.connect(daemon.socket) as client:
        (daemon.data_dir / "work" / str(execution.id) / "outputs" / "go").write_text("")
        final = await wait_for_status(client, execution.id)
        assert final.status == "complete"
        texts = [line.text for line in parse_records((await client.read_logs(execution.id, offset=0)).data)]
        assert texts == ["first", "after go"]


async def test_events_resume_from_a_sequence(client: Client, repo: Path) -> None:
    execution = await submit_repo(client, repo, "steady", parameters={"count": "1"})
    await wait_for_status(client, execution.id)
    seen = []

    async def collect() -> None:
        async for event in client.events(since=0):
            if getattr(event, "kind", None) == "host":
                continue  # hosts' state changes share the sequence; this test is about executions
            seen.append(event)
            if getattr(event, "status", None) == "complete":
                return

    await asyncio.wait_for(collect(), 30)
    statuses = [getattr(e, "status", None) for e in seen]
    assert statuses == ["queued", "started", "complete"]
    seqs = [getattr(e, "seq", 0) for e in seen]
    assert seqs == sorted(seqs)


async def test_a_metadata_point_is_recorded_while_the_command_is_quiet(client: Client, daemon: Daemon,
                                                                       repo: Path) -> None:
    """Points are recorded in batches, but one must not wait for the next line to be recorded."""
    execution = await submit_repo(client, repo, "epoch-then-quiet")
    async for block in client.follow_logs(execution.id):
        if "printed" in block.data:
            break
    # Nothing announces a recorded point, so look until it is there (the daemon promises 0.25 s).
    for _ in range(200):
        points = await client.metadata(execution.id)
        if points:
            break
        await asyncio.sleep(0.05)
    assert [p.values["epoch"] for p in points] == [1]
    assert (await client.get(execution.id)).status == "started"
    (daemon.data_dir / "work" / str(execution.id) / "outputs" / "go").touch()
    assert (await wait_for_status(client, execution.id)).status == "complete"
    assert len(await client.metadata(execution.id)) == 1
