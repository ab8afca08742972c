"""A host that stays away past the grace period: its executions end as host-lost, or retry elsewhere."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runyard.protocol import Client
from runyard.protocol.methods import ExecutionView

from .conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status, wait_until_removed
from .pool import SshHost, start_hosts, wait_for_host

# Serial: their grace periods are seconds, and one of them restarts the Docker engine everyone uses.
pytestmark = [pytest.mark.slow, pytest.mark.serial]

STEPS = (
    step_yaml("hold", "while true; do echo alive; sleep 0.2; done")
    + step_yaml("count", "for n in $(seq 0 39); do echo n=$n; sleep 0.1; done")
)


@dataclass
class TwoHosts:
    daemon: Daemon
    hosts: dict[str, SshHost]
    repo: Path


@pytest.fixture
async def two_hosts(tmp_path: Path, daemon_factory: type[Daemon]) -> AsyncIterator[TwoHosts]:
    hosts, ssh = start_hosts(tmp_path, {"h1": None, "h2": None}, ssh_extra="""\
        connect_timeout_seconds = 2
        keepalive_seconds = 1
        keepalive_count_max = 2
        """)
    config = ssh + "[scheduler]\nhost_lost_grace_seconds = 3\n" + "".join(
        h.config(pool="p", extra="max_concurrent = 1") for h in hosts.values())
    daemon = daemon_factory(local_extra="enabled = false", extra_config=config, stop_grace=1)
    daemon.start()
    async with await Client.connect(daemon.socket) as client:
        for name in hosts:
            await wait_for_host(client, name, {"ready"})
    yield TwoHosts(daemon, hosts, make_repo(tmp_path / "repo", {"valohai.yaml": STEPS}))
    for host in hosts.values():
        host.kill()


async def hold_on_a_host_that_goes_away(client: Client, two_hosts: TwoHosts) -> tuple[ExecutionView, SshHost]:
    """A running execution whose host then drops off the network (and is seen to)."""
    held = await wait_for_status(client, (await submit_repo(client, two_hosts.repo, "hold")).id, {"started"})
    assert held.host is not None and held.container_id
    host = two_hosts.hosts[held.host]
    host.kill()
    await wait_for_host(client, held.host, {"unreachable"})
    return held, host


async def test_a_host_away_past_the_grace_loses_its_execution_and_its_container_goes(two_hosts: TwoHosts) -> None:
    daemon = two_hosts.daemon
    async with await Client.connect(daemon.socket) as client:
        held, host = await hold_on_a_host_that_goes_away(client, two_hosts)
        shown = run_cli(daemon, "hosts").stdout
        assert "unreachable" in shown and "next try in" in shown  # the backoff is visible
        ended = await wait_for_status(client, held.id, timeout=60)
        assert (ended.status, ended.reason) == ("error", "host-lost")
        log = run_cli(daemon, "logs", str(held.id)).stdout
        assert f"host {held.host} unreachable for 3 s: giving the execution up" in log
        # When the host comes back, the container it still runs for that execution is removed.
        host.start()
        await wait_for_host(client, held.host, {"ready"})
        assert wait_until_removed(held.container_id), "the lost execution's container still exists"


async def test_with_retries_it_goes_back_to_the_queue_and_completes_elsewhere(two_hosts: TwoHosts) -> None:
    daemon = two_hosts.daemon
    async with await Client.connect(daemon.socket) as client:
        e = await submit_repo(client, two_hosts.repo, "count", retries=1)
        first = await wait_for_status(client, e.id, {"started"})
        assert first.host is not None and first.retries == 1
        two_hosts.hosts[first.host].kill()
        ended = await wait_for_status(client, e.id, timeout=90)
        assert ended.status == "complete", run_cli(daemon, "logs", str(e.id)).stdout + daemon.log_text()[-4000:]
        assert ended.host is not None and ended.host != first.host
        assert ended.retries == 0
    log = run_cli(daemon, "logs", str(e.id)).stdout.splitlines()
    note = next(i for i, line in enumerate(log) if "back to the queue" in line)
    # the second attempt's output, whole and once, after the note
    assert [line for line in log[note + 1 :] if line.startswith("n=")] == [f"n={n}" for n in range(40)]


async def test_a_host_that_comes_back_without_its_container(two_hosts: TwoHosts) -> None:
    daemon = two_hosts.daemon
    async with await Client.connect(daemon.socket) as client:
        held, host = await hold_on_a_host_that_goes_away(client, two_hosts)
        # While it is away, its container goes (a reboot, an engine reset, someone's docker rm).
        subprocess.run(["docker", "rm", "-f", held.container_id], check=True, capture_output=True)
        host.start()  # back within the grace
        ended = await wait_for_status(client, held.id, timeout=60)
        assert (ended.status, ended.reason) == ("error", "container-removed")
        assert "alive" in run_cli(daemon, "logs", str(held.id)).stdout  # what it printed before is kept


def restart_engine() -> None:
    """Restart the Docker engine the pool hosts share, as an operator's upgrade would."""
    if subprocess.run(["systemctl", "is-active", "--quiet", "docker"], capture_output=True).returncode == 0:
        subprocess.run(["systemctl", "restart", "docker"], check=True, timeout=120)
    else:  # started by scripts/lib.sh: stop it, start it again the same way
        pid = int(subprocess.run(["pidof", "dockerd"], capture_output=True, text=True, check=True).stdout.split()[0])
        command = [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]
        os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 60
        while Path(f"/proc/{pid}").exists():  # not our child: nothing to wait on but its /proc entry
            assert time.monotonic() < deadline, "dockerd did not stop"
            time.sleep(0.1)
        with open("/var/log/runyard-dockerd.log", "ab") as log:
            subprocess.Popen(command, stdout=log, stderr=log, start_new_session=True)
    deadline = time.monotonic() + 60
    while subprocess.run(["docker", "info"], capture_output=True).returncode != 0:
        assert time.monotonic() < deadline, "dockerd did not come back"
        time.sleep(0.2)


