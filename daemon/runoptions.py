"""What one run is given beyond its step's parameters and inputs: `--var`, `--tag` and its own
time limits. Checked here, at submit, so a bad name is refused before anything is recorded.

A `--var` value reaches the command only as an environment variable (Docker's `Env` list, or
`export NAME='value'` quoted by the process runtime), never as shell text.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

from .record import ExecutionRow

_NAME: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}\Z")
# Set by runyard for every execution. GPU isolation rests on the two device variables, and the
# rest say where the Valohai layout is: a run may not change them.
RESERVED: Final = frozenset({
    "VH_REPOSITORY_DIR", "VH_INPUTS_DIR", "VH_OUTPUTS_DIR", "VH_CONFIG_DIR", "VH_JOB_ID",
    "VH_EXECUTION_ID", "VH_PROJECT_ID", "NVIDIA_VISIBLE_DEVICES", "CUDA_VISIBLE_DEVICES",
    "TINI_KILL_PROCESS_GROUP", "PYTHONUNBUFFERED",
})
MAX_VARIABLES: Final = 200
MAX_VALUE_BYTES: Final = 64 << 10
# No whitespace, so a tag is one word in the TUI's filter (`tag:T`); no control characters.
_TAG: Final = re.compile(r"[^\s\x00-\x1f\x7f]{1,64}\Z")
MAX_TAGS: Final = 32
MAX_LIMIT_SECONDS: Final = 366 * 24 * 3600.0


class RunOptionError(ValueError):
    """A --var, --tag or limit that cannot be taken; the message names it."""


@dataclass(frozen=True, slots=True)
class RunOptions:
    variables: dict[str, str] = field(default_factory=dict)
    tags: list[str] = field(default_factory=list)
    time_limit: float | None = None  # seconds; 0 removes the step's limit; None keeps it
    no_output_timeout: float | None = None


def check_variables(variables: Mapping[str, str], secret_names: Iterable[str]) -> dict[str, str]:
    """``variables`` if every name and value may be given to a run."""
    if len(variables) > MAX_VARIABLES:
        raise RunOptionError(f"at most {MAX_VARIABLES} --var values, not {len(variables)}")
    secrets = set(secret_names)
    for name, value in variables.items():
        if not _NAME.match(name):
            raise RunOptionError(f"--var {name!r}: a variable name is letters, digits and _, "
                                 "not starting with a digit (at most 128)")
        if name in RESERVED:
            raise RunOptionError(f"--var {name}: runyard sets this variable itself")
        if name in secrets:
            raise RunOptionError(f"--var {name}: the daemon gives this variable from its secrets")
        if "\0" in value:
            raise RunOptionError(f"--var {name}: a value cannot contain a NUL character")
        if len(value.encode()) > MAX_VALUE_BYTES:
            raise RunOptionError(f"--var {name}: the value is over {MAX_VALUE_BYTES >> 10} KiB")
    return dict(variables)


def check_tags(tags: Sequence[str]) -> list[str]:
    """The tags in the order given, each once."""
    unique = list(dict.fromkeys(tags))
    if len(unique) > MAX_TAGS:
        raise RunOptionError(f"at most {MAX_TAGS} tags, not {len(unique)}")
    for tag in unique:
        if not _TAG.match(tag):
            raise RunOptionError(f"tag {tag!r}: a tag is 1 to 64 characters, without spaces or control characters")
    return unique


def check_limit(name: str, seconds: float | None) -> float | None:
    if seconds is not None and not 0 <= seconds <= MAX_LIMIT_SECONDS:
        raise RunOptionError(f"{name} must be between 0 (none) and 366 days, not {seconds:g} s")
    return seconds


def checked(variables: Mapping[str, str], tags: Sequence[str], time_limit: float | None,
            no_output_timeout: float | None, secret_names: Iterable[str]) -> RunOptions:
    return RunOptions(variables=check_variables(variables, secret_names), tags=check_tags(tags),
                      time_limit=check_limit("--time-limit", time_limit),
                      no_output_timeout=check_limit("--no-output-timeout", no_output_timeout))


def apply(row: ExecutionRow, options: RunOptions) -> ExecutionRow:
    """``row`` with the options: variables over the step's environment, tags, limits over the step's."""
    resources = dict(row.resources)
    for key, seconds in (("time_limit_seconds", options.time_limit),
                         ("no_output_timeout_seconds", options.no_output_timeout)):
        if seconds is None:
            continue
        if seconds == 0:
            resources.pop(key, None)
        else:
            resources[key] = float(seconds)
    return dataclasses.replace(row, variables=dict(options.variables), tags=list(options.tags),
                               environment={**row.environment, **options.variables}, resources=resources)


def raw_parameters(values: Mapping[str, Any]) -> dict[str, str | list[str]]:
    """Recorded (typed) parameter values as the text they would be typed as, to check them again."""
    return {name: [_atom(v) for v in value] if isinstance(value, list) else _atom(value)
            for name, value in values.items()}


def _atom(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)
