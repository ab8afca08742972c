"""The flags `run` and `restart` share beyond the basics: --var, --tag, --parameter-file and
per-run time limits, and turning them into the request's fields."""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

RawParameter = str | list[str]


class ParameterFileError(Exception):
    """A parameter file that cannot be read or is not a mapping of names to values."""


def parse_var(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"a variable must look like NAME=VALUE, got {text!r}")
    return name, value


_PART = re.compile(r"(\d+(?:\.\d+)?)\s*([a-z]*)")
_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Seconds from `90`, `10m`, `2h`, `1h30m` (valohai.yaml's forms); `0` or `none`: no limit."""
    cleaned = text.strip().lower()
    if cleaned in ("0", "none", "off"):
        return 0.0
    total, at = 0.0, 0
    for match in _PART.finditer(cleaned):
        unit = match.group(2)[:1]
        if cleaned[at:match.start()].strip() or unit not in _UNITS:
            break
        total += float(match.group(1)) * _UNITS[unit]
        at = match.end()
    if at == 0 or cleaned[at:].strip() or total <= 0:
        raise argparse.ArgumentTypeError(
            f"not a duration: {text!r} (e.g. 90 for seconds, 10m, 2h, 1h30m; 0 or none for no limit)")
    return total


def add_flags(p: argparse.ArgumentParser, *, restart: bool = False) -> None:
    p.add_argument("--var", type=parse_var, action="append", default=[], metavar="NAME=VALUE",
                   dest="variables",
                   help="an environment variable for this run, over the step's environment-variables "
                        "(repeatable; shown by info, so not for secrets)"
                        + ("; added to the old execution's" if restart else ""))
    p.add_argument("--tag", action="append", default=None, metavar="TAG", dest="tags",
                   help="a tag, shown by list and info, found by list --tag (repeatable)"
                        + ("; replaces the old execution's tags" if restart else ""))
    p.add_argument("--parameter-file", metavar="FILE",
                   help="parameter values from a YAML or JSON mapping (name: value; a list for a "
                        "`multiple` parameter); -p wins over it")
    p.add_argument("--time-limit", type=parse_duration, metavar="DURATION",
                   help="end it as error (time-limit) after this long, over the step's time-limit: "
                        "90, 10m, 2h, 1h30m; 0 for none")
    p.add_argument("--no-output-timeout", type=parse_duration, metavar="DURATION",
                   help="end it as error (no-output-timeout) after this long without a log line, over "
                        "the step's no-output-timeout; 0 for none")


def load_parameter_file(path: str) -> dict[str, RawParameter]:
    file = Path(path)
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ParameterFileError(f"cannot read parameter file {path}: {reason}") from None
    import yaml  # only here: every CLI start would pay for it

    try:
        data = json.loads(text) if file.suffix.lower() == ".json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as exc:
        raise ParameterFileError(f"parameter file {path} is not valid {'JSON' if file.suffix == '.json' else 'YAML'}: "
                                 f"{exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ParameterFileError(f"parameter file {path} must be a mapping of parameter names to values")
    values: dict[str, RawParameter] = {}
    for name, value in data.items():
        if isinstance(value, list):
            if not all(_is_atom(v) for v in value):
                raise ParameterFileError(f"parameter file {path}: {name}: a list holds plain values only")
            values[str(name)] = [_text(v) for v in value]
        elif _is_atom(value):
            values[str(name)] = _text(value)
        else:
            raise ParameterFileError(f"parameter file {path}: {name}: a value is text, a number, true/false "
                                     "or a list of those")
    return values


def _is_atom(value: object) -> bool:
    return isinstance(value, str | int | float | bool)


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parameters(args: argparse.Namespace, given: dict[str, RawParameter]) -> dict[str, RawParameter]:
    """The parameter file's values, with ``given`` (from -p) over them by name."""
    from_file = load_parameter_file(args.parameter_file) if args.parameter_file else {}
    return {**from_file, **given}


def request_fields(args: argparse.Namespace) -> dict[str, Any]:
    """--var, --tag and the limits as request fields; only those given."""
    fields: dict[str, Any] = {}
    if args.variables:
        fields["environment"] = dict(args.variables)
    if args.tags is not None:
        fields["tags"] = list(args.tags)
    if args.time_limit is not None:
        fields["time_limit"] = args.time_limit
    if args.no_output_timeout is not None:
        fields["no_output_timeout"] = args.no_output_timeout
    return fields
