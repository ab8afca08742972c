"""A Slurm cluster as a pool: a real single-node cluster (munge, slurmctld, slurmd, two fake GPUs, made
by scripts/lib.sh's ensure_slurm), its login node reached over a real sshd on loopback."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import subprocess
import textwrap
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from textual.widgets import DataTable, Static

from runyard.protocol import Client
from runyard.protocol.methods import ExecutionView
from runyard.tui.app import RunyardApp

from .conftest import BASE_IMAGE, Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status
from .pool import SshHost, make_client_key, wait_for_host
from .test_tui import until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent
RELEASE = 'while [ ! -e "$VH_OUTPUTS_DIR/go" ]; do sleep 0.05; done'

STEPS = (
    step_yaml("anywhere", "echo here")  # no environment: any host of runyard's own
    +
    step_yaml("train", ['echo "gpus=$CUDA_VISIBLE_DEVICES"', "python3 train.py", 'echo "to stderr" >&2',
                        'cat "$VH_INPUTS_DIR/data/data.csv"'], extra="""\
              environment: hpc
              resources:
                devices:
                  nvidia.com/gpu: 1
              inputs:
                - name: data
              """)
    + step_yaml("hold", ['echo "held gpus=$CUDA_VISIBLE_DEVICES"', RELEASE, "echo released"], extra="""\
              environment: hpc
              resources:
                devices:
                  nvidia.com/gpu: 2
              """)
    + "".join(step_yaml(name, ['echo "held gpus=$CUDA_VISIBLE_DEVICES"', RELEASE, "echo released"], extra=f"""\
              environment: {pool}
              resources:
                devices:
                  nvidia.com/gpu: 1
              """) for name, pool in (("one", "hpc"), ("one-b", "hpc-b")))
    + step_yaml("hog", ["echo hogging", "python3 -c 'x = b\"x\" * (400 << 20)'"], extra="""\
              environment: hpc
              resources:
                memory:
                  min: 100
              """)
    + step_yaml("overrun", ["echo overrunning", "sleep 300"], extra="environment: hpc-short")
    + step_yaml("mark", "echo marked", extra="environment: hpc")
    + step_yaml("mark-b", "echo marked", extra="environment: hpc-b")
    + step_yaml("fail", ["echo failing", "exit 3"], extra="environment: hpc")
    + step_yaml("sleepy", ["echo sleeping", "sleep 300"], extra="environment: hpc")
    + step_yaml("trapper", "python3 trapper.py", extra="environment: hpc")
    + step_yaml("boxed", ["head -n 1 /etc/os-release", "command -v sbatch || echo no sbatch in here",
                          "cat /valohai/inputs/data/data.csv", "echo inside > /valohai/outputs/where.txt"],
                extra="""\
              environment: hpc-oci
              inputs:
                - name: data
              """)
    + step_yaml("sweep", "echo {parameters}", parameters="""\
        - name: x
          type: integer
          default: 0
        """, extra="environment: hpc")
)

# Saves its work on TERM and exits cleanly, as a training script does.
TRAPPER = """\
import os, signal, sys, time
def term(*_):
    print("got SIGTERM", flush=True)
    sys.exit(0)
signal.signal(signal.SIGTERM, term)
print("ready gpus=" + repr(os.environ.get("CUDA_VISIBLE_DEVICES")), flush=True)
while True:
    time.sleep(0.1)
"""

TRAIN = """\
import json, os
for step in range(3):
    print(json.dumps({"step": step, "loss": 1.0 / (step + 1)}), flush=True)
with open(os.path.join(os.environ["VH_OUTPUTS_DIR"], "model.txt"), "w") as fh:
    fh.write("weights")
"""


@pytest.fixture(scope="session")
def slurm_cluster() -> None:
    """The real cluster: started by the project's own script (a no-op when it already runs)."""
    result = subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib.sh; ensure_slurm"],
                            capture_output=True, text=True, timeout=270)
    if result.returncode != 0:
        pytest.fail(f"ensure_slurm failed:\n{result.stdout}\n{result.stderr}")


