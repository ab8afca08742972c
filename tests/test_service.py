"""The daemon as a service: systemd readiness, the unit and its installer, --check-config."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.conftest import Daemon
from tests.pool import free_port, gpu_rows, start_hosts

REPO = Path(__file__).resolve().parent.parent


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "runyard.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "NO_COLOR": "1"})


def test_check_config_reaches_each_host_and_starts_nothing(tmp_path: Path) -> None:
    hosts, ssh = start_hosts(tmp_path, {"gpu-01": gpu_rows("NVIDIA A100", 2)})
    try:
        data = tmp_path / "data"
        config = tmp_path / "config.toml"
        gone_port = free_port()  # nothing listens there: a host that is down
        config.write_text(
            f'[daemon]\nsocket = "{tmp_path / "s"}"\ndata_dir = "{data}"\n'
            '[local]\nruntime = "process"\n' + ssh + hosts["gpu-01"].config(pool="gpu", extra='runtime = "process"')
            + f'[[hosts]]\nname = "gpu-02"\naddress = "127.0.0.1"\nport = {gone_port}\nuser = "root"\n'
              f'identity = "{hosts["gpu-01"].client_key}"\npool = "gpu"\n')
        done = cli("daemon", "--config", str(config), "--check-config")
        assert done.returncode == 1, done.stdout + done.stderr
        out = done.stdout
        assert "config " + str(config) + ": valid" in out
        assert "host gpu-01 (pool gpu, process): ok" in out
        assert "2 GPUs (NVIDIA A100)" in out
        assert "host gpu-02 (pool gpu, docker): FAILED" in out
        assert "cannot connect" in out.split("host gpu-02")[1]
        assert "host local (pool local, process): ok" in out
        # Nothing started: no socket, no data directory, no store.
        assert not (tmp_path / "s").exists() and not data.exists()

        as_json = json.loads(cli("daemon", "--config", str(config), "--check-config", "--json").stdout)
        by_name = {h["name"]: h for h in as_json["hosts"]}
        assert as_json["ok"] is False and by_name["gpu-01"]["ok"] and not by_name["gpu-02"]["ok"]

        # Without the dead host every check passes: exit 0.
        config.write_text(config.read_text().split("[[hosts]]\nname = \"gpu-02\"")[0])
        assert cli("daemon", "--config", str(config), "--check-config").returncode == 0

        config.write_text("[daemon]\nsocket_mode = 'rw'\n")
        bad = cli("daemon", "--config", str(config), "--check-config")
        assert bad.returncode == 2 and "socket_mode" in bad.stderr
    finally:
        for host in hosts.values():
            host.kill()


def test_ready_is_notified_once_the_socket_answers(daemon_factory: type[Daemon],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    where = Path(tempfile.mkdtemp(prefix="ry-notify-", dir="/tmp"))
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    listener.bind(str(where / "notify"))
    listener.settimeout(60)
    monkeypatch.setenv("NOTIFY_SOCKET", str(where / "notify"))
    try:
        d = daemon_factory()
        d.start()
        message = listener.recv(4096).decode()
        assert "READY=1" in message.splitlines()
        assert f"MAINPID={d.process.pid}" in message  # type: ignore[union-attr]
        with socket.socket(socket.AF_UNIX) as probe:
            probe.connect(d.socket)  # already serving when it said so
        d.terminate()
        assert "STOPPING=1" in listener.recv(4096).decode()
    finally:
        listener.close()
        shutil.rmtree(where, ignore_errors=True)


def test_install_systemd_writes_the_shipped_unit(tmp_path: Path) -> None:
    from runyard.daemon.service import unit_text

    # The file in contrib/ is the one --install-systemd writes, ExecStart aside.
    assert (REPO / "contrib" / "systemd" / "runyard.service").read_text() == unit_text()
    config = tmp_path / "config.toml"
    config.write_text("")
    done = cli("daemon", "--config", str(config), "--install-systemd", "--unit-dir", str(tmp_path / "units"))
    assert done.returncode == 0, done.stderr
    unit = (tmp_path / "units" / "runyard.service").read_text()
    assert "Type=notify" in unit
    exec_start = next(line for line in unit.splitlines() if line.startswith("ExecStart="))
    assert exec_start.endswith(f"daemon --config {config}")
    assert "systemctl enable --now runyard.service" in done.stdout
    assert cli("daemon", "--install-systemd").returncode == 2
