"""Tasks (parameter sweeps) as a user meets them: `runyard task ...` and `runyard summarize` against a
real daemon. The process runtime where the task engine is the point; real containers for the
container contract (a 3x2 grid runs 6 children with exactly those parameters)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest

from runyard.protocol import Client
from runyard.protocol.messages import Event
from runyard.protocol.tasks import TaskView

from .conftest import BASE_IMAGE, Daemon, make_repo, plain_process_daemon, run_cli

TRAIN = """\
import json, os, sys, time
cfg = json.load(open(os.path.join(os.environ["VH_CONFIG_DIR"], "parameters.json")))
ex = json.load(open(os.path.join(os.environ["VH_CONFIG_DIR"], "execution.json")))
print(json.dumps({"seen": {"task_env": os.environ.get("VH_TASK_ID"), "task_id": ex["valohai.task-id"],
                           "task_counter": ex["valohai.task-counter"], "params": cfg}}), file=sys.stderr)
if cfg.get("fail_on") is not None and cfg["x"] == cfg["fail_on"]:
    sys.exit(3)
steps = int(cfg.get("steps", 1))
for i in range(1, steps + 1):
    print(json.dumps({"loss": round(cfg.get("lr", 1) * cfg.get("x", 1) / i, 6), "step": i}), flush=True)
    if steps > 1:
        time.sleep(0.02)
"""

STEPS = f"""\
- step:
    name: train
    image: {BASE_IMAGE}
    command: python3 train.py
    parameters:
      - name: lr
        type: float
        default: 0.1
      - name: x
        type: integer
        default: 1
      - name: steps
        type: integer
        default: 1
      - name: fail_on
        type: integer
        optional: true
- step:
    name: early
    image: {BASE_IMAGE}
    command: python3 train.py {{parameters}}
    stop-condition: loss < 0.02
    parameters:
      - name: lr
        type: float
        default: 1
      - name: steps
        type: integer
        default: 400
- task:
    name: sweep
    step: train
    type: random-search
    execution-count: 3
    maximum-queued-executions: 2
    parameters:
      - name: lr
        style: random
        rules: {{min: 0.001, max: 0.1, distribution: loguniform, seed: 7}}
      - name: x
        style: multiple
        rules: {{items: [1, 2, 3]}}
