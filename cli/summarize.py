"""`runyard summarize`: one row per execution, its parameters and metadata, ranked (Valohai's
`vh execution summarize`). Execution ranges (`10-40`, `1,3,5-7`, `latest`) are cli/ranges.py's."""

from __future__ import annotations

import argparse
import csv
import math
import sys
from typing import Any

import msgspec

from runyard.protocol import Client
from runyard.protocol.methods import ExecutionView
from runyard.protocol.tasks import TaskView

from . import ranges, render

RangeError = ranges.RangeError
resolve = ranges.resolve


def add_parser(sub: Any) -> None:
    p = sub.add_parser("summarize", help="a table of executions: parameters and metadata, sorted (ranges like 10-40)")
    p.add_argument("ids", nargs="*", metavar="RANGE", help="executions: ids, ranges like 10-40, latest")
    p.add_argument("--task", type=int, metavar="ID", help="every child of this task")
    p.add_argument("--key", action="append", default=[], dest="keys", metavar="KEY",
                   help="metadata keys to show (repeatable; default: every key printed)")
    p.add_argument("--agg", choices=["last", "min", "max"], default="last",
                   help="which value of each key: the latest (default), the smallest or the largest")
    p.add_argument("--sort", metavar="KEY", help="sort by this metadata key or parameter (missing values last)")
    p.add_argument("--desc", action="store_true", help="sort descending")
    fmt = p.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="one object per execution")
    fmt.add_argument("--csv", action="store_true", help="comma-separated, with a header row")


async def _executions(client: Client, ids: list[int]) -> list[ExecutionView]:
    """The executions with their latest metadata, a page of 10,000 at a time (not one request each)."""
    wanted = set(ids)
    found: dict[int, ExecutionView] = {}
    before = max(ids) + 1
    while wanted - found.keys():
        page = await client.list_executions(limit=10_000, before_id=before, with_metadata=True)
        for e in page:
            if e.id in wanted:
                found[e.id] = e
        if not page or page[-1].id <= min(ids):
            break
        before = page[-1].id
    return [found[i] for i in ids if i in found]


async def cmd_summarize(client: Client, args: argparse.Namespace) -> int:
    from .main import CliError, _print_json

    try:
        ids = await resolve(client, args.ids)
    except RangeError as exc:
        raise CliError(str(exc)) from None
    if args.task is not None:
        task = msgspec.convert(await client.call("tasks.get", {"id": args.task}), TaskView)
        ids += [i for i in task.execution_ids if i not in ids]
    if not ids:
        raise CliError("name executions (ids, ranges like 10-40, latest) or --task ID")
    executions = await _executions(client, ids)
    if not executions:
        raise CliError("none of those executions exists")
    values: dict[int, dict[str, Any]] = {}
    for e in executions:
        if args.agg == "last":
            values[e.id] = {k: v for k, v in e.metadata.items() if k != "_time"}
        else:
            pick = min if args.agg == "min" else max
            seen: dict[str, list[Any]] = {}
            for point in await client.metadata(e.id):
                for k, v in point.values.items():
                    if k != "_time" and _number(v) is not None:
                        seen.setdefault(k, []).append(v)
            values[e.id] = {k: pick(vs, key=lambda x: _number(x) or 0.0) for k, vs in seen.items()}
    keys = args.keys or sorted({k for v in values.values() for k in v})
    params = sorted({k for e in executions for k in e.parameters})
    if args.sort:
        if args.sort not in keys and args.sort not in params:
            raise CliError(f"cannot sort by {args.sort!r}: it is neither a metadata key ({', '.join(keys) or 'none'}) "
                           f"nor a parameter ({', '.join(params) or 'none'})")

        def rank(e: ExecutionView) -> tuple[int, float, str]:
            value = values[e.id].get(args.sort, e.parameters.get(args.sort))
            n = _number(value)
            if n is None:
                return (1, 0.0, "" if value is None else str(value))  # missing or not a number: last
            return (0, -n if args.desc else n, "")
        executions.sort(key=rank)
    records = [{"id": e.id, "status": e.status, "task": e.task, **{f"{k}": e.parameters.get(k) for k in params},
                **{k: values[e.id].get(k) for k in keys}} for e in executions]
    if args.json:
        _print_json([{"id": e.id, "status": e.status, "task": e.task, "parameters": e.parameters,
                      "metadata": {k: values[e.id].get(k) for k in keys}} for e in executions])
        return 0
    headers = ["id", "status", *params, *keys]
    if args.csv:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(headers)
        for r in records:
            writer.writerow(["" if r.get(h) is None else _text(r.get(h)) for h in headers])
        return 0
    rows = [[_text(r.get(h)) for h in headers] for r in records]
    print(render.table([h.upper() if h in ("id", "status") else h for h in headers], rows))
    return 0


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return None if isinstance(value, float) and math.isnan(value) else float(value)


def _text(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


COMMANDS = {"summarize": cmd_summarize}
