"""kill -9 of the daemon at random instants during a workload of 30 executions over four hosts.

Executions are submitted, fetch an input over HTTP, run, print lines and metadata,
write outputs, and some are stopped, while the daemon is killed and restarted again
and again, hosts drop off the network and come back, and (while the daemon is down)
some running work vanishes from its host. Three hosts run containers, one runs plain
processes. Some executions print a `\r` progress bar longer than 16 KiB that stays
unterminated for most of their run. Afterwards every execution must be where it would
have been with no kill: the exact lines it printed, each metadata point and output once,
vanished work ended as container-removed, no GPU granted twice at the same time, and
(from Docker's own event stream) one container started per execution.
The seed is printed; RUNYARD_CHAOS_SEED replays a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import random
import sqlite3
import subprocess
import textwrap
import time
from collections import Counter
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest

from runyard.protocol import Client, ConnectionLost, RemoteError
from runyard.protocol.logformat import parse_records
from runyard.protocol.methods import ExecutionView

from .conftest import Daemon, make_repo, step_yaml
from .pool import SshHost, gpu_rows, start_hosts, wait_for_host
from .test_inputs import FileServer, http_files  # noqa: F401  (the fixture)

pytestmark = pytest.mark.slow

LINES = 40
WORK = textwrap.dedent(f"""\
    import hashlib, json, os, time
    eid = os.environ["VH_EXECUTION_ID"]
    path = os.path.join(os.environ["VH_INPUTS_DIR"], "data", "blob.bin")
    digest = hashlib.sha256(open(path, "rb").read()).hexdigest()[:12] if os.path.exists(path) else "none"
    print(f"start {{eid}} input {{digest}} gpus {{os.environ.get('CUDA_VISIBLE_DEVICES', '')}}", flush=True)
    for i in range({LINES}):
        print(f"n={{i}}", flush=True)
        if i % 10 == 0:
            print(json.dumps({{"step": i, "loss": 1 / (i + 1)}}), flush=True)
        time.sleep(0.04)
    for k in range(3):
        with open(os.path.join(os.environ["VH_OUTPUTS_DIR"], f"out-{{k}}.txt"), "w") as fh:
            fh.write(f"{{eid}} {{k}}\\n")
    print("end", flush=True)
    """)


TICKS = 30
BAR_WIDTH = 20_000  # past Docker's 16 KiB: every redraw arrives in several fragments
BAR = textwrap.dedent(f"""\
    import sys, time
    for k in range({TICKS}):
        print(f"tick {{k}}", flush=True)
        sys.stderr.write(f"\\rprogress {{k:03d}}/{TICKS} " + "#" * {BAR_WIDTH})
        sys.stderr.flush()
        time.sleep(0.05)
    sys.stderr.write("\\n")
    sys.stderr.flush()
    print("end", flush=True)
    """)
BAR_LAST = f"progress {TICKS - 1:03d}/{TICKS} " + "#" * BAR_WIDTH  # what a terminal shows at the end


def expected_lines(eid: int, digest: str, gpus: str) -> list[str]:
    lines = [f"start {eid} input {digest} gpus {gpus}"]
    for i in range(LINES):
        lines.append(f"n={i}")
        if i % 10 == 0:
            lines.append(json.dumps({"step": i, "loss": 1 / (i + 1)}))
    return [*lines, "end"]


@pytest.fixture
def chaos_pool(tmp_path: Path, daemon_factory: type[Daemon]) -> Iterator[tuple[Daemon, dict[str, SshHost]]]:
    gpus: dict[str, str | None] = {name: gpu_rows("NVIDIA A100-SXM4-80GB", 2, seed=name) for name in ("c1", "c2", "c3")}
    hosts, ssh = start_hosts(tmp_path, {**gpus, "p4": None}, ssh_extra="connect_timeout_seconds = 2\n")
    config = ssh + "".join(h.config(pool="p", extra='gpu_mode = "env"\nmax_concurrent = 4'
                                    + ('\nruntime = "process"' if name == "p4" else ""))
                           for name, h in hosts.items())
    daemon = daemon_factory(local_extra="enabled = false", extra_config=config, stop_grace=2)
    yield daemon, hosts
    for host in hosts.values():
        host.kill()


class Workload:
    """What the test asked for, kept across kills: submits and stops are retried until answered."""

    def __init__(self, repo: Path, blob_url: str) -> None:
        self.repo = repo
        self.specs: list[dict[str, object]] = []
        for i in range(30):
            kind = "hold" if i % 8 == 7 else "bar" if i % 10 == 4 else "vanish" if i % 10 == 9 else "work"
            spec: dict[str, object] = {"title": f"chaos-{i:02d}", "step": kind}
            if kind == "work" and i % 3 == 0:
                spec["inputs"] = {"data": [blob_url]}
            if kind == "work" and i % 5 == 1:
                spec["gpus"] = 1
            self.specs.append(spec)
        self.ids: dict[str, int] = {}  # title -> execution id, once the daemon answered
        self.stopped: set[int] = set()
        self.vanished: set[int] = set()  # removed from their host while the daemon was down
        self.running: dict[int, str] = {}  # vanish-kind executions last seen started, and where
        self.snapshot: str | None = None

    async def step(self, client: Client, rng: random.Random) -> None:
        """Submit a few more and stop the held ones that run; any of it may be cut short by a kill."""
        if self.snapshot is None:
            from runyard.daemon.snapshots import snapshot_commit

            snap = snapshot_commit(self.repo, "HEAD")
            if not await client.snapshot_has(snap.id):
                await client.snapshot_put(snap.id, snap.data)
            self.snapshot = snap.id
        # A submit whose answer was lost to a kill may have been recorded: look before submitting again.
        views = await client.list_executions(limit=100)
        known = {v.title: v.id for v in views if v.title}
        self.ids.update({t: i for t, i in known.items() if t and t.startswith("chaos-")})
        self.running.update({v.id: v.host for v in views if v.step == "vanish" and v.status == "started" and v.host})
        pending = [s for s in self.specs if s["title"] not in self.ids]
        for spec in pending[: rng.randint(3, 9)]:
            view = await client.submit(snapshot=self.snapshot, **spec)
            self.ids[str(spec["title"])] = view.id
        for spec in self.specs:
            eid = self.ids.get(str(spec["title"]))
            if eid is None or spec["step"] not in ("hold", "vanish"):
                continue
            view = await client.get(eid)
            if view.status != "started":
                continue
            if spec["step"] == "hold" and eid not in self.stopped:
                await client.stop([eid])
                self.stopped.add(eid)
            elif spec["step"] == "vanish" and view.host is not None:
                self.running[eid] = view.host

    def vanish_one(self, daemon: Daemon, hosts: dict[str, SshHost], rng: random.Random) -> None:
        """While the daemon is down: one running execution's container (or process and directory) goes."""
        candidates = sorted(set(self.running) - self.vanished)
        if not candidates:
            return
        eid = rng.choice(candidates)
        host = self.running[eid]
        if host == "p4":
            work = hosts[host].root / "work" / daemon.daemon_id / str(eid)
            with contextlib.suppress(OSError, ValueError):
                os.killpg(os.getpgid(int((work / ".runyard" / "wrapper.pid").read_text())), 9)
            subprocess.run(["rm", "-rf", str(work)], check=True)
        else:
            ids = subprocess.run(["docker", "ps", "-aq", "--filter", f"label=runyard.daemon={daemon.daemon_id}",
                                  "--filter", f"label=runyard.execution={eid}"],
                                 capture_output=True, text=True, check=True).stdout.split()
            subprocess.run(["docker", "rm", "-f", *ids], check=True, capture_output=True)
        self.vanished.add(eid)

    @property
    def all_submitted(self) -> bool:
        return len(self.ids) == len(self.specs)


