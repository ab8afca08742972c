"""Per-user quotas and the fair order between users, with real local users and real executions.

One daemon, two slots, `max_active_per_user = 3`: alice's 8-child sweep keeps at most three
executions in flight (the rest wait as created, reason quota) at every event, through a kill -9
of the daemon; bob's single run, submitted while her sweep fills the lab, starts on the next free
slot instead of after her sweep.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import msgspec
import pytest

from runyard.daemon.snapshots import snapshot_worktree
from runyard.protocol import Client
from runyard.protocol.messages import Event
from runyard.protocol.tasks import TaskView

from .conftest import Daemon, make_repo
from .test_tasks import STEPS, TRAIN
from .test_users import GROUP, as_user, ensure_users

pytestmark = pytest.mark.slow

IN_FLIGHT = ("queued", "started", "stopping")


async def test_a_users_sweep_stays_within_quota_and_another_users_run_starts_before_it_ends(
        daemon_factory: type[Daemon], tmp_path: Path) -> None:
    users = ensure_users()
    daemon = daemon_factory(daemon_extra=f'socket_group = "{GROUP}"\nsocket_mode = "0660"\n', max_concurrent=2,
                            local_extra='runtime = "process"\n', extra_config="[quotas]\nmax_active_per_user = 3\n")
    daemon.root.chmod(0o711)
    daemon.start()
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": STEPS, "train.py": TRAIN})
    repo.chmod(0o755)
    snap = snapshot_worktree(repo)
    put = ("snapshots.put", {"id": snap.id, "offset": 0, "data": snap.data, "final": True})
    made = as_user(users["ryalice"], daemon.socket, [put, ("tasks.create", {
        "snapshot": snap.id, "step": "train", "parameters": {"steps": "40"},
        "variants": [{"name": "x", "style": "multiple", "rules": {"items": list(range(1, 9))}}]})])
    assert "result" in made["answers"][1], made
    task = made["answers"][1]["result"]
    assert task["children"] == {"queued": 3, "created": 5}, task

    # bob's one run, submitted while alice's sweep fills both slots and has a third queued before it
    answer = as_user(users["rybob"], daemon.socket, [put, ("executions.submit", {
        "snapshot": snap.id, "step": "train", "parameters": {"x": "100"}})])
    bob_run: dict[str, Any] = answer["answers"][1]["result"]
    assert bob_run["owner"] == "rybob" and bob_run["status"] == "queued"

    client = await Client.connect(daemon.socket, client_name="tests")
    try:
        waiting = await client.call("executions.get", {"id": task["execution_ids"][-1]})
        assert (waiting["status"], waiting["reason"]) == ("created", "quota")

        async def sample(until: str) -> TaskView:
            """At every event: alice never has more than three in flight. Returns at ``until``."""
            async for event in client.events(since=0):
                view = msgspec.convert(await client.call("tasks.get", {"id": task["id"]}), TaskView)
                assert sum(view.children.get(s, 0) for s in IN_FLIGHT) <= 3, view.children
                if (until == "bob-started" and isinstance(event, Event) and event.execution_id == bob_run["id"]
                        and event.status == "started"):
                    return view
                if view.status in ("complete", "error", "stopped"):
                    return view
            raise AssertionError("event stream ended")

        when_bob_started = await asyncio.wait_for(sample("bob-started"), 120)
        assert when_bob_started.status == "started" and when_bob_started.children.get("created"), \
            when_bob_started.children  # alice's sweep still had children waiting
    finally:
        await client.close()

    daemon.kill9()  # while alice's children run and wait: the quota holds after the restart too
    daemon.start()
    client = await Client.connect(daemon.socket, client_name="tests")
    try:
        done = await asyncio.wait_for(sample("end"), 120)
        assert (done.status, done.children) == ("complete", {"complete": 8})
        bob = await client.call("executions.get", {"id": bob_run["id"]})
        assert bob["status"] == "complete"
    finally:
        await client.close()
