"""Bad input gets a clear answer and the daemon keeps serving everyone: frames, metadata, slow clients."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from pathlib import Path

import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from runyard.protocol import Client
from runyard.protocol.framing import encode_frame
from runyard.protocol.messages import PROTOCOL_MAJOR, PROTOCOL_MINOR, Hello, Request, encode_message

from .conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status

pytestmark = pytest.mark.slow

WEIRD = r"""
import json, os, sys
print('{"nan": NaN, "inf": Infinity, "ninf": -Infinity, "step": 1}', flush=True)
print('{"huge": ' + '9' * 400 + ', "step": 2}', flush=True)
print('{"deep": ' + '[' * 5000 + ']' * 5000 + '}', flush=True)
print('{"big": "' + 'x' * (10 * 1024 * 1024) + '"}', flush=True)
print('y' * (10 * 1024 * 1024), flush=True)
sys.stdout.buffer.write(b'binary \xff\xfe\x00\x01 and \xc3\x28 bad utf-8\n')
sys.stdout.buffer.write(os.urandom(4096).replace(b'\n', b'.') + b'\n')
sys.stdout.flush()
print('{"ok": 1, "step": 3}', flush=True)
"""


async def test_hostile_metadata_and_output_are_kept_as_lines(client: Client, daemon: Daemon, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("weird", "python3 weird.py"),
                                         "weird.py": WEIRD})
    e = await wait_for_status(client, (await submit_repo(client, repo, "weird")).id, timeout=120)
    assert e.status == "complete", e
    points = json.loads(run_cli(daemon, "metadata", str(e.id), "--json").stdout)
    by_step = {p["values"].get("step"): p["values"] for p in points["points"]} if isinstance(points, dict) else {
        p["values"].get("step"): p["values"] for p in points}
    assert by_step[3]["ok"] == 1
    assert by_step[1]["nan"] is None and by_step[1]["inf"] is None  # not numbers JSON can carry: null
    assert by_step[2]["huge"] == int("9" * 400)  # kept exactly as printed
    assert not any("deep" in values or "big" in values for values in by_step.values())
    # every line is in the log, the 10 MB ones whole
    view = await client.get(e.id)
    assert view.log_size > 20 * 1024 * 1024
    tail = await client.read_logs(e.id, tail=4)
    lines = [line[33:] for line in tail.data.split("\n")[:-1]]
    # a 10 MB line reaches clients cut, saying so; the stored log keeps it whole
    assert lines[0].startswith("yyyy") and lines[0].endswith("more bytes of this line not shown]")
    assert len(lines[0]) < 2 << 20
    assert lines[1].startswith("binary \ufffd\ufffd\x00\x01 and \ufffd( bad utf-8")
    assert lines[-1] == '{"ok": 1, "step": 3}'
    printed = run_cli(daemon, "logs", str(e.id))  # the CLI reads it all by ranges
    assert printed.returncode == 0 and printed.stdout.endswith('{"ok": 1, "step": 3}\n')
    assert (await client.list_executions(limit=5))[0].id == e.id  # and it serves on


def _raw(path: str) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(path)
    sock.settimeout(5)
    return sock


def _hello() -> bytes:
    return encode_frame(encode_message(Hello(client="fuzz", major=PROTOCOL_MAJOR, minor=PROTOCOL_MINOR)))


frames = st.one_of(
    st.binary(max_size=300).map(lambda b: struct.pack(">I", len(b)) + b),  # well framed, random payload
    st.binary(max_size=64),  # not even a frame
    st.integers(5 << 20, 2**32 - 1).map(lambda n: struct.pack(">I", n)),  # claims to be huge
    st.builds(  # a request of the right shape with wrongly typed or random params
        lambda i, method, params: encode_frame(msgspec.json.encode({"type": "request", "id": i, "method": method,
                                                                    "params": params})),
        st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=5), st.none()),
        st.sampled_from(["executions.list", "executions.get", "executions.stop", "logs.read", "logs.follow",
                         "executions.submit", "snapshots.put", "hosts.drain", "nope", ""]),
        st.dictionaries(st.sampled_from(["id", "ids", "limit", "status", "offset", "tail", "step", "sub", "data"]),
                        st.one_of(st.integers(-(2**70), 2**70), st.text(max_size=20), st.none(),
                                  st.lists(st.integers(), max_size=3), st.floats()), max_size=4),
    ),
    st.builds(lambda b, cut: encode_frame(b)[: cut], st.binary(min_size=1, max_size=100), st.integers(0, 50)),
)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(frames, min_size=1, max_size=12), greet=st.booleans())
def test_random_frames_never_stop_the_daemon(daemon: Daemon, batch: list[bytes], greet: bool) -> None:
    sock = _raw(daemon.socket)
    try:
        if greet:
            sock.sendall(_hello())
        for frame in batch:
            sock.sendall(frame)
        sock.shutdown(socket.SHUT_WR)
        while sock.recv(1 << 16):  # whatever it answers, until it closes our connection
            pass
    except (ConnectionError, BrokenPipeError):
        pass  # it may close on us, as it does for an oversized frame
    finally:
        sock.close()
    # and a well-behaved client is served right after
    check = _raw(daemon.socket)
    try:
        check.sendall(_hello())
        check.sendall(encode_frame(encode_message(Request(id=1, method="executions.list", params={"limit": 1}))))
        received = b""
        while b'"response"' not in received:
            chunk = check.recv(1 << 16)
            assert chunk, "the daemon closed a good client's connection"
            received += chunk
    finally:
        check.close()


async def test_a_client_that_stops_reading_is_dropped_and_nobody_waits_for_it(daemon_factory: type[Daemon],
                                                                            tmp_path: Path) -> None:
    daemon = daemon_factory(daemon_extra="slow_client_seconds = 2")
    daemon.start()
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("flood", "yes flooding-the-log | head -n 3000000")
                                         + step_yaml("quick", "echo quick")})
    async with await Client.connect(daemon.socket) as client:
        flood = await wait_for_status(client, (await submit_repo(client, repo, "flood")).id, {"started"})
        stuck = _raw(daemon.socket)
        stuck.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        stuck.sendall(_hello())
        stuck.sendall(encode_frame(encode_message(Request(id=1, method="logs.follow",
                                                          params={"id": flood.id, "sub": 1, "offset": 0}))))
        # ... and it reads nothing from here on. Everyone else is served meanwhile:
        quick = await wait_for_status(client, (await submit_repo(client, repo, "quick")).id, timeout=60)
        assert quick.status == "complete"
        deadline = time.monotonic() + 60
        while "dropping client" not in daemon.log_text():  # the daemon's log says when it lets go
            assert time.monotonic() < deadline, "the stuck client was never dropped"
            await asyncio.sleep(0.2)
        assert (await client.get(flood.id)).status in ("started", "complete")
        stuck.close()
        await client.stop([flood.id])
