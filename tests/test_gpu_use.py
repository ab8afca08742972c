"""Each execution's GPU use over time: `info`, `info --json` and the TUI's Info tab, across a restart."""

from __future__ import annotations

import json
from pathlib import Path

from textual.widgets import Static

from runyard.protocol import Client
from runyard.tui.app import RunyardApp
from runyard.tui.detail import DetailScreen
from tests.conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status
from tests.pool import gpu_rows, start_hosts, wait_for_host
from tests.test_tui import SIZE, move_to, rows, text_of, until


async def test_gpu_use_over_time_shows_an_idle_job_and_survives_a_restart(tmp_path: Path,
                                                                          daemon_factory: type[Daemon]) -> None:
    busy = gpu_rows("NVIDIA A100", 2)  # GPU 0: 0 % and 0 MiB, GPU 1: 10 % and 100 MiB
    hosts, ssh = start_hosts(tmp_path, {"gpu-01": busy})
    host = hosts["gpu-01"]
    smi = host.root / "bin" / "nvidia-smi"

    def readings(csv: str) -> None:  # what the host's nvidia-smi prints from now on
        smi.write_text(f"#!/bin/sh\ncat <<'EOF'\n{csv}\nEOF\n")

    daemon = daemon_factory(extra_config=ssh + host.config(pool="a100", extra='runtime = "process"\n'))
    try:
        daemon.start()
        repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("hold", "sleep 600")})
        client = await Client.connect(daemon.socket, client_name="tests")
        try:
            held = await wait_for_status(client, (await submit_repo(client, repo, "hold", pool="a100", gpus=2)).id,
                                         {"started"})
        finally:
            await client.close()
        assert run_cli(daemon, "hosts", "scan", "gpu-01").returncode == 0
        readings(busy.replace(", 10\n", ", 0\n").rsplit(", ", 1)[0] + ", 0")  # now both idle
        assert run_cli(daemon, "hosts", "scan", "gpu-01").returncode == 0

        info = run_cli(daemon, "info", str(held.id))
        assert info.returncode == 0, info.stderr
        use = info.stdout.split("GPU use:\n")[1]
        gpu0, gpu1 = held.gpus
        assert f"{gpu0}: now   0%, mean   0%" in use
        assert f"{gpu1}: now   0%, mean   5%, memory 100 MiB" in use
        as_json = json.loads(run_cli(daemon, "info", str(held.id), "--json").stdout)
        assert as_json["gpu_use"][-1]["utilization"] == [0, 0]
        assert as_json["gpu_use"][-2]["utilization"] == [0 if gpu0.endswith("0") else 10,
                                                        10 if gpu0.endswith("0") else 0]

        # The daemon is killed and comes back: the series it had is still there, and grows.
        daemon.kill9()
        daemon.start()
        client = await Client.connect(daemon.socket, client_name="tests")
        try:
            await wait_for_host(client, "gpu-01", {"ready"})  # its inventory read on connecting adds one
            view = await client.get(held.id)
            before = len(as_json["gpu_use"])
            assert [s.utilization for s in view.gpu_use[:before]] == [s["utilization"] for s in as_json["gpu_use"]]
            assert len(view.gpu_use) > before
            app = RunyardApp(daemon.socket)  # the TUI's Info tab shows the same
            async with app.run_test(size=SIZE) as pilot:
                await until(pilot, lambda: held.id in rows(app), "the execution in the queue")
                await move_to(pilot, app, held.id)
                await pilot.press("enter")
                await until(pilot, lambda: isinstance(app.screen, DetailScreen), "the detail screen")
                await pilot.press("3")
                info = app.screen.query_one("#info-text", Static)
                await until(pilot, lambda: "GPU use" in text_of(info), "the info tab's GPU use")
                assert f"{gpu1}: now   0%, mean   3%" in text_of(info)
            assert run_cli(daemon, "stop", str(held.id)).returncode == 0
            await wait_for_status(client, held.id)
        finally:
            await client.close()
        ended = json.loads(run_cli(daemon, "info", str(held.id), "--json").stdout)
        assert len(ended["gpu_use"]) == len(view.gpu_use)  # kept after the end
    finally:
        for h in hosts.values():
            h.kill()
