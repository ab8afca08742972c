"""What one user of a shared daemon can do to others, tried as real local users through the real
CLI and daemon: restarts, host scans and doctor, the private host sockets, private workspaces,
and containers or processes that run as the submitting user (run_as = "owner").
"""

from __future__ import annotations

import asyncio
import contextlib
import grp
import json
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from runyard.cli.main import main as cli_main
from runyard.daemon.snapshots import snapshot_worktree
from runyard.protocol import Client

from .conftest import Daemon, make_repo, step_yaml, submit_repo, wait_for_status
from .pool import start_lone_host, wait_for_host
from .test_pool import first_line
from .test_users import GROUP, as_user, ensure_users

pytestmark = pytest.mark.slow


def cli_as(user: pwd.struct_passwd, daemon: Daemon, *args: str) -> subprocess.CompletedProcess[str]:
    """The real `runyard` command line (its main()), run by a child process that has become ``user``.

    A fork of this interpreter, not a new one: the test's Python lives where other users
    cannot reach it, and everything the CLI needs is imported already.
    """
    groups = [g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        pid = os.fork()
        if pid == 0:  # the child: no return from here
            code = 70
            try:
                # pytest swaps sys.stdout/sys.stderr for its own capture: point them at the files
                sys.stdout = open(out.fileno(), "w", closefd=False)  # noqa: SIM115
                sys.stderr = open(err.fileno(), "w", closefd=False)  # noqa: SIM115
                os.setgroups(groups)
                os.setgid(user.pw_gid)
                os.setuid(user.pw_uid)
                os.environ.update({"RUNYARD_SOCKET": daemon.socket, "NO_COLOR": "1", "HOME": "/tmp"})
                os.chdir("/")
                code = cli_main(list(args))
            except BaseException as exc:
                os.write(err.fileno(), f"cli crashed: {exc!r}".encode())
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        out.seek(0)
        err.seek(0)
        return subprocess.CompletedProcess(["runyard", *args], os.waitstatus_to_exitcode(status),
                                           out.read().decode(), err.read().decode())


def shared_daemon(daemon_factory: type[Daemon], *, admins: str = '["ryadmin"]', local_extra: str = "",
                  extra_config: str = "") -> Daemon:
    daemon = daemon_factory(daemon_extra=f'socket_group = "{GROUP}"\nsocket_mode = "0660"\nadmins = {admins}\n',
                            local_extra=local_extra, extra_config=extra_config)
    daemon.root.chmod(0o711)  # users reach the socket (and workspaces) inside; they cannot list it
    daemon.start()
    return daemon


async def host_error(client: Client, name: str, text: str, timeout: float = 60) -> None:
    """Wait on host events (not by polling) until host ``name`` reports an error containing ``text``."""

    async def wait() -> None:
        async for event in client.events(since=0):
            if getattr(event, "kind", "host") == "host" and any(
                    h.name == name and text in h.error for h in await client.hosts()):
                return
        raise AssertionError("event stream ended")

    await asyncio.wait_for(wait(), timeout)


async def logged(daemon: Daemon, text: str) -> None:
    """Wait until the daemon's log says ``text``: a thread of this test copies it to the file, so
    a line may land just after the event it comes with."""
    deadline = time.monotonic() + 30
    while text not in daemon.log_text():
        assert time.monotonic() < deadline, f"the daemon never logged {text!r}"
        await asyncio.sleep(0.1)


def submit_as(user: pwd.struct_passwd, daemon: Daemon, repo: Path, step: str, **params: object) -> int:
    snap = snapshot_worktree(repo)
    answers = as_user(user, daemon.socket, [
        ("snapshots.put", {"id": snap.id, "offset": 0, "data": snap.data, "final": True}),
        ("executions.submit", {"step": step, "snapshot": snap.id, **params}),
    ])["answers"]
    assert "result" in answers[1], answers[1]
    return int(answers[1]["result"]["id"])


def info(user: pwd.struct_passwd, daemon: Daemon, execution_id: int) -> dict[str, object]:
    done = cli_as(user, daemon, "info", str(execution_id), "--json")
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout)
    return result


def restart_as(user: pwd.struct_passwd, daemon: Daemon, execution_id: int) -> subprocess.CompletedProcess[str]:
    return cli_as(user, daemon, "restart", str(execution_id), "--json")


