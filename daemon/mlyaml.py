"""MachineLabs' ml.yaml, turned into the same execution model as a valohai.yaml step.

An ml.yaml project runs `python3 main.py` with each parameter's `pass-as`
argument, in order, and fetches its inputs by name and URL. `dockerImageId`
names a MachineLabs image; the daemon's config maps it to a real one.

MachineLabs ran the code with each input downloaded to `inputs/<name>` beside
it and uploaded what the code wrote to `outputs/`, so ml.yaml scripts open
`inputs/mnist.npz` and write `outputs/model.h5`. The command lays the code's
folder out that way, over the usual /valohai folders (which valohai.yaml
executions keep as they are).
"""

from __future__ import annotations

import shlex
from typing import Any

import yaml

from .command_script import TERM_TRAP
from .steps import PreparedStep, Problem, StepError, one_segment

STEP_NAME = "main"

# The keys MachineLabs' own template has; any other is noted by lint, and ignored.
_KNOWN_KEYS = frozenset({"dockerImageId", "parameters", "inputs", "hardwareType", "cli"})


def is_ml_yaml(data: object) -> bool:
    return isinstance(data, dict) and "dockerImageId" in data


def _arguments_and_inputs(data: dict[str, Any], source: str) -> tuple[list[str], dict[str, list[str]]]:
    parameters = data.get("parameters") or []
    if not isinstance(parameters, list):
        raise StepError(f"{source}: parameters must be a list of {{pass-as: ...}}")
    arguments: list[str] = []
    for i, item in enumerate(parameters):
        if not isinstance(item, dict) or not isinstance(item.get("pass-as"), str | int | float):
            raise StepError(f"{source}: parameters[{i}] needs a `pass-as` value")
        arguments.append(str(item["pass-as"]))
    inputs = data.get("inputs") or []
    if not isinstance(inputs, list):
        raise StepError(f"{source}: inputs must be a list of {{name: ..., url: ...}}")
    defaults: dict[str, list[str]] = {}
    for i, item in enumerate(inputs):
        if not isinstance(item, dict) or not item.get("name") or not item.get("url"):
            raise StepError(f"{source}: inputs[{i}] needs a name and a url")
        name = str(item["name"])
        if not one_segment(name):
            raise StepError(f"{source}: input name {name!r} must be a plain file name: no '/', not '.' or '..'")
        if name in defaults:
            raise StepError(f"{source}: input name {name!r} is given twice")
        defaults[name] = [str(item["url"])]
    return arguments, defaults


def _load(text: str, source: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StepError(f"{source} is not valid YAML: {exc}") from None
    if not is_ml_yaml(data):
        raise StepError(f"{source}: not an ml.yaml (no dockerImageId)")
    assert isinstance(data, dict)
    return data


def lint_ml(text: str, source: str = "ml.yaml") -> list[Problem]:
    """Every problem of an ml.yaml, by MachineLabs' format (not valohai.yaml's schema)."""
    try:
        data = _load(text, source)
        _arguments_and_inputs(data, source)
    except StepError as exc:
        return [Problem("error", str(exc).removeprefix(f"{source}: "), source)]
    problems = []
    if not isinstance(data["dockerImageId"], str) or not data["dockerImageId"]:
        problems.append(Problem("error", "dockerImageId must name an image", source))
    for key in sorted(set(map(str, data)) - _KNOWN_KEYS):
        problems.append(Problem("warning", f"unknown key {key!r} is ignored", source))
    return problems


def _layout(names: list[str]) -> list[str]:
    """Shell lines giving the code's folder MachineLabs' `inputs/<name>` and `outputs/`.

    Each input is fetched as the one file <name> of its own input folder; a link makes it
    `inputs/<name>`. `outputs` becomes a link to the outputs folder, so what the code writes there
    is collected; a committed `outputs/` (often just a .gitkeep) gives way to it, as it is code, not
    a result of this run.
    """
    lines = ["mkdir -p inputs"] if names else []
    for name in names:
        quoted = shlex.quote(name)
        lines.append(f'ln -sfn "$VH_INPUTS_DIR"/{quoted}/{quoted} inputs/{quoted}')
    lines.append('if [ -d outputs ] && [ ! -L outputs ]; then rm -rf outputs; fi')
    lines.append('ln -sfn "$VH_OUTPUTS_DIR" outputs')
    return lines


def prepare_ml(text: str, images: dict[str, str] | None, raw_parameters: dict[str, str | list[str]],
               inputs: dict[str, list[str]], source: str = "ml.yaml") -> PreparedStep:
    """The execution an ml.yaml asks for; ``images`` None leaves the image unchecked (the client's
    own check before uploading, which cannot know the daemon's mapping)."""
    data = _load(text, source)
    image_id = str(data["dockerImageId"])
    image = images.get(image_id) if images is not None else image_id
    if image is None:
        known = ", ".join(sorted(images or {})) or "none"
        raise StepError(f"{source}: dockerImageId {image_id!r} has no image; map it in the daemon's config "
                        f"([mlyaml.images] \"{image_id}\" = \"<image>\"; mapped: {known})")
    if raw_parameters:
        raise StepError(f"{source}: parameters are fixed `pass-as` arguments; edit ml.yaml instead of using -p")
    arguments, defaults = _arguments_and_inputs(data, source)
    unknown = sorted(set(inputs) - set(defaults))
    if unknown:
        raise StepError(f"{source} has no input {unknown[0]!r} (inputs: {', '.join(sorted(defaults)) or 'none'})")
    resolved: dict[str, list[str]] = {**defaults, **inputs}
    parameters: dict[str, Any] = {f"arg{i}": value for i, value in enumerate(arguments)}
    command = "\n".join(["set -e", TERM_TRAP, *_layout(sorted(resolved)),
                         shlex.join(["python3", "main.py", *arguments])])
    # Each input is one file named as ml.yaml names it, which the layout links to inputs/<name>.
    options = {name: {"keep_directories": "none", "filename": name} for name in resolved}
    return PreparedStep(name=STEP_NAME, image=image, command=command, parameters=parameters, inputs=resolved,
                        environment={}, resources={"gpus": 0, "cpus": 0.0, "memory_mb": 0}, input_options=options)