@dataclass
class Cluster:
    daemon: Daemon
    login: SshHost
    repo: Path
    data: Path
    overrun: int  # an execution submitted first: Slurm ends it at its one-minute limit, while the rest run

    def work(self, e: ExecutionView) -> Path:
        # Each cluster pool has a directory of its own under the daemon's.
        return self.login.root / "work" / self.daemon.daemon_id / (e.host or "hpc") / str(e.id)

    def release(self, e: ExecutionView) -> None:
        (self.work(e) / "outputs" / "go").touch()


def cluster_config(login: SshHost, known: Path, extra: str = "") -> str:
    return textwrap.dedent(f"""\
        [ssh]
        known_hosts = "{known}"
        reconnect_min_seconds = 0.2
        reconnect_max_seconds = 1.0
        [[clusters]]
        name = "hpc"
        address = "127.0.0.1"
        port = {login.port}
        user = "root"
        identity = "{login.client_key}"
        work_dir = "{login.root / 'work'}"
        partition = "gpu"
        max_jobs = 3
        poll_seconds = 0.3
        """) + extra


@pytest.fixture(scope="module")
def cluster(slurm_cluster: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("slurm")
    cancel_jobs("runyard-")
    key = make_client_key(tmp)
    login = SshHost("login", tmp / "login", key, None)
    login.prepare()
    # As the README asks of a login node: each followed job holds two sessions on runyard's one
    # connection, more than sshd's default of 10 allow.
    with (login.root / "sshd_config").open("a") as config:
        config.write("MaxSessions 64\n")
    login.start()
    known = tmp / "known_hosts"
    known.write_text(login.known_hosts_line())
    import tempfile
    # More pools on the same controller, login node and work_dir, as partitions of one cluster: hpc-b,
    # and hpc-short, whose jobs Slurm ends after a minute (a partition's time limit).
    pool = cluster_config(login, known).split("[[clusters]]")[1]
    more = "".join("[[clusters]]" + pool.replace('name = "hpc"', f'name = "{name}"') + extra
                   for name, extra in (("hpc-b", ""), ("hpc-short", 'sbatch_args = ["--time=1"]\n')))
    daemon = Daemon(root=Path(tempfile.mkdtemp(prefix="ry-", dir="/tmp")), stop_grace=2,
                    local_extra="enabled = false", extra_config=cluster_config(login, known) + more)
    daemon.start()
    data = tmp / "data.csv"
    data.write_text("a,b\n1,2\n")
    repo = make_repo(tmp / "repo", {"valohai.yaml": STEPS, "train.py": TRAIN, "trapper.py": TRAPPER})
    # Submitted before every other test, so the minute and a half Slurm takes to end it passes while they run.
    overrun = run_cli(daemon, "run", "overrun", "--json", cwd=repo)
    assert overrun.returncode == 0, overrun.stderr
    try:
        yield Cluster(daemon, login, repo, data, json.loads(overrun.stdout)["id"])
    finally:
        if daemon.process is not None and daemon.process.poll() is None:
            daemon.process.kill()
            daemon.process.wait()
        cancel_jobs(f"runyard-{daemon.daemon_id}-")
        login.kill()
        shutil.copy(daemon.root / "daemon.log", tmp / "daemon.log")  # kept with pytest's temporary files
        shutil.rmtree(daemon.root, ignore_errors=True)


def cancel_jobs(prefix: str) -> None:
    """Jobs left by a test that failed half way would hold the cluster's GPUs for the next. Only those
    whose directory is gone (their run is over) when the prefix is everyone's: the cluster is shared
    with other test runs on this machine."""
    out = subprocess.run(["squeue", "--me", "-h", "-o", "%i|%j|%Z"], capture_output=True, text=True).stdout
    jobs = [line.split("|") for line in out.splitlines() if line.count("|") == 2]
    ids = [i for i, name, workdir in jobs if name.startswith(prefix)
           and (prefix != "runyard-" or not Path(workdir).exists())]
    if ids:
        subprocess.run(["scancel", *ids], capture_output=True)


@pytest.fixture
async def client(cluster: Cluster) -> AsyncIterator[Client]:
    c = await Client.connect(cluster.daemon.socket, client_name="tests")
    await wait_for_host(c, "hpc", {"ready"})
    try:
        yield c
    finally:
        await c.close()


async def first_line(client: Client, execution_id: int, prefix: str) -> str:
    async for block in client.follow_logs(execution_id, 0):
        for line in block.data.splitlines():
            text = line.split(" ", 2)[2] if line.count(" ") >= 2 else line
            if text.startswith(prefix):
                return text
    raise AssertionError(f"execution {execution_id} never printed {prefix!r}")


def job_of(cluster: Cluster, e: ExecutionView) -> str:
    return (cluster.work(e) / ".runyard" / "job_id").read_text().strip()


async def wait_reason(client: Client, execution_id: int, prefix: str, timeout: float = 60) -> str:
    async def wait() -> str:
        async for _ in client.events(since=0):
            reason = (await client.get(execution_id)).reason or ""
            if reason.startswith(prefix):
                return reason
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(wait(), timeout)


async def test_a_job_runs_with_logs_metadata_inputs_outputs_and_its_gpu(cluster: Cluster, client: Client) -> None:
    e = await submit_repo(client, cluster.repo, "train", inputs={"data": [str(cluster.data)]})
    done = await wait_for_status(client, e.id)
    assert done.status == "complete" and done.host == "hpc", done
    out = run_cli(cluster.daemon, "logs", str(e.id), "--stream", "stdout").stdout.splitlines()
    assert out[0] in ("gpus=0", "gpus=1") and out[-2:] == ["a,b", "1,2"], out
    assert "to stderr" in run_cli(cluster.daemon, "logs", str(e.id), "--stream", "stderr").stdout
    # The GPU Slurm granted is recorded with the execution.
    assert done.gpus == [f"{os.uname().nodename.split('.')[0]}:{out[0][-1]}"], done.gpus
    assert [o.path for o in await client.outputs(e.id)] == ["model.txt"]
    assert [p.values["loss"] for p in await client.metadata(e.id)] == [1.0, 0.5, 1.0 / 3]
    # info and --json name its Slurm job and its whole directory.
    job = subprocess.run(["squeue", "--me", "-h", "-t", "all", "-n", f"runyard-{cluster.daemon.daemon_id}-hpc-{e.id}-0",
                          "-o", "%i"], capture_output=True, text=True).stdout.strip()
    info = run_cli(cluster.daemon, "info", str(e.id)).stdout
    assert f"container:      Slurm job {job} in {cluster.work(e)}\n" in info, info
    view = json.loads(run_cli(cluster.daemon, "info", str(e.id), "--json").stdout)
    assert (view["cluster_job"], view["container_id"]) == (job, f"slurm:{cluster.work(e)}"), view

    failed = await wait_for_status(client, (await submit_repo(client, cluster.repo, "fail")).id)
    assert (failed.status, failed.reason) == ("error", "exit-code 3"), failed


async def test_a_step_runs_in_an_oci_bundle_of_its_image_with_its_workspace_at_valohai(cluster: Cluster,
                                                                                     client: Client) -> None:
    # A daemon of its own, whose cluster pool runs every step in a bundle.
    bundle = "/var/lib/runyard-slurm/bundles/base"
    made = subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib.sh; ensure_oci_bundle {BASE_IMAGE} {bundle}"],
                          capture_output=True, text=True, timeout=270)
    assert made.returncode == 0, made.stderr
    known = cluster.login.root / "known_hosts_oci"
    known.write_text(cluster.login.known_hosts_line())
    config = cluster_config(cluster.login, known).replace('name = "hpc"', 'name = "hpc-oci"').replace(
        f'work_dir = "{cluster.login.root / "work"}"', f'work_dir = "{cluster.login.root / "work-oci"}"')
    config += f'container = "oci"\noci_bundles = {{ "{BASE_IMAGE}" = "{bundle}" }}\n'
    import tempfile
    daemon = Daemon(root=Path(tempfile.mkdtemp(prefix="ry-", dir="/tmp")), stop_grace=2,
                    local_extra="enabled = false", extra_config=config)
    daemon.start()
    c = await Client.connect(daemon.socket, client_name="tests")
    try:
        await wait_for_host(c, "hpc-oci", {"ready"})
        e = await submit_repo(c, cluster.repo, "boxed", inputs={"data": [str(cluster.data)]})
        done = await wait_for_status(c, e.id)
        out = run_cli(daemon, "logs", str(e.id), "--stream", "stdout").stdout.splitlines()
        err = run_cli(daemon, "logs", str(e.id), "--stream", "stderr").stdout
        assert (done.status, done.host) == ("complete", "hpc-oci"), (done.reason, out, err)
        # The image's file system (the login node has sbatch; the image does not), the inputs at /valohai.
        assert out == ['PRETTY_NAME="Debian GNU/Linux 12 (bookworm)"', "no sbatch in here", "a,b", "1,2"], out
        assert [o.path for o in await c.outputs(e.id)] == ["where.txt"]
    finally:
        await c.close()
        assert daemon.process is not None
        daemon.process.kill()
        daemon.process.wait()
        cancel_jobs(f"runyard-{daemon.daemon_id}-")
        shutil.rmtree(daemon.root, ignore_errors=True)


