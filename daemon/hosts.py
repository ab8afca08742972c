"""Pool hosts: one long-lived connection each, its state, its inventory and its runtime.

A host's link is connecting, ready or unreachable; an operator can also drain
it. The link is kept by one task per host that reconnects with backoff, so a
network blip only makes the host unreachable for a while: its containers keep
running, and the runners waiting on it carry on when it is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import pwd
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import asyncssh

from .config import Config, HostSection, LocalHostSection, SshSection
from .inventory import INVENTORY_COMMAND, Gpu, Inventory, InventoryError, declared_gpus, parse_inventory
from .private import private_dir
from .registries import Registries
from .runtime import EngineError, Runtime, attempt_name
from .runtime_process import ProcessRuntime
from .transport import LinkError, LocalTransport, SshTransport, Transport, q

log = logging.getLogger("runyard.hosts")

LOCAL = "local"
_CIPHERS = ("aes128-gcm@openssh.com", "aes256-gcm@openssh.com", "chacha20-poly1305@openssh.com",
            "aes128-ctr", "aes192-ctr", "aes256-ctr")
Link = Literal["connecting", "ready", "unreachable"]
Admin = Literal["enabled", "draining", "disabled"]


@dataclass(frozen=True, slots=True)
class HostSettings:
    """One host's configuration, the same shape for `local` and the [[hosts]] entries."""

    name: str
    pool: str
    runtime: Literal["docker", "process"]
    docker_socket: str
    work_dir: str
    max_concurrent: int
    pull: str
    pull_timeout: float
    gpus: int | None  # None: from nvidia-smi
    cpus: int | None
    memory_mb: int | None
    gpu_device_requests: bool
    enabled: bool
    ssh: HostSection | None  # None for this machine
    capabilities: tuple[str, ...] = ()
    pids_limit: int = 0
    run_as: Literal["image", "owner"] = "image"
    registries: Registries | None = None  # logins for pulling images

    @classmethod
    def of_local(cls, section: LocalHostSection, work_dir: Path) -> HostSettings:
        return cls._of(LOCAL, section, str(work_dir), None)

    @classmethod
    def of_host(cls, section: HostSection) -> HostSettings:
        return cls._of(section.name, section, section.work_dir, section)

    @classmethod
    def _of(cls, name: str, c: LocalHostSection | HostSection, work_dir: str, ssh: HostSection | None) -> HostSettings:
        return cls(
            name=name, pool=c.pool, runtime=c.runtime, docker_socket=c.docker_socket, work_dir=work_dir,
            max_concurrent=c.max_concurrent, pull=c.pull, pull_timeout=c.pull_timeout_seconds,
            gpus=_declared(c.gpus), cpus=_declared(c.cpus), memory_mb=_declared(c.memory_mb),
            gpu_device_requests=c.gpu_mode == "device-request", enabled=c.enabled, ssh=ssh,
            capabilities=tuple(c.capabilities), pids_limit=c.pids_limit, run_as=c.run_as,
        )


def _declared(value: str | int) -> int | None:
    return value if isinstance(value, int) else None


def all_settings(config: Config) -> list[HostSettings]:
    hosts = [HostSettings.of_local(config.local, config.data_dir / "work")] if config.local.enabled else []
    registries = Registries(config.registries)
    return [dataclasses.replace(h, registries=registries)
            for h in hosts + [HostSettings.of_host(h) for h in config.hosts]]


