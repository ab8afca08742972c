"""A Valohai or MachineLabs user moving in: the rough edges of the CLI, as they meet them.

The real `runyard` command against a real daemon. The process runtime carries the
checks where Docker is not the point; the scripts themselves run on both runtimes.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from runyard.protocol import Client

from .conftest import BASE_IMAGE, Daemon, git, make_repo, run_cli, wait_for_status

ML_IMAGES = f'[mlyaml.images]\n"keras_v2-4_python-3" = "{BASE_IMAGE}"\n'


def cli(daemon: Daemon, *args: str, cwd: Path | None = None,
        env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    if env is None:
        return run_cli(daemon, *args, cwd=cwd)
    return subprocess.run([sys.executable, "-m", "runyard.cli", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "RUNYARD_SOCKET": daemon.socket, "NO_COLOR": "1", **env})


def into_closed_pipe(daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """`runyard ... | head` once head has gone: stdout is a pipe nobody reads."""
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        return subprocess.run([sys.executable, "-m", "runyard.cli", *args], stdout=write_end,
                              stderr=subprocess.PIPE, text=True, timeout=60,
                              env={**os.environ, "RUNYARD_SOCKET": daemon.socket, "NO_COLOR": "1"})
    finally:
        os.close(write_end)


def test_lint_reads_like_valohai_yaml(tmp_path: Path) -> None:
    missing = subprocess.run([sys.executable, "-m", "runyard.cli", "lint", str(tmp_path / "nope.yaml")],
                             capture_output=True, text=True)
    assert missing.returncode == 1  # not 2: that is "the daemon refused"
    assert "cannot read" in missing.stderr and "No such file" in missing.stderr

    def lint(name: str, text: str) -> subprocess.CompletedProcess[str]:
        (tmp_path / name).write_text(text)
        return subprocess.run([sys.executable, "-m", "runyard.cli", "lint", name], cwd=tmp_path,
                              capture_output=True, text=True)

    spaced = lint("valohai.yaml", "- step:\n    name: a\n    image: x\n    command: echo\n"
                                  "    parameters:\n      - {name: g, type: 'in  teger'}\n")
    assert spaced.returncode == 1
    assert "'in  teger' is not one of" in spaced.stdout  # the value as written, both spaces
    assert spaced.stdout.splitlines()[-1] == "1 error, 0 warnings"

    warned = lint("valohai.yaml", "- step:\n    name: a\n    image: x\n    command: echo\n"
                                  "    parameters:\n      - {name: f, type: flag, optional: true}\n")
    assert warned.returncode == 0, warned.stdout
    assert "warning: Step a, parameter f: `optional` has no effect" in warned.stdout
    assert warned.stdout.splitlines()[-1] == "0 errors, 1 warning"

    ml = lint("ml.yaml", "dockerImageId: keras_v2-4_python-3\nparameters:\n  - pass-as: --epochs=2\n"
                         "inputs:\n  - name: mnist.npz\n    url: https://example.org/mnist.npz\n")
    assert (ml.returncode, ml.stdout) == (0, "ml.yaml: ok\n")
    bad_ml = lint("ml.yaml", "dockerImageId: keras_v2-4_python-3\ninputs:\n  - name: mnist.npz\n")
    assert bad_ml.returncode == 1 and "inputs[0] needs a name and a url" in bad_ml.stdout
    # A file named ml.yaml is linted as one whatever it holds.
    no_image = lint("ml.yaml", "parameters:\n  - pass-as: --epochs=2\nhardwareType: gpu\n")
    assert no_image.returncode == 1
    assert "error: dockerImageId is missing" in no_image.stdout and "array" not in no_image.stdout
    listed = lint("ml.yaml", "- step:\n    name: a\n")
    assert listed.returncode == 1 and "an ml.yaml is a mapping" in listed.stdout
    wrong = lint("ml.yaml", "dockerImageId: [1]\n")
    assert wrong.returncode == 1 and "dockerImageId must name an image" in wrong.stdout


VALOHAI_YAML = """\
- step:
    name: train
    image: {image}
    command:
      - python3 train.py {{parameters}}
    parameters:
      - name: spec
        type: string
        multiple: separate
        default: [x]
      - name: epochs
        type: integer
        default: 1
    environment-variable-groups: [team-keys]
