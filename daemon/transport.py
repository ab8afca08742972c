"""Running commands and moving files on a host: this machine, or a pool host over SSH.

Everything a host is asked to do goes through one of these, so the runtimes and
the inventory do not care whether the host is local or behind SSH. Trees move
over one SFTP session kept open per connection, so copying a workspace starts
no login shell; symlinks are copied as links and never followed.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import shlex
import shutil
import stat
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import asyncssh

# SFTP transfer shape, measured with a 1 GiB file against OpenSSH on loopback:
# 64 KiB blocks with 128 in flight beat both the defaults and 255 KiB blocks.
_BLOCK = 64 * 1024
_REQUESTS = 128


class LinkError(Exception):
    """The host cannot be reached right now (connection down or dropped mid-command)."""


@dataclass(frozen=True, slots=True)
class Completed:
    status: int
    stdout: bytes
    stderr: bytes

    @property
    def error_text(self) -> str:
        text = (self.stderr or self.stdout).decode("utf-8", "replace").strip()
        return text.splitlines()[-1] if text else f"exit status {self.status}"


class Transport(Protocol):
    async def run(self, command: str, *, input: bytes | None = None, timeout: float | None = None) -> Completed: ...
    def stream(self, command: str) -> AsyncIterator[bytes]: ...
    async def put_tree(self, local: Path, remote: str) -> None: ...
    async def get_tree(self, remote: str, local: Path) -> None: ...
    async def remove_tree(self, remote: str) -> None: ...
    async def read_only_files(self, remote: str) -> dict[str, int]: ...
    async def put_cached(self, items: list[tuple[Path, str, int, str]], cache: str, remote: str, *,
                         link: bool = True, cache_limit: int = 100 << 30) -> None: ...
    async def get_files(self, remote: str, names: list[str], local: Path) -> None: ...


class LocalTransport:
    async def run(self, command: str, *, input: bytes | None = None, timeout: float | None = None) -> Completed:
        stdin = asyncio.subprocess.PIPE if input is not None else asyncio.subprocess.DEVNULL
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, stdin=stdin, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            out, err = await asyncio.wait_for(proc.communicate(input), timeout)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise LinkError(f"command did not finish in {timeout:g} s: {command[:80]}") from None
        return Completed(proc.returncode or 0, out, err)

    async def stream(self, command: str) -> AsyncIterator[bytes]:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        )
        assert proc.stdout is not None
        try:
            while chunk := await proc.stdout.read(1 << 16):
                yield chunk
        finally:
            if proc.returncode is None:
                proc.kill()
            await proc.wait()

    async def put_tree(self, local: Path, remote: str) -> None:
        if os.path.abspath(remote) != str(local.resolve()):
            await asyncio.to_thread(shutil.copytree, local, remote, symlinks=True, dirs_exist_ok=True)
            os.chmod(remote, 0o700)  # an execution's directory is private to the host's other users

    async def get_tree(self, remote: str, local: Path) -> None:
        if os.path.abspath(remote) != str(local.resolve()) and os.path.isdir(remote):
            await asyncio.to_thread(shutil.copytree, remote, local, symlinks=True, dirs_exist_ok=True)

    async def remove_tree(self, remote: str) -> None:
        await asyncio.to_thread(shutil.rmtree, remote, True)

    async def read_only_files(self, remote: str) -> dict[str, int]:
        return await asyncio.to_thread(_read_only_files, Path(remote))

    async def put_cached(self, items: list[tuple[Path, str, int, str]], cache: str, remote: str, *,
                         link: bool = True, cache_limit: int = 100 << 30) -> None:
        for source, _, _, rel in items:
            target = Path(remote) / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(shutil.copyfile, source, target)

    async def get_files(self, remote: str, names: list[str], local: Path) -> None:
        if os.path.abspath(remote) == str(local.resolve()):
            return
        for name in names:
            (local / name).parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(shutil.copyfile, os.path.join(remote, name), local / name)


class SshTransport:
    """Commands over the host's one SSH connection; a dropped connection raises LinkError."""

    def __init__(self, conn: asyncssh.SSHClientConnection, host: str) -> None:
        self.conn = conn
        self.host = host
        self._sftp_client: asyncssh.SFTPClient | None = None
        self._sftp_lock = asyncio.Lock()
        # Executions on one host often ask for the same input at once: one upload per file,
        # and no eviction of a file another execution is still linking.
        self._cache_locks: dict[str, asyncio.Lock] = {}
        self._pinned: Counter[str] = Counter()
        self._parts = itertools.count(1)

    def _lost(self, exc: BaseException) -> LinkError:
        return LinkError(f"{self.host}: connection lost ({exc or type(exc).__name__})")

    async def run(self, command: str, *, input: bytes | None = None, timeout: float | None = None) -> Completed:
        try:
            result = await self.conn.run(command, input=input, encoding=None, timeout=timeout)
        except asyncssh.TimeoutError:
            raise LinkError(f"{self.host}: command did not finish in {timeout:g} s: {command[:80]}") from None
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from None
        if result.exit_status is None:
            raise LinkError(f"{self.host}: command ended without a status ({result.exit_signal})")
        return Completed(result.exit_status, _bytes(result.stdout), _bytes(result.stderr))

    async def stream(self, command: str) -> AsyncIterator[bytes]:
        try:
            proc = await self.conn.create_process(command, encoding=None, stdin=asyncssh.DEVNULL)
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from None
        try:
            while True:
                try:
                    chunk = await proc.stdout.read(1 << 16)
                except (asyncssh.Error, OSError) as exc:
                    raise self._lost(exc) from None
                if not chunk:
                    break
                yield chunk
            await proc.wait_closed()
            if proc.exit_status is None:
                # The channel closed without the command ending: the connection went away.
                raise LinkError(f"{self.host}: connection lost while reading")
        finally:
            proc.close()

    async def _sftp(self) -> asyncssh.SFTPClient:
        """One SFTP session per connection, opened on first use: transfers start no shell of their own."""
        async with self._sftp_lock:
            if self._sftp_client is None:
                try:
                    self._sftp_client = await self.conn.start_sftp_client()
                except (asyncssh.Error, OSError) as exc:
                    raise LinkError(f"{self.host}: cannot start SFTP ({exc}); is the sftp subsystem enabled?") from None
            return self._sftp_client

    @contextlib.contextmanager
    def _sftp_errors(self, what: str) -> Iterator[None]:
        """A refusal from the host names what failed; anything else means the link went away."""
        try:
            yield
        except asyncssh.SFTPError as exc:
            raise LinkError(f"{self.host}: {what}: {exc.reason}") from None
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from None

    async def put_tree(self, local: Path, remote: str) -> None:
        sftp = await self._sftp()
        with self._sftp_errors(f"cannot copy files to {remote}"):
            # Private from the start (the server's umask only narrows it), and again if it existed.
            await sftp.makedirs(remote, attrs=asyncssh.SFTPAttrs(permissions=0o700), exist_ok=True)
            await sftp.chmod(remote, 0o700)
            entries = [str(entry) for entry in sorted(local.iterdir())] if local.is_dir() else []
            if entries:
                # Links are copied as links (follow_symlinks=False), never followed out of the tree.
                await sftp.put(entries, remote, recurse=True, preserve=True, follow_symlinks=False,
                               block_size=_BLOCK, max_requests=_REQUESTS)

    async def get_tree(self, remote: str, local: Path) -> None:
        sftp = await self._sftp()
        with self._sftp_errors(f"cannot copy files from {remote}"):
            if not await sftp.isdir(remote):
                return
            local.mkdir(parents=True, exist_ok=True)
            names = [f"{remote}/{name}" for name in await sftp.listdir(remote) if name not in (".", "..")]
            if names:
                await sftp.get(names, str(local), recurse=True, preserve=True, follow_symlinks=False,
                               block_size=_BLOCK, max_requests=_REQUESTS)

    async def read_only_files(self, remote: str) -> dict[str, int]:
        """Regular files under ``remote`` that nobody may write any more, with their sizes."""
        sftp = await self._sftp()
        found: dict[str, int] = {}
        try:
            if not await sftp.isdir(remote):
                return found
            stack = [""]
            while stack:
                rel = stack.pop()
                for entry in await sftp.readdir(f"{remote}/{rel}" if rel else remote):
                    filename = _entry_name(entry)
                    if filename in (".", ".."):
                        continue
                    name = f"{rel}/{filename}" if rel else filename
                    mode = entry.attrs.permissions or 0
                    if stat.S_ISDIR(mode):
                        stack.append(name)
                    elif stat.S_ISREG(mode) and not mode & 0o222:
                        found[name] = int(entry.attrs.size or 0)
        except asyncssh.SFTPError:
            return found
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from None
        return found

    async def put_cached(self, items: list[tuple[Path, str, int, str]], cache: str, remote: str, *,
                         link: bool = True, cache_limit: int = 100 << 30) -> None:
        """Put each file into the host's cache (named by its SHA-256) unless it is there, then
        hard-link it into the workspace: an input crosses the link once per host.

        Without ``link`` (a plain process could change a linked file, and so the cache) the
        workspace gets a copy made on the host (SFTP copy-data), or sent again without it.
        """
        sftp = await self._sftp()
        shas = [sha for _, sha, _, _ in items]
        self._pinned.update(shas)
        try:
            await self._put_cached(sftp, items, cache, remote, link=link, cache_limit=cache_limit)
        finally:
            self._pinned.subtract(shas)
            self._pinned += Counter()  # drop the zero counts

    async def _put_cached(self, sftp: asyncssh.SFTPClient, items: list[tuple[Path, str, int, str]], cache: str,
                          remote: str, *, link: bool, cache_limit: int) -> None:
        with self._sftp_errors(f"cannot copy inputs to {remote}"):
            # The host's input cache holds every user's inputs (local files too): for nobody else.
            await sftp.makedirs(cache, attrs=asyncssh.SFTPAttrs(permissions=0o700), exist_ok=True)
            await sftp.chmod(cache, 0o700)
            for source, sha, size, rel in items:
                cached = f"{cache}/{sha}"
                async with self._cache_locks.setdefault(cached, asyncio.Lock()):
                    try:
                        present = (await sftp.stat(cached)).size == size
                    except asyncssh.SFTPNoSuchFile:
                        present = False
                    if not present:
                        part = f"{cached}.part-{os.getpid()}-{next(self._parts)}"
                        await sftp.put(str(source), part, block_size=_BLOCK, max_requests=_REQUESTS)
                        await sftp.posix_rename(part, cached)
                target = f"{remote}/{rel}"
                await sftp.makedirs(target.rsplit("/", 1)[0], exist_ok=True)
                try:
                    if link:
                        await sftp.link(cached, target)
                    else:
                        await sftp.copy(cached, target, remote_only=True)
                except asyncssh.SFTPError:  # no such extension, or another filesystem
                    await sftp.put(str(source), target, block_size=_BLOCK, max_requests=_REQUESTS)
                # Used now: the last to be evicted (mtime is when it was last used).
                await sftp.utime(cached)
            await self._evict(sftp, cache, keep=set(self._pinned), limit=cache_limit)

    async def _evict(self, sftp: asyncssh.SFTPClient, cache: str, *, keep: set[str], limit: int) -> None:
        """Least recently used cached inputs go once the host's cache is over ``limit`` bytes.
        Workspaces hold theirs by hard link, so a running execution keeps its files."""
        entries = []
        for entry in await sftp.readdir(cache):
            name = _entry_name(entry)
            if len(name) == 64 and stat.S_ISREG(entry.attrs.permissions or 0):
                entries.append((entry.attrs.mtime or 0, name, int(entry.attrs.size or 0)))
        total = sum(size for _, _, size in entries)
        for _, name, size in sorted(entries):
            if total <= limit:
                break
            if name not in keep:
                await sftp.remove(f"{cache}/{name}")
                total -= size

    async def get_files(self, remote: str, names: list[str], local: Path) -> None:
        sftp = await self._sftp()
        with self._sftp_errors(f"cannot copy files from {remote}"):
            for name in names:
                (local / name).parent.mkdir(parents=True, exist_ok=True)
                await sftp.get(f"{remote}/{name}", str(local / name), block_size=_BLOCK, max_requests=_REQUESTS)

    async def remove_tree(self, remote: str) -> None:
        sftp = await self._sftp()
        with self._sftp_errors(f"cannot remove {remote}"):
            await sftp.rmtree(remote, ignore_errors=True)


def _entry_name(entry: asyncssh.SFTPName) -> str:
    name = entry.filename
    return name if isinstance(name, str) else name.decode()


def _bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    assert isinstance(value, bytes | bytearray)
    return bytes(value)


def q(value: str) -> str:
    return shlex.quote(value)


def _read_only_files(root: Path) -> dict[str, int]:
    found: dict[str, int] = {}
    for dirpath, _, filenames in os.walk(root):
        for name in filenames:
            path = Path(dirpath) / name
            st = path.lstat()
            if stat.S_ISREG(st.st_mode) and not st.st_mode & 0o222:
                found[path.relative_to(root).as_posix()] = st.st_size
    return found


def remove_local(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