class Host:
    def __init__(self, settings: HostSettings, *, daemon_id: str, ssh: SshSection, sockets_dir: Path,
                 on_change: Callable[[Host], None], admin: Admin = "enabled") -> None:
        self.settings = settings
        self.name = settings.name
        self.daemon_id = daemon_id
        self.ssh = ssh
        self.sockets_dir = sockets_dir
        self.on_change = on_change
        self.admin: Admin = admin if settings.enabled else "disabled"
        self.link: Link = "connecting"
        self.error = ""
        self.inventory: Inventory | None = None
        self.scanned_at: float | None = None
        self.transport: Transport | None = None
        self.runtime: Runtime | None = None
        self.work_root = ""
        self.generation = 0
        # Reconnecting: failed attempts in a row, and when the next one starts (the backoff, shown)
        self.failed_attempts = 0
        self.retry_at: float | None = None
        self.on_scan: Callable[[Host], None] | None = None  # after every inventory read (GPU use samples)
        self._engine_gone = asyncio.Event()  # set when the container engine stopped answering
        self._ready = asyncio.Event()
        self._down = asyncio.Event()  # set whenever the link is not ready
        self._conn: asyncssh.SSHClientConnection | None = None
        self._task: asyncio.Task[None] | None = None

    # -- what the rest of the daemon reads ---------------------------------------------

    @property
    def state(self) -> str:
        if self.admin == "disabled":
            return "disabled"
        if self.link != "ready":
            return self.link
        return "draining" if self.admin == "draining" else "ready"

    @property
    def accepting(self) -> bool:
        return self.state == "ready" and self.inventory is not None

    @property
    def gpus(self) -> tuple[Gpu, ...]:
        if self.settings.gpus is not None:
            return declared_gpus(self.settings.gpus)
        return self.inventory.gpus if self.inventory else ()

    @property
    def cpus(self) -> int | None:
        if self.settings.cpus is not None:
            return self.settings.cpus
        return self.inventory.cpus if self.inventory else None

    @property
    def memory_mb(self) -> int | None:
        if self.settings.memory_mb is not None:
            return self.settings.memory_mb
        return self.inventory.memory_mb if self.inventory else None

    @property
    def runtime_name(self) -> str:
        """What `runyard hosts` calls its runtime (a cluster's login node says "slurm")."""
        return self.settings.runtime

    @property
    def remote(self) -> bool:
        return self.settings.ssh is not None

    def run_as_user(self, owner_uid: int) -> str | None:
        """The "uid:gid" an execution's command runs as on this host, or None for the image's user.

        The gid is the owner's primary group on the daemon's machine, where the kernel told us the uid.
        """
        if self.settings.run_as != "owner":
            return None
        try:
            return f"{int(owner_uid)}:{pwd.getpwuid(owner_uid).pw_gid}"
        except KeyError:
            raise EngineError(f"run_as = \"owner\": uid {owner_uid} has no account on the daemon's machine "
                              "any more, so there is no group to run its execution with") from None

    def work_dir(self, execution_id: int, attempt: int = 0) -> str:
        # A later attempt (re-queued after a lost host) never shares a directory with one left running.
        return f"{self.work_root}/{attempt_name(execution_id, attempt)}"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        if self.admin != "disabled":
            self._task = asyncio.create_task(self._keep_connected(), name=f"host-{self.name}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._task
        await self._drop()

    async def connect_once(self) -> None:
        """One attempt to connect and read the inventory, no keeper: `daemon --check-config`."""
        try:
            await asyncio.wait_for(self._connect(), self.ssh.connect_timeout_seconds + 30)
            await self._scan()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            await self._drop()
            self.link, self.error = "unreachable", _describe(exc)
            return
        self._set_link("ready")

    async def wait_ready(self) -> int:
        """Block while the host is unreachable; returns the generation of the link now up."""
        while True:
            await self._ready.wait()
            if self.link == "ready":
                return self.generation

    async def still_up(self, generation: int) -> bool:
        """After an operation failed: is the link it used still there? Probes before answering."""
        if self.link != "ready" or self.generation != generation:
            return False
        if self.transport is None:
            return False
        try:
            await self.transport.run("true", timeout=self.ssh.connect_timeout_seconds)
            return True
        except LinkError as exc:
            self.error = str(exc)
            if self._conn is not None:
                self._conn.abort()  # the keeper notices, marks it unreachable and reconnects
                await self._wait_not(generation)
            return False

    async def _wait_not(self, generation: int) -> None:
        if self.link == "ready" and self.generation == generation:
            await self._down.wait()

    async def scan(self) -> Inventory:
        """Re-read GPUs, CPUs and memory now."""
        if self.transport is None or self.link != "ready":
            raise LinkError(f"host {self.name} is {self.state}: {self.error or 'not connected'}")
        return await self._scan()

    async def _scan(self) -> Inventory:
        assert self.transport is not None
        result = await self.transport.run(INVENTORY_COMMAND, timeout=60)
        if result.status != 0:
            raise InventoryError(f"inventory command failed: {result.error_text}")
        inventory = parse_inventory(result.stdout.decode("utf-8", "replace"))
        changed = self.inventory != inventory
        self.inventory = inventory
        self.scanned_at = time.time()
        if self.on_scan is not None:
            self.on_scan(self)
        for problem in inventory.problems:
            log.warning("host %s: %s", self.name, problem)
        if changed:
            self.on_change(self)
        return inventory

    def set_admin(self, admin: Admin) -> None:
        self.admin = admin
        self.on_change(self)

    # -- the keeper ------------------------------------------------------------------------

    def _set_link(self, link: Link, error: str = "") -> None:
        self.link = link
        self.error = error
        if link == "ready":
            self.generation += 1
            self._down.clear()
            self._ready.set()
        else:
            self._ready.clear()
            self._down.set()
        self.on_change(self)

    async def _keep_connected(self) -> None:
        delay = self.ssh.reconnect_min_seconds
        while True:
            try:
                await self._connect()
                await self._scan()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                message = _describe(exc)
                if self.error != message or self.link != "unreachable":
                    log.warning("host %s: unreachable: %s (retrying in %.0f s)", self.name, message, delay)
                await self._drop()
                self.failed_attempts += 1
                self.retry_at = time.time() + delay
                self._set_link("unreachable", message)
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.ssh.reconnect_max_seconds)
                continue
            delay = self.ssh.reconnect_min_seconds
            self.failed_attempts, self.retry_at = 0, None
            log.info("host %s: ready (%s, %d GPUs)", self.name, self.settings.runtime, len(self.gpus))
            self._set_link("ready")
            await self._serve()
            await self._drop()
            self._set_link("unreachable", self.error or "connection lost")
            log.warning("host %s: connection lost; reconnecting", self.name)

    async def _serve(self) -> None:
        """While the link is up: rescan now and then; return when the connection is gone."""
        closed = asyncio.create_task(self._closed())
        try:
            while True:
                done, _ = await asyncio.wait({closed}, timeout=self.ssh.inventory_seconds)
                if done:
                    return
                try:
                    await self.scan()
                except Exception as exc:
                    log.warning("host %s: inventory failed: %s", self.name, _describe(exc))
        finally:
            closed.cancel()

    async def _closed(self) -> None:
        waits: list[asyncio.Future[Any]] = [asyncio.ensure_future(self._engine_gone.wait())]
        if self._conn is not None:
            waits.append(asyncio.ensure_future(self._conn.wait_closed()))
        try:
            await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waits:
                w.cancel()

    async def engine_answers(self) -> bool:
        """After a runtime error: is the engine still there? (A restarted engine, say, is not.)"""
        runtime = self.runtime
        if runtime is None or self.link != "ready":
            return False
        try:
            await asyncio.wait_for(runtime.ping(), self.ssh.connect_timeout_seconds)
            return True
        except Exception:
            return False

    def engine_lost(self, why: str) -> None:
        """The engine stopped answering: the host is unreachable until it answers again."""
        self.error = f"container engine not answering: {why}"
        self._engine_gone.set()

    async def _connect(self) -> None:
        # The link stays "connecting" (first try) or "unreachable" (retries) until this succeeds.
        self._engine_gone.clear()
        s = self.settings
        if s.ssh is None:
            self.transport = LocalTransport()
            await asyncio.to_thread(Path(s.work_dir).mkdir, parents=True, exist_ok=True)
            self.work_root = s.work_dir
        else:
            options = await asyncio.to_thread(self._ssh_options, s.ssh)  # reads and writes files
            self._conn = await asyncssh.connect(**options)
            self.transport = SshTransport(self._conn, self.name)
            result = await self.transport.run(
                f"mkdir -p {q(s.work_dir)}/{self.daemon_id} && cd {q(s.work_dir)}/{self.daemon_id} && pwd -P",
                timeout=self.ssh.connect_timeout_seconds,
            )
            if result.status != 0:
                raise EngineError(f"cannot create work directory {s.work_dir}: {result.error_text}")
            self.work_root = result.stdout.decode().strip()
        self.runtime = await self._make_runtime()

    async def _make_runtime(self) -> Runtime:
        s = self.settings
        assert self.transport is not None
        runtime: Runtime
        if s.runtime == "process":
            runtime = ProcessRuntime(self.transport, self.work_root, host=self.name,
                                     run_as_owner=s.run_as == "owner")
        else:
            # Imported on first use: aiodocker and aiohttp take half a second, which a daemon without
            # Docker hosts need not spend before it answers.
            from .runtime_docker import DockerRuntime

            socket = s.docker_socket
            if self._conn is not None:
                # Whoever can connect to this socket is root on the host: only the daemon's user may.
                private_dir(self.sockets_dir)
                local = self.sockets_dir / f"{self.name}.sock"
                await asyncio.to_thread(_fresh_path, local)
                await self._conn.forward_local_path(str(local), s.docker_socket)
                os.chmod(local, 0o600)  # made under the umask; the 0700 directory already shuts others out
                socket = str(local)
            where = s.docker_socket if self._conn is None else f"{s.docker_socket} on {self.name}"
            runtime = DockerRuntime(socket, self.daemon_id, host=self.name, pull=s.pull, where=where,
                                    pull_timeout=s.pull_timeout, gpu_device_requests=s.gpu_device_requests,
                                    capabilities=s.capabilities, pids_limit=s.pids_limit,
                                    owner_files=self.transport if s.run_as == "owner" else None,
                                    registries=s.registries)
        try:
            await runtime.ping()
        except Exception:
            await runtime.close()
            raise
        return runtime

    def _ssh_options(self, h: HostSection) -> dict[str, object]:
        known_hosts_path = os.path.expanduser(h.known_hosts or self.ssh.known_hosts)
        options: dict[str, object] = {
            "host": h.address or h.name,
            # Always explicit, so no ssh_config setting can turn host key checking off.
            "known_hosts": known_hosts_path if os.path.exists(known_hosts_path) else asyncssh.import_known_hosts(""),
            "config": [str(self._ssh_config(known_hosts_path))],
            "connect_timeout": self.ssh.connect_timeout_seconds,
            "keepalive_interval": self.ssh.keepalive_seconds,
            "keepalive_count_max": self.ssh.keepalive_count_max,
            # AES-GCM first: with AES-NI it runs in OpenSSL at memory speed, where asyncssh's
            # chacha20-poly1305 costs Python work per packet (SFTP of 1 GiB: 0.71x scp -> 0.97x).
            "encryption_algs": list(_CIPHERS),
        }
        if h.port:
            options["port"] = h.port
        if h.user:
            options["username"] = h.user
        if h.identity:
            options["client_keys"] = [os.path.expanduser(h.identity)]
        return options

    def _ssh_config(self, known_hosts: str) -> Path:
        """The user's ssh config behind a first line that pins known_hosts.

        ProxyJump hops are opened by asyncssh from the config alone; in ssh config the
        first value wins, so this line makes every hop verify against the same file.
        """
        private_dir(self.sockets_dir)
        path = self.sockets_dir / f"{self.name}.ssh_config"
        text = f'UserKnownHostsFile "{known_hosts}"\n'
        user_config = os.path.expanduser(self.ssh.config)
        if os.path.exists(user_config):
            text += f'Include "{os.path.abspath(user_config)}"\n'
        # Made afresh, never written through whatever was there: the directory may have been open
        # to others before private_dir closed it, and a link left in it must not aim root's write.
        path.unlink(missing_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
        return path

    async def _drop(self) -> None:
        runtime, self.runtime = self.runtime, None
        if runtime is not None:
            with contextlib.suppress(Exception):
                await runtime.close()
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.abort()
            with contextlib.suppress(Exception):
                await conn.wait_closed()
        self.transport = None


def _fresh_path(path: Path) -> None:
    """Nothing at ``path``, in a directory that exists: where a new socket goes."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)


def _describe(exc: BaseException) -> str:
    if isinstance(exc, asyncssh.HostKeyNotVerifiable):
        return (f"host key not verified ({exc.reason}): add the host's key to known_hosts "
                "(ssh-keyscan, after checking its fingerprint) or set known_hosts for this host")
    if isinstance(exc, asyncssh.PermissionDenied):
        return f"ssh authentication failed ({exc.reason}): check user and identity"
    if isinstance(exc, asyncssh.DisconnectError):
        return f"ssh: {exc.reason}"
    if isinstance(exc, (asyncssh.KeyImportError, ValueError)):
        return f"cannot use the ssh identity: {exc}"
    if isinstance(exc, OSError):
        return f"cannot connect: {exc.strerror or exc}"
    if isinstance(exc, TimeoutError):
        return "timed out"
    return str(exc) or type(exc).__name__