async def test_an_engine_restart_ends_or_retries_what_it_killed(two_hosts: TwoHosts) -> None:
    daemon = two_hosts.daemon
    async with await Client.connect(daemon.socket) as client:
        retried = await submit_repo(client, two_hosts.repo, "count", retries=1)
        given_up = await submit_repo(client, two_hosts.repo, "hold")
        first, _ = [await wait_for_status(client, e.id, {"started"}) for e in (retried, given_up)]
        assert first.host is not None
        follow = client.follow_logs(retried.id)
        async for block in follow:
            if "n=5" in block.data:
                break
        await follow.aclose()
        await asyncio.to_thread(restart_engine)
        a = await wait_for_status(client, retried.id, timeout=120)
        b = await wait_for_status(client, given_up.id, timeout=120)
    text = daemon.log_text()
    trace = text[text.find("Traceback"):][:3000] if "Traceback" in text else ""
    assert (a.status, a.reason) == ("complete", None), run_cli(daemon, "logs", str(a.id)).stdout + trace
    log = run_cli(daemon, "logs", str(a.id)).stdout.splitlines()
    note = next(i for i, line in enumerate(log) if "back to the queue" in line)
    assert "engine" in log[note - 1] or "engine" in log[note]
    assert [line for line in log[note + 1 :] if line.startswith("n=")] == [f"n={n}" for n in range(40)]
    assert (b.status, b.reason) == ("error", "host-lost"), run_cli(daemon, "logs", str(b.id)).stdout
    assert "restarted and ended the execution" in run_cli(daemon, "logs", str(b.id)).stdout
    # The attempt the restart ended left nothing on its host: its work directory went with it.
    assert not (two_hosts.hosts[first.host].root / "work" / daemon.daemon_id / str(retried.id)).exists()


def _drop_port(port: int, action: str) -> None:
    """Black-hole a loopback port both ways (-I adds, -D removes): packets vanish, nothing is refused."""
    for direction in ("--dport", "--sport"):
        subprocess.run(["iptables", action, "INPUT", "-i", "lo", "-p", "tcp", direction, str(port), "-j", "DROP"],
                       check=True, capture_output=True)


async def test_a_network_cut_within_the_grace_loses_and_doubles_nothing(two_hosts: TwoHosts) -> None:
    daemon = two_hosts.daemon
    async with await Client.connect(daemon.socket) as client:
        e = await submit_repo(client, two_hosts.repo, "count")
        running = await wait_for_status(client, e.id, {"started"})
        assert running.host is not None
        port = two_hosts.hosts[running.host].port
        _drop_port(port, "-I")
        try:
            # keepalives (1 s, 2 missed) notice the silence; nothing is refused, packets just vanish
            await wait_for_host(client, running.host, {"unreachable"}, timeout=30)
            assert (await client.get(e.id)).status == "started"
        finally:
            _drop_port(port, "-D")
        await wait_for_host(client, running.host, {"ready"}, timeout=30)
        ended = await wait_for_status(client, e.id, timeout=60)
    assert (ended.status, ended.reason) == ("complete", None)
    log = run_cli(daemon, "logs", str(e.id)).stdout.splitlines()
    assert [line for line in log if line.startswith("n=")] == [f"n={n}" for n in range(40)]