async def test_gpus_are_never_shared_pending_reason_stop_and_cancel_from_outside(cluster: Cluster,
                                                                               client: Client) -> None:
    first = await wait_for_status(client, (await submit_repo(client, cluster.repo, "hold")).id, {"started"})
    assert await first_line(client, first.id, "held") == "held gpus=0,1"
    second = await submit_repo(client, cluster.repo, "hold")
    # Both GPUs are the first's: Slurm keeps the second pending, and says why.
    assert await wait_reason(client, second.id, "slurm: Resources") == "slurm: Resources"
    assert (await client.get(second.id)).status == "queued"
    info = run_cli(cluster.daemon, "info", str(second.id)).stdout
    assert "slurm: Resources" in info, info

    assert run_cli(cluster.daemon, "stop", str(first.id)).returncode == 0
    stopped = await wait_for_status(client, first.id)
    assert stopped.status == "stopped", stopped
    second = await wait_for_status(client, second.id, {"started"})
    assert await first_line(client, second.id, "held") == "held gpus=0,1"

    # Someone cancels the job behind runyard's back: an error that says so.
    subprocess.run(["scancel", job_of(cluster, second)], check=True)
    cancelled = await wait_for_status(client, second.id)
    assert (cancelled.status, cancelled.reason) == ("error", "cancelled-outside-runyard"), cancelled


