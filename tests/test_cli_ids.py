"""Execution ids and logs as a user meets them on the command line, against one real daemon running
plain processes: ranges over deleted ids, `latest` wherever one id is taken, the log of an
execution that has not started yet (no file), what a task keeps of its search, a task's child
deleted alone, and `info`'s labels."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from runyard.protocol import Client

from .conftest import BASE_IMAGE, Daemon, make_repo, plain_process_daemon, run_cli, submit_repo, wait_for_status

STEPS = f"""\
- step:
    name: quick
    image: {BASE_IMAGE}
    command: python3 say.py loss 0.5
- step:
    name: gated
    image: {BASE_IMAGE}
    command:
      - echo "hello {{parameter-value:x}}"
      - while [ ! -e {{parameter-value:gate}} ]; do sleep 0.05; done
    parameters:
      - name: x
        type: integer
        default: 1
      - name: gate
        type: string
        default: /nonexistent
- step:
    name: train
    image: {BASE_IMAGE}
    command: python3 say.py val_loss 1.0 {{parameters}}
    parameters:
      - name: lr
        type: float
        default: 0.1
- task:
    name: tuned
    step: train
    type: grid-search
    optimization-target-metric: val_loss
    optimization-target-value: 0.25
    parameters:
      - name: lr
        style: multiple
        rules: {{items: [0.1, 0.2]}}
