"""The execution lifecycle: one state machine, one owner per execution, one record declaration.

The unit tests pin what each event means in each state. The end-to-end tests take the
cases that used to wedge an execution: work that vanished while the daemon was down
(both runtimes), and what an abandoned attempt leaves on a host that comes back.
"""

from __future__ import annotations

import ast
import asyncio
import dataclasses
import json
import os
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from runyard.daemon import lifecycle
from runyard.daemon.config import parse_config
from runyard.daemon.core import Core
from runyard.daemon.lifecycle import (
    STAY,
    Exited,
    Failed,
    HostLost,
    LimitReached,
    Move,
    Started,
    StopAsked,
    Vanished,
    decide,
)
from runyard.daemon.record import VIEW_NAMES, ExecutionRow, view_fields
from runyard.daemon.store import Store
from runyard.protocol import Client
from runyard.protocol.methods import ExecutionView

from .conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status
from .pool import free_port, make_client_key, wait_for_host
from .test_host_faults import TwoHosts, two_hosts  # noqa: F401  (the fixture)
from .test_pool import Pool, connect, make_pool, process_pool  # noqa: F401  (the fixture)
from .test_process_wait import live_with_marker, until

ROOT = Path(__file__).resolve().parents[1]

# -- the state machine -------------------------------------------------------------------------


@pytest.mark.parametrize(("status", "reason", "retries", "event", "move"), [
    ("queued", None, 0, Started(), Move("started")),
    ("started", None, 0, Started(), STAY),  # reattached: already recorded
    ("queued", None, 0, StopAsked(), Move("stopped", "stopped-before-start")),
    ("created", None, 0, StopAsked(), Move("stopped", "stopped-before-start")),
    ("started", None, 0, StopAsked(), Move("stopping", stop_container=True)),
    ("stopping", None, 0, StopAsked(), Move(None, stop_container=True)),  # asked again
    ("complete", None, 0, StopAsked(), STAY),
    ("started", None, 0, Exited(0), Move("complete")),
    ("started", None, 0, Exited(3), Move("error", "exit-code 3")),
    ("started", None, 0, Exited(137, oom_killed=True), Move("error", "oom-killed")),
    ("started", None, 0, Exited(lifecycle.PROCESS_LOST), Move("error", "process-lost")),
    ("stopping", None, 0, Exited(143), Move("stopped")),
    ("stopping", None, 0, Exited(0), Move("stopped")),
    ("started", "time-limit", 0, Exited(143), Move("error", "time-limit")),
    ("started", None, 0, LimitReached("no-output-timeout"), Move(None, "no-output-timeout", stop_container=True)),
    ("stopping", None, 0, LimitReached("time-limit"), STAY),
    # an engine restart ends a container with a signal: a host failure, retried if it may be
    ("started", None, 1, Exited(137, engine_restarted=True), Move("queued", "host-lost, retrying", requeue=True)),
    ("started", None, 0, Exited(143, engine_restarted=True), Move("error", "host-lost")),
    ("started", None, 0, Exited(1, engine_restarted=True), Move("error", "exit-code 1")),
    ("started", None, 2, HostLost(), Move("queued", "host-lost, retrying", requeue=True)),
    ("started", None, 0, HostLost(), Move("error", "host-lost")),
    ("stopping", None, 3, HostLost(), Move("stopped")),  # a stop asked is never undone by a retry
    ("queued", None, 0, HostLost(), Move(None, unplace=True)),
    ("started", None, 0, Vanished(), Move("error", "container-removed")),
    ("stopping", None, 0, Vanished(), Move("stopped")),
    ("queued", None, 0, Failed("image-missing"), Move("error", "image-missing")),
    ("stopping", None, 0, Failed("runtime-error"), Move("stopped")),
    ("error", "exit-code 1", 0, Vanished(), STAY),
])
def test_each_event_makes_one_move(status: str, reason: str | None, retries: int, event: lifecycle.Event,
                                   move: Move) -> None:
    assert decide(status, reason, retries, event) == move