"""

TRAIN = """\
import json, os
parameters = json.load(open(os.environ["VH_CONFIG_DIR"] + "/parameters.json"))
print(json.dumps({"spec": parameters["spec"]}))
for i in range(3):
    print(json.dumps({"step": i}))
open(os.environ["VH_OUTPUTS_DIR"] + "/model.txt", "w").write("w")
"""


@pytest.fixture
def process_daemon(daemon_factory: type[Daemon]) -> Daemon:
    daemon = daemon_factory(local_extra='runtime = "process"\n')
    daemon.start()
    return daemon


async def test_run_checks_first_and_says_what_it_does(process_daemon: Daemon, tmp_path: Path) -> None:
    daemon = process_daemon
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": VALOHAI_YAML.format(image=BASE_IMAGE), "train.py": TRAIN})

    # A parameter the daemon would refuse is refused before any upload: no snapshot line, none stored.
    refused = cli(daemon, "run", "train", "-p", "epochs=many", cwd=repo)
    assert refused.returncode == 2 and "parameter 'epochs'" in refused.stderr
    assert "snapshot" not in refused.stderr
    assert not list((daemon.data_dir / "snapshots").glob("*.tar"))
    twice = cli(daemon, "run", "train", "-p", "epochs=1", "-p", "epochs=2", cwd=repo)
    assert twice.returncode == 2 and "'epochs' takes one value, but was given 2" in twice.stderr

    # Uncommitted changes are left out, in one line that says how to include them.
    (repo / "notes.txt").write_text("not committed\n")
    run = cli(daemon, "run", "train", "-p", "spec=a", "-p", "spec=b,c", "--watch", cwd=repo)
    assert run.returncode == 0, run.stderr
    [notice] = [line for line in run.stderr.splitlines() if "uncommitted" in line]
    assert "--adhoc" in notice
    # Repeated -p appends, each value as written (the separator inside one is kept).
    assert '{"spec": ["a", "b,c"]}' in run.stdout
    # The snapshot's size is its files' size, not the tar archive's.
    files_size = len((repo / "valohai.yaml").read_bytes()) + len(TRAIN.encode())
    assert f": 2 files, {files_size} B" in run.stderr
    assert "environment-variable-groups (team-keys)" in run.stderr and "ignored" in run.stderr
    execution = json.loads(cli(daemon, "list", "--json").stdout)[0]["id"]

    # Outputs exist but none matches: say so, not "no outputs".
    unmatched = cli(daemon, "outputs", str(execution), "--filter", "*.pt")
    assert unmatched.returncode == 0
    assert unmatched.stdout.startswith(f"no output of execution {execution} matches '*.pt' (it has 1")
    # A title can be cleared.
    assert cli(daemon, "rename", str(execution), "first").returncode == 0
    cleared = cli(daemon, "rename", str(execution), "")
    assert cleared.returncode == 0, cleared.stderr
    assert cleared.stdout == f"execution {execution} has no title now\n"
    assert json.loads(cli(daemon, "info", str(execution), "--json").stdout)["title"] is None

    # Piped into a reader that has gone (`| head`): quiet, exit 0.
    for args in (["list"], ["logs", str(execution)], ["metadata", str(execution)], ["info", str(execution)]):
        piped = into_closed_pipe(daemon, *args)
        assert (piped.returncode, piped.stderr) == (0, ""), args

    # A repository with only an ml.yaml: the refusal names --config-file.
    ml_repo = make_repo(tmp_path / "ml", {"ml.yaml": "dockerImageId: keras_v2-4_python-3\n", "main.py": "\n"})
    no_yaml = cli(daemon, "run", cwd=ml_repo)
    assert no_yaml.returncode == 2 and "has no valohai.yaml" in no_yaml.stderr
    assert "--config-file ml.yaml" in no_yaml.stderr

    # Root running in another user's repository: git refuses it, and runyard says what git said.
    subprocess.run(["chown", "-R", "nobody", str(repo)], check=True)
    isolated = {"GIT_CONFIG_GLOBAL": str(tmp_path / "empty-gitconfig"), "GIT_CONFIG_NOSYSTEM": "1"}
    (tmp_path / "empty-gitconfig").write_text("")
    foreign = cli(daemon, "run", "train", cwd=repo, env=isolated)
    assert foreign.returncode == 2
    assert "dubious ownership" in foreign.stderr and "safe.directory" in foreign.stderr
    assert "is not a commit" not in foreign.stderr


ML_YAML = """\
dockerImageId: keras_v2-4_python-3
parameters:
  - pass-as: --epochs=2
