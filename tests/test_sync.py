"""`run --sync DIR` and `outputs N --sync DIR`: outputs land in DIR as they appear, each once, never outside."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from runyard.cli.sync import SyncError, parts_of

from .conftest import Daemon, make_repo, run_cli, step_yaml


def wait_for_file(path: Path, proc: subprocess.Popen[str], timeout: float = 60) -> None:
    """The CLI writes the file when the daemon's event arrives; this only watches for it."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise AssertionError(f"runyard exited early: {proc.communicate()}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{path} never appeared")
        time.sleep(0.05)


def test_outputs_are_synced_as_they_appear_once_each_and_inside_dir(
        daemon_factory: type[Daemon], tmp_path: Path) -> None:
    daemon = daemon_factory(local_extra='runtime = "process"')
    daemon.start()
    go = tmp_path / "go"
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("train", [
        "mkdir -p $VH_OUTPUTS_DIR/ckpt",
        "echo early > $VH_OUTPUTS_DIR/ckpt/early.txt",
        "chmod 0444 $VH_OUTPUTS_DIR/ckpt/early.txt",  # valohai-utils' live output: done, store it now
        f"while [ ! -e {go} ]; do sleep 0.05; done",  # runs until the test has seen the live output arrive
        "echo final > $VH_OUTPUTS_DIR/final.txt",
    ])})
    synced = tmp_path / "synced"
    proc = subprocess.Popen(
        [sys.executable, "-m", "runyard.cli", "run", "train", "--sync", str(synced)], cwd=repo,
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "RUNYARD_SOCKET": daemon.socket, "NO_COLOR": "1"})
    try:
        wait_for_file(synced / "ckpt" / "early.txt", proc)
        # The live output is here while the execution still runs, and the final one is not yet.
        listed = run_cli(daemon, "list", "--json")
        assert '"status":"started"' in listed.stdout
        assert not (synced / "final.txt").exists()
        early_inode = (synced / "ckpt" / "early.txt").stat().st_ino
        go.touch()
        _out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0, err
    assert (synced / "ckpt" / "early.txt").read_text() == "early\n"
    assert (synced / "final.txt").read_text() == "final\n"
    assert (synced / "ckpt" / "early.txt").stat().st_ino == early_inode  # not fetched again at the end
    assert err.count("early.txt") == 1, err
    assert sorted(p.name for p in synced.rglob("*")) == ["ckpt", "early.txt", "final.txt"]  # no temp files
    execution_id = err.split("execution ", 1)[1].split()[0]  # "execution 1 (train) queued; ..."

    # A second sync of the ended execution fetches nothing: DIR already holds every file.
    again = run_cli(daemon, "outputs", execution_id, "--sync", str(synced))
    assert again.returncode == 0, again.stderr
    assert again.stderr == ""

    # A folder of DIR that is a link elsewhere is never written through.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    other = tmp_path / "other"
    other.mkdir()
    (other / "ckpt").symlink_to(elsewhere)
    linked = run_cli(daemon, "outputs", execution_id, "--sync", str(other), "--json")
    assert linked.returncode == 1
    assert "refusing output path 'ckpt/early.txt'" in linked.stderr
    assert list(elsewhere.iterdir()) == []
    assert (other / "final.txt").read_text() == "final\n"  # the rest still arrives
    assert '"path":"final.txt"' in linked.stdout

    # --filter narrows a sync as it narrows a listing.
    only = tmp_path / "only"
    filtered = run_cli(daemon, "outputs", execution_id, "--sync", str(only), "--filter", "final*")
    assert filtered.returncode == 0 and [p.name for p in only.iterdir()] == ["final.txt"]


@pytest.mark.parametrize("path", ["../x", "/etc/passwd", "a/../../x", "a//b", "./a", ""])
def test_a_name_that_would_leave_dir_is_refused(path: str) -> None:
    with pytest.raises(SyncError, match="would leave the sync directory"):
        parts_of(path)
