"""`runyard` in a real terminal: tmux runs it, send-keys drives it, capture-pane reads the screen."""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runyard.protocol import Client

from .conftest import Daemon, make_repo, step_yaml, submit_repo, wait_for_status

pytestmark = pytest.mark.slow


class Tmux:
    def __init__(self, root: Path) -> None:
        self.socket = str(root / "tmux.sock")

    def __call__(self, *args: str) -> str:
        result = subprocess.run(["tmux", "-S", self.socket, *args], capture_output=True, text=True, timeout=30)
        if result.returncode != 0:
            raise AssertionError(f"tmux {' '.join(args)}: {result.stderr.strip()}")
        return result.stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "ry")

    async def wait_for(self, text: str, timeout: float = 30) -> str:
        """The terminal has no event to await; read the pane until the text shows or time runs out."""
        deadline = time.monotonic() + timeout
        while True:
            shown = self.screen()
            if text in shown:
                return shown
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} never appeared; the screen was:\n{shown}")
            await asyncio.sleep(0.1)

    def session_alive(self) -> bool:
        return subprocess.run(["tmux", "-S", self.socket, "has-session", "-t", "ry"],
                              capture_output=True).returncode == 0


@pytest.fixture
def tmux(tmp_path: Path) -> Iterator[Tmux]:
    if shutil.which("tmux") is None:
        pytest.fail("tmux is missing: scripts/test installs it")
    t = Tmux(tmp_path)
    yield t
    subprocess.run(["tmux", "-S", t.socket, "kill-server"], capture_output=True)


async def test_tui_in_tmux(daemon: Daemon, tmux: Tmux, tmp_path: Path) -> None:
    repo = make_repo(tmp_path / "repo", {
        "valohai.yaml": step_yaml("count", "for i in $(seq 1 30); do echo counted-$i; done"),
    })
    async with await Client.connect(daemon.socket) as client:
        e = await submit_repo(client, repo, "count", title="tmux-run")
        await wait_for_status(client, e.id)
    env = {**os.environ, "RUNYARD_SOCKET": daemon.socket, "TERM": "xterm-256color",
           "RUNYARD_TUI_CONFIG": str(tmp_path / "none.toml")}
    # COLUMNS/LINES in the environment would override the terminal's real size
    # plain `runyard` in a terminal opens the TUI
    command = f"env -u COLUMNS -u LINES {sys.executable} -m runyard.cli"
    # 80x24: the size the README promises, and a tmux window split in two
    tmux("new-session", "-d", "-s", "ry", "-x", "80", "-y", "24",
         *[a for k, v in env.items() if k.startswith(("RUNYARD", "TERM", "PATH", "HOME")) for a in ("-e", f"{k}={v}")],
         command)
    shown = await tmux.wait_for("tmux-run")
    assert "STATUS" in shown and "complete" in shown
    footer = shown.rstrip().splitlines()[-1]
    assert footer.rstrip().endswith("? help") and "q quit" in footer, shown
    # ? shows every key; the list scrolls to its end, where the dialog's closing line stays in view
    tmux("send-keys", "-t", "ry", "?")
    await tmux.wait_for("Keys: Queue")
    tmux("send-keys", "-t", "ry", "End")
    shown = await tmux.wait_for("freeze")  # the last key, below what fits at first
    assert "everywhere" in shown and "close" in shown
    tmux("send-keys", "-t", "ry", "q")
    await tmux.wait_for("STATUS")
    tmux("send-keys", "-t", "ry", "Enter")
    await tmux.wait_for("counted-30")
    shown = await tmux.wait_for("ended")  # the log status line: the execution ended and all was read
    tmux("send-keys", "-t", "ry", "g")
    await tmux.wait_for("counted-1\n")
    tmux("send-keys", "-t", "ry", "q")  # back to the queue, not out
    await tmux.wait_for("STATUS")
    tmux("send-keys", "-t", "ry", "2")
    await tmux.wait_for("GPUS FREE")
    tmux("send-keys", "-t", "ry", "q")
    deadline = time.monotonic() + 15
    while tmux.session_alive():  # the pane closes when the TUI exits
        assert time.monotonic() < deadline, "the TUI did not quit on q"
        await asyncio.sleep(0.1)


def test_keys_lists_remappable_bindings_and_bad_settings_are_named(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, "-m", "runyard.cli", "tui", "--keys"], capture_output=True, text=True)
    assert run.returncode == 0
    ids = {line.split()[0] for line in run.stdout.splitlines()}
    assert {"queue.stop", "queue.filter", "logs.follow", "detail.back", "hosts.drain"} <= ids
    bad = tmp_path / "tui.toml"
    bad.write_text("[keys]\nqueue.stop = 3\n")
    run = subprocess.run([sys.executable, "-m", "runyard.cli", "tui"], capture_output=True, text=True,
                         env={**os.environ, "RUNYARD_TUI_CONFIG": str(bad)})
    assert run.returncode == 2
    assert str(bad) in run.stderr and "[keys]" in run.stderr


def test_tui_without_a_terminal_refuses_at_once(tmp_path: Path) -> None:
    for stdin, stdout in ((subprocess.DEVNULL, subprocess.PIPE), (None, subprocess.PIPE)):
        run = subprocess.run([sys.executable, "-m", "runyard.cli", "tui", "--socket", str(tmp_path / "s")],
                             stdin=stdin, stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=30,
                             env={**os.environ, "RUNYARD_TUI_CONFIG": str(tmp_path / "none.toml")})
        assert run.returncode == 2
        assert "the TUI needs a terminal" in run.stderr and run.stdout == ""
