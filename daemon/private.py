"""Directories only the daemon's user may enter, for things that must not leak (host Docker sockets).

The daemon often runs as root on a shared server, and a forwarded Docker socket is root on
its host: it lives in a directory of the daemon's user, mode 0700, which is checked on the
open directory itself (never following a link), because anyone may have made it first.
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


def private_dir(path: Path) -> None:
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
        raise UnsafeDirectory(f"{path} {what}: refusing to use it for host sockets; remove it") from None
    try:
        st = os.fstat(fd)
        me = os.geteuid()
        if st.st_uid != me:
            raise UnsafeDirectory(
                f"{path} belongs to uid {st.st_uid}, not to the daemon's user (uid {me}): someone else may "
                "have made it to reach the hosts' Docker sockets; refusing to use it; remove it")
        mode = stat.S_IMODE(st.st_mode)
        if mode != 0o700:
            log.warning("%s had mode %04o: made 0700, so that only the daemon's user reaches the host sockets",
                        path, mode)
            os.fchmod(fd, 0o700)
    finally:
        os.close(fd)
