"""A long queue as its users meet it: its order survives stops from the middle, and a bulk stop
stops every queued execution at once, with the note in each log and followers told."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from runyard.protocol import Client

from .conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status

pytestmark = pytest.mark.slow


async def test_queue_order_holds_through_stops_and_stop_all_stops_every_queued_one(
        daemon_factory: type[Daemon], tmp_path: Path) -> None:
    daemon = daemon_factory(max_concurrent=1, local_extra='runtime = "process"\n', stop_grace=1)
    daemon.start()
    repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("wait", "sleep 600")})
    async with await Client.connect(daemon.socket) as client:
        holder = await submit_repo(client, repo, "wait")
        await wait_for_status(client, holder.id, {"started"})
        # 40 queued: priorities 0 and 1 interleaved, so the order is not the submit order.
        queued = [await submit_repo(client, repo, "wait", priority=i % 2) for i in range(40)]
        by_order = sorted(queued, key=lambda e: (-e.priority, e.id))
        # Stop the two that would go next and one from the middle of each priority.
        gone = [by_order[0].id, by_order[1].id, by_order[10].id, by_order[30].id]
        result = await client.stop(gone)
        assert result.stopped == gone
        left = [e for e in by_order if e.id not in gone]

        # A follower of a queued execution's (empty) log is told when it is stopped.
        async def follow(execution_id: int) -> str:
            return "".join([block.data async for block in client.follow_logs(execution_id)])

        following = asyncio.create_task(follow(left[-1].id))
        # The slot frees: the first of what is left, in the scheduler's order, starts next.
        await client.stop([holder.id])
        nxt = await wait_for_status(client, left[0].id, {"started"})
        assert nxt.status == "started"
        assert [(await client.get(e.id)).status for e in left[1:]] == ["queued"] * len(left[1:])

        said = run_cli(daemon, "stop", "--all")
        assert said.returncode == 0
        lines = said.stdout.splitlines()
        assert f"execution {left[0].id}: stopping" in lines or f"execution {left[0].id}: stopped" in lines
        for e in left[1:]:
            assert f"execution {e.id}: stopped" in lines
        assert "stop asked by root: it had not started; nothing ran" in await asyncio.wait_for(following, 30)
        note = "runyard: stop asked by root: it had not started; nothing ran\n"
        assert run_cli(daemon, "logs", str(left[-2].id)).stdout == note
        for e in left[1:]:
            view = await client.get(e.id)
            assert (view.status, view.reason) == ("stopped", "stopped-before-start")
            log = await client.read_logs(e.id, tail=10)
            assert log.data.count("\n") == 1 and log.data.endswith(note[len("runyard: "):])
        assert (await wait_for_status(client, left[0].id)).status == "stopped"
        # Nothing is left holding the slot: a new submit runs.
        fresh = await submit_repo(client, repo, "wait")
        assert (await wait_for_status(client, fresh.id, {"started"})).status == "started"
        await client.stop([fresh.id])
