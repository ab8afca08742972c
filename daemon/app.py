"""Running the daemon: start services, serve the socket, shut down cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys

from .config import Config
from .core import Core
from .metrics import Metrics
from .notify import Notifier, NotifyError
from .private import UnsafeDirectory, private_data_dir, private_files
from .runtime import EngineError
from .server import Server, ServerError
from .service import notify
from .store import SchemaTooNew, Store

log = logging.getLogger("runyard.daemon")


class StartupError(Exception):
    pass


async def serve(config: Config, ready: asyncio.Event | None = None) -> None:
    """Run until SIGTERM or SIGINT; executions keep running across a restart."""
    database = config.data_dir / "runyard.sqlite3"
    try:
        await asyncio.to_thread(private_data_dir, config.data_dir, config.outputs_dir)
        store = await Store.open(database)
        # SQLite gives its journal files the database's mode: both private from here on.
        await asyncio.to_thread(private_files, [database, *(database.with_name(database.name + s)
                                                              for s in ("-wal", "-shm"))])
    except SchemaTooNew as exc:
        raise StartupError(str(exc)) from None
    except UnsafeDirectory as exc:
        raise StartupError(str(exc)) from None
    core = Core(config, store)
    try:
        notifier = Notifier(core, config.notify) if config.notify else None  # reads the webhook keys
    except NotifyError as exc:
        await store.close()
        raise StartupError(str(exc)) from None
    server = Server(core, config.daemon.socket, mode=config.socket_mode, group=config.daemon.socket_group,
                    admins=config.daemon.admins, max_frame=config.daemon.max_frame_bytes,
                    slow_client_seconds=config.daemon.slow_client_seconds,
                    max_requests_in_flight=config.daemon.max_requests_in_flight)
    metrics: Metrics | None = None
    try:
        try:
            await server.ensure_free()
            await core.start()
            await server.start()
        except (EngineError, ServerError) as exc:
            raise StartupError(str(exc)) from None
        if config.metrics.listen:
            metrics = Metrics(core)
            try:
                await metrics.start(config.metrics.listen)
            except OSError as exc:
                await metrics.close()
                raise StartupError(f"metrics.listen {config.metrics.listen}: {exc.strerror or exc}") from None
        if notifier is not None:
            notifier.start()
        core.retention.start()
        log.info("runyard daemon %s serving %s (data in %s)", store.daemon_id, config.daemon.socket,
                 config.data_dir)
        stopping = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stopping.set)
        if ready is not None:
            ready.set()
        notify(f"READY=1\nMAINPID={os.getpid()}\nSTATUS=serving {config.daemon.socket}")  # Type=notify
        await stopping.wait()
        notify("STOPPING=1")
        log.info("shutting down; running executions keep running")
    finally:
        if metrics is not None:
            await metrics.close()
        if notifier is not None:
            await notifier.close()
        await core.retention.close()
        await server.close()
        await core.shutdown()
        await store.close()


def _watch_children_by_pidfd() -> None:
    """Python 3.11's asyncio starts a thread for every subprocess to wait for its end, and the event
    loop waits until that thread runs: with a thousand executions each reading and stopping through
    commands, on a loaded machine, that wait was a fifth of the daemon's time (issue 17). A pidfd
    watched by the loop itself needs no thread; Python 3.12 and later use one already."""
    if sys.version_info >= (3, 12):
        return
    try:
        os.close(os.pidfd_open(os.getpid()))
    except (AttributeError, OSError):  # not Linux, or a kernel before 5.3
        return
    watcher = asyncio.PidfdChildWatcher()
    watcher.attach_loop(asyncio.get_running_loop())
    asyncio.set_child_watcher(watcher)


async def _serve_daemon(config: Config) -> None:
    _watch_children_by_pidfd()
    await serve(config)


def run(config: Config) -> int:
    logging.basicConfig(
        level=config.daemon.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    # At debug level the AWS libraries log signed request headers; credentials stay out of logs.
    for name in ("botocore", "aiobotocore", "boto3", "s3transfer"):
        logging.getLogger(name).setLevel(logging.WARNING)
    # asyncssh logs every channel opened and closed at INFO: about a hundred lines for one Slurm job,
    # burying runyard's own. Its warnings and errors still show.
    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("asyncssh").setLevel(logging.WARNING)
    try:
        asyncio.run(_serve_daemon(config))
    except StartupError as exc:
        log.error("cannot start: %s", exc)
        return 1
    return 0
