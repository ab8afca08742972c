"""Inputs from a real HTTP server on loopback, from earlier outputs and from paths, through the cache."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from runyard.daemon.inputs import file_name, readable_by

from .conftest import Daemon, make_repo, run_cli, step_yaml

pytestmark = pytest.mark.slow

CONSUME = """\
import hashlib, json, os
described = json.load(open(os.path.join(os.environ["VH_CONFIG_DIR"], "inputs.json")))
for name, spec in sorted(described.items()):
    for f in spec["files"]:
        data = open(f["path"], "rb").read()
        assert hashlib.sha256(data).hexdigest() == f["checksums"]["sha256"] == f["checksums"]["sha256"]
        print(f"{name} {f['name']} {f['size']} {f['uri']} {f['path']} {data.decode().strip()}")
"""

STEPS = (
    step_yaml("consume", "python3 consume.py", extra="""\
        inputs:
          - name: data
        """)
    + step_yaml("produce", 'echo "a trained model" > $VH_OUTPUTS_DIR/model.txt')
)


@dataclass
class FileServer:
    root: Path
    port: int = 0
    full_gets: list[str] = field(default_factory=list)  # requests answered with the whole file

    def url(self, name: str) -> str:
        return f"http://127.0.0.1:{self.port}/{name}"


@pytest.fixture
def http_files(tmp_path: Path) -> Iterator[FileServer]:
    server_state = FileServer(tmp_path / "www")
    server_state.root.mkdir()

    class Handler(SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(server_state.root), **kwargs)  # type: ignore[arg-type]

        def send_response(self, code: int, message: str | None = None) -> None:
            if code == 200:
                server_state.full_gets.append(self.path)
            super().send_response(code, message)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server_state.port = server.server_address[1]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server_state
    server.shutdown()


def test_http_input_lands_where_valohai_utils_looks_and_is_fetched_once(
        daemon: Daemon, http_files: FileServer, tmp_path: Path) -> None:
    (http_files.root / "data.csv").write_text("a,b\n1,2\n")
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": STEPS, "consume.py": CONSUME})
    url = http_files.url("data.csv")
    for _ in range(2):
        result = run_cli(daemon, "run", "consume", "--input", f"data={url}", "--watch", cwd=repo)
        assert result.returncode == 0, result.stderr
        size = len("a,b\n1,2\n")
        assert f"data data.csv {size} {url} /valohai/inputs/data/data.csv a,b" in result.stdout
    assert http_files.full_gets == ["/data.csv"]  # the second run was answered from the cache


def test_a_bad_input_fails_before_the_execution_starts(daemon: Daemon, http_files: FileServer,
                                                       tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": STEPS, "consume.py": CONSUME})
    cases = [
        (http_files.url("missing.csv"), "HTTP 404"),
        ("http://127.0.0.1:1/nothing-listens.csv", "cannot download"),
        ("/nonexistent/file.csv", "no such file on the daemon's machine"),
        ("ftp://example.org/x", "unsupported scheme 'ftp'"),
    ]
    for url, detail in cases:
        result = run_cli(daemon, "run", "consume", "--input", f"data={url}", "--watch", cwd=repo)
        assert result.returncode == 1
        execution_id = result.stderr.split("execution ")[1].split()[0]
        info = json.loads(run_cli(daemon, "info", execution_id, "--json").stdout)
        assert info["status"] == "error" and info["reason"] == f"input-failed data {url}"
        assert info["started_at"] is None  # no GPU time was spent on it
        assert detail in run_cli(daemon, "logs", execution_id).stdout


def test_an_output_becomes_the_next_input_and_a_local_path_works(daemon: Daemon, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": STEPS, "consume.py": CONSUME})
    made = run_cli(daemon, "run", "produce", "--watch", cwd=repo)
    assert made.returncode == 0, made.stderr
    producer = made.stderr.split("execution ")[1].split()[0]
    used = run_cli(daemon, "run", "consume", "--input", f"data=runyard://{producer}/model.txt", "--watch",
                   cwd=repo)
    assert used.returncode == 0, used.stderr
    assert "model.txt" in used.stdout and "a trained model" in used.stdout
    local = tmp_path / "on-the-server.txt"
    local.write_text("from a path\n")
    from_path = run_cli(daemon, "run", "consume", "--input", f"data={local}", "--watch", cwd=repo)
    assert from_path.returncode == 0, from_path.stderr
    assert "from a path" in from_path.stdout


def test_local_paths_are_read_only_as_their_owner_could() -> None:
    folder = Path(tempfile.mkdtemp(dir="/tmp"))  # pytest's own tmp folders are private to root
    try:
        folder.chmod(0o755)
        secret = folder / "secret"
        secret.write_text("x")
        os.chown(secret, 0, 0)
        secret.chmod(0o600)
        nobody = 65534
        assert readable_by(secret, 0) and not readable_by(secret, nobody)
        secret.chmod(0o644)
        assert readable_by(secret, nobody)
        folder.chmod(0o700)  # a readable file in a folder nobody may enter stays unreadable
        assert not readable_by(secret, nobody)
    finally:
        shutil.rmtree(folder)
    assert file_name("https://h/a/b%20c.csv?x=1") == "b c.csv" and file_name("https://h/") == "download"


VH_IMAGE = os.environ.get("RUNYARD_VH_IMAGE", "runyard-vh:bookworm-py3")

VALOHAI_SCRIPT = """\
import asyncio
import json
import valohai

