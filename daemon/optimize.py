"""Bayesian search (`bayesian_tpe`): Optuna's TPE through its ask-and-tell interface, in rounds.

Optuna is an optional extra (``runyard[optimize]``), imported only here and only when a Bayesian
task is made or asked for a round. runyard's SQLite stays the one record: no Optuna storage is
kept. Each round the study is rebuilt in memory from the task's stored children (their parameters
and the latest value of the target metric, re-added with ``add_trial``) and asked for the next
batch with a sampler seeded by the task's seed and the number of trials so far. A round therefore
depends only on what is stored: a daemon killed between rounds asks the same round again after
its restart, and a round's children are created in one transaction, so none is lost or made twice.

As on Valohai, the first ``FIRST_BATCH`` children (or all of them, when the task has fewer) are a
random search; later rounds of ``execution-batch-size`` are asked once every earlier child ended.
A child that errors or is stopped, or never printed the metric, is a failed trial. The objective
is minimised: the distance of the metric's latest value to ``optimization-target-value`` when one
is given (Valohai: the value the optimiser tries to reach), else the value itself.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from . import variants

FIRST_BATCH: Final = 20  # Valohai seeds its optimiser with 20 random executions
DEFAULT_BATCH_SIZE: Final = 1
EXTRA_HINT: Final = ("bayesian_tpe tasks need Optuna, runyard's optional extra: "
                     "pip install 'runyard[optimize]' where the daemon runs, then restart it")


class OptimizeError(variants.VariantError):
    """A Bayesian task that cannot be run; the message names what is missing."""


def require_optuna() -> Any:
    """The optuna module, or OptimizeError naming the extra that provides it."""
    try:
        import optuna
    except ImportError:
        raise OptimizeError(EXTRA_HINT) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # a line per trial would flood the daemon's log
    return optuna


@dataclass(frozen=True, slots=True)
class Trial:
    """A stored child as the study sees it: its variant values and how it ended."""

    parameters: dict[str, Any]
    status: str
    value: float | None  # the target metric's latest value, if it printed one


def check(spec: dict[str, Any], chosen: Sequence[variants.Variant]) -> None:
    """Refuse, by name, a Bayesian task that cannot run (before anything is created)."""
    require_optuna()
    if not spec.get("optimization_target_metric"):
        raise OptimizeError("a bayesian_tpe task needs optimization-target-metric: the metadata key it optimises")
    distributions(chosen)


def first_batch(chosen: Sequence[variants.Variant], count: int, seed: int | None) -> list[dict[str, Any]]:
    """The random first batch: as a random search of min(FIRST_BATCH, count) children."""
    return variants.expand("random_search", chosen, count=min(FIRST_BATCH, count), seed=seed)


def distributions(chosen: Sequence[variants.Variant]) -> dict[str, Any]:
    """Each varying parameter's Optuna distribution: random rules give a range, the listing
    styles (multiple, linear, logspace) the values they list; single ones stay fixed."""
    optuna = require_optuna()
    dist = optuna.distributions
    out: dict[str, Any] = {}
    for v in chosen:
        if v.style == "single":
            continue
        if v.style != "random":
            out[v.name] = dist.CategoricalDistribution(variants.values(v))
            continue
        low, high = float(v.rules.get("min", 0)), float(v.rules.get("max", 0))
        log = str(v.rules.get("distribution", "uniform")).lower() == "loguniform"
        if not low < high or (log and low <= 0):
            raise OptimizeError(f"parameter {v.name} (random): min must be below max"
                                + (" and above 0 (loguniform)" if log else ""))
        if v.rules.get("integerify"):
            out[v.name] = dist.IntDistribution(math.ceil(low), math.floor(high), log=log)
        else:
            out[v.name] = dist.FloatDistribution(low, high, log=log)
    return out


def objective(value: float, target: float | None) -> float:
    return abs(value - target) if target is not None else value


def ask(spec: dict[str, Any], chosen: Sequence[variants.Variant], done: Sequence[Trial],
        n: int) -> list[dict[str, Any]]:
    """The next ``n`` children's variant values, from a study rebuilt from ``done``. CPU-bound:
    run it in a thread."""
    optuna = require_optuna()
    spaces = distributions(chosen)
    target = spec.get("optimization_target_value")
    study = optuna.create_study(
        direction="minimize",
        sampler=optuna.samplers.TPESampler(seed=_seed(spec.get("seed"), len(done)), constant_liar=True,
                                           n_startup_trials=0))
    state = optuna.trial.TrialState
    for trial in done:
        params = {name: _in(spaces[name], trial.parameters.get(name)) for name in spaces}
        if any(p is None for p in params.values()):
            continue  # a child whose values are outside the space (made by hand): the study cannot use it
        ok = trial.status == "complete" and trial.value is not None and math.isfinite(trial.value)
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions=spaces,
            value=objective(float(trial.value), target) if ok and trial.value is not None else None,
            state=state.COMPLETE if ok else state.FAIL))
    fixed = {v.name: variants.values(v)[0] for v in chosen if v.style == "single"}
    asked = []
    for _ in range(n):
        t = study.ask(spaces)
        asked.append(fixed | {k: _plain(val) for k, val in t.params.items()})
    return asked


def _seed(seed: Any, trials: int) -> int | None:
    # The same stored trials and seed ask the same round, before a restart or after it.
    return None if seed is None else (int(seed) * 100_003 + trials) % (2**32)


def _in(space: Any, value: Any) -> Any:
    """``value`` as the space holds it, or None when it is not in the space."""
    if value is None:
        return None
    name = type(space).__name__
    try:
        if name == "CategoricalDistribution":
            return value if value in space.choices else None
        if name == "IntDistribution":
            number: float = round(float(value))
        else:
            number = float(value)
    except (TypeError, ValueError):
        return None
    return number if space.low <= number <= space.high else None


def _plain(value: Any) -> Any:
    """Optuna's value as a parameter value (floats as the random search prints them)."""
    if isinstance(value, float):
        return float(f"{value:.12g}")
    return value
