"""What `vh` users reach for, through the real CLI and daemon: --var, --tag, --parameter-file,
per-run time limits, `restart N` with changes (copy execution), and the Valohai environment
(VH_* variables, /valohai/config files) that valohai-utils scripts read, in a real container."""

from __future__ import annotations

import json
import subprocess
import textwrap
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from .conftest import BASE_IMAGE, Daemon, make_repo, plain_process_daemon, run_cli

# Reaches the command as an environment variable, never as shell text: it must arrive as typed.
TRICKY = """it's $(touch /tmp/ry-pwned) `id` "q" \\ ; | & *"""

SHOW = """\
import json, os, sys
data = os.path.join(os.environ["VH_INPUTS_DIR"], "data")
print(json.dumps({"argv": sys.argv[1:], "mode": os.environ.get("MODE"), "greeting": os.environ.get("GREETING"),
                  "inputs": sorted(os.listdir(data)) if os.path.isdir(data) else [], "version": VERSION}))
"""

STEPS = f"""\
- step:
    name: show
    image: {BASE_IMAGE}
    command: python3 show.py {{parameters}}
    parameters:
      - name: lr
        type: float
        default: 0.1
      - name: epochs
        type: integer
        default: 1
      - name: layers
        type: string
        multiple: repeat
        default: [x]
    inputs:
      - name: data
        optional: true
    environment-variables:
      - name: MODE
        default: step-default
    time-limit: 1h
    no-output-timeout: 2h
- step:
    name: quiet
    image: {BASE_IMAGE}
    command: sleep 120
"""


@pytest.fixture(scope="module")
def plain(docker_engine: None) -> Iterator[Daemon]:
    """One daemon for the module, running plain processes: the flags are the point, not Docker."""
    yield from plain_process_daemon(extra_config='[secrets]\nRUN_TOKEN = "s3cr3t-value"\n')


def cli_json(daemon: Daemon, *args: str, cwd: Path | None = None) -> Any:
    result = run_cli(daemon, *args, "--json", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])  # after --watch's log lines


def watched(daemon: Daemon, *args: str, cwd: Path | None = None) -> tuple[Any, dict[str, Any]]:
    """`... --watch --json`: the execution at its end, and the JSON line its command printed."""
    result = run_cli(daemon, *args, "--watch", "--json", cwd=cwd)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]), json.loads(lines[-2])


def refused(daemon: Daemon, *args: str, cwd: Path) -> str:
    result = run_cli(daemon, *args, cwd=cwd)
    assert result.returncode == 2, result.stdout + result.stderr
    return result.stderr