def test_every_move_is_legal() -> None:
    events: list[lifecycle.Event] = [Started(), StopAsked(), Exited(0), Exited(1), Exited(137, engine_restarted=True),
                                     LimitReached("time-limit"), HostLost(), Vanished(), Failed("x")]
    for status in lifecycle.ACTIVE_STATUSES:
        for retries in (0, 1):
            for event in events:
                move = decide(status, None, retries, event)
                if move.status is not None and move.status != status:
                    assert move.status in lifecycle.ALLOWED[status], (status, event, move)


def _calls(path: Path, method: str) -> list[int]:
    tree = ast.parse(path.read_text())
    return [node.lineno for node in ast.walk(tree)
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == method]


def test_only_owners_write_an_executions_state() -> None:
    """Status changes are recorded by a runner, or by the scheduler's stop of an unplaced execution."""
    writers = {p.name for p in (ROOT / "daemon").glob("*.py")
               if _calls(p, "transition") or _calls(p, "transition_many")}
    assert writers == {"runner.py", "core.py"}, writers
    # Core.stop and Core.stop_many (unplaced ones stopped), and Core.release (waiting children or a
    # quota's waiters queued), all under the queue lock
    core = ROOT / "daemon" / "core.py"
    assert len(_calls(core, "transition")) + len(_calls(core, "transition_many")) == 3
    # Nobody drives a runner through its private parts.
    for path in (ROOT / "daemon").glob("*.py"):
        if path.name == "runner.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
                value = node.value
                assert not (isinstance(value, ast.Name) and value.id == "runner"), (path.name, node.lineno)


def test_the_record_is_declared_once() -> None:
    """Every field a client sees comes from the row declaration, except the few worked out per view."""
    computed = {"log_size", "metadata", "input_progress", "gpu_use"}
    shown = {name for name in VIEW_NAMES.values() if name is not None}
    assert shown | computed == set(ExecutionView.__struct_fields__)
    row = ExecutionRow(step="s", owner="o", owner_uid=1, image="i", command="c", snapshot="x" * 64,
                       commit_ref="abc", gpu_ids=["GPU-1"], environment={"SECRET": "no"})
    view = ExecutionView(**view_fields(row))
    assert (view.commit, view.gpus) == ("abc", ["GPU-1"])
    assert "environment" not in view_fields(row)  # the step's environment may hold tokens
    assert {f.name for f in dataclasses.fields(ExecutionRow)} >= {"log_base", "metadata_offset"}


# -- work that vanished while the daemon was down ---------------------------------------------


def _remove_containers(daemon_id: str, execution_id: int) -> None:
    # By daemon too: other tests' daemons (the suite runs in parallel) number their executions from 1.
    ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=runyard.execution={execution_id}",
                          "--filter", f"label=runyard.daemon={daemon_id}"],
                         capture_output=True, text=True, check=True).stdout.split()
    assert ids, f"no container for execution {execution_id}"
    subprocess.run(["docker", "rm", "-f", *ids], check=True, capture_output=True)


def _remove_process(work: Path) -> None:
    """What a host reboot with a wiped scratch disk does to a process-runtime execution."""
    for name in ("wrapper.pid", "child.pid"):  # the command runs in a process group of its own
        os.killpg(int((work / ".runyard" / name).read_text()), signal.SIGKILL)
    subprocess.run(["rm", "-rf", str(work)], check=True)


