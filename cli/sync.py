"""`outputs N --sync DIR` and `run --sync DIR`: copy an execution's outputs into DIR as they appear.

Live outputs (files the command made read-only while it runs) are fetched when the daemon says it
stored some (an ``outputs`` event), everything else once the execution has ended. A file is never
fetched twice: not within one sync (its checksum is remembered), and not when DIR already holds it
with the same SHA-256 (a second sync of the same execution fetches nothing).

DIR is the user's, but the names come from the execution's code, which may be anyone's: a name that
would leave DIR (absolute, ``..``, a folder of DIR that is a symbolic link) is refused, every folder
is opened without following links, and a file is written under a temporary name and renamed into
place once its checksum matches, so DIR never holds half a file under an output's name.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import hashlib
import os
import stat
import sys
from collections.abc import Callable
from pathlib import Path

from runyard.protocol import Client
from runyard.protocol.messages import Resync
from runyard.protocol.methods import TERMINAL_STATUSES, OutputView
from runyard.protocol.units import human_size

CHUNK = 1 << 20


class SyncError(Exception):
    pass


def matches(files: list[OutputView], patterns: list[str]) -> list[OutputView]:
    # fnmatch's * also crosses "/", so '*.pt' finds checkpoints in sub-folders too
    if not patterns:
        return files
    return [f for f in files if any(fnmatch.fnmatchcase(f.path, pattern) for pattern in patterns)]


def parts_of(path: str) -> list[str]:
    """The folders and file name of an output path, or SyncError if it would not stay inside DIR."""
    parts = path.split("/")
    if (not path or path.startswith("/") or "\0" in path
            or any(part in ("", ".", "..") for part in parts)):
        raise SyncError(f"refusing output path {path!r}: it would leave the sync directory")
    return parts


class Syncer:
    """Keeps one local directory in step with one execution's outputs."""

    def __init__(self, client: Client, execution_id: int, directory: str, patterns: list[str], *,
                 say: Callable[[str], None]) -> None:
        self.client = client
        self.id = execution_id
        self.directory = Path(directory)
        self.patterns = patterns
        self.say = say
        self.fetched: dict[str, str] = {}  # output path -> sha256 of what DIR holds under it
        self.refused: list[str] = []

    async def run(self, *, until_end: bool = True) -> list[OutputView]:
        """Fetch what is there; with ``until_end``, keep fetching until the execution has ended."""
        await asyncio.to_thread(self.directory.mkdir, parents=True, exist_ok=True)
        if not until_end:
            return await self._once()
        wake = asyncio.Event()
        subscribed = asyncio.Event()

        async def watch() -> None:
            async for event in self.client.events(subscribed=subscribed.set):
                if isinstance(event, Resync) or event.execution_id == self.id:
                    wake.set()

        watcher = asyncio.create_task(watch())
        try:
            await _until(subscribed.wait(), watcher)
            while True:
                wake.clear()
                # The status first: outputs are recorded before an execution's final status is, so
                # once it reads as ended, the listing that follows is the final one.
                ended = (await self.client.get(self.id)).status in TERMINAL_STATUSES
                files = await self._once()
                if ended:
                    return files
                await _until(wake.wait(), watcher)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await watcher

    async def _once(self) -> list[OutputView]:
        files = matches(await self.client.outputs(self.id), self.patterns)
        for f in files:
            if self.fetched.get(f.path) == f.sha256 or f.path in self.refused:
                continue
            try:
                await self._fetch(f)
            except SyncError as exc:
                self.refused.append(f.path)
                self.say(f"runyard: {exc}")
        return files

    async def _fetch(self, f: OutputView) -> None:
        parts = parts_of(f.path)
        folder = await asyncio.to_thread(_open_folders, self.directory, parts[:-1], f.path)
        try:
            name = parts[-1]
            if await asyncio.to_thread(_holds, folder, name, f.size, f.sha256):
                self.fetched[f.path] = f.sha256
                return
            temp = f".{name}.runyard-part"
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=folder)
            fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o666,
                         dir_fd=folder)
            digest = hashlib.sha256()
            try:
                with os.fdopen(fd, "wb") as out:
                    offset = 0
                    while offset < f.size:
                        chunk = await self.client.read_output(self.id, f.path, offset, CHUNK)
                        if not chunk:
                            break
                        digest.update(chunk)
                        await asyncio.to_thread(out.write, chunk)
                        offset += len(chunk)
                if digest.hexdigest() != f.sha256:
                    # Re-stored while being read (a live output that changed): the next listing has it.
                    os.unlink(temp, dir_fd=folder)
                    return
                os.replace(temp, name, src_dir_fd=folder, dst_dir_fd=folder)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(temp, dir_fd=folder)
                raise
            self.fetched[f.path] = f.sha256
            self.say(f"{self.directory / f.path} ({human_size(f.size)})")
        finally:
            os.close(folder)


def _open_folders(root: Path, folders: list[str], path: str) -> int:
    """A descriptor of DIR/<folders>, made where missing, never reached through a link."""
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in folders:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o777, dir_fd=fd)
            try:
                child = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            except OSError:
                raise SyncError(f"refusing output path {path!r}: {part!r} in the sync directory is not a "
                                "folder (a link or a file is in its place)") from None
            os.close(fd)
            fd = child
        return fd
    except BaseException:
        os.close(fd)
        raise


def _holds(folder: int, name: str, size: int, sha256: str) -> bool:
    """Whether the folder already has this file, byte for byte (a link in its place never counts)."""
    try:
        info = os.stat(name, dir_fd=folder, follow_symlinks=False)
    except FileNotFoundError:
        return False
    if stat.S_ISDIR(info.st_mode):
        raise SyncError(f"cannot store output {name!r}: a folder of that name is in the sync directory")
    if not stat.S_ISREG(info.st_mode) or info.st_size != size:
        return False
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=folder)
    digest = hashlib.sha256()
    with os.fdopen(fd, "rb") as existing:
        while block := existing.read(CHUNK):
            digest.update(block)
    return digest.hexdigest() == sha256


async def _until(waiting: object, watcher: asyncio.Task[None]) -> None:
    """Await ``waiting``, unless the event subscription ends first (the daemon went away)."""
    task = asyncio.ensure_future(waiting)  # type: ignore[call-overload]
    try:
        await asyncio.wait({task, watcher}, return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
    if not task.done() or task.cancelled():
        watcher.result()  # raises why it ended (ConnectionLost)
        raise SyncError("the daemon's event stream ended")


def stderr(line: str) -> None:
    print(line, file=sys.stderr, flush=True)