SLOW_SBATCH = """\
#!/bin/sh
# sbatch on the login node, which (while HOLD exists) submits, then stalls before it answers: the
# daemon is killed in that moment, between the job existing and runyard hearing its id.
# Once the daemon is dead (KILLED), the submit's whole process group goes too, so the id is never
# recorded by the submit command left behind: only adoption by name can find the job.
out=$(/usr/bin/sbatch "$@"); s=$?
dir=$(dirname "$0")
if [ -e "$dir/HOLD" ]; then
    echo submitted > "$dir/SUBMITTED"
    # (or the test is over: HOLD gone, so a KILLED it removed at once can never leave this looping)
    while [ ! -e "$dir/KILLED" ] && [ -e "$dir/HOLD" ]; do sleep 0.05; done
    kill -KILL 0
fi
echo "$out"
exit $s
"""


async def test_a_step_over_its_memory_is_oom_killed(cluster: Cluster, client: Client) -> None:
    plugins = subprocess.run(["scontrol", "show", "config"], capture_output=True, text=True).stdout
    if "task/cgroup" not in plugins:
        pytest.skip("the test cluster limits no job's memory: ensure_slurm found no writable cgroup v1 memory "
                    "controller, so it runs Slurm without task/cgroup")
    done = await wait_for_status(client, (await submit_repo(client, cluster.repo, "hog")).id)
    assert (done.status, done.reason) == ("error", "oom-killed"), done
    # What Slurm said of it reaches the log too.
    assert "Out Of Memory" in run_cli(cluster.daemon, "logs", str(done.id), "--stream", "stderr").stdout