@pytest.mark.slow
async def test_work_that_vanished_while_the_daemon_was_down_ends_and_frees_its_gpus(
        process_pool: Pool) -> None:  # noqa: F811  (the fixture, imported)
    pool = process_pool
    client = await connect(pool)
    try:
        running = await wait_for_status(client, (await submit_repo(client, pool.repo, "hold", gpus=1)).id,
                                        {"started"})
        stopping = await wait_for_status(client, (await submit_repo(client, pool.repo, "hold", gpus=1)).id,
                                         {"started"})
        plain = await wait_for_status(client, (await submit_repo(client, pool.repo, "hold", pool="cpu", gpus=0)).id,
                                      {"started"})
        # A stop asked while its host is away cannot reach the container: it stays "stopping".
        assert stopping.host is not None
        away = pool.hosts[stopping.host]
        away.kill()
        await wait_for_host(client, stopping.host, {"unreachable"})
        assert run_cli(pool.daemon, "stop", str(stopping.id)).returncode == 0
        assert (await client.get(stopping.id)).status == "stopping"
    finally:
        await client.close()
    pool.daemon.kill9()
    for e in (running, stopping):
        _remove_containers(pool.daemon.daemon_id, e.id)
    _remove_process(pool.hosts["cpu-c"].root / "work" / pool.daemon.daemon_id / str(plain.id))
    away.start()
    pool.daemon.start()
    client = await connect(pool)
    try:
        ended = {e.id: await wait_for_status(client, e.id, timeout=60) for e in (running, stopping, plain)}
        assert (ended[running.id].status, ended[running.id].reason) == ("error", "container-removed")
        assert ended[stopping.id].status == "stopped"
        assert (ended[plain.id].status, ended[plain.id].reason) == ("error", "container-removed")
        assert "removed behind runyard's back" in run_cli(pool.daemon, "logs", str(running.id)).stdout
        holders = [g.execution for h in await client.hosts() for g in h.gpus if g.execution is not None]
        assert holders == []
        assert all(not h.executions for h in await client.hosts())
        # and nothing is left running that a later stop would wait on forever
        assert run_cli(pool.daemon, "stop", str(stopping.id)).returncode == 0
        assert (await client.get(stopping.id)).status == "stopped"
    finally:
        await client.close()


# -- an abandoned attempt on a host that comes back ------------------------------------------


@pytest.mark.slow
async def test_a_returning_host_loses_the_work_directory_of_an_abandoned_attempt(
        two_hosts: TwoHosts) -> None:  # noqa: F811  (the fixture, imported)
    daemon, hosts, repo = two_hosts.daemon, two_hosts.hosts, two_hosts.repo
    try:
        async with await Client.connect(daemon.socket) as client:
            e = await submit_repo(client, repo, "count", retries=1)
            first = await wait_for_status(client, e.id, {"started"})
            assert first.host is not None
            lost, other = hosts[first.host], next(h for n, h in hosts.items() if n != first.host)
            abandoned = lost.root / "work" / daemon.daemon_id / str(e.id)
            assert abandoned.is_dir()
            lost.kill()
            assert (await wait_for_status(client, e.id, timeout=60)).status == "complete"
            # Keep the other host busy, so the next execution can only go to the returning one,
            # which takes nothing new before it has been reconciled.
            busy = await wait_for_status(client, (await submit_repo(client, repo, "hold")).id, {"started"})
            assert busy.host == other.name
            lost.start()
            probe = await wait_for_status(client, (await submit_repo(client, repo, "count")).id, timeout=60)
            assert (probe.status, probe.host) == ("complete", lost.name)
            assert not abandoned.exists(), sorted(p.name for p in abandoned.parent.iterdir())
            assert run_cli(daemon, "stop", str(busy.id)).returncode == 0
    finally:
        for host in hosts.values():
            host.kill()


# -- a stop and a requeue cannot cross -------------------------------------------------------


