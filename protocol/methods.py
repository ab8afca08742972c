"""The request methods: their parameters and results, shared by daemon and clients.

The daemon converts a request's ``params`` into the struct named here, so a
wrongly typed field becomes an ``invalid-params`` error that names the field.
"""

from __future__ import annotations

from typing import Final

import msgspec

TERMINAL_STATUSES: Final = frozenset({"complete", "error", "stopped"})
ALL_STATUSES: Final = ("created", "queued", "started", "stopping", "complete", "error", "stopped")


class GpuUseSample(msgspec.Struct):
    """One inventory reading of an execution's GPUs, in the order of its ``gpus``."""

    at: str
    utilization: list[int | None]  # percent; None where nvidia-smi had no value
    memory_used_mb: list[int | None]


class ExecutionView(msgspec.Struct, kw_only=True):
    id: int
    step: str
    title: str | None
    status: str
    reason: str | None
    owner: str
    owner_uid: int
    parameters: dict[str, object]
    inputs: dict[str, list[str]]
    image: str
    command: str
    snapshot: str
    commit: str | None
    host: str | None
    container_id: str | None
    exit_code: int | None
    created_at: str
    started_at: str | None
    ended_at: str | None
    restarted_from: int | None
    log_size: int = 0
    metadata: dict[str, object] = {}
    priority: int = 0
    resources: dict[str, object] = {}
    gpus: list[str] = []
    input_progress: dict[str, object] | None = None  # while inputs are fetched: input, done, total bytes
    retries: int = 0  # host losses it may still survive by going back to the queue
    tags: list[str] = []
    variables: dict[str, str] = {}  # the --var values it was given (not secrets: those are never shown)
    task: int | None = None  # the task it is a child of
    stop_condition: str | None = None  # the step's: it is stopped when its metadata meets this
    gpu_use: list[GpuUseSample] = []  # executions.get only: its GPUs' readings over time, oldest first
    config_path: str = "valohai.yaml"  # the snapshot's file it was read from
    cluster_job: str | None = None  # a Slurm execution's job id (its current attempt's)


class OutputView(msgspec.Struct):
    path: str
    size: int
    sha256: str
    properties: dict[str, object] = {}  # from valohai.metadata.jsonl or <file>.metadata.json


class MetadataPoint(msgspec.Struct):
    n: int  # its number among all the execution's points, every attempt counted
    time: str
    values: dict[str, object]
    attempt: int = 0  # the attempt that printed it (where that attempt's log begins)


METADATA_PAGE_MAX: Final = 10_000
CHART_POINTS_MAX: Final = 10_000


class MetadataParams(msgspec.Struct, forbid_unknown_fields=True):
    """A page of an execution's metadata points: those numbered ``offset`` and on, at most ``limit``.

    By default only the current attempt's points; ``all_attempts`` gives every attempt's. With
    ``max_points`` (for charts) the daemon keeps every k-th point and the last, at most that many.
    """

    id: int
    offset: int = 0  # a reply's ``next``
    limit: int = 1000  # 1 to METADATA_PAGE_MAX; a page is also cut short to fit a frame
    max_points: int | None = None  # 2 to CHART_POINTS_MAX
    all_attempts: bool = False


class MetadataPage(msgspec.Struct):
    points: list[MetadataPoint]
    next: int | None  # the offset of the next page; None: there is no more
    total: int  # points in the whole selection (before any downsampling)
    attempt: int  # the execution's current attempt


# A parameter's raw value: text as typed, or (for a `multiple` parameter) a list of them.
RawParameter = str | list[str]


class SubmitParams(msgspec.Struct, forbid_unknown_fields=True):
    step: str
    snapshot: str
    parameters: dict[str, RawParameter] = {}  # a list: -p repeated or a file's list, one value each (`multiple`)
    title: str | None = None
    image: str | None = None
    commit: str | None = None
    inputs: dict[str, list[str]] = {}
    config_path: str = "valohai.yaml"
    pool: str | None = None
    gpus: int | None = None
    priority: int = 0
    retries: int = 0  # times it may go back to the queue if its host is lost for longer than the grace
    environment: dict[str, str] = {}  # --var NAME=VALUE, over the step's environment-variables
    tags: list[str] = []
    time_limit: float | None = None  # seconds, over the step's time-limit; 0: none
    no_output_timeout: float | None = None  # seconds, over the step's no-output-timeout; 0: none


class RestartParams(msgspec.Struct, forbid_unknown_fields=True):
    """A new execution like ``id`` (Valohai's "copy execution"), with what is given here changed.

    ``snapshot`` (with ``commit``) runs other code with the old parameters and inputs: the step is
    read again from that snapshot. ``parameters`` and ``inputs`` replace the old values by name;
    ``environment`` adds to or replaces the old --var values; ``tags`` replaces the old tags.
    """

    id: int
    parameters: dict[str, RawParameter] = {}
    inputs: dict[str, list[str]] = {}
    image: str | None = None
    title: str | None = None
    gpus: int | None = None
    snapshot: str | None = None
    commit: str | None = None
    environment: dict[str, str] = {}
    tags: list[str] | None = None
    time_limit: float | None = None
    no_output_timeout: float | None = None


