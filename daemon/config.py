"""The daemon's TOML configuration: strict, so a typo is an error naming the key."""

from __future__ import annotations

import os
import re
import tomllib
from pathlib import Path
from typing import Final, Literal

import msgspec

from .opsconfig import MetricsSection, NotifySection, RetentionSection, check_ops
from .registries import RegistrySection
from .registries import check as check_registries


class ConfigError(Exception):
    pass


_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_HOST_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")


class DaemonSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    socket: str = "/run/runyard/runyard.sock"
    socket_mode: str = "0660"
    socket_group: str = ""
    data_dir: str = "/var/lib/runyard"
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    admins: list[str] = []
    max_frame_bytes: int = 4 * 1024 * 1024
    events_retained: int = 100_000
    # A client whose socket stays full this long (it stopped reading, say while following a
    # flooding log) is disconnected; until then only its own answers wait.
    slow_client_seconds: float = 30.0
    # Requests of one connection handled at once; beyond this the daemon reads no more of its
    # requests until one is answered, so one client cannot pile up unbounded work.
    max_requests_in_flight: int = 64
    # Largest code snapshot a client may upload (the tar of its repository), in MiB.
    max_snapshot_mb: int = 2048
    # Time one search (all its logs.search requests together) may take before it is refused.
    search_seconds: float = 5.0


class DefaultsSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    image: str = "runyard-base:bookworm-py3"
    stop_grace_seconds: int = 10
    # How often a running execution's outputs are looked at for files made read-only
    # (Valohai's live outputs), which are stored at once; 0 turns it off.
    live_outputs_seconds: float = 10.0


Auto = Literal["auto"]
Runtime = Literal["docker", "process"]
GpuMode = Literal["device-request", "env"]
Pull = Literal["missing", "never"]
RunAs = Literal["image", "owner"]


DEFAULT_CAPABILITIES: Final = ("CHOWN", "DAC_OVERRIDE", "FOWNER", "FSETID", "KILL", "SETGID", "SETUID")