async def test_a_stop_is_never_lost_to_a_requeue(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A stop that arrives while the execution's host is being given up is obeyed, not answered
    "already ended" while the execution quietly goes back to the queue.

    The old Core.stop read the row, then acted on what it read; here the read is held until the
    owner has sent the execution back to the queue, which is the interleaving that lost the stop.
    """
    config = parse_config(textwrap.dedent(f"""\
        [daemon]
        socket = "{tmp_path}/s"
        data_dir = "{tmp_path}/data"
        [local]
        enabled = false
        [scheduler]
        host_lost_grace_seconds = 0.5
        [ssh]
        known_hosts = "{tmp_path}/known_hosts"
        connect_timeout_seconds = 1
        reconnect_min_seconds = 0.2
        [[hosts]]
        name = "far"
        address = "127.0.0.1"
        port = {free_port()}
        user = "root"
        identity = "{make_client_key(tmp_path)}"
        """))
    store = await Store.open(tmp_path / "db.sqlite3")
    row, _ = await store.create_execution(ExecutionRow(step="s", owner="root", owner_uid=0, image="i", command="c",
                                                       snapshot="0" * 64, retries=1))
    await store.place([(row.id, "far", ())])
    await store.transition(row.id, "started", host="far", container_id="c0ffee")
    core = Core(config, store)
    events, watch = core.hub.subscribe(), core.hub.subscribe()
    await core.start()
    try:
        real_get = core.get

        async def read_then_requeue(execution_id: int) -> ExecutionRow:
            seen = await real_get(execution_id)
            while (event := await watch.queue.get()).execution_id != execution_id or event.status != "queued":
                pass
            return seen

        monkeypatch.setattr(core, "get", read_then_requeue)
        stop = asyncio.create_task(core.stop(row.id))
        ended = None
        while ended is None:
            event = await asyncio.wait_for(events.queue.get(), 20)
            if event.execution_id == row.id and event.status in lifecycle.TERMINAL:
                ended = event.status
            if event.execution_id == row.id and event.status == "queued":
                break  # the requeue won: the old behaviour
        assert await asyncio.wait_for(stop, 20) is True
        current = await store.get(row.id)
        assert current is not None and current.status == "stopped", current.status
    finally:
        await core.shutdown()
        await store.close()


# -- times are the engine's ---------------------------------------------------------------------


def _store_form(docker_time: str) -> str:
    """Docker's RFC 3339 nanoseconds (trailing zeros trimmed) as the store keeps times: microseconds."""
    whole, _, frac = docker_time.rstrip("Z").partition(".")
    return f"{whole}.{(frac + '000000')[:6]}Z"


@pytest.mark.slow
async def test_started_and_ended_are_the_engines_times_across_a_daemon_kill(daemon: Daemon, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml(
        "wait", ["echo begun", 'while [ ! -e "$VH_OUTPUTS_DIR/go" ]; do sleep 0.05; done', "echo done"])})
    async with await Client.connect(daemon.socket) as client:
        e = await wait_for_status(client, (await submit_repo(client, repo, "wait")).id, {"started"})
    assert e.container_id is not None
    daemon.kill9()
    (daemon.data_dir / "work" / str(e.id) / "outputs" / "go").touch()
    subprocess.run(["docker", "wait", e.container_id], check=True, capture_output=True, timeout=60)
    state = json.loads(subprocess.run(["docker", "inspect", "--format", "{{json .State}}", e.container_id],
                                      check=True, capture_output=True, text=True).stdout)
    daemon.start()  # it notices the end only now, well after the container finished
    async with await Client.connect(daemon.socket) as client:
        ended = await wait_for_status(client, e.id)
    assert ended.status == "complete"
    assert (ended.started_at, ended.ended_at) == (_store_form(state["StartedAt"]), _store_form(state["FinishedAt"]))


def test_every_reply_is_typed() -> None:
    """The daemon answers with the protocol's structs (or plain scalars), never a hand-built dict, so a
    reply that drifts from what clients decode fails here and in mypy, not in a user's terminal."""
    import typing

    from runyard.daemon import api

    for name, (_, handler) in api.METHODS.items():
        reply = typing.get_type_hints(handler)["return"]
        assert reply is not typing.Any and "dict" not in str(reply), (name, reply)


