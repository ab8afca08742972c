"""Executions through the real daemon, client and CLI, on the real Docker engine."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from runyard.protocol import Client, RemoteError

from .conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status

pytestmark = pytest.mark.slow

TRAIN = """\
import json, os, sys
args = dict(a.lstrip("-").split("=", 1) for a in sys.argv[1:])
params = json.load(open("/valohai/config/parameters.json"))
execution = json.load(open("/valohai/config/execution.json"))
print("step", execution["valohai.execution-step"], "id", os.environ["VH_EXECUTION_ID"])
print("argv-note", args.get("note"))
print("json-note", params.get("note"))
for epoch in range(int(args["epochs"])):
    print(json.dumps({"epoch": epoch, "loss": 1.0 / (epoch + 1)}))
    print("progress 10%\\rprogress 60%\\rprogress 100%")
print("warning on stderr", file=sys.stderr)
os.makedirs(os.environ["VH_OUTPUTS_DIR"] + "/sub", exist_ok=True)
open(os.environ["VH_OUTPUTS_DIR"] + "/model.txt", "w").write("weights for " + args["epochs"])
open(os.environ["VH_OUTPUTS_DIR"] + "/sub/curve.csv", "w").write("1,2\\n")
sys.exit(int(args.get("exit", "0")))
"""

PARAMS = """\
- name: epochs
  type: integer
  default: 2
  min: 1
- name: note
  type: string
  default: plain
- name: exit
  type: integer
  default: 0
