"""Fixtures that start real parts: a daemon process, git repositories, the Docker engine."""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from runyard.protocol import Client
from runyard.protocol.methods import TERMINAL_STATUSES, ExecutionView

BASE_IMAGE = os.environ.get("RUNYARD_BASE_IMAGE", "runyard-base:bookworm-py3")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "Test", "GIT_AUTHOR_EMAIL": "test@example.org",
    "GIT_COMMITTER_NAME": "Test", "GIT_COMMITTER_EMAIL": "test@example.org",
}


# The longest files first: the workers take test files in this order, so a long one started last
# would leave the other worker idle at the end (longest-first keeps the two busy to the end).
LONGEST_FIRST = ("test_chaos.py", "test_slurm.py", "test_tasks_search.py", "test_tui_snapshots.py", "test_tui.py",
                 "test_shell.py", "test_run_flags.py", "test_tasks.py", "test_lifecycle.py", "test_pool.py",
                 "test_cli_parity.py", "test_trust.py", "test_executions.py")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.name
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: within a file, and among the rest, the order stays


@pytest.fixture(scope="session")
def docker_engine() -> None:
    """The suite needs a running engine and the base image; scripts/test provides both."""
    try:
        subprocess.run(["docker", "info"], check=True, capture_output=True, timeout=30)
    except (OSError, subprocess.CalledProcessError) as exc:
        pytest.fail(f"no Docker engine: run the suite through scripts/test, which starts dockerd ({exc})")
    image = subprocess.run(["docker", "image", "inspect", BASE_IMAGE], capture_output=True)
    if image.returncode != 0:
        pytest.fail(f"base image {BASE_IMAGE} is missing: scripts/test builds it")


def git(repo: Path, *args: str) -> str:
    result = subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                            env={**os.environ, **GIT_ENV})
    return result.stdout.strip()


def make_repo(root: Path, files: dict[str, str], commit: bool = True) -> Path:
    """A real git repository with these files, committed unless told otherwise."""
    root.mkdir(parents=True, exist_ok=True)
    git(root, "init", "-q", "-b", "main")
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    if commit:
        git(root, "add", "-A")
        git(root, "commit", "-qm", "initial")
    return root


def step_yaml(name: str, command: str | list[str], parameters: str = "", extra: str = "") -> str:
    commands = [command] if isinstance(command, str) else command
    lines = ["- step:", f"    name: {name}", f"    image: {BASE_IMAGE}", "    command:"]
    lines += [f"      - {c}" for c in commands]
    if parameters:
        lines.append("    parameters:")
        lines += ["      " + line for line in textwrap.dedent(parameters).strip().splitlines()]
    if extra:
        lines += ["    " + line for line in textwrap.dedent(extra).strip().splitlines()]
    return "\n".join(lines) + "\n"


@dataclass
class Daemon:
    """A real `runyard daemon` process on a private socket and data directory."""

    root: Path
    max_concurrent: int = 4
    stop_grace: int = 10
    extra_config: str = ""
    daemon_extra: str = ""  # more keys of the [daemon] table
    local_extra: str = ""
    process: subprocess.Popen[bytes] | None = None
    daemon_id: str = ""
    stderr_lines: list[str] = field(default_factory=list)

    @property
    def socket(self) -> str:
        return str(self.root / "s")

    @property
    def data_dir(self) -> Path:
        return self.root / "data"

    def write_config(self) -> Path:
        path = self.root / "config.toml"
        path.write_text(textwrap.dedent(f"""\
            [daemon]
            socket = "{self.socket}"
            data_dir = "{self.data_dir}"
            log_level = "debug"
            [defaults]
            image = "{BASE_IMAGE}"
            stop_grace_seconds = {self.stop_grace}
            live_outputs_seconds = 0.2
            [local]
            max_concurrent = {self.max_concurrent}
            pull = "never"
            """).replace("[defaults]\n", textwrap.dedent(self.daemon_extra).strip() + "\n[defaults]\n", 1)
            + textwrap.dedent(self.local_extra) + "\n" + self.extra_config)
        return path

    def start(self) -> None:
        config = self.write_config()
        log = (self.root / "daemon.log").open("ab")
        self.process = subprocess.Popen(
            [sys.executable, "-m", "runyard.cli", "daemon", "--config", str(config)],
            stdout=log, stderr=subprocess.PIPE,
        )
        assert self.process.stderr is not None
        # Wait for the line that says it serves: an event, not a sleep.
        for raw in self.process.stderr:
            line = raw.decode(errors="replace")
            log.write(raw)
            log.flush()
            self.stderr_lines.append(line)
            if "serving" in line:
                self.daemon_id = line.split("runyard daemon ")[1].split()[0]
                break
        else:
            raise AssertionError("daemon exited before serving:\n" + "".join(self.stderr_lines))
        # Keep draining stderr so the daemon never blocks on a full pipe.
        import threading

        def drain(stream: object, out: object) -> None:
            for raw in stream:  # type: ignore[attr-defined]
                out.write(raw)  # type: ignore[attr-defined]
                out.flush()  # type: ignore[attr-defined]

        threading.Thread(target=drain, args=(self.process.stderr, log), daemon=True).start()

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)

    def terminate(self) -> int:
        assert self.process is not None
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=60)

    def log_text(self) -> str:
        return (self.root / "daemon.log").read_text(errors="replace")

    def cleanup_containers(self) -> None:
        if not self.daemon_id:
            return
        ids = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=runyard.daemon={self.daemon_id}"],
            capture_output=True, text=True,
        ).stdout.split()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True)