"""


@pytest.fixture(scope="module")
def plain(docker_engine: None) -> Iterator[Daemon]:
    """One daemon for the module, running plain processes (4 at a time)."""
    yield from plain_process_daemon()


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("tasks") / "repo", {"valohai.yaml": STEPS, "train.py": TRAIN})


def cli(daemon: Daemon, *args: str, cwd: Path | None = None, code: int = 0) -> str:
    result = run_cli(daemon, *args, cwd=cwd)
    assert result.returncode == code, result.stdout + result.stderr
    return result.stdout + (result.stderr if code else "")


def new_task(daemon: Daemon, repo: Path, *args: str) -> dict[str, Any]:
    return json.loads(cli(daemon, "task", "run", *args, "--json", cwd=repo))  # type: ignore[no-any-return]


async def follow(daemon: Daemon, task_id: int, limit: int | None = None) -> TaskView:
    """Wait on the daemon's events until the task ends; at every event, its children queued or
    running stay within ``limit``."""
    client = await Client.connect(daemon.socket, client_name="tests")
    try:
        async def get() -> TaskView:
            return msgspec.convert(await client.call("tasks.get", {"id": task_id}), TaskView)

        async def until_done() -> TaskView:
            children = set((await get()).execution_ids)
            # The module's daemon has the events of every earlier test: only this task's and its
            # children's (replayed or new) are worth a look.
            async for event in client.events(since=0):
                if isinstance(event, Event) and event.execution_id not in children and event.task != task_id:
                    continue
                task = await get()
                if limit is not None:
                    busy = sum(task.children.get(s, 0) for s in ("queued", "started", "stopping"))
                    assert busy <= limit, task.children
                if task.status in ("complete", "error", "stopped"):
                    return task
            raise AssertionError("event stream ended")
        return await asyncio.wait_for(until_done(), 120)
    finally:
        await client.close()


def info(daemon: Daemon, execution_id: int) -> dict[str, Any]:
    return json.loads(cli(daemon, "info", str(execution_id), "--json"))  # type: ignore[no-any-return]


def infos(daemon: Daemon, ids: list[int]) -> list[dict[str, Any]]:
    """`info` of several executions in one command (a list of ids is a range)."""
    found = json.loads(cli(daemon, "info", ",".join(map(str, ids)), "--json"))
    return found if isinstance(found, list) else [found]


async def test_grid_task_runs_every_combination_within_its_queue_limit_and_summarizes(plain: Daemon,
                                                                                       repo: Path) -> None:
    made = new_task(plain, repo, "train", "--grid", "lr=0.1,0.01,0.001", "--linear", "x=1:2:1", "--max-queued", "2")
    assert (made["type"], made["total"], made["children"]) == ("grid_search", 6, {"queued": 2, "created": 4})
    done = await follow(plain, made["id"], limit=2)
    assert (done.status, done.children) == ("complete", {"complete": 6})
    children = infos(plain, done.execution_ids)
    assert sorted((c["parameters"]["lr"], c["parameters"]["x"]) for c in children) == sorted(
        (lr, x) for lr in (0.1, 0.01, 0.001) for x in (1, 2))
    assert {c["task"] for c in children} == {done.id}
    logs = cli(plain, "logs", str(done.execution_ids[0]))
    seen = json.loads(next(line for line in logs.splitlines() if '"seen"' in line))["seen"]
    assert (seen["task_env"], seen["task_id"], seen["task_counter"]) == (str(done.id), str(done.id), done.id)

    table = cli(plain, "summarize", "--task", str(done.id), "--sort", "loss").splitlines()
    assert table[0].split() == ["ID", "STATUS", "lr", "steps", "x", "loss", "step"]
    losses = [float(row.split()[5]) for row in table[1:]]
    assert losses == sorted(losses) and len(losses) == 6 and losses[0] == 0.001
    rows = json.loads(cli(plain, "summarize", "--task", str(done.id), "--sort", "loss", "--desc", "--json"))
    assert [r["metadata"]["loss"] for r in rows] == sorted(losses, reverse=True)
    first, last = done.execution_ids[0], done.execution_ids[-1]
    csv_text = cli(plain, "summarize", f"{first}-{last}", "--key", "loss", "--csv")
    assert csv_text.splitlines()[0] == "id,status,lr,steps,x,loss" and len(csv_text.splitlines()) == 7
    listed = cli(plain, "task", "list")
    assert f"{done.id}" in listed and "6/6 done" in listed
    assert f"executions:     {first}-{last}" in cli(plain, "task", "info", str(done.id))
    # Ranges work in info, logs and delete as in summarize.
    assert [e["id"] for e in json.loads(cli(plain, "info", f"{first}-{last}", "--json"))] == done.execution_ids
    assert cli(plain, "logs", f"{first},{first + 1}").count("==> execution ") == 2
    assert json.loads(cli(plain, "info", "latest", "--json"))["id"] == last
    # A child goes with its task only, so the task's count stays true.
    assert f"is a child of task {done.id}" in cli(plain, "delete", f"{last - 1}-{last}", code=2)
    assert f"delete the whole task (runyard task delete {done.id})" in cli(plain, "delete", str(last), code=2)
    assert json.loads(cli(plain, "task", "info", str(done.id), "--json"))["total"] == 6


async def test_blueprint_random_search_is_reproducible_and_manual_sets_run_as_given(plain: Daemon, repo: Path,
                                                                                   tmp_path: Path) -> None:
    one = new_task(plain, repo, "sweep")
    two = new_task(plain, repo, "sweep")
    assert (one["name"], one["type"], one["total"], one["maximum_queued_executions"]) == \
        ("sweep", "random_search", 3, 2)
    first, second = await follow(plain, one["id"], limit=2), await follow(plain, two["id"], limit=2)
    drawn = [e["parameters"] for e in infos(plain, first.execution_ids)]
    assert drawn == [e["parameters"] for e in infos(plain, second.execution_ids)]
    assert all(0.001 <= p["lr"] <= 0.1 and p["x"] in (1, 2, 3) for p in drawn)

    sets = tmp_path / "sets.yaml"
    sets.write_text("- {lr: 0.5, x: 7}\n- {lr: 0.25}\n")
    manual = new_task(plain, repo, "train", "--parameter-sets", str(sets))
    done = await follow(plain, manual["id"])
    assert [(e["parameters"]["lr"], e["parameters"]["x"]) for e in infos(plain, done.execution_ids)] == \
        [(0.5, 7), (0.25, 1)]
    # A blueprint that is not there, and a distributed task of varying members, are refused by name.
    assert "no task named 'nope'" in cli(plain, "task", "run", "nope", cwd=repo, code=2)
    assert "a distributed task's members are identical" in cli(plain, "task", "run", "train", "--type",
                                                               "distributed", "--random", "lr=0..1", cwd=repo, code=2)
    assert "needs optimization-target-metric" in cli(plain, "task", "run", "train", "--type", "bayesian-tpe",
                                                     "--random", "lr=0..1", cwd=repo, code=2)


async def test_an_ended_task_always_shows_when_it_ended(plain: Daemon, repo: Path) -> None:
    # Clients (the TUI, `task info`, `--watch`) ask for a task while it ends: whoever sees it
    # ended sees its end time too, in tasks.get, `task info` and `task list --json`.
    async def poll(task_id: int) -> TaskView:
        client = await Client.connect(plain.socket, client_name="tests")
        try:
            while (task := msgspec.convert(await client.call("tasks.get", {"id": task_id}), TaskView)).status \
                    not in ("complete", "error", "stopped"):
                pass
            return task
        finally:
            await client.close()

    ids = [new_task(plain, repo, "train", "--grid", "x=1,2", "-p", "steps=10")["id"] for _ in range(2)]
    seen = await asyncio.gather(*(poll(i) for i in ids for _ in range(3)))
    assert [(t.status, t.ended_at is not None) for t in seen] == [("complete", True)] * len(seen)
    shown = json.loads(cli(plain, "task", "info", str(ids[0]), "--json"))
    assert shown["ended_at"] and shown["ended_at"] >= shown["created_at"]
    assert f"ended:          {shown['ended_at']}" in cli(plain, "task", "info", str(ids[0]))
    listed = {t["id"]: t["ended_at"] for t in json.loads(cli(plain, "task", "list", "--json"))}
    assert listed[ids[0]] == shown["ended_at"] and all(listed[i] for i in ids)


async def test_on_child_error_modes(plain: Daemon, repo: Path) -> None:
    grid = ("train", "--grid", "x=1,2,3", "-p", "fail_on=2", "--max-queued", "1")
    # The first two run their children side by side; stop-all-and-error one at a time, so that
    # the failed child stops one still waiting.
    default = await follow(plain, new_task(plain, repo, *grid[:-2])["id"])
    assert (default.status, default.children) == ("complete", {"complete": 2, "error": 1})
    counted = await follow(plain, new_task(plain, repo, *grid[:-2], "--on-child-error", "continue-and-error")["id"])
    assert (counted.status, counted.reason, counted.children) == ("error", "1 child failed",
                                                                  {"complete": 2, "error": 1})
    stopped = await follow(plain, new_task(plain, repo, *grid, "--on-child-error", "stop-all-and-error")["id"])
    assert (stopped.status, stopped.reason, stopped.children) == ("error", "child-error",
                                                                  {"complete": 1, "error": 1, "stopped": 1})
    assert info(plain, stopped.execution_ids[2])["reason"] == "stopped-before-start"


async def test_stop_conditions_of_a_task_and_of_a_step(plain: Daemon, repo: Path) -> None:
    # The task's: its children print a falling loss for 20 s; the first below 0.05 stops them all.
    task = new_task(plain, repo, "train", "--grid", "x=1,2", "-p", "steps=400", "-p", "lr=1",
                    "--stop-condition", "loss < 0.05")
    done = await follow(plain, task["id"])
    assert (done.status, done.reason) == ("stopped", "stop-condition")
    assert {e["status"] for e in infos(plain, done.execution_ids)} == {"stopped"}
    peaks = json.loads(cli(plain, "summarize", "--task", str(done.id), "--key", "loss", "--agg", "max", "--json"))
    assert sorted(r["metadata"]["loss"] for r in peaks) == [1.0, 2.0]  # each child's first, largest loss
    # The step's own: `runyard run` of a step with a stop-condition.
    watched = cli(plain, "run", "early", "--watch", "--json", cwd=repo, code=1)  # it did not complete
    run = json.loads(next(t for t in watched.splitlines() if t.startswith("{\"id\"")))
    assert (run["status"], run["reason"], run["stop_condition"]) == ("stopped", "stop-condition", "loss < 0.02")
    assert 0 < run["metadata"]["loss"] < 0.02
    again = cli(plain, "restart", str(run["id"]), "--watch", "--json", code=1)  # a restart keeps it
    rerun = json.loads(next(t for t in again.splitlines() if t.startswith("{\"id\"")))
    assert (rerun["status"], rerun["reason"], rerun["restarted_from"]) == ("stopped", "stop-condition", run["id"])


async def test_stop_restart_and_delete_act_on_the_whole_task(plain: Daemon, repo: Path) -> None:
    task = new_task(plain, repo, "train", "--grid", "x=1,2,3", "-p", "steps=400", "--max-queued", "1",
                    "--title", "slow sweep")
    assert "task " in cli(plain, "task", "stop", str(task["id"]))
    done = await follow(plain, task["id"])
    assert (done.status, done.reason, done.children) == ("stopped", "stopped", {"stopped": 3})
    assert "stop asked by root (task " in cli(plain, "logs", str(done.execution_ids[0]))
    again = json.loads(cli(plain, "task", "restart", str(done.id), "--json"))
    assert again["total"] == 3 and again["title"] == "slow sweep" and again["id"] != done.id
    assert [e["parameters"]["x"] for e in infos(plain, again["execution_ids"])] == [1, 2, 3]
    assert "stop it before deleting it" in cli(plain, "task", "delete", str(again["id"]), code=2)
    first, last = again["execution_ids"][0], again["execution_ids"][-1]
    assert cli(plain, "stop", f"{first}-{last}").count("execution ") == 3  # each child on its own
    by_hand = await follow(plain, again["id"])
    assert (by_hand.status, by_hand.reason) == ("stopped", "children-stopped")
    assert "with its 3 children" in cli(plain, "task", "delete", str(done.id))
    assert "there is no execution" in cli(plain, "info", str(done.execution_ids[0]), code=2)
    assert "there is no task" in cli(plain, "task", "info", str(done.id), code=2)


@pytest.mark.slow
async def test_a_3x2_grid_runs_6_containers_with_exactly_those_parameters(daemon: Daemon, repo: Path) -> None:
    made = new_task(daemon, repo, "train", "--grid", "lr=0.5,0.25,0.125", "--grid", "x=3,4")
    done = await follow(daemon, made["id"])
    assert (done.status, done.total) == ("complete", 6)
    seen = []
    for execution_id in done.execution_ids:
        logs = cli(daemon, "logs", str(execution_id))
        line = json.loads(next(t for t in logs.splitlines() if '"seen"' in t))["seen"]
        assert (line["task_env"], line["task_id"]) == (str(done.id), str(done.id))
        seen.append((line["params"]["lr"], line["params"]["x"]))
    assert sorted(seen) == sorted((lr, x) for lr in (0.5, 0.25, 0.125) for x in (3, 4))


async def test_a_daemon_killed_while_children_run_finishes_the_task(daemon_factory: type[Daemon], repo: Path) -> None:
    daemon = daemon_factory(local_extra='runtime = "process"\n', stop_grace=2)
    daemon.start()
    made = new_task(daemon, repo, "train", "--grid", "x=1,2,3,4", "-p", "steps=30", "--max-queued", "2")
    client = await Client.connect(daemon.socket, client_name="tests")
    try:  # kill it once the first child runs, two more waiting
        async for _event in client.events(since=0):
            task = msgspec.convert(await client.call("tasks.get", {"id": made["id"]}), TaskView)
            if task.children.get("started"):
                break
    finally:
        await client.close()
    daemon.kill9()
    daemon.start()
    done = await follow(daemon, made["id"], limit=2)
    assert (done.status, done.children, done.execution_ids) == ("complete", {"complete": 4}, made["execution_ids"])
    assert sorted(e["parameters"]["x"] for e in infos(daemon, done.execution_ids)) == [1, 2, 3, 4]


@pytest.mark.slow
def test_only_its_owner_or_an_admin_may_stop_restart_or_delete_a_task(daemon_factory: type[Daemon],
                                                                      repo: Path) -> None:
    from .test_trust import cli_as, shared_daemon
    from .test_users import ensure_users

    users = ensure_users()
    daemon = shared_daemon(daemon_factory, local_extra='runtime = "process"\n')
    made = new_task(daemon, repo, "train", "--grid", "x=1,2", "-p", "steps=400", "--max-queued", "1")
    for action in ("stop", "restart", "delete"):
        refused = cli_as(users["rybob"], daemon, "task", action, str(made["id"]))
        assert refused.returncode == 2 and f"task {made['id']} belongs to root" in refused.stderr, refused
    listed = cli_as(users["rybob"], daemon, "task", "list", "--json")  # anyone may look, as at executions
    assert [t["id"] for t in json.loads(listed.stdout)] == [made["id"]]
    stopped = cli_as(users["ryadmin"], daemon, "task", "stop", str(made["id"]), "--json")
    assert json.loads(stopped.stdout)["stopped"] == made["execution_ids"]
