"""What the CLI accepts and prints, as a user meets it: titles, --var and --tag are checked
before anything is uploaded, text from users and scripts never reaches a terminal raw, and
`restart --adhoc` checks the working tree as `run` does before uploading it.

One daemon for the module, running plain processes: Docker is not the point here.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from runyard.protocol import Client
from runyard.protocol.client import RemoteError

from .conftest import Daemon, make_repo, plain_process_daemon, run_cli, submit_repo, wait_for_status
from .test_pool import first_line

EVIL = "evil\x1b[2J\nline2"

SAY = """\
import json, os
out = os.environ["VH_OUTPUTS_DIR"]
open(os.path.join(out, "x\\x1b[2Jy.txt"), "w").write("1")
print(json.dumps({"loss\\x1b[2J": 1}))
config = json.load(open(os.path.join(os.environ["VH_CONFIG_DIR"], "execution.json")))
print("title", json.dumps(config["valohai.execution-title"]))
"""

STEPS = """\
- step:
    name: hold
    image: python:3.11-slim
    command:
      - echo started
      - while [ ! -e "$VH_OUTPUTS_DIR/go" ]; do sleep 0.05; done
- step:
    name: say
    image: python:3.11-slim
    command: python3 say.py {parameters}
    parameters:
      - name: msg
        type: string
        default: hi
"""


@pytest.fixture(scope="module")
def plain(docker_engine: None) -> Iterator[Daemon]:
    yield from plain_process_daemon()


def snapshots(daemon: Daemon) -> int:
    return len(list((daemon.data_dir / "snapshots").glob("*.tar")))


def refused_before_upload(daemon: Daemon, *args: str, cwd: Path) -> str:
    """Exit 2 with no snapshot made or uploaded; the refusal's text."""
    before = snapshots(daemon)
    result = run_cli(daemon, *args, cwd=cwd)
    assert result.returncode == 2, (args, result.stdout, result.stderr)
    assert "snapshot" not in result.stderr, (args, result.stderr)
    assert snapshots(daemon) == before, args
    return result.stderr


