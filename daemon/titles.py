"""The one check of an execution's or a task's title, whichever request records it.

A title is shown raw by the TUI and in other users' terminals (``runyard list``), so it must
hold no control characters (an escape sequence could clear or rewrite their screen) and stay
short enough for a table.
"""

from __future__ import annotations

TITLE_MAX = 200


class TitleError(ValueError):
    """A title the daemon will not record; the message says why."""


def checked_title(title: str | None) -> str | None:
    """The title to record (stripped; ``None`` for none), or TitleError."""
    if title is None:
        return None
    title = title.strip()
    # isprintable() refuses C0, DEL, C1 (e.g. the one-byte CSI \x9b) and line/paragraph separators
    if len(title) > TITLE_MAX or not title.isprintable():
        raise TitleError(f"a title is at most {TITLE_MAX} printable characters, with no control "
                         f"characters (\"\" clears it); got {len(title)} characters")
    return title or None
