"""The `runyard` command: the daemon, and a client for every operation on executions."""

from __future__ import annotations

import argparse
import asyncio
import fnmatch
import json
import os
import sys
from pathlib import Path, PurePosixPath
from typing import Any

import msgspec

from runyard.protocol import Client, ConnectionLost, RemoteError, default_socket_path
from runyard.protocol.logformat import parse_records
from runyard.protocol.methods import ExecutionView
from runyard.protocol.units import human_size

from . import grep, ranges, render, runflags, summarize, tasks

EXIT_ERROR = 1  # the execution failed, or lint found errors
EXIT_USAGE = 2  # the daemon refused the request
EXIT_UNREACHABLE = 3


class CliError(Exception):
    pass


RANGE_HELP = "an execution id, a range like 10-40 or 1,3,5-7, or latest (the newest)"


async def _ids(client: Client, *texts: str) -> list[int]:
    try:
        return await summarize.resolve(client, list(texts))
    except summarize.RangeError as exc:
        raise CliError(str(exc)) from None


def _print_json(value: Any) -> None:
    sys.stdout.write(msgspec.json.encode(value).decode() + "\n")


def _key_value(text: str, what: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"{what} must look like NAME=VALUE, got {text!r}")
    return name, value


def _param(text: str) -> tuple[str, str]:
    return _key_value(text, "a parameter")


