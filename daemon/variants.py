"""A task's children: the parameter sets its variants make. No I/O.

Faithful to valohai-yaml's ``Task`` and ``VariantParameter``: a variant parameter has a style
(single, multiple, linear, logspace, random) and rules (value; items; start/end/step;
start/end/count/base; min/max/distribution/integerify/seed), and the task's type says how the
parameters combine: grid_search (the Cartesian product), random_search (``execution-count``
draws, reproducible with a seed), manual_search (one child per ``parameter-sets`` entry),
distributed (``execution-count`` identical members; see distributed.py for how they meet).

Bayesian search is not here: its children are asked for in rounds by optimize.py, which has
seen the earlier rounds' results; its random first batch is a random_search of :func:`expand`.
"""

from __future__ import annotations

import itertools
import math
import random
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

STYLES: Final = ("single", "multiple", "linear", "logspace", "random")
TYPES: Final = ("grid_search", "random_search", "manual_search", "bayesian_tpe", "distributed")
DISTRIBUTIONS: Final = ("uniform", "loguniform")
MAX_CHILDREN: Final = 20_000
DEFAULT_RANDOM_COUNT: Final = 20  # Valohai's default first batch


class VariantError(ValueError):
    """A variant that cannot make children; the message names the parameter and the rule."""


@dataclass(frozen=True, slots=True)
class Variant:
    name: str
    style: str
    rules: dict[str, Any] = field(default_factory=dict)


def task_type(value: str | None) -> str:
    """valohai-yaml's TaskType.cast: case-insensitive, '-' or '_'; none is grid_search."""
    if not value:
        return "grid_search"
    cast = str(value).lower().replace("-", "_")
    if cast not in TYPES:
        raise VariantError(f"unknown task type {value!r} (one of {', '.join(TYPES)})")
    return cast


def style_of(value: str | None) -> str:
    if not value:
        return "single"
    cast = str(value).lower()
    if cast not in STYLES:
        raise VariantError(f"unknown parameter style {value!r} (one of {', '.join(STYLES)})")
    return cast


def _number(variant: Variant, key: str, default: float | None = None) -> float:
    value = variant.rules.get(key, default)
    if value is None:
        raise VariantError(f"parameter {variant.name} ({variant.style}) needs {key!r}")
    if isinstance(value, bool) or not isinstance(value, int | float):
        try:
            value = float(str(value))
        except ValueError:
            raise VariantError(f"parameter {variant.name}: {key} must be a number, not {value!r}") from None
    if not math.isfinite(value):
        raise VariantError(f"parameter {variant.name}: {key} must be finite, not {value!r}")
    return value


def values(variant: Variant) -> list[Any]:
    """The values a non-random style gives, in order."""
    rules = variant.rules
    match variant.style:
        case "single":
            if "value" not in rules:
                raise VariantError(f"parameter {variant.name} (single) needs 'value'")
            return [rules["value"]]
        case "multiple":
            items = rules.get("items")
            if not isinstance(items, list) or not items:
                raise VariantError(f"parameter {variant.name} (multiple) needs a non-empty list 'items'")
            return list(items)
        case "linear":
            start, end, step = _number(variant, "start"), _number(variant, "end"), _number(variant, "step")
            if step == 0 or (end - start) / step < 0:
                raise VariantError(f"parameter {variant.name} (linear): step {step:g} never goes from "
                                   f"{start:g} to {end:g}")
            count = math.floor((end - start) / step + 1e-9) + 1
            _check_count(variant, count)
            integral = all(isinstance(rules.get(k), int) for k in ("start", "end", "step"))
            out = [start + i * step for i in range(count)]
            return [int(v) for v in out] if integral else [round(v, 12) for v in out]
        case "logspace":
            start, end = _number(variant, "start"), _number(variant, "end")
            count = int(_number(variant, "count"))
            base = _number(variant, "base", 10)
            if count < 1:
                raise VariantError(f"parameter {variant.name} (logspace): count must be at least 1")
            _check_count(variant, count)
            if count == 1:
                out = [float(base ** start)]
            else:
                out = [float(f"{base ** (start + i * (end - start) / (count - 1)):.12g}") for i in range(count)]
            return [round(v) for v in out] if rules.get("integerify") else out
        case "random":
            raise VariantError(f"parameter {variant.name} is random: only a random_search draws it")
    raise VariantError(f"unknown parameter style {variant.style!r}")


