"""The daemon's log search against the plainest reference: every record's text, one by one.

The search runs a pattern over chunks of whole records and checks each hit against its record;
these properties hold it to exactly what a record-by-record search finds, for patterns with
anchors, sets, classes that cross newlines, possessive parts and lookarounds, on logs with
malformed records, non-ASCII text and records longer than a chunk.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import regex
from hypothesis import given, settings
from hypothesis import strategies as st

from runyard.daemon import logsearch
from runyard.daemon.logsearch import compile_query, search_log
from runyard.protocol.logsearch import LogsSearchParams

PATTERNS = ["a", "ab", "^a", "b$", "^$", r"a\s+b", "[^a]b", "[]a]", r"\bab\b", "(?=a)b|b", "a++b",
            r"\Aa", "é", "x*", "(a|b)+c", "[^x]+$", "A", "^.{2}", r"O 2"]
TEXTS = st.text(alphabet="abcxé Aé\t", max_size=12)


@st.composite
def logs(draw: st.DrawFn) -> list[str]:
    records = []
    for text in draw(st.lists(TEXTS, max_size=40)):
        kind = draw(st.sampled_from("OOOES?"))
        records.append(text if kind == "?" else f"{kind} 2026-11-21T00:00:00.000000000Z {text}")
    return records


def reference(records: list[str], pattern: str, ignore_case: bool, letters: set[str] | None) -> list[int]:
    flags = regex.MULTILINE | (regex.IGNORECASE if ignore_case else 0)
    compiled = regex.compile(pattern, flags)
    out = []
    for n, record in enumerate(records, 1):
        if len(record) >= 32 and record[1] == " " and record[0] in "OES":
            letter, text = record[0], record[33:]
        else:
            letter, text = "O", record
        if (letters is None or letter in letters) and compiled.search(text):
            out.append(n)
    return out


@settings(max_examples=150, deadline=None)
@given(records=logs(), pattern=st.sampled_from(PATTERNS), ignore_case=st.booleans(),
       streams=st.sampled_from([[], ["stderr"], ["stdout", "system"]]), chunk=st.sampled_from([64, 1 << 20]),
       backward=st.booleans())
def test_chunked_search_finds_what_a_record_by_record_search_finds(
        records: list[str], pattern: str, ignore_case: bool, streams: list[str], chunk: int, backward: bool) -> None:
    letters = {{"stdout": "O", "stderr": "E", "system": "S"}[s] for s in streams} if streams else None
    expected = reference(records, pattern, ignore_case, letters)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "1.log"
        path.write_bytes("".join(r + "\n" for r in records).encode())
        params = LogsSearchParams(id=1, pattern=pattern, regex=True, ignore_case=ignore_case, streams=streams,
                                  limit=1000, backward=backward)
        original = logsearch.CHUNK
        logsearch.CHUNK = chunk  # small chunks: records across chunk ends, records longer than one
        try:
            found = search_log(path, params, compile_query(params), 1 << 20)
            # two at a time, each request going on from the last one's next, finds the same
            stepped: list[int] = []
            params.limit = 2
            while True:
                part = search_log(path, params, compile_query(params), 1 << 20)
                stepped += [m.line for m in part.matches]
                if part.done:
                    break
                params.offset = part.next
        finally:
            logsearch.CHUNK = original
    lines = [m.line for m in found.matches]
    assert (lines[::-1] if backward else lines) == expected
    assert (stepped[::-1] if backward else stepped) == expected
    assert found.done
    offsets = [0]
    for r in records:
        offsets.append(offsets[-1] + len(r.encode()) + 1)
    for m in found.matches:
        assert m.offset == offsets[m.line - 1] and m.end == offsets[m.line]
        assert m.record == records[m.line - 1]