async def test_titles_vars_and_tags_are_checked_first_and_nothing_prints_raw(plain: Daemon, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": STEPS, "say.py": SAY})

    # A title with control characters or over 200 characters: refused as `rename` refuses it.
    for title in (EVIL, "t" * 100_000):
        assert "at most 200 printable characters" in refused_before_upload(plain, "run", "say", "--title", title,
                                                                          cwd=repo)
    # --var and --tag the daemon would refuse: before any snapshot too.
    for flag, value, said in (("--var", "VH_JOB_ID=1", "runyard sets this variable itself"),
                              ("--var", "A B=1", "a variable name is"),
                              ("--var", "NVIDIA_VISIBLE_DEVICES=all", "runyard sets this variable itself"),
                              ("--tag", "a b", "without spaces"), ("--tag", "", "1 to 64 characters")):
        assert said in refused_before_upload(plain, "run", "say", flag, value, cwd=repo)
        assert said in refused_before_upload(plain, "task", "run", "say", "--grid", "msg=a,b", flag, value, cwd=repo)

    run = run_cli(plain, "run", "say", "--title", "fine", "-p", "msg=\x1b[31mred", "--watch", "--json",
                  "--time-limit", "1h30m", "--no-output-timeout", "90", "--var", "MODE=fast", "--tag", "t1", cwd=repo)
    assert run.returncode == 0, run.stderr
    execution = json.loads(run.stdout.strip().splitlines()[-1])["id"]
    for title in (EVIL, "t" * 201):
        assert "printable" in refused_before_upload(plain, "restart", str(execution), "--title", title, cwd=repo)
        assert "printable" in refused_before_upload(plain, "task", "run", "say", "--grid", "msg=a", "--title", title,
                                                    cwd=repo)

    # The daemon applies the same check to every title it records, whatever the client.
    async with await Client.connect(plain.socket) as client:
        for title in (EVIL, "t" * 201, "bell\x07", "csi\x9b2J"):
            with pytest.raises(RemoteError, match="printable"):
                await submit_repo(client, repo, "say", title=title)
            with pytest.raises(RemoteError, match="printable"):
                await client.restart(execution, title=title)
            with pytest.raises(RemoteError, match="printable"):
                await client.call("tasks.create", {"step": "say", "snapshot": (await client.get(execution)).snapshot,
                                                   "type": "grid_search", "title": title,
                                                   "variants": [{"name": "msg", "style": "multiple",
                                                                 "rules": {"items": ["a"]}}]})

    # What the script wrote (an output's name, a metadata key) and what the user gave (a
    # parameter value) are shown escaped, never raw.
    for args in (["list"], ["info", str(execution)], ["outputs", str(execution)], ["metadata", str(execution)]):
        shown = run_cli(plain, *args)
        assert shown.returncode == 0, shown.stderr
        assert "\x1b" not in shown.stdout, (args, shown.stdout)
    assert "x\\x1b[2Jy.txt" in run_cli(plain, "outputs", str(execution)).stdout
    assert "loss\\x1b[2J" in run_cli(plain, "metadata", str(execution)).stdout
    info = run_cli(plain, "info", str(execution)).stdout
    assert "\\u001b[31mred" in info
    # info's text shows what the run was given: limits, variables, tags.
    assert "time limit:     1h30m\n" in info and "no-output limit: 1m30s\n" in info
    assert 'MODE = "fast"' in info and "tags:           t1\n" in info
    # A plain process is named by its whole attempt directory (cut to 12 characters, it named nothing).
    where = json.loads(run_cli(plain, "info", str(execution), "--json").stdout)["container_id"]
    assert f"container:      process in {where}\n" in info, info


def test_restart_adhoc_checks_the_working_tree_before_uploading(plain: Daemon, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": STEPS, "say.py": SAY})
    run = run_cli(plain, "run", "say", "--json", cwd=repo)
    assert run.returncode == 0, run.stderr
    execution = str(json.loads(run.stdout)["id"])

    # Not a git working tree (a home, /tmp): refused, nothing archived or uploaded.
    loose = tmp_path / "loose"
    loose.mkdir()
    (loose / "someone-elses.txt").write_text("private\n")
    said = refused_before_upload(plain, "restart", execution, "--adhoc", cwd=loose)
    assert "is not in a git working tree" in said
    said = refused_before_upload(plain, "restart", execution, "--adhoc", "-C", str(tmp_path / "nonexist"), cwd=repo)
    assert "no such directory" in said
    # A repository whose working tree has no valohai.yaml: refused as `run` refuses it.
    other = make_repo(tmp_path / "other", {"README": "no yaml here\n"})
    assert "has no valohai.yaml" in refused_before_upload(plain, "restart", execution, "--adhoc", cwd=other)
    # A parameter the working tree's step refuses: before the upload.
    assert "parameter 'nope'" in refused_before_upload(plain, "restart", execution, "--adhoc", "-p", "nope=1",
                                                       cwd=repo)

    # The snapshot line gives the files' size, as `run`'s does, not the tar archive's.
    (repo / "say.py").write_text(SAY + "# changed\n")
    restarted = run_cli(plain, "restart", execution, "--adhoc", "--watch", cwd=repo)
    assert restarted.returncode == 0, restarted.stderr
    # No title: execution.json says null, as Valohai's does, not "".
    assert "title null\n" in restarted.stdout
    files_size = len(STEPS.encode()) + len((SAY + "# changed\n").encode())
    assert f"of working tree: 2 files, {files_size} B" in restarted.stderr


async def test_shell_flags_after_the_id_and_a_shell_reading_stdin(plain: Daemon, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": STEPS, "say.py": SAY})
    async with await Client.connect(plain.socket) as client:
        e = await submit_repo(client, repo, "hold")
        await asyncio.wait_for(first_line(client, e.id, "started"), 120)
        env = {**os.environ, "RUNYARD_SOCKET": plain.socket, "NO_COLOR": "1"}

        def shell(*args: str, typed: str = "") -> subprocess.CompletedProcess[str]:
            return subprocess.run([sys.executable, "-m", "runyard.cli", "shell", *args], input=typed,
                                  capture_output=True, text=True, timeout=60, env=env)

        # -T after the id is the flag; with no command, a shell reads stdin: no prompt, no job-control noise.
        read = shell(str(e.id), "-T", typed="echo $((6*7))\nexit 4\n")
        assert (read.returncode, read.stdout, read.stderr) == (4, "42\n", "")
        # so is --no-tty, before a command after --
        ran = shell(str(e.id), "--no-tty", "--", "sh", "-c", "echo ran; exit 0")
        assert (ran.returncode, ran.stdout) == (0, "ran\n"), ran.stderr
        unknown = shell(str(e.id), "-x")
        assert unknown.returncode == 2 and "unknown flag '-x'" in unknown.stderr
        assert shell(str(e.id), "--", "touch", "../outputs/go").returncode == 0
        assert (await wait_for_status(client, e.id)).status == "complete"
