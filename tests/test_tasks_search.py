"""Bayesian search (`bayesian_tpe`, real Optuna) as a user meets it: `runyard task run` against a real
daemon running plain processes, whose children print a synthetic objective as metadata."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import msgspec
import pytest

from runyard.protocol import Client
from runyard.protocol.tasks import TaskView

from .conftest import BASE_IMAGE, Daemon, make_repo, run_cli
from .test_tasks import cli, infos, new_task

OBJECTIVE = """\
import json, os
p = json.load(open(os.path.join(os.environ["VH_CONFIG_DIR"], "parameters.json")))
print(json.dumps({"loss": round((p["x"] - 0.73) ** 2 + (p["y"] - 0.21) ** 2, 8)}))
"""

STEPS = f"""\
- step:
    name: objective
    image: {BASE_IMAGE}
    command: python3 objective.py
    parameters:
      - name: x
        type: float
        default: 0
      - name: y
        type: float
        default: 0
"""

SPACE = ("--random", "x=0..1", "--random", "y=0..1", "--seed", "3")
BUDGET = ("--count", "26")


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_repo(tmp_path_factory.mktemp("search") / "repo", {"valohai.yaml": STEPS, "objective.py": OBJECTIVE})


async def finished(daemon: Daemon, task_id: int) -> TaskView:
    """The task once it has ended: its state is read after the subscription and at every event
    (a later round's children are not known when the wait starts, so none is filtered out)."""
    client = await Client.connect(daemon.socket, client_name="tests")
    ready = asyncio.Event()
    try:
        async def until_done() -> TaskView:
            async for _event in client.events(subscribed=ready.set):
                task = msgspec.convert(await client.call("tasks.get", {"id": task_id}), TaskView)
                if task.status in ("complete", "error", "stopped"):
                    return task
            raise AssertionError("event stream ended")

        waiting = asyncio.ensure_future(until_done())
        await ready.wait()
        task = msgspec.convert(await client.call("tasks.get", {"id": task_id}), TaskView)
        if task.status in ("complete", "error", "stopped"):
            waiting.cancel()
            return task
        return await asyncio.wait_for(waiting, 120)
    finally:
        await client.close()


def results(daemon: Daemon, task: TaskView) -> list[tuple[float, float, float]]:
    """(x, y, loss) of each child, in the order they were made."""
    rows = sorted(json.loads(cli(daemon, "summarize", "--task", str(task.id), "--json")), key=lambda r: r["id"])
    assert [r["id"] for r in rows] == task.execution_ids
    return [(r["parameters"]["x"], r["parameters"]["y"], r["metadata"]["loss"]) for r in rows]


async def test_bayesian_search_beats_random_search_and_resumes_after_kill_9(daemon_factory: type[Daemon],
                                                                           repo: Path) -> None:
    daemon = daemon_factory(local_extra='runtime = "process"\n', stop_grace=2, max_concurrent=8)
    daemon.start()
    random = await finished(daemon, new_task(daemon, repo, "objective", *SPACE, *BUDGET)["id"])
    bayes_args = ("objective", "--type", "bayesian-tpe", *SPACE, *BUDGET, "--batch-size", "3",
                  "--target-metric", "loss", "--target-value", "0")
    made = new_task(daemon, repo, *bayes_args)
    assert (made["type"], made["total"]) == ("bayesian_tpe", 20)  # the random first batch, as on Valohai
    bayes = await finished(daemon, made["id"])
    assert (bayes.status, bayes.children) == ("complete", {"complete": 26})
    drawn, asked = results(daemon, random), results(daemon, bayes)
    assert asked[:20] == drawn[:20]  # the same seed draws the same first batch
    # On the same budget and seed, the optimiser's 6 (two rounds of 3) beat the random search's last 6.
    assert min(r[2] for r in asked) < min(r[2] for r in drawn)
    assert min(r[2] for r in asked[20:]) < min(r[2] for r in drawn[20:])

    # Again, with the daemon killed between rounds: the study is rebuilt from the stored children
    # and asks exactly what it asked above; no child is lost or made twice.
    again = new_task(daemon, repo, *bayes_args)
    client = await Client.connect(daemon.socket, client_name="tests")
    try:
        async for _event in client.events(since=0):
            task = msgspec.convert(await client.call("tasks.get", {"id": again["id"]}), TaskView)
            if task.total > 20:
                break
    finally:
        await client.close()
    daemon.kill9()
    daemon.start()
    resumed = await finished(daemon, again["id"])
    assert (resumed.status, resumed.children) == ("complete", {"complete": 26})
    assert resumed.execution_ids == list(range(resumed.execution_ids[0], resumed.execution_ids[0] + 26))
    assert [r[:2] for r in results(daemon, resumed)] == [r[:2] for r in asked]


async def test_bayesian_search_without_optuna_is_refused_naming_the_extra(
        daemon_factory: type[Daemon], repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    hidden = tmp_path / "hide" / "optuna"
    hidden.mkdir(parents=True)
    (hidden / "__init__.py").write_text("raise ImportError('no optuna here')\n")
    monkeypatch.setenv("PYTHONPATH", str(hidden.parent))  # the daemon's Python finds this one first
    daemon = daemon_factory(local_extra='runtime = "process"\n')
    daemon.start()
    refused = cli(daemon, "task", "run", "objective", "--type", "bayesian_tpe", *SPACE, "--target-metric", "loss",
                  cwd=repo, code=2)
    assert "pip install 'runyard[optimize]'" in refused
    listed = cli(daemon, "task", "list", "--json")
    assert listed.strip() == "[]"


FIXTURES = Path(__file__).parent / "fixtures" / "valohai-yaml"  # copied from valohai/valohai-yaml, unchanged


def test_valohai_yamls_own_task_examples_lint_and_run(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    from runyard.cli.lint import problems_of

    def lint(name: str) -> list[tuple[str, str]]:
        return [(p.severity, p.message) for p in problems_of((FIXTURES / name).read_text(), name)]

    for name in ("examples--task-example.yaml", "valid_examples--task-stop-condition.yaml",
                 "warning_examples--nonsensical-task-bits.yaml", "examples--pipeline-with-tasks-example.yaml"):
        assert "error" not in {severity for severity, _ in lint(name)}, name
    for name in ("error_examples--invalid-task-blueprint-reference.yaml", "error_examples--step-with-error-tasks.yaml",
                 "error_examples--task-stop-condition.yaml"):
        assert "error" in {severity for severity, _ in lint(name)}, name
    assert not [m for _, m in lint("examples--task-example.yaml") if "distributed" in m]  # runyard runs them

    daemon = daemon_factory(local_extra='runtime = "process"\n')
    daemon.start()
    # What runyard does not run is said, not ignored: `runyard lint` as the user runs it.
    pipeline = run_cli(daemon, "lint", str(FIXTURES / "examples--pipeline-with-tasks-example.yaml"))
    assert pipeline.returncode == 0 and "warning: pipeline 'dynamic-task': runyard does not run pipelines" \
        in pipeline.stdout, pipeline
    example = make_repo(tmp_path / "example", {"valohai.yaml": (FIXTURES / "examples--task-example.yaml").read_text()})
    # B has no default: Valohai asks for it when a task is made, and so does runyard. The step's
    # command is the example's (a script that is not there): its children run and fail, and the
    # tasks complete as continue-and-complete says; what is checked is what each child was given.
    made = {name: new_task(daemon, example, name, "-p", "B=2", *extra) for name, extra in (
        ("task 1 single", ("--count", "2")), ("task 2 linear", ()), ("task 3 multiple", ()), ("parameter sets", ()))}
    expected = {"task 1 single": ("bayesian_tpe", [(25, 2)] * 2), "task 2 linear": ("manual_search", [(25, 2)]),
                "task 3 multiple": ("grid_search", [(25, 2), (26, 2)]),
                "parameter sets": ("manual_search", [(5, 6), (8, 9), (72, 42)])}
    for name, task in made.items():
        done = asyncio.run(finished(daemon, task["id"]))
        children = infos(daemon, done.execution_ids)
        assert (done.type, [(c["parameters"]["A"], c["parameters"]["B"]) for c in children]) == expected[name]
        assert (done.status, set(done.children)) == ("complete", {"error"}), name
    # Those runyard cannot run are refused by name: an integer parameter given 1e+25, a distributed task
    # whose members would differ.
    assert "parameter 'A': 1e+25 is not an integer" in cli(daemon, "task", "run", "task 4 logspace", "-p", "B=2",
                                                           cwd=example, code=2)
    assert "parameter A: a distributed task's members are identical" in cli(
        daemon, "task", "run", "task 5 random", "-p", "B=2", cwd=example, code=2)

    stoppable = make_repo(tmp_path / "stoppable",
                          {"valohai.yaml": (FIXTURES / "valid_examples--task-stop-condition.yaml").read_text()})
    done = asyncio.run(finished(daemon, new_task(daemon, stoppable, "can-stop")["id"]))
    assert (done.status, done.children, done.stop_condition) == ("complete", {"complete": 1}, "stop > 1")
    assert "i will stop" in cli(daemon, "logs", str(done.execution_ids[0]))
