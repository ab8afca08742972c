"""Inputs: fetching what an execution names (URLs, paths on this machine, earlier outputs) into a cache.

A URL is fetched once: the cache keeps the validators the server gave
(ETag, Last-Modified) and asks with them next time, so an unchanged file
costs one small request and no transfer. Everything fetched is checked before
the execution starts: a failure ends it with the input and URL named, before
any GPU time is spent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import re
import shutil
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING, Any, BinaryIO
from urllib.parse import unquote, urlsplit

from botocore.exceptions import BotoCoreError, ClientError

from . import safeio
from .locks import KeyedLocks
from .outputs import OutputError, OutputStore, size_and_sha256

if TYPE_CHECKING:
    import aioboto3

Progress = Callable[[int, int | None], None]  # bytes done, bytes in all (None: unknown)


class InputError(Exception):
    def __init__(self, url: str, detail: str) -> None:
        super().__init__(f"{url}: {detail}")
        self.url = url
        self.detail = detail


@dataclass(frozen=True, slots=True)
class InputFile:
    name: str  # file name inside /valohai/inputs/<input>/
    source: Path  # where the bytes are on this machine
    uri: str
    size: int
    sha256: str


def file_name(url: str) -> str:
    """The last path segment, as a safe file name (never a path)."""
    name = unquote(PurePosixPath(urlsplit(url).path).name)
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        return "download"
    return name


def readable_by(path: Path, uid: int) -> bool:
    """Whether user ``uid`` could read ``path`` themselves (the daemon may run as root)."""
    try:
        os.close(safeio.open_as_user(str(path), uid))
    except safeio.Unsafe:
        return False
    return True


class InputFetcher:
    def __init__(self, cache_root: Path, outputs: OutputStore, *, s3_options: dict[str, str] | None = None,
                 max_bytes: int = 100 << 30) -> None:
        self.cache_root = cache_root
        self.max_bytes = max_bytes
        self.s3_options = s3_options or {}
        self.outputs = outputs
        cache_root.mkdir(parents=True, exist_ok=True)
        self._locks = KeyedLocks()  # one download at a time per URL
        self.fetches = 0  # transfers actually made (not answered from the cache)

    async def fetch(self, url: str, owner_uid: int, progress: Progress | None = None) -> list[InputFile]:
        """The file (or, for an S3 glob, the files) that ``url`` names, from the cache when unchanged."""
        scheme = urlsplit(url).scheme
        if scheme in ("http", "https"):
            return [await self._http(url, progress)]
        if scheme == "s3":
            return await self._s3(url, progress)
        if scheme == "runyard":
            return await self._output(url)
        if scheme in ("", "file"):
            return [await asyncio.to_thread(self._local, url, owner_uid)]
        raise InputError(url, f"unsupported scheme {scheme!r} (http, https, s3, runyard:// or a path)")

    async def _s3(self, url: str, progress: Progress | None = None) -> list[InputFile]:
        parts = urlsplit(url)
        bucket, pattern = parts.netloc, unquote(parts.path.lstrip("/"))
        if not bucket or not pattern:
            raise InputError(url, "write S3 inputs as s3://bucket/key (the key may use * and **)")
        wildcard = _wildcard_at(pattern)
        try:
            async with self._s3_session().client("s3", **self.s3_options) as s3:
                if wildcard is None:
                    try:
                        head = await s3.head_object(Bucket=bucket, Key=pattern)
                    except ClientError:
                        # A HEAD answer has no body to say whether the key or the bucket is missing.
                        await s3.head_bucket(Bucket=bucket)
                        raise
                    objects = [(pattern, str(head["ETag"]), int(head["ContentLength"]))]
                else:
                    matcher = re.compile(_glob_regex(pattern))
                    objects = []
                    paginator = s3.get_paginator("list_objects_v2")
                    async for page in paginator.paginate(Bucket=bucket, Prefix=pattern[:wildcard]):
                        for item in page.get("Contents", []):
                            if matcher.fullmatch(item["Key"]):
                                objects.append((item["Key"], str(item["ETag"]), int(item["Size"])))
                    if not objects:
                        raise InputError(url, "no object matches")
                total = sum(size for _, _, size in objects)
                done = 0
                found = []
                for key, etag, size in objects:
                    def step(got: int, _: int | None, base: int = done) -> None:
                        if progress is not None:
                            progress(base + got, total)
                    found.append(await self._s3_object(s3, bucket, key, etag, size, step))
                    done += size
                return found
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            missing = "no such bucket" if exc.operation_name in ("HeadBucket", "ListObjectsV2") else "no such key"
            detail = {"NoSuchBucket": "no such bucket", "404": missing, "NoSuchKey": "no such key",
                      "403": "access denied", "AccessDenied": "access denied"}.get(code, str(exc))
            raise InputError(url, detail) from None
        except BotoCoreError as exc:
            raise InputError(url, f"cannot reach S3: {exc}") from None

    async def _s3_object(self, s3: Any, bucket: str, key: str, etag: str, size: int,
                         progress: Progress | None = None) -> InputFile:
        uri = f"s3://{bucket}/{key}"
        entry = self.cache_root / hashlib.sha256(uri.encode()).hexdigest()
        async with self._locks.hold(uri):
            meta = await asyncio.to_thread(_usable, entry)
            if meta.get("etag") == etag:
                await asyncio.to_thread(os.utime, entry)
                return _cached(entry, uri, meta)
            response = await s3.get_object(Bucket=bucket, Key=key)
            return await self._fill(entry, uri, response["Body"].iter_chunks(1 << 20), size, progress,
                                    {"name": PurePosixPath(key).name or "download", "etag": etag})

    async def _fill(self, entry: Path, uri: str, chunks: AsyncIterator[bytes], expected: int | None,
                    progress: Progress | None, meta: dict[str, Any]) -> InputFile:
        """Stream a download into cache entry ``entry``; ``meta`` (name, validators) is kept beside it."""
        await asyncio.to_thread(entry.mkdir, parents=True, exist_ok=True)
        part = entry / "data.part"
        fh = await asyncio.to_thread(_open_part, entry, part)
        digest = hashlib.sha256()
        size = 0

        def sink(block: bytes) -> None:
            fh.write(block)
            digest.update(block)

        # Hashing and writing a block happen in a worker thread while the next block arrives:
        # the loop only hands blocks over, and the blocks stay in order (one write at a time).
        loop = asyncio.get_running_loop()
        writing: asyncio.Future[None] | None = None
        try:
            async for block in chunks:
                if writing is not None:
                    await asyncio.shield(writing)
                writing = loop.run_in_executor(None, sink, block)
                size += len(block)
                if progress is not None:
                    progress(size, expected)
            if writing is not None:
                await asyncio.shield(writing)
        except BaseException:
            ended_early = True
            raise
        else:
            ended_early = False
        finally:
            if writing is not None:
                # The worker may still hold the file (a cancelled download): it finishes before the close.
                await asyncio.wait([writing])
                if not writing.cancelled():
                    writing.exception()  # raised above already where it mattered
            await asyncio.to_thread(fh.close)
            if ended_early:  # a stop, a failed transfer: nothing half-downloaded stays in the cache
                await asyncio.to_thread(_drop_part, part)
        if expected is not None and size != expected:
            await asyncio.to_thread(_drop_part, part)
            raise InputError(uri, f"transfer cut short ({size} of {expected} bytes)")
        self.fetches += 1
        meta = {**meta, "size": size, "sha256": digest.hexdigest()}
        await asyncio.to_thread(_commit_part, entry, part, meta)
        await asyncio.to_thread(self.evict, entry)
        return _cached(entry, uri, meta)

    def _s3_session(self) -> aioboto3.Session:
        # Imported on first use: a daemon without S3 inputs starts (and answers) that much sooner.
        import aioboto3

        # Credentials from the usual AWS sources (environment, ~/.aws, instance role); never logged.
        return aioboto3.Session()

    def evict(self, keep: Path) -> list[Path]:
        """Drop least recently used entries until the cache fits ``max_bytes``; ``keep`` stays.

        Workspaces hold their inputs by hard link, so a running execution never
        loses a file evicted here.
        """
        entries = []
        for entry in self.cache_root.iterdir():
            data = entry / "data"
            if entry.is_dir() and data.exists():
                entries.append((entry.stat().st_mtime, entry, data.stat().st_size))
        total = sum(size for _, _, size in entries)
        removed = []
        for _, entry, size in sorted(entries):
            if total <= self.max_bytes:
                break
            if entry == keep:
                continue
            shutil.rmtree(entry, ignore_errors=True)
            total -= size
            removed.append(entry)
        return removed

    async def _output(self, url: str) -> list[InputFile]:
        parts = urlsplit(url)
        try:
            execution_id = int(parts.netloc)
        except ValueError:
            raise InputError(url, "write an earlier output as runyard://<execution id>/<path>") from None
        name = unquote(parts.path.lstrip("/"))
        try:
            where = self.outputs.location(execution_id, name)
        except OutputError as exc:
            raise InputError(url, str(exc)) from None
        missing = f"execution {execution_id} has no output {name!r}"
        if where.startswith("s3://"):
            try:
                found = await self._s3(where)
            except InputError as exc:
                raise InputError(url, missing if exc.detail == "no such key" else exc.detail) from None
            return [dataclasses.replace(f, uri=url) for f in found]
        path = Path(where)
        if not await asyncio.to_thread(path.is_file):
            raise InputError(url, missing)
        size, sha = await asyncio.to_thread(size_and_sha256, path)
        return [InputFile(PurePosixPath(name).name, path, url, size, sha)]

    def _local(self, url: str, owner_uid: int) -> InputFile:
        """A path on this machine, read as its submitter could: opened once, checked and copied from that
        descriptor into the cache, so what runs is what was checked (never the path opened again)."""
        path = unquote(urlsplit(url).path) if url.startswith("file:") else url
        try:
            fd = safeio.open_as_user(path, owner_uid)
        except safeio.Unsafe as exc:
            raise InputError(url, str(exc)) from None
        try:
            st = os.fstat(fd)
            # The same file unchanged (the kernel moves ctime on every write) is copied once.
            key = f"file:{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}"
            entry = self.cache_root / hashlib.sha256(key.encode()).hexdigest()
            meta = _meta(entry)
            if meta.get("key") == key and (entry / "data").exists():
                os.utime(entry)
            else:
                entry.mkdir(parents=True, exist_ok=True)
                size, sha = safeio.copy_hashing(fd, entry / "data")
                (entry / "data").chmod(0o444)  # placed by hard link: a run must not change the cached copy
                meta = {"name": PurePosixPath(path).name or "download", "key": key, "size": size, "sha256": sha}
                (entry / "meta.json").write_text(json.dumps(meta))
                self.evict(entry)
        finally:
            os.close(fd)
        # The name the user wrote (one file may be reached under several names).
        return dataclasses.replace(_cached(entry, url, meta), name=PurePosixPath(path).name or "download")

    async def _http(self, url: str, progress: Progress | None = None) -> InputFile:
        entry = self.cache_root / hashlib.sha256(url.encode()).hexdigest()
        async with self._locks.hold(url):  # one download for two executions asking
            meta = await asyncio.to_thread(_usable, entry)
            headers = {}
            if meta:
                if meta.get("etag"):
                    headers["If-None-Match"] = str(meta["etag"])
                if meta.get("last_modified"):
                    headers["If-Modified-Since"] = str(meta["last_modified"])
            import aiohttp  # on first use, as aioboto3

            try:
                timeout = aiohttp.ClientTimeout(total=None, sock_connect=30, sock_read=300)
                async with aiohttp.ClientSession(timeout=timeout) as session, session.get(
                    url, headers=headers
                ) as response:
                    if response.status == 304 and meta:
                        await asyncio.to_thread(os.utime, entry)  # recently used: the last to be evicted
                        return _cached(entry, url, meta)
                    if response.status != 200:
                        raise InputError(url, f"HTTP {response.status} {response.reason or ''}".strip())
                    return await self._fill(
                        entry, url, response.content.iter_chunked(1 << 20), response.content_length, progress,
                        {"name": file_name(url), "etag": response.headers.get("ETag", ""),
                         "last_modified": response.headers.get("Last-Modified", "")})
            except aiohttp.ClientError as exc:
                raise InputError(url, f"cannot download: {exc}") from None
            except TimeoutError:
                raise InputError(url, "download timed out") from None


def _open_part(entry: Path, part: Path) -> BinaryIO:
    entry.mkdir(parents=True, exist_ok=True)
    return part.open("wb")


def _commit_part(entry: Path, part: Path, meta: dict[str, Any]) -> None:
    part.chmod(0o444)  # placed by hard link: a run must not change the cached copy
    part.replace(entry / "data")
    (entry / "meta.json").write_text(json.dumps(meta))


def _usable(entry: Path) -> dict[str, Any]:
    """A cache entry's meta when its data is there too, else nothing."""
    return _meta(entry) if (entry / "data").exists() else {}


