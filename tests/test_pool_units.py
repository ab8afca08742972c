"""Fast checks of the pool's pure parts: nvidia-smi parsing, the scheduler's rule, host config."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from runyard.daemon.config import ConfigError, parse_config
from runyard.daemon.inventory import parse_gpus, parse_inventory
from runyard.daemon.logfile import LogFile
from runyard.daemon.scheduler import Capacity, Demand, place, refusal
from runyard.daemon.steps import load_config, prepare_step

from .pool import gpu_rows

MEMINFO = "MemTotal:       16384000 kB\nMemFree:  100 kB\nMemAvailable:    8192000 kB\n"


def test_inventory_parses_the_real_format_including_not_available_fields() -> None:
    out = f"@cpus\n32\n@memory\n{MEMINFO}@gpus\n{gpu_rows('NVIDIA H100 80GB HBM3', 2, na=True)}\n"
    inv = parse_inventory(out)
    assert inv.cpus == 32 and inv.memory_mb == 16000 and inv.memory_available_mb == 8000
    assert [g.index for g in inv.gpus] == [0, 1] and inv.gpus[0].name == "NVIDIA H100 80GB HBM3"
    assert inv.gpus[1].memory_used_mb is None and inv.gpus[1].utilization is None
    assert inv.gpus[0].memory_total_mb == 81920 and not inv.problems


def test_inventory_without_or_with_a_failing_nvidia_smi() -> None:
    assert parse_inventory(f"@cpus\n4\n@memory\n{MEMINFO}@gpus\n@no-nvidia-smi\n").gpus == ()
    failing = parse_inventory(
        f"@cpus\n4\n@memory\n{MEMINFO}@gpus\n"
        "NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver.\n@nvidia-smi-failed 9\n")
    assert failing.gpus == () and any("status 9" in p for p in failing.problems)
    gpus, problems = parse_gpus("WARNING: infoROM is corrupted at gpu 0000:41:00.0\n" + gpu_rows("A", 1))
    assert len(gpus) == 1 and problems == ["nvidia-smi: WARNING: infoROM is corrupted at gpu 0000:41:00.0"]


def host(name: str, gpus: int, pool: str = "p", cpus: float = 64, memory: int = 512_000) -> Capacity:
    ids = [f"GPU-{name}-{i}" for i in range(gpus)]
    return Capacity(name=name, pool=pool, total_gpus=gpus, total_cpus=cpus, total_memory_mb=memory,
                    free_gpus=list(ids), free_cpus=cpus, free_memory_mb=memory, free_slots=None)


def test_priority_then_submit_order_and_tightest_fit() -> None:
    hosts = [host("big", 8), host("small", 2)]
    queue = [Demand(1, 0, 10.0, "p", gpus=2), Demand(2, 5, 20.0, "p", gpus=8), Demand(3, 0, 5.0, "p", gpus=1)]
    got = place(queue, hosts, now=30, reserve_after=1e9)
    assert [(p.execution_id, p.host, len(p.gpus)) for p in got] == [(2, "big", 8), (3, "small", 1)]
    # 1 fits nowhere now (small has one GPU left, big none): it waits, nothing shared
    assert len({g for p in got for g in p.gpus}) == 9


def test_a_large_execution_that_waited_reserves_a_host() -> None:
    hosts = [host("a", 4), host("b", 2)]
    hosts[0].free_gpus = hosts[0].free_gpus[:1]  # three of a's GPUs are busy
    big = Demand(1, 0, 0.0, "p", gpus=4)
    smalls = [Demand(i, 0, float(i), "p", gpus=1) for i in range(2, 6)]
    # Before it has waited long enough, small ones fill every gap
    fresh = place([big, *smalls], [host("a", 4), host("b", 2)], now=10, reserve_after=60)
    assert {p.host for p in fresh} == {"a", "b"}
    # Once it has, host a is held for it: the small ones only get b
    held = place([big, *smalls], hosts, now=100, reserve_after=60)
    assert [p.host for p in held] == ["b", "b"] and hosts[0].reserved_by == 1


def test_pools_cpu_memory_and_slots() -> None:
    hosts = [host("g", 4, "gpu"), host("c", 0, "cpu", cpus=4, memory=8000)]
    hosts[1].free_slots = 1
    queue = [Demand(1, 0, 1, "cpu", cpus=3, memory_mb=6000), Demand(2, 0, 2, "cpu", cpus=1),
             Demand(3, 0, 3, None, gpus=1)]
    got = {p.execution_id: p.host for p in place(queue, hosts, now=5, reserve_after=1e9)}
    assert got == {1: "c", 3: "g"}  # 2 fits the CPUs but not the execution slot


def test_refusal_names_the_pool_and_the_largest_host() -> None:
    hosts = [host("g", 4, "gpu"), host("c", 0, "cpu", cpus=4, memory=8000)]
    assert refusal(Demand(1, 0, 0, "gpu", gpus=4), hosts, ["gpu", "cpu"]) is None
    assert "no host is in pool 'tpu'" in str(refusal(Demand(1, 0, 0, "tpu"), hosts, ["gpu", "cpu"]))
    why = str(refusal(Demand(1, 0, 0, "cpu", memory_mb=9000), hosts, ["gpu", "cpu"]))
    assert "pool 'cpu'" in why and "8000 MB" in why


def test_host_config_is_checked() -> None:
    good = parse_config('[[hosts]]\nname = "gpu-01"\naddress = "10.0.0.11"\ngpus = 2\npool = "a100"\n')
    assert good.hosts[0].gpus == 2 and good.hosts[0].runtime == "docker"
    for text, message in [
        ('[[hosts]]\nname = "local"\n', "reserved"),
        ('[[hosts]]\nname = "a"\n[[hosts]]\nname = "a"\n', "used twice"),
        ('[[hosts]]\nname = "../x"\n', "hosts[0].name"),
        ('[[hosts]]\nname = "a"\ngpus = "many"\n', "gpus"),
        ('[[hosts]]\nname = "a"\nruntime = "kubernetes"\n', "runtime"),
        ('[[hosts]]\nname = "a"\nport = 70000\n', "hosts[0].port"),
    ]:
        with pytest.raises(ConfigError, match=re.escape(message)):
            parse_config(text)


def test_step_resources_and_environment() -> None:
    config = load_config("""
