"""`runyard yaml step train.py`: the step a valohai-utils script declares, written into valohai.yaml."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

from .conftest import make_repo

SCRIPT = """\
import valohai

valohai.prepare(
    step="train-model",
    image="python:3.12",
    default_parameters={"learning_rate": 0.001, "epochs": 5, "augment": True},
    default_inputs={"data": "s3://bucket/train/*.csv"},
)
"""


def yaml_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    # No daemon anywhere: the command must not need one.
    env = {**os.environ, "RUNYARD_SOCKET": str(cwd / "no-daemon.sock"), "NO_COLOR": "1"}
    return subprocess.run([sys.executable, "-m", "runyard.cli", "yaml", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=60)


def step_of(repo: Path, name: str) -> dict[str, object]:
    config = yaml.safe_load((repo / "valohai.yaml").read_text())
    steps = {item["step"]["name"]: item["step"] for item in config if "step" in item}
    return steps[name]  # type: ignore[no-any-return]


def test_yaml_step_writes_then_updates_the_step_of_a_script(tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {"src/train.py": SCRIPT, "README": "x\n"})

    made = yaml_cli("step", "src/train.py", cwd=repo)
    assert made.returncode == 0, made.stderr
    assert "step 'train-model' added" in made.stdout
    step = step_of(repo, "train-model")
    assert step["image"] == "python:3.12"
    assert "python src/train.py {parameters}" in step["command"]  # type: ignore[operator]
    params = {p["name"]: p for p in step["parameters"]}  # type: ignore[attr-defined]
    assert params["learning_rate"]["type"] == "float" and params["learning_rate"]["default"] == 0.001
    assert params["epochs"]["type"] == "integer" and params["augment"]["type"] == "flag"
    assert [i["name"] for i in step["inputs"]] == ["data"]  # type: ignore[attr-defined]
    lint = subprocess.run([sys.executable, "-m", "runyard.cli", "lint"], cwd=repo, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout

    again = yaml_cli("step", "src/train.py", cwd=repo)
    assert again.returncode == 0 and "already up to date" in again.stdout

    # The user tunes the step by hand, then renames a parameter in the script: the hand-made
    # command and description stay, the parameters become the script's, another step is untouched.
    config = yaml.safe_load((repo / "valohai.yaml").read_text())
    config[0]["step"]["command"] = ["python src/train.py {parameters} --fast"]
    config[0]["step"]["description"] = "tuned by hand"
    config.append({"step": {"name": "other", "image": "busybox", "command": "true"}})
    (repo / "valohai.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    (repo / "src/train.py").write_text(SCRIPT.replace('"epochs": 5', '"num_epochs": 7'))
    updated = yaml_cli("step", "src/train.py", cwd=repo)
    assert updated.returncode == 0, updated.stderr
    assert "step 'train-model' updated" in updated.stdout
    step = step_of(repo, "train-model")
    assert step["command"] == ["python src/train.py {parameters} --fast"]
    assert step["description"] == "tuned by hand"
    names = [p["name"] for p in step["parameters"]]  # type: ignore[attr-defined]
    assert "num_epochs" in names and "epochs" not in names
    assert step_of(repo, "other")["image"] == "busybox"

    # A script without valohai.prepare(), or outside the repository, is refused and nothing is written.
    before = (repo / "valohai.yaml").read_text()
    (repo / "plain.py").write_text("print('hi')\n")
    plain = yaml_cli("step", "plain.py", cwd=repo)
    assert plain.returncode == 1 and "valohai.prepare()" in plain.stderr
    outside = tmp_path / "elsewhere.py"
    outside.write_text(SCRIPT)
    away = yaml_cli("step", str(outside), "--config", "valohai.yaml", cwd=repo)
    assert away.returncode == 1 and "is not inside" in away.stderr
    assert (repo / "valohai.yaml").read_text() == before
    # Without --config, named relatively (../) or absolutely: refused, neither folder's file written.
    other = tmp_path / "outside"
    other.mkdir()
    (other / "out.py").write_text(SCRIPT)
    for named in ("../outside/out.py", str(other / "out.py")):
        away = yaml_cli("step", named, cwd=repo)
        assert away.returncode == 1 and "is not inside" in away.stderr, (named, away.stdout)
        assert (repo / "valohai.yaml").read_text() == before
        assert not (other / "valohai.yaml").exists()
    helped = yaml_cli("step", "--help", cwd=repo)
    assert "outside it is refused" in " ".join(helped.stdout.split())