valohai.prepare(step="train", default_parameters={"lr": 0.001, "epochs": 1},
                default_inputs={"data": "https://example.org/never-fetched.csv"})
print("lr", valohai.parameters("lr").value, "epochs", valohai.parameters("epochs").value)
path = valohai.inputs("data").path()
print("input at", path, "says", open(path).read().strip())
with open(valohai.outputs().path("result.txt"), "w") as fh:
    fh.write("trained")
with valohai.logger() as logger:
    logger.log("epoch", 1)
    logger.log("loss", 0.25)
"""


def test_a_valohai_utils_script_runs_unchanged(daemon: Daemon, http_files: FileServer, tmp_path: Path) -> None:
    import subprocess

    if subprocess.run(["docker", "image", "inspect", VH_IMAGE], capture_output=True).returncode != 0:
        pytest.fail(f"image {VH_IMAGE} is missing: scripts/test builds it")
    (http_files.root / "train.csv").write_text("x,y\n")
    yaml = textwrap.dedent(f"""\
        - step:
            name: train
            image: {VH_IMAGE}
            command: python3 train.py {{parameters}}
            parameters:
              - name: lr
                type: float
                default: 0.001
              - name: epochs
                type: integer
                default: 1
            inputs:
              - name: data
        """)
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": yaml, "train.py": VALOHAI_SCRIPT})
    result = run_cli(daemon, "run", "train", "-p", "lr=0.05", "-p", "epochs=3",
                     "--input", f"data={http_files.url('train.csv')}", "--watch", cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "lr 0.05 epochs 3" in result.stdout
    assert "input at /valohai/inputs/data/train.csv says x,y" in result.stdout
    execution_id = result.stderr.split("execution ")[1].split()[0]
    outputs = json.loads(run_cli(daemon, "outputs", execution_id, "--json").stdout)
    assert [o["path"] for o in outputs] == ["result.txt"]
    metadata = json.loads(run_cli(daemon, "metadata", execution_id, "--json").stdout)
    assert metadata["latest"]["loss"] == 0.25 and metadata["latest"]["epoch"] == 1


ML_YAML = """\
dockerImageId: keras_v2-4_python-3
parameters:
  - pass-as: --batch_size=128
  - pass-as: --epochs=2
inputs:
  - name: data.csv
    url: {url}
