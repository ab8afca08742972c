"""The Prometheus endpoint, scraped over HTTP and read with Prometheus' own text parser."""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from runyard.protocol import Client
from tests.conftest import Daemon, make_repo, run_cli, step_yaml, submit_repo, wait_for_status
from tests.pool import free_port, gpu_rows, start_hosts

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(port: int) -> tuple[str, Samples]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30) as answer:
        content_type = answer.headers["Content-Type"]
        text = answer.read().decode()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return content_type, samples


def value(samples: Samples, name: str, **labels: str) -> float | None:
    return samples.get((name, tuple(sorted(labels.items()))))


async def test_metrics_endpoint_shows_queue_hosts_gpus_and_counters(tmp_path: Path,
                                                                    daemon_factory: type[Daemon]) -> None:
    # gpu-01 reports 2 GPUs: the first 0 % busy with 0 MiB used, the second 10 % with 100 MiB.
    hosts, ssh = start_hosts(tmp_path, {"gpu-01": gpu_rows("NVIDIA A100", 2)})
    port = free_port()
    daemon = daemon_factory(local_extra='runtime = "process"\n', extra_config=ssh + hosts["gpu-01"].config(
        pool="a100", extra='runtime = "process"\n') + f'[metrics]\nlisten = "127.0.0.1:{port}"\n')
    try:
        daemon.start()
        repo = make_repo(tmp_path / "repo", {"valohai.yaml": step_yaml("hold", "echo warming up; sleep 600")
                                             + step_yaml("quick", "echo done")})
        client = await Client.connect(daemon.socket, client_name="tests")
        try:
            quick = await wait_for_status(client, (await submit_repo(client, repo, "quick", pool="local")).id)
            assert quick.status == "complete"
            one = await submit_repo(client, repo, "hold", pool="a100", gpus=1)
            two = await submit_repo(client, repo, "hold", pool="a100", gpus=2)  # waits: one GPU is taken
            one = await wait_for_status(client, one.id, {"started"})
            async for chunk in client.follow_logs(one.id):  # its first line is stored: a lag to show
                if "warming up" in chunk.data:
                    break
            content_type, samples = await asyncio.to_thread(scrape, port)
            assert content_type.startswith("text/plain; version=0.0.4")
            assert value(samples, "runyard_up") == 1
            assert value(samples, "runyard_executions", pool="a100", status="started") == 1
            assert value(samples, "runyard_executions", pool="a100", status="queued") == 1
            assert value(samples, "runyard_host_state", host="gpu-01", pool="a100", state="ready") == 1
            assert value(samples, "runyard_host_state", host="gpu-01", pool="a100", state="unreachable") == 0
            assert value(samples, "runyard_host_gpus", host="gpu-01", pool="a100", state="held") == 1
            assert value(samples, "runyard_host_gpus", host="gpu-01", pool="a100", state="free") == 1
            [uuid] = one.gpus
            expected = {"0000-4e1f": (0.0, 0.0), "0001-4e1f": (0.1, 100 * 2**20)}
            util, memory = next(v for k, v in expected.items() if k in uuid)
            who = {"execution": str(one.id), "owner": one.owner, "host": "gpu-01", "gpu": uuid}
            assert value(samples, "runyard_execution_gpu_utilization_ratio", **who) == util
            assert value(samples, "runyard_execution_gpu_memory_used_bytes", **who) == memory
            assert value(samples, "runyard_executions_started_total", pool="local") == 1
            assert value(samples, "runyard_executions_started_total", pool="a100") == 1
            assert value(samples, "runyard_executions_ended_total", status="complete", reason="none") == 1
            lag = value(samples, "runyard_log_ingestion_lag_seconds", execution=str(one.id))
            assert lag is not None and lag >= 0
            assert value(samples, "runyard_event_loop_lag_seconds") is not None

            assert run_cli(daemon, "stop", str(one.id), str(two.id)).returncode == 0
            await wait_for_status(client, one.id)
            _, samples = await asyncio.to_thread(scrape, port)
            assert value(samples, "runyard_executions", pool="a100", status="started") is None
            assert value(samples, "runyard_host_gpus", host="gpu-01", pool="a100", state="free") == 2
            ended = sum(v for (name, labels), v in samples.items()
                        if name == "runyard_executions_ended_total" and ("status", "stopped") in labels)
            assert ended == 2
        finally:
            await client.close()
    finally:
        for host in hosts.values():
            host.kill()


def test_metrics_refuse_a_non_loopback_address_unless_allowed(daemon_factory: type[Daemon]) -> None:
    daemon = daemon_factory(extra_config='[metrics]\nlisten = "0.0.0.0:9464"\n')
    config = daemon.write_config()
    done = run_cli(daemon, "daemon", "--config", str(config), "--check-config")
    assert done.returncode == 2
    assert "not a loopback address" in done.stderr and "allow_remote" in done.stderr
