"""Stop conditions: a `leval` expression over an execution's latest metadata, as Valohai evaluates them.

valohai-yaml lints a `stop-condition` with leval's RewriterEvaluator, rewriting Python keywords
used as names to `_keyword`; the same evaluator runs it here against the latest value of every
metadata key (a dotted key `a.b` is reachable as `a.b`). A key the execution has not printed yet
makes the condition not met, rather than an error: early metadata rarely has every key.
"""

from __future__ import annotations

import keyword
from typing import Any, Final

from leval.excs import EvaluatorError
from leval.rewriter_evaluator import RewriterEvaluator
from leval.universe.simple import SimpleUniverse
from leval.universe.verifier import VerifierUniverse

MAX_DEPTH: Final = 8  # valohai-yaml's
MAX_LENGTH: Final = 1000


class StopConditionError(ValueError):
    pass


class _Evaluator(RewriterEvaluator):
    def rewrite_keyword(self, kw: str) -> str:
        return f"_{kw}"


def check(expression: str) -> None:
    """Raise StopConditionError if ``expression`` is not one leval (and so Valohai) accepts."""
    if len(expression) > MAX_LENGTH:
        raise StopConditionError(f"a stop-condition is at most {MAX_LENGTH} characters")
    try:
        _Evaluator(VerifierUniverse(), max_depth=MAX_DEPTH).evaluate_expression(expression)
    except (EvaluatorError, SyntaxError, ValueError, TypeError) as exc:
        raise StopConditionError(f"stop-condition {expression!r} is not a valid expression: {exc}") from None


def met(expression: str, metadata: dict[str, Any]) -> bool:
    """Whether ``expression`` holds for these latest metadata values (False when it cannot be told)."""
    values: dict[str | tuple[str, ...], Any] = {}
    for key, value in metadata.items():
        name = f"_{key}" if keyword.iskeyword(key) else key
        values[name] = value
        if "." in key:
            values[tuple(key.split("."))] = value
    try:
        return bool(_Evaluator(SimpleUniverse(functions={}, values=values), max_depth=MAX_DEPTH,
                               max_time=0.1).evaluate_expression(expression))
    except Exception:  # a missing key, a type mismatch (str < float): not met yet
        return False
