"""After a container ends, the runner asks the engine for its log again only when the stored log
lacks the engine's last line: a fast printer's whole log is not read (and decoded by dockerd) twice.

The daemon talks to the real engine through a relay that notes each request's path, so the test sees
which log reads the engine served, and the stored log is checked line for line against what was printed.
"""

from __future__ import annotations

import contextlib
import re
import socket
import socketserver
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from runyard.protocol import Client
from runyard.protocol.logformat import parse_records
from runyard.protocol.methods import LogsReadResult

from .conftest import Daemon, make_repo, step_yaml, submit_repo, wait_for_status

pytestmark = pytest.mark.slow

ENGINE = "/var/run/docker.sock"
LINES = 20_000
STEPS = (
    step_yaml("fast", f"python3 -c \"import sys; [print(f'line {{i}}') for i in range({LINES})];"
                      " print('warned', file=sys.stderr)\"")
    # A last line without a newline: only the final read stores it, so that read must still happen.
    + step_yaml("open-end", "printf 'one\\ntwo\\nno newline'")
)
_REQUEST = re.compile(rb"(?:GET|POST|DELETE|HEAD|PUT) (\S+) HTTP/1\.[01]\r\n")


class _Relay(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    paths: list[str]


class _Pipe(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        engine = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        engine.connect(ENGINE)
        client: socket.socket = self.request
        server: _Relay = self.server  # type: ignore[assignment]

        def back() -> None:
            with contextlib.suppress(OSError):  # the daemon may close its end first
                while data := engine.recv(1 << 16):
                    client.sendall(data)
                client.shutdown(socket.SHUT_WR)

        threading.Thread(target=back, daemon=True).start()
        seen = b""
        while data := client.recv(1 << 16):
            seen = (seen + data)[-4096:]
            for match in _REQUEST.finditer(seen):
                server.paths.append(match.group(1).decode())
            seen = seen[seen.rfind(b"\r\n") + 2 :] if _REQUEST.search(seen) else seen
            engine.sendall(data)
        with contextlib.suppress(OSError):
            engine.shutdown(socket.SHUT_WR)


@pytest.fixture
def relay() -> Iterator[_Relay]:
    path = Path(tempfile.mkdtemp(prefix="ry-relay-", dir="/tmp")) / "docker.sock"
    server = _Relay(str(path), _Pipe)
    server.paths = []
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def _log_reads(relay: _Relay, container_id: str) -> list[str]:
    return [p for p in relay.paths if f"/containers/{container_id}/logs?" in p]


def _stored(read: LogsReadResult) -> list[str]:
    records = [r for r in parse_records(read.data) if r.stream != "system"]
    return [r.text for r in records if r.stream == "stdout"] + [r.text for r in records if r.stream == "stderr"]


async def test_the_engine_serves_the_log_once_and_the_stored_log_is_whole(
        daemon_factory: type[Daemon], relay: _Relay, tmp_path: Path) -> None:
    daemon = daemon_factory(local_extra=f'docker_socket = "{relay.server_address}"\n')
    daemon.start()
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": STEPS})
    client = await Client.connect(daemon.socket, client_name="tests")
    try:
        fast = await submit_repo(client, repo, "fast")
        row = await wait_for_status(client, fast.id)
        assert row.status == "complete"
        assert row.container_id
        printed = [f"line {i}" for i in range(LINES)] + ["warned"]
        assert _stored(await client.read_logs(fast.id, offset=0, max_bytes=8 << 20)) == printed
        reads = _log_reads(relay, row.container_id)
        # One follow read from the start, one short tail to check the end: nothing read twice.
        assert [r for r in reads if "follow=1" in r] and all("follow=1" in r or "tail=" in r for r in reads), reads

        # A last line left open is stored by the final read, which the check sends for.
        open_end = await submit_repo(client, repo, "open-end")
        row = await wait_for_status(client, open_end.id)
        assert row.status == "complete"
        assert _stored(await client.read_logs(open_end.id, offset=0)) == ["one", "two", "no newline"]
    finally:
        await client.close()