async def test_a_daemon_killed_during_a_submit_and_while_a_job_runs_adopts_both(cluster: Cluster,
                                                                              client: Client) -> None:
    held = await wait_for_status(client, (await submit_repo(client, cluster.repo, "hold")).id, {"started"})
    bin_dir = cluster.login.root / "bin"
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(SLOW_SBATCH)
    sbatch.chmod(0o755)
    (bin_dir / "HOLD").touch()
    os.mkfifo(bin_dir / "SUBMITTED")  # the stalled sbatch says so through it: an event, not a poll
    try:
        waiting = await submit_repo(client, cluster.repo, "hold")
        said = await asyncio.wait_for(asyncio.to_thread((bin_dir / "SUBMITTED").read_text), 60)
        assert said == "submitted\n"
        await client.close()
        cluster.daemon.kill9()
        (bin_dir / "KILLED").touch()
        assert not (cluster.work(waiting) / ".runyard" / "job_id").exists()
    finally:
        for name in ("HOLD", "SUBMITTED", "sbatch", "KILLED"):
            (bin_dir / name).unlink(missing_ok=True)
    cluster.release(held)
    cluster.daemon.start()
    c = await Client.connect(cluster.daemon.socket, client_name="tests")
    try:
        done = await wait_for_status(c, held.id)
        assert done.status == "complete", done
        assert run_cli(cluster.daemon, "logs", str(held.id), "--stream", "stdout").stdout.splitlines() == [
            "held gpus=0,1", "released"]
        second = await wait_for_status(c, waiting.id, {"started"})
        cluster.release(second)
        assert (await wait_for_status(c, waiting.id)).status == "complete"
        # The job whose submit the kill cut off was adopted by its name, not submitted again.
        names = subprocess.run(["squeue", "--me", "-h", "-t", "all", "-o", "%j"], capture_output=True,
                               text=True).stdout.split()
        assert names.count(f"runyard-{cluster.daemon.daemon_id}-hpc-{waiting.id}-0") == 1, names
    finally:
        await c.close()


async def wait_placed(client: Client, execution_id: int, timeout: float = 60) -> ExecutionView:
    async def wait() -> ExecutionView:
        async for _ in client.events(since=0):
            view = await client.get(execution_id)
            if view.host is not None:
                return view
        raise AssertionError("event stream ended")

    return await asyncio.wait_for(wait(), timeout)


