"""The log record format, shared by the daemon that writes it and clients that read it.

One record per line: a stream letter (``O`` stdout, ``E`` stderr, ``S`` runyard
itself), a space, a fixed-width UTC timestamp with nanoseconds, a space, the
text, and ``\\n``. Fixed-width headers keep parsing cheap and byte offsets stable.
"""

from __future__ import annotations

from typing import Final, NamedTuple

TIMESTAMP_WIDTH: Final = 30  # 2026-11-21T12:54:33.897432730Z
HEADER_WIDTH: Final = 1 + 1 + TIMESTAMP_WIDTH + 1
STREAM_LETTERS: Final = {"stdout": "O", "stderr": "E", "system": "S"}
STREAM_NAMES: Final = {letter: name for name, letter in STREAM_LETTERS.items()}


class LogLine(NamedTuple):
    stream: str
    time: str
    text: str


def format_record(stream_letter: str, timestamp: str, text: str) -> str:
    return f"{stream_letter} {timestamp} {text}\n"


def parse_records(data: str) -> list[LogLine]:
    """Split a block of whole records into lines; a malformed record is kept as text."""
    lines: list[LogLine] = []
    # str.splitlines would also split on \f, \x1c and friends that programs print.
    for record in data.split("\n"):
        if not record:
            continue
        if len(record) >= HEADER_WIDTH - 1 and record[1] == " " and record[0] in STREAM_NAMES:
            lines.append(
                LogLine(STREAM_NAMES[record[0]], record[2 : 2 + TIMESTAMP_WIDTH], record[HEADER_WIDTH:])
            )
        else:
            lines.append(LogLine("stdout", "", record))
    return lines
