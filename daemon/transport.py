"""Running commands and moving files on a host: this machine, or a pool host over SSH.

Everything a host is asked to do goes through one of these, so the runtimes and
the inventory do not care whether the host is local or behind SSH. Trees move
as tar streams (one channel, symlinks kept as links); what comes back is
extracted with the same checks as uploaded snapshots.
"""

from __future__ import annotations

import asyncio
import os
import shlex
import shutil
import tarfile
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import asyncssh


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
    async def send_file(self, local: Path, command: str) -> Completed: ...
    async def receive_file(self, command: str, local: Path) -> Completed: ...


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

    async def send_file(self, local: Path, command: str) -> Completed:
        with local.open("rb") as fh:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", command, stdin=fh, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
            )
            out, err = await proc.communicate()
        return Completed(proc.returncode or 0, out, err)

    async def receive_file(self, command: str, local: Path) -> Completed:
        with local.open("wb") as fh:
            proc = await asyncio.create_subprocess_exec(
                "/bin/sh", "-c", command, stdin=asyncio.subprocess.DEVNULL, stdout=fh, stderr=asyncio.subprocess.PIPE,
            )
            _, err = await proc.communicate()
        return Completed(proc.returncode or 0, b"", err)


class SshTransport:
    """Commands over the host's one SSH connection; a dropped connection raises LinkError."""

    def __init__(self, conn: asyncssh.SSHClientConnection, host: str) -> None:
        self.conn = conn
        self.host = host

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

    async def send_file(self, local: Path, command: str) -> Completed:
        try:
            result = await self.conn.run(command, stdin=str(local), encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from None
        return Completed(result.exit_status if result.exit_status is not None else 255,
                         _bytes(result.stdout), _bytes(result.stderr))

    async def receive_file(self, command: str, local: Path) -> Completed:
        try:
            result = await self.conn.run(command, stdout=str(local), encoding=None)
        except (asyncssh.Error, OSError) as exc:
            raise self._lost(exc) from None
        return Completed(result.exit_status if result.exit_status is not None else 255, b"",
                         _bytes(result.stderr))


def _bytes(value: object) -> bytes:
    if value is None:
        return b""
    if isinstance(value, str):
        return value.encode()
    assert isinstance(value, bytes | bytearray)
    return bytes(value)


def q(value: str) -> str:
    return shlex.quote(value)


async def put_tree(transport: Transport, local: Path, remote: str) -> None:
    """Copy the contents of ``local`` into ``remote`` on the host (created if missing)."""
    if isinstance(transport, LocalTransport) and os.path.abspath(remote) == str(local.resolve()):
        return
    with tempfile.NamedTemporaryFile(suffix=".tar") as tmp:
        await asyncio.to_thread(_write_tar, local, Path(tmp.name))
        result = await transport.send_file(Path(tmp.name), f"mkdir -p {q(remote)} && tar -x -f - -C {q(remote)}")
    if result.status != 0:
        raise LinkError(f"cannot copy files to {remote}: {result.error_text}")


async def get_tree(transport: Transport, remote: str, local: Path) -> list[str]:
    """Copy the contents of ``remote`` into ``local``; returns what was refused for pointing outside."""
    if isinstance(transport, LocalTransport) and os.path.abspath(remote) == str(local.resolve()):
        return []
    local.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(suffix=".tar") as tmp:
        result = await transport.receive_file(f"cd {q(remote)} 2>/dev/null || exit 0; tar -c -f - .", Path(tmp.name))
        if result.status != 0:
            raise LinkError(f"cannot copy files from {remote}: {result.error_text}")
        if os.path.getsize(tmp.name) == 0:
            return []  # nothing was there
        return await asyncio.to_thread(_extract_tar, Path(tmp.name), local)


def _write_tar(root: Path, target: Path) -> None:
    with tarfile.open(target, "w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(root.iterdir()) if root.is_dir() else []:
            tar.add(entry, arcname=entry.name, recursive=True)


def _extract_tar(source: Path, dest: Path) -> list[str]:
    refused: list[str] = []

    def only_inside(member: tarfile.TarInfo, path: str) -> tarfile.TarInfo | None:
        # The "data" filter refuses absolute names, .. and links leaving dest: this comes
        # from user code. A refused member is skipped and reported, not fatal for the rest.
        try:
            return tarfile.data_filter(member, path)
        except tarfile.FilterError as exc:
            refused.append(f"{member.name}: {exc}")
            return None

    with tarfile.open(source, "r") as tar:
        tar.extractall(dest, filter=only_inside)
    return refused


def remove_local(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
