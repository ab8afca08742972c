"""The outputs store: a local directory, one folder per execution, or an S3 bucket.

Files are collected from the execution's outputs directory after it ends. A
symlink that points outside that directory is refused rather than followed.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import aioboto3
from botocore.exceptions import BotoCoreError, ClientError


class OutputError(Exception):
    pass


@dataclass(slots=True)
class Collected:
    files: list[tuple[str, int, str]] = field(default_factory=list)  # path, size, sha256
    refused: list[str] = field(default_factory=list)
    properties: dict[str, dict[str, Any]] = field(default_factory=dict)  # path -> what valohai-utils attached


METADATA_JSONL = "valohai.metadata.jsonl"
SIDECAR = ".metadata.json"


def split_properties(files: list[tuple[str, Path]]) -> tuple[list[tuple[str, Path]], dict[str, dict[str, Any]],
                                                              list[str]]:
    """Take Valohai's metadata files out of the outputs and read the properties they give.

    `valohai.metadata.jsonl` in the outputs root has one {"file": ..., "metadata": {...}}
    per line; `<file>.metadata.json` sits beside its file. Neither is an output itself.
    """
    names = {rel for rel, _ in files}
    properties: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    kept: list[tuple[str, Path]] = []
    for rel, path in files:
        if rel == METADATA_JSONL:
            for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
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
                values = json.loads(path.read_text(errors="replace"))
                if not isinstance(values, dict):
                    raise TypeError
            except (ValueError, TypeError):
                problems.append(f"{rel}: not a JSON object")
                continue
            properties.setdefault(rel[: -len(SIDECAR)], {}).update(values)
        else:
            kept.append((rel, path))
    kept_names = {rel for rel, _ in kept}
    return kept, {k: v for k, v in properties.items() if k in kept_names}, problems


def _copy_hashing(src: Path, dst: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(dst.name + ".runyard-part")
    with src.open("rb") as fin, tmp.open("wb") as fout:
        while block := fin.read(1 << 20):
            digest.update(block)
            fout.write(block)
            size += len(block)
    tmp.replace(dst)
    return size, digest.hexdigest()


def walk_outputs(source: Path) -> tuple[list[tuple[str, Path]], list[str]]:
    """Every regular file under ``source`` as (relative path, path), and what was refused and why."""
    files: list[tuple[str, Path]] = []
    refused: list[str] = []
    if not source.is_dir():
        return files, refused
    source_real = source.resolve()
    for dirpath, dirnames, filenames in os.walk(source):
        base = Path(dirpath)
        for name in sorted(filenames) + [d for d in dirnames if (base / d).is_symlink()]:
            path = base / name
            rel = path.relative_to(source).as_posix()
            if path.is_symlink():
                real = path.resolve()
                if not real.is_relative_to(source_real) or not real.is_file():
                    refused.append(f"{rel} (symlink pointing outside the outputs directory)")
                    continue
            elif not path.is_file():
                refused.append(f"{rel} (not a regular file)")
                continue
            files.append((rel, path))
    return sorted(files), refused


def _chosen(files: list[tuple[str, Path]], only: Collection[str] | None,
            skip: Mapping[str, int] | None) -> list[tuple[str, Path]]:
    chosen = []
    for rel, path in files:
        if only is not None and rel not in only:
            continue
        if skip and rel in skip and path.stat().st_size == skip[rel]:
            continue
        chosen.append((rel, path))
    return chosen


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
        files, properties, problems = split_properties(files)
        files = _chosen(files, only, skip)
        result = Collected(refused=refused + problems, properties=properties)
        for rel, path in files:
            size, sha = _copy_hashing(path, self._dir(execution_id) / rel)
            result.files.append((rel, size, sha))
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
        # Credentials from the usual AWS sources (environment, ~/.aws, instance role); never logged.
        self.session = aioboto3.Session()

    def _key(self, execution_id: int, name: str) -> str:
        return f"{self.prefix}{int(execution_id)}/{safe_name(name).as_posix()}"

    def location(self, execution_id: int, name: str) -> str:
        return f"s3://{self.bucket}/{self._key(execution_id, name)}"

    async def collect(self, execution_id: int, source: Path, *, only: Collection[str] | None = None,
                      skip: Mapping[str, int] | None = None) -> Collected:
        files, refused = await asyncio.to_thread(walk_outputs, source)
        files, properties, problems = await asyncio.to_thread(split_properties, files)
        files = await asyncio.to_thread(_chosen, files, only, skip)
        result = Collected(refused=refused + problems, properties=properties)
        try:
            async with self.session.client("s3", **self.s3_options) as s3:
                for rel, path in files:
                    size, sha = await asyncio.to_thread(size_and_sha256, path)
                    # upload_file switches to multipart upload above 8 MiB
                    await s3.upload_file(str(path), self.bucket, self._key(execution_id, rel))
                    result.files.append((rel, size, sha))
        except (ClientError, BotoCoreError, OSError) as exc:
            raise OutputError(f"cannot upload outputs to s3://{self.bucket}/{self.prefix}: {exc}") from None
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


def size_and_sha256(path: Path) -> tuple[int, str]:
    """A file's size and SHA-256, read once."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as fh:
        while block := fh.read(1 << 20):
            digest.update(block)
            size += len(block)
    return size, digest.hexdigest()
