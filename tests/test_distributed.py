"""Distributed tasks (Valohai's `type: distributed`) as a user meets them: members that find each
other through valohai-utils' own `valohai.distributed`, in real containers, across a daemon kill."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import textwrap
from pathlib import Path

import msgspec
import pytest

from runyard.daemon.scheduler import Capacity, Demand, place
from runyard.protocol import Client
from runyard.protocol.tasks import TaskView

from .conftest import Daemon, make_repo, run_cli
from .test_tasks import cli, follow, infos, new_task

VH_IMAGE = "runyard-vh:bookworm-py3"  # the base image with valohai-utils (scripts/lib.sh ensure_vh_image)

# Each member says who it is as valohai-utils sees it; the master listens on `port` at its own
# address, every other member connects to the master's and they exchange a message.
MEMBER = """\
import json, os, socket, time
import valohai

d = valohai.distributed
me, master = d.me(), d.master()
print(json.dumps({"member": {
    "distributed": d.is_distributed_task(), "rank": d.rank, "count": d.required_count,
    "master": master.primary_local_ip, "me": me.primary_local_ip, "job": me.job_id,
    "members": [m.job_id for m in d.members()], "group": d.group_name,
    "env": [os.environ[f"VH_DIST_MEMBER_{k}"] for k in ("ID", "INDEX", "COUNT")]}}), flush=True)
port = valohai.parameters("port").value
if me.is_master:
    server = socket.create_server((me.primary_local_ip, port))
    heard = []
    for _ in range(d.required_count - 1):
        conn, _ = server.accept()
        with conn:
            heard.append(conn.recv(100).decode())
            conn.sendall(b"welcome from the master")
    print(json.dumps({"heard": sorted(heard)}), flush=True)
else:
    for _ in range(600):  # the master may start a moment later: members start independently
        try:
            conn = socket.create_connection((master.primary_local_ip, port), timeout=5)
            break
        except OSError:
            time.sleep(0.1)
    with conn:
        conn.sendall(f"hello from rank {d.rank}".encode())
        print(json.dumps({"reply": conn.recv(100).decode()}), flush=True)