def plain_process_daemon(extra_config: str = "") -> Iterator[Daemon]:
    """The body of a module-scoped fixture: one daemon for a whole test module, running plain
    processes on this machine (4 at a time, a 2 s stop grace), killed at the end."""
    daemon = Daemon(root=Path(tempfile.mkdtemp(prefix="ry-", dir="/tmp")), stop_grace=2,
                    local_extra='runtime = "process"\n', extra_config=extra_config)
    daemon.start()
    yield daemon
    assert daemon.process is not None
    daemon.process.kill()
    daemon.process.wait()
    shutil.rmtree(daemon.root, ignore_errors=True)


@pytest.fixture
def daemon_factory(docker_engine: None) -> Iterator[type[Daemon]]:
    made: list[Daemon] = []

    class Factory(Daemon):
        def __init__(self, **kwargs: object) -> None:
            # AF_UNIX paths are limited to 108 bytes, so keep the root short.
            root = Path(tempfile.mkdtemp(prefix="ry-", dir="/tmp"))
            super().__init__(root=root, **kwargs)  # type: ignore[arg-type]
            made.append(self)

    yield Factory
    for d in made:
        if d.process is not None and d.process.poll() is None:
            d.process.kill()
            d.process.wait()
        d.cleanup_containers()
        shutil.rmtree(d.root, ignore_errors=True)


@pytest.fixture
def daemon(daemon_factory: type[Daemon]) -> Daemon:
    d = daemon_factory()
    d.start()
    return d


@pytest.fixture
async def client(daemon: Daemon) -> AsyncIterator[Client]:
    c = await Client.connect(daemon.socket, client_name="tests")
    try:
        yield c
    finally:
        await c.close()


def run_cli(daemon: Daemon, *args: str, cwd: Path | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """The real `runyard` command line, as a user would type it."""
    return subprocess.run(
        [sys.executable, "-m", "runyard.cli", *args],
        cwd=cwd, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "RUNYARD_SOCKET": daemon.socket, "NO_COLOR": "1"},
    )


async def wait_for_status(client: Client, execution_id: int, statuses: set[str] | frozenset[str] = TERMINAL_STATUSES,
                          timeout: float = 120) -> ExecutionView:
    """Wait on the daemon's events (not by polling) until the execution reaches one of ``statuses``."""

    async def wait() -> ExecutionView:
        async for _event in client.events(since=0):
            current = await client.get(execution_id)
            if current.status in statuses:
                return current
        raise AssertionError("event stream ended")

    current = await client.get(execution_id)
    if current.status in statuses:
        return current
    return await asyncio.wait_for(wait(), timeout)


async def submit_repo(client: Client, repo: Path, step: str, *, adhoc: bool = False, **kwargs: object) -> ExecutionView:
    """Snapshot, upload and submit the way `runyard run` does."""
    from runyard.daemon.snapshots import snapshot_commit, snapshot_worktree

    snap = snapshot_worktree(repo) if adhoc else snapshot_commit(repo, "HEAD")
    if not await client.snapshot_has(snap.id):
        await client.snapshot_put(snap.id, snap.data)
    return await client.submit(step=step, snapshot=snap.id, commit=snap.commit, **kwargs)


def wait_until_removed(container_id: str, timeout: float = 60) -> bool:
    """Whether the engine removed the container within ``timeout``: its own wait for the removal
    (a kill and a removal are two steps of `rm -f`, and `docker wait` returns after the first)."""
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect("/var/run/docker.sock")
        sock.sendall(f"POST /containers/{container_id}/wait?condition=removed HTTP/1.0\r\nHost: docker\r\n"
                     "Content-Length: 0\r\n\r\n".encode())
        answer = b""
        try:
            while chunk := sock.recv(1 << 16):
                answer += chunk
        except TimeoutError:
            return False
    status = int(answer.split(b" ", 2)[1])
    return status in (200, 404)  # removed now, or already gone