"""

SAY = """\
import json, sys
print("hello")
print(json.dumps({sys.argv[1]: float(sys.argv[2])}))
"""


@pytest.fixture(scope="module")
def plain(docker_engine: None) -> Iterator[Daemon]:
    yield from plain_process_daemon()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("ids") / "repo", {"valohai.yaml": STEPS, "say.py": SAY})


def cli(daemon: Daemon, *args: str, cwd: Path | None = None, code: int = 0) -> str:
    result = run_cli(daemon, *args, cwd=cwd)
    assert result.returncode == code, (args, result.stdout, result.stderr)
    return result.stdout + (result.stderr if code else "")


def follow(daemon: Daemon, execution_id: int) -> subprocess.Popen[str]:
    """`runyard logs N -f` started in the background, as a user would leave it running."""
    return subprocess.Popen([sys.executable, "-m", "runyard.cli", "logs", str(execution_id), "-f"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={"RUNYARD_SOCKET": daemon.socket, "NO_COLOR": "1", "PATH": "/usr/bin:/bin"})


def task_json(daemon: Daemon, task_id: int) -> dict[str, Any]:
    return json.loads(cli(daemon, "task", "info", str(task_id), "--json"))  # type: ignore[no-any-return]


async def test_ranges_skip_deleted_ids_and_latest_works_wherever_one_id_is_taken(plain: Daemon, repo: Path) -> None:
    async with await Client.connect(plain.socket) as client:
        made = [(await submit_repo(client, repo, "quick")).id for _ in range(5)]
        for execution_id in made:
            await wait_for_status(client, execution_id)
    a, b, c, d, e = made
    for gone in (b, c):
        assert f"execution {gone} deleted" in cli(plain, "delete", str(gone))
    span = f"{a}-{e}"
    # A range names the executions that exist in it: the deleted ids are skipped, in every command.
    assert [x["id"] for x in json.loads(cli(plain, "info", span, "--json"))] == [a, d, e]
    assert cli(plain, "info", span).count("step:           quick") == 3
    assert cli(plain, "logs", span).count("==> execution ") == 3
    assert [r["id"] for r in json.loads(cli(plain, "summarize", span, "--json"))] == [a, d, e]
    stopped = cli(plain, "stop", span)
    assert stopped.count("had already ended") == 3 and "there is no" not in stopped
    # An id named on its own must exist, and so must something in a range; nothing is done then.
    for command in (["info"], ["logs"], ["summarize"], ["stop"], ["delete"]):
        assert f"there is no execution {b}" in cli(plain, *command, f"{a},{b}", code=2), command
    for command in (["info"], ["delete"]):
        assert f"no execution exists in {b}-{c}" in cli(plain, *command, f"{b}-{c}", code=2), command
    assert json.loads(cli(plain, "info", str(a), "--json"))["status"] == "complete"  # delete a,b did nothing
    # `latest` wherever one execution is named.
    assert json.loads(cli(plain, "metadata", "latest", "--json"))["latest"]["loss"] == 0.5
    assert cli(plain, "outputs", "latest") == "no outputs\n"
    assert f"execution {e} is now titled 'last'" in cli(plain, "rename", "latest", "last")
    assert "'soon' is not an execution id or latest" in cli(plain, "metadata", "soon", code=2)
    # info's labels all keep a space before their value.
    assert "no-output limit: -" in cli(plain, "info", str(a))
    assert cli(plain, "delete", span) == f"execution {a} deleted\nexecution {d} deleted\nexecution {e} deleted\n"


async def test_logs_of_an_execution_not_started_yet_are_empty_and_followed(plain: Daemon, repo: Path,
                                                                        tmp_path: Path) -> None:
    gate = tmp_path / "gate"
    made = json.loads(cli(plain, "task", "run", "gated", "--grid", "x=1,2", "-p", f"gate={gate}", "--max-queued", "1",
                          "--json", cwd=repo))
    first, waiting = json.loads(cli(plain, "task", "info", str(made["id"]), "--json"))["execution_ids"]
    async with await Client.connect(plain.socket) as client:
        await wait_for_status(client, first, {"started"})
        assert (await client.get(waiting)).status == "created"
        # No log file yet: empty, whichever way it is read, and never an error.
        assert cli(plain, "logs", str(waiting)) == ""
        assert cli(plain, "logs", str(waiting), "--tail", "5") == ""
        assert cli(plain, "logs", str(waiting), "--head", "5", "--tail", "5") == ""
        assert cli(plain, "logs", str(waiting), "--grep", "hello", code=1) == ""
        assert "no metadata" in cli(plain, "metadata", str(waiting))
        assert await client.call("logs.count", {"id": waiting}) == 0
        # -f waits for the first line, then follows until the execution ends.
        follower = follow(plain, waiting)
        gate.touch()
        out, err = await asyncio.to_thread(follower.communicate, timeout=60)
        assert follower.returncode == 0 and out.strip() == "hello 2", (out, err)
        assert (await client.get(waiting)).status == "complete"

        # A follow of one that never starts ends when it does (stopped before it started).
        stop_gate = tmp_path / "never"
        made = json.loads(cli(plain, "task", "run", "gated", "--grid", "x=3,4", "-p", f"gate={stop_gate}",
                              "--max-queued", "1", "--json", cwd=repo))
        first, waiting = task_json(plain, made["id"])["execution_ids"]
        await wait_for_status(client, first, {"started"})
        follower = follow(plain, waiting)
        cli(plain, "task", "stop", str(made["id"]))
        out, err = await asyncio.to_thread(follower.communicate, timeout=60)
        assert follower.returncode == 0 and "error" not in err, (out, err)
        assert (await client.get(waiting)).status == "stopped"


async def test_a_task_keeps_its_search_and_its_children_go_with_it(plain: Daemon, repo: Path) -> None:
    bayes = json.loads(cli(plain, "task", "run", "train", "--type", "bayesian_tpe", "--random", "lr=0.01..1",
                           "--target-metric", "val_loss", "--count", "2", "--batch-size", "1", "--seed", "7",
                           "--json", cwd=repo))
    shown = task_json(plain, bayes["id"])
    assert {k: shown[k] for k in ("optimization_target_metric", "optimization_target_value", "execution_count",
                                  "execution_batch_size", "seed")} == {
        "optimization_target_metric": "val_loss", "optimization_target_value": None, "execution_count": 2,
        "execution_batch_size": 1, "seed": 7}
    info = cli(plain, "task", "info", str(bayes["id"]))
    for line in ("target metric:  val_loss (lowest first)", "count:          2", "batch size:     1",
                 "seed:           7"):
        assert line in info, info
    # Any task may name its metric: from the command line, or a blueprint's optimization-target-*.
    grid = json.loads(cli(plain, "task", "run", "train", "--grid", "lr=0.1,0.2", "--target-metric", "val_loss",
                          "--json", cwd=repo))
    assert task_json(plain, grid["id"])["optimization_target_metric"] == "val_loss"
    tuned = json.loads(cli(plain, "task", "run", "tuned", "--json", cwd=repo))
    assert "target metric:  val_loss (closest to 0.25 first)" in cli(plain, "task", "info", str(tuned["id"]))

    # Deleting one child alone is refused, naming the task: its count of children stays true.
    async with await Client.connect(plain.socket) as client:
        child = task_json(plain, tuned["id"])["execution_ids"][0]
        await wait_for_status(client, child)
    said = cli(plain, "delete", str(child), code=2)
    assert f"execution {child} is a child of task {tuned['id']}: delete the whole task" in said
    assert task_json(plain, tuned["id"])["total"] == 2


async def test_the_tuis_log_view_of_an_execution_not_started_yet_opens_empty_and_follows(plain: Daemon, repo: Path,
                                                                                        tmp_path: Path) -> None:
    from runyard.tui.app import RunyardApp
    from runyard.tui.logview import LogView

    from .test_tui_snapshots import screen_lines, until

    gate = tmp_path / "gate"
    made = json.loads(cli(plain, "task", "run", "gated", "--grid", "x=5,6", "-p", f"gate={gate}", "--max-queued", "1",
                          "--json", cwd=repo))
    first, waiting = task_json(plain, made["id"])["execution_ids"]
    async with await Client.connect(plain.socket) as client:
        await wait_for_status(client, first, {"started"})
        app = RunyardApp(plain.socket)
        async with app.run_test(size=(100, 30), notifications=True) as pilot:
            await app.loaded.wait()
            app.open_execution(waiting)
            await until(lambda p: bool(p.app.screen.query(LogView)) and p.app.screen.query_one(LogView).opened)(pilot)
            assert not [n.message for n in app._notifications], [n.message for n in app._notifications]
            gate.touch()  # it starts, prints, and the view follows
            await until(lambda p: any("hello 6" in line for line in screen_lines(app)))(pilot)
            await wait_for_status(client, waiting)
