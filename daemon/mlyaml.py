"""MachineLabs' ml.yaml, turned into the same execution model as a valohai.yaml step.

An ml.yaml project runs `python3 main.py` with each parameter's `pass-as`
argument, in order, and fetches its inputs by name and URL. `dockerImageId`
names a MachineLabs image; the daemon's config maps it to a real one.
"""

from __future__ import annotations

import shlex
from typing import Any

import yaml

from .steps import PreparedStep, StepError

STEP_NAME = "main"


def is_ml_yaml(data: object) -> bool:
    return isinstance(data, dict) and "dockerImageId" in data


def prepare_ml(text: str, images: dict[str, str], raw_parameters: dict[str, str | list[str]],
               inputs: dict[str, list[str]], source: str = "ml.yaml") -> PreparedStep:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise StepError(f"{source} is not valid YAML: {exc}") from None
    if not is_ml_yaml(data):
        raise StepError(f"{source}: not an ml.yaml (no dockerImageId)")
    image_id = str(data["dockerImageId"])
    image = images.get(image_id)
    if image is None:
        known = ", ".join(sorted(images)) or "none"
        raise StepError(f"{source}: dockerImageId {image_id!r} has no image; map it in the daemon's config "
                        f"([mlyaml.images] \"{image_id}\" = \"<image>\"; mapped: {known})")
    if raw_parameters:
        raise StepError(f"{source}: parameters are fixed `pass-as` arguments; edit ml.yaml instead of using -p")
    arguments: list[str] = []
    for i, item in enumerate(data.get("parameters") or []):
        if not isinstance(item, dict) or not isinstance(item.get("pass-as"), str | int | float):
            raise StepError(f"{source}: parameters[{i}] needs a `pass-as` value")
        arguments.append(str(item["pass-as"]))
    defaults: dict[str, list[str]] = {}
    for i, item in enumerate(data.get("inputs") or []):
        if not isinstance(item, dict) or not item.get("name") or not item.get("url"):
            raise StepError(f"{source}: inputs[{i}] needs a name and a url")
        name = str(item["name"])
        if "/" in name or name in (".", ".."):
            raise StepError(f"{source}: input name {name!r} must not be a path")
        defaults[name] = [str(item["url"])]
    unknown = sorted(set(inputs) - set(defaults))
    if unknown:
        raise StepError(f"{source} has no input {unknown[0]!r} (inputs: {', '.join(sorted(defaults)) or 'none'})")
    resolved: dict[str, list[str]] = {**defaults, **inputs}
    parameters: dict[str, Any] = {f"arg{i}": value for i, value in enumerate(arguments)}
    command = "set -e\n" + shlex.join(["python3", "main.py", *arguments])
    return PreparedStep(name=STEP_NAME, image=image, command=command, parameters=parameters, inputs=resolved,
                        environment={}, resources={"gpus": 0, "cpus": 0.0, "memory_mb": 0})