async def test_two_cluster_pools_on_one_controller_keep_their_own_jobs_through_a_restart(cluster: Cluster,
                                                                                       client: Client) -> None:
    # "hpc" and "hpc-b": two pools of one daemon on one controller and one work_dir.
    a, b = [await submit_repo(client, cluster.repo, step) for step in ("one", "one-b")]
    a, b = [await wait_for_status(client, e.id, {"started"}) for e in (a, b)]
    assert (a.host, b.host) == ("hpc", "hpc-b")
    jobs = {a.id: job_of(cluster, a), b.id: job_of(cluster, b)}
    await client.close()
    cluster.daemon.kill9()
    cluster.daemon.start()
    c = await Client.connect(cluster.daemon.socket, client_name="tests")
    try:
        # A pool takes new work once it has reconciled what it holds: from then on, each pool has
        # had its chance to take the other's job (or its attempt's directory) for a stray of its own.
        marks = [await submit_repo(c, cluster.repo, step) for step in ("mark", "mark-b")]
        assert [(await wait_placed(c, m.id)).host for m in marks] == ["hpc", "hpc-b"]
        for e in (a, b):
            cluster.release(e)
        for e in (a, b):
            done = await wait_for_status(c, e.id)
            out = run_cli(cluster.daemon, "logs", str(e.id), "--stream", "stdout").stdout.splitlines()
            assert (done.status, done.reason, done.host, out[1:]) == ("complete", None, e.host, ["released"]), (
                done, out)
        assert [(await wait_for_status(c, m.id)).status for m in marks] == ["complete", "complete"]
        # Each its own job, adopted, not submitted again.
        out = subprocess.run(["squeue", "--me", "-h", "-t", "all", "-o", "%j %i %T"], capture_output=True,
                             text=True).stdout.splitlines()
        for e in (a, b):
            name = f"runyard-{cluster.daemon.daemon_id}-{e.host}-{e.id}-0"
            assert [line for line in out if line.startswith(f"{name} ")] == [f"{name} {jobs[e.id]} COMPLETED"], out
    finally:
        await c.close()


EARLY_SBATCH = """\
#!/bin/sh
# sbatch on the login node, which (while HOLD exists) stalls before it submits: the daemon is killed
# in that moment, with the attempt's files and job name written and no job made. Once the daemon is
# dead (KILLED), the submit's whole process group goes too, so no job of that name ever exists.
dir=$(dirname "$0")
if [ -e "$dir/HOLD" ]; then
    echo stalled > "$dir/SUBMITTED"
    # (or the test is over: HOLD gone, so a KILLED it removed at once can never leave this looping)
    while [ ! -e "$dir/KILLED" ] && [ -e "$dir/HOLD" ]; do sleep 0.05; done
    kill -KILL 0
fi
exec /usr/bin/sbatch "$@"
"""


async def test_a_daemon_killed_before_its_submit_reached_slurm_submits_it_once(cluster: Cluster,
                                                                               client: Client) -> None:
    bin_dir = cluster.login.root / "bin"
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(EARLY_SBATCH)
    sbatch.chmod(0o755)
    (bin_dir / "HOLD").touch()
    os.mkfifo(bin_dir / "SUBMITTED")
    try:
        e = await submit_repo(client, cluster.repo, "sweep")
        said = await asyncio.wait_for(asyncio.to_thread((bin_dir / "SUBMITTED").read_text), 60)
        assert said == "stalled\n"
        await client.close()
        cluster.daemon.kill9()
        (bin_dir / "KILLED").touch()
    finally:
        for name in ("HOLD", "SUBMITTED", "sbatch", "KILLED"):
            (bin_dir / name).unlink(missing_ok=True)
    cluster.daemon.start()
    c = await Client.connect(cluster.daemon.socket, client_name="tests")
    try:
        done = await wait_for_status(c, e.id)
        log = run_cli(cluster.daemon, "logs", str(e.id)).stdout
        assert (done.status, log) == ("complete", "--x=0\n"), (done, log)
        names = subprocess.run(["squeue", "--me", "-h", "-t", "all", "-o", "%j"], capture_output=True,
                               text=True).stdout.split()
        assert names.count(f"runyard-{cluster.daemon.daemon_id}-{done.host}-{e.id}-0") == 1, names
    finally:
        await c.close()


def _gone(pid: int) -> None:
    while Path(f"/proc/{pid}").exists():
        time.sleep(0.05)


