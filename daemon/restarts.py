"""`restart N` with changes: Valohai's "copy execution".

The new execution is submitted like any other, from the old one's values with the changes laid
over them, so every check a submit makes (parameter types, inputs, pools, GPUs) applies to it.
With a new snapshot (`restart N --adhoc`) the step is read again from that code; parameters and
inputs the step no longer has are left out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

import yaml

from runyard.protocol.messages import ErrorCode
from runyard.protocol.methods import RestartParams

from .core import Core, OperationError
from .mlyaml import is_ml_yaml
from .record import ExecutionRow
from .runoptions import RunOptionError, checked, raw_parameters
from .snapshots import SnapshotError
from .steps import StepError, load_config


def has_changes(p: RestartParams) -> bool:
    return bool(p.parameters or p.inputs or p.environment or p.snapshot) or any(
        v is not None for v in (p.image, p.title, p.gpus, p.tags, p.time_limit, p.no_output_timeout))


async def restart_changed(core: Core, old: ExecutionRow, p: RestartParams, *, owner: str, owner_uid: int,
                          priority: int, secret_names: Iterable[str]) -> ExecutionRow:
    snapshot = p.snapshot or old.snapshot
    try:
        if not await asyncio.to_thread(core.snapshots.has, snapshot):
            what = "was not uploaded" if p.snapshot else f"of execution {old.id} is gone"
            raise OperationError(ErrorCode.INVALID_STATE, f"snapshot {snapshot[:12]} {what}")
        text = await asyncio.to_thread(core.snapshots.read_file, snapshot, old.config_path)
    except SnapshotError as exc:
        raise OperationError(ErrorCode.INVALID_PARAMS, str(exc)) from None
    if text is None:
        raise OperationError(ErrorCode.INVALID_PARAMS, f"the snapshot has no {old.config_path}")
    document = text.decode("utf-8", "replace")
    ml = is_ml_yaml(_yaml_or_none(document))
    # An ml.yaml's parameters are its fixed `pass-as` arguments, read again from the file.
    parameters = {} if ml else raw_parameters(old.parameters)
    inputs = dict(old.inputs)
    if p.snapshot and not ml:
        try:
            step = load_config(document, old.config_path).steps.get(old.step)
        except StepError as exc:
            raise OperationError(ErrorCode.INVALID_PARAMS, str(exc)) from None
        if step is not None:
            parameters = {k: v for k, v in parameters.items() if k in step.parameters}
            inputs = {k: v for k, v in inputs.items() if k in step.inputs}
    parameters.update(p.parameters)
    inputs.update(p.inputs)
    limits = {key: p_value if p_value is not None else float(old.resources.get(key, 0))
              for key, p_value in (("time_limit_seconds", p.time_limit),
                                   ("no_output_timeout_seconds", p.no_output_timeout))}
    try:
        options = checked({**old.variables, **p.environment}, old.tags if p.tags is None else p.tags,
                          limits["time_limit_seconds"], limits["no_output_timeout_seconds"], secret_names)
    except RunOptionError as exc:
        raise OperationError(ErrorCode.INVALID_PARAMS, str(exc)) from None
    gpus = p.gpus if p.gpus is not None else old.resources.get("gpus")
    return await core.submit(
        step=old.step, snapshot=snapshot, parameters=parameters, title=old.title if p.title is None else p.title,
        image=p.image or old.image, commit=p.commit if p.snapshot else old.commit_ref, inputs=inputs,
        config_path=old.config_path, owner=owner, owner_uid=owner_uid, restarted_from=old.id,
        pool=old.resources.get("pool"), gpus=None if gpus is None else int(gpus), priority=priority,
        retries=old.retries, options=options,
    )


def _yaml_or_none(text: str) -> object:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None