def _check_count(variant: Variant, count: int) -> None:
    if count > MAX_CHILDREN:
        raise VariantError(f"parameter {variant.name} makes {count} values, more than {MAX_CHILDREN}")


def _draw(variant: Variant, rng: random.Random) -> Any:
    low, high = _number(variant, "min"), _number(variant, "max")
    if low > high:
        raise VariantError(f"parameter {variant.name} (random): min {low:g} is above max {high:g}")
    distribution = str(variant.rules.get("distribution", "uniform")).lower()
    if distribution == "uniform":
        value = rng.uniform(low, high)
    elif distribution == "loguniform":
        if low <= 0:
            raise VariantError(f"parameter {variant.name} (random, loguniform): min must be above 0")
        value = math.exp(rng.uniform(math.log(low), math.log(high)))
    else:
        raise VariantError(f"parameter {variant.name}: distribution {distribution!r} is not one of "
                           f"{', '.join(DISTRIBUTIONS)}")
    if variant.rules.get("integerify"):
        return round(value)
    return float(f"{value:.12g}")


def expand(kind: str, variants: Iterable[Variant], *, parameter_sets: Iterable[Mapping[str, Any]] = (),
           count: int | None = None, seed: int | None = None) -> list[dict[str, Any]]:
    """The parameters of each child, in order. Raises VariantError naming what cannot be made."""
    kind = task_type(kind)
    variants = list(variants)
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        raise VariantError(f"parameter {next(n for n in names if names.count(n) > 1)} is given twice")
    sets = [dict(s) for s in parameter_sets if s]
    if kind == "manual_search" and sets:
        fixed = {v.name: values(v)[0] for v in variants if v.style == "single"}
        children = [fixed | s for s in sets]
    elif kind in ("grid_search", "manual_search"):  # a manual search given variants, not sets: each combination
        # A grid of no variants is one child of the step's defaults: valohai-yaml's own
        # examples define such tasks (`parameters: []`, for a stop-condition).
        if not variants and kind == "manual_search":
            raise VariantError("a manual_search needs at least one variant parameter or parameter-sets: "
                               "one mapping of parameters per child")
        total = math.prod(len(values(v)) for v in variants)
        if total > MAX_CHILDREN:
            raise VariantError(f"the grid makes {total} children, more than {MAX_CHILDREN}")
        children = [dict(zip(names, combo, strict=True))
                    for combo in itertools.product(*(values(v) for v in variants))]
    elif kind == "random_search":
        # execution-count, else the largest `count` a random rule gives, else Valohai's default
        counts = [int(v.rules["count"]) for v in variants if v.style == "random"
                  and isinstance(v.rules.get("count"), int)]
        n = count if count is not None else max(counts, default=DEFAULT_RANDOM_COUNT)
        if not 1 <= n <= MAX_CHILDREN:
            raise VariantError(f"execution-count must be between 1 and {MAX_CHILDREN}, not {n}")
        if not variants:
            raise VariantError("a random_search needs at least one variant parameter")
        # One generator per parameter, seeded by its rule's seed (else the task's, else the first
        # seed any rule gives: a blueprint that seeds one parameter is reproducible as a whole) and
        # its name: a parameter's draws do not change when another parameter is added.
        if seed is None:
            seed = next((v.rules["seed"] for v in variants if v.rules.get("seed") is not None), None)
        columns: list[list[Any]] = []
        for v in variants:
            own = v.rules.get("seed", seed)
            rng = random.Random(f"{own}:{v.name}") if own is not None else random.Random()
            if v.style == "random":
                columns.append([_draw(v, rng) for _ in range(n)])
            else:
                choices = values(v)
                columns.append([rng.choice(choices) for _ in range(n)])
        children = [dict(zip(names, row, strict=True)) for row in zip(*columns, strict=True)]
    elif kind == "bayesian_tpe":
        raise VariantError("a bayesian_tpe task's children are asked of its optimiser in rounds (optimize.py)")
    elif kind == "distributed":
        children = _members(variants, sets, count)
    else:
        raise AssertionError(f"task type {kind} has no expansion")  # task_type refused any other
    if len(children) > MAX_CHILDREN:
        raise VariantError(f"the task makes {len(children)} children, more than {MAX_CHILDREN}")
    return children


