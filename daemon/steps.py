"""Steps from valohai.yaml, through the reference parser ``valohai-yaml``.

This module is the only place that knows valohai-yaml's API: parsing, linting,
checking parameter values from the command line, and building the command.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any, Final

import yaml
from valohai_yaml import ValidationErrors, parse
from valohai_yaml.commands import join_command
from valohai_yaml.lint import lint
from valohai_yaml.objs import Config, Step

from .command_script import ScriptError, script_of, shebang_argv


class StepError(Exception):
    """A problem with the YAML, a step name or a parameter value; the message says which."""


@dataclass(frozen=True, slots=True)
class Problem:
    severity: str  # error, warning or hint
    message: str
    location: str | None


@dataclass(frozen=True, slots=True)
class PreparedStep:
    name: str
    image: str | None
    command: str
    parameters: dict[str, Any]
    inputs: dict[str, list[str]]
    environment: dict[str, str]
    resources: dict[str, Any]
    input_options: dict[str, dict[str, str]] = field(default_factory=dict)
    # What the step asks that runyard does not do, for the client to tell its user.
    notes: tuple[str, ...] = ()
    stop_condition: str | None = None  # the step's, a leval expression over its metadata


GPU_DEVICE: Final = "nvidia.com/gpu"


def resources_of(step: Step) -> dict[str, Any]:
    """What the step asks of a host: `environment` as the pool, `resources` as minimums and limits."""
    r = step.resources
    devices = r.devices.devices or {}
    try:
        gpus = int(devices.get(GPU_DEVICE, 0) or 0)
    except (TypeError, ValueError):
        raise StepError(f"step {step.name!r}: resources.devices.{GPU_DEVICE} must be a whole number") from None
    resources: dict[str, Any] = {"gpus": gpus, "cpus": float(r.cpu.min or 0), "memory_mb": int(r.memory.min or 0)}
    if step.environment:
        resources["environment"] = step.environment
    if r.cpu.max:
        resources["cpu_max"] = float(r.cpu.max)
    if r.memory.max:
        resources["memory_max_mb"] = int(r.memory.max)
    for key in ("gpus", "cpus", "memory_mb"):
        if resources[key] < 0:
            raise StepError(f"step {step.name!r}: resources: {key} must not be negative")
    # valohai.yaml's time-limit and no-output-timeout travel with the execution, so a restarted
    # daemon enforces them from the recorded start time.
    for key, value in (("time_limit_seconds", step.time_limit), ("no_output_timeout_seconds", step.no_output_timeout)):
        if value is not None:
            seconds = value.total_seconds()
            if seconds <= 0:
                raise StepError(f"step {step.name!r}: {key.replace('_seconds', '').replace('_', '-')} must be positive")
            resources[key] = seconds
    return resources


def one_segment(name: str) -> bool:
    """A plain file name: one path segment, so it never leaves the folder it is put in."""
    return bool(name) and name not in (".", "..") and "/" not in name and "\\" not in name and "\0" not in name


def lint_text(text: str, source: str = "valohai.yaml") -> list[Problem]:
    """Every problem valohai-yaml finds, each with a location where one is known."""
    problems: list[Problem] = []
    try:
        yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        return [Problem("error", f"not valid YAML: {problem}", where)]
    result = lint(text, ansi_colors=False)
    for message in result.messages:
        # Schema messages come indented and sometimes wrapped: join the lines, but keep the spaces
        # inside a line, which may be inside a quoted value.
        text_ = " ".join(line.strip() for line in str(message["message"]).splitlines() if line.strip())
        problems.append(Problem(str(message["type"]), text_, source))
    return problems


@functools.lru_cache(maxsize=64)
def load_config(text: str, source: str = "valohai.yaml") -> Config:
    """The parsed config of a valohai.yaml, or StepError naming every problem.

    Cached by text: checking it against valohai-yaml's schema costs milliseconds, and a sweep
    or a script submits the same snapshot's file thousands of times. Callers only read the
    result (prepare_step builds new values from it), so sharing one parse is safe.
    """
    problems = [p for p in lint_text(text, source) if p.severity == "error"]
    if problems:
        detail = "; ".join(f"{p.location}: {p.message}" if p.location else p.message for p in problems)
        raise StepError(f"{source} is not valid: {detail}")
    try:
        return parse(text)
    except ValidationErrors as exc:
        raise StepError(f"{source} is not valid: {exc}") from None
    except Exception as exc:  # the parser raises bare errors on some malformed documents
        raise StepError(f"{source} is not valid: {exc}") from None


def _coerce(step: Step, name: str, raw: str | list[str]) -> Any:
    parameter = step.parameters[name]
    if isinstance(raw, list):
        # -p given more than once: each is one value, as written (a `multiple` parameter only).
        if parameter.multiple is None:
            if len(raw) != 1:
                raise StepError(f"parameter {name!r} takes one value, but was given {len(raw)} "
                                f"({', '.join(map(repr, raw))}); only a `multiple` parameter takes several")
            raw = raw[0]
        else:
            return _validated(parameter, name, list(raw))
    if parameter.type == "flag":
        lowered = raw.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off", ""):
            return False
        raise StepError(f"parameter {name!r}: {raw!r} is not a flag value (use true or false)")
    value: Any = raw
    if parameter.multiple is not None:
        # Given once, the value is split at the parameter's separator (`multiple-separator`, ",").
        value = [v for v in raw.split(parameter.multiple_separator)] if raw else []
    return _validated(parameter, name, value)


def _validated(parameter: Any, name: str, value: Any) -> Any:
    try:
        return parameter.validate(value)
    except ValidationErrors as exc:
        reasons = "; ".join(str(e) for e in exc.errors) if hasattr(exc, "errors") else str(exc)
        raise StepError(f"parameter {name!r}: {reasons}") from None


def prepare_step(config: Config, step_name: str, raw_parameters: dict[str, str | list[str]],
                 inputs: dict[str, list[str]]) -> PreparedStep:
    """Check the user's values against the step and build the exact command to run."""
    step = config.steps.get(step_name)
    if not step_name:
        raise StepError(f"name the step to run (steps: {', '.join(sorted(config.steps)) or 'none'})")
    if step is None:
        known = ", ".join(sorted(config.steps)) or "none"
        raise StepError(f"no step named {step_name!r} (steps: {known})")
    values = _values(step, step_name, raw_parameters)
    unknown_inputs = sorted(set(inputs) - set(step.inputs))
    if unknown_inputs:
        known = ", ".join(sorted(step.inputs)) or "none"
        raise StepError(f"step {step_name!r} has no input {unknown_inputs[0]!r} (inputs: {known})")
    resolved_inputs: dict[str, list[str]] = {}
    input_options: dict[str, dict[str, str]] = {}
    for name, spec in step.inputs.items():
        # Each input is a directory under /valohai/inputs, and `filename` a file in it.
        for what, value in (("input name", name), (f"input {name!r} filename", spec.filename)):
            if value is not None and not one_segment(str(value)):
                raise StepError(f"{what} {str(value)!r} of step {step_name!r} must be a plain name: "
                                "no '/', not '.' or '..'")
        urls = inputs.get(name)
        if urls is None:
            default = spec.default
            urls = [] if default is None else ([default] if isinstance(default, str) else list(default))
        if not urls and not spec.optional:
            raise StepError(f"input {name!r} of step {step_name!r} has no default: give it with --input {name}=URL")
        resolved_inputs[name] = urls
        options = {"keep_directories": str(getattr(spec.keep_directories, "value", spec.keep_directories) or "none")}
        if spec.filename:
            options["filename"] = str(spec.filename)
        input_options[name] = options
    environment = {
        name: str(var.default) for name, var in step.environment_variables.items() if var.default is not None
    }
    return PreparedStep(
        name=step.name,
        image=step.image or None,
        command=_command(step, values),
        parameters=values,
        inputs=resolved_inputs,
        environment=environment,
        resources=resources_of(step),
        input_options=input_options,
        notes=_ignored(step),
        stop_condition=step.stop_condition or None,
    )


