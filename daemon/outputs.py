"""The outputs store: a local directory, one folder per execution, or an S3 bucket.

Files are collected from the execution's outputs directory after it ends (and
while it runs, for live outputs). A container may still be changing that
directory, so nothing in it is opened by path: each file is reached from the
outputs folder's descriptor without following any link (safeio.open_beneath),
checked to be a regular file, and copied and hashed from that descriptor. A
symlink, a device or a FIFO is refused with a note, never followed or read.
"""

from __future__ import annotations

import asyncio
import errno
import hashlib
import json
import os
import shutil
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from botocore.exceptions import BotoCoreError, ClientError

from . import safeio


class OutputError(Exception):
    pass


@dataclass(slots=True)
class Collected:
    files: list[tuple[str, int, str]] = field(default_factory=list)  # path, size, sha256
    refused: list[str] = field(default_factory=list)
    properties: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> what valohai-utils attached


METADATA_JSONL = "valohai.metadata.jsonl"
SIDECAR = ".metadata.json"


def split_properties(files: list[tuple[str, Path]], source: Path) -> tuple[list[tuple[str, Path]],
                                                                          dict[str, dict[str, Any]], list[str]]:
    """Take Valohai's metadata files out of the outputs and read the properties they give.

    `valohai.metadata.jsonl` in the outputs root has one {"file": ..., "metadata": {...}}
    per line; `<file>.metadata.json` sits beside its file. Neither is an output itself.
    Both are read from under ``source`` without following links.
    """
    names = {rel for rel, _ in files}
    properties: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    kept: list[tuple[str, Path]] = []
    for rel, path in files:
        if rel == METADATA_JSONL:
            try:
                text = _read_output(source, rel)
            except (safeio.Unsafe, OSError) as exc:
                problems.append(f"{rel}: {exc}")
                continue
            for number, line in enumerate(text.splitlines(), 1):
                if not line.strip():
                    continue
                try:
                    entry = json.loads(line)
                    target, values = str(entry["file"]), entry["metadata"]
                    if not isinstance(values, dict):
                        raise TypeError
                except (ValueError, KeyError, TypeError):
                    problems.append(f"{METADATA_JSONL} line {number}: not {{\"file\": ..., \"metadata\": {{...}}}}")
                    continue
                properties.setdefault(target, {}).update(values)
        elif rel.endswith(SIDECAR) and rel[: -len(SIDECAR)] in names:
            try:
                values = json.loads(_read_output(source, rel))
                if not isinstance(values, dict):
                    raise TypeError
            except (safeio.Unsafe, OSError, ValueError, TypeError):
                problems.append(f"{rel}: not a JSON object")
                continue
            properties.setdefault(rel[: -len(SIDECAR)], {}).update(values)
        else:
            kept.append((rel, path))
    kept_names = {rel for rel, _ in kept}
    return kept, {k: v for k, v in properties.items() if k in kept_names}, problems


def _read_output(source: Path, rel: str) -> str:
    root = safeio.open_dir(source)
    try:
        fd = safeio.open_beneath(root, rel)
    finally:
        os.close(root)
    with os.fdopen(fd, "rb") as fh:
        return fh.read().decode("utf-8", "replace")


