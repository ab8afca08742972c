"""Opening files the daemon (often root) must not be tricked into reading.

Every path here is resolved one component at a time on directory descriptors,
and the kernel never follows a link for us: a link is either refused (outputs)
or followed by this code with the same checks as any other step (a local-path
input, resolved with the submitting user's permissions). What is checked is the
open descriptor, and the bytes are read from that descriptor: nothing is opened
by path twice, so a path swapped for a link after the check reads nothing new.
"""

from __future__ import annotations

import errno
import hashlib
import os
import pwd
import stat
from collections import deque
from collections.abc import Iterator
from pathlib import Path

_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: a FIFO swapped in after the type check must not hang the daemon in open().
_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_MAX_LINKS = 40  # as the kernel's own limit on links in one lookup
BLOCK = 1 << 20


class Unsafe(Exception):
    """The path names something that may not be read: the message says why, for the user."""


def _groups(uid: int) -> set[int]:
    try:
        user = pwd.getpwuid(uid)
    except KeyError:
        return set()
    return set(os.getgrouplist(user.pw_name, user.pw_gid))


def _allowed(st: os.stat_result, uid: int, groups: set[int], bits: tuple[int, int, int]) -> bool:
    """The kernel's mode check (owner, else group, else other) for user ``uid``; ACLs are not consulted."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode & bits[0])
    if st.st_gid in groups:
        return bool(st.st_mode & bits[1])
    return bool(st.st_mode & bits[2])


_SEARCH = (stat.S_IXUSR, stat.S_IXGRP, stat.S_IXOTH)
_READ = (stat.S_IRUSR, stat.S_IRGRP, stat.S_IROTH)


def open_as_user(path: str, uid: int) -> int:
    """A read-only descriptor of the regular file ``path`` as user ``uid`` would reach it.

    Links are followed here, not by the kernel, and every directory passed through
    (including those a link leads to) needs search permission for ``uid``; the file
    needs read permission. Raises ``Unsafe`` with the reason otherwise.
    """
    if not path.startswith("/"):
        raise Unsafe("a path on the daemon's machine must be absolute")
    groups = _groups(uid)
    todo = deque(path.split("/"))
    links = 0
    cur = os.open("/", _DIR)
    try:
        while todo:
            name = todo.popleft()
            if name in ("", "."):
                continue
            if not _allowed(os.fstat(cur), uid, groups, _SEARCH):
                raise Unsafe("you may not read this file")
            try:
                st = os.stat(name, dir_fd=cur, follow_symlinks=False)
                if stat.S_ISLNK(st.st_mode):
                    links += 1
                    if links > _MAX_LINKS:
                        raise Unsafe("too many levels of symbolic links")
                    target = os.readlink(name, dir_fd=cur)
                    if target.startswith("/"):
                        os.close(cur)
                        cur = os.open("/", _DIR)
                    todo.extendleft(reversed(target.split("/")))
                    continue
                if any(part not in ("", ".") for part in todo) or name == "..":
                    # O_NOFOLLOW: a link put here since the lstat above fails instead of being followed.
                    step = os.open(name, _DIR, dir_fd=cur)
                    os.close(cur)
                    cur = step
                    continue
                if not stat.S_ISREG(st.st_mode):
                    raise Unsafe("not a regular file")
                fd = os.open(name, _FILE, dir_fd=cur)
            except FileNotFoundError:
                raise Unsafe("no such file on the daemon's machine") from None
            except NotADirectoryError:
                raise Unsafe("no such file on the daemon's machine (a part of the path is not a folder)") from None
            except OSError as exc:
                if exc.errno == errno.ELOOP:  # swapped for a link between the lstat and the open
                    raise Unsafe("the path changed while it was being opened") from None
                raise Unsafe(exc.strerror or str(exc)) from None
            opened = os.fstat(fd)
            if (not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino)
                    or not _allowed(opened, uid, groups, _READ)):
                os.close(fd)
                raise Unsafe("you may not read this file" if stat.S_ISREG(opened.st_mode) else "not a regular file")
            return fd
        raise Unsafe("not a regular file")
    finally:
        os.close(cur)


def open_dir(path: Path) -> int:
    """A descriptor of directory ``path``; its last component must not be a link (the rest is trusted)."""
    parent = os.open(str(path.parent), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        return os.open(path.name, _DIR, dir_fd=parent)
    finally:
        os.close(parent)


def open_beneath(root: int, rel: str) -> int:
    """A read-only descriptor of regular file ``rel`` under directory descriptor ``root``, no link followed.

    Raises ``Unsafe`` naming what is wrong (a link, not a regular file) or OSError when it is gone.
    """
    parts = [p for p in rel.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        raise Unsafe("not inside the outputs directory")
    cur = root
    try:
        for part in parts[:-1]:
            try:
                step = os.open(part, _DIR, dir_fd=cur)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise Unsafe("a folder on its path is a symlink; not followed") from None
                raise
            if cur != root:
                os.close(cur)
            cur = step
        st = os.stat(parts[-1], dir_fd=cur, follow_symlinks=False)
        if stat.S_ISLNK(st.st_mode):
            raise Unsafe("symlink, not followed")
        if not stat.S_ISREG(st.st_mode):
            raise Unsafe("not a regular file")
        try:
            fd = os.open(parts[-1], _FILE, dir_fd=cur)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise Unsafe("symlink, not followed") from None
            raise
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            os.close(fd)
            raise Unsafe("changed into something else while being opened; not read")
        return fd
    finally:
        if cur != root:
            os.close(cur)


def walk(root: int) -> Iterator[tuple[str, os.stat_result, str | None]]:
    """Every entry under directory descriptor ``root`` but folders: (relative path, lstat, None) for a
    regular file, (relative path, lstat, why not) for anything else. Folders are entered by descriptor,
    never through a link."""

    def entries(fd: int, prefix: str) -> Iterator[tuple[str, os.stat_result, str | None]]:
        for name in sorted(os.listdir(fd)):
            rel = f"{prefix}{name}"
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue
            if stat.S_ISLNK(st.st_mode):
                yield rel, st, "symlink, not followed"
            elif stat.S_ISDIR(st.st_mode):
                try:
                    sub = os.open(name, _DIR, dir_fd=fd)
                except OSError:
                    yield rel, st, "a folder that changed while being read; not followed"
                    continue
                try:
                    yield from entries(sub, f"{rel}/")
                finally:
                    os.close(sub)
            elif stat.S_ISREG(st.st_mode):
                yield rel, st, None
            else:
                yield rel, st, "not a regular file"

    yield from entries(root, "")


def copy_hashing(fd: int, dst: Path) -> tuple[int, str]:
    """Copy what descriptor ``fd`` reads into ``dst`` (through a part file), with its size and SHA-256."""
    digest = hashlib.sha256()
    size = 0
    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = dst.with_name(f"{dst.name}.runyard-part-{os.getpid()}-{id(dst):x}")
    try:
        with tmp.open("wb") as fout:
            while block := os.read(fd, BLOCK):
                digest.update(block)
                fout.write(block)
                size += len(block)
        tmp.replace(dst)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return size, digest.hexdigest()


def hash_fd(fd: int) -> tuple[int, str]:
    """Size and SHA-256 of what ``fd`` reads from where it stands."""
    digest = hashlib.sha256()
    size = 0
    while block := os.read(fd, BLOCK):
        digest.update(block)
        size += len(block)
    return size, digest.hexdigest()