"""

ML_MAIN = """\
import os, sys
print("argv", sys.argv[1:])
folder = os.path.join(os.environ["VH_INPUTS_DIR"], "data.csv")
print("input", open(os.path.join(folder, "data.csv")).read().strip())
"""


def test_a_machinelabs_ml_yaml_project_runs(daemon_factory: type[Daemon], http_files: FileServer,
                                             tmp_path: Path) -> None:
    from .conftest import BASE_IMAGE

    daemon = daemon_factory(extra_config=f'[mlyaml.images]\n"keras_v2-4_python-3" = "{BASE_IMAGE}"\n')
    daemon.start()
    (http_files.root / "data.csv").write_text("1,2,3\n")
    repo = make_repo(tmp_path / "repo", {"ml.yaml": ML_YAML.format(url=http_files.url("data.csv")),
                                         "main.py": ML_MAIN})
    result = run_cli(daemon, "run", "--config-file", "ml.yaml", "--watch", cwd=repo)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "argv ['--batch_size=128', '--epochs=2']" in result.stdout and "input 1,2,3" in result.stdout
    unmapped = daemon_factory()
    unmapped.start()
    refused = run_cli(unmapped, "run", "--config-file", "ml.yaml", cwd=repo)
    assert refused.returncode == 2 and "dockerImageId 'keras_v2-4_python-3' has no image" in refused.stderr


@pytest.fixture
def s3_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """moto in server mode on loopback: a real S3-protocol endpoint over HTTP."""
    from .s3server import start_moto

    server, url = start_moto()
    for key, value in {"AWS_ACCESS_KEY_ID": "AKIARUNYARDTESTKEY", "AWS_SECRET_ACCESS_KEY": "runyard-test-secret",
                       "AWS_DEFAULT_REGION": "us-east-1"}.items():
        monkeypatch.setenv(key, value)
    yield url
    server.kill()
    server.wait()


def test_s3_inputs_with_globs_and_clear_errors(daemon_factory: type[Daemon], s3_server: str,
                                                tmp_path: Path) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="lab-data")
    for key in ("labels/a.csv", "labels/b.csv", "labels/sub/c.csv", "labels/notes.txt"):
        s3.put_object(Bucket="lab-data", Key=key, Body=f"content of {key}\n".encode())
    daemon = daemon_factory(extra_config=f'[s3]\nendpoint_url = "{s3_server}"\n')
    daemon.start()
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": STEPS, "consume.py": CONSUME})
    one = run_cli(daemon, "run", "consume", "--input", "data=s3://lab-data/labels/a.csv", "--watch", cwd=repo)
    assert one.returncode == 0, one.stdout + one.stderr
    assert "data a.csv 24 s3://lab-data/labels/a.csv /valohai/inputs/data/a.csv content of labels/a.csv" \
        in one.stdout
    star = run_cli(daemon, "run", "consume", "--input", "data=s3://lab-data/labels/*.csv", "--watch", cwd=repo)
    assert star.returncode == 0, star.stderr
    assert "a.csv" in star.stdout and "b.csv" in star.stdout and "c.csv" not in star.stdout
    deep = run_cli(daemon, "run", "consume", "--input", "data=s3://lab-data/labels/**.csv", "--watch", cwd=repo)
    assert deep.returncode == 0, deep.stderr
    assert "content of labels/sub/c.csv" in deep.stdout and "notes.txt" not in deep.stdout
    for url, detail in [("s3://no-such-bucket/x.csv", "no such bucket"),
                        ("s3://lab-data/labels/missing.csv", "no such key"),
                        ("s3://lab-data/labels/*.parquet", "no object matches")]:
        result = run_cli(daemon, "run", "consume", "--input", f"data={url}", "--watch", cwd=repo)
        assert result.returncode == 1
        execution_id = result.stderr.split("execution ")[1].split()[0]
        info = json.loads(run_cli(daemon, "info", execution_id, "--json").stdout)
        assert info["reason"] == f"input-failed data {url}"
        assert detail in run_cli(daemon, "logs", execution_id).stdout
    log = daemon.log_text()  # the daemon ran at debug level: credentials must still not appear
    assert "AKIARUNYARDTESTKEY" not in log and "runyard-test-secret" not in log


def test_outputs_to_s3_after_complete_and_error_then_as_an_input(daemon_factory: type[Daemon], s3_server: str,
                                                                  tmp_path: Path) -> None:
    import boto3

    s3 = boto3.client("s3", endpoint_url=s3_server)
    s3.create_bucket(Bucket="lab-outputs")
    daemon = daemon_factory(extra_config=textwrap.dedent(f"""\
        [s3]
        endpoint_url = "{s3_server}"
        [store]
        kind = "s3"
        bucket = "lab-outputs"
        prefix = "team/"
        """))
    daemon.start()
    steps = STEPS + step_yaml("fail-after-writing", ['echo "partial" > $VH_OUTPUTS_DIR/partial.txt',
                                                     "mkdir -p $VH_OUTPUTS_DIR/deep",
                                                     "head -c 9000000 /dev/zero > $VH_OUTPUTS_DIR/deep/big.bin",
                                                     "exit 3"])
    steps += step_yaml("wait-to-be-stopped", ['echo "half done" > $VH_OUTPUTS_DIR/so-far.txt', "echo written",
                                              "sleep 600"])
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": steps, "consume.py": CONSUME})
    made = run_cli(daemon, "run", "produce", "--watch", cwd=repo)
    assert made.returncode == 0, made.stderr
    body = s3.get_object(Bucket="lab-outputs", Key="team/1/model.txt")["Body"].read()
    assert body == b"a trained model\n"
    download = tmp_path / "dl"
    assert run_cli(daemon, "outputs", "1", "--download", str(download)).returncode == 0
    assert (download / "model.txt").read_text() == "a trained model\n"

    failed = run_cli(daemon, "run", "fail-after-writing", "--watch", cwd=repo)
    assert failed.returncode == 1 and "error (exit-code 3)" in failed.stderr
    outputs = {o["path"]: o["size"] for o in json.loads(run_cli(daemon, "outputs", "2", "--json").stdout)}
    assert outputs == {"partial.txt": 8, "deep/big.bin": 9_000_000}  # big.bin went up in parts
    assert s3.head_object(Bucket="lab-outputs", Key="team/2/deep/big.bin")["ContentLength"] == 9_000_000

    used = run_cli(daemon, "run", "consume", "--input", "data=runyard://1/model.txt", "--watch", cwd=repo)
    assert used.returncode == 0, used.stderr
    assert "runyard://1/model.txt" in used.stdout and "a trained model" in used.stdout
    missing = run_cli(daemon, "run", "consume", "--input", "data=runyard://1/nope.txt", "--watch", cwd=repo)
    assert missing.returncode == 1
    assert "execution 1 has no output 'nope.txt'" in run_cli(daemon, "logs", "4").stdout

    assert run_cli(daemon, "delete", "2", "--purge-outputs").returncode == 0
    assert s3.list_objects_v2(Bucket="lab-outputs", Prefix="team/2/").get("KeyCount") == 0

    # Stopped: what it wrote so far still reaches the store
    started = run_cli(daemon, "run", "wait-to-be-stopped", cwd=repo)
    stopped_id = started.stdout.strip()
    follow = subprocess.Popen([sys.executable, "-m", "runyard.cli", "logs", stopped_id, "-f"],
                              stdout=subprocess.PIPE, text=True,
                              env={**os.environ, "RUNYARD_SOCKET": daemon.socket})
    assert follow.stdout is not None
    for line in follow.stdout:  # the command says when its file is written
        if "written" in line:
            break
    assert run_cli(daemon, "stop", stopped_id).returncode == 0
    follow.wait(timeout=60)
    info = json.loads(run_cli(daemon, "info", stopped_id, "--json").stdout)
    assert info["status"] == "stopped"
    key = f"team/{stopped_id}/so-far.txt"
    assert s3.get_object(Bucket="lab-outputs", Key=key)["Body"].read() == b"half done\n"


PROPERTIES = """\
import json, os
out = os.environ["VH_OUTPUTS_DIR"]
open(os.path.join(out, "a.txt"), "w").write("a")
open(os.path.join(out, "b.txt"), "w").write("b")
with open(os.path.join(out, "valohai.metadata.jsonl"), "w") as fh:
    fh.write(json.dumps({"file": "a.txt", "metadata": {"valohai.tags": ["best"], "accuracy": 0.9}}) + "\\n")
    fh.write("not json\\n")