def test_restart_is_a_new_execution_of_the_caller_at_a_priority_they_may_ask_for(
        daemon_factory: type[Daemon], tmp_path: Path) -> None:
    users = ensure_users()
    alice, bob, admin = users["ryalice"], users["rybob"], users["ryadmin"]
    # bob is an admin for now: he submits at priority 7, then loses the role.
    daemon = shared_daemon(daemon_factory, admins='["ryadmin", "rybob"]', local_extra='runtime = "process"\n')
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("quick", "echo done")})
    by_admin = submit_as(admin, daemon, repo, "quick", priority=5)
    by_alice = submit_as(alice, daemon, repo, "quick", priority=-2)
    by_bob = submit_as(bob, daemon, repo, "quick", priority=7)
    daemon.terminate()
    daemon.daemon_extra = daemon.daemon_extra.replace('["ryadmin", "rybob"]', '["ryadmin"]')
    daemon.start()

    # Someone else's execution: restarting it would run their code with bob's secrets.
    for theirs, owner in ((by_admin, "ryadmin"), (by_alice, "ryalice")):
        refused = restart_as(bob, daemon, theirs)
        assert refused.returncode == 2, refused.stdout
        assert f"execution {theirs} belongs to {owner}; only they or an admin may restart it" in refused.stderr

    # His own, submitted when he could raise it: a restart now runs at his allowed priority.
    mine = restart_as(bob, daemon, by_bob)
    assert mine.returncode == 0, mine.stderr
    again = info(bob, daemon, json.loads(mine.stdout)["id"])
    assert (again["owner"], again["priority"], again["restarted_from"]) == ("rybob", 0, by_bob)

    lowered = json.loads(restart_as(alice, daemon, by_alice).stdout)
    assert (lowered["owner"], lowered["priority"]) == ("ryalice", -2)

    # An admin may restart anyone's: the new execution is the admin's, at the old priority.
    for old, priority in ((by_alice, -2), (by_admin, 5)):
        done = restart_as(admin, daemon, old)
        assert done.returncode == 0, done.stderr
        view = info(admin, daemon, json.loads(done.stdout)["id"])
        assert (view["owner"], view["owner_uid"], view["priority"]) == ("ryadmin", admin.pw_uid, priority)


def test_host_scan_and_doctor_are_for_admins(daemon_factory: type[Daemon]) -> None:
    users = ensure_users()
    bob, admin = users["rybob"], users["ryadmin"]
    daemon = shared_daemon(daemon_factory, local_extra='runtime = "process"\n')
    for args, what in ((("hosts", "scan"), "scan hosts"), (("hosts", "scan", "local"), "scan hosts"),
                       (("doctor", "local"), "run doctor on a host")):
        refused = cli_as(bob, daemon, *args)
        assert refused.returncode == 2, refused.stdout
        assert f"only root and daemon.admins may {what} (you are rybob)" in refused.stderr
        allowed = cli_as(admin, daemon, *args)
        assert allowed.returncode in (0, 1), allowed.stderr  # doctor exits 1 when a check fails
        assert "daemon.admins" not in allowed.stderr
    assert cli_as(bob, daemon, "hosts").returncode == 0  # reading stays open to everyone