def parameters_and_command(config: Config, step_name: str,
                           raw_parameters: dict[str, str | list[str]]) -> tuple[dict[str, Any], str]:
    """What prepare_step gives that depends on the parameters: their checked values and the command
    (for a task's further children, once its first passed prepare_step)."""
    step = config.steps[step_name]
    values = _values(step, step_name, raw_parameters)
    return values, _command(step, values)


def _values(step: Step, step_name: str, raw_parameters: dict[str, str | list[str]]) -> dict[str, Any]:
    unknown = sorted(set(raw_parameters) - set(step.parameters))
    if unknown:
        known = ", ".join(sorted(step.parameters)) or "none"
        raise StepError(f"step {step_name!r} has no parameter {unknown[0]!r} (parameters: {known})")
    values: dict[str, Any] = {}
    for name, parameter in step.parameters.items():
        if name in raw_parameters:
            values[name] = _coerce(step, name, raw_parameters[name])
        elif parameter.default is not None:
            values[name] = parameter.default
        elif parameter.type == "flag":
            values[name] = False
        elif not parameter.optional:
            raise StepError(f"parameter {name!r} of step {step_name!r} has no default: give it with -p {name}=VALUE")
    return values


def _command(step: Step, values: dict[str, Any]) -> str:
    # valohai-yaml shell-quotes each interpolated value, so values reach the shell literally.
    return _script(step.name, step.build_command(values))


def _ignored(step: Step) -> tuple[str, ...]:
    groups = list(step.environment_variable_groups)
    if not groups:
        return ()
    # Valohai keeps these groups in its project settings, which a repository does not carry.
    return (f"step {step.name!r}: environment-variable-groups ({', '.join(groups)}) are Valohai project "
            "settings that runyard does not have; they are ignored: give the variables in the step's "
            "environment-variables, or ask the admin for [secrets]",)


def _script(step_name: str, commands: list[str]) -> str:
    """One line per command under `set -e`: stop at the first failure, as Valohai does.

    Joining with `&&` would make a trailing `&` on one command background all the
    ones before it too. A shebang on the first line chooses the interpreter.
    """
    body = join_command(commands, "\n")
    try:
        shebang_argv(body)
    except ScriptError as exc:
        raise StepError(f"step {step_name!r}: {exc}") from None
    return script_of(body)