def _drop_part(part: Path) -> None:
    with contextlib.suppress(OSError):
        part.unlink()
    with contextlib.suppress(OSError):
        part.parent.rmdir()  # the entry, if the download was all it held


def remove_partial_downloads(cache_root: Path) -> None:
    """Downloads a daemon stopped in the middle of (none can be under way when it starts)."""
    for part in cache_root.glob("*/data.part"):
        _drop_part(part)


def _meta(entry: Path) -> dict[str, Any]:
    path = entry / "meta.json"
    return dict(json.loads(path.read_text())) if path.exists() else {}


def _cached(entry: Path, uri: str, meta: dict[str, Any]) -> InputFile:
    return InputFile(str(meta["name"]), entry / "data", uri, int(meta["size"]), str(meta["sha256"]))


def _wildcard_at(pattern: str) -> int | None:
    """Where an S3 key pattern's first wildcard is, if it has one."""
    return next((i for i, c in enumerate(pattern) if c in "*?["), None)


def _glob_regex(pattern: str) -> str:
    """`**` crosses folders, `*` and `?` stay within one, as in valohai.yaml inputs."""
    out, i = [], 0
    while i < len(pattern):
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
        elif pattern[i] == "*":
            out.append("[^/]*")
            i += 1
        elif pattern[i] == "?":
            out.append("[^/]")
            i += 1
        else:
            out.append(re.escape(pattern[i]))
            i += 1
    return "".join(out)