async def test_a_hosts_docker_socket_is_reachable_only_by_the_daemons_user(
        daemon_factory: type[Daemon], tmp_path: Path) -> None:
    users = ensure_users()
    host, _, known = start_lone_host(tmp_path)
    daemon = daemon_factory(local_extra="enabled = false", extra_config=textwrap.dedent(f"""\
        [ssh]
        known_hosts = "{known}"
        reconnect_min_seconds = 0.2
        reconnect_max_seconds = 1.0
        """) + host.config(pool="gpu"))
    # Made first by another user, open to all: whoever owns it could reach root on every host.
    sockets = daemon.data_dir / "hosts"
    sockets.mkdir(parents=True)
    sockets.chmod(0o777)
    os.chown(sockets, users["rybob"].pw_uid, users["rybob"].pw_gid)
    daemon.start()
    client = await Client.connect(daemon.socket, client_name="tests")
    try:
        refused = await wait_for_host(client, host.name, {"unreachable"})
        assert f"{sockets} belongs to uid {users['rybob'].pw_uid}, not to the daemon's user (uid 0)" \
            in str(refused["error"])
        await logged(daemon, "refusing to use it")
        assert not (sockets / f"{host.name}.sock").exists()

        # Taken back by root but still open: tightened, with a warning, and used. What was left in it
        # while it was open (a link where the daemon writes the host's ssh config) gets no write.
        victim = tmp_path / "victim"
        victim.write_text("precious\n")
        (sockets / f"{host.name}.ssh_config").symlink_to(victim)
        os.chown(sockets, 0, 0)
        sockets.chmod(0o755)
        await wait_for_host(client, host.name, {"ready"})
        await logged(daemon, f"{sockets} had mode 0755: made 0700")
        assert victim.read_text() == "precious\n"
        assert stat.S_ISREG(os.lstat(sockets / f"{host.name}.ssh_config").st_mode)
        folder, sock = os.lstat(sockets), os.lstat(sockets / f"{host.name}.sock")
        assert stat.S_ISDIR(folder.st_mode) and stat.S_IMODE(folder.st_mode) == 0o700 and folder.st_uid == 0
        assert stat.S_ISSOCK(sock.st_mode) and stat.S_IMODE(sock.st_mode) == 0o600 and sock.st_uid == 0

        # A link in its place is refused too, on the next connection.
        (tmp_path / "elsewhere").mkdir()
        sockets.rename(tmp_path / "moved")
        sockets.symlink_to(tmp_path / "elsewhere")
        host.kill()
        host.start()
        await host_error(client, host.name, f"{sockets} is a symbolic link: refusing to use it")
    finally:
        await client.close()
        host.kill()


def can_read(user: pwd.struct_passwd, path: Path) -> bool:
    """Whether ``user`` can open ``path`` for reading: asked by a child process that became them."""
    pid = os.fork()
    if pid == 0:  # the child: no return from here
        ok = False
        try:
            os.setgroups([g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem])
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            with open(path, "rb") as fh:
                fh.read(1)
            ok = True
        except OSError:
            pass
        finally:
            os._exit(0 if ok else 1)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status) == 0


SECRET = "s3cr3t-token-value"
HOLD = ['echo "started"', 'while [ ! -e "$VH_OUTPUTS_DIR/go" ]; do sleep 0.05; done']


@contextlib.contextmanager
def one_host(daemon_factory: type[Daemon], tmp_path: Path, where: str, host_extra: str,
             extra_config: str = "") -> Iterator[tuple[Daemon, Path]]:
    """A shared daemon whose one host is ``local`` or a real sshd host, configured with ``host_extra``;
    and the directory on that host that holds the executions' workspaces."""
    if where == "local":
        daemon = shared_daemon(daemon_factory, local_extra=host_extra, extra_config=extra_config)
        yield daemon, daemon.data_dir / "work"
        return
    host, _, known = start_lone_host(tmp_path)
    # The host's work directory where other users could get to it, were it not private.
    work_dir = Path(tempfile.mkdtemp(prefix="ry-host-", dir="/tmp"))
    work_dir.chmod(0o711)
    try:
        daemon = shared_daemon(daemon_factory, local_extra="enabled = false\n", extra_config=(
            f'[ssh]\nknown_hosts = "{known}"\n'
            + host.config(pool="default", extra=host_extra).replace(
                f'work_dir = "{host.root / "work"}"', f'work_dir = "{work_dir}"')
            + extra_config))
        yield daemon, work_dir / daemon.daemon_id
    finally:
        host.kill()
        shutil.rmtree(work_dir, ignore_errors=True)


@pytest.mark.parametrize("where", ["local", "ssh"])
async def test_a_process_executions_files_are_private_on_its_host(
        daemon_factory: type[Daemon], tmp_path: Path, where: str) -> None:
    with one_host(daemon_factory, tmp_path, where, 'runtime = "process"\n',
                  f'[secrets]\nAPI_TOKEN = "{SECRET}"\n') as (daemon, work_root):
        await files_are_private(daemon, work_root, tmp_path)


