"""What must never wedge, hang, grow without bound or leak: cancelled writes, followed deletions,
metadata of any size, busy connections, big snapshots, shutdown and host outages."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import hashlib
import json
import os
import random
import signal
from pathlib import Path

import pytest
from aiohttp import web

from runyard.daemon.config import parse_config
from runyard.daemon.core import Core
from runyard.daemon.inputs import InputFetcher
from runyard.daemon.outputs import LocalOutputStore
from runyard.daemon.record import ExecutionRow
from runyard.daemon.runtime import EngineError
from runyard.daemon.runtime_docker import DockerRuntime
from runyard.daemon.server import Connection, Server
from runyard.daemon.store import Store
from runyard.protocol import Client, RemoteError
from runyard.protocol.framing import FrameDecoder, encode_frame
from runyard.protocol.messages import (
    Error,
    Hello,
    LogData,
    LogEnd,
    Message,
    Request,
    Response,
    decode_message,
    encode_message,
)

from .conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status
from .pool import start_lone_host, wait_for_host

POINTS = 12_000
# 12,000 points of ~450 bytes: over 5 MiB, more than one 4 MiB frame holds
POINTS_PY = f"""\
import json
for s in range({POINTS}):
    print(json.dumps({{"step": s, "loss": 1 / (s + 1), "pad": "x" * 400}}))
