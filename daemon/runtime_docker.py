"""Running executions as Docker containers, through aiodocker.

Containers are labelled with the daemon and execution ids, which is all the
daemon needs to find them again after a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any, Final

import aiodocker
import aiohttp

from .command_script import command_argv
from .docker_logs import LogStreamError, container_logs
from .logfile import LogFile
from .logstream import Decoded, DockerLogDecoder, split_timestamp
from .registries import Registries, RegistryError, pullable
from .runtime import (
    NEEDS_ROOT,
    ContainerGone,
    ContainerSpec,
    ContainerState,
    EngineError,
    ImageMissing,
    attempt_name,
    owner_ids,
    store_time_of_engine,
)
from .transport import Transport, q

LABEL_DAEMON: Final = "runyard.daemon"
LABEL_EXECUTION: Final = "runyard.execution"
LABEL_ATTEMPT: Final = "runyard.attempt"
LABEL_HOST: Final = "runyard.host"
LABEL_GPUS: Final = "runyard.gpus"

log = logging.getLogger("runyard.runtime")

# Lines asked of the engine to learn its last one: a few, so that a last line split into a couple
# of 16 KiB fragments still comes back whole.
_CHECK_TAIL: Final = 8


class DockerRuntime:
    """One host's Docker engine, through a local socket path (forwarded over SSH for pool hosts).

    Every host's containers carry its name as a label, so hosts that share an
    engine (the test pool does) never take each other's containers.
    """

    kind = "docker"
    in_container = True

    def __init__(self, docker_socket: str, daemon_id: str, *, host: str = "local", pull: str = "missing",
                 pull_timeout: float = 300, gpu_device_requests: bool = True, where: str = "",
                 capabilities: tuple[str, ...] = ("ALL",), pids_limit: int = 0,
                 owner_files: Transport | None = None, registries: Registries | None = None) -> None:
        self.docker_socket = docker_socket
        # How errors name the engine: a forwarded socket's local path would mean nothing to a user.
        self.where = where or docker_socket
        self.daemon_id = daemon_id
        self.host = host
        self.gpu_device_requests = gpu_device_requests
        self.pull = pull
        self.pull_timeout = pull_timeout
        self.capabilities = capabilities
        self.pids_limit = pids_limit
        # run_as = "owner": how the workspace is handed to the user a container runs as.
        self.owner_files = owner_files
        self.registries = registries
        self._docker: aiodocker.Docker | None = None
        self._closed = False

    @property
    def docker(self) -> aiodocker.Docker:
        if self._closed:
            # A runner still holding this runtime after its host's link dropped: a new client
            # session here would never be closed ("Unclosed client session"), and its socket is gone.
            raise EngineError(f"the connection to the engine at {self.where} was closed")
        if self._docker is None:
            self._docker = aiodocker.Docker(url=f"unix://{self.docker_socket}")
        return self._docker

    async def close(self) -> None:
        self._closed = True
        docker, self._docker = self._docker, None
        if docker is not None:
            try:
                await docker.close()
            finally:
                # Also when closing was cancelled or its event monitor failed: the session goes.
                if not docker.session.closed:
                    await asyncio.shield(docker.session.close())

    @contextlib.contextmanager
    def _talking(self, what: str) -> Iterator[None]:
        """The engine going away mid-request (restart, crash) is an EngineError like any other."""
        try:
            yield
        except (aiohttp.ClientError, asyncio.IncompleteReadError, ConnectionError, TimeoutError) as exc:
            raise EngineError(f"{what}: the engine at {self.where} went away ({type(exc).__name__})") from None

    async def ping(self) -> str:
        try:
            version = await self.docker.version()
        except (aiodocker.DockerError, aiohttp.ClientError, OSError) as exc:
            raise EngineError(f"Docker engine at {self.where} is not reachable: {exc}") from None
        if self.owner_files is not None:
            result = await self.owner_files.run(NEEDS_ROOT)
            if result.status != 0:
                raise EngineError(f"{self.host}: {result.error_text}")
        return str(version.get("Version", "?"))

    async def info(self) -> dict[str, Any]:
        info = await self.docker.system.info()
        return dict(info)

    async def ensure_image(self, image: str) -> None:
        try:
            await self.docker.images.inspect(image)
            return
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                raise EngineError(f"cannot inspect image {image!r}: {exc.message}") from None
        if self.pull == "never":
            raise ImageMissing(f"image {image!r} is not on this host and pulling is disabled (local.pull = \"never\")")
        try:
            login = self.registries.login_for(image) if self.registries is not None else None
        except RegistryError as exc:
            raise ImageMissing(f"image {image!r} is not on this host and cannot be pulled: {exc}") from None
        try:
            if login is None:
                await asyncio.wait_for(self.docker.images.pull(image), self.pull_timeout)
            else:
                # Only the header carries the secret; nothing here logs or returns it.
                await asyncio.wait_for(self.docker.images.pull(pullable(image), auth=login.header_auth()),
                                       self.pull_timeout)  # docker.io/x/y is the engine's name for x/y
        except (aiodocker.DockerError, TimeoutError, aiohttp.ClientError) as exc:
            detail = getattr(exc, "message", None) or str(exc) or type(exc).__name__
            raise ImageMissing(f"image {image!r} is not on this host and could not be pulled: {detail}") from None

    async def create(self, spec: ContainerSpec) -> str:
        config = self.container_config(spec)
        name = f"runyard-{self.daemon_id}-{attempt_name(spec.execution_id, spec.attempt)}"
        try:
            try:
                container = await self.docker.containers.create(config, name=name)
            except aiodocker.DockerError as exc:
                if exc.status != 404:
                    raise
                # Asking first would cost a round trip on every start; the image is nearly always there.
                await self.ensure_image(spec.image)
                container = await self.docker.containers.create(config, name=name)
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ImageMissing(f"image {spec.image!r} is not on this host") from None
            if exc.status == 409:
                # A container for this execution already exists: adopt it rather than run twice.
                existing = await self.find(spec.execution_id, spec.attempt)
                if existing is not None:
                    return existing.id
            raise EngineError(f"cannot create container: {exc.message}") from None
        return str(container.id)

    def container_config(self, spec: ContainerSpec) -> dict[str, Any]:
        work = spec.workdir.rstrip("/")
        env = dict(spec.environment)
        host_config: dict[str, Any] = {
            "Binds": [
                f"{work}/repository:/valohai/repository",
                f"{work}/inputs:/valohai/inputs:ro",
                f"{work}/outputs:/valohai/outputs",
                f"{work}/config:/valohai/config:ro",
            ],
            # tini as PID 1 so that SIGTERM reaches the user's process, not a deaf shell
            "Init": True,
            "SecurityOpt": ["no-new-privileges"],
            "LogConfig": {"Type": "json-file", "Config": {}},
        }
        if tuple(self.capabilities) != ("ALL",):
            host_config["CapDrop"] = ["ALL"]
            host_config["CapAdd"] = list(self.capabilities)
        if self.pids_limit > 0:
            host_config["PidsLimit"] = self.pids_limit
        if spec.gpus and self.gpu_device_requests:
            host_config["DeviceRequests"] = [
                {"Driver": "nvidia", "DeviceIDs": list(spec.gpus), "Capabilities": [["gpu"]]}
            ]
        if spec.cpu_limit:
            host_config["NanoCpus"] = int(spec.cpu_limit * 1e9)
        if spec.memory_limit_mb:
            host_config["Memory"] = spec.memory_limit_mb * 1024 * 1024
        if spec.network:
            host_config["NetworkMode"] = spec.network
        config: dict[str, Any] = {"User": spec.user} if spec.user else {}
        return config | {
            "Image": spec.image,
            "Cmd": command_argv(spec.command),  # the shebang's interpreter, else /bin/sh
            "WorkingDir": "/valohai/repository",
            "Env": [f"{k}={v}" for k, v in env.items()],
            "Labels": {
                LABEL_DAEMON: self.daemon_id,
                LABEL_EXECUTION: str(spec.execution_id),
                LABEL_ATTEMPT: str(spec.attempt),
                LABEL_HOST: spec.host,
                # The grant table is rebuilt from this label after a daemon restart.
                LABEL_GPUS: ",".join(spec.gpus),
            },
            "Tty": False,
            "HostConfig": host_config,
        }

    async def start(self, container_id: str) -> None:
        if self.owner_files is not None:
            await self._give_to_owner(container_id)
        try:
            with self._talking("cannot start container"):
                await self.docker.containers.container(container_id).start()
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ContainerGone(f"container {container_id[:12]} was removed") from None
            raise EngineError(f"cannot start container: {exc.message}") from None

    async def _give_to_owner(self, container_id: str) -> None:
        """Before it starts, a container that runs as its owner gets its repository and outputs:
        the command writes there, and what it writes belongs to them on the host.

        Read back from the container (its user and its outputs mount), so it holds for any
        container of ours, whoever created it. Links are changed themselves, never followed."""
        assert self.owner_files is not None
        info = await self._inspect(container_id)
        user = str(info.get("Config", {}).get("User") or "")
        if not user:
            return  # made to run as the image's user
        owner_ids(user)
        suffix = "/outputs:/valohai/outputs"
        works = [b[: -len(suffix)] for b in info.get("HostConfig", {}).get("Binds") or [] if b.endswith(suffix)]
        if len(works) != 1:
            raise EngineError(f"container {container_id[:12]} has no outputs mount to hand to {user}")
        work = q(works[0])
        result = await self.owner_files.run(f"chown -R -h -P -- {user} {work}/repository {work}/outputs")
        if result.status != 0:
            raise EngineError(f"run_as = \"owner\": cannot hand the workspace on {self.host} to {user}: "
                              f"{result.error_text}")

    async def state(self, container_id: str) -> ContainerState:
        return _state_of(await self._inspect(container_id))

    async def _inspect(self, container_id: str) -> dict[str, Any]:
        try:
            with self._talking("cannot inspect container"):
                return dict(await self.docker.containers.container(container_id).show())
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ContainerGone(f"container {container_id[:12]} was removed behind runyard's back") from None
            raise EngineError(f"cannot inspect container: {exc.message}") from None

    async def find(self, execution_id: int, attempt: int = 0) -> ContainerState | None:
        for state in await self._list(execution_id):
            if state.attempt == attempt:
                return state
        return None

    async def list_ours(self) -> list[ContainerState]:
        return await self._list(None)

    async def _list(self, execution_id: int | None) -> list[ContainerState]:
        labels = [f"{LABEL_DAEMON}={self.daemon_id}", f"{LABEL_HOST}={self.host}"]
        if execution_id is not None:
            labels.append(f"{LABEL_EXECUTION}={execution_id}")
        try:
            with self._talking("cannot list containers"):
                containers = await self.docker.containers.list(all=True, filters={"label": labels})
        except aiodocker.DockerError as exc:
            raise EngineError(f"cannot list containers: {exc.message}") from None
        states = []
        for container in containers:
            try:
                states.append(_state_of(await container.show()))
            except aiodocker.DockerError:
                continue  # removed between list and inspect
        return states

    async def wait(self, container_id: str) -> None:
        try:
            with self._talking("cannot wait for container"):
                await self.docker.containers.container(container_id).wait()
        except aiodocker.DockerError as exc:
            if exc.status == 404:
                raise ContainerGone(f"container {container_id[:12]} was removed behind runyard's back") from None
            raise EngineError(f"cannot wait for container: {exc.message}") from None

    async def read_logs(self, container_id: str, log: LogFile, *, follow: bool,
                        final: bool | None = None) -> AsyncIterator[Decoded]:
        """Lines not yet in ``log``: from its exact resume point, until the container ends (or, without
        ``follow``, until what the engine holds now).

        A ``final`` read (by default one that does not follow) comes after the container ended: a
        line it left open (no final newline) is stored as it is. Any other read leaves such a line
        pending: the stream may only have broken off (a host outage), and the line goes on.
        """
        resume = await asyncio.to_thread(log.resume_point)
        decoder = DockerLogDecoder(resume=resume)
        async for chunk in self.logs(container_id, resume.since or None, follow=follow):
            decoded = decoder.feed(chunk)
            log.mark_long_lines("P", decoded.started)
            yield decoded
            # Resumed only once the consumer stored these records: a D mark never precedes them.
            log.mark_long_lines("D", decoded.ended)
        if final if final is not None else not follow:
            decoded = decoder.flush()
            yield decoded
            log.mark_long_lines("D", decoded.ended)

    async def last_record(self, container_id: str) -> bytes | None:
        """The engine's last line of the container, as a log record before the runner's own
        changes (masking, invalid UTF-8), or None when it printed nothing.

        Asked as a ``tail``, which the engine serves from the end of its log file in milliseconds
        of its CPU, where a read from a resume point makes it decode the whole log again (seconds
        per million lines). A last line longer than the tail's few fragments comes back cut and
        matches no stored record: the caller then reads from the resume point.
        """
        decoder = DockerLogDecoder()
        records: list[bytes] = []
        async for chunk in self.logs(container_id, None, follow=False, tail=_CHECK_TAIL):
            records += decoder.feed(chunk).records
        records += decoder.flush().records
        last = b"".join(records).rstrip(b"\n").rpartition(b"\n")[2]
        return last + b"\n" if last else None

    async def logs(self, container_id: str, since: str | None, *, follow: bool = True,
                   tail: int | None = None) -> AsyncIterator[bytes]:
        """Raw multiplexed log stream with timestamps; with ``follow``, until the container ends."""
        params: dict[str, str] = {"stdout": "1", "stderr": "1", "follow": "1" if follow else "0",
                                  "timestamps": "1"}
        if since:
            params["since"] = _docker_since(since)
        if tail is not None:
            params["tail"] = str(tail)
        try:
            with self._talking("cannot read logs"):
                async for chunk in container_logs(self.docker_socket, container_id, params):
                    yield chunk
        except LogStreamError as exc:
            # A container being removed answers 409 "dead or marked for removal" before it answers 404.
            if exc.status == 404 or "marked for removal" in str(exc):
                raise ContainerGone(f"container {container_id[:12]} was removed behind runyard's back") from None
            raise EngineError(f"cannot read logs: {exc}") from None
        except OSError as exc:
            raise EngineError(f"cannot read logs from {self.where}: {exc}") from None

    async def stop(self, container_id: str, grace_seconds: int) -> None:
        try:
            with self._talking("cannot stop container"):
                await self.docker.containers.container(container_id).stop(t=grace_seconds)
        except aiodocker.DockerError as exc:
            if exc.status not in (304, 404):
                raise EngineError(f"cannot stop container: {exc.message}") from None

    async def remove(self, container_id: str) -> None:
        try:
            await self.docker.containers.container(container_id).delete(force=True)
        except aiodocker.DockerError as exc:
            if exc.status != 404:
                log.warning("cannot remove container %s: %s", container_id[:12], exc.message)


def _state_of(info: dict[str, Any]) -> ContainerState:
    state = info.get("State", {})
    labels = info.get("Config", {}).get("Labels") or {}
    return ContainerState(
        id=str(info["Id"]),
        execution_id=int(labels.get(LABEL_EXECUTION, "0")),
        status=str(state.get("Status", "unknown")),
        exit_code=int(state.get("ExitCode", 0) or 0),
        oom_killed=bool(state.get("OOMKilled", False)),
        gpus=tuple(g for g in labels.get(LABEL_GPUS, "").split(",") if g),
        attempt=int(labels.get(LABEL_ATTEMPT, "0") or 0),
        started_at=store_time_of_engine(state.get("StartedAt")),
        finished_at=store_time_of_engine(state.get("FinishedAt")),
    )


def _docker_since(timestamp: str) -> str:
    """RFC 3339 with nanoseconds to Docker's `seconds.nanoseconds` form."""
    whole, frac = split_timestamp(timestamp)
    return f"{int(whole.timestamp())}.{frac}"