def _members(variants: list[Variant], sets: list[dict[str, Any]], count: int | None) -> list[dict[str, Any]]:
    """A distributed task's members: ``count`` identical children (Valohai's execution-count)."""
    if sets:
        raise VariantError("a distributed task's members are identical: it takes no parameter-sets")
    fixed: dict[str, Any] = {}
    for v in variants:
        given = [] if v.style == "random" else values(v)
        if len(given) != 1:
            raise VariantError(f"parameter {v.name}: a distributed task's members are identical, so each "
                               f"parameter takes one value (style single), not {v.style}")
        fixed[v.name] = given[0]
    if count is None:
        raise VariantError("a distributed task needs execution-count (--count N): how many members it has")
    if not 1 <= count <= MAX_CHILDREN:
        raise VariantError(f"execution-count must be between 1 and {MAX_CHILDREN}, not {count}")
    return [dict(fixed) for _ in range(count)]


def raw(value: Any) -> str | list[str]:
    """A parameter value as `-p` would give it, for the step's own type checks."""
    if isinstance(value, list):
        return [raw(v) for v in value]  # type: ignore[misc]
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# -- the command line's shorthands ---------------------------------------------------------


def _split_named(text: str, flag: str) -> tuple[str, str]:
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise VariantError(f"{flag} must look like NAME=..., got {text!r}")
    return name.strip(), rest


def _scalar(text: str) -> Any:
    """A value as typed: a number where it reads as one (as YAML would), else the text."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text


def parse_grid(text: str) -> Variant:
    """``--grid lr=0.1,0.01,0.001``: the listed values (one value: single)."""
    name, rest = _split_named(text, "--grid")
    items = [_scalar(t.strip()) for t in rest.split(",")]
    if len(items) == 1:
        return Variant(name, "single", {"value": items[0]})
    return Variant(name, "multiple", {"items": items})


def _parts(text: str, flag: str, shape: str, n: int) -> tuple[str, list[float]]:
    name, rest = _split_named(text, flag)
    parts = rest.split(":")
    if len(parts) not in (n, n + 1):
        raise VariantError(f"{flag} must look like {shape}, got {text!r}")
    try:
        return name, [_scalar(p) for p in parts]
    except ValueError:
        raise VariantError(f"{flag} takes numbers: {text!r}") from None


def parse_linear(text: str) -> Variant:
    """``--linear epochs=1:10:3``: start:end:step."""
    name, (start, end, step, *_rest) = _parts(text, "--linear", "NAME=START:END:STEP", 3)
    return Variant(name, "linear", {"start": start, "end": end, "step": step})


def parse_logspace(text: str) -> Variant:
    """``--logspace lr=-5:-1:5[:BASE]``: exponents start:end, count values, base 10 by default."""
    name, parts = _parts(text, "--logspace", "NAME=START:END:COUNT[:BASE]", 3)
    rules: dict[str, Any] = {"start": parts[0], "end": parts[1], "count": parts[2]}
    if len(parts) == 4:
        rules["base"] = parts[3]
    return Variant(name, "logspace", rules)


def parse_random(text: str) -> Variant:
    """``--random lr=0.0001..0.1[:loguniform][:int]``: drawn between min and max."""
    name, rest = _split_named(text, "--random")
    span, *options = rest.split(":")
    low, sep, high = span.partition("..")
    if not sep:
        raise VariantError(f"--random must look like NAME=MIN..MAX[:loguniform][:int], got {text!r}")
    rules: dict[str, Any] = {"min": _scalar(low), "max": _scalar(high)}
    for option in options:
        if option in ("int", "integer", "integerify"):
            rules["integerify"] = True
        elif option in ("log", "loguniform"):
            rules["distribution"] = "loguniform"
        elif option == "uniform":
            rules["distribution"] = "uniform"
        else:
            raise VariantError(f"--random {name}: unknown option {option!r} (loguniform, uniform or int)")
    return Variant(name, "random", rules)


def from_yaml(parameters: Iterable[Any]) -> list[Variant]:
    """valohai-yaml VariantParameter objects as Variants."""
    return [Variant(p.name, style_of(getattr(p.style, "value", p.style)), dict(p.rules or {})) for p in parameters]
