"""[[notify]] webhooks against a real HTTP server on loopback."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import queue
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from runyard.protocol import Client
from tests.conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status

Delivery = tuple[str, dict[str, str], bytes]


def serve(answers: dict[str, list[int]]) -> tuple[ThreadingHTTPServer, queue.Queue[Delivery]]:
    """Records every POST; answers each path with its scripted codes, then 200."""
    got: queue.Queue[Delivery] = queue.Queue()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            got.put((self.path, dict(self.headers), body))
            codes = answers.get(self.path, [])
            self.send_response(codes.pop(0) if codes else 200)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *_: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, got


async def test_webhooks_are_signed_retried_filtered_and_a_hung_endpoint_delays_nothing(
        tmp_path: Path, daemon_factory: type[Daemon]) -> None:
    server, got = serve({"/a": [500]})
    hung = socket.socket()  # listens but never answers: a POST to it waits until its timeout
    hung.bind(("127.0.0.1", 0))
    hung.listen(16)
    key = tmp_path / "hook.key"
    key.write_text("s3cret-key\n")
    key.chmod(0o600)
    base = f"http://127.0.0.1:{server.server_address[1]}"
    hooks = f"""
        [[notify]]
        url = "http://127.0.0.1:{hung.getsockname()[1]}/hung"
        events = ["ended"]
        timeout_seconds = 300
        retries = 0
        [[notify]]
        url = "{base}/a"
        events = ["failed"]
        secret_file = "{key}"
        retries = 2
        backoff_seconds = 0.05
        [[notify]]
        url = "{base}/b"
        events = ["ended"]
        users = ["someone-else"]
        [[notify]]
        url = "{base}/d"
        events = ["complete", "stopped"]
        [[notify]]
        url = "{base}/t"
        events = ["task-failed"]
        """
    daemon = daemon_factory(local_extra='runtime = "process"\n', extra_config=hooks.replace("\n        ", "\n"))
    try:
        daemon.start()
        repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("fail", "exit 3")
                                             + step_yaml("failx", "exit 3", "- name: x\n  type: integer\n  default: 1")
                                             + step_yaml("ok", "echo done") + step_yaml("hold", "sleep 600")})
        client = await Client.connect(daemon.socket, client_name="tests")
        try:
            failed = await wait_for_status(client, (await submit_repo(client, repo, "fail")).id)
            assert failed.status == "error"
            first = await asyncio.to_thread(got.get, timeout=60)
            again = await asyncio.to_thread(got.get, timeout=60)
            # Answered 500 at first, then delivered again: the same body, signed with the key.
            assert first[0] == again[0] == "/a" and first[2] == again[2]
            assert first[1]["X-Runyard-Delivery"] == again[1]["X-Runyard-Delivery"]
            expected = "sha256=" + hmac.new(b"s3cret-key", first[2], hashlib.sha256).hexdigest()
            assert first[1]["X-Runyard-Signature"] == expected
            sent = json.loads(first[2])
            assert sent["events"] == ["ended", "failed"]
            assert sent["execution"]["id"] == failed.id and sent["execution"]["exit_code"] == 3
            assert sent["execution"]["owner"] == failed.owner

            # The hung endpoint holds its own delivery only; the daemon and the others go on.
            ok = await wait_for_status(client, (await submit_repo(client, repo, "ok")).id)
            held = await wait_for_status(client, (await submit_repo(client, repo, "hold")).id, {"started"})
            assert run_cli(daemon, "stop", str(held.id)).returncode == 0
            seen = [await asyncio.to_thread(got.get, timeout=60) for _ in range(2)]
            assert [(path, json.loads(body)["execution"]["id"]) for path, _, body in seen] == [
                ("/d", ok.id), ("/d", held.id)]
            assert json.loads(seen[1][2])["events"] == ["ended", "stopped"]
            assert "X-Runyard-Signature" not in seen[0][1]  # no secret_file, no signature
            assert got.empty()  # /b's user filter matched no one

            # A task's end: /t hears of the task as a whole (its children go to /a as executions).
            made = json.loads(run_cli(daemon, "task", "run", "failx", "--grid", "x=1,2", "--on-child-error",
                                      "continue-and-error", "--json", cwd=repo).stdout)
            for _ in range(10):
                path, _headers, body = await asyncio.to_thread(got.get, timeout=60)
                if path == "/t":
                    break
            else:
                raise AssertionError("no task-failed notification")
            told = json.loads(body)
            assert told["events"] == ["task-ended", "task-failed"]
            assert (told["task"]["id"], told["task"]["status"], told["task"]["owner"]) == (made["id"], "error", "root")
        finally:
            await client.close()
    finally:
        server.shutdown()
        hung.close()


def test_a_missing_secret_file_stops_the_start_with_its_name(daemon_factory: type[Daemon]) -> None:
    daemon = daemon_factory(extra_config='[[notify]]\nurl = "http://127.0.0.1:9/x"\nsecret_file = "/nonexistent/key"\n')
    try:
        daemon.start()
    except AssertionError as exc:
        assert "notify secret_file /nonexistent/key: No such file or directory" in str(exc)
    else:
        raise AssertionError("the daemon started without its webhook secret")
    checked = run_cli(daemon, "daemon", "--config", str(daemon.root / "config.toml"), "--check-config")
    assert checked.returncode == 2 and "/nonexistent/key" in checked.stderr
