"""`runyard doctor HOST`: each thing a host needs, checked live, with what to fix when it is wrong."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Final

from .config import ClusterSection
from .hosts import Host
from .inventory import GPU_QUERY, parse_gpus
from .runtime_slurm import ClusterHost
from .transport import LinkError, Transport, q

if TYPE_CHECKING:
    from .runtime_docker import DockerRuntime

DISK_LOW_MB: Final = 10 * 1024


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


async def diagnose(host: Host) -> list[Check]:
    if isinstance(host, ClusterHost):
        return await diagnose_cluster(host)
    s = host.settings
    where = "this machine" if s.ssh is None else f"{s.ssh.user + '@' if s.ssh.user else ''}{s.ssh.address or s.name}"
    transport = host.transport
    if host.link != "ready" or transport is None:
        why = host.error or host.state
        return [Check("connection", False, f"{where}: {why}"),
                *(Check(name, False, "not checked: no connection")
                  for name in ("runtime", "nvidia-smi", "disk space"))]
    checks = [Check("connection", True, f"{where}: connected")]
    checks.append(await _runtime(host))
    gpu_check, gpu_count = await _nvidia_smi(transport)
    checks.append(gpu_check)
    from .runtime_docker import DockerRuntime  # imported by a Docker host already

    if s.runtime == "docker" and isinstance(host.runtime, DockerRuntime):
        checks.append(await _container_toolkit(host.runtime, gpu_count, s.gpu_device_requests))
    checks.append(await _disk(transport, host.work_root))
    if host.remote:
        checks.append(await _file_transfer(transport, host.work_root))
    return checks


async def _file_transfer(transport: Transport, path: str) -> Check:
    try:
        await transport.get_tree(f"{path}/.runyard-doctor-does-not-exist", Path("/nonexistent"))
    except LinkError as exc:
        return Check("file transfer (sftp)", False,
                     f"{exc}: enable the SFTP subsystem in the host's sshd_config "
                     "(Subsystem sftp /usr/lib/openssh/sftp-server)")
    return Check("file transfer (sftp)", True, "SFTP works")


async def _runtime(host: Host) -> Check:
    runtime = host.runtime
    if runtime is None:
        return Check("runtime", False, "no runtime: " + (host.error or "not connected"))
    try:
        version = await runtime.ping()
    except Exception as exc:
        fix = ("is dockerd running, and may the SSH user use its socket (docker group)?"
               if host.settings.runtime == "docker" else "install util-linux (setsid) and coreutils (tail)")
        return Check("runtime", False, f"{exc}: {fix}")
    label = f"Docker {version}" if host.settings.runtime == "docker" else version
    return Check("runtime", True, label)


async def _nvidia_smi(transport: Transport) -> tuple[Check, int]:
    try:
        result = await transport.run(f"command -v nvidia-smi >/dev/null 2>&1 || exit 127; {GPU_QUERY}", timeout=60)
    except LinkError as exc:
        return Check("nvidia-smi", False, str(exc)), 0
    if result.status == 127:
        return Check("nvidia-smi", True, "not installed: this host offers no GPUs (fine for CPU-only hosts)"), 0
    if result.status != 0:
        return Check("nvidia-smi", False, f"fails: {result.error_text} (driver not loaded or mismatched?)"), 0
    gpus, problems = parse_gpus(result.stdout.decode("utf-8", "replace"))
    if problems:
        return Check("nvidia-smi", False, "; ".join(problems)), len(gpus)
    models = ", ".join(sorted({g.name for g in gpus})) or "none"
    return Check("nvidia-smi", True, f"{len(gpus)} GPUs ({models})"), len(gpus)


async def _container_toolkit(runtime: DockerRuntime, gpus: int, device_requests: bool) -> Check:
    try:
        info = await runtime.info()
    except Exception as exc:
        return Check("nvidia container runtime", False, f"cannot read docker info: {exc}")
    runtimes = set((info.get("Runtimes") or {}).keys())
    default = str(info.get("DefaultRuntime", ""))
    if gpus == 0:
        return Check("nvidia container runtime", True, "not needed: no GPUs")
    if not device_requests and default != "nvidia":
        return Check("nvidia container runtime", False,
                     f"gpu_mode = \"env\" needs nvidia as the engine's default runtime (it is {default!r}): "
                     "set default-runtime in /etc/docker/daemon.json, or use gpu_mode = \"device-request\"")
    if "nvidia" not in runtimes and default != "nvidia":
        return Check("nvidia container runtime", False,
                     "not configured: install nvidia-container-toolkit, run "
                     "`nvidia-ctk runtime configure --runtime=docker` and restart dockerd")
    return Check("nvidia container runtime", True, f"present (default runtime: {default or '?'})")


async def _disk(transport: Transport, path: str) -> Check:
    try:
        result = await transport.run(f"df -Pk {q(path)} | tail -n 1", timeout=30)
    except LinkError as exc:
        return Check("disk space", False, str(exc))
    fields = result.stdout.decode("utf-8", "replace").split()
    try:
        free_mb = int(fields[3]) // 1024
    except (IndexError, ValueError):
        return Check("disk space", False, f"cannot read df for {path}: {result.error_text}")
    detail = f"{free_mb / 1024:.1f} GiB free under {path}"
    if free_mb < DISK_LOW_MB:
        return Check("disk space", False, f"only {detail}: free space, or point work_dir elsewhere")
    return Check("disk space", True, detail)


async def diagnose_cluster(host: ClusterHost) -> list[Check]:
    """A Slurm cluster's login node: the connection, sbatch and squeue, the partition, the work directory
    as a compute node sees it (a one-second job), the container mode, disk space and SFTP."""
    transport = host.transport
    c = host.cluster
    where = f"{c.user + '@' if c.user else ''}{c.address or c.name}"
    if host.link != "ready" or transport is None:
        return [Check("connection", False, f"{where}: {host.error or host.state}"),
                *(Check(name, False, "not checked: no connection")
                  for name in ("sbatch", "partition", "shared work directory", "disk space"))]
    checks = [Check("connection", True, f"{where}: connected"), await _runtime(host)]
    checks[-1] = Check("sbatch", checks[-1].ok, checks[-1].detail)
    p = host.partition
    if p is None or not p.nodes:
        checks.append(Check("partition", False, f"partition {c.partition or '(default)'} has no nodes: check "
                                                "`partition` against `sinfo -s` on the login node"))
    else:
        nodes = ", ".join(f"{n} {state}" for state, n in sorted(p.nodes.items()))
        checks.append(Check("partition", True, f"{c.partition or '(default)'}: {nodes}; {p.gpus_total} GPUs"))
    checks.append(await _shared_work_dir(transport, host.work_root, c.partition))
    checks.append(await _container(transport, c))
    checks.append(await _disk(transport, host.work_root))
    checks.append(await _file_transfer(transport, host.work_root))
    return checks


async def _shared_work_dir(transport: Transport, path: str, partition: str) -> Check:
    """A file written on the login node must be seen by a compute node: one short job (srun waits at
    most 30 s for a node) looks for it."""
    probe = f"{path}/.runyard-doctor-{secrets.token_hex(4)}"
    where = f" -p {q(partition)}" if partition else ""
    try:
        result = await transport.run(
            f"touch {q(probe)} && srun{where} -N 1 -n 1 -t 1 --immediate=30 test -e {q(probe)}; s=$?; "
            f"rm -f {q(probe)}; exit $s", timeout=60)
    except LinkError as exc:
        return Check("shared work directory", False, str(exc))
    if result.status != 0:
        return Check("shared work directory", False,
                     f"a compute node does not see {path} ({result.error_text}): work_dir must be on the "
                     "file system the login and compute nodes share")
    return Check("shared work directory", True, f"{path} is seen by a compute node")


async def _container(transport: Transport, c: ClusterSection) -> Check:
    """container = "oci": each image's bundle holds a config.json and a root file system."""
    if c.container != "oci":
        return Check("container", True, f'"{c.container}": the command runs on the node as it is')
    missing = []
    for image, bundle in sorted(c.oci_bundles.items()):
        result = await transport.run(f"test -f {q(bundle)}/config.json && test -d {q(bundle)}/rootfs")
        if result.status != 0:
            missing.append(f"{image} ({bundle})")
    if missing:
        return Check("container", False, "OCI bundles without config.json or rootfs/: " + ", ".join(missing))
    return Check("container", True, f'"oci": {len(c.oci_bundles)} bundle(s), run with srun --container')