def test_var_tag_parameter_file_limits_and_restart_with_changes(plain: Daemon, tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("1,2\n")
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": STEPS, "show.py": "VERSION = 1\n" + SHOW})
    params = tmp_path / "params.yaml"
    params.write_text("lr: 0.5\nepochs: 2\nlayers: ['a,b', c]\n")  # a list: no separator to collide with

    # run: a parameter file under -p, variables over the step's, tags, the step's limits replaced
    first, seen = watched(plain, "run", "show", "--adhoc", "--parameter-file", str(params), "-p", "epochs=3",
                     "--var", "MODE=cli", "--var", f"GREETING={TRICKY}", "--tag", "exp1", "--tag", "ab",
                     "--time-limit", "30m", "--no-output-timeout", "0", cwd=repo)
    assert first["status"] == "complete"
    assert first["tags"] == ["exp1", "ab"] and first["variables"] == {"MODE": "cli", "GREETING": TRICKY}
    assert first["resources"]["time_limit_seconds"] == 1800 and "no_output_timeout_seconds" not in first["resources"]
    assert seen["argv"] == ["--lr=0.5", "--epochs=3", "--layers=a,b", "--layers=c"]
    assert seen["mode"] == "cli" and seen["greeting"] == TRICKY and not Path("/tmp/ry-pwned").exists()
    info = run_cli(plain, "info", str(first["id"])).stdout
    assert f"{'tags:':<16}exp1, ab" in info and f"GREETING = {json.dumps(TRICKY)}" in info

    # tags: list --tag (any of them), a TAGS column, and --json
    second = cli_json(plain, "run", "quiet", "--adhoc", "--tag", "other", "--time-limit", "1", cwd=repo)
    quiet = cli_json(plain, "run", "quiet", "--adhoc", "--no-output-timeout", "1", cwd=repo)
    assert {e["id"] for e in cli_json(plain, "list", "--tag", "exp1", "--tag", "other")} == {first["id"], second["id"]}
    table = run_cli(plain, "list", "--tag", "exp1").stdout.splitlines()
    assert table[0].split()[-1] == "TAGS" and len(table) == 2 and table[1].endswith("exp1,ab")

    # what cannot be taken is refused, naming it, before anything is recorded
    assert "--var '1BAD'" in refused(plain, "run", "show", "--adhoc", "--var", "1BAD=x", cwd=repo)
    assert "runyard sets this variable" in refused(plain, "run", "show", "--adhoc", "--var",
                                                   "NVIDIA_VISIBLE_DEVICES=all", cwd=repo)
    assert "from its secrets" in refused(plain, "run", "show", "--adhoc", "--var", "RUN_TOKEN=x", cwd=repo)
    assert "tag 'a b'" in refused(plain, "run", "show", "--adhoc", "--tag", "a b", cwd=repo)
    assert "cannot read parameter file" in refused(plain, "run", "show", "--parameter-file", "nope.yaml", cwd=repo)
    assert "not a duration: '5x'" in refused(plain, "run", "show", "--time-limit", "5x", cwd=repo)

    # restart with changes: the old values, with what is named replaced
    copy, seen = watched(plain, "restart", str(first["id"]), "-p", "lr=0.9", "--var", "MODE=again", "--title", "copy",
                         "--input", f"data={data}", "--tag", "re")
    assert copy["status"] == "complete" and copy["restarted_from"] == first["id"] and copy["title"] == "copy"
    assert copy["tags"] == ["re"] and copy["variables"] == {"MODE": "again", "GREETING": TRICKY}
    assert copy["resources"]["time_limit_seconds"] == 1800 and copy["snapshot"] == first["snapshot"]
    assert seen["argv"] == ["--lr=0.9", "--epochs=3", "--layers=a,b", "--layers=c"] and seen["inputs"] == ["data.csv"]
    assert cli_json(plain, "restart", str(first["id"]), "--image", "python:3.12")["image"] == "python:3.12"
    assert "GPU" in refused(plain, "restart", str(first["id"]), "--gpus", "1", cwd=repo)

    # restart --adhoc: today's working tree, the old parameters
    (repo / "show.py").write_text("VERSION = 2\n" + SHOW)
    today, seen = watched(plain, "restart", str(first["id"]), "--adhoc", "-C", str(repo))
    assert today["snapshot"] != first["snapshot"] and today["tags"] == ["exp1", "ab"]
    assert seen["version"] == 2 and seen["argv"] == ["--lr=0.5", "--epochs=3", "--layers=a,b", "--layers=c"]

    # the per-run limits hold where the step has none
    for execution, reason in ((second, "time-limit"), (quiet, "no-output-timeout")):
        run_cli(plain, "logs", str(execution["id"]), "-f")  # returns when it ends
        ended = cli_json(plain, "info", str(execution["id"]))
        assert (ended["status"], ended["reason"]) == ("error", reason)


VH_IMAGE = "runyard-vh:bookworm-py3"

# A Valohai script that asks the platform things: each must get an answer, not an exception.
PLATFORM = """\
import json, os
import yaml
import valohai

valohai.set_status_detail("halfway")  # Valohai's API: nothing to talk to here, and no error
config = valohai.execution().config
same = all(yaml.safe_load(open(f"/valohai/config/{n}.yaml")) == json.load(open(f"/valohai/config/{n}.json"))
           for n in ("parameters", "inputs", "execution"))
print(json.dumps({
    "distributed": valohai.distributed.is_distributed_task(),
    "trigger": valohai.triggers("nightly", required=False),
    "counter": config.counter, "title": config.title, "yaml_same_as_json": same,
    "keys": sorted(json.load(open("/valohai/config/execution.json"))),
    "project": os.environ.get("VH_PROJECT_ID"), "job": os.environ.get("VH_JOB_ID"),
    "note": os.environ.get("NOTE"), "lr": valohai.parameters("lr").value,
}))
"""

# What Valohai's documentation lists in execution.json.
DOCUMENTED_KEYS = {"valohai.creator-id", "valohai.creator-name", "valohai.execution-counter",
                   "valohai.execution-ctime", "valohai.execution-id", "valohai.project-id",
                   "valohai.project-name", "valohai.task-counter", "valohai.task-id"}


@pytest.mark.slow
def test_a_valohai_script_asking_the_platform_gets_answers_in_a_container(daemon: Daemon, tmp_path: Path) -> None:
    if subprocess.run(["docker", "image", "inspect", VH_IMAGE], capture_output=True).returncode != 0:
        pytest.fail(f"image {VH_IMAGE} is missing: scripts/test builds it")
    steps = textwrap.dedent(f"""\
        - step:
            name: ask
            image: {VH_IMAGE}
            command: python3 ask.py {{parameters}}
            parameters:
              - name: lr
                type: float
                default: 0.1
        """)
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": steps, "ask.py": PLATFORM})
    done, seen = watched(daemon, "run", "ask", "--title", "asks", "--var", f"NOTE={TRICKY}", cwd=repo)
    assert done["status"] == "complete"
    assert seen["distributed"] is False and seen["trigger"] is None
    assert (seen["counter"], seen["title"], seen["lr"]) == (done["id"], "asks", 0.1)
    assert seen["yaml_same_as_json"] is True and set(seen["keys"]) >= DOCUMENTED_KEYS
    assert uuid.UUID(seen["project"]) and seen["job"] == f"runyard-{done['id']}"
    assert seen["note"] == TRICKY  # through Docker's environment, as typed


async def test_tui_queue_filters_by_tag(plain: Daemon, tmp_path: Path) -> None:
    from textual.widgets import DataTable, Input

    from runyard.tui.app import RunyardApp

    repo = make_repo(tmp_path / "repo", {"valohai.yaml": STEPS, "show.py": "VERSION = 1\n" + SHOW})
    tagged = cli_json(plain, "run", "show", "--adhoc", "--tag", "sweep-7", "--var", "MODE=tuned", cwd=repo)
    other = cli_json(plain, "run", "show", "--adhoc", "--tag", "sweep-8", cwd=repo)
    app = RunyardApp(plain.socket)
    async with app.run_test(size=(120, 36)) as pilot:
        table = app.screen.query_one("#queue-table", DataTable)

        def shown() -> set[int]:
            return {int(str(k.value)) for k in table.rows}

        async def until(check: Callable[[], bool], what: str) -> None:
            deadline = time.monotonic() + 30
            while not check():  # the UI has no event to await: look after each frame
                assert time.monotonic() < deadline, f"timed out waiting for {what}; shown: {shown()}"
                await pilot.pause(0.05)

        await until(lambda: {tagged["id"], other["id"]} <= shown(), "both in the queue")
        await pilot.press("slash", *"tag:sweep-7")
        await until(lambda: shown() == {tagged["id"]}, "the filter to leave only the tagged one")

        # A TAGS column while rows have tags; on a narrow screen it gives way first, before OWNER and AGE.
        def labels() -> list[str]:
            return [str(column.label) for column in table.columns.values()]

        await until(lambda: "TAGS" in labels(), "a TAGS column")
        assert "sweep-7" in [str(cell) for cell in table.get_row(str(tagged["id"]))]
        await pilot.resize_terminal(60, 36)
        await until(lambda: "TAGS" not in labels(), "TAGS to give way on a narrow screen")
        assert {"TITLE", "STATUS", "OWNER"} <= set(labels())

        # The Info tab shows the tags and the --var values.
        from textual.widgets import Static

        from runyard.tui.detail import DetailScreen

        if isinstance(app.focused, Input):
            await pilot.press("enter")  # the filter is typed: leave its input
        await pilot.press("enter")
        await until(lambda: isinstance(app.screen, DetailScreen), "the detail screen")
        await pilot.press("3")

        def info() -> str:
            return str(app.screen.query_one("#info-text", Static).render()) if app.screen.query("#info-text") else ""

        await until(lambda: "Parameters" in info(), "the Info tab")
        assert "tags     sweep-7" in info() and 'MODE = "tuned"' in info()
