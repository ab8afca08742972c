"""`runyard logs N --grep PATTERN`: the lines of a whole log that match, found by the daemon.

The daemon searches the stored log (logs.search) a bounded piece per request; this asks for
the next piece until the log's end and prints as matches arrive, as ``grep -n`` would: the
line number, ``:`` before a match and ``-`` before a context line, ``--`` between groups.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import msgspec

from runyard.protocol import Client
from runyard.protocol.logformat import parse_records
from runyard.protocol.logsearch import SEARCH_CONTEXT_MAX, SEARCH_LIMIT_MAX, LogRecord

from . import render


class GrepUsageError(Exception):
    pass


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--grep", metavar="PATTERN",
                   help="print only the lines of the whole log that match PATTERN (a Python regular "
                        "expression; the daemon searches, however long the log), with their line numbers; "
                        "exit 1 if none matches")
    p.add_argument("-F", "--fixed-strings", action="store_true", help="with --grep: PATTERN is plain text")
    p.add_argument("-i", "--ignore-case", action="store_true", help="with --grep: ignore case")
    p.add_argument("-C", "--context", type=int, default=0, metavar="N",
                   help=f"with --grep: also N lines before and after each match (at most {SEARCH_CONTEXT_MAX})")
    p.add_argument("--json", action="store_true",
                   help="with --grep: a JSON list of matches (line, offset, stream, time, text, before, after)")


def check(args: argparse.Namespace) -> None:
    """Options that only make sense with --grep, or not with it."""
    if args.grep is None:
        used = [flag for flag, on in (("-F", args.fixed_strings), ("-i", args.ignore_case),
                                      ("-C", args.context), ("--json", args.json)) if on]
        if used:
            raise GrepUsageError(f"{used[0]} goes with --grep PATTERN")
        return
    if args.follow or args.head is not None or args.tail is not None:
        raise GrepUsageError("--grep searches the whole log; it does not combine with -f, --head or --tail")
    if not 0 <= args.context <= SEARCH_CONTEXT_MAX:
        raise GrepUsageError(f"-C takes a number of lines from 0 to {SEARCH_CONTEXT_MAX}")


def _as_json(record: LogRecord) -> dict[str, Any]:
    line = parse_records(record.record)[0] if record.record else None
    return {"line": record.line, "offset": record.offset, "stream": line.stream if line else "stdout",
            "time": line.time if line else "", "text": line.text if line else ""}


async def grep(client: Client, args: argparse.Namespace) -> int:
    streams = [args.stream] if args.stream else []
    offset: int | None = None
    last_line = 0  # the last line printed, so overlapping context is printed once
    found = 0
    spent = 0.0  # the daemon's time limit is the whole search's: it is told what earlier parts took
    out = sys.stdout
    if args.json:
        out.write("[")
    while True:
        result = await client.search_logs(args.id, args.grep, regex=not args.fixed_strings,
                                          ignore_case=args.ignore_case, offset=offset, streams=streams,
                                          limit=SEARCH_LIMIT_MAX, context=args.context, spent=spent)
        spent += result.seconds
        chunk: list[str] = []
        matched = {m.line for m in result.matches}
        for match in result.matches:
            if args.json:
                item = _as_json(LogRecord(offset=match.offset, line=match.line, record=match.record))
                item["before"] = [_as_json(r) for r in match.before]
                item["after"] = [_as_json(r) for r in match.after]
                chunk.append(("," if found else "") + "\n" + msgspec.json.encode(item).decode())
                found += 1
                continue
            found += 1
            group = [*match.before, LogRecord(offset=match.offset, line=match.line, record=match.record),
                     *match.after]
            fresh = [r for r in group if r.line > last_line]
            if args.context and last_line and fresh and fresh[0].line > last_line + 1:
                chunk.append("--\n")
            for r in fresh:
                mark = ":" if r.line in matched else "-"
                for line in parse_records(r.record):
                    chunk.append(f"{r.line}{mark}{render.log_line(line, args.timestamps)}\n")
                last_line = r.line
        out.write("".join(chunk))
        out.flush()
        if result.done:
            break
        offset = result.next
    if args.json:
        out.write("\n]\n" if found else "]\n")
    return 0 if found else 1
