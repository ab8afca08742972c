"""The CLI starts fast: `runyard list` and `runyard --help` load the client and its protocol, never
the daemon's modules, YAML or the other heavy libraries that only some commands need (bench/bench_cli.py
measures the time; this checks what makes it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from runyard.protocol import Client

from .conftest import Daemon, make_repo, step_yaml, submit_repo, wait_for_status

# Needed by `run`, `lint`, `task run --parameter-sets`, `daemon`, the TUI: imported there, when asked.
HEAVY = ("yaml", "runyard.daemon", "runyard.tui", "textual", "valohai", "valohai_yaml", "valohai_utils",
         "aioboto3", "boto3", "botocore", "aiodocker", "aiohttp", "asyncssh", "git")


def imported(*args: str, socket: str) -> tuple[str, set[str]]:
    """Run the CLI under `python -X importtime`: its output and every module it imported."""
    result = subprocess.run([sys.executable, "-X", "importtime", "-m", "runyard.cli", *args],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "RUNYARD_SOCKET": socket, "NO_COLOR": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    modules = {line.rsplit("|", 1)[1].strip() for line in result.stderr.splitlines()
               if line.startswith("import time:") and "|" in line}
    return result.stdout, modules


def heavy(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(h + ".") for h in HEAVY))


async def test_list_and_help_load_no_heavy_modules(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    daemon = daemon_factory(local_extra='runtime = "process"\n')
    daemon.start()
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("hello", "echo hello")})
    async with await Client.connect(daemon.socket) as client:
        execution = await submit_repo(client, repo, "hello")
        await wait_for_status(client, execution.id)

    out, modules = imported("list", socket=daemon.socket)
    assert "hello" in out and "complete" in out, out  # it did list, through the daemon
    assert "runyard.protocol.client" in modules
    assert heavy(modules) == []

    out, modules = imported("--help", socket=daemon.socket)
    assert "usage: runyard" in out
    assert heavy(modules) == []
