"""Fast checks of the pure parts: framing, log decoding, log files, config, steps, snapshots."""

from __future__ import annotations

import asyncio
import struct
from pathlib import Path

import pytest

from runyard.daemon.config import ConfigError, parse_config
from runyard.daemon.logfile import LogFile
from runyard.daemon.logstream import DockerLogDecoder, ResumePoint, metadata_of, normalize_timestamp
from runyard.daemon.snapshots import SnapshotError, SnapshotStore, snapshot_commit, snapshot_worktree
from runyard.daemon.steps import StepError, lint_text, load_config, prepare_step
from runyard.protocol.framing import FrameDecoder, FrameTooLarge, encode_frame
from runyard.protocol.logformat import parse_records

from .conftest import git, make_repo


def frame(stream: int, ts: str, text: bytes) -> bytes:
    payload = ts.encode() + b" " + text
    return struct.pack(">BxxxI", stream, len(payload)) + payload


TS = "2026-11-21T12:00:00.000000001Z"


def test_frame_decoder_handles_split_and_joined_frames() -> None:
    data = encode_frame(b"one") + encode_frame(b"two")
    decoder = FrameDecoder()
    assert decoder.feed(data[:5]) == []
    assert decoder.feed(data[5:]) == [b"one", b"two"]
    with pytest.raises(FrameTooLarge):
        FrameDecoder(max_frame=10).feed(encode_frame(b"x" * 11, max_frame=100))


def test_docker_decoder_streams_partials_and_carriage_returns() -> None:
    decoder = DockerLogDecoder()
    short_ts = "2026-11-21T12:00:00.5Z"  # Docker trims trailing zeros
    raw = (frame(1, TS, b"hello\n") + frame(2, TS, b"oops\n") + frame(1, TS, b"long " * 3)
           + frame(1, TS, b"end\n") + frame(1, TS, b"10%\r50%\r100%\r\n") + frame(1, short_ts, b'{"a": 1}\n')
           + frame(1, TS, b"no newline"))
    first, second = decoder.feed(raw[:7]), decoder.feed(raw[7:])
    records = b"".join(first.records + second.records).decode()
    assert [(line.stream, line.text) for line in parse_records(records)] == [
        ("stdout", "hello"), ("stderr", "oops"), ("stdout", "long long long end"), ("stdout", "100%"),
        ("stdout", '{"a": 1}')]
    assert parse_records(records)[-1].time == "2026-11-21T12:00:00.500000000Z"
    assert second.candidates == [("2026-11-21T12:00:00.500000000Z", '{"a": 1}')]
    assert b"".join(decoder.flush().records).decode() == f"O {TS} no newline\n"


def test_docker_decoder_skips_exactly_the_stored_lines_and_keeps_bad_utf8() -> None:
    decoder = DockerLogDecoder(resume=ResumePoint(since=TS, stdout=1, stderr=1))
    decoded = decoder.feed(frame(1, TS, b"a\n") + frame(2, TS, b"b\n") + frame(1, TS, b"c\xff\n"))
    assert decoded.records == [f"O {TS} c".encode() + b"\xff\n"]  # the runner replaces bad bytes per batch


def test_timestamps_are_fixed_width() -> None:
    assert normalize_timestamp("2026-11-21T12:00:00.5Z") == "2026-11-21T12:00:00.500000000Z"


def test_metadata_lines() -> None:
    assert metadata_of('{"loss": 0.5}') == {"loss": 0.5}
    assert metadata_of('{"loss": NaN}') is not None
    assert metadata_of("[1, 2]") is None
    assert metadata_of("{not json") is None
    assert metadata_of("plain") is None


def test_logfile_head_tail_stream_filter_and_torn_record(tmp_path: Path) -> None:
    path = tmp_path / "x.log"
    records = "".join(f"{'E' if i % 3 == 0 else 'O'} {TS} line {i}\n" for i in range(10_000))
    path.write_text(records + "O 2026-11-21T12:00:00.0000")  # torn by a crash
    log = LogFile(path)
    log.open_for_append()
    assert path.read_text() == records
    head, end = log.head(2)
    assert head.decode().splitlines()[1].endswith("line 1") and end == len(head)
    tail, start = log.tail(3)
    assert [r.split()[-1] for r in tail.decode().splitlines()] == ["9997", "9998", "9999"]
    assert records.encode()[start:] == tail
    err_tail, _ = log.tail(2, "stderr")
    assert [r.split()[-1] for r in err_tail.decode().splitlines()] == ["9996", "9999"]
    assert log.line_count() == 10_000
    data, new_end = log.read_range(5, 100)
    assert data.endswith(b"\n") and new_end == 5 + len(data)
    asyncio.run(log.append(f"O {TS} more\n"))
    assert log.line_count() == 10_001
    point = log.resume_point()
    assert (point.stdout, point.stderr) == (6667, 3334) and point.since < TS