async def test_a_restarted_controller_loses_nothing(cluster: Cluster, client: Client) -> None:
    held = await wait_for_status(client, (await submit_repo(client, cluster.repo, "hold")).id, {"started"})
    # Stopped as an operator's restart does (SIGTERM: it saves its state); a SIGKILL can lose the last
    # job ids it handed out and drain the node on restart ("Duplicate jobid"), which is Slurm's to fix.
    pid = int(Path("/var/lib/runyard-slurm/slurmctld.pid").read_text())
    os.kill(pid, signal.SIGTERM)
    await asyncio.wait_for(asyncio.to_thread(_gone, pid), 30)
    restart = subprocess.run(["bash", "-c", f"source {ROOT}/scripts/lib.sh; ensure_slurm"], capture_output=True,
                             text=True, timeout=120)
    assert restart.returncode == 0, restart.stderr
    # Released once the controller is back: a job that ends while it is away is only known to have
    # ended when slurmd retries (a minute later), which is Slurm's pace, not runyard's.
    assert (await client.get(held.id)).status == "started"
    cluster.release(held)
    done = await wait_for_status(client, held.id)
    assert done.status == "complete", done


async def test_hosts_and_doctor_show_the_cluster(cluster: Cluster, client: Client) -> None:
    held = await wait_for_status(client, (await submit_repo(client, cluster.repo, "hold")).id, {"started"})
    try:
        assert run_cli(cluster.daemon, "hosts", "scan", "hpc").returncode == 0  # a fresh sinfo
        text = run_cli(cluster.daemon, "hosts").stdout
        assert f"hpc  ready  pool hpc  slurm  127.0.0.1  executions {held.id}\n" in text, text
        assert "partition gpu  nodes 1 mix  GPUs 2/2 allocated  jobs 1 running, 0 pending" in text, text
        view = json.loads(run_cli(cluster.daemon, "hosts", "--json").stdout)[0]
        assert view["cluster"]["gpus_allocated"] == 2 and view["executions"] == [held.id], view
        # The TUI's hosts screen shows the same: no GPU free of 2, Slurm's figures, not "0/0 ? ?".
        app = RunyardApp(cluster.daemon.socket)
        async with app.run_test(size=(120, 36)) as pilot:
            await pilot.press("2")
            table = app.screen.query_one("#hosts-table", DataTable)

            def row() -> list[str]:
                return [str(cell) for cell in table.get_row("hpc")] if "hpc" in table.rows else []

            await until(pilot, lambda: row()[:4] == ["hpc", "ready", "hpc", "0/2"], "the cluster's row")
            assert row()[4:6] == ["Slurm", "Slurm"], row()
            summary = str(app.screen.query_one("#host-summary", Static).render())
            assert "partition gpu · nodes 1 mix · GPUs 2/2 allocated · jobs 1 running, 0 pending" in summary, summary
    finally:
        cluster.release(held)
    doctor = run_cli(cluster.daemon, "doctor", "hpc", "--json")
    checks = {c["name"]: c for c in json.loads(doctor.stdout)}
    assert doctor.returncode == 0 and all(c["ok"] for c in checks.values()), checks
    assert list(checks) == ["connection", "sbatch", "partition", "shared work directory", "container",
                            "disk space", "file transfer (sftp)"]
    assert (await wait_for_status(client, held.id)).status == "complete"