"""


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo", {
        "valohai.yaml": step_yaml("train", "python3 train.py {parameters}", PARAMS)
        + step_yaml("sleep", ['trap "echo got TERM; exit 0" TERM', "echo sleeping", "sleep 300 & wait"]),
        "train.py": TRAIN,
    })


def test_run_watch_complete_with_metadata_logs_and_outputs(daemon: Daemon, repo: Path, tmp_path: Path) -> None:
    result = run_cli(daemon, "run", "train", "-p", "epochs=3", "--watch", cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "step train id 1" in result.stdout
    assert "progress 100%" in result.stdout and "progress 10%" not in result.stdout
    assert "warning on stderr" in result.stdout
    assert "execution 1: complete" in result.stderr

    info = json.loads(run_cli(daemon, "info", "1", "--json").stdout)
    assert info["status"] == "complete" and info["exit_code"] == 0
    assert info["parameters"] == {"epochs": 3, "note": "plain", "exit": 0}
    assert info["metadata"]["epoch"] == 2

    meta = json.loads(run_cli(daemon, "metadata", "1", "--json").stdout)
    assert [p["values"]["epoch"] for p in meta["points"]] == [0, 1, 2]
    assert all(p["values"]["_time"].endswith("Z") for p in meta["points"])
    assert meta["latest"]["loss"] == pytest.approx(1 / 3)

    outputs = json.loads(run_cli(daemon, "outputs", "1", "--json").stdout)
    assert {(o["path"], o["size"]) for o in outputs} == {("model.txt", 13), ("sub/curve.csv", 4)}
    download = tmp_path / "dl"
    assert run_cli(daemon, "outputs", "1", "--download", str(download)).returncode == 0
    assert (download / "model.txt").read_text() == "weights for 3"
    assert (download / "sub" / "curve.csv").read_text() == "1,2\n"
    only_csv = tmp_path / "only-csv"
    assert run_cli(daemon, "outputs", "1", "--filter", "*.csv", "--download", str(only_csv)).returncode == 0
    assert [p.name for p in only_csv.rglob("*") if p.is_file()] == ["curve.csv"]

    only_stderr = run_cli(daemon, "logs", "1", "--stream", "stderr")
    assert only_stderr.stdout == "warning on stderr\n"


def test_nonzero_exit_is_error_with_reason_and_outputs_kept(daemon: Daemon, repo: Path) -> None:
    result = run_cli(daemon, "run", "train", "-p", "exit=3", "--watch", cwd=repo)
    assert result.returncode == 1
    assert "error (exit-code 3)" in result.stderr
    listing = json.loads(run_cli(daemon, "list", "--json").stdout)
    assert listing[0]["status"] == "error" and listing[0]["reason"] == "exit-code 3"
    assert listing[0]["exit_code"] == 3
    outputs = json.loads(run_cli(daemon, "outputs", "1", "--json").stdout)
    assert "model.txt" in {o["path"] for o in outputs}


async def test_stop_running_sends_sigterm_then_stopped(client: Client, repo: Path) -> None:
    execution = await submit_repo(client, repo, "sleep")
    follow = client.follow_logs(execution.id)
    async for block in follow:  # the trap is installed once it has printed
        if "sleeping" in block.data:
            break
    await follow.aclose()
    result = await client.stop([execution.id])
    assert result.stopped == [execution.id]
    final = await wait_for_status(client, execution.id)
    assert final.status == "stopped"
    log = await client.read_logs(execution.id, tail=10)
    assert "got TERM" in log.data
    again = await client.stop([execution.id])
    assert again.already_ended == [execution.id]


async def test_stop_queued_execution_stops_at_once(daemon_factory: type[Daemon], repo: Path) -> None:
    daemon = daemon_factory(max_concurrent=1)
    daemon.start()
    async with await Client.connect(daemon.socket) as client:
        first = await submit_repo(client, repo, "sleep")
        await wait_for_status(client, first.id, {"started"})
        second = await submit_repo(client, repo, "sleep")
        assert (await client.get(second.id)).status == "queued"
        said = run_cli(daemon, "stop", str(second.id))
        assert said.stdout == f"execution {second.id}: stopped\n"  # not "stopping": it had not started
        stopped = await client.get(second.id)
        assert stopped.status == "stopped" and stopped.reason == "stopped-before-start"
        assert stopped.container_id is None
        log = run_cli(daemon, "logs", str(second.id)).stdout
        assert log == "runyard: stop asked by root: it had not started; nothing ran\n"
        await client.stop(all=True)
        assert (await wait_for_status(client, first.id)).status == "stopped"
        assert "stop asked by root: stopping the container" in run_cli(daemon, "logs", str(first.id)).stdout


async def test_restart_reuses_snapshot_parameters_and_image(client: Client, repo: Path) -> None:
    first = await submit_repo(client, repo, "train", parameters={"epochs": "2", "note": "again"})
    await wait_for_status(client, first.id)
    # Changing the repository must not change what a restart runs.
    (repo / "train.py").write_text("raise SystemExit('changed code must not run')\n")
    second = await client.restart(first.id)
    assert second.id != first.id and second.restarted_from == first.id
    assert (second.snapshot, second.parameters, second.image, second.command) == (
        first.snapshot, first.parameters, first.image, first.command)
    final = await wait_for_status(client, second.id)
    assert final.status == "complete"
    assert "argv-note again" in (await client.read_logs(second.id, head=5)).data


async def test_rename_and_delete(client: Client, repo: Path, daemon: Daemon) -> None:
    execution = await submit_repo(client, repo, "sleep")
    renamed = await client.rename(execution.id, "lr sweep 1")
    assert renamed.title == "lr sweep 1"
    with pytest.raises(RemoteError) as refused:
        await client.delete(execution.id)
    assert refused.value.code == "invalid-state" and "stop it" in refused.value.message
    await client.stop([execution.id])
    await wait_for_status(client, execution.id)

    done = await submit_repo(client, repo, "train")
    await wait_for_status(client, done.id)
    outputs_dir = daemon.data_dir / "outputs" / str(done.id)
    assert (outputs_dir / "model.txt").exists()
    await client.delete(done.id, purge_outputs=True)
    assert not outputs_dir.exists()
    with pytest.raises(RemoteError) as gone:
        await client.get(done.id)
    assert gone.value.code == "not-found"
    assert [e.id for e in await client.list_executions()] == [execution.id]


def test_bad_parameter_value_names_the_parameter(daemon: Daemon, repo: Path) -> None:
    result = run_cli(daemon, "run", "train", "-p", "epochs=many", cwd=repo)
    assert result.returncode == 2
    assert "parameter 'epochs'" in result.stderr and "not an integer" in result.stderr
    below = run_cli(daemon, "run", "train", "-p", "epochs=0", cwd=repo)
    assert "less than the minimum" in below.stderr
    unknown = run_cli(daemon, "run", "train", "-p", "epoch=1", cwd=repo)
    assert "no parameter 'epoch'" in unknown.stderr
    assert json.loads(run_cli(daemon, "list", "--json").stdout) == []


def test_parameter_with_shell_metacharacters_arrives_literally(daemon: Daemon, repo: Path) -> None:
    nasty = "a'b\"c; touch /tmp/pwned-$$ && echo $(id) `uname` | cat > /x \\ *"
    result = run_cli(daemon, "run", "train", "-p", f"note={nasty}", "--watch", cwd=repo)
    assert result.returncode == 0, result.stderr
    assert f"argv-note {nasty}\n" in result.stdout
    assert f"json-note {nasty}\n" in result.stdout


def test_malformed_valohai_yaml_is_a_clear_error_and_daemon_serves_on(daemon: Daemon, tmp_path: Path) -> None:
    broken = make_repo(tmp_path / "broken", {"valohai.yaml": "- step:\n    name: x\n  image: [\n"})
    result = run_cli(daemon, "run", "x", cwd=broken)
    assert result.returncode == 2
    assert "valohai.yaml" in result.stderr and "not valid" in result.stderr
    incomplete = make_repo(tmp_path / "incomplete", {"valohai.yaml": "- step:\n    name: x\n"})
    result = run_cli(daemon, "run", "x", cwd=incomplete)
    assert "'command' is a required property" in result.stderr
    assert run_cli(daemon, "list").returncode == 0


def test_missing_image_is_image_missing_error(daemon: Daemon, repo: Path) -> None:
    result = run_cli(daemon, "run", "train", "--image", "runyard-test/no-such-image:1", "--watch", cwd=repo)
    assert result.returncode == 1
    assert "error (image-missing)" in result.stderr
    assert "no-such-image" in result.stdout  # runyard's note in the log says which image


def test_adhoc_runs_uncommitted_and_untracked_files(daemon: Daemon, repo: Path) -> None:
    (repo / "train.py").write_text("print('uncommitted edit')\nimport helper\n")
    (repo / "helper.py").write_text("print('untracked helper')\n")
    (repo / ".gitignore").write_text("secret.txt\n")
    (repo / "secret.txt").write_text("never shipped")
    result = run_cli(daemon, "run", "train", "--adhoc", "--watch", cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "uncommitted edit" in result.stdout and "untracked helper" in result.stdout
    committed = run_cli(daemon, "run", "train", "--commit", "HEAD", "--watch", cwd=repo)
    assert "step train id 2" in committed.stdout
