"""The per-execution directory that becomes /valohai inside the container.

The layout and the three config files are what valohai-utils reads, so scripts
written for Valohai find their parameters, inputs and outputs unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path
from typing import Any

import yaml

from .snapshots import SnapshotStore
from .store import ExecutionRow

CONTAINER_ROOT = "/valohai"


def container_environment(row: ExecutionRow, *, root: str = CONTAINER_ROOT,
                          in_container: bool = True) -> dict[str, str]:
    """The variables the user's command sees; ``root`` is /valohai, or the directory on the host."""
    env = dict(row.environment)
    gpus = list(row.gpu_ids)
    if in_container and gpus and not all(g.startswith("GPU-") for g in gpus):
        # GPUs granted by index are renumbered from 0 inside the container; UUIDs stay valid.
        cuda = ",".join(str(i) for i in range(len(gpus)))
    else:
        cuda = ",".join(gpus)
    env.update(
        {
            "VH_REPOSITORY_DIR": f"{root}/repository",
            "VH_INPUTS_DIR": f"{root}/inputs",
            "VH_OUTPUTS_DIR": f"{root}/outputs",
            "VH_CONFIG_DIR": f"{root}/config",
            # Always set: images such as nvidia/cuda default to "all", which would share GPUs.
            "NVIDIA_VISIBLE_DEVICES": ",".join(gpus) or "void",
            "CUDA_VISIBLE_DEVICES": cuda,
            "VH_JOB_ID": f"runyard-{row.id}",
            "VH_EXECUTION_ID": str(row.id),
            "VH_PROJECT_ID": PROJECT_ID,
            "PYTHONUNBUFFERED": "1",
            # docker-init is tini: signal the whole group so `sh -c` children get SIGTERM too
            "TINI_KILL_PROCESS_GROUP": "1",
        }
    )
    if row.task_id is not None:
        env["VH_TASK_ID"] = str(row.task_id)
    return env


# Valohai projects have ids; runyard has one project. A fixed UUID, so code that parses it works.
PROJECT_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "runyard:project"))


def execution_config(row: ExecutionRow) -> dict[str, Any]:
    """execution.json: every key Valohai documents for it, and a few more it writes."""
    return {
        "valohai.execution-id": str(row.id),
        "valohai.execution-counter": row.id,
        "valohai.execution-step": row.step,
        "valohai.execution-title": row.title,  # null without one, as Valohai writes it
        "valohai.execution-image": row.image,
        "valohai.execution-command": row.command,
        "valohai.execution-ctime": row.created_at.replace("Z", "+00:00"),
        "valohai.commit-identifier": row.commit_ref or f"snapshot:{row.snapshot[:12]}",
        "valohai.execution-created-at": row.created_at,
        "valohai.creator-id": row.owner_uid,
        "valohai.creator-name": row.owner,
        "valohai.project-id": PROJECT_ID,
        "valohai.project-name": "runyard",
        # Its task (Valohai's grid searches); null when not part of one, as Valohai writes them then.
        "valohai.task-counter": row.task_id,
        "valohai.task-id": None if row.task_id is None else str(row.task_id),
        "runyard.snapshot": row.snapshot,
        "runyard.tags": list(row.tags),
    }


def write_config(config: Path, name: str, data: dict[str, Any]) -> None:
    """``<name>.json`` and ``<name>.yaml``: Valohai writes both, and scripts read either."""
    (config / f"{name}.json").write_text(json.dumps(data, indent=2))
    (config / f"{name}.yaml").write_text(yaml.safe_dump(data, default_flow_style=False, sort_keys=False))


def prepare(work: Path, row: ExecutionRow, snapshots: SnapshotStore,
            inputs_json: dict[str, Any] | None = None) -> None:
    """Create (or re-create after a crash) the workspace; safe to call twice.

    The directory is 0700: the host's other users must not read an execution's code, parameters
    and inputs. What is inside keeps ordinary modes, so a container's own user can read it.
    """
    work.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(work, 0o700)  # the inputs may have made it first, under the umask
    repository = work / "repository"
    if repository.exists():
        shutil.rmtree(repository)
    snapshots.extract(row.snapshot, repository)
    for name in ("inputs", "outputs", "config"):
        (work / name).mkdir(parents=True, exist_ok=True)
    for input_name in row.inputs:
        (work / "inputs" / input_name).mkdir(exist_ok=True)
    config = work / "config"
    write_config(config, "parameters", row.parameters)
    described = {name: {"files": []} for name in row.inputs} | (inputs_json or {})
    write_config(config, "inputs", described)
    write_config(config, "execution", execution_config(row))


def remove(work: Path) -> None:
    shutil.rmtree(work, ignore_errors=True)
