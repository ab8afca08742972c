"""moto in server mode on loopback: a real S3-protocol endpoint over HTTP, for tests and benchmarks."""

from __future__ import annotations

import subprocess
import sys
import threading

from .pool import free_port


def start_moto() -> tuple[subprocess.Popen[bytes], str]:
    """Start the server and return it with its endpoint URL once it says it serves."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
                              stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    stream = server.stderr
    assert stream is not None
    for raw in stream:  # wait for the line that says it serves: an event, not a sleep
        if b"Running on" in raw:
            break
    else:
        raise AssertionError("moto server did not start")
    threading.Thread(target=lambda: [None for _ in stream], daemon=True).start()  # keep its pipe drained
    return server, f"http://127.0.0.1:{port}"