"""

STEPS = textwrap.dedent(f"""\
    - step:
        name: member
        image: {VH_IMAGE}
        command: python3 member.py {{parameters}}
        parameters:
          - name: port
            type: integer
            default: 0
    - task:
        name: trio
        step: member
        type: distributed
        execution-count: 3
        on-child-error: stop-all-and-error
        parameters: []
    - step:
        name: wait
        image: {VH_IMAGE}
        command: sleep 120
    """)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.mark.slow
async def test_distributed_members_meet_through_valohai_utils_across_a_daemon_kill(
        daemon_factory: type[Daemon], tmp_path: Path) -> None:
    if subprocess.run(["docker", "image", "inspect", VH_IMAGE], capture_output=True).returncode != 0:
        pytest.fail(f"image {VH_IMAGE} is missing: scripts/test builds it")
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": STEPS, "member.py": MEMBER})
    daemon = daemon_factory()
    daemon.start()
    linted = run_cli(daemon, "lint", str(repo / "valohai.yaml"))
    assert linted.returncode == 0 and "warning" not in linted.stdout, linted.stdout
    assert "below the distributed task's execution-count (3)" in cli(
        daemon, "task", "run", "trio", "--max-queued", "2", cwd=repo, code=2)

    made = new_task(daemon, repo, "trio", "-p", f"port={free_port()}")
    assert (made["type"], made["total"], made["on_child_error"]) == ("distributed", 3, "stop-all-and-error")
    # Kill the daemon once the group is placed and a member has started: the containers go on,
    # and the restarted daemon follows the same group (no second one, no member run twice).
    client = await Client.connect(daemon.socket, client_name="tests")
    try:
        async for _event in client.events(since=0):
            task = msgspec.convert(await client.call("tasks.get", {"id": made["id"]}), TaskView)
            if task.children.get("started"):
                break
    finally:
        await client.close()
    daemon.kill9()
    daemon.start()
    done = await follow(daemon, made["id"])
    assert (done.status, done.children, done.execution_ids) == ("complete", {"complete": 3}, made["execution_ids"])

    ids = done.execution_ids
    members = infos(daemon, ids)
    seen = [m["metadata"]["member"] for m in members]
    jobs = [f"runyard-{i}" for i in ids]
    assert [(s["rank"], s["job"], s["env"]) for s in seen] == [
        (rank, jobs[rank], [str(rank), str(rank), "3"]) for rank in range(3)]
    assert all(s["distributed"] and s["count"] == 3 and s["members"] == jobs and s["group"] == f"task-{done.id}"
               and s["master"] == s["me"] == "127.0.0.1" for s in seen)  # one host: its loopback
    assert members[0]["metadata"]["heard"] == ["hello from rank 1", "hello from rank 2"]
    assert [m["metadata"]["reply"] for m in members[1:]] == ["welcome from the master"] * 2
    for execution_id in ids:  # each member ran once: one container, one announcement in its log
        assert cli(daemon, "logs", str(execution_id)).count('"member"') == 1
    placed = [line for line in daemon.log_text().splitlines() if ": placed on " in line]
    assert sorted(int(line.split("execution ")[1].split(":")[0]) for line in placed) == ids
    # The local host runs 4 at a time: 5 members could never all run at once.
    assert "could never hold all 5 members at once" in cli(daemon, "task", "run", "trio", "--count", "5",
                                                          cwd=repo, code=2)


def test_a_group_is_placed_whole_or_not_at_all() -> None:
    def host(name: str, gpus: int) -> Capacity:
        return Capacity(name=name, pool="p", total_gpus=gpus, total_cpus=8, total_memory_mb=1000,
                        free_gpus=[f"{name}-{i}" for i in range(gpus)], free_cpus=8, free_memory_mb=1000,
                        free_slots=None)

    group = [Demand(i, 0, float(i), "p", gpus=2, group=7, group_size=3) for i in (1, 2, 3)]
    single = Demand(4, 0, 4.0, "p", gpus=1)
    hosts = [host("a", 4), host("b", 1)]
    # 6 GPUs asked, 5 free: nobody of the group goes, and the single one behind it takes a GPU.
    placed = place([*group, single], hosts, now=10, reserve_after=300, groups=lambda _: group)
    assert [(p.execution_id, p.host) for p in placed] == [(4, "b")] and len(hosts[0].free_gpus) == 4
    # With room for all, all go in the same pass (each to the tightest fit); with a member not
    # queued (yet), none does.
    hosts = [host("a", 4), host("b", 2)]
    assert sorted((p.execution_id, p.host) for p in place(group, hosts, now=10, reserve_after=300,
                                                           groups=lambda _: group)) == [(1, "b"), (2, "a"), (3, "a")]
    assert place(group[:2], [host("a", 8)], now=10, reserve_after=300, groups=lambda _: group[:2]) == []


def test_distributed_tasks_refused_by_name_or_stopped_when_their_group_cannot_be_whole(
        tmp_path: Path, daemon_factory: type[Daemon]) -> None:
    daemon = daemon_factory(max_concurrent=2, local_extra='runtime = "process"\n',
                            extra_config="[quotas]\nmax_active_per_user = 3\n")
    daemon.start()
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": STEPS, "member.py": MEMBER})
    for args, said in (((), "needs execution-count (--count N)"),
                       (("--count", "2", "--retry", "1"), "members are not retried")):
        assert said in cli(daemon, "task", "run", "member", "--type", "distributed", *args, cwd=repo, code=2)

    # One of the host's two slots is taken: the pair waits, whole, with nobody placed. A member
    # stopped meanwhile means the group can never be whole: the task stops the other one too.
    blocker = json.loads(cli(daemon, "run", "wait", "--json", cwd=repo))
    pair = new_task(daemon, repo, "member", "--type", "distributed", "--count", "2")
    assert pair["children"] == {"queued": 2}
    # The quota (3) is full: another pair is refused whole rather than half queued.
    assert "your quota has room for 0 more executions now" in cli(
        daemon, "task", "run", "member", "--type", "distributed", "--count", "2", cwd=repo, code=2)
    cli(daemon, "stop", str(pair["execution_ids"][1]))
    done = asyncio.run(follow(daemon, pair["id"]))
    assert (done.status, done.reason, done.children) == ("stopped", "group-incomplete", {"stopped": 2})
    assert [e["reason"] for e in infos(daemon, done.execution_ids)] == ["stopped-before-start"] * 2
    cli(daemon, "stop", str(blocker["id"]))
