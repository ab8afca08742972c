"""Code snapshots: deterministic, content-addressed tar archives of a tree.

The same files give the same bytes and so the same id, whether they came from a
commit or from the working tree, and each snapshot is stored once. Archives
arrive from clients, so extraction trusts nothing in them.
"""

from __future__ import annotations

import collections
import hashlib
import io
import os
import stat
import tarfile
import threading
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

SNAPSHOT_ID_LENGTH = 64


class SnapshotError(Exception):
    pass


@dataclass(frozen=True, slots=True)
class Entry:
    path: str
    mode: int  # 0o644, 0o755 or 0o120000 for a symlink
    data: bytes  # file content, or the link target


@dataclass(frozen=True, slots=True)
class Snapshot:
    id: str
    data: bytes
    commit: str | None
    files: int
    size: int = 0  # the files' bytes (the archive is larger: tar pads every file to 512 bytes)


def build_archive(entries: list[Entry]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for entry in sorted(entries, key=lambda e: e.path):
            info = tarfile.TarInfo(entry.path)
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            if entry.mode == 0o120000:
                info.type = tarfile.SYMTYPE
                info.linkname = entry.data.decode("utf-8", "surrogateescape")
                info.mode = 0o777
                tar.addfile(info)
            else:
                info.mode = entry.mode
                info.size = len(entry.data)
                tar.addfile(info, io.BytesIO(entry.data))
    return buffer.getvalue()


def snapshot_of(entries: list[Entry], commit: str | None) -> Snapshot:
    data = build_archive(entries)
    size = sum(len(e.data) for e in entries if e.mode != 0o120000)
    return Snapshot(id=hashlib.sha256(data).hexdigest(), data=data, commit=commit, files=len(entries), size=size)


def read_archive_file(data: bytes, name: str) -> bytes | None:
    """One regular file of a snapshot archive held in memory, or None if it has none by that name."""
    wanted = str(_safe_member_path(name))
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        for member in tar:
            if member.name == wanted and member.isfile():
                fh = tar.extractfile(member)
                return fh.read() if fh else None
    return None


def _git_said(exc: Exception) -> str:
    """git's own words from a failed git command, on one line."""
    stderr = getattr(exc, "stderr", "") or ""
    if isinstance(stderr, bytes):
        stderr = stderr.decode("utf-8", "replace")
    lines = [line.strip() for line in str(stderr).splitlines() if line.strip()]
    text = " ".join(lines).removeprefix("stderr: ").strip("' ")
    return text.removeprefix("fatal: ") or str(exc)


def _open_repo(path: Path) -> Any:
    """The repository around ``path``, or None outside one; SnapshotError if git refuses it.

    GitPython opens a repository git itself refuses (e.g. another user's, to root: `safe.directory`)
    and then fails in ways that hide why; asking git first relays what git says.
    """
    import git

    try:
        repo = git.Repo(path, search_parent_directories=True)
    except (git.InvalidGitRepositoryError, git.NoSuchPathError):
        return None
    try:
        repo.git.rev_parse("--git-dir")
    except git.GitCommandError as exc:
        where = repo.working_tree_dir or path
        raise SnapshotError(f"git refuses the repository at {where}: {_git_said(exc)}") from None
    return repo


def uncommitted_changes(path: Path) -> int:
    """How many files of the working tree differ from HEAD (untracked ones too, ignored ones not)."""
    repo = _open_repo(path)
    if repo is None:
        return 0
    return len([line for line in repo.git.status("--porcelain").splitlines() if line.strip()])


def _normal_mode(mode: int) -> int:
    if stat.S_ISLNK(mode) or mode == 0o120000:
        return 0o120000
    return 0o755 if mode & 0o111 else 0o644


def snapshot_commit(repo_path: Path, ref: str) -> Snapshot:
    """Archive the tree of a commit exactly as committed."""
    import git

    repo = _open_repo(repo_path)
    if repo is None:
        raise SnapshotError(f"{repo_path} is not inside a git repository (use --adhoc)")
    try:
        commit = repo.commit(ref)
    except (git.BadName, ValueError):
        raise SnapshotError(f"{ref!r} is not a commit in {repo_path}") from None
    entries: list[Entry] = []
    for item in commit.tree.traverse():
        if not isinstance(item, git.Blob):
            continue  # trees are implicit; submodules are not part of the snapshot
        entries.append(Entry(str(item.path), _normal_mode(item.mode), item.data_stream.read()))
    return snapshot_of(entries, commit.hexsha)


def snapshot_worktree(path: Path) -> Snapshot:
    """Archive the working tree as it is: tracked, modified and untracked files, minus ignored ones."""
    repo = _open_repo(path)
    if repo is None:
        root = path
        names = [
            str(p.relative_to(root))
            for p in sorted(root.rglob("*"))
            if ".git" not in p.relative_to(root).parts and (p.is_file() or p.is_symlink())
        ]
        head = None
    else:
        root = Path(repo.working_tree_dir or path)
        listing = repo.git.ls_files("-co", "--exclude-standard", "-z")
        names = sorted(set(n for n in listing.split("\0") if n))
        try:
            head = repo.head.commit.hexsha + "+adhoc"
        except ValueError:
            head = None  # a repository with no commit yet
    entries: list[Entry] = []
    for name in names:
        full = root / name
        try:
            st = full.lstat()
        except FileNotFoundError:
            continue  # tracked, but deleted in the working tree
        if stat.S_ISLNK(st.st_mode):
            entries.append(Entry(name, 0o120000, os.readlink(full).encode("utf-8", "surrogateescape")))
        elif stat.S_ISREG(st.st_mode):
            entries.append(Entry(name, _normal_mode(st.st_mode), full.read_bytes()))
    return snapshot_of(entries, head)


def _safe_member_path(name: str) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts or not path.parts:
        raise SnapshotError(f"snapshot member {name!r} would escape the repository directory")
    return path


_CACHED_FILES = 256
_CACHED_FILE_MAX = 256 * 1024


class SnapshotStore:
    """Snapshots on disk under ``<data_dir>/snapshots/<id>.tar``."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        # A snapshot is named by its content's hash and never changes once complete, so a file read
        # from it stays true: a sweep submits the same valohai.yaml thousands of times, and finding
        # it means walking the archive's headers.
        self._read: collections.OrderedDict[tuple[str, str], bytes | None] = collections.OrderedDict()
        self._read_lock = threading.Lock()  # read_file runs in worker threads

    def _check_id(self, snapshot_id: str) -> None:
        if len(snapshot_id) != SNAPSHOT_ID_LENGTH or any(c not in "0123456789abcdef" for c in snapshot_id):
            raise SnapshotError(f"{snapshot_id!r} is not a snapshot id (64 lowercase hex digits)")

    def path(self, snapshot_id: str) -> Path:
        self._check_id(snapshot_id)
        return self.root / f"{snapshot_id}.tar"

    def has(self, snapshot_id: str) -> bool:
        return self.path(snapshot_id).exists()

    def cached(self, snapshot_id: str, name: str) -> tuple[bool, bytes | None]:
        """(True, what read_file would return) when it is known without touching the disk.

        A file read once stays true: the snapshot it came from is complete and never removed.
        """
        with self._read_lock:
            key = (snapshot_id, name)
            if key in self._read:
                self._read.move_to_end(key)
                return True, self._read[key]
        return False, None

    def remove_partial_uploads(self) -> None:
        """Uploads cut off by a daemon stop (none can be under way when it starts)."""
        for partial in self.root.glob("*.part"):
            partial.unlink(missing_ok=True)

    def put_chunk(self, snapshot_id: str, offset: int, data: bytes, final: bool,
                  max_bytes: int | None = None) -> None:
        """Append one uploaded chunk; on the last one, verify the content hash. A snapshot that
        grows past ``max_bytes`` is refused and what was uploaded of it removed."""
        target = self.path(snapshot_id)
        if target.exists():
            return
        partial = target.with_suffix(".part")
        size = partial.stat().st_size if partial.exists() else 0
        if offset == 0:
            size = 0
            partial.write_bytes(b"")
        if offset != size:
            raise SnapshotError(f"snapshot upload out of order: expected offset {size}, got {offset}")
        if max_bytes is not None and offset + len(data) > max_bytes:
            partial.unlink(missing_ok=True)
            raise SnapshotError(
                f"the snapshot is larger than this daemon accepts ({max_bytes >> 20} MiB, daemon.max_snapshot_mb): "
                "leave large data out of the repository (.gitignore) and give it as an input instead")
        with partial.open("ab") as fh:
            fh.write(data)
        if final:
            digest = hashlib.sha256()
            with partial.open("rb") as fh:
                for block in iter(lambda: fh.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() != snapshot_id:
                partial.unlink()
                raise SnapshotError("snapshot upload does not match its id (corrupted or wrong id)")
            partial.rename(target)

    def read_file(self, snapshot_id: str, name: str) -> bytes | None:
        """One regular file from the snapshot, or None if it has no such file."""
        key = (snapshot_id, name)
        with self._read_lock:
            if key in self._read:
                self._read.move_to_end(key)
                return self._read[key]
        data = self._read_file(snapshot_id, name)
        if data is None or len(data) <= _CACHED_FILE_MAX:
            with self._read_lock:
                self._read[key] = data
                while len(self._read) > _CACHED_FILES:
                    self._read.popitem(last=False)
        return data

    def _read_file(self, snapshot_id: str, name: str) -> bytes | None:
        wanted = str(_safe_member_path(name))
        with tarfile.open(self.path(snapshot_id), mode="r") as tar:
            for member in tar:
                if member.name == wanted and member.isfile():
                    fh = tar.extractfile(member)
                    return fh.read() if fh else None
        return None

    def list_files(self, snapshot_id: str) -> list[tuple[str, int]]:
        with tarfile.open(self.path(snapshot_id), mode="r") as tar:
            return [(m.name, m.size) for m in tar if m.isfile() or m.issym()]

    def extract(self, snapshot_id: str, dest: Path) -> None:
        """Extract into ``dest``; every member must stay inside it, no write goes through a link."""
        dest.mkdir(parents=True, exist_ok=True)
        links: set[PurePosixPath] = set()
        with tarfile.open(self.path(snapshot_id), mode="r") as tar:
            for member in tar:
                rel = _safe_member_path(member.name)
                if any(parent in links for parent in rel.parents):
                    raise SnapshotError(f"snapshot member {member.name!r} lies beneath a symlink")
                target = dest.joinpath(*rel.parts)
                target.parent.mkdir(parents=True, exist_ok=True)
                if member.issym():
                    os.symlink(member.linkname, target)
                    links.add(rel)
                elif member.isfile():
                    fh = tar.extractfile(member)
                    assert fh is not None
                    fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                                 0o755 if member.mode & 0o111 else 0o644)
                    with os.fdopen(fd, "wb") as out:
                        while block := fh.read(1 << 20):
                            out.write(block)
                elif member.isdir():
                    target.mkdir(exist_ok=True)
                else:
                    raise SnapshotError(f"snapshot member {member.name!r} is not a file, link or directory")