"""
STEPS = step_yaml("points", "python3 points.py") + step_yaml("hold", "sleep 600")
FILES = {"valohai.yaml": STEPS, "points.py": POINTS_PY}
slow = pytest.mark.slow


# -- the store -------------------------------------------------------------------------------


async def test_cancelled_writes_never_wedge_the_store(tmp_path: Path) -> None:
    """Writers cancelled at random points (as a client disconnecting mid-request cancels its
    handler) leave no transaction open: the store keeps writing, and every write that returned
    is there after a reopen."""
    store = await Store.open(tmp_path / "db.sqlite3")
    rng = random.Random(1212)
    committed: list[int] = []

    async def write(i: int) -> None:
        event = await store.host_event(f"h{i}", "ready", None)
        committed.append(event.seq)
        await store.set_host_admin(f"h{i % 7}", "draining" if i % 2 else "enabled")

    try:
        for i in range(400):
            task = asyncio.create_task(write(i))
            for _ in range(rng.randrange(8)):  # a few turns of the loop: cancels at the first awaits
                await asyncio.sleep(0)
            if rng.random() < 0.5:  # or later, anywhere in the transaction, or after it
                await asyncio.sleep(rng.random() * 0.004)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        last = await store.host_event("after", "ready", "the store still writes")
        await store.set_host_admin("after", "draining")
    finally:
        await store.close()
    assert len(committed) > 10, "the cancels should not hit every write before it begins"
    reopened = await Store.open(tmp_path / "db.sqlite3")
    try:
        seqs = {e.seq for e in await reopened.events_since(0)}
        assert set(committed) <= seqs and last.seq in seqs
        assert (await reopened.host_admin())["after"] == "draining"
    finally:
        await reopened.close()


def _new(title: str) -> ExecutionRow:
    return ExecutionRow(step="train", title=title, owner="root", owner_uid=0, parameters={}, inputs={},
                        image="img", command="true", environment={}, snapshot="0" * 64, commit_ref=None,
                        config_path="valohai.yaml")


def _points(steps: range, **extra: object) -> list[tuple[str, str, dict[str, object]]]:
    out = []
    for s in steps:
        values = {"step": s, "loss": 1 / (s + 1), **extra}
        out.append((f"2026-01-01T00:00:{s % 60:02d}.000000Z", json.dumps(values), values))
    return out


async def test_a_submit_is_recorded_whole_or_not_at_all_even_when_it_fails_or_is_cancelled(tmp_path: Path) -> None:
    """A submit's row and its event are one transaction: a submit that fails leaves neither, one
    cancelled mid-way leaves both or neither, and the next one is recorded as usual."""
    store = await Store.open(tmp_path / "db.sqlite3")
    try:
        first, event = await store.create_execution(_new("first"))
        assert (event.execution_id, event.kind, event.status) == (first.id, "created", "queued")
        bad = _new("unbindable")
        bad.title = object()  # type: ignore[assignment]  # a value SQLite cannot store
        with pytest.raises(Exception, match=r"(?i)type|bind"):
            await store.create_execution(bad)
        for turns in range(20):  # cancelled at every point a submit can be
            task = asyncio.create_task(store.create_execution(_new("cancelled")))
            for _ in range(turns % 5):
                await asyncio.sleep(0)
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        last, _ = await store.create_execution(_new("last"))
        rows = await store.list_executions(limit=1000)
        created = [e for e in await store.events_since(0) if e.kind == "created"]
        assert sorted(r.id for r in rows) == sorted(e.execution_id for e in created)
        assert "unbindable" not in [r.title for r in rows] and last.id == max(r.id for r in rows)
    finally:
        await store.close()


async def test_a_retried_executions_metadata_is_its_current_attempts(tmp_path: Path) -> None:
    """Steps 0-19 of the first attempt and 0-9 of the retry: the latest values and the points
    asked for by default are the retry's; the first attempt's stay in the history, marked."""
    store = await Store.open(tmp_path / "db.sqlite3")
    try:
        row, _ = await store.create_execution(_new("retried"))
        await store.add_metadata(row.id, _points(range(20), first=True), 1000, attempt=0)
        assert (await store.latest_metadata(row.id))["step"] == 19
        # The host was lost; the execution goes back to the queue and starts anew at log offset 5000.
        await store.update(row.id, log_base=5000)
        await store.start_attempt(row.id, 5000)
        assert await store.latest_metadata(row.id) == {}
        await store.add_metadata(row.id, _points(range(10)), 6000, attempt=5000)
        # A late flush of the abandoned attempt is history, never the latest.
        await store.add_metadata(row.id, _points(range(20, 21), first=True), 6100, attempt=0)
        latest = await store.latest_metadata(row.id)
        assert latest["step"] == 9 and "first" not in latest
        current = await store.metadata(row.id, attempt=5000)
        assert [p.values["step"] for p in current] == list(range(10))
        assert {p.attempt for p in current} == {5000}
        every = await store.metadata(row.id)
        assert [(p.attempt, p.values["step"]) for p in every] == (
            [(0, s) for s in range(20)] + [(5000, s) for s in range(10)] + [(0, 20)])
        assert await store.metadata_count(row.id, 5000) == 10 and await store.metadata_count(row.id) == 31
        # A chart's downsampled series: every 3rd point of the current attempt and its last one.
        chart = await store.metadata(row.id, attempt=5000, every=3)
        assert [p.values["step"] for p in chart] == [0, 3, 6, 9]
        chart = await store.metadata(row.id, attempt=5000, every=4)
        assert [p.values["step"] for p in chart] == [0, 4, 8, 9]
        # ... and pages of it fit together whatever the offset.
        n_of_step_4 = current[4].n
        assert [p.values["step"] for p in await store.metadata(row.id, attempt=5000, every=4,
                                                                offset=n_of_step_4)] == [4, 8, 9]
    finally:
        await store.close()


# -- metadata through the daemon --------------------------------------------------------------


@slow
async def test_metadata_is_paged_and_charts_get_a_downsampled_series(daemon_factory: type[Daemon],
                                                                     tmp_path: Path) -> None:
    daemon = daemon_factory()
    daemon.start()
    repo = make_repo(tmp_path / "repo", FILES)
    async with await Client.connect(daemon.socket) as client:
        e = await submit_repo(client, repo, "points")
        done = await wait_for_status(client, e.id)
        assert done.status == "complete", run_cli(daemon, "logs", str(e.id), "--tail", "5").stdout
        page = await client.metadata_page(e.id)
        assert len(page.points) == 1000 and page.next == 1000 and page.total == POINTS
        assert [p.values["step"] for p in page.points] == list(range(1000))
        chart = await client.metadata(e.id, max_points=500)
        steps = [p.values["step"] for p in chart]
        assert len(chart) <= 500 and steps[0] == 0 and steps[-1] == POINTS - 1 and steps == sorted(steps)
        with pytest.raises(RemoteError) as bad:
            await client.metadata_page(e.id, limit=0)
        assert bad.value.code == "invalid-params" and "limit" in bad.value.message
    # The CLI prints every point, page by page.
    shown = run_cli(daemon, "metadata", str(e.id), "--json")
    assert shown.returncode == 0, shown.stderr
    printed = json.loads(shown.stdout)
    assert [p["values"]["step"] for p in printed["points"]] == list(range(POINTS))
    assert printed["latest"]["step"] == POINTS - 1

    # A second attempt (what a retry after a lost host records): the view, the CLI and charts show
    # only it unless every attempt is asked for.
    assert daemon.terminate() == 0
    store = await Store.open(daemon.data_dir / "runyard.sqlite3")
    try:
        await store.update(e.id, log_base=10_000_000)
        await store.start_attempt(e.id, 10_000_000)
        await store.add_metadata(e.id, _points(range(5)), 10_000_100, attempt=10_000_000)
    finally:
        await store.close()
    daemon.start()
    async with await Client.connect(daemon.socket) as client:
        current = await client.metadata(e.id)
        assert [p.values["step"] for p in current] == list(range(5))
        assert {p.attempt for p in current} == {10_000_000}
        assert (await client.get(e.id)).metadata["step"] == 4
        chart = await client.metadata(e.id, max_points=100)
        assert [p.values["step"] for p in chart] == list(range(5))
        both = await client.metadata(e.id, all_attempts=True)
        assert len(both) == POINTS + 5 and {p.attempt for p in both} == {0, 10_000_000}
    shown = run_cli(daemon, "metadata", str(e.id), "--json")
    assert json.loads(shown.stdout)["latest"]["step"] == 4


# -- log followers --------------------------------------------------------------------------


async def _raw_connect(daemon: Daemon) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, FrameDecoder]:
    reader, writer = await asyncio.open_unix_connection(daemon.socket)
    decoder = FrameDecoder()
    writer.write(encode_frame(encode_message(Hello(client="raw", major=1, minor=1))))
    await _next_message(reader, decoder, [])
    return reader, writer, decoder


async def _next_message(reader: asyncio.StreamReader, decoder: FrameDecoder, pending: list[Message]) -> Message | None:
    while not pending:
        chunk = await asyncio.wait_for(reader.read(65536), 60)
        if not chunk:
            return None
        pending += [decode_message(f) for f in decoder.feed(chunk)]
    return pending.pop(0)


@slow
async def test_a_follower_ends_when_its_execution_is_stopped_and_deleted(daemon: Daemon, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", FILES)
    async with await Client.connect(daemon.socket) as client:
        await client.host_drain("local")  # it stays queued
        e = await submit_repo(client, repo, "hold")
        reader, writer, decoder = await _raw_connect(daemon)
        pending: list[Message] = []
        writer.write(encode_frame(encode_message(Request(id=1, method="logs.follow",
                                                         params={"id": e.id, "sub": 7}))))
        reply = await _next_message(reader, decoder, pending)
        assert isinstance(reply, Response) and reply.id == 1  # following from here on
        await client.stop([e.id])
        # Stopped before it started: its log (one note) is complete, and whoever follows it is told so.
        end = await _next_message(reader, decoder, pending)
        assert isinstance(end, LogData) and "stop asked by root: it had not started" in end.data
        end = await _next_message(reader, decoder, pending)
        assert isinstance(end, LogEnd) and end.sub == 7 and end.error is None
        await client.delete(e.id)
        writer.write(encode_frame(encode_message(Request(id=2, method="logs.follow",
                                                         params={"id": e.id, "sub": 8}))))
        refused = await _next_message(reader, decoder, pending)
        assert isinstance(refused, Error) and refused.code == "not-found", refused
        writer.close()


# -- limits ---------------------------------------------------------------------------------


@slow
async def test_requests_past_the_cap_wait_unread_until_one_is_answered(daemon_factory: type[Daemon],
                                                                       tmp_path: Path) -> None:
    """Two slow requests fill a connection's two slots: a third is not even read until one of
    them is answered, while other connections are served as usual."""
    host, _key, known = start_lone_host(tmp_path)
    config = f'[ssh]\nknown_hosts = "{known}"\n' + host.config(pool="p")
    daemon = daemon_factory(local_extra="enabled = false", extra_config=config,
                            daemon_extra="max_requests_in_flight = 2")
    daemon.start()
    assert host.process is not None
    try:
        async with await Client.connect(daemon.socket) as bystander:
            await wait_for_host(bystander, host.name, {"ready"})
            reader, writer, decoder = await _raw_connect(daemon)
            pending: list[Message] = []
            sshd = [host.process.pid, *_children(host.process.pid)]
            for pid in sshd:
                os.kill(pid, signal.SIGSTOP)  # the host hangs: a scan of it waits
            try:
                for i in (1, 2):
                    writer.write(encode_frame(encode_message(Request(id=i, method="hosts.scan",
                                                                     params={"name": host.name}))))
                writer.write(encode_frame(encode_message(Request(id=3, method="executions.list", params={}))))
                await writer.drain()
                assert await bystander.list_executions() == []  # others are served meanwhile
            finally:
                for pid in sshd:
                    os.kill(pid, signal.SIGCONT)
            answered = []
            while len(answered) < 3:
                message = await _next_message(reader, decoder, pending)
                assert isinstance(message, Response | Error), message
                answered.append(message.id)
            assert answered[0] in (1, 2), f"the third request was handled while two were in flight: {answered}"
            writer.close()
    finally:
        host.kill()


def _children(pid: int) -> list[int]:
    from .pool import _descendants

    return _descendants(pid)


@slow
async def test_a_snapshot_over_the_cap_is_refused(daemon_factory: type[Daemon]) -> None:
    daemon = daemon_factory(daemon_extra="max_snapshot_mb = 1")
    daemon.start()
    data = random.Random(5).randbytes(3 << 19)  # 1.5 MiB
    snapshot_id = hashlib.sha256(data).hexdigest()
    async with await Client.connect(daemon.socket) as client:
        with pytest.raises(RemoteError) as refused:
            await client.snapshot_put(snapshot_id, data, chunk_size=256 << 10)
        assert refused.value.code == "invalid-params"
        assert "larger than this daemon accepts (1 MiB, daemon.max_snapshot_mb)" in refused.value.message
        assert not await client.snapshot_has(snapshot_id)
        assert list((daemon.data_dir / "snapshots").iterdir()) == []  # nothing of it left behind
        small = data[: 100 << 10]
        await client.snapshot_put(hashlib.sha256(small).hexdigest(), small)
        assert await client.snapshot_has(hashlib.sha256(small).hexdigest())


async def test_download_locks_are_dropped_once_unused(tmp_path: Path) -> None:
    """One lock per URL while it is fetched, none kept afterwards: a daemon that fetched a
    million distinct inputs holds no million locks."""
    app = web.Application()

    async def serve(request: web.Request) -> web.Response:
        return web.Response(body=f"file {request.match_info['n']}\n".encode())

    app.router.add_get("/{n}", serve)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        fetcher = InputFetcher(tmp_path / "cache", LocalOutputStore(tmp_path / "outputs"))
        urls = [f"http://127.0.0.1:{port}/{n}" for n in range(40)]
        files = await asyncio.gather(*(fetcher.fetch(url, 0) for url in urls + urls[:10]))
        assert [f[0].source.read_text() for f in files[:3]] == ["file 0\n", "file 1\n", "file 2\n"]
        assert len(fetcher._locks) == 0
    finally:
        await runner.cleanup()


# -- shutdown and outages ---------------------------------------------------------------------


@slow
async def test_sigterm_with_clients_connected_logs_no_traceback(daemon: Daemon, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", FILES)
    async with await Client.connect(daemon.socket) as setup:
        await setup.host_drain("local")
        e = await submit_repo(setup, repo, "hold")
    watcher = await Client.connect(daemon.socket)
    events = watcher.events(since=0)
    await events.__anext__()  # subscribed: the replay has begun
    reader, writer, decoder = await _raw_connect(daemon)
    writer.write(encode_frame(encode_message(Request(id=1, method="logs.follow", params={"id": e.id, "sub": 1}))))
    assert isinstance(await _next_message(reader, decoder, []), Response)  # following its log
    idle = await Client.connect(daemon.socket)
    assert daemon.terminate() == 0
    text = daemon.log_text()
    assert "shutting down" in text
    assert "Traceback" not in text and "CancelledError" not in text, text[-3000:]
    with contextlib.suppress(Exception):
        await events.aclose()
    for c in (watcher, idle):
        await c.close()
    writer.close()


@slow
async def test_a_host_outage_leaves_no_unclosed_session(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    """The host's sshd dies (its Docker socket forward with it) and comes back, twice, while an
    execution runs there: every client session of the old link is closed."""
    host, _key, known = start_lone_host(tmp_path)
    config = (f'[ssh]\nknown_hosts = "{known}"\nreconnect_min_seconds = 0.2\nreconnect_max_seconds = 1.0\n'
              "keepalive_seconds = 1\nkeepalive_count_max = 2\n" + host.config(pool="p"))
    daemon = daemon_factory(local_extra="enabled = false", extra_config=config)
    daemon.start()
    repo = make_repo(tmp_path / "repo", FILES)
    try:
        async with await Client.connect(daemon.socket) as client:
            await wait_for_host(client, host.name, {"ready"})
            e = await submit_repo(client, repo, "hold")
            await wait_for_status(client, e.id, {"started"})
            for _ in range(2):
                host.kill()
                await wait_for_host(client, host.name, {"unreachable"})
                host.start()
                await wait_for_host(client, host.name, {"ready"})
            assert (await client.get(e.id)).status == "started"
            await client.stop([e.id])
            await wait_for_status(client, e.id)
        assert daemon.terminate() == 0
    finally:
        host.kill()
    text = daemon.log_text()
    assert "Unclosed client session" not in text and "Unclosed connector" not in text, text[-3000:]


async def test_a_closed_docker_runtime_opens_no_new_session(docker_engine: None,
                                                             caplog: pytest.LogCaptureFixture) -> None:
    """What a host outage left behind: a runner or reconcile still holding the runtime of the
    dropped link called it after the link was closed, which opened a new client session on the
    dead socket that nobody closed ("Unclosed client session" when collected)."""
    runtime = DockerRuntime("/var/run/docker.sock", "robustness", where="the test engine")
    assert await runtime.ping()
    await runtime.close()  # the link dropped: Host._drop closed it
    with pytest.raises(EngineError, match="was closed"):
        await runtime.ping()
    del runtime
    gc.collect()
    await asyncio.sleep(0)
    assert "Unclosed" not in caplog.text  # neither the client session nor its connector


# -- identity ----------------------------------------------------------------------------------


async def test_a_connection_without_peer_credentials_is_refused(tmp_path: Path) -> None:
    """A transport with no SO_PEERCRED (here: a pair of pipes) is refused, never served as the
    daemon's own user."""
    config = parse_config(f'[daemon]\ndata_dir = "{tmp_path / "data"}"\nsocket = "{tmp_path / "s"}"\n'
                          "[local]\nenabled = false\n")
    store = await Store.open(tmp_path / "data" / "db.sqlite3")
    server = Server(Core(config, store), str(tmp_path / "s"), mode=0o660, group="", admins=[],
                    max_frame=config.daemon.max_frame_bytes)
    loop = asyncio.get_running_loop()
    to_daemon_r, to_daemon_w = os.pipe()
    from_daemon_r, from_daemon_w = os.pipe()
    try:
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), os.fdopen(to_daemon_r, "rb"))
        transport, protocol = await loop.connect_write_pipe(asyncio.streams.FlowControlMixin,
                                                           os.fdopen(from_daemon_w, "wb"))
        writer = asyncio.StreamWriter(transport, protocol, reader, loop)
        os.write(to_daemon_w, encode_frame(encode_message(Hello(client="pipe", major=1, minor=1))))
        await asyncio.wait_for(Connection(server, reader, writer).serve(), 30)
        received = b""
        while chunk := await asyncio.to_thread(os.read, from_daemon_r, 65536):
            received += chunk
        frames = FrameDecoder().feed(received)
        assert len(frames) == 1  # the refusal, then the end: no welcome
        refusal = decode_message(frames[0])
        assert isinstance(refusal, Error) and refusal.code == "permission-denied" and "SO_PEERCRED" in refusal.message
    finally:
        os.close(to_daemon_w)
        os.close(from_daemon_r)
        await store.close()