inputs:
  - name: data.csv
    url: {path}
"""

ML_MAIN = """\
import sys
print("argv", sys.argv[1:], "input", open("inputs/data.csv").read().strip())
with open("outputs/model.txt", "w") as f:
    f.write("weights")
"""

GRACEFUL = """\
import signal, sys, time
def term(*_):
    print("saving on TERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("ready", flush=True)
time.sleep(300)
"""

SCRIPTS_YAML = f"""\
- step:
    name: shebang
    image: {BASE_IMAGE}
    command:
      - "#!/bin/bash"
      - '[[ -n "$BASH_VERSION" ]]'
      - echo "ran by bash $BASH_VERSION"
- step:
    name: graceful
    image: {BASE_IMAGE}
    command: python3 graceful.py
"""


@pytest.mark.parametrize("runtime", [pytest.param("docker", marks=pytest.mark.slow), "process"])
async def test_scripts_run_as_valohai_and_machinelabs_ran_them(daemon_factory: type[Daemon], tmp_path: Path,
                                                                runtime: str) -> None:
    daemon = daemon_factory(extra_config=ML_IMAGES, local_extra=f'runtime = "{runtime}"\n')
    daemon.start()
    (tmp_path / "data.csv").write_text("1,2,3\n")
    repo = make_repo(tmp_path / "repo", {
        "valohai.yaml": SCRIPTS_YAML, "graceful.py": GRACEFUL,
        "ml.yaml": ML_YAML.format(path=tmp_path / "data.csv"), "main.py": ML_MAIN, "outputs/.gitkeep": "",
    })
    ids = {}
    for args in (["graceful"], ["shebang"], ["--config-file", "ml.yaml"]):
        submitted = cli(daemon, "run", *args, cwd=repo)
        assert submitted.returncode == 0, submitted.stderr
        ids[args[-1]] = int(submitted.stdout)

    async with await Client.connect(daemon.socket) as client:
        follow = client.follow_logs(ids["graceful"])
        async for block in follow:  # its handler is set once it has said so
            if "ready" in block.data:
                break
        await follow.aclose()
        assert cli(daemon, "stop", str(ids["graceful"])).returncode == 0
        for execution_id in ids.values():
            await wait_for_status(client, execution_id)

    def info(key: str) -> dict[str, object]:
        shown: dict[str, object] = json.loads(cli(daemon, "info", str(ids[key]), "--json").stdout)
        return shown

    # The command caught SIGTERM and exited 0: that is the code recorded, not the shell's 143.
    stopped = info("graceful")
    assert (stopped["status"], stopped["exit_code"]) == ("stopped", 0)
    assert "saving on TERM" in cli(daemon, "logs", str(ids["graceful"])).stdout
    # A shebang names the interpreter.
    shebang = info("shebang")
    assert shebang["status"] == "complete", cli(daemon, "logs", str(ids["shebang"])).stdout
    assert "ran by bash 5" in cli(daemon, "logs", str(ids["shebang"])).stdout
    # ml.yaml: inputs/<name> and outputs/ beside the code, as on MachineLabs.
    ml = info("ml.yaml")
    assert ml["status"] == "complete", cli(daemon, "logs", str(ids["ml.yaml"])).stdout
    assert "argv ['--epochs=2'] input 1,2,3" in cli(daemon, "logs", str(ids["ml.yaml"])).stdout
    outputs = json.loads(cli(daemon, "outputs", str(ids["ml.yaml"]), "--json").stdout)
    assert [(o["path"], o["size"]) for o in outputs] == [("model.txt", 7)]
    assert git(repo, "status", "--porcelain") == ""  # nothing of this was written into the user's tree
