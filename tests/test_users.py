"""Other users on one daemon: real local accounts, owners from SO_PEERCRED, admins from the config.

Each user's client runs in a child process that has really become that user
(setgroups/setgid/setuid), speaking the protocol over the daemon's socket.
"""

from __future__ import annotations

import fcntl
import grp
import json
import os
import pwd
import shutil
import socket
import stat
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from runyard.daemon.snapshots import snapshot_worktree
from runyard.protocol.framing import FrameDecoder, encode_frame
from runyard.protocol.messages import (
    PROTOCOL_MAJOR,
    PROTOCOL_MINOR,
    Error,
    Hello,
    Request,
    Response,
    Welcome,
    decode_message,
    encode_message,
)

from .conftest import Daemon, make_repo, step_yaml

pytestmark = pytest.mark.slow

GROUP = "ryusers"
USERS = {"ryalice": True, "rybob": True, "ryadmin": True, "ryoutsider": False}  # name -> in GROUP


def ensure_users() -> dict[str, pwd.struct_passwd]:
    if os.geteuid() != 0:
        pytest.fail("this test makes local users: run the suite as root (scripts/test does)")
    # One test process at a time (the suite runs in parallel): useradd fails on a user made meanwhile.
    with open("/tmp/runyard-tests-users.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run(["groupadd", "-f", GROUP], check=True)
        for name, member in USERS.items():
            try:
                pwd.getpwnam(name)
            except KeyError:
                subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                                *(["-G", GROUP] if member else []), name], check=True)
    return {name: pwd.getpwnam(name) for name in USERS}


