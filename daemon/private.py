"""Directories only the daemon's user may enter, for things that must not leak.

The daemon often runs as root on a shared server. A forwarded Docker socket is root on its
host; the database holds every execution's parameters and commands; snapshots hold users'
code, the input cache their data, outputs their results, logs what they printed. Each lives
in a directory of the daemon's user, mode 0700, checked on the open directory itself (never
following a link), because anyone may have made it first. Clients reach all of it through
the socket, whose mode and group say who may.
"""

from __future__ import annotations

import errno
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("runyard.daemon")


class UnsafeDirectory(Exception):
    """A directory that should be private is not ours: the message says what to do."""


def private_dir(path: Path, purpose: str = "host sockets") -> None:
    """Make ``path`` (if missing) and check that it is a real directory of this process's user with
    mode 0700; one of ours that others could enter is tightened, with a warning. Anything else
    (another owner, a symlink, not a directory) raises UnsafeDirectory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir(mode=0o700)
    except FileExistsError:
        pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    except OSError as exc:
        # O_NOFOLLOW|O_DIRECTORY on a link fails with ENOTDIR or ELOOP: say which it was.
        link = exc.errno in (errno.ELOOP, errno.ENOTDIR) and os.path.islink(path)
        what = "is a symbolic link" if link else f"cannot be opened as a directory ({exc.strerror})"
        raise UnsafeDirectory(f"{path} {what}: refusing to use it for {purpose}; remove it") from None
    try:
        st = os.fstat(fd)
        me = os.geteuid()
        if st.st_uid != me:
            raise UnsafeDirectory(
                f"{path} belongs to uid {st.st_uid}, not to the daemon's user (uid {me}): someone else may "
                f"have made it to reach the {purpose}; refusing to use it; remove it")
        mode = stat.S_IMODE(st.st_mode)
        if mode != 0o700:
            log.warning("%s had mode %04o: made 0700, so that only the daemon's user reaches the %s",
                        path, mode, purpose)
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)


# What lies in the data directory, and why it is private. (hosts/, the forwarded Docker sockets, is
# checked by each host as it connects: one wrong there leaves that host unreachable, saying why.)
_PRIVATE = {"snapshots": "users' code", "logs": "execution logs", "cache": "cached inputs"}


def private_data_dir(data_dir: Path, outputs_dir: Path) -> None:
    """The data directory may be passed through (0711: the socket or a plain process's workspace may
    lie inside) but not listed; everything in it is the daemon user's alone.

    ``work/`` stays passable too: a plain process run as its owner reaches its own workspace (whose
    folders are 0700, theirs). The outputs directory is made private when it is the default one
    inside the data directory; one configured elsewhere keeps the mode its admin gave it.
    """
    data_dir.mkdir(parents=True, exist_ok=True)
    _passable(data_dir)
    for name, purpose in _PRIVATE.items():
        private_dir(data_dir / name, purpose)
    if outputs_dir.parent == data_dir:
        private_dir(outputs_dir, "execution outputs")
    (data_dir / "work").mkdir(exist_ok=True)
    _passable(data_dir / "work")


def private_files(paths: list[Path]) -> None:
    """Mode 0600 on files of ours (the database and its journal files), never through a link."""
    for path in paths:
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
        except FileNotFoundError:
            continue
        try:
            if os.fstat(fd).st_uid == os.geteuid() and stat.S_IMODE(os.fstat(fd).st_mode) != 0o600:
                os.fchmod(fd, 0o600)
        finally:
            os.close(fd)


def _passable(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
    try:
        st = os.fstat(fd)
        if st.st_uid == os.geteuid() and stat.S_IMODE(st.st_mode) & 0o066:
            os.fchmod(fd, 0o711)  # others may pass through to what they are allowed, not list or write
    finally:
        os.close(fd)