def layout(files: list[InputFile], url: str, options: dict[str, str]) -> list[InputFile]:
    """Name each file inside its input folder as valohai.yaml asks (keep-directories, filename)."""
    keep = options.get("keep_directories", "none")
    out = []
    for f in files:
        name = f.name
        if keep in ("full", "suffix") and f.uri.startswith("s3://"):
            key = f.uri.split("/", 3)[3]
            if keep == "full":
                name = key
            else:  # relative to the folder where the pattern's wildcard begins
                pattern = url.split("/", 3)[3] if url.count("/") >= 3 else ""
                cut = _wildcard_at(pattern)
                cut = len(pattern) if cut is None else cut
                base = pattern[: pattern.rfind("/", 0, cut) + 1]
                name = key[len(base):] if key.startswith(base) else f.name
        out.append(dataclasses.replace(f, name=name))
    if options.get("filename") and len(out) == 1:
        out = [dataclasses.replace(out[0], name=options["filename"])]
    return out


def _inside(name: str, fallback: str) -> str:
    """A name from a URL or an S3 key must stay inside the input's folder."""
    rel = PurePosixPath(name)
    if rel.is_absolute() or ".." in rel.parts or not rel.parts or "\0" in name:
        return fallback
    return rel.as_posix()


def place(files: dict[str, list[InputFile]], work: Path, root: str, *, copy: bool = True, link: bool = True
          ) -> tuple[dict[str, dict[str, list[dict[str, object]]]], list[tuple[InputFile, str]]]:
    """Lay fetched files out under ``work``/inputs/<name>/ and describe them as inputs.json does.

    With ``copy`` false the folders are made but the files are left to the caller
    (a pool host gets them from its own cache); the (file, workspace path) pairs say where.
    ``link`` hard-links from the cache, which is safe where the workspace's inputs are
    mounted read-only (containers); a plain process gets its own copy.
    """
    described: dict[str, dict[str, list[dict[str, object]]]] = {}
    wanted: list[tuple[InputFile, str]] = []
    for input_name, items in files.items():
        folder = work / "inputs" / input_name
        folder.mkdir(parents=True, exist_ok=True)
        entries: list[dict[str, object]] = []
        for item in items:
            name = _inside(item.name, file_name(item.uri))
            rel = f"inputs/{input_name}/{name}"
            if copy:
                target = work / rel
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    if not link:
                        raise OSError
                    os.link(item.source, target)  # same filesystem: no copy
                except OSError:
                    shutil.copyfile(item.source, target)
            wanted.append((item, rel))
            entries.append({"name": name, "path": f"{root}/{rel}", "uri": item.uri,
                            "size": item.size, "checksums": {"sha256": item.sha256}})
        described[input_name] = {"files": entries}
    return described, wanted