json.dump({"epoch": 3}, open(os.path.join(out, "b.txt.metadata.json"), "w"))
"""


def test_output_properties_from_valohai_metadata_files(daemon: Daemon, tmp_path: Path) -> None:
    steps = step_yaml("props", "python3 props.py")
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": steps, "props.py": PROPERTIES})
    result = run_cli(daemon, "run", "props", "--watch", cwd=repo)
    assert result.returncode == 0, result.stderr
    outputs = {o["path"]: o["properties"] for o in json.loads(run_cli(daemon, "outputs", "1", "--json").stdout)}
    assert outputs == {"a.txt": {"valohai.tags": ["best"], "accuracy": 0.9}, "b.txt": {"epoch": 3}}
    assert "valohai.metadata.jsonl line 2" in run_cli(daemon, "logs", "1").stdout


async def test_live_outputs_are_stored_while_the_execution_runs(daemon: Daemon, tmp_path: Path) -> None:
    from runyard.protocol import Client

    from .conftest import submit_repo, wait_for_status

    steps = step_yaml("checkpoint", [
        'echo "epoch 1 weights" > $VH_OUTPUTS_DIR/ckpt-1.pt',
        "chmod 0444 $VH_OUTPUTS_DIR/ckpt-1.pt",  # valohai-utils' live output: done, upload it now
        'while [ ! -e /valohai/outputs/go ]; do sleep 0.05; done',
        'echo "final" > $VH_OUTPUTS_DIR/final.pt',
    ])
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": steps})
    async with await Client.connect(daemon.socket) as client:
        e = await submit_repo(client, repo, "checkpoint")
        async for block in client.follow_logs(e.id, 0):  # the daemon says when it stored it
            if "live output stored: ckpt-1.pt" in block.data:
                break
        assert (await client.get(e.id)).status == "started"
        assert [o.path for o in await client.outputs(e.id)] == ["ckpt-1.pt"]
        (daemon.data_dir / "work" / str(e.id) / "outputs" / "go").touch()
        assert (await wait_for_status(client, e.id)).status == "complete"
        assert sorted(o.path for o in await client.outputs(e.id)) == ["ckpt-1.pt", "final.pt", "go"]
        assert run_cli(daemon, "logs", str(e.id)).stdout.count("live output stored") == 1


async def test_input_download_progress_is_pushed_as_events(daemon: Daemon, http_files: FileServer,
                                                           tmp_path: Path) -> None:
    from runyard.protocol import Client

    from .conftest import submit_repo, wait_for_status

    size = 48 << 20
    with (http_files.root / "big.bin").open("wb") as fh:
        fh.write(os.urandom(size))
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": STEPS, "consume.py": "print('ok')\n"})
    async with await Client.connect(daemon.socket) as client:
        seen: list[tuple[int, int | None]] = []

        async def watch() -> None:
            async for event in client.events():
                if getattr(event, "kind", "") == "progress":
                    seen.append((event.done or 0, event.total))  # type: ignore[union-attr]
                    if event.done == size:  # type: ignore[union-attr]
                        return

        watcher = asyncio.ensure_future(watch())
        await asyncio.sleep(0)  # let the subscription start before submitting
        e = await submit_repo(client, repo, "consume", inputs={"data": [http_files.url("big.bin")]})
        await asyncio.wait_for(watcher, 60)
        assert seen[-1] == (size, size) and all(total == size for _, total in seen)
        assert [d for d, _ in seen] == sorted(d for d, _ in seen)
        done = await wait_for_status(client, e.id)
        assert done.status == "complete" and done.input_progress is None


def test_output_links_are_refused_not_followed(daemon: Daemon, tmp_path: Path) -> None:
    steps = step_yaml("escape", ['echo fine > $VH_OUTPUTS_DIR/ok.txt',
                                 "ln -s /etc/passwd $VH_OUTPUTS_DIR/passwd",
                                 "ln -s ../../.. $VH_OUTPUTS_DIR/up",
                                 "ln -s ok.txt $VH_OUTPUTS_DIR/alias.txt"])
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": steps})
    result = run_cli(daemon, "run", "escape", "--watch", cwd=repo)
    assert result.returncode == 0, result.stderr
    outputs = sorted(o["path"] for o in json.loads(run_cli(daemon, "outputs", "1", "--json").stdout))
    assert outputs == ["ok.txt"]  # a link is never followed, wherever it points
    log = run_cli(daemon, "logs", "1").stdout
    for name in ("passwd", "up", "alias.txt"):
        assert f"output refused: {name} (symlink, not followed)" in log
    assert not any(p.name == "passwd" for p in (daemon.data_dir / "outputs").rglob("*"))


async def test_a_local_input_is_copied_from_the_file_that_was_checked(tmp_path: Path) -> None:
    """The path swapped for a link to a secret once the check is done: what reaches the workspace is
    still the file that was checked (opened once, copied from that descriptor), never the secret."""
    from runyard.daemon import inputs
    from runyard.daemon.outputs import LocalOutputStore

    from .test_users import _private_files, ensure_users

    users = ensure_users()
    alice, bob = users["ryalice"], users["rybob"]
    own, link, secret = _private_files(alice, bob)
    try:
        fetcher = inputs.InputFetcher(tmp_path / "cache", LocalOutputStore(tmp_path / "outputs"))
        with pytest.raises(inputs.InputError, match="you may not read this file"):
            await fetcher.fetch(str(link), alice.pw_uid)
        files = await fetcher.fetch(str(own), alice.pw_uid)
        own.unlink()
        own.symlink_to(secret)  # after the check, before the copy into the workspace
        for link_ok in (True, False):
            work = tmp_path / f"work-{link_ok}"
            inputs.place({"data": files}, work, "/valohai", link=link_ok)
            placed = work / "inputs" / "data" / "mine.txt"
            assert not placed.is_symlink() and placed.read_text() == "alice's own data\n"
        assert files[0].size == len("alice's own data\n") and files[0].source != own
        # The link itself (in alice's folder, to bob's) is refused on every later try as well.
        with pytest.raises(inputs.InputError, match="you may not read this file"):
            await fetcher.fetch(str(own), alice.pw_uid)
    finally:
        shutil.rmtree(own.parent.parent)


def _exchange(a: Path, b: Path) -> None:
    """Swap two names atomically (renameat2 RENAME_EXCHANGE): each always names something."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    if libc.renameat2(-100, os.fsencode(a), -100, os.fsencode(b), 2) != 0:  # AT_FDCWD, RENAME_EXCHANGE
        raise OSError(ctypes.get_errno(), "renameat2")


