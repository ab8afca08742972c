"""The outputs store: a local directory, one folder per execution.

Files are collected from the execution's outputs directory after it ends. A
symlink that points outside that directory is refused rather than followed.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath


class OutputError(Exception):
    pass


@dataclass(slots=True)
class Collected:
    files: list[tuple[str, int, str]] = field(default_factory=list)  # path, size, sha256
    refused: list[str] = field(default_factory=list)


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


class LocalOutputStore:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)

    def _dir(self, execution_id: int) -> Path:
        return self.root / str(int(execution_id))

    def collect(self, execution_id: int, source: Path) -> Collected:
        """Copy every regular file under ``source`` into the store; idempotent."""
        result = Collected()
        if not source.is_dir():
            return result
        source_real = source.resolve()
        target_root = self._dir(execution_id)
        for dirpath, dirnames, filenames in os.walk(source):
            base = Path(dirpath)
            for name in sorted(filenames) + [d for d in dirnames if (base / d).is_symlink()]:
                path = base / name
                rel = path.relative_to(source).as_posix()
                if path.is_symlink():
                    real = path.resolve()
                    if not real.is_relative_to(source_real) or not real.is_file():
                        result.refused.append(f"{rel} (symlink pointing outside the outputs directory)")
                        continue
                elif not path.is_file():
                    result.refused.append(f"{rel} (not a regular file)")
                    continue
                size, sha = _copy_hashing(path, target_root / rel)
                result.files.append((rel, size, sha))
        result.files.sort()
        return result

    def path_of(self, execution_id: int, name: str) -> Path:
        rel = PurePosixPath(name)
        if rel.is_absolute() or ".." in rel.parts or not rel.parts:
            raise OutputError(f"output path {name!r} is not inside the execution's outputs")
        return self._dir(execution_id).joinpath(*rel.parts)

    def read(self, execution_id: int, name: str, offset: int, size: int) -> bytes:
        path = self.path_of(execution_id, name)
        try:
            with path.open("rb") as fh:
                fh.seek(offset)
                return fh.read(size)
        except FileNotFoundError:
            raise OutputError(f"execution {execution_id} has no output {name!r}") from None

    def purge(self, execution_id: int) -> None:
        shutil.rmtree(self._dir(execution_id), ignore_errors=True)