def as_user(user: pwd.struct_passwd, path: str, requests: list[tuple[str, dict[str, Any]]]) -> dict[str, Any]:
    """Become ``user`` in a child process, connect, send the requests; their answers, in order."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: no return from here
        os.close(read_end)
        out: dict[str, Any] = {"answers": []}
        try:
            groups = [g.gr_gid for g in grp.getgrall() if user.pw_name in g.gr_mem]
            os.setgroups(groups)
            os.setgid(user.pw_gid)
            os.setuid(user.pw_uid)
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                sock.connect(path)
            except PermissionError as exc:
                out["connect_error"] = str(exc)
                raise SystemExit from None
            decoder = FrameDecoder()
            pending: list[Any] = []

            def receive() -> Any:
                while not pending:
                    data = sock.recv(1 << 16)
                    if not data:
                        raise ConnectionError("daemon closed the connection")
                    pending.extend(decode_message(f) for f in decoder.feed(data))
                return pending.pop(0)

            sock.sendall(encode_frame(encode_message(Hello(client="users-test", major=PROTOCOL_MAJOR,
                                                           minor=PROTOCOL_MINOR))))
            welcome = receive()
            assert isinstance(welcome, Welcome)
            out["welcome"] = {"user": welcome.user, "uid": welcome.uid}
            for i, (method, params) in enumerate(requests, 1):
                sock.sendall(encode_frame(encode_message(Request(id=i, method=method, params=params))))
                while True:
                    answer = receive()
                    if isinstance(answer, Response) and answer.id == i:
                        out["answers"].append({"result": answer.result})
                        break
                    if isinstance(answer, Error) and answer.id == i:
                        out["answers"].append({"code": answer.code, "message": answer.message})
                        break
        except SystemExit:
            pass
        except BaseException as exc:
            out["crash"] = repr(exc)
        finally:
            os.write(write_end, json.dumps(out).encode())
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as fh:
        data = fh.read()
    os.waitpid(pid, 0)
    result: dict[str, Any] = json.loads(data)
    assert "crash" not in result, result["crash"]
    return result


def test_owners_come_from_the_socket_and_only_owners_or_admins_may_act(daemon_factory: type[Daemon],
                                                                      tmp_path: Path) -> None:
    users = ensure_users()
    daemon = daemon_factory(daemon_extra=f'socket_group = "{GROUP}"\nsocket_mode = "0660"\nadmins = ["ryadmin"]\n')
    daemon.root.chmod(0o711)  # users reach the socket inside; they cannot list the directory
    daemon.start()
    mode = os.stat(daemon.socket)
    assert stat.S_IMODE(mode.st_mode) == 0o660
    assert grp.getgrgid(mode.st_gid).gr_name == GROUP

    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("hold", "sleep 600")})
    snap = snapshot_worktree(repo)
    alice, bob, admin, outsider = (users[n] for n in ("ryalice", "rybob", "ryadmin", "ryoutsider"))

    submitted = as_user(alice, daemon.socket, [
        ("snapshots.put", {"id": snap.id, "offset": 0, "data": snap.data, "final": True}),
        ("executions.submit", {"step": "hold", "snapshot": snap.id}),
        # a client cannot say who it is: there is no such field
        ("executions.submit", {"step": "hold", "snapshot": snap.id, "owner": "root"}),
    ])
    assert submitted["welcome"] == {"user": "ryalice", "uid": alice.pw_uid}
    execution = submitted["answers"][1]["result"]
    assert (execution["owner"], execution["owner_uid"]) == ("ryalice", alice.pw_uid)
    assert submitted["answers"][2]["code"] == "invalid-params"
    assert "owner" in submitted["answers"][2]["message"]
    eid = execution["id"]

    refused = as_user(bob, daemon.socket, [
        ("executions.stop", {"ids": [eid]}),
        ("executions.rename", {"id": eid, "title": "mine now"}),
        ("executions.delete", {"id": eid}),
        ("executions.get", {"id": eid}),  # reading is allowed
        ("hosts.drain", {"name": "local"}),
    ])
    for answer in refused["answers"][:3]:
        assert answer["code"] == "permission-denied", answer
        assert f"execution {eid} belongs to ryalice" in answer["message"]
    assert refused["answers"][3]["result"]["status"] in ("queued", "started")
    assert refused["answers"][4]["code"] == "permission-denied"

    by_admin = as_user(admin, daemon.socket, [("executions.rename", {"id": eid, "title": "renamed by admin"})])
    assert by_admin["answers"][0]["result"]["title"] == "renamed by admin"

    assert "connect_error" in as_user(outsider, daemon.socket, [])  # not in the socket's group

    stopped = as_user(alice, daemon.socket, [("executions.stop", {"ids": [eid]})])
    assert stopped["answers"][0]["result"]["stopped"] == [eid]


def _private_files(alice: pwd.struct_passwd, bob: pwd.struct_passwd) -> tuple[Path, Path, Path]:
    """A folder for alice and one only bob may enter, under /tmp (pytest's own are private to root).

    Returns alice's own readable file, a link in alice's folder to bob's secret, and bob's secret.
    """
    top = Path(tempfile.mkdtemp(dir="/tmp", prefix="runyard-users-"))
    top.chmod(0o755)
    home_a, home_b = top / "alice", top / "bob"
    home_a.mkdir(mode=0o755)
    home_b.mkdir(mode=0o700)
    os.chown(home_a, alice.pw_uid, alice.pw_gid)
    os.chown(home_b, bob.pw_uid, bob.pw_gid)
    secret = home_b / "secret.txt"
    secret.write_text("bob's private key material\n")
    secret.chmod(0o644)  # readable by anyone who may enter the folder: only bob may
    os.chown(secret, bob.pw_uid, bob.pw_gid)
    own = home_a / "mine.txt"
    own.write_text("alice's own data\n")
    os.chown(own, alice.pw_uid, alice.pw_gid)
    link = home_a / "innocent.txt"
    link.symlink_to(secret)
    os.lchown(link, alice.pw_uid, alice.pw_gid)
    return own, link, secret


async def test_a_local_input_is_read_only_as_its_submitter_could(daemon_factory: type[Daemon],
                                                                 tmp_path: Path) -> None:
    from runyard.protocol import Client

    from .conftest import run_cli, wait_for_status

    users = ensure_users()
    alice, bob = users["ryalice"], users["rybob"]
    own, link, _secret = _private_files(alice, bob)
    try:
        daemon = daemon_factory(daemon_extra=f'socket_group = "{GROUP}"\nsocket_mode = "0660"\n')
        daemon.root.chmod(0o711)
        daemon.start()
        steps = step_yaml("consume", "cat /valohai/inputs/data/*", extra="inputs:\n  - name: data\n")
        snap = snapshot_worktree(make_repo(tmp_path / "repo", {"valohai.yaml": steps}))
        submitted = as_user(alice, daemon.socket, [
            ("snapshots.put", {"id": snap.id, "offset": 0, "data": snap.data, "final": True}),
            ("executions.submit", {"step": "consume", "snapshot": snap.id, "inputs": {"data": [str(link)]}}),
            ("executions.submit", {"step": "consume", "snapshot": snap.id, "inputs": {"data": [str(own)]}}),
        ])
        via_link, readable = (a["result"]["id"] for a in submitted["answers"][1:])
        async with await Client.connect(daemon.socket) as client:
            refused = await wait_for_status(client, via_link)
            assert (refused.status, refused.reason) == ("error", f"input-failed data {link}")
            log = run_cli(daemon, "logs", str(via_link)).stdout
            assert f"input data: {link}: you may not read this file" in log
            assert "private key material" not in log
            fine = await wait_for_status(client, readable)
            assert fine.status == "complete"
            assert "alice's own data" in run_cli(daemon, "logs", str(readable)).stdout
        for path in (daemon.data_dir).rglob("*"):
            assert not path.is_file() or b"private key material" not in path.read_bytes(), path
    finally:
        shutil.rmtree(own.parent.parent)