async def test_outputs_swapped_for_links_while_being_collected_never_leak(tmp_path: Path) -> None:
    """A running container swaps an output (and a folder above one) for links into the host as fast as
    it can while the store collects: the host's file never reaches the store."""
    from runyard.daemon.outputs import LocalOutputStore

    decoy, secret = b"decoy weights\n", b"HOST SECRET!!\n"  # the same size: a leak would look unchanged
    host = tmp_path / "host"
    host.mkdir()
    (host / "f.pt").write_bytes(secret)
    out = tmp_path / "outputs"
    out.mkdir()
    pairs = []
    for i in range(4):
        (out / f"d{i}").mkdir()
        (out / f"d{i}" / "f.pt").write_bytes(decoy)
        (out / f"d{i}.swap").symlink_to(host)
        (out / f"g{i}.pt").write_bytes(decoy)
        (out / f"g{i}.swap").symlink_to(host / "f.pt")
        pairs += [(out / f"d{i}", out / f"d{i}.swap"), (out / f"g{i}.pt", out / f"g{i}.swap")]
    stop = threading.Event()

    def swap() -> None:
        while not stop.is_set():
            for a, b in pairs:
                _exchange(a, b)

    swapper = threading.Thread(target=swap)
    swapper.start()
    store = LocalOutputStore(tmp_path / "store")
    stored = 0
    try:
        for execution_id in range(400):
            collected = await store.collect(execution_id, out, only={f"d{i}/f.pt" for i in range(4)}
                                            | {f"g{i}.pt" for i in range(4)})
            stored += len(collected.files)
    finally:
        stop.set()
        swapper.join()
    leaked = [p for p in (tmp_path / "store").rglob("*") if p.is_file() and p.read_bytes() == secret]
    assert leaked == []
    assert stored > 0  # it did collect the real files whenever they stood still