async def files_are_private(daemon: Daemon, work_root: Path, tmp_path: Path) -> None:
    users = ensure_users()
    client = await Client.connect(daemon.socket, client_name="tests")
    try:
        repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("hold", HOLD)})
        e = await submit_repo(client, repo, "hold")
        await asyncio.wait_for(first_line(client, e.id, "started"), 120)  # its command runs
        work = work_root / str(e.id)
        run_sh = work / ".runyard" / "run.sh"
        assert SECRET in run_sh.read_text()  # the wrapper exports it: it must stay root's
        for path in (run_sh, work / "config" / "parameters.json", work / ".runyard" / "stdout"):
            assert not can_read(users["rybob"], path), path
        assert stat.S_IMODE(os.stat(work).st_mode) == 0o700
        assert stat.S_IMODE(os.stat(work / ".runyard").st_mode) == 0o700
        for private in (".runyard/run.sh", ".runyard/command.sh", ".runyard/stdout"):
            assert stat.S_IMODE(os.stat(work / private).st_mode) == 0o600, private
        (work / "outputs" / "go").touch()
        done = await wait_for_status(client, e.id)
        assert done.status == "complete"
    finally:
        await client.close()


# The line comes after the files: once it is in the log, they are there.
WRITE_AND_HOLD = ['echo made > "$VH_OUTPUTS_DIR/result.txt"', 'echo more >> "$VH_REPOSITORY_DIR/notes.txt"',
                  'echo "uid=$(id -u) gid=$(id -g)"', *HOLD[1:]]


@pytest.mark.parametrize(("where", "runtime", "run_as"), [
    ("local", "docker", "owner"), ("local", "process", "owner"), ("ssh", "docker", "owner"),
    ("ssh", "process", "owner"), ("local", "docker", "image"), ("local", "process", "image")])
async def test_run_as_owner_runs_the_command_as_the_submitting_user(
        daemon_factory: type[Daemon], tmp_path: Path, where: str, runtime: str, run_as: str) -> None:
    setting = "" if run_as == "image" else 'run_as = "owner"\n'  # "image" is the default
    with one_host(daemon_factory, tmp_path, where, f'runtime = "{runtime}"\n{setting}') as (daemon, work_root):
        await runs_as(daemon, work_root, tmp_path, run_as)


async def runs_as(daemon: Daemon, work_root: Path, tmp_path: Path, run_as: str) -> None:
    users = ensure_users()
    alice = users["ryalice"]
    client = await Client.connect(daemon.socket, client_name="tests")
    try:
        repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("write", WRITE_AND_HOLD)})
        eid = submit_as(alice, daemon, repo, "write")
        said = await asyncio.wait_for(first_line(client, eid, "uid="), 120)
        uid, gid = (alice.pw_uid, alice.pw_gid) if run_as == "owner" else (0, 0)  # the base image runs as root
        assert said == f"uid={uid} gid={gid}"
        work = work_root / str(eid)
        output = work / "outputs" / "result.txt"
        assert (os.stat(output).st_uid, os.stat(output).st_gid) == (uid, gid)
        if run_as == "owner":
            assert not can_read(users["rybob"], output)  # theirs, and still private to others
        (work / "outputs" / "go").touch()
        done = await wait_for_status(client, eid)
        assert done.status == "complete", done.reason
        assert "result.txt" in [o.path for o in await client.outputs(eid)]
    finally:
        await client.close()


async def test_the_data_directory_is_the_daemons_alone(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    """Code, inputs, outputs, logs and the database are read by the daemon and served through the
    socket to whom it lets in; on disk no other user reads them, in the socket's group or not."""
    users = ensure_users()
    daemon = shared_daemon(daemon_factory)
    data = tmp_path / "in.txt"
    data.write_text("private input\n")
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml(
        "out", ['cat "$VH_INPUTS_DIR/data/in.txt"', 'echo result > "$VH_OUTPUTS_DIR/r.txt"'],
        extra="inputs:\n  - name: data")})
    async with await Client.connect(daemon.socket) as client:
        e = await submit_repo(client, repo, "out", inputs={"data": [str(data)]})
        assert (await wait_for_status(client, e.id)).status == "complete"
    d = daemon.data_dir
    files = [d / "runyard.sqlite3", d / "runyard.sqlite3-wal", *d.glob("snapshots/*.tar"),
             *d.glob("cache/inputs/*/data"), d / "outputs" / str(e.id) / "r.txt", d / "logs" / f"{e.id}.log"]
    assert all(f.is_file() for f in files) and len(files) == 6, files
    for name in ("ryalice", "ryoutsider"):
        readable = [str(f.relative_to(d)) for f in files if can_read(users[name], f)]
        assert readable == [], (name, readable)
    # ... and the lab's users still reach everything through the socket.
    answers = as_user(users["ryalice"], daemon.socket, [("outputs.list", {"id": e.id})])
    assert [o["path"] for o in answers["answers"][0]["result"]] == ["r.txt"], answers
