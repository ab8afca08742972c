"""The execution record, declared once: the row, its SQLite columns and what clients see.

A new field is one line here (plus its migration in schema.py, and its wire field in
protocol/methods.py's ExecutionView if clients should see it): the column list, the
row codec and the view are all derived from this declaration.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any, Final

from .lifecycle import TERMINAL

_JSON_TEXT: Final = {"json": True}  # stored as JSON text
_HIDDEN: Final = {"view": None}  # kept for the daemon's own use, not shown to clients


@dataclass(slots=True)
class ExecutionRow:
    # What a submit gives.
    step: str
    owner: str
    owner_uid: int
    image: str
    command: str
    snapshot: str
    config_path: str = "valohai.yaml"  # shown: `restart --adhoc` checks the working tree's copy
    title: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict, metadata=_JSON_TEXT)
    inputs: dict[str, list[str]] = field(default_factory=dict, metadata=_JSON_TEXT)
    environment: dict[str, str] = field(default_factory=dict, metadata={"json": True, "view": None})
    commit_ref: str | None = field(default=None, metadata={"view": "commit"})
    restarted_from: int | None = None
    # pool, gpus, cpus, memory_mb, cpu_max, memory_max_mb
    resources: dict[str, Any] = field(default_factory=dict, metadata=_JSON_TEXT)
    priority: int = 0
    # input name -> filename, keep_directories
    input_options: dict[str, dict[str, str]] = field(default_factory=dict, metadata={"json": True, "view": None})
    retries: int = 0  # times it may still go back to the queue after losing its host
    # `--var NAME=VALUE`: what the submitter chose (already merged into `environment`), shown
    # so an execution says how it was run; secrets never pass through here.
    variables: dict[str, str] = field(default_factory=dict, metadata=_JSON_TEXT)
    tags: list[str] = field(default_factory=list, metadata=_JSON_TEXT)
    task_id: int | None = field(default=None, metadata={"view": "task"})  # the task it is a child of
    stop_condition: str | None = None  # the step's: a leval expression over its latest metadata
    # What the daemon keeps.
    id: int = 0
    status: str = "queued"
    reason: str | None = None
    host: str | None = None
    container_id: str | None = None
    exit_code: int | None = None
    created_at: str = ""
    started_at: str | None = None  # the engine's start time, not when the daemon noticed
    ended_at: str | None = None  # the engine's finish time where it has one
    metadata_offset: int = field(default=0, metadata=_HIDDEN)
    metadata_count: int = field(default=0, metadata=_HIDDEN)
    gpu_ids: list[str] = field(default_factory=list, metadata={"json": True, "view": "gpus"})
    # Byte offset where the current attempt's log lines begin; it also names the attempt.
    log_base: int = field(default=0, metadata=_HIDDEN)
    cluster_job: str | None = None  # a Slurm execution's job id (its current attempt's)

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL


_FIELDS: Final = tuple(fields(ExecutionRow))
COLUMNS: Final = tuple(f.name for f in _FIELDS)
SELECT: Final = ", ".join(COLUMNS)
_JSON: Final = tuple(bool(f.metadata.get("json")) for f in _FIELDS)
# Row field -> the name clients see it under; fields mapped to None stay inside the daemon.
VIEW_NAMES: Final = {f.name: f.metadata.get("view", f.name) for f in _FIELDS}
_IS_JSON: Final = dict(zip(COLUMNS, _JSON, strict=True))


def row_of(values: Sequence[Any]) -> ExecutionRow:
    """A row from a SELECT of COLUMNS."""
    return ExecutionRow(**{name: json.loads(v) if is_json else v
                           for name, is_json, v in zip(COLUMNS, _JSON, values, strict=True)})


def column_values(row: ExecutionRow, names: Sequence[str]) -> list[Any]:
    """The values to store for ``names``, JSON fields encoded."""
    return [encode_field(n, getattr(row, n)) for n in names]


def encode_field(name: str, value: Any) -> Any:
    """One field's value as stored (JSON text for the JSON fields)."""
    return json.dumps(value) if _IS_JSON[name] else value


def view_fields(row: ExecutionRow) -> dict[str, Any]:
    """The row's fields under the names clients see them by."""
    return {shown: getattr(row, name) for name, shown in VIEW_NAMES.items() if shown is not None}