SWAPPER = """\
import ctypes, os, sys
out, host = os.environ["VH_OUTPUTS_DIR"], sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)

def exchange(a, b):
    assert libc.renameat2(-100, a.encode(), -100, b.encode(), 2) == 0  # AT_FDCWD, RENAME_EXCHANGE

os.makedirs(f"{out}/d")
for path in (f"{out}/d/f.pt", f"{out}/g.pt"):
    with open(path, "wb") as fh:
        fh.write(b"decoy weights\\n")
    os.chmod(path, 0o444)  # a live output: the daemon stores it while this runs
os.symlink(host, f"{out}/d.swap")
os.symlink(f"{host}/f.pt", f"{out}/g.swap")
for _ in range(100000):
    exchange(f"{out}/d", f"{out}/d.swap")
    exchange(f"{out}/g.pt", f"{out}/g.swap")
for name in ("d", "g.pt"):  # and at the end the outputs are links into the host
    if not os.path.islink(f"{out}/{name}"):
        exchange(f"{out}/{name}", f"{out}/{name.split('.')[0]}.swap")
print("swapped")
"""


def test_a_container_swapping_outputs_for_host_links_gets_nothing_from_the_host(daemon: Daemon,
                                                                               tmp_path: Path) -> None:
    secret = b"HOST SECRET!!\n"  # as long as the decoy: a leak would pass for the output unchanged
    host = tmp_path / "host"
    host.mkdir()
    (host / "f.pt").write_bytes(secret)
    steps = step_yaml("swap", f"python3 swap.py {host}")
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": steps, "swap.py": SWAPPER})
    result = run_cli(daemon, "run", "swap", "--watch", cwd=repo)
    assert result.returncode == 0, result.stderr
    log = run_cli(daemon, "logs", "1").stdout
    assert "swapped" in log
    for name in ("d", "g.pt"):  # their real files now stand under the .swap names
        assert f"output refused: {name} (symlink, not followed)" in log
    leaked = [p for p in (daemon.data_dir / "outputs").rglob("*") if p.is_file() and p.read_bytes() == secret]
    assert leaked == []


