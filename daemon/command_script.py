"""The script an execution runs, and the interpreter that runs it.

A step's command lines become one script. Its first line may be a shebang
(`#!/bin/bash`, valohai-yaml's shebang example): then the script runs under
that interpreter, as Valohai runs it, not under `/bin/sh`. Both runtimes get
the interpreter's argv from here, so a restarted execution (whose recorded
script is reused) runs the same way.
"""

from __future__ import annotations

import posixpath
from typing import Final

DEFAULT_SHELL: Final = "/bin/sh"

# Interpreters that read POSIX shell: the script gets `set -e` and the TERM trap (below).
_SHELLS: Final = frozenset({"sh", "bash", "dash", "zsh", "ksh", "mksh", "ash", "yash", "busybox"})

# A stop sends SIGTERM to the script's whole process group. Without a trap the shell dies of it
# at once (exit code 143) although its command may catch it, save its work and exit 0; and in a
# container, the shell ending ends the container, cutting that saving short. With this trap the
# shell waits for its command, then exits with the command's own code.
TERM_TRAP: Final = "trap 'exit $?' TERM"


class ScriptError(ValueError):
    """A shebang line that cannot name an interpreter; the message says why."""


def shebang_argv(script: str) -> list[str] | None:
    """The interpreter and its one optional argument from the script's shebang line, or None.

    As the kernel reads a shebang: the path, then everything after it up to the end of the line as
    a single argument (`#!/usr/bin/env -S bash -e` gives env its `-S bash -e`).
    """
    if not script.startswith("#!"):
        return None
    line = script[2:].split("\n", 1)[0].strip()
    if not line:
        raise ScriptError("the shebang line names no interpreter")
    interpreter, _, argument = line.partition(" ")
    argument = argument.strip()
    if not interpreter.startswith("/"):
        raise ScriptError(f"the shebang's interpreter {interpreter!r} must be an absolute path, e.g. #!/bin/bash")
    return [interpreter, argument] if argument else [interpreter]


def reads_shell(argv: list[str] | None) -> bool:
    """Whether the interpreter is a POSIX-style shell (so `set -e` and `trap` mean what they say)."""
    if argv is None:
        return True
    name = posixpath.basename(argv[0])
    if name == "env" and len(argv) > 1:
        words = [w for w in argv[1].split() if not w.startswith("-")]
        name = posixpath.basename(words[0]) if words else ""
    return name in _SHELLS


def script_of(body: str) -> str:
    """The script for command lines joined into ``body`` (a shebang, if any, on its first line).

    A shell script stops at the first failing line (`set -e`, as on Valohai) and exits with its
    command's code when stopped (TERM_TRAP). Another interpreter's script is left as written.
    """
    argv = shebang_argv(body)
    if argv is None:
        return f"set -e\n{TERM_TRAP}\n{body}"
    if not reads_shell(argv):
        return body
    shebang, _, rest = body.partition("\n")
    return f"{shebang}\nset -e\n{TERM_TRAP}\n{rest}"


def shebang_argv_or_none(script: str) -> list[str] | None:
    """shebang_argv, where a bad shebang (refused at submit, but maybe recorded before that
    check) counts as none: the script then runs under /bin/sh, as it did."""
    try:
        return shebang_argv(script)
    except ScriptError:
        return None


def command_argv(script: str) -> list[str]:
    """How to run ``script``: `INTERPRETER [ARGUMENT] -c SCRIPT`, /bin/sh without a shebang.

    Passed as an argument, not a file: the container needs nothing written into it. Shells and
    python take `-c`; the shebang line itself is a comment to both.
    """
    return [*(shebang_argv_or_none(script) or [DEFAULT_SHELL]), "-c", script]
