"""Running the daemon as a service: systemd's readiness protocol, its unit, and checking a config.

sd_notify is a datagram on the Unix socket named by $NOTIFY_SOCKET; a few lines of socket
code instead of a dependency. Without systemd (no $NOTIFY_SOCKET) nothing here does anything.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from .config import Config
from .doctor import Check, diagnose
from .hosts import Host, all_settings
from .runtime_slurm import cluster_hosts

UNIT_NAME: Final = "runyard.service"

# The unit shipped in contrib/systemd/runyard.service; ExecStart is filled in when installed.
# The daemon is root by design (it runs containers and processes as their owners, reads SSH keys
# and the Docker socket), so the hardening keeps what that needs and shuts off the rest: no new
# kernel modules, clock or hostname changes, a read-only /usr, /boot and /etc. It keeps the users'
# view of /home and /tmp (no ProtectHome, no PrivateTmp): local-path inputs are read there, as
# their submitter could.
UNIT_TEMPLATE: Final = """\
[Unit]
Description=runyard: Valohai-style executions on the lab's own machines
After=network-online.target docker.service
Wants=network-online.target

[Service]
Type=notify
NotifyAccess=main
ExecStart={exec_start}
# SIGTERM stops managing, not running: executions go on and are reattached at the next start.
# Only the daemon is signalled: plain processes it started on this machine (the process runtime)
# live in this unit's cgroup, and KillMode=mixed or control-group would kill them with it.
KillMode=process
KillSignal=SIGTERM
TimeoutStartSec=120
TimeoutStopSec=90
Restart=on-failure
RestartSec=5
RuntimeDirectory=runyard
RuntimeDirectoryMode=0755
RuntimeDirectoryPreserve=yes
StateDirectory=runyard
StateDirectoryMode=0700
LimitNOFILE=1048576
# Hardening that leaves what a root daemon with the Docker socket and SSH keys needs.
ProtectSystem=full
ProtectKernelModules=yes
ProtectKernelTunables=yes
ProtectKernelLogs=yes
ProtectControlGroups=yes
ProtectClock=yes
ProtectHostname=yes
LockPersonality=yes
RestrictRealtime=yes
RestrictSUIDSGID=no
RestrictNamespaces=no
RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK
SystemCallArchitectures=native

[Install]
WantedBy=multi-user.target
"""

DEFAULT_EXEC: Final = "/usr/local/bin/runyard daemon --config /etc/runyard/config.toml"


def unit_text(exec_start: str = DEFAULT_EXEC) -> str:
    return UNIT_TEMPLATE.format(exec_start=exec_start)


def notify(state: str) -> bool:
    """Tell the service manager ``state`` (e.g. "READY=1"); False when there is none to tell."""
    address = os.environ.get("NOTIFY_SOCKET", "")
    if not address or address[0] not in "/@":
        return False
    if address[0] == "@":
        address = "\0" + address[1:]  # Linux abstract namespace
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as sock:
            sock.connect(address)
            sock.sendall(state.encode())
    except OSError:
        return False  # a service manager that went away is not the daemon's failure
    return True


def install_systemd(config_path: str, unit_dir: Path, *, reload: bool = True) -> tuple[Path, list[str]]:
    """Write the unit for this installation; (its path, what is left for the admin to run)."""
    runyard = shutil.which("runyard")
    command = [runyard] if runyard and Path(runyard).resolve().parent == Path(sys.executable).resolve().parent \
        else [sys.executable, "-m", "runyard.cli"]
    exec_start = " ".join([*command, "daemon", "--config", os.path.abspath(config_path)])
    unit_dir.mkdir(parents=True, exist_ok=True)
    path = unit_dir / UNIT_NAME
    # Made afresh under a private name and renamed over: never written through a link left there.
    fd, tmp = tempfile.mkstemp(dir=unit_dir, prefix=".runyard-unit-")
    with os.fdopen(fd, "w") as fh:
        fh.write(unit_text(exec_start))
    os.chmod(tmp, 0o644)
    os.replace(tmp, path)
    steps = [f"systemctl enable --now {UNIT_NAME}"]
    # Only a directory systemd reads is worth a reload; a staging directory (a package build) is not.
    read = unit_dir.resolve() in (Path("/etc/systemd/system"), Path("/run/systemd/system"))
    if reload and read and shutil.which("systemctl"):
        done = subprocess.run(["systemctl", "daemon-reload"], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            steps.insert(0, "systemctl daemon-reload")
    else:
        steps.insert(0, "systemctl daemon-reload")
    return path, steps


@dataclass(frozen=True, slots=True)
class HostReport:
    name: str
    pool: str
    runtime: str
    checks: list[Check]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


async def check_hosts(config: Config) -> list[HostReport]:
    """Reach every configured host the way the daemon would, run no execution, and say what was found.

    Nothing under the data directory is written: SSH's generated config and forwarded Docker
    sockets go to a private temporary directory. On a host, only its work directory is made.
    """
    sockets = Path(tempfile.mkdtemp(prefix="runyard-check-"))
    try:
        settings = [s if s.ssh is not None else dataclasses.replace(s, work_dir=_existing(Path(s.work_dir)))
                    for s in all_settings(config) if s.enabled]
        hosts = [Host(s, daemon_id="", ssh=config.ssh, sockets_dir=sockets, on_change=lambda _h: None)
                 for s in settings]
        # A cluster's login node is checked as `runyard doctor CLUSTER` checks it. Job names need a
        # daemon id, and the check has no store to take one from: its own (nothing is submitted; the
        # pool's directory under the work directory, <work_dir>/checkconfig/<pool>, is made as a daemon's is).
        hosts += [h for h in cluster_hosts(config, on_pending=lambda _id, _why: None, daemon_id="checkconfig",
                                           ssh=config.ssh,
                                           sockets_dir=sockets, on_change=lambda _h: None) if h.settings.enabled]
        return list(await asyncio.gather(*(_check_host(h) for h in hosts)))
    finally:
        shutil.rmtree(sockets, ignore_errors=True)


def _existing(path: Path) -> str:
    """The nearest directory that exists: this machine's work directory is not made by a check
    (the daemon makes the data directory private on its first start), its file system is the same."""
    while not path.exists() and path.parent != path:
        path = path.parent
    return str(path)


async def _check_host(host: Host) -> HostReport:
    try:
        await host.connect_once()
        checks = await diagnose(host)
        inventory = host.inventory
        if inventory is not None and inventory.problems:
            checks.append(Check("inventory", False, "; ".join(inventory.problems)))
    finally:
        await host.close()
    return HostReport(host.name, host.settings.pool, host.runtime_name, checks)
