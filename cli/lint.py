"""`runyard lint`: every problem of a valohai.yaml (by valohai-yaml's own linter) or of an ml.yaml.

Exit 0 when there is no error (warnings and hints do not fail it, as with
valohai-yaml), 1 when there is one or the file cannot be read: 2 is kept for
"the daemon refused", which lint never asks.
"""

from __future__ import annotations

import sys
from pathlib import Path

import msgspec
import yaml

from runyard.daemon.mlyaml import is_ml_yaml, lint_ml
from runyard.daemon.steps import Problem, lint_text

EXIT_PROBLEMS = 1
ML_NAME = "ml.yaml"


def problems_of(text: str, source: str) -> list[Problem]:
    """An ml.yaml (a file of that name, or one with a dockerImageId) is linted as one; anything
    else as a valohai.yaml."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError:
        data = None  # lint_text says where
    if Path(source).name == ML_NAME and not is_ml_yaml(data):
        if not isinstance(data, dict):
            return [Problem("error", "an ml.yaml is a mapping with a dockerImageId (and parameters, inputs)",
                            source)]
        return [Problem("error", "dockerImageId is missing: it names the image to run in", source),
                *(p for p in lint_ml(text + "\ndockerImageId: x\n", source) if p.severity != "error")]
    return lint_ml(text, source) if is_ml_yaml(data) else lint_text(text, source) + unsupported(data, source)


# valohai.yaml features runyard reads but does not run: said, not silently ignored.
_NOT_RUN = {
    "pipeline": "runyard does not run pipelines: run its steps (or tasks) one by one",
    "endpoint": "runyard does not serve deployment endpoints",
}


def unsupported(data: object, source: str) -> list[Problem]:
    """A warning for each valohai.yaml feature in ``data`` that runyard does not run."""
    if not isinstance(data, list):
        return []
    found = []
    for item in data:
        if not isinstance(item, dict) or len(item) != 1:
            continue
        (kind, body), = item.items()
        name = body.get("name") if isinstance(body, dict) else None
        label = f"{kind} {name!r}" if name else str(kind)
        if kind in _NOT_RUN:
            found.append(Problem("warning", f"{label}: {_NOT_RUN[kind]}", source))
        elif kind == "task" and isinstance(body, dict) and body.get("reuse-children"):
            found.append(Problem("warning", f"{label}: reuse-children is ignored: runyard runs every child",
                                 source))
    return found


def _count(n: int, word: str) -> str:
    return f"{n} {word}" + ("" if n == 1 else "s")


def lint_command(path_text: str, as_json: bool) -> int:
    path = Path(path_text)
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        if as_json:
            _print_json([Problem("error", f"cannot read {path}: {reason}", str(path))])
        else:
            print(f"runyard: cannot read {path}: {reason}", file=sys.stderr)
        return EXIT_PROBLEMS
    problems = problems_of(text, str(path))
    if as_json:
        _print_json(problems)
    elif not problems:
        print(f"{path}: ok")
    else:
        for problem in problems:
            print(f"{problem.location or path}: {problem.severity}: {problem.message}")
        counts = {kind: sum(1 for p in problems if p.severity == kind) for kind in ("error", "warning", "hint")}
        summary = [_count(counts["error"], "error"), _count(counts["warning"], "warning")]
        if counts["hint"]:
            summary.append(_count(counts["hint"], "hint"))
        print(", ".join(summary))
    return EXIT_PROBLEMS if any(p.severity == "error" for p in problems) else 0


def _print_json(problems: list[Problem]) -> None:
    rows = [{"severity": p.severity, "message": p.message, "location": p.location} for p in problems]
    sys.stdout.write(msgspec.json.encode(rows).decode() + "\n")
