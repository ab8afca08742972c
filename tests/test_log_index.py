"""Log line counts from the persistent line index, and Docker's long lines across stream restarts
(the decoder and the resume point together, against a Docker log written out frame by frame)."""

from __future__ import annotations

import asyncio
import gc
import random
import struct
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

from runyard.daemon.logfile import LineIndex, LogFile, index_path, marks_path, remove_log
from runyard.daemon.logstream import DockerLogDecoder, normalize_timestamp
from runyard.protocol.logformat import parse_records

TS = "2026-11-21T12:00:00.000000001Z"


def _write_log(path: Path, lines: int) -> bytes:
    data = "".join(f"{'E' if i % 4 == 0 else 'O'} {TS} line {i}\n" for i in range(lines)).encode()
    path.write_bytes(data)
    return data


def test_concurrent_counts_from_threads_are_exact(tmp_path: Path) -> None:
    """The server counts in worker threads, several at once on the same log: each count is exact."""
    path = tmp_path / "1.log"
    lines = 1_500_000
    _write_log(path, lines)
    log = LogFile(path)
    log.finished = True

    def ask(i: int) -> tuple[int, int]:
        if i % 2:
            data, start, end, before = log.tail_numbered(3)
            assert end == log.size and data.count(b"\n") == 3
            return before + 3, start
        return log.line_count(), -1

    with ThreadPoolExecutor(8) as pool:
        answers = list(pool.map(ask, range(24)))
    assert {count for count, _ in answers} == {lines}
    assert log.line_count() == lines  # and no wrong count stayed behind
    assert log.line_count(0) == 0 and log.line_count(log.size - 1) == lines - 1
    empty = tmp_path / "empty.log"
    empty.write_bytes(b"")
    assert LogFile(empty).line_count(10) == 0 and LogFile(tmp_path / "none.log").line_count(10) == 0


def test_a_reopened_finished_log_is_counted_from_its_index(tmp_path: Path) -> None:
    path = tmp_path / "2.log"
    raw = _write_log(path, 400_000)
    assert LogFile(path).line_count() == 400_000
    assert index_path(path).exists()
    gc.collect()  # no LogFile of it left: the next one loads the index from its file
    reopened = LineIndex(path)
    assert reopened.count(len(raw)) == 400_000
    assert reopened.scanned == 0  # read from the index file: the log was not counted again
    middle = raw.index(b"line 123456\n") + len(b"line 123456\n")
    assert reopened.count(middle) == 123_457

    # An index that does not belong to its log (garbage, or the log replaced) is built again.
    index_path(path).write_bytes(b"garbage" * 100)
    assert LineIndex(path).count(len(raw)) == 400_000
    path.unlink()
    raw = _write_log(path, 1000)
    fresh = LineIndex(path)
    assert fresh.count(len(raw)) == 1000


def test_an_appended_log_keeps_exact_counts_and_stream_counts(tmp_path: Path) -> None:
    path = tmp_path / "3.log"
    _write_log(path, 100_000)
    log = LogFile(path)
    log.open_for_append()
    assert log.count_by_stream() == {"O": 75_000, "E": 25_000, "S": 0}
    for i in range(5):
        asyncio.run(log.append(f"O {TS} more {i}\n" * 30_000 + f"S {TS} note\n"))
        assert log.line_count() == 100_000 + (i + 1) * 30_001
        assert log.count_by_stream() == {"O": 75_000 + (i + 1) * 30_000, "E": 25_000, "S": i + 1}
    size = log.size
    log.base = size  # a new attempt counts from here
    asyncio.run(log.append(f"E {TS} again\n"))
    assert log.count_by_stream() == {"O": 0, "E": 1, "S": 0}
    log.close()
    remove_log(path)
    assert not path.exists() and not index_path(path).exists()


# -- long lines: a Docker log and the daemon reading it in pieces -----------------------------------

FRAGMENT = 16 * 1024
START = datetime(2026, 11, 21, 12, 0, 0, tzinfo=UTC)


def _ts(seconds: float) -> str:
    moment = START + timedelta(seconds=seconds)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _frame(stream: int, ts: str, payload: bytes) -> bytes:
    # Docker trims trailing zeros of the fraction: so do we, half the time
    shown = ts.rstrip("Z").rstrip("0").rstrip(".") + "Z" if len(payload) % 2 else ts
    body = shown.encode() + b" " + payload
    return struct.pack(">BxxxI", stream, len(body)) + body


