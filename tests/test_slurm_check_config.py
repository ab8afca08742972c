"""`runyard daemon --check-config` checks a Slurm cluster's login node as `runyard doctor` does, against
the real single-node cluster and a real sshd as its login node; a cluster whose login node is down fails."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .pool import SshHost, free_port, make_client_key
from .test_slurm import cluster_config, slurm_cluster  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("slurm_cluster")]


def test_check_config_checks_each_cluster(tmp_path: Path) -> None:
    key = make_client_key(tmp_path)
    login = SshHost("login", tmp_path / "login", key, None)
    login.prepare()
    login.start()
    try:
        known = tmp_path / "known_hosts"
        known.write_text(login.known_hosts_line())
        data = tmp_path / "data"
        config = tmp_path / "config.toml"
        config.write_text(f'[daemon]\nsocket = "{tmp_path / "s"}"\ndata_dir = "{data}"\n[local]\nenabled = false\n'
                          + cluster_config(login, known)
                          + f'[[clusters]]\nname = "gone"\naddress = "127.0.0.1"\nport = {free_port()}\n'
                            f'user = "root"\nidentity = "{login.client_key}"\n')
        done = subprocess.run([sys.executable, "-m", "runyard.cli", "daemon", "--config", str(config),
                               "--check-config", "--json"], capture_output=True, text=True, timeout=180,
                              env={**os.environ, "NO_COLOR": "1"})
        assert done.returncode == 1, done.stdout + done.stderr
        report = {h["name"]: h for h in json.loads(done.stdout)["hosts"]}
        hpc = {c["name"]: c for c in report["hpc"]["checks"]}
        assert (report["hpc"]["runtime"], report["hpc"]["pool"], report["hpc"]["ok"]) == ("slurm", "hpc", True), hpc
        for check in ("connection", "sbatch", "partition", "shared work directory"):
            assert hpc[check]["ok"], hpc
        assert hpc["partition"]["detail"].startswith("gpu:"), hpc
        gone = report["gone"]
        assert not gone["ok"] and gone["checks"][0]["name"] == "connection", gone
        assert not data.exists()  # nothing started
    finally:
        login.kill()