async def test_a_task_of_20_children_runs_each_once_within_the_job_cap(cluster: Cluster, client: Client) -> None:
    values = ",".join(str(x) for x in range(1, 21))
    made = run_cli(cluster.daemon, "task", "run", "sweep", "--grid", f"x={values}", "--json", cwd=cluster.repo)
    assert made.returncode == 0, made.stdout + made.stderr
    task_id = json.loads(made.stdout)["id"]

    async def until_done() -> list[ExecutionView]:
        children = set((await client.call("tasks.get", {"id": task_id}))["execution_ids"])
        assert len(children) == 20
        most = 0
        async for event in client.events(since=0):
            if event.execution_id not in children and event.task != task_id:  # type: ignore[union-attr]
                continue
            views = [v for v in await client.list_executions(limit=200) if v.id in children]
            # Handed to Slurm and not yet ended: never more than the cluster's max_jobs (3).
            outstanding = sum(1 for v in views if v.host is not None and v.status in ("queued", "started", "stopping"))
            assert outstanding <= 3, [(v.id, v.status, v.host) for v in views]
            most = max(most, outstanding)
            if len(views) == 20 and all(v.status in ("complete", "error", "stopped") for v in views):
                assert most == 3, most  # the cap was reached, so it was the cap that held
                return views
        raise AssertionError("event stream ended")

    views = await asyncio.wait_for(until_done(), 180)
    assert {v.status for v in views} == {"complete"}, [(v.id, v.status, v.reason) for v in views]
    printed = sorted(run_cli(cluster.daemon, "logs", str(v.id), "--stream", "stdout").stdout.strip() for v in views)
    assert printed == sorted(f"--x={x}" for x in range(1, 21)), printed
    # Each child was one Slurm job: submitted once, never twice.
    names = subprocess.run(["squeue", "--me", "-h", "-t", "all", "-o", "%j"], capture_output=True,
                           text=True).stdout.split()
    assert all(names.count(f"runyard-{cluster.daemon.daemon_id}-hpc-{v.id}-0") == 1 for v in views), names


def test_work_of_no_pool_is_never_sent_to_a_cluster(cluster: Cluster) -> None:
    # The module's daemon has only cluster pools: a run naming none is refused, not queued forever.
    refused = run_cli(cluster.daemon, "run", "anywhere", cwd=cluster.repo)
    assert refused.returncode == 2 and "every pool is a Slurm cluster: name one with --pool" in refused.stderr, refused
    assert run_cli(cluster.daemon, "run", "anywhere", "--pool", "hpc", cwd=cluster.repo).returncode == 0


async def test_a_stop_delivers_sigterm_to_the_command_and_says_so_in_its_log(cluster: Cluster,
                                                                          client: Client) -> None:
    e = await wait_for_status(client, (await submit_repo(client, cluster.repo, "trapper")).id, {"started"})
    # Without GPUs, set and empty, as in a Docker container.
    assert await first_line(client, e.id, "ready") == "ready gpus=''"
    assert run_cli(cluster.daemon, "stop", str(e.id)).returncode == 0
    done = await wait_for_status(client, e.id)
    log = run_cli(cluster.daemon, "logs", str(e.id)).stdout
    # The command heard the TERM and ended on its own (not killed after the grace), and the log says
    # who stopped it, as on the other runtimes.
    assert "got SIGTERM" in log and "stop asked by" in log, log
    assert "*** JOB" not in log, log  # ended by itself, not cancelled after the grace
    assert done.status == "stopped", done


async def test_a_job_slurm_ends_at_its_time_limit_is_an_error_time_limit(cluster: Cluster, client: Client) -> None:
    # The step has no time-limit of its own: it was Slurm that ended it (TIMEOUT), at hpc-short's --time=1.
    # Last in this file: the module fixture submitted it first, so its minute ran meanwhile.
    done = await wait_for_status(client, cluster.overrun, timeout=180)
    assert (done.status, done.reason, done.host) == ("error", "time-limit", "hpc-short"), done
    assert run_cli(cluster.daemon, "logs", str(done.id), "--stream", "stdout").stdout == "overrunning\n"
    # The job completion file (squeue may have forgotten the job by now).
    states = subprocess.run(["sacct", "-c", "-n", "-P", "-o", "JobName,State"], capture_output=True,
                            text=True).stdout.splitlines()
    assert f"runyard-{cluster.daemon.daemon_id}-hpc-short-{done.id}-0|TIMEOUT" in states, states[-5:]
