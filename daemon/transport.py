"""Running commands and moving files on a host: this machine, or a pool host over SSH.

Everything a host is asked to do goes through one of these, so the runtimes and
the inventory do not care whether the host is local or behind SSH. Trees move
over one SFTP session kept open per connection, so copying a workspace starts
no login shell; symlinks are copied as links and never followed.

What comes back from a host (outputs) may still be changed by a running
container that is root in its own world: it is read without following any
link. Locally through safeio; on an SSH host GNU tar reads it (it opens every
folder and file beneath the one named with O_NOFOLLOW and stores a link as a
link), after the shell has checked that the folder it starts in is really the
one inside the workspace, and only regular files are written here.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import itertools
import logging
import os
import posixpath
import secrets
import shlex
import shutil
import signal
import stat
import tarfile
import threading
from collections import Counter, deque
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Final, Protocol

import asyncssh

from . import safeio
from .locks import KeyedLocks

log = logging.getLogger("runyard.transport")

# SFTP transfer shape, measured with a 1 GiB file against OpenSSH on loopback:
# 64 KiB blocks with 128 in flight beat both the defaults and 255 KiB blocks.
_BLOCK = 64 * 1024
_REQUESTS = 128


SESSIONS_HINT: Final = ("if the host's sshd log says 'no more sessions', raise MaxSessions in its sshd_config "
                        "above the host's max_concurrent + 4")


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
    def stream_both(self, command: str) -> AsyncIterator[tuple[int, bytes]]: ...
    async def put_tree(self, local: Path, remote: str) -> None: ...
    async def get_tree(self, remote: str, local: Path) -> None: ...
    async def remove_tree(self, remote: str) -> None: ...
    async def read_only_files(self, remote: str) -> dict[str, int]: ...
    async def put_cached(self, items: list[tuple[Path, str, int, str]], cache: str, remote: str, *,
                         link: bool = True, cache_limit: int = 100 << 30) -> None: ...
    async def get_files(self, remote: str, names: list[str], local: Path) -> None: ...
    async def remove_cut_off_uploads(self, cache: str) -> None: ...


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
        # Its own process group: ended early, all it started goes with it (a `sleep` would keep its
        # output open, and the pipe's transport with it, past the end).
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            start_new_session=True,
        )
        assert proc.stdout is not None
        try:
            while chunk := await proc.stdout.read(1 << 16):
                yield chunk
        finally:
            await _end_group(proc)

    async def stream_both(self, command: str) -> AsyncIterator[tuple[int, bytes]]:
        proc = await asyncio.create_subprocess_exec(
            "/bin/sh", "-c", command, stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE, start_new_session=True,
        )
        assert proc.stdout is not None and proc.stderr is not None
        try:
            async for item in _both(proc.stdout, proc.stderr, OSError):
                yield item
        finally:
            await _end_group(proc)

    # Every file operation here runs in a thread: a slow disk must not stall the event loop.

    async def put_tree(self, local: Path, remote: str) -> None:
        await asyncio.to_thread(_put_tree, local, remote)

    async def get_tree(self, remote: str, local: Path) -> None:
        await asyncio.to_thread(_copy_back, remote, local, None)

    async def remove_tree(self, remote: str) -> None:
        await asyncio.to_thread(shutil.rmtree, remote, True)

    async def read_only_files(self, remote: str) -> dict[str, int]:
        return await asyncio.to_thread(_read_only_files, Path(remote))

    async def put_cached(self, items: list[tuple[Path, str, int, str]], cache: str, remote: str, *,
                         link: bool = True, cache_limit: int = 100 << 30) -> None:
        for source, _, _, rel in items:
            await asyncio.to_thread(_copy_file, source, Path(remote) / rel)

    async def remove_cut_off_uploads(self, cache: str) -> None:
        pass  # nothing is uploaded here: inputs are copied straight into the workspace

    async def get_files(self, remote: str, names: list[str], local: Path) -> None:
        await asyncio.to_thread(_copy_back, remote, local, names)


def _copy_back(remote: str, local: Path, names: list[str] | None) -> None:
    if os.path.abspath(remote) != str(local.resolve()):  # the local host's outputs are already here
        _copy_local(Path(remote), local, names)


def _put_tree(local: Path, remote: str) -> None:
    if os.path.abspath(remote) != str(local.resolve()):
        shutil.copytree(local, remote, symlinks=True, dirs_exist_ok=True)
        os.chmod(remote, 0o700)  # an execution's directory is private to the host's other users


def _entries(local: Path) -> list[str]:
    return [str(entry) for entry in sorted(local.iterdir())] if local.is_dir() else []


def _copy_file(source: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(source, target)


class SshTransport:
    """Commands over the host's one SSH connection; a dropped connection raises LinkError."""

    def __init__(self, conn: asyncssh.SSHClientConnection, host: str) -> None:
        self.conn = conn
        self.host = host
        self._sftp_client: asyncssh.SFTPClient | None = None
        self._sftp_lock = asyncio.Lock()
        # Executions on one host often ask for the same input at once: one upload per file,
        # and no eviction of a file another execution is still linking.
        self._cache_locks = KeyedLocks()
        self._pinned: Counter[str] = Counter()
        self._parts = itertools.count(1)
        # Names this connection's uploads into the host's input cache: any other partial upload
        # there was cut off (a daemon kill, a lost link) and may be removed.
        self.upload_tag = f"{os.getpid()}.{secrets.token_hex(4)}"
        self._gnu_tar: bool | None = None

    def _lost(self, exc: BaseException) -> LinkError:
        if isinstance(exc, asyncssh.ChannelOpenError):
            return LinkError(f"{self.host}: its sshd refused a new session ({exc.reason}): {SESSIONS_HINT}")
        return LinkError(f"{self.host}: connection lost ({exc or type(exc).__name__})")

    async def run(self, command: str, *, input: bytes | None = None, timeout: float | None = None) -> Completed:
        try:
            result = await self.conn.run(command, input=input, encoding=None, timeout=timeout)
        except asyncssh.TimeoutError:
            raise LinkError(f"{self.host}: command did not finish in {timeout:g} s: {command[:80]}") from None
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from None
        if result.exit_status is None:
            if result.exit_signal is None:
                # OpenSSH over its MaxSessions closes the channel without a word (its log says
                # "no more sessions"): the usual cause when the connection itself stays up.
                raise LinkError(f"{self.host}: a command's session closed without an exit status: {SESSIONS_HINT}")
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

    async def stream_both(self, command: str) -> AsyncIterator[tuple[int, bytes]]:
        """Like stream, for both of the command's outputs: (1, chunk) from its stdout, (2, chunk) from
        its stderr, each in its order, until both end."""
        try:
            proc = await self.conn.create_process(command, encoding=None, stdin=asyncssh.DEVNULL)
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from None
        try:
            try:
                async for item in _both(proc.stdout, proc.stderr, (asyncssh.Error, OSError)):
                    yield item
            except (asyncssh.Error, OSError) as exc:
                raise self._lost(exc) from None
            await proc.wait_closed()
            if proc.exit_status is None:
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
            entries = await asyncio.to_thread(_entries, local)
            if entries:
                # Links are copied as links (follow_symlinks=False), never followed out of the tree.
                await sftp.put(entries, remote, recurse=True, preserve=True, follow_symlinks=False,
                               block_size=_BLOCK, max_requests=_REQUESTS)

    async def get_tree(self, remote: str, local: Path) -> None:
        sftp = await self._sftp()
        with self._sftp_errors(f"cannot copy files from {remote}"):
            if not await sftp.isdir(remote):
                return
        base, leaf = posixpath.split(remote.rstrip("/"))
        # GNU tar walks the tree from the checked folder on descriptors, O_NOFOLLOW at every step.
        status, _ = await self._receive_tar(_in_folder(base, leaf, "exec tar -cf - ."), local,
                                            lambda member: member[2:] if member.startswith("./") else None,
                                            links=True)
        if status == _NOT_THERE:
            log.warning("%s: %s is not a plain folder inside %s; nothing copied", self.host, leaf, base)

    async def get_files(self, remote: str, names: list[str], local: Path) -> None:
        base, leaf = posixpath.split(remote.rstrip("/"))
        for name in names:
            parts = name.split("/")
            if any(p in ("", ".", "..") for p in parts):
                continue
            folder = "/".join([leaf, *parts[:-1]])
            member = f"./{parts[-1]}"
            _, got = await self._receive_tar(_in_folder(base, folder, f"exec tar -cf - -- {q(member)}"), local,
                                             functools.partial(_renamed, member, name), links=False)
            if not got:
                # Refused (a link, not a regular file) or gone: an older copy here must not be stored for it.
                await asyncio.to_thread(_drop_local, local, name)

    async def _receive_tar(self, command: str, local: Path, name_of: Callable[[str], str | None], *,
                           links: bool) -> tuple[int, list[str]]:
        """Run ``command`` (a shell line writing one tar archive) and unpack it under ``local``:
        regular files, and with ``links`` symlinks as symlinks and other files as FIFOs (so the
        collection can refuse them by name); nothing else. Its exit status and the paths written."""
        await self._need_gnu_tar()
        try:
            proc = await self.conn.create_process(command, encoding=None, stdin=asyncssh.DEVNULL)
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from None
        pipe = _Pipe()
        unpack = asyncio.ensure_future(asyncio.to_thread(_unpack, pipe, local, name_of, links))
        try:
            while not unpack.done():
                try:
                    chunk = await proc.stdout.read(1 << 20)
                except (asyncssh.Error, OSError) as exc:
                    raise self._lost(exc) from None
                if not chunk:
                    break
                if not pipe.try_put(chunk):
                    await asyncio.to_thread(pipe.put, chunk)  # the disk here sets the pace
            err = await proc.stderr.read()
            await proc.wait_closed()
        finally:
            pipe.end()
            proc.close()
            # Seen below on the normal path; on cancellation the worker still ends (it reads EOF).
            unpack.add_done_callback(lambda f: f.cancelled() or f.exception())
        got = await unpack
        if proc.exit_status is None:
            raise LinkError(f"{self.host}: connection lost while copying files")
        if proc.exit_status not in (0, 1, _NOT_THERE):  # 1: GNU tar's "file changed as we read it"
            raise LinkError(f"{self.host}: cannot copy files: "
                            f"{Completed(proc.exit_status, b'', _bytes(err)).error_text}")
        return proc.exit_status, got

    async def _need_gnu_tar(self) -> None:
        if self._gnu_tar is None:
            version = await self.run("tar --version", timeout=60)
            self._gnu_tar = version.status == 0 and b"GNU tar" in version.stdout
        if not self._gnu_tar:
            raise LinkError(f"{self.host}: outputs are copied with GNU tar (it never follows a link); "
                            "install it on the host")

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

    async def remove_cut_off_uploads(self, cache: str) -> None:
        """Partial files in the host's input cache that a daemon kill or a lost link cut off: any not
        of this connection, whose own uploads may be under way."""
        await self.run(f"find {q(cache)} -maxdepth 1 -name '*.part-*' "
                       f"! -name {q(f'*.part-{self.upload_tag}-*')} -delete 2>/dev/null; true")

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
                async with self._cache_locks.hold(cached):
                    try:
                        present = (await sftp.stat(cached)).size == size
                    except asyncssh.SFTPNoSuchFile:
                        present = False
                    if not present:
                        part = f"{cached}.part-{self.upload_tag}-{next(self._parts)}"
                        try:
                            await sftp.put(str(source), part, block_size=_BLOCK, max_requests=_REQUESTS)
                            await sftp.posix_rename(part, cached)
                        except BaseException:
                            # Stopped or failed halfway: no half file stays in the host's cache. (Cut
                            # off with the link, it is removed when the host is reconciled.)
                            with contextlib.suppress(asyncssh.Error, OSError):
                                await asyncio.shield(sftp.remove(part))
                            raise
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

    async def remove_tree(self, remote: str) -> None:
        sftp = await self._sftp()
        with self._sftp_errors(f"cannot remove {remote}"):
            await sftp.rmtree(remote, ignore_errors=True)


