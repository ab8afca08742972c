"""`runyard shell N [-- CMD]`: a shell or a command inside a running execution, for its owner or an admin."""

from __future__ import annotations

import asyncio
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from runyard.protocol import Client

from .conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status
from .pool import start_lone_host
from .test_pool import first_line
from .test_trust import HOLD, cli_as, shared_daemon, submit_as
from .test_tui_terminal import Tmux
from .test_users import ensure_users

pytestmark = [pytest.mark.slow, pytest.mark.timeout(120)]


def in_a_terminal(daemon: Daemon, execution_id: int, typed: bytes) -> tuple[int, str]:
    """`runyard shell N` in a real terminal (a pty) where the user types ``typed``: exit status, screen."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: the CLI, as a user starts it in a terminal
        env = {**os.environ, "RUNYARD_SOCKET": daemon.socket, "TERM": "xterm"}
        os.execve(sys.executable, [sys.executable, "-m", "runyard.cli", "shell", str(execution_id)], env)
    os.write(fd, typed)
    screen = b""
    while True:
        try:
            data = os.read(fd, 65536)
        except OSError:  # EIO: the CLI has exited and closed the terminal
            break
        if not data:
            break
        screen += data
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), screen.decode(errors="replace")


async def test_a_shell_in_a_running_container(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    users = ensure_users()
    daemon = shared_daemon(daemon_factory)  # admins = ["ryadmin"]
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("hold", HOLD)})
    async with await Client.connect(daemon.socket) as client:
        e = await submit_repo(client, repo, "hold")
        await asyncio.wait_for(first_line(client, e.id, "started"), 120)

        # A command: where it runs, what it sees, stdout and stderr apart, its exit status.
        done = run_cli(daemon, "shell", str(e.id), "--", "sh", "-c",
                       'echo "$VH_EXECUTION_ID $(pwd)"; echo oops >&2; exit 3')
        assert (done.returncode, done.stdout, done.stderr) == (3, f"{e.id} /valohai/repository\n", "oops\n")
        # stdin reaches it, to its end
        piped = subprocess.run([sys.executable, "-m", "runyard.cli", "shell", str(e.id), "--", "cat"],
                               input="line one\nline two\n", capture_output=True, text=True, timeout=60,
                               env={**os.environ, "RUNYARD_SOCKET": daemon.socket})
        assert (piped.returncode, piped.stdout) == (0, "line one\nline two\n"), piped.stderr

        # Interactive, in a terminal: a shell with a terminal of its own, keys typed reach it.
        code, screen = in_a_terminal(daemon, e.id, b"echo $((6*7)); tty; exit 5\n")
        assert code == 5, screen
        assert "42" in screen and "/dev/pts/" in screen

        # Another user may not; an admin may.
        bob = cli_as(users["rybob"], daemon, "shell", str(e.id), "--", "true")
        assert bob.returncode == 2
        assert f"execution {e.id} belongs to root; only they or an admin may open a shell" in bob.stderr
        admin = cli_as(users["ryadmin"], daemon, "shell", str(e.id), "--", "echo", "admin here")
        assert (admin.returncode, admin.stdout) == (0, "admin here\n"), admin.stderr

        # The TUI's key: it steps aside for the same shell, and comes back when it exits.
        tmux = Tmux(tmp_path)
        try:
            tmux("new-session", "-d", "-s", "ry", "-x", "100", "-y", "30", "-e", f"RUNYARD_SOCKET={daemon.socket}",
                 "-e", "TERM=xterm-256color", "-e", f"RUNYARD_TUI_CONFIG={tmp_path / 'none.toml'}",
                 f"env -u COLUMNS -u LINES {sys.executable} -m runyard.cli tui")
            await tmux.wait_for("started")
            tmux("send-keys", "-t", "ry", "-l", "!")
            await tmux.wait_for("/valohai/repository")  # the shell's prompt
            tmux("send-keys", "-t", "ry", "-l", "echo from-the-tui-$((6*7))\r")
            await tmux.wait_for("from-the-tui-42")
            tmux("send-keys", "-t", "ry", "-l", "exit\r")
            await tmux.wait_for("STATUS")  # the queue again
        finally:
            subprocess.run(["tmux", "-S", tmux.socket, "kill-server"], capture_output=True)

        # The shell is how one pokes a running job: here it lets it finish. Then there is no shell.
        assert run_cli(daemon, "shell", str(e.id), "--", "touch", "/valohai/outputs/go").returncode == 0
        assert (await wait_for_status(client, e.id)).status == "complete"
        ended = run_cli(daemon, "shell", str(e.id), "--", "true")
        assert ended.returncode == 2
        assert f"execution {e.id} is complete: a shell needs a running execution" in ended.stderr


async def test_a_shell_in_a_process_that_runs_as_its_owner(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    users = ensure_users()
    alice = users["ryalice"]
    daemon = shared_daemon(daemon_factory, local_extra='runtime = "process"\nrun_as = "owner"\n')
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("hold", HOLD)})
    eid = submit_as(alice, daemon, repo, "hold")
    workdir = daemon.data_dir / "work" / str(eid)
    async with await Client.connect(daemon.socket) as client:
        await asyncio.wait_for(first_line(client, eid, "started"), 120)

        # Root opens it, and it runs as the owner, as the command does, in its repository folder.
        done = run_cli(daemon, "shell", str(eid), "--", "sh", "-c", 'echo "$(id -u) $(pwd) $VH_EXECUTION_ID"')
        assert (done.returncode, done.stdout) == (0, f"{alice.pw_uid} {workdir}/repository {eid}\n"), done.stderr
        mine = cli_as(alice, daemon, "shell", str(eid), "--", "id", "-u")
        assert (mine.returncode, mine.stdout) == (0, f"{alice.pw_uid}\n"), mine.stderr
        code, screen = in_a_terminal(daemon, eid, b"echo $((6*7)); exit 4\n")
        assert code == 4 and "42" in screen, screen

        # It would be alice's login on the host: an admin who is not root may not, nor may bob.
        admin = cli_as(users["ryadmin"], daemon, "shell", str(eid), "--", "id", "-u")
        assert admin.returncode == 2
        assert f"execution {eid} runs as ryalice on local: only they or root may open a shell" in admin.stderr
        assert cli_as(users["rybob"], daemon, "shell", str(eid), "--", "id").returncode == 2

        # A shell still open when the execution ends is closed with it (it would outlive its folder).
        lingering = subprocess.Popen(
            [sys.executable, "-m", "runyard.cli", "shell", str(eid), "--", "sh", "-c", "echo open; exec sleep 600"],
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "RUNYARD_SOCKET": daemon.socket})
        try:
            assert lingering.stdout is not None and lingering.stdout.readline() == "open\n"
            (workdir / "outputs" / "go").touch()
            assert (await wait_for_status(client, eid)).status == "complete"
            _, err = lingering.communicate(timeout=60)
        finally:
            if lingering.poll() is None:
                lingering.kill()
        assert lingering.returncode != 0
        assert f"execution {eid} has ended; its shell was closed" in err


async def test_shells_on_a_pool_host_go_over_its_ssh_connection(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    """One sshd, two hosts: Docker through the forwarded engine socket, and plain processes over SSH."""
    host, _key, known = start_lone_host(tmp_path)
    try:
        docker_host = host.config(pool="docker")
        process_host = (host.config(pool="process").replace(f'name = "{host.name}"', 'name = "plain"')
                        .replace(f'work_dir = "{host.root / "work"}"', f'work_dir = "{host.root / "plain"}"')
                        + 'runtime = "process"\n')
        daemon = daemon_factory(local_extra="enabled = false",
                                extra_config=f'[ssh]\nknown_hosts = "{known}"\n' + docker_host + process_host)
        daemon.start()
        repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("hold", HOLD)})
        async with await Client.connect(daemon.socket) as client:
            in_docker = await submit_repo(client, repo, "hold", pool="docker")
            plain = await submit_repo(client, repo, "hold", pool="process")
            for e in (in_docker, plain):
                await asyncio.wait_for(first_line(client, e.id, "started"), 120)
            where = {}
            for e in (in_docker, plain):
                done = run_cli(daemon, "shell", str(e.id), "--", "sh", "-c",
                               'echo "$VH_EXECUTION_ID $(pwd)"; echo oops >&2; exit 3')
                assert (done.returncode, done.stderr) == (3, "oops\n"), done.stderr
                where[e.id] = done.stdout.strip()
                code, screen = in_a_terminal(daemon, e.id, b"echo $((6*7)); tty; exit 5\n")
                assert code == 5 and "42" in screen and "/dev/pts/" in screen, screen
            assert where[in_docker.id] == f"{in_docker.id} /valohai/repository"
            assert where[plain.id] == f"{plain.id} {host.root / 'plain'}/{daemon.daemon_id}/{plain.id}/repository"
            for e in (in_docker, plain):
                run_cli(daemon, "shell", str(e.id), "--", "sh", "-c", 'touch "$VH_OUTPUTS_DIR/go"')
            for e in (in_docker, plain):
                assert (await wait_for_status(client, e.id)).status == "complete"
    finally:
        host.kill()


async def test_a_shell_command_ends_with_its_client_and_with_a_killed_daemon(daemon: Daemon, tmp_path: Path) -> None:
    """The engine cannot kill an exec: a command that ignores its closed stdin or terminal must still end."""
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("hold", HOLD)})
    env = {**os.environ, "RUNYARD_SOCKET": daemon.socket, "TERM": "xterm"}
    shell = [sys.executable, "-m", "runyard.cli", "shell"]
    async with await Client.connect(daemon.socket) as client:
        e = await submit_repo(client, repo, "hold")
        await asyncio.wait_for(first_line(client, e.id, "started"), 120)
        container = (await client.get(e.id)).container_id or ""

    def in_container(command: str) -> bool:
        top = subprocess.run(["docker", "top", container], capture_output=True, text=True)
        return command in top.stdout

    async def until(present: bool, command: str) -> None:
        # `docker top` has no event to wait on: asked again until it says so, within a bound
        for _ in range(300):
            if in_container(command) == present:
                return
            await asyncio.sleep(0.1)
        top = subprocess.run(["docker", "top", container], capture_output=True, text=True)
        raise AssertionError(f"{command!r} {'never appeared' if present else 'still runs'} in the container: "
                             f"{top.stdout}{top.stderr}")

    # Without a terminal (stdin at its end, which sleep ignores): the client is killed.
    piped = subprocess.Popen([*shell, "-T", str(e.id), "--", "sleep", "556"], stdin=subprocess.DEVNULL,
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    await until(True, "sleep 556")
    piped.kill()
    piped.wait()
    await until(False, "sleep 556")

    # With a terminal: the same.
    pid, fd = pty.fork()
    if pid == 0:
        os.execve(sys.executable, [*shell, str(e.id), "--", "sleep", "97"], env)
    await until(True, "sleep 97")
    os.kill(pid, 9)
    await asyncio.to_thread(os.waitpid, pid, 0)
    os.close(fd)
    await until(False, "sleep 97")

    # The daemon killed with -9: its client exits 255 as documented, and the restarted daemon ends
    # the command its old self left running.
    cut = subprocess.Popen([*shell, "-T", str(e.id), "--", "sleep", "558"], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    await until(True, "sleep 558")
    daemon.kill9()
    assert cut.wait(timeout=30) == 255
    assert cut.stderr is not None and "connection to the daemon was lost" in cut.stderr.read()
    assert in_container("sleep 558")
    daemon.start()
    await until(False, "sleep 558")
    async with await Client.connect(daemon.socket) as client:
        assert (await client.get(e.id)).status == "started"  # the execution itself runs on
