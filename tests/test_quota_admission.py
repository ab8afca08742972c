"""Submits that race each other are admitted against the quota one at a time, as the user sees it."""

from __future__ import annotations

import asyncio

from runyard.daemon.snapshots import snapshot_commit
from runyard.protocol import Client

from .conftest import Daemon, make_repo, step_yaml


async def test_concurrent_submits_never_pass_the_quota(daemon_factory: type[Daemon]) -> None:
    daemon = daemon_factory(max_concurrent=1, local_extra='runtime = "process"\n',
                            extra_config="[quotas]\nmax_active_per_user = 3\n")
    daemon.start()
    repo = make_repo(daemon.root / "repo", {"valohai.yaml": step_yaml("wait", "sleep 100000")})
    snap = snapshot_commit(repo, "HEAD")
    clients = [await Client.connect(daemon.socket, client_name=f"c{i}") for i in range(12)]
    try:
        await clients[0].snapshot_put(snap.id, snap.data)
        made = await asyncio.gather(*(c.submit(step="wait", snapshot=snap.id) for c in clients))
        rows = [await clients[0].get(e.id) for e in made]
        seen = [(r.status, r.reason) for r in rows]
        assert sum(status in ("queued", "started") for status, _ in seen) == 3, seen
        assert seen.count(("created", "quota")) == 9, seen
        await clients[0].stop(all=True)
    finally:
        for c in clients:
            await c.close()