async def _end_group(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:  # not reaped yet: its process group's id is still its own
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
    await proc.wait()


class _Reader(Protocol):
    async def read(self, n: int = -1) -> bytes: ...


async def _both(out: _Reader, err: _Reader, errors: type[BaseException] | tuple[type[BaseException], ...]
                ) -> AsyncIterator[tuple[int, bytes]]:
    """(1, chunk) from ``out`` and (2, chunk) from ``err`` as they come, until both are at their end; a
    reader's failure (one of ``errors``) is raised here."""
    queue: asyncio.Queue[tuple[int, bytes] | BaseException | None] = asyncio.Queue()

    async def read(fd: int, reader: _Reader) -> None:
        try:
            while chunk := await reader.read(1 << 16):
                queue.put_nowait((fd, chunk))
            queue.put_nowait(None)
        except errors as exc:
            queue.put_nowait(exc)

    readers = [asyncio.create_task(read(1, out)), asyncio.create_task(read(2, err))]
    try:
        ended = 0
        while ended < len(readers):
            item = await queue.get()
            if item is None:
                ended += 1
            elif isinstance(item, BaseException):
                raise item
            else:
                yield item
    finally:
        for task in readers:
            task.cancel()
        for task in readers:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


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
    try:
        fd = safeio.open_dir(root)
    except OSError:
        return {}
    try:
        return {rel: st.st_size for rel, st, why in safeio.walk(fd) if why is None and not st.st_mode & 0o222}
    finally:
        os.close(fd)


def _copy_local(remote: Path, local: Path, names: list[str] | None) -> None:
    """Regular files under ``remote`` (all, or ``names``) copied to ``local``, no link followed."""
    try:
        root = safeio.open_dir(remote)
    except OSError:
        return
    try:
        if names is None:
            names = [rel for rel, _, why in safeio.walk(root) if why is None]
        for name in names:
            try:
                fd = safeio.open_beneath(root, name)
            except (safeio.Unsafe, OSError) as exc:
                log.warning("not copied: %s (%s)", name, exc)
                continue
            try:
                target = _local_target(local, name)
                if target is not None:
                    safeio.copy_hashing(fd, target)
            finally:
                os.close(fd)
    finally:
        os.close(root)


_NOT_THERE = 3  # the exit status of _in_folder's check


def _in_folder(base: str, folder: str, command: str) -> str:
    """``command`` run in ``base``/``folder`` once the shell has made sure that is where it stands.

    ``base`` is trusted (the daemon made it); ``folder`` may hold links put there by a container:
    `cd -P` resolves them and `pwd -P` (the kernel's own path of the folder now entered) must be
    the path asked for, so no link was passed. From there on the shell's working folder is the
    folder itself, not a path, so swapping a link in afterwards changes nothing.
    """
    return (f"cd -P -- {q(base)} && top=$(pwd -P) && cd -P -- {q('./' + folder)} "
            f"&& [ \"$(pwd -P)\" = \"$top\"/{q(folder)} ] || exit {_NOT_THERE}; {command}")


class _Pipe(io.RawIOBase):
    """Bytes from the event loop to a worker thread, at most ``limit`` of them waiting."""

    def __init__(self, limit: int = 32 << 20) -> None:
        super().__init__()
        self._cond = threading.Condition()
        self._chunks: deque[bytes] = deque()
        self._waiting = 0
        self._limit = limit
        self._eof = False
        self._gone = False  # the reader stopped: drop what comes

    def try_put(self, chunk: bytes) -> bool:
        with self._cond:
            if not self._gone:
                if self._waiting >= self._limit:
                    return False
                self._chunks.append(chunk)
                self._waiting += len(chunk)
                self._cond.notify_all()
            return True

    def put(self, chunk: bytes) -> None:
        with self._cond:
            self._cond.wait_for(lambda: self._waiting < self._limit or self._gone)
        self.try_put(chunk)

    def end(self) -> None:
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        with self._cond:
            self._cond.wait_for(lambda: bool(self._chunks) or self._eof)
            if not self._chunks:
                return 0
            chunk = self._chunks[0]
            n = min(len(buffer), len(chunk))
            buffer[:n] = chunk[:n]
            if n == len(chunk):
                self._chunks.popleft()
            else:
                self._chunks[0] = chunk[n:]
            self._waiting -= n
            self._cond.notify_all()
            return n

    def close(self) -> None:
        with self._cond:
            self._gone = True
            self._chunks.clear()
            self._cond.notify_all()
        super().close()


def _local_target(local: Path, rel: str) -> Path | None:
    """Where ``rel`` goes under ``local`` (folders made), or None if it cannot go there safely."""
    parts = PurePosixPath(rel).parts
    if not parts or PurePosixPath(rel).is_absolute() or any(p in ("", ".", "..") for p in parts):
        return None
    folder = local
    try:
        folder.mkdir(parents=True, exist_ok=True)
        for part in parts[:-1]:
            folder = folder / part
            if folder.is_symlink():
                return None
            folder.mkdir(exist_ok=True)
    except OSError:
        return None
    target = folder / parts[-1]
    if target.is_symlink():
        target.unlink()
    return None if target.is_dir() else target


def _renamed(member: str, name: str, seen: str) -> str | None:
    return name if seen == member else None


def _drop_local(local: Path, rel: str) -> None:
    target = _local_target(local, rel)
    if target is not None:
        target.unlink(missing_ok=True)


def _unpack(pipe: _Pipe, local: Path, name_of: Callable[[str], str | None], links: bool) -> list[str]:
    """Regular files (and with ``links`` symlinks as links, devices and FIFOs as FIFOs) from the tar
    stream in ``pipe``, under ``local``."""
    written: list[str] = []
    try:
        with tarfile.open(fileobj=io.BufferedReader(pipe, 1 << 20), mode="r|") as tar:
            for member in tar:
                rel = name_of(member.name)
                if rel is None:
                    continue
                if member.isreg():
                    target = _local_target(local, rel)
                    source = tar.extractfile(member)
                    if target is None or source is None:
                        continue
                    part = target.with_name(f"{target.name}.runyard-part-{threading.get_ident():x}")
                    try:
                        with part.open("wb") as out:
                            shutil.copyfileobj(source, out, safeio.BLOCK)
                        part.replace(target)
                    except BaseException:
                        part.unlink(missing_ok=True)
                        raise
                    written.append(rel)
                elif member.islnk():  # another name of a file earlier in this archive
                    first = name_of(member.linkname)
                    target = _local_target(local, rel)
                    if first in written and target is not None:
                        shutil.copyfile(local / first, target)
                        written.append(rel)
                elif member.issym() and links:
                    # Kept as a link, never followed, so the collection refuses it by name.
                    target = _local_target(local, rel)
                    if target is not None:
                        target.unlink(missing_ok=True)
                        os.symlink(member.linkname, target)
                elif links and not member.isdir():
                    # A device or FIFO: a FIFO stands for it here (never opened), so the
                    # collection notes it by name as not a regular file.
                    target = _local_target(local, rel)
                    if target is not None:
                        target.unlink(missing_ok=True)
                        os.mkfifo(target, 0o600)
    except tarfile.TarError as exc:  # cut short: the exit status says why
        log.debug("tar stream ended: %s", exc)
    finally:
        pipe.close()
    return written


def remove_local(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
