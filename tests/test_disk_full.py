"""A full disk under the data directory: clear errors, nothing corrupted, and work resumes once space is freed.

The data directory is a small tmpfs of its own (the test runs as root, as CI does).
"""

from __future__ import annotations

import asyncio
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runyard.protocol import Client, RemoteError
from runyard.protocol.logformat import parse_records

from .conftest import Daemon, make_repo, step_yaml, submit_repo, wait_for_status

pytestmark = pytest.mark.slow

LINES = 300_000


@pytest.fixture
def small_disk_daemon(daemon_factory: type[Daemon]) -> Iterator[Daemon]:
    daemon = daemon_factory()
    daemon.data_dir.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=40m", "tmpfs", str(daemon.data_dir)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.fail(f"cannot mount a small tmpfs for the data directory (needs root): {mounted.stderr.strip()}")
    try:
        daemon.start()
        yield daemon
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
        subprocess.run(["umount", "-l", str(daemon.data_dir)], capture_output=True)


async def test_a_full_data_directory_pauses_and_loses_nothing(small_disk_daemon: Daemon, tmp_path: Path) -> None:
    daemon = small_disk_daemon
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("chatty", f"seq 1 {LINES}")})
    filler = daemon.data_dir / "filler"
    async with await Client.connect(daemon.socket) as client:
        # Leave about 4 MiB: the log of this execution needs about 13 MiB.
        free = _free(daemon.data_dir)
        filler.write_bytes(b"\0" * (free - (4 << 20)))
        e = await submit_repo(client, repo, "chatty")
        deadline = time.monotonic() + 60
        while "is full; waiting for free space" not in daemon.log_text():  # the daemon's log says so
            assert time.monotonic() < deadline, "the daemon never noticed the full disk"
            await asyncio.sleep(0.2)
        # Reading still works; a write is refused with an error that says what is wrong.
        assert (await client.get(e.id)).status == "started"
        try:
            extra = await client.submit(step="chatty", snapshot=e.snapshot, title="while full")
        except RemoteError as exc:
            assert "data directory" in exc.message and "is full" in exc.message, exc.message
        else:
            await client.stop([extra.id])  # it found room after all; it is not what this test follows
        filler.unlink()  # space again
        final = await wait_for_status(client, e.id, timeout=120)
        assert final.status == "complete", final
        texts: list[str] = []
        offset = 0
        while True:
            part = await client.read_logs(e.id, offset=offset, max_bytes=4 << 20)
            texts += [r.text for r in parse_records(part.data) if r.stream == "stdout"]
            if part.end >= part.size:
                break
            offset = part.end
        assert texts == [str(n) for n in range(1, LINES + 1)]  # every line, once, in order
    daemon.terminate()
    db = sqlite3.connect(daemon.data_dir / "runyard.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    db.close()


def _free(path: Path) -> int:
    import os

    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize
