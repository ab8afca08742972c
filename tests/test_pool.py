"""The GPU pool: three real sshd hosts on loopback in front of the local Docker engine."""

from __future__ import annotations

import json
import subprocess
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from runyard.protocol import Client
from runyard.protocol.methods import ExecutionView

from .conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status
from .pool import SshHost, gpu_rows, make_client_key, start_lone_host, wait_for_host

pytestmark = pytest.mark.slow

RELEASE = 'while [ ! -e "$VH_OUTPUTS_DIR/go" ]; do sleep 0.05; done'

STEPS = (
    step_yaml("hold", ['echo "visible=$NVIDIA_VISIBLE_DEVICES cuda=$CUDA_VISIBLE_DEVICES"', RELEASE],
              extra="""\
              environment: a100
              resources:
                devices:
                  nvidia.com/gpu: 1
              """)
    + step_yaml("heavy", ['echo heavy', RELEASE], extra="""\
              resources:
                cpu:
                  min: 3
                memory:
                  min: 6000
              """)
    + step_yaml("huge", "echo never", extra="""\
              resources:
                memory:
                  min: 16000
              """)
    + step_yaml("count", ["python3 count.py 0 200", RELEASE, "python3 count.py 200 400"],
                extra="environment: a100")
    + step_yaml("proc", ["python3 proc.py", 'echo "to stderr" >&2'])
    + step_yaml("read-input", ['cat "$VH_INPUTS_DIR/data/data.csv"'], extra="""\
              inputs:
                - name: data
              """)
    + step_yaml("scribble-input", ['cat "$VH_INPUTS_DIR/data/data.csv"',
                                    'echo scribbled >> "$VH_INPUTS_DIR/data/data.csv" || true'], extra="""\
              inputs:
                - name: data
              """)
    + step_yaml("live", ['echo weights > "$VH_OUTPUTS_DIR/ckpt.pt"', 'chmod 0444 "$VH_OUTPUTS_DIR/ckpt.pt"', RELEASE])
)

COUNT = """\
import sys, time
for i in range(int(sys.argv[1]), int(sys.argv[2])):
    print(f"n={i}", flush=True)
    time.sleep(0.005)
"""

PROC = """\
import json, os
print("outputs in", os.environ["VH_OUTPUTS_DIR"])
print(json.dumps({"loss": 0.25}))
with open(os.path.join(os.environ["VH_OUTPUTS_DIR"], "result.txt"), "w") as fh:
    fh.write("made by a plain process")
"""


@dataclass
class Pool:
    daemon: Daemon
    hosts: dict[str, SshHost]
    repo: Path

    def release(self, e: ExecutionView) -> None:
        """Let a held execution finish: the file it waits for appears in its outputs."""
        assert e.host is not None
        work = self.hosts[e.host].root / "work" / self.daemon.daemon_id / str(e.id) / "outputs"
        (work / "go").touch()


def pool_config(hosts: dict[str, SshHost], known_hosts: Path, ssh_config: Path, extra: str = "") -> str:
    text = textwrap.dedent(f"""\
        [ssh]
        known_hosts = "{known_hosts}"
        config = "{ssh_config}"
        reconnect_min_seconds = 0.2
        reconnect_max_seconds = 1.0
        """)
    a, b, c = hosts["gpu-a"], hosts["gpu-b"], hosts["cpu-c"]
    text += a.config(pool="a100", extra='gpu_mode = "env"')
    # gpu-b sits behind gpu-a: reached with ProxyJump, as machines behind a gateway are
    text += b.config(pool="a100", address="gpu-b-behind-a", extra='gpu_mode = "env"')
    # cpu-c is reached through an ~/.ssh/config-style alias, as operators name their machines
    text += c.config(pool="cpu", address="cpu-c-alias", extra="cpus = 4\nmemory_mb = 8000\n" + extra)
    return text


def make_pool(tmp: Path, daemon_factory: type[Daemon], *, scheduler: str = "", host_c: str = "",
              more: str = "") -> Iterator[Pool]:
    key = make_client_key(tmp)
    hosts = {
        "gpu-a": SshHost("gpu-a", tmp / "gpu-a", key, gpu_rows("NVIDIA A100-SXM4-80GB", 4, na=True, seed="a")),
        "gpu-b": SshHost("gpu-b", tmp / "gpu-b", key, gpu_rows("NVIDIA A100-PCIE-40GB", 2, 40960, seed="b")),
        "cpu-c": SshHost("cpu-c", tmp / "cpu-c", key, None),
    }
    for host in hosts.values():
        host.prepare()
        host.start()
    known_hosts = tmp / "known_hosts"
    known_hosts.write_text("".join(h.known_hosts_line() for h in hosts.values()))
    ssh_config = tmp / "ssh_config"
    ssh_config.write_text(textwrap.dedent(f"""\
        Host cpu-c-alias
            HostName 127.0.0.1
            Port {hosts['cpu-c'].port}
            User root
            IdentityFile {key}
        Host gateway-a
            HostName 127.0.0.1
            Port {hosts['gpu-a'].port}
            User root
            IdentityFile {key}
        Host gpu-b-behind-a
            HostName 127.0.0.1
            Port {hosts['gpu-b'].port}
            User root
            IdentityFile {key}
            ProxyJump gateway-a
        """))
    daemon = daemon_factory(local_extra="enabled = false",
                            extra_config=pool_config(hosts, known_hosts, ssh_config, host_c) + scheduler + more,
                            stop_grace=2)
    daemon.start()
    repo = make_repo(tmp / "repo", {"valohai.yaml": STEPS, "count.py": COUNT, "proc.py": PROC})
    try:
        yield Pool(daemon, hosts, repo)
    finally:
        for host in hosts.values():
            host.kill()


@pytest.fixture
def pool(tmp_path: Path, daemon_factory: type[Daemon]) -> Iterator[Pool]:
    yield from make_pool(tmp_path, daemon_factory)


async def connect(pool: Pool) -> Client:
    client = await Client.connect(pool.daemon.socket, client_name="tests")
    for name in pool.hosts:
        await wait_for_host(client, name, {"ready"})
    return client


async def first_line(client: Client, execution_id: int, prefix: str) -> str:
    async for block in client.follow_logs(execution_id, 0):
        for line in block.data.splitlines():
            text = line.split(" ", 2)[2] if line.count(" ") >= 2 else line
            if text.startswith(prefix):
                return text
    raise AssertionError(f"execution {execution_id} never printed {prefix!r}")


def container_label(execution_id: int, daemon_id: str, label: str) -> str:
    out = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label=runyard.daemon={daemon_id}",
         "--filter", f"label=runyard.execution={execution_id}", "--format", f'{{{{.Label "{label}"}}}}'],
        capture_output=True, text=True, check=True,
    ).stdout.strip()
    return out


async def test_inventory_placement_by_pool_gpus_cpu_memory_and_refusals(pool: Pool) -> None:
    client = await connect(pool)
    try:
        hosts = {h.name: h for h in await client.hosts()}
        assert [g.name for g in hosts["gpu-a"].gpus] == ["NVIDIA A100-SXM4-80GB"] * 4
        assert len(hosts["gpu-b"].gpus) == 2 and hosts["gpu-b"].gpus[0].memory_total_mb == 40960
        # [N/A] fields from nvidia-smi are "unknown", not errors and not zero
        assert hosts["gpu-a"].gpus[3].memory_used_mb is None and hosts["gpu-a"].gpus[3].utilization is None
        assert hosts["gpu-a"].gpus[2].memory_used_mb == 200
        assert hosts["cpu-c"].gpus == [] and hosts["cpu-c"].cpus == 4 and hosts["cpu-c"].memory_mb == 8000
        assert all(h.state == "ready" for h in hosts.values())

        two = await submit_repo(client, pool.repo, "hold", gpus=2)
        two = await wait_for_status(client, two.id, {"started"})
        assert two.host in ("gpu-a", "gpu-b") and len(two.gpus) == 2
        line = await first_line(client, two.id, "visible=")
        uuids = {g.uuid for g in hosts[two.host].gpus}
        assert set(line.split()[0].removeprefix("visible=").split(",")) == set(two.gpus) <= uuids
        assert line.split()[1] == "cuda=" + ",".join(two.gpus)
        assert container_label(two.id, pool.daemon.daemon_id, "runyard.host") == two.host

        cpu_only = await submit_repo(client, pool.repo, "hold", pool="cpu", gpus=0)
        cpu_only = await wait_for_status(client, cpu_only.id, {"started"})
        assert cpu_only.host == "cpu-c" and cpu_only.gpus == []
        # No GPUs granted: images defaulting to NVIDIA_VISIBLE_DEVICES=all must see none
        assert await first_line(client, cpu_only.id, "visible=") == "visible=void cuda="

        # CPUs and memory are accounted: cpu-c (4 CPUs, 8000 MB) fits one heavy (3 CPUs, 6000 MB) at a time
        heavy1 = await wait_for_status(client, (await submit_repo(client, pool.repo, "heavy", pool="cpu")).id,
                                       {"started"})
        heavy2 = await submit_repo(client, pool.repo, "heavy", pool="cpu")
        assert heavy1.host == "cpu-c"
        assert (await client.get(heavy2.id)).status == "queued"
        for e in (two, cpu_only, heavy1):
            pool.release(e)
        heavy2 = await wait_for_status(client, heavy2.id, {"started"})
        assert heavy2.host == "cpu-c"
        pool.release(heavy2)
        for e in (two, cpu_only, heavy1, heavy2):
            assert (await wait_for_status(client, e.id)).status == "complete"
        # Outputs come back from the host over SFTP
        assert [(o.path, o.size) for o in await client.outputs(two.id)] == [("go", 0)]
        # A live output on a pool host is found by an SFTP listing and stored while it runs
        live = await wait_for_status(client, (await submit_repo(client, pool.repo, "live", pool="a100")).id,
                                     {"started"})
        assert await first_line(client, live.id, "live output stored") == "live output stored: ckpt.pt"
        assert [o.path for o in await client.outputs(live.id)] == ["ckpt.pt"]
        pool.release(live)
        assert (await wait_for_status(client, live.id)).status == "complete"

        # Refused at submit, saying why
        cases = [
            (["run", "hold", "--pool", "cpu", "--gpus", "1"], "no host of pool 'cpu' could ever run it"),
            (["run", "hold", "--gpus", "8"], "no host of pool 'a100' could ever run it"),
            (["run", "hold", "--pool", "nope"], "no host is in pool 'nope' (pools: a100, cpu)"),
            (["run", "huge", "--pool", "cpu"], "16000 MB of memory"),
        ]
        for args, message in cases:
            result = run_cli(pool.daemon, *args, cwd=pool.repo)
            assert result.returncode == 2, result
            assert message in result.stderr
        assert "a100" in run_cli(pool.daemon, "hosts").stdout
        # The stand-in GPUs sit on an engine without the NVIDIA runtime: doctor says so and how to fix it
        doctor = run_cli(pool.daemon, "doctor", "gpu-a")
        assert doctor.returncode == 1
        assert "ok    connection:" in doctor.stdout and "ok    nvidia-smi:" in doctor.stdout
        assert "4 GPUs (NVIDIA A100-SXM4-80GB)" in doctor.stdout
        assert "FAIL  nvidia container runtime:" in doctor.stdout and "default runtime" in doctor.stdout
    finally:
        await client.close()


async def test_disjoint_gpus_queue_on_capacity_and_drain(pool: Pool) -> None:
    client = await connect(pool)
    try:
        held = [await submit_repo(client, pool.repo, "hold", gpus=2) for _ in range(3)]
        held = [await wait_for_status(client, e.id, {"started"}) for e in held]
        granted = [g for e in held for g in e.gpus]
        assert len(granted) == 6 and len(set(granted)) == 6  # two executions never share a GPU
        holders = {g.uuid: g.execution for h in await client.hosts() for g in h.gpus}
        assert all(holders[g] == e.id for e in held for g in e.gpus)

        waiting = await submit_repo(client, pool.repo, "hold", gpus=1)
        assert (await client.get(waiting.id)).status == "queued"
        on_a = next(e for e in held if e.host == "gpu-a")
        on_b = next(e for e in held if e.host == "gpu-b")
        pool.release(on_a)  # capacity frees: the waiting one is placed on that event
        started = await wait_for_status(client, waiting.id, {"started"})
        assert started.host == "gpu-a" and set(started.gpus) <= set(on_a.gpus)

        result = run_cli(pool.daemon, "hosts", "drain", "gpu-b")
        assert result.returncode == 0 and "gpu-b: draining" in result.stdout
        pool.release(on_b)  # finishes what runs...
        assert (await wait_for_status(client, on_b.id)).status == "complete"
        later = await submit_repo(client, pool.repo, "hold", gpus=2)  # ...and takes nothing new
        hosts = {h.name: h for h in await client.hosts()}
        assert hosts["gpu-b"].state == "draining" and hosts["gpu-b"].executions == []
        assert (await client.get(later.id)).status == "queued"
        assert run_cli(pool.daemon, "hosts", "enable", "gpu-b").returncode == 0
        later = await wait_for_status(client, later.id, {"started"})
        assert later.host == "gpu-b"
        still_held = [e for e in held if e.id not in (on_a.id, on_b.id)]
        for e in (*still_held, started, later):
            pool.release(e)
        for e in (*held, started, later):
            assert (await wait_for_status(client, e.id)).status == "complete"
    finally:
        await client.close()


@pytest.fixture
def reserving_pool(tmp_path: Path, daemon_factory: type[Daemon]) -> Iterator[Pool]:
    yield from make_pool(tmp_path, daemon_factory, scheduler="[scheduler]\nreserve_after_seconds = 0\n")


async def test_four_gpu_job_is_not_starved_by_one_gpu_jobs(reserving_pool: Pool) -> None:
    pool = reserving_pool
    client = await connect(pool)
    try:
        smalls = [await submit_repo(client, pool.repo, "hold", gpus=1) for _ in range(6)]
        smalls = [await wait_for_status(client, e.id, {"started"}) for e in smalls]
        big = await submit_repo(client, pool.repo, "hold", gpus=4)
        stream = [await submit_repo(client, pool.repo, "hold", gpus=1) for _ in range(4)]
        # A GPU frees on gpu-b, which cannot ever hold 4: a small one may fill that gap
        first_b = next(e for e in smalls if e.host == "gpu-b")
        pool.release(first_b)
        filler = await wait_for_status(client, stream[0].id, {"started"})
        assert filler.host == "gpu-b"
        # GPUs free one by one on gpu-a: they are held for the big one, not given to the stream
        for e in (e for e in smalls if e.host == "gpu-a"):
            pool.release(e)
            assert (await wait_for_status(client, e.id)).status == "complete"
        big = await wait_for_status(client, big.id, {"started"}, timeout=60)
        assert big.host == "gpu-a" and len(big.gpus) == 4
        for e in stream[1:]:
            assert (await client.get(e.id)).status == "queued"
        for e in (*[e for e in smalls if e.host == "gpu-b" and e.id != first_b.id], big, filler):
            pool.release(e)
        for e in stream[1:]:
            pool.release(await wait_for_status(client, e.id, {"started"}))
        for e in (*smalls, big, *stream):
            assert (await wait_for_status(client, e.id)).status == "complete"
    finally:
        await client.close()


async def test_lost_host_keeps_running_and_comes_back_with_the_whole_log(pool: Pool) -> None:
    client = await connect(pool)
    try:
        e = await submit_repo(client, pool.repo, "count", pool="a100")
        e = await wait_for_status(client, e.id, {"started"})
        assert await first_line(client, e.id, "n=199") == "n=199"
        host = pool.hosts[e.host or ""]
        host.kill()  # the machine drops off the network
        lost = await wait_for_host(client, host.name, {"unreachable"})
        assert lost["error"]
        assert (await client.get(e.id)).status == "started"  # reversible: not an error
        container = container_label(e.id, pool.daemon.daemon_id, "runyard.execution")
        assert container == str(e.id)
        pool.release(e)  # it goes on printing while nobody is listening, and ends
        subprocess.run(["docker", "wait", f"runyard-{pool.daemon.daemon_id}-{e.id}"], check=True,
                       capture_output=True, timeout=120)
        host.start()
        await wait_for_host(client, host.name, {"ready"})
        done = await wait_for_status(client, e.id)
        assert done.status == "complete", done
        out = run_cli(pool.daemon, "logs", str(e.id), "--stream", "stdout").stdout.splitlines()
        assert out == [f"n={i}" for i in range(400)]
        notes = run_cli(pool.daemon, "logs", str(e.id)).stdout
        assert f"lost contact with host {host.name}" in notes
    finally:
        await client.close()


async def test_unknown_host_key_is_refused(tmp_path: Path, daemon_factory: type[Daemon]) -> None:
    key = make_client_key(tmp_path)
    stranger = SshHost("stranger", tmp_path / "stranger", key, None)
    stranger.prepare()
    stranger.start()
    other = SshHost("other", tmp_path / "other", key, None)
    other.prepare()  # a different key recorded for the same address: as after a machine swap or an attack
    known = tmp_path / "known_hosts"
    known.write_text(other.known_hosts_line().replace(str(other.port), str(stranger.port)))
    daemon = daemon_factory(local_extra="enabled = false", extra_config=textwrap.dedent(f"""\
        [ssh]
        known_hosts = "{known}"
        reconnect_min_seconds = 0.2
        reconnect_max_seconds = 1.0
        """) + stranger.config(pool="default")
        # the same machine again, under another name, with a Docker socket that is not there
        + stranger.config(pool="default").replace('name = "stranger"', 'name = "no-docker"')
        + 'docker_socket = "/nonexistent/docker.sock"\n')
    daemon.start()
    client = await Client.connect(daemon.socket, client_name="tests")
    try:
        state = await wait_for_host(client, "stranger", {"unreachable"})
        assert "host key not verified" in str(state["error"])
        doctor = run_cli(daemon, "doctor", "stranger")
        assert doctor.returncode == 1
        assert "FAIL  connection:" in doctor.stdout and "host key not verified" in doctor.stdout
        # known_hosts fixed: it connects on the next try, no restart needed
        known.write_text(stranger.known_hosts_line())
        await wait_for_host(client, "stranger", {"ready"})
        doctor = run_cli(daemon, "doctor", "stranger", "--json")
        checks = {c["name"]: c for c in json.loads(doctor.stdout)}
        assert checks["connection"]["ok"] and checks["runtime"]["ok"]
        assert "not installed" in checks["nvidia-smi"]["detail"]
        broken = await wait_for_host(client, "no-docker", {"unreachable"})
        assert "Docker engine at /nonexistent/docker.sock on no-docker is not reachable" in str(broken["error"])
    finally:
        await client.close()
        stranger.kill()


@pytest.fixture
def process_pool(tmp_path: Path, daemon_factory: type[Daemon]) -> Iterator[Pool]:
    yield from make_pool(tmp_path, daemon_factory, host_c='runtime = "process"')


async def test_process_runtime_runs_stops_and_survives_a_daemon_restart(process_pool: Pool) -> None:
    pool = process_pool
    client = await connect(pool)
    try:
        e = await submit_repo(client, pool.repo, "proc", pool="cpu")
        done = await wait_for_status(client, e.id)
        assert done.status == "complete" and done.host == "cpu-c", done
        log = run_cli(pool.daemon, "logs", str(e.id)).stdout
        remote_dir = pool.hosts["cpu-c"].root / "work" / pool.daemon.daemon_id / str(e.id)
        assert f"outputs in {remote_dir.resolve()}/outputs" in log and "to stderr" in log
        assert [o.path for o in await client.outputs(e.id)] == ["result.txt"]
        assert (await client.metadata(e.id))[0].values["loss"] == 0.25

        held = await wait_for_status(client, (await submit_repo(client, pool.repo, "hold", pool="cpu", gpus=0)).id,
                                     {"started"})
        assert await first_line(client, held.id, "visible=") == "visible=void cuda="
        assert run_cli(pool.daemon, "stop", str(held.id)).returncode == 0
        assert (await wait_for_status(client, held.id)).status == "stopped"

        # A plain process may write to its inputs: it gets a copy, never the host's cached file
        data = pool.repo.parent / "data.csv"
        data.write_text("pristine\n")
        for _ in range(2):
            e = await submit_repo(client, pool.repo, "scribble-input", pool="cpu", inputs={"data": [str(data)]})
            assert (await wait_for_status(client, e.id)).status == "complete"
            printed = run_cli(pool.daemon, "logs", str(e.id), "--stream", "stdout").stdout.splitlines()
            assert printed == ["pristine"]

        counted = await submit_repo(client, pool.repo, "count", pool="cpu")
        counted = await wait_for_status(client, counted.id, {"started"})
        assert await first_line(client, counted.id, "n=199") == "n=199"
    finally:
        await client.close()
    pool.daemon.kill9()  # the process is detached: it neither notices nor dies
    pool.release(counted)
    pool.daemon.start()
    client = await Client.connect(pool.daemon.socket, client_name="tests")
    try:
        done = await wait_for_status(client, counted.id)
        assert done.status == "complete", done
        out = run_cli(pool.daemon, "logs", str(counted.id), "--stream", "stdout").stdout.splitlines()
        assert out == [f"n={i}" for i in range(400)]
    finally:
        await client.close()


async def test_local_process_runtime_needs_no_docker(daemon_factory: type[Daemon], tmp_path: Path) -> None:
    daemon = daemon_factory(local_extra='runtime = "process"')
    daemon.start()
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": STEPS, "proc.py": PROC})
    result = run_cli(daemon, "run", "proc", "--watch", cwd=repo)
    assert result.returncode == 0, result.stderr
    assert "to stderr" in result.stdout and "complete" in result.stderr
    hosts = json.loads(run_cli(daemon, "hosts", "--json").stdout)
    assert hosts[0]["name"] == "local" and hosts[0]["runtime"] == "process"


async def test_gpu_grants_survive_a_daemon_kill(pool: Pool) -> None:
    client = await connect(pool)
    try:
        big = await wait_for_status(client, (await submit_repo(client, pool.repo, "hold", gpus=4)).id, {"started"})
        assert big.host == "gpu-a"
    finally:
        await client.close()
    pool.daemon.kill9()
    pool.daemon.start()
    client = await connect(pool)
    try:
        holders = {g.uuid: g.execution for h in await client.hosts() if h.name == "gpu-a" for g in h.gpus}
        assert holders == {g: big.id for g in big.gpus}
        small = await wait_for_status(client, (await submit_repo(client, pool.repo, "hold", gpus=1)).id,
                                      {"started"})
        assert small.host == "gpu-b"  # gpu-a's GPUs are still held after the restart
        for e in (big, small):
            pool.release(e)
        for e in (big, small):
            assert (await wait_for_status(client, e.id)).status == "complete"
    finally:
        await client.close()


async def test_keys_from_ssh_agent(tmp_path: Path, daemon_factory: type[Daemon],
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    host, key, known = start_lone_host(tmp_path, "agent-host")
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.PIPE)
    try:
        assert agent.stdout is not None
        assert b"SSH_AUTH_SOCK" in agent.stdout.readline()  # it says so once it listens
        subprocess.run(["ssh-add", "-q", str(key)], env={"SSH_AUTH_SOCK": str(sock)}, check=True)
        monkeypatch.setenv("SSH_AUTH_SOCK", str(sock))
        config = host.config(pool="default").replace(f'identity = "{key}"\n', "")
        assert "identity" not in config
        daemon = daemon_factory(local_extra="enabled = false",
                                extra_config=f'[ssh]\nknown_hosts = "{known}"\n' + config)
        daemon.start()
        client = await Client.connect(daemon.socket, client_name="tests")
        try:
            await wait_for_host(client, "agent-host", {"ready"})
        finally:
            await client.close()
    finally:
        agent.kill()
        agent.wait()
        host.kill()



async def test_an_input_reaches_each_host_once(pool: Pool, tmp_path: Path) -> None:
    data = tmp_path / "data.csv"
    data.write_text("x,y\n1,2\n")
    client = await connect(pool)
    try:
        inodes = []
        for _ in range(2):
            e = await submit_repo(client, pool.repo, "read-input", pool="cpu", inputs={"data": [str(data)]})
            done = await wait_for_status(client, e.id)
            assert done.status == "complete" and done.host == "cpu-c", done
            assert "x,y" in run_cli(pool.daemon, "logs", str(e.id)).stdout
            cache = pool.hosts["cpu-c"].root / "work" / pool.daemon.daemon_id / ".inputs"
            (cached,) = list(cache.iterdir())  # one file, named by its content's SHA-256
            inodes.append(cached.stat().st_ino)
        assert inodes[0] == inodes[1]  # the second run linked the copy already on the host
    finally:
        await client.close()


@pytest.fixture
def tiny_cache_pool(tmp_path: Path, daemon_factory: type[Daemon]) -> Iterator[Pool]:
    yield from make_pool(tmp_path, daemon_factory, more="[cache]\nhost_inputs_max_mb = 0\n")


async def test_a_hosts_input_cache_is_bounded(tiny_cache_pool: Pool, tmp_path: Path) -> None:
    pool = tiny_cache_pool
    client = await connect(pool)
    try:
        cache = pool.hosts["cpu-c"].root / "work" / pool.daemon.daemon_id / ".inputs"
        for text in ("first\n", "second\n"):
            data = tmp_path / "data.csv"
            data.write_text(text)
            e = await submit_repo(client, pool.repo, "read-input", pool="cpu", inputs={"data": [str(data)]})
            assert (await wait_for_status(client, e.id)).status == "complete"
            assert text.strip() in run_cli(pool.daemon, "logs", str(e.id)).stdout
        # Over the bound, the least recently used copy went; the one just used stays
        (kept,) = list(cache.iterdir())
        assert kept.read_text() == "second\n"
    finally:
        await client.close()
