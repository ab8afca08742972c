"""What the log viewer's / prompt means: plain text, or a regular expression written /like this/.

Case is ignored unless the search has a capital letter (as in less -i and vim's smartcase).
The daemon does the searching (logs.search); the viewer only highlights what it shows, with the
same pattern, compiled here.
"""

from __future__ import annotations

from dataclasses import dataclass

import regex
from regex import Pattern


@dataclass(frozen=True)
class LogSearch:
    pattern: str  # as sent to the daemon
    regex: bool
    ignore_case: bool
    highlight: Pattern[str]

    @classmethod
    def parse(cls, typed: str) -> LogSearch:
        """Raises regex.error for a regular expression that does not compile."""
        is_regex = len(typed) >= 2 and typed.startswith("/") and typed.endswith("/")
        pattern = typed[1:-1] if is_regex else typed
        ignore_case = not any(c.isupper() for c in pattern)
        flags = regex.VERSION0 | (regex.IGNORECASE if ignore_case else 0)
        compiled = regex.compile(pattern if is_regex else regex.escape(pattern), flags)
        return cls(pattern, is_regex, ignore_case, compiled)