class SnapshotHasParams(msgspec.Struct, forbid_unknown_fields=True):
    id: str


class SnapshotPutParams(msgspec.Struct, forbid_unknown_fields=True):
    id: str
    offset: int
    data: bytes
    final: bool = False


class IdParams(msgspec.Struct, forbid_unknown_fields=True):
    id: int


class StopParams(msgspec.Struct, forbid_unknown_fields=True):
    ids: list[int] = []
    all: bool = False


class ListParams(msgspec.Struct, forbid_unknown_fields=True):
    status: list[str] = []
    limit: int = 100
    before_id: int | None = None
    with_metadata: bool = False  # each view carries the latest value of every metadata key
    tags: list[str] = []  # only executions with any of these tags


class SnapshotFileParams(msgspec.Struct, forbid_unknown_fields=True):
    """One file of the snapshot an execution ran, by its path inside the repository."""

    id: int
    path: str
    max_bytes: int = 1024 * 1024


class SnapshotEntry(msgspec.Struct):
    """One file of a snapshot, as snapshots.files lists them."""

    path: str
    size: int


class SnapshotFile(msgspec.Struct):
    path: str
    size: int
    data: str  # UTF-8 text, undecodable bytes replaced; cut at max_bytes
    truncated: bool
    binary: bool


class RenameParams(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    title: str


class DeleteParams(msgspec.Struct, forbid_unknown_fields=True):
    id: int
    purge_outputs: bool = False


class LogsReadParams(msgspec.Struct, forbid_unknown_fields=True):
    """Exactly one of head, tail or offset mode; ``stream`` filters to 'stdout' or 'stderr'."""

    id: int
    head: int | None = None
    tail: int | None = None
    offset: int | None = None
    max_bytes: int = 1024 * 1024
    stream: str | None = None


class LogsReadResult(msgspec.Struct):
    data: str
    start: int
    end: int
    size: int
    # For head and unfiltered tail reads: how many records precede ``start``, counted against
    # the same size as the read, so a viewer can say exactly how many lines lie between two reads.
    first_line: int | None = None


class LogsFollowParams(msgspec.Struct, forbid_unknown_fields=True):
    """``sub`` is chosen by the client so it can listen before the first frame arrives."""

    id: int
    sub: int
    offset: int = 0


class LogsUnfollowParams(msgspec.Struct, forbid_unknown_fields=True):
    sub: int


class SubscribeParams(msgspec.Struct, forbid_unknown_fields=True):
    since: int | None = None


class StopResult(msgspec.Struct):
    stopped: list[int]
    already_ended: list[int]


class GpuView(msgspec.Struct, kw_only=True):
    index: int
    uuid: str
    name: str
    memory_total_mb: int | None
    memory_used_mb: int | None
    utilization: int | None
    execution: int | None  # who holds it


class ClusterView(msgspec.Struct, kw_only=True):
    """A Slurm cluster's partition as its last `sinfo` saw it, and this daemon's jobs there."""

    partition: str
    nodes: dict[str, int]  # Slurm node state (idle, mix, alloc, drain ...) -> how many
    gpus_total: int
    gpus_allocated: int
    jobs_pending: int
    jobs_running: int


class HostView(msgspec.Struct, kw_only=True):
    name: str
    state: str  # connecting, ready, unreachable, draining, disabled
    error: str
    pool: str
    runtime: str
    address: str
    gpus: list[GpuView]
    cpus: int | None
    cpus_used: float
    memory_mb: int | None
    memory_used_mb: int
    executions: list[int]
    max_concurrent: int
    scanned_at: str | None
    problems: list[str] = []
    failed_attempts: int = 0  # reconnects that failed in a row
    retry_in_seconds: float | None = None  # when the next reconnect starts (the backoff, capped)
    cluster: ClusterView | None = None  # a [[clusters]] entry's login node: what Slurm has


class HostNameParams(msgspec.Struct, forbid_unknown_fields=True):
    name: str


class HostsScanParams(msgspec.Struct, forbid_unknown_fields=True):
    name: str | None = None


class ShellOpenParams(msgspec.Struct, forbid_unknown_fields=True):
    """A shell (or ``command``, an argv) inside a running execution; output comes as shell-data frames
    for ``sub`` (chosen by the client), and one shell-exit ends it."""

    id: int
    sub: int
    command: list[str] = []  # empty: an interactive shell
    tty: bool = False
    rows: int = 24
    cols: int = 80
    term: str = "xterm"


class ShellInputParams(msgspec.Struct, forbid_unknown_fields=True):
    sub: int
    data: bytes = b""
    eof: bool = False  # no more input (ignored with a terminal: send ^D as data instead)


class ShellResizeParams(msgspec.Struct, forbid_unknown_fields=True):
    sub: int
    rows: int
    cols: int


class ShellCloseParams(msgspec.Struct, forbid_unknown_fields=True):
    sub: int


class DoctorCheck(msgspec.Struct):
    name: str
    ok: bool
    detail: str