class _HostCommon(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """What every host has, this machine included."""

    enabled: bool = True
    runtime: Runtime = "docker"
    docker_socket: str = "/var/run/docker.sock"  # on the host
    max_concurrent: int = 4
    pull: Pull = "missing"
    pull_timeout_seconds: int = 300
    pool: str = "default"
    gpus: Auto | int = "auto"
    cpus: Auto | int = "auto"
    memory_mb: Auto | int = "auto"
    gpu_mode: GpuMode = "device-request"
    # Containers start with every capability dropped and only these added back: what a training
    # job that installs packages and manages its own files needs, without raw sockets, mknod,
    # chroot or capability changes. "ALL" as the only entry keeps Docker's own default set.
    capabilities: list[str] = msgspec.field(default_factory=lambda: list(DEFAULT_CAPABILITIES))
    pids_limit: int = 16384  # processes and threads per container; 0 = no limit
    # Who the command runs as: "image", the image's own user (often root; a plain process runs as
    # the SSH user); "owner", the submitting user's uid and gid, who then owns the files it writes.
    run_as: RunAs = "image"


class LocalHostSection(_HostCommon, kw_only=True):
    pool: str = "local"


class HostSection(_HostCommon, kw_only=True):
    """One pool machine reached over SSH."""

    name: str
    address: str = ""  # host name, IP or ~/.ssh/config alias; default: name
    port: int = 0  # 0: from ssh config, else 22
    user: str = ""  # "": from ssh config, else the daemon's user
    identity: str = ""  # "": ssh config, ssh-agent and the default keys
    known_hosts: str = ""  # "": the [ssh] default
    work_dir: str = ".runyard/work"  # on the host; relative to the login directory


class ClusterSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A pool that is a Slurm partition: runyard submits jobs through the login node (reached over SSH,
    with the same rules as [[hosts]]) and Slurm places them."""

    name: str
    pool: str = ""  # "": the cluster's name
    address: str = ""
    port: int = 0
    user: str = ""
    identity: str = ""
    known_hosts: str = ""
    # On the file system the login node and the compute nodes share; relative to the login directory.
    work_dir: str = ".runyard/work"
    partition: str = ""  # "": the cluster's default partition
    gres_type: str = ""  # e.g. "a100": --gres=gpu:a100:N
    account: str = ""
    qos: str = ""
    sbatch_args: list[str] = []  # appended to every sbatch, e.g. ["--constraint=ib"]
    container: Literal["none", "oci", "pyxis", "apptainer"] = "none"
    # container = "oci": a step's image -> an OCI bundle directory on the shared file system (its
    # rootfs/ and the config.json `runc spec` writes); the step runs in it under `srun --container`.
    oci_bundles: dict[str, str] = {}
    max_jobs: int = 100  # jobs submitted and not yet ended, at most; the rest wait in runyard's queue
    poll_seconds: float = 2.0  # one squeue for all of this daemon's jobs on the cluster, this often
    enabled: bool = True


class SshSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    config: str = "~/.ssh/config"
    known_hosts: str = "~/.ssh/known_hosts"
    connect_timeout_seconds: int = 15
    keepalive_seconds: int = 15
    keepalive_count_max: int = 3
    reconnect_min_seconds: float = 1.0
    reconnect_max_seconds: float = 60.0
    inventory_seconds: int = 60


class SchedulerSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    reserve_after_seconds: float = 300.0
    # How long executions wait for an unreachable host before they end as error host-lost
    # (or go back to the queue, if submitted with retries).
    host_lost_grace_seconds: float = 900.0


class PoolQuotaSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    max_active_per_user: int = 0  # 0: no limit of its own in this pool


class QuotasSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """Per user: executions beyond these wait as created (reason quota), see daemon/quotas.py."""

    max_active_per_user: int = 0  # queued, started or stopping at once; 0: no limit
    max_gpus_per_user: int = 0  # GPUs those ask for together; 0: no limit
    pools: dict[str, PoolQuotaSection] = {}  # pool name -> its own limit

    @property
    def enabled(self) -> bool:
        return bool(self.max_active_per_user or self.max_gpus_per_user
                    or any(p.max_active_per_user for p in self.pools.values()))


class S3Section(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    endpoint_url: str = ""  # "": AWS itself; e.g. http://127.0.0.1:9000 for MinIO or moto
    region: str = ""

    @property
    def options(self) -> dict[str, str]:
        """Keyword arguments for an S3 client; credentials are left to the usual AWS sources."""
        options = {}
        if self.endpoint_url:
            options["endpoint_url"] = self.endpoint_url
        if self.region:
            options["region_name"] = self.region
        return options


class CacheSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # Fetched inputs under <data_dir>/cache/inputs; least recently used go first beyond this.
    inputs_max_mb: int = 100 * 1024
    # The same for each pool host's own copy, <work_dir>/<daemon id>/.inputs.
    host_inputs_max_mb: int = 100 * 1024


class MlYamlSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    # MachineLabs dockerImageId -> the image to run it with
    images: dict[str, str] = {}


class StoreSection(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    kind: Literal["local", "s3"] = "local"
    path: str = ""  # kind "local": the directory ("" = <data_dir>/outputs)
    bucket: str = ""  # kind "s3": outputs go to s3://<bucket>/<prefix><execution id>/<path>
    prefix: str = "runyard/"


class Config(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    daemon: DaemonSection = msgspec.field(default_factory=DaemonSection)
    defaults: DefaultsSection = msgspec.field(default_factory=DefaultsSection)
    local: LocalHostSection = msgspec.field(default_factory=LocalHostSection)
    hosts: list[HostSection] = []
    clusters: list[ClusterSection] = []
    ssh: SshSection = msgspec.field(default_factory=SshSection)
    scheduler: SchedulerSection = msgspec.field(default_factory=SchedulerSection)
    mlyaml: MlYamlSection = msgspec.field(default_factory=MlYamlSection)
    quotas: QuotasSection = msgspec.field(default_factory=QuotasSection)
    s3: S3Section = msgspec.field(default_factory=S3Section)
    cache: CacheSection = msgspec.field(default_factory=CacheSection)
    store: StoreSection = msgspec.field(default_factory=StoreSection)
    # Environment variables every execution gets, whose values runyard never shows: masked as
    # *** in stored logs and metadata, never stored with the execution, never in events or views.
    secrets: dict[str, str] = {}
    # Per user: only the executions that user owns get these (so one user's keys never reach
    # another user's code on a shared daemon); they win over [secrets] of the same name.
    user_secrets: dict[str, dict[str, str]] = {}
    # Registry host -> the login to pull its images with (see daemon/registries.py)
    registries: dict[str, RegistrySection] = {}
    # Operations (see daemon/opsconfig.py): a Prometheus endpoint, webhooks, housekeeping.
    metrics: MetricsSection = msgspec.field(default_factory=MetricsSection)
    notify: list[NotifySection] = []
    retention: RetentionSection = msgspec.field(default_factory=RetentionSection)

    @property
    def data_dir(self) -> Path:
        return Path(self.daemon.data_dir)

    @property
    def outputs_dir(self) -> Path:
        return Path(self.store.path) if self.store.path else self.data_dir / "outputs"

    @property
    def socket_mode(self) -> int:
        return int(self.daemon.socket_mode, 8)


def _check(config: Config) -> None:
    try:
        mode = int(config.daemon.socket_mode, 8)
    except ValueError:
        raise ConfigError(
            f"daemon.socket_mode: {config.daemon.socket_mode!r} is not an octal mode like \"0660\""
        ) from None
    if not 0 <= mode <= 0o777:
        raise ConfigError(f"daemon.socket_mode: {config.daemon.socket_mode!r} is out of range")
    if config.local.max_concurrent < 0:
        raise ConfigError("local.max_concurrent: must not be negative (0 = no limit)")
    quotas = config.quotas
    limits = [("quotas.max_active_per_user", quotas.max_active_per_user),
              ("quotas.max_gpus_per_user", quotas.max_gpus_per_user)]
    limits += [(f"quotas.pools.{n}.max_active_per_user", p.max_active_per_user) for n, p in quotas.pools.items()]
    for key, limit in limits:
        if limit < 0:
            raise ConfigError(f"{key}: must not be negative (0 = no limit)")
    tables = [("secrets", config.secrets)] + [(f"user_secrets.{u}", t) for u, t in config.user_secrets.items()]
    for where, table in tables:
        for name, value in table.items():
            if not _ENV_NAME.fullmatch(name):
                raise ConfigError(f"{where}.{name}: not an environment variable name (letters, digits, '_')")
            if len(value) < 4:
                # A very short value would mask ordinary text everywhere it occurs.
                raise ConfigError(f"{where}.{name}: the value must be at least 4 characters")
    seen = {"local"}
    for i, host in enumerate(config.hosts):
        where = f"hosts[{i}]"
        if not _HOST_NAME.fullmatch(host.name):
            raise ConfigError(f"{where}.name: {host.name!r} must be letters, digits, '.', '_' or '-'")
        if host.name in seen:
            reason = "is reserved for this machine" if host.name == "local" else "is used twice"
            raise ConfigError(f"{where}.name: {host.name!r} {reason}")
        seen.add(host.name)
        if host.max_concurrent < 0:
            raise ConfigError(f"{where}.max_concurrent: must not be negative (0 = no limit)")
        if not 0 <= host.port <= 65535:
            raise ConfigError(f"{where}.port: {host.port} is not a TCP port")
    for i, cluster in enumerate(config.clusters):
        where = f"clusters[{i}]"
        if not _HOST_NAME.fullmatch(cluster.name) or cluster.name in seen:
            raise ConfigError(f"{where}.name: {cluster.name!r} must be letters, digits, '.', '_' or '-', "
                              "and not the name of a host or another cluster")
        seen.add(cluster.name)
        if cluster.pool and not _HOST_NAME.fullmatch(cluster.pool):
            raise ConfigError(f"{where}.pool: {cluster.pool!r} must be letters, digits, '.', '_' or '-'")
        for key in ("partition", "gres_type", "account", "qos"):
            if not re.fullmatch(r"[A-Za-z0-9_.:+-]{0,64}", getattr(cluster, key)):
                raise ConfigError(f"{where}.{key}: {getattr(cluster, key)!r} is not a Slurm name")
        if cluster.max_jobs < 1:
            raise ConfigError(f"{where}.max_jobs: must be at least 1")
        if cluster.poll_seconds < 0.2:
            raise ConfigError(f"{where}.poll_seconds: must be at least 0.2")
        if cluster.container not in ("none", "oci"):
            raise ConfigError(f'{where}.container: "{cluster.container}" is not supported yet; "none" runs the '
                              'command on the node as it is, "oci" in a bundle (see the README\'s Slurm section)')
        if cluster.container == "oci" and not cluster.oci_bundles:
            raise ConfigError(f'{where}.oci_bundles: container = "oci" needs a bundle directory per image')
        for image, bundle in cluster.oci_bundles.items():
            if not bundle.startswith("/") or "\n" in bundle:
                raise ConfigError(f"{where}.oci_bundles: {image!r}: {bundle!r} is not an absolute path")
        if not 0 <= cluster.port <= 65535:
            raise ConfigError(f"{where}.port: {cluster.port} is not a TCP port")
    sections: list[tuple[str, LocalHostSection | HostSection]] = [("local", config.local)]
    sections += [(f"hosts[{i}]", h) for i, h in enumerate(config.hosts)]
    for section, values in sections:
        for key in ("gpus", "cpus", "memory_mb"):
            value = getattr(values, key)
            if isinstance(value, int) and value < 0:
                raise ConfigError(f"{section}.{key}: must be \"auto\" or a number, not {value}")
        if not _HOST_NAME.fullmatch(values.pool):
            raise ConfigError(f"{section}.pool: {values.pool!r} must be letters, digits, '.', '_' or '-'")
    if config.ssh.reconnect_min_seconds <= 0 or config.ssh.reconnect_max_seconds < config.ssh.reconnect_min_seconds:
        raise ConfigError("ssh.reconnect_min_seconds must be > 0 and at most ssh.reconnect_max_seconds")
    if config.defaults.stop_grace_seconds < 0:
        raise ConfigError("defaults.stop_grace_seconds: must not be negative")
    if config.store.kind == "s3" and not config.store.bucket:
        raise ConfigError('store.bucket: kind = "s3" needs a bucket')
    if config.daemon.max_frame_bytes < 64 * 1024:
        raise ConfigError("daemon.max_frame_bytes: must be at least 65536")
    if not 0 < config.daemon.search_seconds <= 60:
        raise ConfigError("daemon.search_seconds: must be more than 0 and at most 60")
    if config.daemon.max_requests_in_flight < 1:
        raise ConfigError("daemon.max_requests_in_flight: must be at least 1")
    if config.daemon.max_snapshot_mb < 1:
        raise ConfigError("daemon.max_snapshot_mb: must be at least 1")
    try:
        check_registries(config.registries)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    try:
        check_ops(config.metrics, config.notify, config.retention)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def _resolve_paths(config: Config, base: Path) -> None:
    """Relative paths in a config file are relative to that file, not the cwd."""

    def resolve(value: str) -> str:
        if not value:
            return value
        path = Path(os.path.expanduser(value))
        return str(path if path.is_absolute() else (base / path).resolve())

    config.daemon.socket = resolve(config.daemon.socket)
    config.daemon.data_dir = resolve(config.daemon.data_dir)
    config.store.path = resolve(config.store.path)
    config.local.docker_socket = resolve(config.local.docker_socket)
    config.ssh.config = resolve(config.ssh.config)
    config.ssh.known_hosts = resolve(config.ssh.known_hosts)
    for hook in config.notify:
        hook.secret_file = resolve(hook.secret_file)
    for registry in config.registries.values():
        registry.password_file = resolve(registry.password_file)
    for cluster in config.clusters:
        cluster.identity = resolve(cluster.identity)
        cluster.known_hosts = resolve(cluster.known_hosts)
    for host in config.hosts:
        # identity and known_hosts live on this machine; docker_socket and work_dir on the host
        host.identity = resolve(host.identity)
        host.known_hosts = resolve(host.known_hosts)


def parse_config(text: str, *, source: str = "<config>", base: Path | None = None) -> Config:
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    try:
        config = msgspec.convert(raw, Config)
    except msgspec.ValidationError as exc:
        # msgspec names the path as `$.section.key`; say it the way the file does.
        raise ConfigError(f"{source}: {str(exc).replace('$.', '')}") from None
    try:
        _check(config)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    _resolve_paths(config, base or Path.cwd())
    return config


def exposed_secrets(path: str | Path | None, config: Config) -> str | None:
    """What to tell the admin when a config file holding secrets can be read by other users."""
    if path is None or not (config.secrets or any(config.user_secrets.values())):
        return None
    try:
        mode = os.stat(path).st_mode & 0o777
    except OSError:
        return None
    if not mode & 0o077:
        return None
    return (f"{path} holds secrets and is readable by other users (mode {mode:04o}): "
            f"chmod 600 {path}")


def load_config(path: str | Path | None) -> Config:
    if path is None:
        return parse_config("", source="<defaults>")
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config {path}: {exc.strerror}") from None
    return parse_config(text, source=str(path), base=path.resolve().parent)