async def test_kill9_at_random_instants_loses_and_doubles_nothing(
        chaos_pool: tuple[Daemon, dict[str, SshHost]], tmp_path: Path, http_files: FileServer) -> None:  # noqa: F811
    daemon, hosts = chaos_pool
    seed = int(os.environ.get("RUNYARD_CHAOS_SEED", str(random.SystemRandom().randrange(2**32))))
    print(f"chaos seed {seed} (RUNYARD_CHAOS_SEED={seed} replays it)")
    rng = random.Random(seed)
    blob = os.urandom(2 << 20)
    (http_files.root / "blob.bin").write_bytes(blob)
    digest = hashlib.sha256(blob).hexdigest()[:12]
    repo = make_repo(tmp_path / "repo", {
        "valohai.yaml": step_yaml("work", "python3 work.py", extra="inputs:\n  - name: data\n    optional: true")
        + step_yaml("hold", "while true; do echo held; sleep 0.1; done")
        + step_yaml("vanish", "while true; do echo held; sleep 0.1; done")
        + step_yaml("bar", "python3 bar.py"),
        "work.py": WORK,
        "bar.py": BAR,
    })
    workload = Workload(repo, http_files.url("blob.bin"))
    daemon.start()
    starts = subprocess.Popen(
        ["docker", "events", "--format", "{{json .}}", "--filter", "type=container", "--filter", "event=start",
         "--filter", f"label=runyard.daemon={daemon.daemon_id}"],
        stdout=subprocess.PIPE, text=True)
    kills = 0
    outages = 0
    down: SshHost | None = None
    try:
        async with await Client.connect(daemon.socket) as client:
            for name in hosts:
                await wait_for_host(client, name, {"ready"})
        # At least one piece of work vanishes while the daemon is down (the kills go on until one has).
        while (kills < 10 or not workload.all_submitted or not workload.vanished) and kills < 40:
            if down is not None:
                down.start()  # back well within the grace: its work goes on
                down = None
            elif rng.random() < 0.3:
                down = hosts[rng.choice(sorted(hosts))]
                down.kill()  # off the network while the daemon runs, reads its logs, copies its files
                outages += 1
            with contextlib.suppress(ConnectionLost, ConnectionError, RemoteError, OSError):
                async with await Client.connect(daemon.socket) as client:
                    step = asyncio.ensure_future(workload.step(client, rng))
                    # the kill lands at a random instant: while submitting, fetching, running, uploading
                    await asyncio.sleep(rng.uniform(0.05, 1.5))
                    daemon.kill9()
                    kills += 1
                    with contextlib.suppress(ConnectionLost, ConnectionError, RemoteError, OSError):
                        await step
            if daemon.process is not None and daemon.process.poll() is None:
                daemon.kill9()
                kills += 1
            if rng.random() < 0.5 or kills >= 10:  # past the tenth kill, as soon as there is a candidate
                workload.vanish_one(daemon, hosts, rng)
            daemon.start()
        if down is not None:
            down.start()
        # No more kills: let everything finish, stopping what is still held.
        async with await Client.connect(daemon.socket) as client:
            await workload.step(client, rng)
            finals = {t: await _until_ended(client, i, workload) for t, i in workload.ids.items()}
            hosts_now = await client.hosts()
            logs = {i: (await client.read_logs(i, offset=0, max_bytes=8 << 20)).data for i in workload.ids.values()}
            metadata = {i: await client.metadata(i) for i in workload.ids.values()}
            outputs = {i: await client.outputs(i) for i in workload.ids.values()}
            everything = await client.list_executions(limit=1000)
    finally:
        starts.terminate()
    started = Counter(json.loads(line)["Actor"]["Attributes"]["runyard.execution"]
                      for line in starts.communicate(timeout=10)[0].splitlines() if line.strip())

    assert kills >= 10
    print(f"chaos: {kills} kills, {outages} host outages, {len(workload.vanished)} vanished")
    assert len([v for v in everything if (v.title or "").startswith("chaos-")]) == 30  # none submitted twice
    for spec in workload.specs:
        title = str(spec["title"])
        view = finals[title]
        eid = view.id
        texts = [r.text for r in parse_records(logs[eid]) if r.stream != "system"]
        assert view.reason != "internal-error", (title, seed)
        if spec["step"] in ("hold", "vanish"):
            if eid in workload.vanished:
                assert (view.status, view.reason) == ("error", "container-removed"), (title, view.status, seed)
            else:
                assert view.status == "stopped", (title, view.status, view.reason, seed)
            # "Terminated": the script's shell says so when a stop's SIGTERM ends its `sleep` (the process
            # runtime signals the whole group; the shell waits for its command, then exits with its code).
            assert set(texts) <= {"held", "Terminated"}
            continue
        if spec["step"] == "bar":
            assert (view.status, view.reason) == ("complete", None), (title, view.status, view.reason, seed)
            records = [r for r in parse_records(logs[eid]) if r.stream != "system"]
            assert [r.text for r in records if r.stream == "stdout"] == [f"tick {k}" for k in range(TICKS)] + ["end"]
            assert [r.text for r in records if r.stream == "stderr"] == [BAR_LAST], (title, seed)
            continue
        assert (view.status, view.reason) == ("complete", None), (title, view.status, view.reason, seed,
                                                                  logs[eid][-2000:])
        input_digest = digest if "inputs" in spec else "none"
        gpus = ",".join(view.gpus)
        assert texts == expected_lines(eid, input_digest, gpus), (title, seed, logs[eid][:3000])
        assert [p.values["step"] for p in metadata[eid]] == [0, 10, 20, 30], (title, seed)
        assert sorted(o.path for o in outputs[eid]) == ["out-0.txt", "out-1.txt", "out-2.txt"], (title, seed)
        assert len(view.gpus) == spec.get("gpus", 0)
    # One container started per execution, ever: nothing ran twice, across every kill. (One created
    # but never started before a kill is removed and made again: its workspace may be half copied.)
    ids = {str(i) for i in workload.ids.values()}
    assert {k: n for k, n in started.items() if k in ids and n != 1} == {}, seed
    in_containers = {str(i) for t, i in workload.ids.items() if finals[t].host != "p4"}
    assert set(started) >= in_containers - {str(i) for t, i in workload.ids.items() if finals[t].status == "stopped"}
    # GPUs: never one GPU for two executions at the same time, and none held now.
    gpu_runs = [finals[str(s["title"])] for s in workload.specs if s.get("gpus")]
    for a in gpu_runs:
        for b in gpu_runs:
            if a.id < b.id and _overlap(a, b):
                assert not set(a.gpus) & set(b.gpus), (a.id, b.id, seed)
    assert all(g.execution is None for h in hosts_now for g in h.gpus)
    # SQLite came through every kill mid-write whole.
    daemon.terminate()
    db = sqlite3.connect(daemon.data_dir / "runyard.sqlite3")
    assert db.execute("PRAGMA integrity_check").fetchone() == ("ok",)
    assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
    db.close()


async def _until_ended(client: Client, eid: int, workload: Workload) -> ExecutionView:
    deadline = time.monotonic() + 180
    async for _ in client.events(since=0):
        view = await client.get(eid)
        if view.status in ("complete", "error", "stopped"):
            return view
        # What vanished ends on its own once the daemon sees it gone; a stop sent before that (its host
        # still reattaching) would be obeyed, and it would end stopped instead.
        if (view.step in ("hold", "vanish") and view.status == "started" and eid not in workload.stopped
                and eid not in workload.vanished):
            await client.stop([eid])
            workload.stopped.add(eid)
        assert time.monotonic() < deadline, f"execution {eid} never ended: {view.status}"
    raise AssertionError("event stream ended")


def _overlap(a: ExecutionView, b: ExecutionView) -> bool:
    def span(v: ExecutionView) -> tuple[datetime, datetime]:
        assert v.started_at and v.ended_at
        parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))  # noqa: E731
        return parse(v.started_at), parse(v.ended_at)

    (a0, a1), (b0, b1) = span(a), span(b)
    return a0 < b1 and b0 < a1
