"""Task requests (Valohai's grid, random and manual searches): parameters and views."""

from __future__ import annotations

import msgspec

from .methods import RawParameter


class VariantSpec(msgspec.Struct, forbid_unknown_fields=True):
    """One variant parameter, as valohai.yaml's task parameters: a style and its rules."""

    name: str
    style: str = "single"
    rules: dict[str, object] = {}


class TaskCreateParams(msgspec.Struct, forbid_unknown_fields=True):
    """A task and all its children, created in one request (and one transaction).

    With ``blueprint``, the task is the valohai.yaml `task:` of that name; the fields below it
    here override the blueprint's where given. ``parameters`` are the same for every child.
    """

    snapshot: str
    step: str = ""
    blueprint: str | None = None
    type: str | None = None  # grid_search (default), random_search, manual_search, bayesian_tpe, distributed
    variants: list[VariantSpec] = []
    parameter_sets: list[dict[str, object]] = []
    execution_count: int | None = None  # random_search: how many children (default 20)
    seed: int | None = None  # random_search: the same seed draws the same children
    maximum_queued_executions: int | None = None
    on_child_error: str | None = None
    stop_condition: str | None = None
    execution_batch_size: int | None = None  # bayesian_tpe: children per round after the first batch
    optimization_target_metric: str | None = None  # bayesian_tpe: the metadata key optimised
    optimization_target_value: float | None = None  # bayesian_tpe: the value it is optimised towards
    parameters: dict[str, RawParameter] = {}
    title: str | None = None
    image: str | None = None
    commit: str | None = None
    inputs: dict[str, list[str]] = {}
    config_path: str = "valohai.yaml"
    pool: str | None = None
    gpus: int | None = None
    priority: int = 0
    retries: int = 0
    environment: dict[str, str] = {}
    tags: list[str] = []
    time_limit: float | None = None
    no_output_timeout: float | None = None


class TaskView(msgspec.Struct, kw_only=True):
    id: int
    name: str | None
    title: str | None
    type: str
    step: str
    status: str
    reason: str | None
    owner: str
    owner_uid: int
    created_at: str
    ended_at: str | None
    total: int  # children
    children: dict[str, int]  # how many children are in each status
    maximum_queued_executions: int | None = None
    on_child_error: str = "continue-and-complete"
    stop_condition: str | None = None
    execution_ids: list[int] = []  # in the order they were made (only in tasks.get)
    execution_count: int | None = None  # random_search, bayesian_tpe: children asked for
    execution_batch_size: int | None = None  # bayesian_tpe: children per round
    seed: int | None = None
    optimization_target_metric: str | None = None  # the metadata key children are ranked by
    optimization_target_value: float | None = None  # ranked by distance to it (else lowest first)


class TaskIdParams(msgspec.Struct, forbid_unknown_fields=True):
    id: int


class TaskListParams(msgspec.Struct, forbid_unknown_fields=True):
    limit: int = 100
    status: list[str] = []


class TaskDeleteParams(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    purge_outputs: bool = False


class TaskStopResult(msgspec.Struct):
    task: int
    stopped: list[int]  # children that were still active
