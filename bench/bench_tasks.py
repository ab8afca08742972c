"""Creating a task (issue 13): a 100 x 100 grid, 10,000 children, created and queued by one request.

The daemon's own path (TaskEngine.create, what the tasks.create method runs): the snapshot's
valohai.yaml read and linted once, every child's parameters checked and its command built, the task
and its 10,000 children recorded in one SQLite transaction, each child tracked in the scheduler's
queue and its event published. Compared, in the same run, with the same 10,000 executions
submitted one by one (Core.submit, what 10,000 `runyard run`s cost the daemon, without their
connections), over the first 500 of them.

Also measured: a grid of 10,000 with maximum-queued-executions 100 (100 queued, 9,900 created).

Target: the 10,000-child grid created and queued in under 1 s.

Run: .venv/bin/python bench/bench_tasks.py
"""

from __future__ import annotations

import asyncio
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.common import save  # noqa: E402
from runyard.daemon.config import parse_config  # noqa: E402
from runyard.daemon.core import Core  # noqa: E402
from runyard.daemon.hosts import Host, all_settings  # noqa: E402
from runyard.daemon.runoptions import RunOptions  # noqa: E402
from runyard.daemon.snapshots import snapshot_commit  # noqa: E402
from runyard.daemon.store import Store  # noqa: E402
from runyard.protocol.tasks import TaskCreateParams, VariantSpec  # noqa: E402

VALOHAI_YAML = """\
- step:
    name: train
    image: python:3.12-slim
    command: python train.py {parameters}
    parameters:
      - name: lr
        type: float
      - name: layers
        type: integer
"""


def repo(root: Path) -> Path:
    root.mkdir(parents=True)
    (root / "valohai.yaml").write_text(VALOHAI_YAML)
    (root / "train.py").write_text("print('hi')\n")
    env = {"GIT_AUTHOR_NAME": "b", "GIT_AUTHOR_EMAIL": "b@b", "GIT_COMMITTER_NAME": "b",
           "GIT_COMMITTER_EMAIL": "b@b", "PATH": "/usr/bin:/bin"}
    for args in (["init", "-q"], ["add", "-A"], ["commit", "-qm", "x"]):
        subprocess.run(["git", *args], cwd=root, check=True, env=env)
    return root


async def one_case(tmp: Path, source: Path, limit: int | None) -> dict[str, float]:
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    config = parse_config(f'[daemon]\nsocket = "{tmp}/s"\ndata_dir = "{tmp}/data"\n')
    store = await Store.open(tmp / "db.sqlite3")
    try:
        core = Core(config, store)
        for settings in all_settings(config):  # the hosts, not started: nothing is placed
            core.hosts[settings.name] = Host(settings, daemon_id=store.daemon_id, ssh=config.ssh,
                                             sockets_dir=tmp / "hosts", on_change=lambda _: None)
        snap = snapshot_commit(source, "HEAD")
        core.snapshots.put_chunk(snap.id, 0, snap.data, True, 1 << 30)
        lrs = [round(0.0001 * (i + 1), 6) for i in range(100)]
        params = TaskCreateParams(snapshot=snap.id, step="train", maximum_queued_executions=limit, variants=[
            VariantSpec("lr", "multiple", {"items": lrs}), VariantSpec("layers", "linear", {"start": 1, "end": 100,
                                                                                            "step": 1})])
        t0 = time.perf_counter()
        view = await core.tasks.create(params, owner="bench", owner_uid=1000, options=RunOptions())
        task_s = time.perf_counter() - t0
        queued = sum(1 for r in core.active.values() if r.status == "queued")
        assert view.total == 10_000 and queued == (limit or 10_000) and len(core._demands) == queued, (view, queued)
        t0 = time.perf_counter()
        for i in range(500):
            await core.submit(step="train", snapshot=snap.id, parameters={"lr": str(lrs[i % 100]), "layers": "3"},
                              title=None, image=None, commit=snap.commit, inputs={}, config_path="valohai.yaml",
                              owner="bench", owner_uid=1000)
        one_by_one_s = (time.perf_counter() - t0) * 10_000 / 500
        return {"task_create_s": task_s, "submits_one_by_one_s_estimated": one_by_one_s,
                "speedup": one_by_one_s / task_s}
    finally:
        await store.close()


async def main() -> None:
    tmp = Path(tempfile.mkdtemp(prefix="ryb-tasks-", dir="/tmp"))
    results: dict[str, Any] = {}
    try:
        source = repo(tmp / "repo")
        for name, limit in (("grid_10000_all_queued", None), ("grid_10000_max_queued_100", 100)):
            rounds = [await one_case(tmp / name, source, limit) for _ in range(3)]
            results[name] = {k: statistics.median(r[k] for r in rounds) for k in rounds[0]}
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    save("tasks", results)
    for name, r in results.items():
        print(f"{name}: created and queued in {r['task_create_s']:.2f} s (target < 1 s); "
              f"10,000 submits one by one: ~{r['submits_one_by_one_s_estimated']:.1f} s ({r['speedup']:.0f}x)")


if __name__ == "__main__":
    asyncio.run(main())
