"""[retention]: ended executions' files go oldest first over a disk budget; pinned ones and running ones stay."""

from __future__ import annotations

import json
from pathlib import Path

from runyard.protocol import Client
from tests.conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status
from tests.test_users import GROUP, as_user, ensure_users

PRINT = "yes xxxxxxxxxxxxxxxxxxxx| head -n 1000; echo kept > $VH_OUTPUTS_DIR/out.txt"


async def test_retention_dry_run_then_removal_oldest_first_keeping_pinned_and_running(
        tmp_path: Path, daemon_factory: type[Daemon]) -> None:
    users = ensure_users()
    # About 20 KB of log each; the budget holds about one and a half of them.
    daemon = daemon_factory(local_extra='runtime = "process"\n',
                            daemon_extra=f'socket_group = "{GROUP}"\nsocket_mode = "0660"\n',
                            extra_config="[retention]\nmax_disk_gb = 0.00003\nevery_hours = 1000\n")
    daemon.root.chmod(0o711)  # users reach the socket inside; they cannot list the directory
    daemon.start()
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("print", PRINT) + step_yaml("hold", "sleep 600")})
    client = await Client.connect(daemon.socket, client_name="tests")
    try:
        oldest, older = [await wait_for_status(client, (await submit_repo(client, repo, "print")).id)
                         for _ in range(2)]
        pinned = await wait_for_status(client, (await submit_repo(client, repo, "print", tags=["paper-fig-3"])).id)
        running = await wait_for_status(client, (await submit_repo(client, repo, "hold")).id, {"started"})
        assert {e.status for e in (oldest, older, pinned)} == {"complete"}

        plan = json.loads(run_cli(daemon, "retention", "--dry-run", "--json").stdout)
        assert [(i["id"], i["why"]) for i in plan["executions"]] == [(oldest.id, "budget"), (older.id, "budget")]
        assert plan["dry_run"] and plan["kept_pinned"] == 1 and all(i["bytes"] > 20000 for i in plan["executions"])
        text = run_cli(daemon, "retention", "--dry-run").stdout
        assert "would remove 2 executions' files" in text
        assert "x" * 20 in run_cli(daemon, "logs", str(oldest.id)).stdout  # a dry run removes nothing

        # Not an admin: refused, even the dry run, which lists everyone's executions.
        answer = as_user(users["ryalice"], daemon.socket, [("retention.run", {"dry_run": True})])["answers"][0]
        assert answer["code"] == "permission-denied" and "only root and daemon.admins" in answer["message"]

        done = run_cli(daemon, "retention")
        assert done.returncode == 0 and "removed 2 executions' files" in done.stdout
        for gone in (oldest, older):
            logs = run_cli(daemon, "logs", str(gone.id)).stdout
            assert "x" * 20 not in logs and "runyard retention removed this execution's log" in logs
            assert "over the disk budget" in logs
            assert "out.txt" not in run_cli(daemon, "outputs", str(gone.id)).stdout
            assert (await client.get(gone.id)).status == "complete"  # the record stays
        assert "x" * 20 in run_cli(daemon, "logs", str(pinned.id)).stdout
        assert "out.txt" in run_cli(daemon, "outputs", str(pinned.id)).stdout
        assert (await client.get(running.id)).status == "started"
        # Done once: the next pass has nothing left to remove.
        again = json.loads(run_cli(daemon, "retention", "--dry-run", "--json").stdout)
        assert again["executions"] == [] and again["kept_pinned"] == 1
        assert run_cli(daemon, "stop", str(running.id)).returncode == 0
        await wait_for_status(client, running.id)
    finally:
        await client.close()
    # By age, applied by the daemon itself when it starts: the one that ended since goes, the pinned one stays.
    assert daemon.terminate() == 0
    daemon.extra_config = "[retention]\ndays = 0.000000001\nevery_hours = 1000\n"
    daemon.start()
    client = await Client.connect(daemon.socket, client_name="tests")
    try:
        # The pass at start is done when a dry run (which waits for it) finds nothing left.
        after = json.loads(run_cli(daemon, "retention", "--dry-run", "--json").stdout)
        assert after["executions"] == [] and after["kept_pinned"] == 1
        assert "ended more than 1e-09 days ago" in run_cli(daemon, "logs", str(running.id)).stdout
        assert "x" * 20 in run_cli(daemon, "logs", str(pinned.id)).stdout
    finally:
        await client.close()