- step:
    name: t
    image: x
    command: train
    environment: a100
    resources:
      cpu: {min: 2, max: 4}
      memory: {min: 1024, max: 2048}
      devices:
        nvidia.com/gpu: 2
""")
    r = prepare_step(config, "t", {}, {}).resources
    assert r == {"gpus": 2, "cpus": 2.0, "memory_mb": 1024, "environment": "a100", "cpu_max": 4.0,
                 "memory_max_mb": 2048}


def test_count_by_stream_across_block_boundaries(tmp_path: Path) -> None:
    path = tmp_path / "log"
    ts = "2026-11-21T12:00:00.000000001Z"
    records = [f"{'OES'[i % 3]} {ts} {'x' * (i % 50)}\n" for i in range(100_000)]
    path.write_text("".join(records))
    counts = LogFile(path).count_by_stream()
    assert counts == {"O": 33334, "E": 33333, "S": 33333}


def test_docker_gets_a_device_request_for_exactly_the_granted_uuids() -> None:
    from runyard.daemon.runtime import ContainerSpec
    from runyard.daemon.runtime_docker import DockerRuntime

    spec = ContainerSpec(execution_id=7, image="img", command="true", environment={}, workdir="/w", host="g",
                         gpus=("GPU-a", "GPU-c"), cpu_limit=2.5, memory_limit_mb=1024)
    config = DockerRuntime("/nonexistent.sock", "d").container_config(spec)
    host = config["HostConfig"]
    assert host["DeviceRequests"] == [{"Driver": "nvidia", "DeviceIDs": ["GPU-a", "GPU-c"],
                                       "Capabilities": [["gpu"]]}]
    assert config["Labels"]["runyard.gpus"] == "GPU-a,GPU-c" and config["Labels"]["runyard.host"] == "g"
    assert host["NanoCpus"] == 2_500_000_000 and host["Memory"] == 1024 * 1024 * 1024
    env_mode = DockerRuntime("/nonexistent.sock", "d", gpu_device_requests=False).container_config(spec)
    assert "DeviceRequests" not in env_mode["HostConfig"]


def test_input_cache_evicts_least_recently_used_first(tmp_path: Path) -> None:
    import os

    from runyard.daemon.inputs import InputFetcher
    from runyard.daemon.outputs import LocalOutputStore

    fetcher = InputFetcher(tmp_path / "cache", LocalOutputStore(tmp_path / "out"), max_bytes=250)
    entries = []
    for i, age in enumerate([300, 100, 200, 50]):  # seconds since last use
        entry = tmp_path / "cache" / f"e{i}"
        entry.mkdir()
        (entry / "data").write_bytes(b"x" * 100)
        os.utime(entry, (1_000_000 - age, 1_000_000 - age))
        entries.append(entry)
    removed = fetcher.evict(keep=entries[0])  # the oldest is the one just fetched: kept
    assert removed == [entries[2], entries[1]]
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == ["e0", "e3"]


def test_input_layout_keep_directories_filename_and_escapes(tmp_path: Path) -> None:
    from runyard.daemon.inputs import InputFile, layout, place

    src = tmp_path / "blob"
    src.write_text("x")

    def f(key: str) -> InputFile:
        return InputFile(key.rsplit("/", 1)[-1], src, f"s3://b/{key}", 1, "0" * 64)

    files = [f("data/2024/a.csv"), f("data/2024/sub/b.csv")]
    url = "s3://b/data/2024/**.csv"
    assert [x.name for x in layout(files, url, {})] == ["a.csv", "b.csv"]
    assert [x.name for x in layout(files, url, {"keep_directories": "full"})] == ["data/2024/a.csv",
                                                                                "data/2024/sub/b.csv"]
    assert [x.name for x in layout(files, url, {"keep_directories": "suffix"})] == ["a.csv", "sub/b.csv"]
    assert [x.name for x in layout(files[:1], url, {"filename": "train.csv"})] == ["train.csv"]
    escaping = InputFile("../../etc/passwd", src, "s3://b/x/../../etc/passwd", 1, "0" * 64)
    described, wanted = place({"d": [*layout(files, url, {"keep_directories": "suffix"}), escaping]},
                              tmp_path / "work", "/valohai")
    assert [rel for _, rel in wanted] == ["inputs/d/a.csv", "inputs/d/sub/b.csv", "inputs/d/passwd"]
    assert [e["path"] for e in described["d"]["files"]] == [
        "/valohai/inputs/d/a.csv", "/valohai/inputs/d/sub/b.csv", "/valohai/inputs/d/passwd"]
    assert (tmp_path / "work" / "inputs" / "d" / "sub" / "b.csv").exists()