async def test_outputs_from_an_ssh_host_are_read_without_following_links(tmp_path: Path) -> None:
    """The SSH side of the same: a link to a host file, a folder link, a FIFO in the outputs."""
    import asyncssh

    from runyard.daemon.outputs import LocalOutputStore
    from runyard.daemon.transport import SshTransport

    from .pool import start_lone_host

    host, _, known = start_lone_host(tmp_path)
    secret_dir = tmp_path / "host-secrets"
    secret_dir.mkdir()
    (secret_dir / "key").write_text("HOST SECRET\n")
    out = tmp_path / "work" / "1-0" / "outputs"
    (out / "sub").mkdir(parents=True)
    (out / "ok.pt").write_text("weights\n")
    (out / "sub" / "deep.pt").write_text("deeper\n")
    (out / "leak.pt").symlink_to(secret_dir / "key")
    (out / "dirlink").symlink_to(secret_dir)
    os.mkfifo(out / "pipe")  # opening it to read would wait for a writer for ever
    try:
        async with asyncssh.connect("127.0.0.1", port=host.port, username="root", client_keys=[str(host.client_key)],
                                    known_hosts=str(known)) as conn:
            transport = SshTransport(conn, host.name)
            live = tmp_path / "staging-live"
            await asyncio.wait_for(transport.get_files(
                str(out), ["ok.pt", "leak.pt", "dirlink/key", "sub/deep.pt", "pipe"], live), 60)
            assert sorted(p.relative_to(live).as_posix() for p in live.rglob("*") if p.is_file()) == [
                "ok.pt", "sub/deep.pt"]
            end = tmp_path / "staging-end"
            await asyncio.wait_for(transport.get_tree(str(out), end), 60)
        collected = await LocalOutputStore(tmp_path / "store").collect(1, end)
        assert sorted(rel for rel, _, _ in collected.files) == ["ok.pt", "sub/deep.pt"]
        assert sorted(collected.refused) == ["dirlink (symlink, not followed)", "leak.pt (symlink, not followed)",
                                             "pipe (not a regular file)"]
        for place in (live, end, tmp_path / "store"):
            assert not any(p.is_file() and not p.is_symlink() and b"HOST SECRET" in p.read_bytes()
                           for p in place.rglob("*"))
    finally:
        host.kill()