def test_config_errors_name_the_key() -> None:
    with pytest.raises(ConfigError, match="unknown field `sockt`"):
        parse_config("[daemon]\nsockt = 'x'\n")
    with pytest.raises(ConfigError, match=r"local\.max_concurrent"):
        parse_config("[local]\nmax_concurrent = 'four'\n")
    with pytest.raises(ConfigError, match="socket_mode"):
        parse_config("[daemon]\nsocket_mode = 'rw'\n")
    config = parse_config("[daemon]\ndata_dir = 'rel'\n", base=Path("/srv"))
    assert config.daemon.data_dir == "/srv/rel"


def test_example_config_is_valid() -> None:
    root = Path(__file__).resolve().parents[1]
    text = (root / "config.example.toml").read_text()
    parse_config(text)
    # Its commented [[clusters]] table, uncommented, is a valid cluster naming every key there is.
    block = text.split("# [[clusters]]\n", 1)[1].split("\n\n", 1)[0]
    keys = [line[2:].split("=", 1)[0].strip() for line in block.splitlines()]
    from runyard.daemon.config import ClusterSection

    assert sorted(keys) == sorted(ClusterSection.__struct_fields__)
    cluster = parse_config("[[clusters]]\n" + "\n".join(line[2:] for line in block.splitlines())).clusters[0]
    assert (cluster.name, cluster.container, cluster.max_jobs) == ("hpc", "none", 100)


YAML = """
- step:
    name: train
    image: python:3.11
    command:
      - python train.py {parameters}
      - echo done &
    parameters:
      - {name: lr, type: float, default: 0.1, min: 0}
      - {name: opt, type: string, default: adam, choices: [adam, sgd]}
      - {name: fast, type: flag}
"""


def test_prepare_step_validates_and_quotes() -> None:
    config = load_config(YAML)
    prepared = prepare_step(config, "train", {"opt": "sgd", "fast": "true"}, {})
    assert prepared.command == "set -e\ntrap 'exit $?' TERM\npython train.py --lr=0.1 --opt=sgd --fast\necho done &"
    with pytest.raises(StepError, match="parameter 'lr'"):
        prepare_step(config, "train", {"lr": "-1"}, {})
    with pytest.raises(StepError, match="not among the choices"):
        prepare_step(config, "train", {"opt": "rms"}, {})
    with pytest.raises(StepError, match="no step named 'eval'"):
        prepare_step(config, "eval", {}, {})


def test_lint_gives_locations() -> None:
    [problem] = lint_text("- step:\n    name: x\n  bad: [\n", "v.yaml")
    assert problem.severity == "error" and problem.location == "v.yaml:4:1"


def test_snapshots_are_deterministic_and_honour_gitignore(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "r", {"a.py": "print(1)\n", ".gitignore": "*.tmp\n", "d/b.txt": "b"})
    committed = snapshot_commit(repo, "HEAD")
    assert snapshot_worktree(repo).id == committed.id  # same tree, same id
    (repo / "new.py").write_text("x")
    (repo / "junk.tmp").write_text("ignored")
    adhoc = snapshot_worktree(repo)
    assert adhoc.id != committed.id and adhoc.files == committed.files + 1
    store = SnapshotStore(tmp_path / "store")
    store.put_chunk(adhoc.id, 0, adhoc.data, True)
    store.extract(adhoc.id, tmp_path / "out")
    assert (tmp_path / "out" / "new.py").read_text() == "x" and not (tmp_path / "out" / "junk.tmp").exists()
    (repo / "a.py").write_text("changed")
    git(repo, "commit", "-qam", "second")
    assert snapshot_commit(repo, "HEAD~1").id == committed.id
    with pytest.raises(SnapshotError, match="not a commit"):
        snapshot_commit(repo, "no-such-ref")


def test_extract_refuses_escaping_members(tmp_path: Path) -> None:
    import hashlib
    import io
    import tarfile

    for name, linkname in [("../evil", None), ("/abs", None), ("link", "/etc")]:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(name)
            if linkname:
                info.type = tarfile.SYMTYPE
                info.linkname = linkname
                tar.addfile(info)
                inner = tarfile.TarInfo("link/passwd")
                inner.size = 1
                tar.addfile(inner, io.BytesIO(b"x"))
            else:
                info.size = 1
                tar.addfile(info, io.BytesIO(b"x"))
        data = buf.getvalue()
        sid = hashlib.sha256(data).hexdigest()
        store = SnapshotStore(tmp_path / "s")
        store.put_chunk(sid, 0, data, True)
        with pytest.raises(SnapshotError):
            store.extract(sid, tmp_path / f"out-{len(name)}")


