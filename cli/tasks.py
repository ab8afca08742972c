"""`runyard task ...`: parameter sweeps (Valohai's tasks) from the command line or valohai.yaml."""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from runyard.protocol import Client
from runyard.protocol.tasks import TaskStopResult, TaskView
from runyard.protocol.units import human_size

from . import render, runflags

if TYPE_CHECKING:
    from runyard.daemon import variants


def _variant(parse: str) -> Any:
    """A flag's converter by the parser's name in daemon.variants, imported only when a task flag is
    given: every CLI start builds this parser."""
    def convert(text: str) -> variants.Variant:
        from runyard.daemon import variants

        try:
            return getattr(variants, parse)(text)  # type: ignore[no-any-return]
        except variants.VariantError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    return convert


def add_parsers(sub: Any) -> None:
    p = sub.add_parser("task", help="parameter sweeps: one step run with many parameter sets (Valohai's tasks)")
    actions = p.add_subparsers(dest="task_action", metavar="ACTION", required=True)

    r = actions.add_parser("run", help="create a task: `task run STEP --grid ...`, or `task run BLUEPRINT` "
                                       "for a task: in valohai.yaml")
    r.add_argument("name", help="the step (with variant flags), or the name of a valohai.yaml task (without)")
    r.add_argument("--grid", type=_variant("parse_grid"), action="append", default=[],
                   metavar="NAME=V1,V2,...", help="these values (repeatable; a grid runs every combination)")
    r.add_argument("--linear", type=_variant("parse_linear"), action="append", default=[],
                   metavar="NAME=START:END:STEP", help="start, start+step, ... up to end (inclusive)")
    r.add_argument("--logspace", type=_variant("parse_logspace"), action="append", default=[],
                   metavar="NAME=START:END:COUNT[:BASE]", help="COUNT values base**START .. base**END (base 10)")
    r.add_argument("--random", type=_variant("parse_random"), action="append", default=[],
                   metavar="NAME=MIN..MAX[:loguniform][:int]",
                   help="drawn between MIN and MAX (makes a random search of --count children)")
    r.add_argument("--parameter-sets", metavar="FILE",
                   help="a YAML/JSON list of parameter mappings, one child each (a manual search)")
    r.add_argument("--type", help="grid_search, random_search, manual_search, bayesian_tpe or distributed "
                                   "(default: from the flags)")
    r.add_argument("--count", type=int, help="children of a random search (default 20)")
    r.add_argument("--seed", type=int, help="a random search's seed: the same seed draws the same children")
    r.add_argument("--batch-size", type=int, dest="execution_batch_size", metavar="N",
                   help="bayesian_tpe: children asked of the optimiser per round after the random first 20 (default 1)")
    r.add_argument("--target-metric", dest="optimization_target_metric", metavar="KEY",
                   help="bayesian_tpe: the metadata key to optimise (its latest value; minimised)")
    r.add_argument("--target-value", type=float, dest="optimization_target_value", metavar="V",
                   help="bayesian_tpe: optimise the metric towards this value (its distance to V is minimised)")
    r.add_argument("--max-queued", type=int, dest="maximum_queued_executions", metavar="N",
                   help="at most N children queued or running at once; the others wait as created")
    r.add_argument("--on-child-error", choices=["continue-and-complete", "continue-and-error", "stop-all-and-error"],
                   help="what a failed child does to the task (default continue-and-complete)")
    r.add_argument("--stop-condition", metavar="EXPR",
                   help="stop the task when a child's latest metadata meets this, e.g. 'val_loss < 0.1'")
    r.add_argument("-p", "--param", action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter value every child gets (repeatable)")
    r.add_argument("--input", action="append", default=[], metavar="NAME=URL", help="input URL (repeatable)")
    src = r.add_mutually_exclusive_group()
    src.add_argument("--adhoc", action="store_true", help="snapshot the working tree as it is")
    src.add_argument("--commit", default=None, metavar="REF", help="snapshot this commit (default HEAD)")
    r.add_argument("--image", help="Docker image instead of the step's")
    r.add_argument("--title", help="a title for the task (and its children)")
    r.add_argument("--directory", "-C", default=".", help="repository directory (default: .)")
    r.add_argument("--yaml", "--config-file", dest="yaml", default="valohai.yaml",
                   help="valohai.yaml path inside the repository")
    r.add_argument("--gpus", type=int, metavar="N", help="GPUs for each child")
    r.add_argument("--pool", help="run the children on hosts of this pool")
    r.add_argument("--priority", type=int, default=0, help="higher runs first; above 0 needs an admin")
    r.add_argument("--retry", type=int, default=0, metavar="N", dest="retries",
                   help="times each child may go back to the queue after losing its host")
    runflags.add_flags(r)
    r.add_argument("--watch", "-w", action="store_true", help="print the task's progress until it ends")
    r.add_argument("--json", action="store_true")

    x = actions.add_parser("list", help="tasks, newest first, with their children's progress")
    x.add_argument("--status", action="append", default=[], help="only tasks in this status (repeatable)")
    x.add_argument("--limit", type=int, default=50)
    x.add_argument("--json", action="store_true")
    for name, what in (("info", "a task: its spec, state and children"),
                       ("stop", "stop a task: every child still queued, waiting or running"),
                       ("restart", "a new task with the same children (parameters, snapshot, image)"),
                       ("delete", "delete an ended task and all its children")):
        x = actions.add_parser(name, help=what)
        x.add_argument("id", type=int, help="the task id")
        if name == "delete":
            x.add_argument("--purge-outputs", action="store_true", help="remove the children's outputs too")
        else:
            x.add_argument("--json", action="store_true")
        if name == "restart":
            x.add_argument("--watch", "-w", action="store_true", help="print its progress until it ends")


def _task(value: Any) -> TaskView:
    return msgspec.convert(value, TaskView)


def progress(t: TaskView) -> str:
    c = t.children
    done = sum(c.get(s, 0) for s in ("complete", "error", "stopped"))
    parts = [f"{done}/{t.total} done"]
    for status in ("started", "queued", "created", "error", "stopped"):
        if c.get(status):
            parts.append(f"{c[status]} {'waiting' if status == 'created' else status}")
    return ", ".join(parts)


async def cmd_task(client: Client, args: argparse.Namespace) -> int:
    handler = {"run": _run, "list": _list, "info": _info, "stop": _stop, "restart": _restart,
               "delete": _delete}[args.task_action]
    return await handler(client, args)


async def _run(client: Client, args: argparse.Namespace) -> int:
    from runyard.daemon.snapshots import SnapshotError, snapshot_commit, snapshot_worktree

    from .main import CliError, _print_json
    from .precheck import Refused, collect_parameters
    from .requestcheck import check_options

    try:
        check_options(args)
    except Refused as exc:
        raise CliError(str(exc)) from None
    chosen = [*args.grid, *args.linear, *args.logspace, *args.random]
    sets: list[dict[str, Any]] = []
    if args.parameter_sets:
        import yaml

        try:
            loaded = yaml.safe_load(await asyncio.to_thread(Path(args.parameter_sets).read_text))
        except (OSError, yaml.YAMLError) as exc:
            raise CliError(f"--parameter-sets {args.parameter_sets}: {exc}") from None
        if not isinstance(loaded, list) or not all(isinstance(s, dict) for s in loaded):
            raise CliError(f"--parameter-sets {args.parameter_sets}: must be a list of NAME: VALUE mappings")
        sets = loaded
    kind = args.type or ("manual_search" if sets else "random_search" if args.random else None)
    blueprint = not chosen and not sets
    if kind is None and not blueprint:
        kind = "grid_search"
    request: dict[str, Any] = {
        "step": "" if blueprint else args.name, "blueprint": args.name if blueprint else None, "type": kind,
        "variants": [{"name": v.name, "style": v.style, "rules": v.rules} for v in chosen],
        "parameter_sets": sets, "execution_count": args.count, "seed": args.seed,
        "maximum_queued_executions": args.maximum_queued_executions, "on_child_error": args.on_child_error,
        "stop_condition": args.stop_condition, "title": args.title, "image": args.image,
        "config_path": args.yaml, "pool": args.pool, "gpus": args.gpus, "priority": args.priority,
        "retries": args.retries,
    }
    for field in ("execution_batch_size", "optimization_target_metric", "optimization_target_value"):
        if getattr(args, field) is not None:
            request[field] = getattr(args, field)
    pairs = []
    for text in args.param:
        name, sep, value = text.partition("=")
        if not sep or not name:
            raise CliError(f"a parameter must look like NAME=VALUE, got {text!r}")
        pairs.append((name, value))
    try:
        request["parameters"] = runflags.parameters(args, collect_parameters(pairs))
    except runflags.ParameterFileError as exc:
        raise CliError(str(exc)) from None
    request.update(runflags.request_fields(args))
    inputs: dict[str, list[str]] = {}
    for text in args.input:
        name, sep, url = text.partition("=")
        if not sep or not name:
            raise CliError(f"an input must look like NAME=URL, got {text!r}")
        inputs.setdefault(name, []).append(url)
    request["inputs"] = inputs
    directory = await asyncio.to_thread(Path(args.directory).resolve)
    try:
        snap = await asyncio.to_thread(snapshot_worktree, directory) if args.adhoc else \
            await asyncio.to_thread(snapshot_commit, directory, args.commit or "HEAD")
    except SnapshotError as exc:
        raise CliError(str(exc)) from None
    if not args.json:
        kind_text = "working tree" if args.adhoc else f"commit {(snap.commit or '')[:12]}"
        print(f"snapshot {snap.id[:12]} of {kind_text}: {snap.files} files, {human_size(snap.size)}", file=sys.stderr)
    if not await client.snapshot_has(snap.id):
        await client.snapshot_put(snap.id, snap.data)
    request.update(snapshot=snap.id, commit=snap.commit)
    task = _task(await client.call("tasks.create", request))
    return await _report(client, task, args, _print_json)


async def _report(client: Client, task: TaskView, args: argparse.Namespace, print_json: Any) -> int:
    if args.json and not args.watch:
        print_json(task)
        return 0
    print(f"task {task.id} ({task.type}, step {task.step}): {task.total} children, {progress(task)}; "
          f"see it with: runyard task info {task.id}", file=sys.stderr)
    if not args.watch:
        print(task.id)
        return 0
    final = await watch(client, task.id)
    if args.json:
        print_json(final)
    return 0 if final.status == "complete" else 1


async def watch(client: Client, task_id: int) -> TaskView:
    """Print the task's progress each time a child changes, until the task ends."""
    said = ""
    events = client.events()
    try:
        while True:
            task = _task(await client.call("tasks.get", {"id": task_id}))
            line = f"task {task.id}: {task.status}{f' ({task.reason})' if task.reason else ''}: {progress(task)}"
            if line != said:
                print(line, file=sys.stderr)
                said = line
            if task.status in ("complete", "error", "stopped"):
                return task
            await anext(events)
    finally:
        await events.aclose()  # type: ignore[attr-defined]


async def _list(client: Client, args: argparse.Namespace) -> int:
    from .main import _print_json

    tasks = msgspec.convert(await client.call("tasks.list", {"limit": args.limit, "status": args.status}),
                            list[TaskView])
    if args.json:
        _print_json(tasks)
    elif not tasks:
        print("no tasks")
    else:
        colour = render.use_colour()
        rows = [[str(t.id), t.name or t.title or "-", t.type, t.step, t.status + (f" ({t.reason})" if t.reason else ""),
                 progress(t), t.owner, t.created_at[:19].replace("T", " ")] for t in tasks]
        shown = [[*r[:4], render.paint(r[4], render._COLOURS.get(t.status, "37"), colour), *r[5:]]
                 for r, t in zip(rows, tasks, strict=True)]
        print(render.table(["ID", "NAME", "TYPE", "STEP", "STATUS", "PROGRESS", "OWNER", "CREATED"], shown, rows))
    return 0


async def _info(client: Client, args: argparse.Namespace) -> int:
    from .main import _print_json

    t = _task(await client.call("tasks.get", {"id": args.id}))
    if args.json:
        _print_json(t)
        return 0
    limit = "-" if t.maximum_queued_executions is None else str(t.maximum_queued_executions)
    for key, value in (("id", str(t.id)), ("name", t.name or "-"), ("title", t.title or "-"), ("type", t.type),
                       ("step", t.step), ("status", t.status + (f" ({t.reason})" if t.reason else "")),
                       ("owner", t.owner), ("children", f"{t.total}: {progress(t)}"), ("max queued", limit),
                       ("on child error", t.on_child_error), ("stop condition", t.stop_condition or "-"),
                       *_search_fields(t), ("created", t.created_at), ("ended", t.ended_at or "-")):
        print(f"{key + ':':<16}{render.shown(value)}")
    if t.execution_ids:
        print(f"executions:     {_ranges(t.execution_ids)}  (runyard summarize --task {t.id})")
    return 0


def _search_fields(t: TaskView) -> list[tuple[str, str]]:
    """What a search was asked: its target metric and which way it is ranked, count, batch, seed."""
    def text(value: object) -> str:
        return "-" if value is None else str(value)

    metric = t.optimization_target_metric
    if metric is not None:
        towards = t.optimization_target_value
        metric += " (lowest first)" if towards is None else f" (closest to {towards:g} first)"
    return [("target metric", metric or "-"), ("count", text(t.execution_count)),
            ("batch size", text(t.execution_batch_size)), ("seed", text(t.seed))]


def _ranges(ids: list[int]) -> str:
    spans: list[str] = []
    start = prev = ids[0]
    for i in [*ids[1:], None]:
        if i is not None and i == prev + 1:
            prev = i
            continue
        spans.append(str(start) if start == prev else f"{start}-{prev}")
        if i is not None:
            start = prev = i
    return ", ".join(spans)


async def _stop(client: Client, args: argparse.Namespace) -> int:
    from .main import _print_json

    result = msgspec.convert(await client.call("tasks.stop", {"id": args.id}), TaskStopResult)
    if args.json:
        _print_json(result)
    else:
        t = _task(await client.call("tasks.get", {"id": args.id}))
        print(f"task {args.id}: {t.status}; {len(result.stopped)} children stopped or stopping")
    return 0


async def _restart(client: Client, args: argparse.Namespace) -> int:
    from .main import _print_json

    return await _report(client, _task(await client.call("tasks.restart", {"id": args.id})), args, _print_json)


async def _delete(client: Client, args: argparse.Namespace) -> int:
    count = await client.call("tasks.delete", {"id": args.id, "purge_outputs": args.purge_outputs})
    print(f"task {args.id} deleted with its {count} children" + (" and their outputs" if args.purge_outputs else ""))
    return 0


COMMANDS = {"task": cmd_task}