async def _said(client: Client, execution_id: int, text: str) -> None:
    """Until the execution's log holds ``text`` (followed: an event, not a sleep)."""
    seen = ""
    follow = client.follow_logs(execution_id)
    async for block in follow:
        seen += block.data
        if text in seen:
            break
    await follow.aclose()


@pytest.mark.slow
async def test_stop_all_of_local_processes_terms_each_command_and_kills_what_outlives_the_grace(
        daemon_factory: type[Daemon], tmp_path: Path) -> None:
    """The process runtime on this machine runs its commands through /bin/sh (dash on Debian). A stop
    --all reaches every running one at once: TERM to each command's process group, KILL after the grace
    to what ignores it; and a time limit stops its execution the same way."""
    daemon = daemon_factory(local_extra='runtime = "process"', stop_grace=2, max_concurrent=5)
    daemon.start()
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": (
        step_yaml("graceful", ['trap "echo got TERM; exit 0" TERM', "echo ready", "while :; do sleep 0.1; done"])
        + step_yaml("stubborn", ['trap "echo TERM ignored" TERM', "echo ready",
                                 "while :; do echo still here; sleep 0.2 || :; done"])
        + step_yaml("plain", "sleep 600")
        + step_yaml("limited", "while true; do echo t; sleep 0.1; done", extra="time-limit: 2s"))})
    async with await Client.connect(daemon.socket) as client:
        limited = await submit_repo(client, repo, "limited")
        ids = {name: (await submit_repo(client, repo, name)).id for name in ("graceful", "stubborn", "plain")}
        for name in ("graceful", "stubborn"):  # their traps are set once they have said so
            await asyncio.wait_for(_said(client, ids[name], "ready"), 30)
        await wait_for_status(client, ids["plain"], {"started"})
        ended = await wait_for_status(client, limited.id, timeout=30)
        assert (ended.status, ended.reason) == ("error", "time-limit")

        said = run_cli(daemon, "stop", "--all")
        assert said.returncode == 0, said.stderr
        views = {name: await wait_for_status(client, i, timeout=30) for name, i in ids.items()}
        logs = {name: (await client.read_logs(i, tail=1000)).data for name, i in ids.items()}
    assert {name: v.status for name, v in views.items()} == dict.fromkeys(ids, "stopped")
    # TERM reached each command's whole group: the trap ran (its `sleep` ended too), and a plain
    # command ended by it (143), neither waiting for the grace.
    assert (views["graceful"].exit_code, "got TERM" in logs["graceful"]) == (0, True), logs["graceful"]
    assert views["plain"].exit_code == 128 + signal.SIGTERM
    # One that ignores TERM goes on through the grace, then is KILLed.
    stubborn = logs["stubborn"]
    assert "TERM ignored" in stubborn and "still here" in stubborn[stubborn.index("TERM ignored"):], stubborn
    assert views["stubborn"].exit_code == 128 + signal.SIGKILL


async def test_an_ended_plain_process_execution_leaves_nothing_running_as_a_container_would(
        daemon_factory: type[Daemon], tmp_path: Path) -> None:
    """A container's end kills everything in it; so does the end of a plain-process execution: a
    background job of a command that exited, and the command of a wrapper killed with -9."""
    marker = f"1000.{os.getpid()}{id(tmp_path) % 1000}"
    daemon = daemon_factory(local_extra='runtime = "process"')
    daemon.start()
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": (
        step_yaml("background", f"sleep {marker}1 & echo started") + step_yaml("held", f"sleep {marker}2"))})
    try:
        async with await Client.connect(daemon.socket) as client:
            background = await submit_repo(client, repo, "background")
            held = await wait_for_status(client, (await submit_repo(client, repo, "held")).id, {"started"})
            ended = await wait_for_status(client, background.id, timeout=30)
            assert ended.status == "complete"
            control = daemon.data_dir / "work" / str(held.id) / ".runyard"
            await until(lambda: live_with_marker(f"{marker}2"), "its command to start")
            os.kill(int((control / "wrapper.pid").read_text()), signal.SIGKILL)
            ended = await wait_for_status(client, held.id, timeout=30)
            assert (ended.status, ended.reason) == ("error", "process-lost")
            for e in (background, held):  # its end recorded, then its attempt removed
                await until(lambda: not (daemon.data_dir / "work" / str(e.id)).exists(),  # noqa: B023
                            f"execution {e.id}'s removal")
            assert (live_with_marker(f"{marker}1"), live_with_marker(f"{marker}2")) == ([], [])
    finally:
        for pid in live_with_marker(marker):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