def test_docker_decoder_pads_trimmed_timestamps_exactly_as_the_careful_path() -> None:
    """Docker trims trailing zeros (even the dot); the fast path must give the same records."""
    import random

    rng = random.Random(5)
    frames, expected = bytearray(), []
    for i in range(5000):
        ns = rng.choice([0, 100_000_000, 120_000_000, 5, rng.randrange(10**9)])
        ts = (f"2026-11-21T12:00:{i % 60:02d}.{ns:09d}").rstrip("0").rstrip(".") + "Z"
        text = f"line {i}" if i % 3 else f'{{"a": {i}}}'
        stream = 1 if i % 5 else 2
        frames += frame(stream, ts, text.encode() + b"\n")
        expected.append(f"{'O' if stream == 1 else 'E'} {normalize_timestamp(ts)} {text}\n")
    decoder = DockerLogDecoder()
    records: list[bytes] = []
    candidates: list[tuple[str, str]] = []
    for at in range(0, len(frames), 777):  # chunk edges fall inside headers and payloads
        out = decoder.feed(bytes(frames[at : at + 777]))
        records += out.records
        candidates += out.candidates
    assert b"".join(records).decode() == "".join(expected)
    assert all(len(ts) == 30 for ts, _ in candidates) and len(candidates) == sum(
        1 for i in range(5000) if i % 3 == 0 and i % 5)


def test_docker_decoder_keeps_an_indented_line_after_a_trimmed_timestamp() -> None:
    """A trimmed timestamp puts the text where the separating space would be: "  File ..." lines of
    a traceback were stored with a malformed header."""
    for ts in ("2026-11-21T12:00:00.12345678Z", "2026-11-21T12:00:00.1Z", "2026-11-21T12:00:00Z"):
        for text in (b" indented", b"  File x", b"\tx " + b" " * 40):
            raw = frame(2, ts, text + b"\n")
            records = b"".join(DockerLogDecoder().feed(raw).records).decode()
            assert parse_records(records) == [("stderr", normalize_timestamp(ts), text.decode())], (ts, text)


def test_input_names_and_file_names_never_escape_their_directory() -> None:
    from runyard.daemon.inputs import _inside, file_name
    from runyard.daemon.steps import StepError, load_config, prepare_step

    for name, extra in (("../../etc", ""), ("a/b", ""), ("..", ""), ("ok", "    filename: ../x\n"),
                        ("ok", "    filename: /etc/passwd\n")):
        text = (f"- step:\n    name: s\n    image: x\n    command: echo\n    inputs:\n"
                f"      - name: {name}\n        default: http://example.org/a.csv\n"
                + "".join("    " + line + "\n" for line in extra.splitlines()))
        with pytest.raises(StepError, match="must be a plain name"):
            prepare_step(load_config(text), "s", {}, {})
    # names taken from URLs and S3 keys stay inside the input's folder
    assert file_name("http://x/%2e%2e") == "download"
    assert file_name("http://x/a%2Fb") == "download"
    assert _inside("../a", "fallback") == "fallback"
    assert _inside("/etc/passwd", "fallback") == "fallback"
    assert _inside("dir/file.csv", "fallback") == "dir/file.csv"


def test_every_parameter_type_keeps_shell_metacharacters_out_of_the_shell() -> None:
    import shlex

    from runyard.daemon.steps import StepError, load_config, prepare_step

    config = load_config(
        "- step:\n    name: s\n    image: x\n    command: python3 train.py {parameters}\n    parameters:\n"
        "      - name: n\n        type: integer\n        default: 1\n"
        "      - name: lr\n        type: float\n        default: 0.1\n"
        "      - name: flag\n        type: flag\n        default: false\n"
        "      - name: tags\n        type: string\n        multiple: separate\n        default: [a]\n")
    for name, value in (("n", "1; rm -rf /"), ("lr", "$(id)"), ("flag", "true; id")):
        with pytest.raises(StepError, match=f"parameter '{name}'"):
            prepare_step(config, "s", {name: value}, {})
    nasty = "x'; id; echo `uname` $(id) \"q\" | cat > /etc/x"
    command = prepare_step(config, "s", {"tags": nasty}, {}).command
    argv = shlex.split(command.splitlines()[-1])
    assert argv[-1] == f"--tags={nasty}"  # one argument, exactly as given