def _input(text: str) -> tuple[str, str]:
    return _key_value(text, "an input")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="runyard",
        description="Run valohai.yaml steps as Docker containers on your own machines.",
    )
    parser.add_argument("--socket", default=None,
                        help=f"daemon socket (default: $RUNYARD_SOCKET or {default_socket_path()})")
    # Every command takes --socket after its name too; SUPPRESS keeps the global value otherwise.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--socket", default=argparse.SUPPRESS, help="daemon socket path")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    add = sub.add_parser

    def add_parser(name: str, **kwargs: Any) -> argparse.ArgumentParser:
        return add(name, parents=[common], **kwargs)

    sub.add_parser = add_parser  # type: ignore[method-assign]

    p = sub.add_parser("daemon", help="run the daemon in the foreground (logs to stderr)")
    p.add_argument("--config", help="TOML config file (see config.example.toml)")
    p.add_argument("--check-config", action="store_true",
                   help="validate the config and reach every host (ssh, runtime, GPUs) without starting "
                        "the daemon; exit 0 if all is well, 1 if a host failed, 2 if the config is invalid")
    p.add_argument("--install-systemd", action="store_true",
                   help="write the systemd unit (Type=notify) that runs this daemon with --config, "
                        "and reload systemd")
    p.add_argument("--unit-dir", default="/etc/systemd/system", help="where --install-systemd writes the unit")
    p.add_argument("--json", action="store_true", help="--check-config: the report as JSON")

    from .retention import add_parser as add_retention

    add_retention(sub)

    p = sub.add_parser("run", help="run a step of valohai.yaml (or an ml.yaml project) as a new execution")
    p.add_argument("step", nargs="?", default="", help="step name in valohai.yaml (none for an ml.yaml)")
    p.add_argument("-p", "--param", type=_param, action="append", default=[], metavar="NAME=VALUE",
                   help="parameter value (repeatable); repeating a `multiple` parameter adds a value each time, "
                        "as written; given once, its value is split at the separator (`a,b`)")
    p.add_argument("--input", type=_input, action="append", default=[], metavar="NAME=URL",
                   help="input URL, replacing the step's default (repeatable)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--adhoc", action="store_true",
                     help="snapshot the working tree as it is, uncommitted and untracked files too")
    src.add_argument("--commit", default=None, metavar="REF", help="snapshot this commit (default HEAD)")
    p.add_argument("--image", help="Docker image instead of the step's")
    p.add_argument("--title", help="a title for the execution")
    p.add_argument("--directory", "-C", default=".", help="repository directory (default: .)")
    p.add_argument("--yaml", "--config-file", dest="yaml", default="valohai.yaml",
                   help="valohai.yaml or ml.yaml path inside the repository (default valohai.yaml)")
    p.add_argument("--watch", "-w", action="store_true", help="follow the logs until it ends")
    p.add_argument("--sync", metavar="DIR",
                   help="copy its outputs into DIR as they are stored (live outputs) and when it ends; "
                        "waits for the end, exit code as with --watch")
    p.add_argument("--gpus", type=int, metavar="N", help="GPUs to grant (default: the step's resources.devices)")
    p.add_argument("--pool", help="run on a host of this pool (default: the step's environment, if a pool)")
    p.add_argument("--priority", type=int, default=0,
                   help="higher runs first; above 0 needs an admin (default 0)")
    p.add_argument("--retry", type=int, default=0, metavar="N", dest="retries",
                   help="if its host is unreachable past scheduler.host_lost_grace_seconds, go back to the "
                        "queue (at most N times) instead of ending as error host-lost (default 0)")
    runflags.add_flags(p)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("hosts", help="pool hosts: state, GPUs and who holds them, running executions")
    p.add_argument("action", nargs="?", choices=["list", "drain", "enable", "scan"], default="list",
                   help="drain: finish what runs, take nothing new; enable: undo; scan: re-read inventory")
    p.add_argument("name", nargs="?", help="the host, for drain, enable and scan")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("tui", help="the terminal dashboard (also what plain `runyard` opens in a terminal)")
    p.add_argument("--readonly", action="store_true", help="hide stop, restart, delete, rename, drain, enable")
    p.add_argument("--keys", action="store_true", help="list the binding ids that tui.toml [keys] can remap")

    p = sub.add_parser("doctor", help="check a host: ssh, runtime, nvidia-smi, container toolkit, disk")
    p.add_argument("name", help="host name from the config (local for this machine)")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("list", help="list executions, newest first")
    p.add_argument("--status", action="append", default=[], help="only this status (repeatable)")
    p.add_argument("--tag", action="append", default=[], dest="tags", metavar="TAG",
                   help="only executions with this tag (repeatable: any of them)")
    p.add_argument("--limit", type=int, default=50)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("info", help="everything about one execution (or each of a range)")
    p.add_argument("id", metavar="ID", help=RANGE_HELP)
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("logs", help="print an execution's log (or each of a range's, one after another)")
    p.add_argument("id", metavar="ID", help=RANGE_HELP)
    p.add_argument("-f", "--follow", action="store_true", help="keep printing new lines until it ends")
    p.add_argument("--head", type=int, metavar="N", help="the first N lines")
    p.add_argument("--tail", type=int, metavar="N", help="the last N lines")
    p.add_argument("--stream", choices=["stdout", "stderr"], help="only this stream")
    p.add_argument("--timestamps", "-t", action="store_true", help="prefix each line with its time")
    grep.add_arguments(p)

    p = sub.add_parser("metadata", help="metadata points and the latest value of each key")
    p.add_argument("id", metavar="ID", help=ranges.ONE_HELP)
    p.add_argument("--all-attempts", action="store_true",
                   help="the points of every attempt of a retried execution, not only the current one")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("stop", help="stop executions (SIGTERM, then SIGKILL after the grace period)")
    p.add_argument("ids", nargs="*", metavar="ID", help=RANGE_HELP)
    p.add_argument("--all", action="store_true", help="every active execution you may stop")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("restart", help="a new execution with the same snapshot, step, parameters, image; "
                                       "the flags change what they name (Valohai's copy execution)")
    p.add_argument("id", metavar="ID", help=ranges.ONE_HELP)
    p.add_argument("-p", "--param", type=_param, action="append", default=[], metavar="NAME=VALUE",
                   help="a parameter value instead of the old one (repeatable)")
    p.add_argument("--input", type=_input, action="append", default=[], metavar="NAME=URL",
                   help="an input URL instead of the old one (repeatable)")
    p.add_argument("--image", help="Docker image instead of the old one")
    p.add_argument("--title", help="a title instead of the old one")
    p.add_argument("--gpus", type=int, metavar="N", help="GPUs to grant instead of the old number")
    p.add_argument("--adhoc", action="store_true",
                   help="run the working tree as it is now (of --directory) with the old parameters and inputs")
    p.add_argument("--directory", "-C", default=".", help="repository directory for --adhoc (default: .)")
    runflags.add_flags(p, restart=True)
    p.add_argument("--watch", "-w", action="store_true")
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("rename", help="set an execution's title")
    p.add_argument("id", metavar="ID", help=ranges.ONE_HELP)
    p.add_argument("title", help='the new title; "" clears it')
    p.add_argument("--json", action="store_true")

    p = sub.add_parser("delete", help="delete an ended execution and its log (or each of a range)")
    p.add_argument("id", metavar="ID", help=RANGE_HELP)
    p.add_argument("--purge-outputs", action="store_true", help="remove its stored outputs too")

    p = sub.add_parser("outputs", help="list (or download) an execution's outputs")
    p.add_argument("id", metavar="ID", help=ranges.ONE_HELP)
    p.add_argument("--download", metavar="DIR", help="copy every output into DIR")
    p.add_argument("--sync", metavar="DIR",
                   help="copy outputs into DIR as they are stored (live outputs) until the execution ends; "
                        "a file DIR already holds with the same checksum is not fetched again")
    p.add_argument("--filter", action="append", default=[], metavar="GLOB",
                   help="only outputs whose path matches, e.g. '*.pt' (repeatable)")
    p.add_argument("--json", action="store_true")

    tasks.add_parsers(sub)
    summarize.add_parser(sub)

    p = sub.add_parser("lint", help="check a valohai.yaml and print every problem")
    p.add_argument("path", nargs="?", default="valohai.yaml")
    p.add_argument("--json", action="store_true")

    from . import shell, yamlstep

    yamlstep.add_parser(sub)
    shell.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        if sys.stdin.isatty() and sys.stdout.isatty() and _tui_installed():
            return _tui(args)
        parser.print_help()
        return 0
    if args.command == "tui":
        return _tui(args)
    if args.command == "daemon":
        return _daemon(args)
    if args.command == "lint":
        from .lint import lint_command

        return lint_command(args.path, args.json)
    if args.command == "yaml":
        from . import yamlstep

        return yamlstep.run(args)
    try:
        return asyncio.run(_client_command(args))
    except CliError as exc:
        print(f"runyard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RemoteError as exc:
        print(f"runyard: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    except ConnectionLost as exc:
        print(f"runyard: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except KeyboardInterrupt:
        return 130


def _tui_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("textual") is not None


def _tui(args: argparse.Namespace) -> int:
    if not _tui_installed():
        print("runyard: the TUI needs Textual: pip install 'runyard[tui]'", file=sys.stderr)
        return EXIT_USAGE
    from runyard.tui import binding_ids, run_tui

    if getattr(args, "keys", False):
        for binding_id, keys, what in binding_ids():
            print(f"{binding_id:24} {keys:22} {what}")
        return 0
    socket = args.socket or os.environ.get("RUNYARD_SOCKET") or None
    return run_tui(socket, readonly=getattr(args, "readonly", False))


def _daemon(args: argparse.Namespace) -> int:
    from runyard.daemon.app import run
    from runyard.daemon.config import ConfigError, exposed_secrets, load_config

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"runyard: {exc}", file=sys.stderr)
        return EXIT_USAGE
    if args.socket:
        config.daemon.socket = os.path.abspath(args.socket)
    warning = exposed_secrets(args.config, config)
    if warning is not None:
        print(f"runyard: warning: {warning}", file=sys.stderr)
    from runyard.daemon.registries import exposed_password_files

    for loose in exposed_password_files(config.registries):
        print(f"runyard: warning: {loose}", file=sys.stderr)
    if args.check_config or args.install_systemd:
        from .service import service_command

        return service_command(args, config)
    return run(config)


async def _client_command(args: argparse.Namespace) -> int:
    if args.command == "shell":
        from .shell import cmd_shell

        COMMANDS["shell"] = cmd_shell
    if args.command == "retention":
        from .retention import cmd_retention

        COMMANDS["retention"] = cmd_retention
    handler = COMMANDS[args.command]
    client = await Client.connect(args.socket, client_name="runyard-cli")
    try:
        if args.command in ranges.ONE_ID_COMMANDS:  # `latest` works wherever one id is taken
            try:
                args.id = await ranges.one(client, args.id)
            except ranges.RangeError as exc:
                raise CliError(str(exc)) from None
        return await handler(client, args)
    finally:
        await client.close()


async def cmd_run(client: Client, args: argparse.Namespace) -> int:
    from runyard.daemon.snapshots import SnapshotError, snapshot_commit, snapshot_worktree, uncommitted_changes

    from .precheck import Refused, check_request
    from .requestcheck import check_options

    try:
        check_options(args)
    except Refused as exc:
        raise CliError(str(exc)) from None
    parameters = _run_parameters(args)
    directory = await asyncio.to_thread(Path(args.directory).resolve)
    try:
        if args.adhoc:
            snap = await asyncio.to_thread(snapshot_worktree, directory)
        else:
            snap = await asyncio.to_thread(snapshot_commit, directory, args.commit or "HEAD")
        pending = 0 if args.adhoc or args.commit else await asyncio.to_thread(uncommitted_changes, directory)
    except SnapshotError as exc:
        raise CliError(str(exc)) from None
    inputs: dict[str, list[str]] = {}
    for name, url in args.input:
        inputs.setdefault(name, []).append(url)
    try:  # before the upload: a request the daemon would refuse costs no snapshot
        notes = await asyncio.to_thread(check_request, snap, directory, args.yaml, args.step, parameters, inputs,
                                        adhoc=args.adhoc)
    except Refused as exc:
        raise CliError(str(exc)) from None
    for note in notes:
        print(f"runyard: warning: {note}", file=sys.stderr)
    if pending:
        changes = "1 uncommitted change" if pending == 1 else f"{pending} uncommitted changes"
        print(f"runyard: note: this runs commit {(snap.commit or '')[:12]} (HEAD), without the working tree's "
              f"{changes}; --adhoc runs the working tree as it is", file=sys.stderr)
    if not args.json:
        kind = "working tree" if args.adhoc else f"commit {(snap.commit or '')[:12]}"
        print(f"snapshot {snap.id[:12]} of {kind}: {snap.files} files, {human_size(snap.size)}", file=sys.stderr)
    if not await client.snapshot_has(snap.id):
        await client.snapshot_put(snap.id, snap.data)
    execution = await client.submit(
        step=args.step, snapshot=snap.id, parameters=parameters, title=args.title,
        image=args.image, commit=snap.commit, inputs=inputs, config_path=args.yaml,
        pool=args.pool, gpus=args.gpus, priority=args.priority, retries=args.retries,
        **runflags.request_fields(args),
    )
    return await _report_new(client, execution, args)


def _run_parameters(args: argparse.Namespace) -> dict[str, Any]:
    """-p values (repeated: a list, one value each) over the parameter file's, by name."""
    from .precheck import collect_parameters

    try:
        return runflags.parameters(args, collect_parameters(args.param))
    except runflags.ParameterFileError as exc:
        raise CliError(str(exc)) from None


async def _report_new(client: Client, execution: ExecutionView, args: argparse.Namespace) -> int:
    if args.json and not args.watch:
        _print_json(execution)
        return 0
    print(f"execution {execution.id} ({execution.step}) {execution.status}; "
          f"follow it with: runyard logs {execution.id} -f", file=sys.stderr)
    sync_dir = getattr(args, "sync", None)
    if not args.watch and not sync_dir:
        print(execution.id)
        return 0
    if sync_dir:
        from .sync import Syncer, SyncError, stderr

        syncer = Syncer(client, execution.id, sync_dir, [], say=stderr)
        follow = [_follow(client, execution.id, 0, None, False)] if args.watch else []
        try:
            await asyncio.gather(syncer.run(), *follow)
        except (SyncError, OSError) as exc:
            raise CliError(str(exc)) from None
    else:
        await _follow(client, execution.id, 0, None, False)
    final = await client.get(execution.id)
    if args.json:
        _print_json(final)
    else:
        print(f"execution {final.id}: {render.status_text(final.status, final.reason, render.use_colour(sys.stderr))}",
              file=sys.stderr)
    return 0 if final.status == "complete" else EXIT_ERROR


async def _follow(client: Client, execution_id: int, offset: int, stream: str | None, timestamps: bool) -> None:
    async for block in client.follow_logs(execution_id, offset):
        _print_records(block.data, stream, timestamps)


def _print_records(data: str, stream: str | None, timestamps: bool) -> None:
    out = []
    for line in parse_records(data):
        if stream is None or line.stream == stream:
            out.append(render.log_line(line, timestamps) + "\n")
    sys.stdout.write("".join(out))
    sys.stdout.flush()


async def cmd_hosts(client: Client, args: argparse.Namespace) -> int:
    if args.action in ("drain", "enable") and not args.name:
        raise CliError(f"hosts {args.action} needs a host name")
    if args.action == "drain":
        hosts = [await client.host_drain(args.name)]
    elif args.action == "enable":
        hosts = [await client.host_enable(args.name)]
    elif args.action == "scan":
        hosts = await client.hosts_scan(args.name)
    else:
        hosts = await client.hosts()
        if args.name:
            hosts = [h for h in hosts if h.name == args.name]
            if not hosts:
                raise CliError(f"there is no host {args.name!r}")
    if args.json:
        _print_json(hosts)
    elif args.action in ("drain", "enable"):
        print(f"{hosts[0].name}: {hosts[0].state}")
    else:
        print(render.hosts_text(hosts, render.use_colour()))
    return 0


async def cmd_doctor(client: Client, args: argparse.Namespace) -> int:
    checks = await client.doctor(args.name)
    if args.json:
        _print_json(checks)
    else:
        colour = render.use_colour()
        for check in checks:
            mark = render.paint("ok", "32", colour) if check.ok else render.paint("FAIL", "31", colour)
            print(f"{mark:<4}  {check.name + ':':<26}{check.detail}")
    return 0 if all(c.ok for c in checks) else EXIT_ERROR


async def cmd_list(client: Client, args: argparse.Namespace) -> int:
    executions = await client.list_executions(status=args.status, limit=args.limit, tags=args.tags)
    if args.json:
        _print_json(executions)
    elif executions:
        print(render.executions_table(executions, render.use_colour()))
    else:
        print("no executions")
    return 0


async def cmd_info(client: Client, args: argparse.Namespace) -> int:
    ids = await _ids(client, args.id)
    if len(ids) > 1:
        if args.json:
            _print_json([await client.get(i) for i in ids])
            return 0
        for n, execution_id in enumerate(ids):
            if n:
                print()
            await cmd_info(client, argparse.Namespace(**{**vars(args), "id": str(execution_id)}))
        return 0
    e = await client.get(ids[0])
    if args.json:
        _print_json(e)
        return 0
    colour = render.use_colour()
    fields = [
        ("id", str(e.id)), ("title", e.title or "-"), ("step", e.step), ("task", str(e.task) if e.task else "-"),
        ("status", render.status_text(e.status, e.reason, colour)),
        ("owner", e.owner), ("host", e.host or "-"), ("GPUs", ", ".join(e.gpus) or "-"),
        ("priority", str(e.priority)), ("retries left", str(e.retries)), ("tags", ", ".join(e.tags) or "-"),
        ("time limit", render.seconds_text(e.resources.get("time_limit_seconds"))),
        ("no-output limit", render.seconds_text(e.resources.get("no_output_timeout_seconds"))),
        ("image", e.image),
        ("snapshot", e.snapshot[:12] + (f" (commit {e.commit[:12]})" if e.commit else "")),
        ("created", e.created_at), ("started", e.started_at or "-"), ("ended", e.ended_at or "-"),
        ("duration", render.duration(e.started_at, e.ended_at)),
        ("exit code", "-" if e.exit_code is None else str(e.exit_code)),
        ("container", render.container_text(e.container_id, e.cluster_job)),
        ("restarted from", str(e.restarted_from) if e.restarted_from else "-"),
        ("command", e.command), ("log", human_size(e.log_size)),
    ]
    if e.input_progress:
        done, total = int(str(e.input_progress.get("done", 0))), e.input_progress.get("total")
        of = f" of {human_size(int(str(total)))}" if total is not None else ""
        fields.append(("fetching", f"{e.input_progress.get('input')}: {human_size(done)}{of}"))
    shown = render.shown
    for key, value in fields:
        # the status is ours, coloured; every other value may hold what a user or script wrote
        text = value if key == "status" else "\n".ljust(17).join(map(shown, value.split("\n")))
        print(f"{key + ':':<15} {text}")
    if e.parameters:
        print("parameters:")
        for name, param in e.parameters.items():
            print(f"  {shown(name)} = {shown(json.dumps(param))}")
    if e.inputs:
        print("inputs:")
        for key, urls in e.inputs.items():
            print(f"  {shown(key)}: {shown(', '.join(urls)) or '-'}")
    if e.variables:
        print("variables (--var):")
        for name, value in e.variables.items():
            print(f"  {shown(name)} = {shown(json.dumps(value))}")
    if e.gpu_use:
        from runyard.protocol.gpuuse import gpu_use_lines

        print("GPU use:")
        for line in gpu_use_lines(e.gpus, e.gpu_use):
            print(f"  {line}")
    if e.metadata:
        print("metadata (latest):")
        for name, point in e.metadata.items():
            print(f"  {shown(name)} = {shown(json.dumps(point))}")
    return 0


async def cmd_logs(client: Client, args: argparse.Namespace) -> int:
    try:
        grep.check(args)
    except grep.GrepUsageError as exc:
        raise CliError(str(exc)) from None
    if args.grep is not None:
        ids = await _ids(client, str(args.id))  # logs takes a range now; a search is of one log
        if len(ids) != 1:
            raise CliError("--grep searches one execution's log: give one id")
        args.id = ids[0]
        return await grep.grep(client, args)
    if (args.head is not None and args.head < 0) or (args.tail is not None and args.tail < 0):
        raise CliError("--head and --tail take a number of lines, 0 or more")
    ids = await _ids(client, str(args.id))
    if len(ids) > 1:
        if args.follow:
            raise CliError("-f follows one execution; name one, not a range")
        for execution_id in ids:
            print(f"==> execution {execution_id} <==", flush=True)
            await cmd_logs(client, argparse.Namespace(**{**vars(args), "id": str(execution_id)}))
        return 0
    args.id = ids[0]
    end = 0
    if args.head is not None or args.tail is not None:
        head_end = 0
        if args.head is not None:
            head = await client.read_logs(args.id, head=args.head, stream=args.stream)
            _print_records(head.data, None, args.timestamps)
            head_end = end = head.end
        if args.tail is not None:
            tail = await client.read_logs(args.id, tail=args.tail, stream=args.stream)
            if args.head is not None and tail.start > head_end:
                skipped = await client.call("logs.count", {"id": args.id}) if args.stream is None else None
                shown = len(parse_records(head.data)) + len(parse_records(tail.data))
                print(f"... {skipped - shown} lines skipped ..." if skipped is not None else "...")
            _print_records(_records_from(tail.data, tail.start, head_end), None, args.timestamps)
            end = tail.end
    else:
        offset = 0
        while True:
            block = await client.read_logs(args.id, offset=offset, max_bytes=1 << 20)
            _print_records(block.data, args.stream, args.timestamps)
            end = block.end
            if block.end <= offset or block.end >= block.size:
                break
            offset = block.end
    if args.follow:
        await _follow(client, args.id, end, args.stream, args.timestamps)
    return 0


def _records_from(data: str, start: int, offset: int) -> str:
    """The records of a block starting at byte ``start`` that lie at or after ``offset``."""
    if offset <= start:
        return data
    raw = data.encode()
    return raw[offset - start :].decode("utf-8", "replace") if offset - start < len(raw) else ""


async def cmd_metadata(client: Client, args: argparse.Namespace) -> int:
    points = await client.metadata(args.id, all_attempts=args.all_attempts)  # every page of them
    latest: dict[str, Any] = {}
    current = max((p.attempt for p in points), default=0)
    for point in points:
        if point.attempt == current:  # latest values are the current attempt's
            latest.update(point.values)
    if args.json:
        _print_json({"points": points, "latest": latest})
        return 0
    if not points:
        print("no metadata: print JSON objects on stdout to record some")
        return 0
    keys = sorted({k for p in points for k in p.values if k != "_time"})
    attempts = len({p.attempt for p in points}) > 1
    rows = [([str(p.attempt)] if attempts else []) + [str(p.n), str(p.values.get("_time", p.time))]
            + [_cell(p.values.get(k)) for k in keys] for p in points]
    print(render.table([*(["ATTEMPT"] if attempts else []), "N", "TIME", *keys], rows))
    print()
    print("latest:")
    for key in keys:
        if key in latest:
            print(f"  {render.shown(key)} = {render.shown(json.dumps(latest[key]))}")
    return 0


def _cell(value: Any) -> str:
    return "" if value is None else json.dumps(value)


async def cmd_stop(client: Client, args: argparse.Namespace) -> int:
    if not args.ids and not args.all:
        raise CliError("name the executions to stop, or --all")
    result = await client.stop(await _ids(client, *args.ids) if args.ids else [], all=args.all)
    if args.json:
        _print_json(result)
        return 0
    for execution_id in result.stopped:
        # One that had not started is stopped at once; a running one has its grace period to end.
        status = (await client.get(execution_id)).status
        print(f"execution {execution_id}: {'stopped' if status == 'stopped' else 'stopping'}")
    for execution_id in result.already_ended:
        print(f"execution {execution_id}: had already ended")
    if not result.stopped and not result.already_ended:
        print("nothing to stop")
    return 0


async def cmd_restart(client: Client, args: argparse.Namespace) -> int:
    changes: dict[str, Any] = runflags.request_fields(args)
    parameters = _run_parameters(args)
    if parameters:
        changes["parameters"] = parameters
    inputs: dict[str, list[str]] = {}
    for name, url in args.input:
        inputs.setdefault(name, []).append(url)
    if inputs:
        changes["inputs"] = inputs
    for key in ("image", "title", "gpus"):
        if getattr(args, key) is not None:
            changes[key] = getattr(args, key)
    from .precheck import Refused
    from .requestcheck import check_adhoc_restart, check_options, worktree_of

    snap = None
    notes: tuple[str, ...] = ()
    try:
        check_options(args)
        if args.adhoc:  # checked as `run` checks, before anything is uploaded
            old = await client.get(args.id)
            directory, snap = await asyncio.to_thread(worktree_of, args.directory)
            notes = await asyncio.to_thread(check_adhoc_restart, old, snap, directory,
                                            changes.get("parameters", {}), inputs)
    except Refused as exc:
        raise CliError(str(exc)) from None
    if snap is not None:
        for note in notes:
            print(f"runyard: warning: {note}", file=sys.stderr)
        if not args.json:
            print(f"snapshot {snap.id[:12]} of working tree: {snap.files} files, {human_size(snap.size)}",
                  file=sys.stderr)
        if not await client.snapshot_has(snap.id):
            await client.snapshot_put(snap.id, snap.data)
        changes["snapshot"] = snap.id
    execution = await client.restart(args.id, **changes)
    return await _report_new(client, execution, args)


async def cmd_rename(client: Client, args: argparse.Namespace) -> int:
    execution = await client.rename(args.id, args.title)
    if args.json:
        _print_json(execution)
    else:
        print(f"execution {execution.id} is now titled {execution.title!r}" if execution.title
              else f"execution {execution.id} has no title now")
    return 0


async def cmd_delete(client: Client, args: argparse.Namespace) -> int:
    ids = await _ids(client, args.id)
    if len(ids) > 1:  # what the daemon would refuse, found before anything is deleted
        refused = await ranges.undeletable(client, ids)
        if refused:
            raise CliError("nothing deleted: " + "; ".join(refused))
    for execution_id in ids:
        await client.delete(execution_id, purge_outputs=args.purge_outputs)
        print(f"execution {execution_id} deleted" + (" with its outputs" if args.purge_outputs else ""))
    return 0


async def cmd_outputs(client: Client, args: argparse.Namespace) -> int:
    if args.sync:
        from .sync import Syncer, SyncError, stderr

        if args.download:
            raise CliError("--download and --sync both name a directory: give one")
        syncer = Syncer(client, args.id, args.sync, args.filter, say=stderr)
        try:
            synced = await syncer.run()
        except (SyncError, OSError) as exc:
            raise CliError(str(exc)) from None
        if args.json:
            _print_json(synced)
        return EXIT_ERROR if syncer.refused else 0
    files = every = await client.outputs(args.id)
    if args.filter:
        # fnmatch's * also crosses "/", so '*.pt' finds checkpoints in sub-folders too
        files = [f for f in files if any(fnmatch.fnmatchcase(f.path, pattern) for pattern in args.filter)]
    none_match = (f"no output of execution {args.id} matches {' or '.join(map(repr, args.filter))} "
                  f"(it has {len(every)}: `runyard outputs {args.id}` lists them)") if every and not files else None
    if none_match and args.download and not args.json:
        print(none_match, file=sys.stderr)
    if args.download:
        target = Path(args.download)
        for f in files:
            rel = PurePosixPath(f.path)
            if rel.is_absolute() or ".." in rel.parts:
                raise CliError(f"refusing output path {f.path!r}: it leaves the download directory")
            dest = target.joinpath(*rel.parts)
            dest.parent.mkdir(parents=True, exist_ok=True)
            with dest.open("wb") as fh:
                offset = 0
                while offset < f.size:
                    chunk = await client.read_output(args.id, f.path, offset, 1 << 20)
                    if not chunk:
                        break
                    fh.write(chunk)
                    offset += len(chunk)
            print(f"{dest} ({human_size(f.size)})", file=sys.stderr)
    if args.json:
        _print_json(files)
    elif not args.download:
        if not files:
            print(none_match or "no outputs")
        else:
            print(render.table(["SIZE", "PATH"], [[human_size(f.size), f.path] for f in files]))
    return 0


COMMANDS = {
    "run": cmd_run, "list": cmd_list, "info": cmd_info, "logs": cmd_logs, "metadata": cmd_metadata,
    "stop": cmd_stop, "restart": cmd_restart, "rename": cmd_rename, "delete": cmd_delete,
    "outputs": cmd_outputs, "hosts": cmd_hosts, "doctor": cmd_doctor,
    **tasks.COMMANDS, **summarize.COMMANDS,
}


def entry() -> None:
    try:
        code = main()
        sys.stdout.flush()
    except BrokenPipeError:
        # `runyard list | head`: the reader has what it wanted. Quiet, as other commands are.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        code = 0
    sys.exit(code)