async def test_a_stop_during_an_input_download_ends_it_and_leaves_nothing(daemon: Daemon, tmp_path: Path) -> None:
    """A server that sends part of a large file, then nothing: the stop must not wait for it."""
    sent = asyncio.Event()

    async def stall(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\n" + b"x" * (1 << 20))
        await writer.drain()
        sent.set()
        await asyncio.Event().wait()  # and then silence, until the test ends

    server = await asyncio.start_server(stall, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("read", "cat $VH_INPUTS_DIR/data/*",
                                                                   extra="inputs:\n  - name: data")})
    try:
        async with await Client.connect(daemon.socket) as client:
            e = await submit_repo(client, repo, "read", inputs={"data": [f"http://127.0.0.1:{port}/big.bin"]})
            async for event in client.events(since=0):
                if getattr(event, "kind", "") == "progress" and event.execution_id == e.id and sent.is_set():
                    break
            assert run_cli(daemon, "stop", str(e.id)).returncode == 0
            ended = await wait_for_status(client, e.id, timeout=20)
            assert (ended.status, ended.reason) == ("stopped", "stopped-before-start")
    finally:
        server.close()
    cache = daemon.data_dir / "cache" / "inputs"
    assert list(cache.iterdir()) == []  # the half download is not kept, nor its empty entry
    assert not (daemon.data_dir / "work" / str(e.id)).exists()
    left = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=runyard.execution={e.id}",
                           "--filter", f"label=runyard.daemon={daemon.daemon_id}"], capture_output=True, text=True)
    assert left.stdout.split() == []


@pytest.mark.slow
async def test_a_host_whose_runtime_changed_leaves_the_old_work_alone(daemon: Daemon, tmp_path: Path) -> None:
    tick = step_yaml("tick", "while true; do echo tick; sleep 0.1; done")
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": tick})
    async with await Client.connect(daemon.socket) as client:
        e = await wait_for_status(client, (await submit_repo(client, repo, "tick")).id, {"started"})
    assert e.container_id is not None
    assert daemon.terminate() == 0
    daemon.local_extra = 'runtime = "process"'  # the admin switches the machine to plain processes
    daemon.start()
    async with await Client.connect(daemon.socket) as client:
        ended = await wait_for_status(client, e.id, timeout=60)
    assert (ended.status, ended.reason) == ("error", "runtime-changed")
    assert "cannot follow it any more; it is left as it is" in run_cli(daemon, "logs", str(e.id)).stdout
    running = subprocess.run(["docker", "inspect", "--format", "{{.State.Running}}", e.container_id],
                             capture_output=True, text=True, check=True)
    assert running.stdout.strip() == "true"  # not taken for gone, nor its workspace removed under it
    assert (daemon.data_dir / "work" / str(e.id) / "repository").is_dir()


async def test_a_second_daemon_on_the_same_socket_leaves_the_first_alone(daemon: Daemon) -> None:
    second = Daemon(root=daemon.root)  # the same configuration: the same socket and data directory
    second.start()  # returns on its first line that says "serving", here the refusal
    assert second.process is not None and second.process.wait(timeout=30) == 1
    said = "".join(second.stderr_lines)
    assert f"cannot start: another runyard daemon is already serving {daemon.socket}" in said, said
    async with await Client.connect(daemon.socket) as client:  # the first one still serves
        assert [h.name for h in await client.hosts()] == ["local"]