def walk_outputs(source: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """Every regular file under ``source`` as (relative path, path), and what was refused and why.

    The paths are names for the caller: files are opened beneath ``source`` (``_Opened``), never by path.
    """
    files: list[tuple[str, Path]] = []
    refused: list[str] = []
    try:
        root = safeio.open_dir(source)
    except FileNotFoundError:
        return files, refused
    except OSError as exc:  # the outputs folder itself made a link, or a file
        return files, [f"{source.name} ({'symlink, not followed' if exc.errno == errno.ELOOP else exc.strerror})"]
    try:
        for rel, _, why in safeio.walk(root):
            if why is None:
                files.append((rel, source / rel))
            else:
                refused.append(f"{rel} ({why})")
    finally:
        os.close(root)
    return files, refused


class _Opened:
    """The outputs folder, opened once for a collection; files are opened beneath it."""

    def __init__(self, source: Path) -> None:
        self.root = safeio.open_dir(source)

    def open(self, rel: str, refused: list[str]) -> int | None:
        """A descriptor of output ``rel``, or None (refused, with the reason added, or gone)."""
        try:
            return safeio.open_beneath(self.root, rel)
        except safeio.Unsafe as exc:
            refused.append(f"{rel} ({exc})")
        except FileNotFoundError:
            pass
        return None

    def close(self) -> None:
        os.close(self.root)


def _wanted(rel: str, fd: int, only: Collection[str] | None, skip: Mapping[str, int] | None) -> bool:
    if only is not None and rel not in only:
        return False
    return not (skip and rel in skip and os.fstat(fd).st_size == skip[rel])


def safe_name(name: str) -> PurePosixPath:
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts:
        raise OutputError(f"output path {name!r} is not inside the execution's outputs")
    return rel


class OutputStore(Protocol):
    async def collect(self, execution_id: int, source: Path, *, only: Collection[str] | None = None,
                      skip: Mapping[str, int] | None = None) -> Collected: ...
    async def read(self, execution_id: int, name: str, offset: int, size: int) -> bytes: ...
    async def purge(self, execution_id: int) -> None: ...
    def location(self, execution_id: int, name: str) -> str: ...


class LocalOutputStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _dir(self, execution_id: int) -> Path:
        return self.root / str(int(execution_id))

    async def collect(self, execution_id: int, source: Path, *, only: Collection[str] | None = None,
                      skip: Mapping[str, int] | None = None) -> Collected:
        """Copy the regular files under ``source`` into the store; idempotent.

        ``only`` limits it to those paths; ``skip`` leaves out paths already stored
        with that size (live outputs, uploaded while the execution ran).
        """
        return await asyncio.to_thread(self._collect, execution_id, source, only, skip)

    def _collect(self, execution_id: int, source: Path, only: Collection[str] | None,
                 skip: Mapping[str, int] | None) -> Collected:
        files, refused = walk_outputs(source)
        files, properties, problems = split_properties(files, source)
        result = Collected(refused=refused + problems, properties=properties)
        if not files:
            return result
        opened = _Opened(source)
        try:
            for rel, _ in files:
                if only is not None and rel not in only:
                    continue
                fd = opened.open(rel, result.refused)
                if fd is None:
                    continue
                try:
                    if not _wanted(rel, fd, only, skip):
                        continue
                    size, sha = safeio.copy_hashing(fd, self._dir(execution_id) / rel)
                finally:
                    os.close(fd)
                result.files.append((rel, size, sha))
        finally:
            opened.close()
        return result

    def path_of(self, execution_id: int, name: str) -> Path:
        return self._dir(execution_id).joinpath(*safe_name(name).parts)

    def location(self, execution_id: int, name: str) -> str:
        return str(self.path_of(execution_id, name))

    async def read(self, execution_id: int, name: str, offset: int, size: int) -> bytes:
        return await asyncio.to_thread(self._read, execution_id, name, offset, size)

    def _read(self, execution_id: int, name: str, offset: int, size: int) -> bytes:
        path = self.path_of(execution_id, name)
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                return fh.read(size)
        except FileNotFoundError:
            raise OutputError(f"execution {execution_id} has no output {name!r}") from None

    async def purge(self, execution_id: int) -> None:
        await asyncio.to_thread(shutil.rmtree, self._dir(execution_id), True)


class S3OutputStore:
    """Outputs under s3://<bucket>/<prefix><execution id>/<path>; large files go up in parts."""

    def __init__(self, bucket: str, prefix: str, s3_options: dict[str, str]) -> None:
        self.bucket = bucket
        self.prefix = prefix
        self.s3_options = s3_options
        import aioboto3  # only a daemon storing its outputs in S3 pays for importing it

        # Credentials from the usual AWS sources (environment, ~/.aws, instance role); never logged.
        self.session = aioboto3.Session()

    def _key(self, execution_id: int, name: str) -> str:
        return f"{self.prefix}{int(execution_id)}/{safe_name(name).as_posix()}"

    def location(self, execution_id: int, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(execution_id, name)}"

    async def collect(self, execution_id: int, source: Path, *, only: Collection[str] | None = None,
                      skip: Mapping[str, int] | None = None) -> Collected:
        files, refused = await asyncio.to_thread(walk_outputs, source)
        files, properties, problems = await asyncio.to_thread(split_properties, files, source)
        result = Collected(refused=refused + problems, properties=properties)
        chosen = [rel for rel, _ in files if only is None or rel in only]
        if not chosen:
            return result
        opened = await asyncio.to_thread(_Opened, source)
        try:
            async with self.session.client("s3", **self.s3_options) as s3:
                for rel in chosen:
                    fd = await asyncio.to_thread(opened.open, rel, result.refused)
                    if fd is None:
                        continue
                    try:
                        if not await asyncio.to_thread(_wanted, rel, fd, only, skip):
                            continue
                        # Read, hashed and uploaded from the one descriptor; upload_fileobj switches
                        # to multipart upload above 8 MiB.
                        reader = _HashingReader(fd)
                        await s3.upload_fileobj(reader, self.bucket, self._key(execution_id, rel))
                    finally:
                        os.close(fd)
                    result.files.append((rel, reader.size, reader.digest.hexdigest()))
        except (ClientError, BotoCoreError, OSError) as exc:
            raise OutputError(f"cannot upload outputs to s3://{self.bucket}/{self.prefix}: {exc}") from None
        finally:
            opened.close()
        return result

    async def read(self, execution_id: int, name: str, offset: int, size: int) -> bytes:
        if size <= 0:
            return b""
        try:
            async with self.session.client("s3", **self.s3_options) as s3:
                response = await s3.get_object(Bucket=self.bucket, Key=self._key(execution_id, name),
                                               Range=f"bytes={offset}-{offset + size - 1}")
                async with response["Body"] as body:
                    return bytes(await body.read())
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            if code == "InvalidRange":
                return b""
            if code in ("NoSuchKey", "404"):
                raise OutputError(f"execution {execution_id} has no output {name!r}") from None
            raise OutputError(f"cannot read {self.location(execution_id, name)}: {exc}") from None

    async def purge(self, execution_id: int) -> None:
        prefix = f"{self.prefix}{int(execution_id)}/"
        async with self.session.client("s3", **self.s3_options) as s3:
            paginator = s3.get_paginator("list_objects_v2")
            async for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
                keys = [{"Key": item["Key"]} for item in page.get("Contents", [])]
                if keys:
                    await s3.delete_objects(Bucket=self.bucket, Delete={"Objects": keys})


class _HashingReader:
    """What upload_fileobj reads: the descriptor's bytes, read and hashed in a worker thread."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = 0
        self.digest = hashlib.sha256()

    def _read(self, count: int) -> bytes:
        block = os.read(self.fd, count)
        self.digest.update(block)
        self.size += len(block)
        return block

    async def read(self, count: int = safeio.BLOCK) -> bytes:
        return await asyncio.to_thread(self._read, count if count > 0 else safeio.BLOCK)


def size_and_sha256(path: Path) -> tuple[int, str]:
    """A file's size and SHA-256, read once."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()
