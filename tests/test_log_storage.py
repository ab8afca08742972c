"""An ended execution's log is stored compressed in blocks, and reads exactly as the live one did.

Real daemon, process runtime, a printer of a few hundred kilobytes (two blocks): every read a user
or the TUI makes (head and tail, a line count, a byte range across a block boundary, search,
follow from an offset, the whole log) answers the same while it runs and once it is stored
compressed; a damaged compressed log gives an error that names it while the daemon goes on; and a
compression killed midway leaves the plain log, which the next daemon compresses.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from runyard.daemon.logstore import decompress_log, is_compressed, tmp_path
from runyard.protocol import Client, RemoteError
from runyard.protocol.logformat import HEADER_WIDTH

from .conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status

PRINTER = """\
import json, sys
for i in range(7000):
    if i % 7 == 0:
        print(f"warn {i} on stderr", file=sys.stderr)
    elif i % 10 == 0:
        print(json.dumps({"step": i, "loss": 1 / (i + 1)}))
    else:
        print(f"line {i} of the printer")
print("stderr done", file=sys.stderr, flush=True)
print("all printed", flush=True)
if sys.argv[1] != "-":
    open(sys.argv[1]).read()  # holds the execution live until the test opens the fifo
"""


def _printer_daemon(daemon_factory: type[Daemon], wait_on: str) -> tuple[Daemon, Path]:
    daemon = daemon_factory(local_extra='runtime = "process"\n')
    daemon.start()
    repo = make_repo(daemon.root / "repo", {"valohai.yaml": step_yaml("printer", f"python3 print.py {wait_on}"),
                                            "print.py": PRINTER})
    return daemon, repo


async def _cli(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    return await asyncio.to_thread(run_cli, daemon, *args)


async def _reads(client: Client, daemon: Daemon, execution_id: int, *, cli: bool = True) -> dict[str, Any]:
    """What a user sees of the log through the CLI and what the TUI asks through the protocol."""
    seen: dict[str, Any] = {}
    for name, args in {"head+tail+count": ["--head", "40", "--tail", "40"],
                       "grep": ["--grep", "line 4[0-9]*7 of", "-C", "1"]}.items() if cli else ():
        done = await _cli(daemon, "logs", str(execution_id), *args)
        assert done.returncode == 0, (name, done.stderr)
        seen[name] = done.stdout
    # What the CLI and the TUI ask through the protocol: the whole log page by page, a range across
    # the first block boundary, numbered tails, a line count, a search backwards with context.
    whole, offset = [], 0
    while True:
        page = await client.read_logs(execution_id, offset=offset, max_bytes=100_000)
        whole.append(page.data)
        if page.end <= offset or page.end >= page.size:
            break
        offset = page.end
    seen["whole"] = "".join(whole)
    ranged = await client.read_logs(execution_id, offset=250_000, max_bytes=50_000)
    tail = await client.read_logs(execution_id, tail=25)
    seen["range"] = (ranged.data, ranged.start, ranged.end, ranged.size)
    seen["tail"] = (tail.data, tail.start, tail.end, tail.first_line)
    seen["stderr tail"] = (await client.read_logs(execution_id, tail=5, stream="stderr")).data
    seen["count"] = await client.call("logs.count", {"id": execution_id})
    seen["search back"] = [(m.offset, m.line, m.record, [r.line for r in m.before]) for m in (
        await client.search_logs(execution_id, "warn 3[0-9]*", regex=True, backward=True, context=2, limit=30)).matches]
    return seen


async def _until(check: Any, what: str, seconds: float = 60) -> None:
    """The compression runs in the daemon after the execution ended; no event says when it is done."""
    deadline = time.monotonic() + seconds
    while not check():
        assert time.monotonic() < deadline, f"{what} did not happen within {seconds} s"
        await asyncio.sleep(0.05)


def _printed(whole: str) -> int:
    return sum(len(record) - HEADER_WIDTH + 1 for record in whole.split("\n")[:-1])


async def test_an_ended_log_is_stored_compressed_and_reads_as_the_live_one(daemon_factory: type[Daemon]) -> None:
    daemon, repo = _printer_daemon(daemon_factory, "GO")
    fifo = daemon.root / "go"
    os.mkfifo(fifo)
    (repo / "valohai.yaml").write_text(step_yaml("printer", f"python3 print.py {fifo}"))
    async with await Client.connect(daemon.socket, client_name="tests") as client:
        e = await submit_repo(client, repo, "printer", adhoc=True)
        blocks: list[str] = []
        printed = asyncio.Event()

        async def follow() -> None:  # as the TUI does from the start, across the end and the compression
            async for block in client.follow_logs(e.id):
                blocks.append(block.data)
                if "all printed" in block.data:
                    printed.set()

        follower = asyncio.create_task(follow())
        await asyncio.wait_for(printed.wait(), 120)
        live = await _reads(client, daemon, e.id)
        assert "stderr done" in live["whole"] and live["count"] == 7002, live["count"]
        middle = live["range"][2]  # a record boundary past the first block
        fd = os.open(fifo, os.O_WRONLY)  # the printer reads its end of the fifo and exits
        os.close(fd)
        await asyncio.wait_for(follower, 120)
        whole = "".join(blocks)
        assert (await wait_for_status(client, e.id)).status == "complete"

        path = daemon.data_dir / "logs" / f"{e.id}.log"
        # The live log's line index goes just after the compressed log takes its place.
        index = path.with_name(path.name + ".idx")
        await _until(lambda: is_compressed(path) and not index.exists(), "compressing the ended log")
        stored = path.stat().st_size
        assert stored <= 0.5 * _printed(whole), (stored, _printed(whole), len(whole))
        assert not tmp_path(path).exists()
        assert path.stat().st_mode & 0o777 == 0o640  # as private as the plain log was

        ended = await _reads(client, daemon, e.id)
        assert ended == live
        assert [b.data async for b in client.follow_logs(e.id)] and "".join(
            [b.data async for b in client.follow_logs(e.id, middle)]) == whole[middle:]
        assert (await client.get(e.id)).log_size == len(whole.encode())

        # A damaged compressed log: every read names it; the daemon goes on serving.
        raw = bytearray(path.read_bytes())
        raw[100:400] = b"\xff" * 300
        path.write_bytes(bytes(raw))
        for args in ([], ["--grep", "line"]):
            broken = await _cli(daemon, "logs", str(e.id), *args)
            assert broken.returncode != 0 and f"the stored log {path} is damaged: block 0" in broken.stderr, (
                args, broken.stderr)
        try:
            async for _ in client.follow_logs(e.id):
                pass
            raise AssertionError("following a damaged log ended without an error")
        except RemoteError as exc:
            assert f"the stored log {path} is damaged: block 0" in str(exc)
        path.write_bytes(bytes(raw[:-12]))  # cut short
        try:
            await client.read_logs(e.id, tail=3)
            raise AssertionError("reading a log cut short gave no error")
        except RemoteError as exc:
            assert "its end marker is missing" in str(exc)
        listed = await _cli(daemon, "list")
        assert listed.returncode == 0 and (await client.get(e.id)).status == "complete"


async def test_a_compression_killed_midway_leaves_the_plain_log_and_the_next_daemon_compresses_it(
        daemon_factory: type[Daemon]) -> None:
    daemon, repo = _printer_daemon(daemon_factory, "-")
    async with await Client.connect(daemon.socket, client_name="tests") as client:
        e = await submit_repo(client, repo, "printer")
        assert (await wait_for_status(client, e.id)).status == "complete"
        path = daemon.data_dir / "logs" / f"{e.id}.log"
        await _until(lambda: is_compressed(path), "compressing the ended log")
        before = await _reads(client, daemon, e.id)
        protocol_only = await _reads(client, daemon, e.id, cli=False)
    daemon.kill9()
    # As a daemon killed between recording the end and compressing leaves it: plain. Then a
    # compression killed after writing its first block.
    decompress_log(path)
    plain = path.read_bytes()
    killed = subprocess.run(
        [sys.executable, "-c", "import os, signal, sys\nfrom pathlib import Path\n"
         "from runyard.daemon.logstore import compress_log\n"
         "compress_log(Path(sys.argv[1]), after_block=lambda n: os.kill(os.getpid(), signal.SIGKILL))\n",
         str(path)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    assert tmp_path(path).stat().st_size > 0 and path.read_bytes() == plain

    daemon.start()
    async with await Client.connect(daemon.socket, client_name="tests") as client:
        assert await _reads(client, daemon, e.id, cli=False) == protocol_only  # plain, or compressed already
        await _until(lambda: is_compressed(path) and not tmp_path(path).exists(),
                     "the restarted daemon compressing the log left plain")
        assert await _reads(client, daemon, e.id) == before
