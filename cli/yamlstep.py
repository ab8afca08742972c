"""`runyard yaml step SCRIPT`: write or update a valohai.yaml step from a script's valohai.prepare(...).

The step is made by valohai-utils' own generator (the one `vh yaml step` uses), and merged into an
existing valohai.yaml with valohai-utils' own merge strategy: the script decides the step's name,
parameters, inputs and source path; the file keeps its command, outputs, description and the rest.
Nothing here talks to the daemon.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

EXIT_PROBLEM = 1


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("yaml", help="write valohai.yaml from code (needs no daemon)")
    what = p.add_subparsers(dest="yaml_command", metavar="WHAT", required=True)
    step = what.add_parser(
        "step", help="write or update the step of a script that calls valohai.prepare(...)",
        description="Read SCRIPT's valohai.prepare(step=..., default_parameters=..., default_inputs=...) "
                    "and write that step into valohai.yaml, as valohai-utils generates it. An existing "
                    "step keeps its command, outputs and other settings; its parameters and inputs "
                    "become the script's.")
    step.add_argument("script", help="a Python file (or notebook) inside the folder of the valohai.yaml "
                                     "written (a script outside it is refused and nothing is written)")
    step.add_argument("--config", "--yaml", dest="config", default=None, metavar="PATH",
                      help="the valohai.yaml to write (default: valohai.yaml at the top of the git "
                           "repository holding the current directory; outside one, of the script's "
                           "repository, else in the script's folder)")


def run(args: argparse.Namespace) -> int:
    from valohai.internals.yaml import parse_config_from_source
    from valohai.yaml import config_to_yaml
    from valohai_yaml import parse as parse_yaml
    from valohai_yaml.excs import ValidationErrors

    # resolve(), not absolute(): "../outside/x.py" must not pass as inside by its spelling
    script = Path(args.script).resolve()
    if not script.is_file():
        return _fail(f"no such script: {args.script}")
    config = Path(args.config).absolute() if args.config else _default_config(script)
    config = config.parent.resolve() / config.name
    try:
        script.relative_to(config.parent)
    except ValueError:
        # The snapshot holds the config's folder and what lies below it: a command naming a file
        # outside it could never run.
        return _fail(f"{args.script} is not inside {config.parent}, the folder of {config.name}")
    try:
        new = parse_config_from_source(str(script), str(config))
    except SyntaxError as exc:
        return _fail(f"{args.script} is not valid Python: line {exc.lineno}: {exc.msg}")
    except (ValueError, TypeError, KeyError) as exc:
        # valohai-utils raises these for a script without valohai.prepare() or with values it cannot type.
        return _fail(f"{args.script}: {exc}")
    step_name = next(iter(new.steps))
    old_text: str | None = None
    if config.exists():
        try:
            old_text = config.read_text()
        except OSError as exc:
            return _fail(f"cannot read {config}: {exc.strerror}")
        try:
            old = parse_yaml(old_text)
        except (ValidationErrors, ValueError, TypeError) as exc:
            return _fail(f"{config} is not a valid valohai.yaml, so it was left alone "
                         f"(runyard lint {config} says why): {str(exc).splitlines()[0]}")
        from valohai.internals.merge import python_to_yaml_merge_strategy

        merged = old.merge_with(new, python_to_yaml_merge_strategy)
        existed = step_name in old.steps
    else:
        merged, existed = new, False
    text = config_to_yaml(merged)
    shown = os.path.relpath(config)
    if text == old_text:
        print(f"{shown}: step {step_name!r} is already up to date")
        return 0
    tmp = config.with_name(f".{config.name}.runyard-tmp")
    try:
        tmp.write_text(text)
        os.replace(tmp, config)
    except OSError as exc:
        tmp.unlink(missing_ok=True)
        return _fail(f"cannot write {config}: {exc.strerror}")
    print(f"{shown}: step {step_name!r} {'updated' if existed else 'added'}")
    return 0


def _default_config(script: Path) -> Path:
    """The repository the user is in decides, not the script: a script named from elsewhere
    (an absolute path, ../x.py) must not get another folder's valohai.yaml written."""
    for start in (Path.cwd().resolve(), script.parent):
        for folder in (start, *start.parents):
            if (folder / ".git").exists():
                return folder / "valohai.yaml"
    return script.parent / "valohai.yaml"


def _fail(message: str) -> int:
    print(f"runyard: {message}", file=sys.stderr)
    return EXIT_PROBLEM