def _docker_log(rng: random.Random) -> tuple[list[tuple[int, str, bytes]], list[str], list[str]]:
    """Entries (stream, time, payload) in Docker's order, and the lines each stream should store.

    stdout ticks twice a second for 200 s; stderr draws a progress bar with \\r for 150 s in
    fragments (all stamped with the first one's time) and ends it; stdout also prints one long line.
    """
    entries: list[tuple[int, str, bytes]] = []
    stdout: list[str] = []
    stderr: list[str] = []
    bar_start = _ts(5.0)
    long_start: str | None = None
    for step in range(400):
        t = step * 0.5
        if 10 <= step < 310:  # the bar: one fragment of redraws every half second
            k = step - 9
            redraw = (f"\rprogress {k:04d} " + "#" * (FRAGMENT - 16)).encode()
            entries.append((2, bar_start, redraw[:FRAGMENT]))
        if step == 310:
            entries.append((2, bar_start, b"\n"))
            stderr.append(f"progress {300:04d} " + "#" * (FRAGMENT - 16))
        if step in (100, 101, 102):  # a long stdout line in three fragments, over a second: no tick
            long_start = long_start or _ts(t + 0.01)  # can come between them on the same pipe
            entries.append((1, long_start, b"x" * FRAGMENT + (b"\n" if step == 102 else b"")))
            if step < 102:
                continue
            stdout.append("x" * FRAGMENT * 3)
        entries.append((1, _ts(t + 0.02), f"tick {step}\n".encode()))
        stdout.append(f"tick {step}")
        if rng.random() < 0.2 and not 10 <= step <= 310:  # not while the bar is drawn on the same pipe
            entries.append((2, _ts(t + 0.03), f"warn {step}\n".encode()))
            stderr.append(f"warn {step}")
    return entries, stdout, stderr


def _read(log: LogFile, entries: list[tuple[int, str, bytes]], available: int, *, final: bool,
          rng: random.Random) -> None:
    """What DockerRuntime.read_logs and the runner do, against the first ``available`` entries."""
    resume = log.resume_point()
    decoder = DockerLogDecoder(resume=resume)
    since = resume.since
    stream = b"".join(_frame(s, ts, p) for s, ts, p in entries[:available] if not since or ts >= since)
    at = 0
    while at < len(stream):
        step = rng.choice([7, 100, 5000, 70_000, 1 << 20])
        decoded = decoder.feed(stream[at : at + step])
        at += step
        log.mark_long_lines("P", decoded.started)
        asyncio.run(log.append(b"".join(decoded.records)))
        log.mark_long_lines("D", decoded.ended)
    if final:
        decoded = decoder.flush()
        asyncio.run(log.append(b"".join(decoded.records)))
        log.mark_long_lines("D", decoded.ended)


def test_long_lines_survive_any_stream_restarts(tmp_path: Path) -> None:
    for seed in range(12):
        rng = random.Random(seed)
        entries, stdout, stderr = _docker_log(rng)
        path = tmp_path / f"{seed}.log"
        log = LogFile(path)
        log.open_for_append()
        # The stream breaks off (a daemon kill, a host outage) at a few random entries, then is read
        # to the end once the container ended.
        breaks = sorted(rng.sample(range(len(entries)), 4))
        for available in breaks:
            _read(log, entries, available, final=False, rng=rng)
        _read(log, entries, len(entries), final=True, rng=rng)
        lines = parse_records(path.read_text())
        assert [line.text for line in lines if line.stream == "stdout"] == stdout, seed
        assert [line.text for line in lines if line.stream == "stderr"] == stderr, seed
        # Stored with the first fragment's time, as Docker stamps every fragment
        assert [line.time for line in lines if line.text.startswith("progress")] == [normalize_timestamp(_ts(5.0))]


def test_a_progress_bar_that_never_ends_its_line_keeps_the_decoder_small() -> None:
    decoder = DockerLogDecoder()
    ts = _ts(0)
    tracemalloc.start()
    try:
        for k in range(2000):  # 2000 fragments of 16 KiB: 32 MiB of one unending line
            redraw = (f"\rprogress {k:05d} " + "#" * 9000).encode()
            decoder.feed(_frame(2, ts, (redraw * 2)[:FRAGMENT]))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20
    out = decoder.feed(_frame(2, ts, b"\n"))
    text = parse_records(b"".join(out.records).decode())[0].text
    redraw = f"\rprogress {1999:05d} " + "#" * 9000
    assert text == (redraw * 2)[:FRAGMENT].rsplit("\r", 1)[-1]


def test_a_stale_pending_mark_only_widens_the_window(tmp_path: Path) -> None:
    """Killed after storing a long line but before marking it done: nothing is stored twice."""
    path = tmp_path / "5.log"
    log = LogFile(path)
    log.open_for_append()
    records = [f"O {_ts(i)} tick {i}\n" for i in range(100)]
    asyncio.run(log.append("".join(records)))
    log.mark_long_lines("P", [("E", _ts(20))])
    asyncio.run(log.append(f"E {_ts(20)} progress done\n" + f"O {_ts(100)} tick 100\n"))
    point = log.resume_point()
    assert point.since == _ts(20)
    assert (point.stdout, point.stderr) == (81, 1)
    assert marks_path(path).exists()