@pytest.mark.slow
async def test_a_returning_host_loses_uploads_that_were_cut_off(two_hosts: TwoHosts) -> None:  # noqa: F811
    """A kill of the daemon (or a lost link) in the middle of copying an input to a host leaves a
    partial file in the host's input cache; the host's next reconcile removes it."""
    daemon, hosts, repo = two_hosts.daemon, two_hosts.hosts, two_hosts.repo
    host = hosts["h1"]
    cache = host.root / "work" / daemon.daemon_id / ".inputs"
    cache.mkdir(parents=True, exist_ok=True)
    stale = cache / f"{'ab' * 32}.part-4242.deadbeef-1"
    stale.write_bytes(b"half an input")
    try:
        async with await Client.connect(daemon.socket) as client:
            host.kill()
            await wait_for_host(client, "h1", {"unreachable"})
            busy = await wait_for_status(client, (await submit_repo(client, repo, "hold")).id, {"started"})
            assert busy.host == "h2"
            host.start()
            # Only h1 is free, and it takes nothing before its reconcile is done.
            probe = await wait_for_status(client, (await submit_repo(client, repo, "count")).id, timeout=60)
            assert (probe.status, probe.host) == ("complete", "h1")
            assert not stale.exists()
            assert run_cli(daemon, "stop", str(busy.id)).returncode == 0
    finally:
        for h in hosts.values():
            h.kill()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


@pytest.mark.slow
async def test_a_plain_process_stopped_while_its_host_was_away_is_killed_when_it_returns(
        tmp_path: Path, daemon_factory: type[Daemon]) -> None:
    for pool in make_pool(tmp_path, daemon_factory, host_c='runtime = "process"',
                          scheduler="[scheduler]\nhost_lost_grace_seconds = 2\n"):
        client = await connect(pool)
        try:
            held = await wait_for_status(client, (await submit_repo(client, pool.repo, "hold", pool="cpu", gpus=0)).id,
                                         {"started"})
            control = pool.hosts["cpu-c"].root / "work" / pool.daemon.daemon_id / str(held.id) / ".runyard"
            command = int((control / "child.pid").read_text())
            assert _running(command)
            pool.hosts["cpu-c"].kill()
            await wait_for_host(client, "cpu-c", {"unreachable"})
            assert run_cli(pool.daemon, "stop", str(held.id)).returncode == 0
            ended = await wait_for_status(client, held.id, timeout=60)  # given up after the grace
            assert ended.status == "stopped"
            assert _running(command)  # the host was away: nothing could reach it
            pool.hosts["cpu-c"].start()
            # cpu-c takes new work only once its reconcile is done.
            probe = await wait_for_status(client, (await submit_repo(client, pool.repo, "proc", pool="cpu")).id)
            assert (probe.status, probe.host) == ("complete", "cpu-c")
            assert not _running(command), "the stopped command still runs on its host"
            assert not control.parent.exists()
        finally:
            await client.close()


def test_a_config_holding_secrets_must_be_private(tmp_path: Path) -> None:
    from runyard.daemon.config import exposed_secrets, load_config

    path = tmp_path / "config.toml"
    path.write_text('[secrets]\nTOKEN = "s3cr3t"\n')
    path.chmod(0o644)
    assert exposed_secrets(path, load_config(path)) == (
        f"{path} holds secrets and is readable by other users (mode 0644): chmod 600 {path}")
    path.chmod(0o600)
    assert exposed_secrets(path, load_config(path)) is None
    path.write_text("[daemon]\n")
    path.chmod(0o644)  # nothing secret in it: readable is fine
    assert exposed_secrets(path, load_config(path)) is None
