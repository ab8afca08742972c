"""Execution ids as every CLI command takes them: `7`, `latest`, ranges `10-40`, lists `1,3,5-7`.

One rule for info, logs, stop, delete and summarize: a range names the executions that exist
within it, so ids deleted from its middle are gaps and are skipped; an id named on its own must
exist (`there is no execution 9`), and so must something in each range. The whole list is
checked before any command acts on it, so a refused list changes nothing.
"""

from __future__ import annotations

from runyard.protocol import Client, ErrorCode, RemoteError
from runyard.protocol.methods import TERMINAL_STATUSES

MAX_RANGE = 10_000
ONE_HELP = "an execution id, or latest (the newest)"
ONE_ID_COMMANDS = frozenset({"metadata", "restart", "rename", "outputs", "shell"})


class RangeError(ValueError):
    pass


Item = tuple[int, int] | str  # (first, last) for an id or a range, or "latest"


def parse(texts: list[str]) -> list[Item]:
    """Each comma-separated part of ``texts``: (first, last), with first == last for one id, or 'latest'."""
    out: list[Item] = []
    for text in texts:
        for part in filter(None, (p.strip() for p in text.split(","))):
            if part == "latest":
                out.append("latest")
                continue
            low, sep, high = part.partition("-")
            try:
                first, last = int(low), int(high) if sep else int(low)
            except ValueError:
                raise RangeError(f"{part!r} is not an execution id, a range like 10-40, or latest") from None
            if first < 1 or last < first:
                raise RangeError(f"{part!r}: a range goes from a lower id to a higher one")
            if last - first >= MAX_RANGE:
                raise RangeError(f"{part!r}: at most {MAX_RANGE} executions in one range")
            out.append((first, last))
    return out


async def _existing(client: Client, first: int, last: int) -> list[int]:
    """The ids of the executions that exist from ``first`` to ``last``: one page, newest first, is
    enough, since at most last - first + 1 ids lie there."""
    page = await client.list_executions(limit=last - first + 1, before_id=last + 1)
    return sorted(e.id for e in page if e.id >= first)


async def _exists(client: Client, execution_id: int) -> bool:
    try:
        await client.get(execution_id)
    except RemoteError as exc:
        if exc.code == ErrorCode.NOT_FOUND:
            return False
        raise
    return True


async def latest(client: Client) -> int:
    newest = await client.list_executions(limit=1)
    if not newest:
        raise RangeError("there is no latest execution: none exists")
    return newest[0].id


async def resolve(client: Client, texts: list[str]) -> list[int]:
    """The ids named, in the order given (each once): see the module's rule."""
    ids: list[int] = []
    seen: set[int] = set()
    for item in parse(texts):
        if isinstance(item, str):  # latest
            found = [await latest(client)]
        else:
            first, last = item
            if first == last:
                if not await _exists(client, first):
                    raise RangeError(f"there is no execution {first}")
                found = [first]
            else:
                found = await _existing(client, first, last)
                if not found:
                    raise RangeError(f"no execution exists in {first}-{last}")
        ids += [i for i in found if i not in seen]
        seen.update(found)
    return ids


async def one(client: Client, text: str) -> int:
    """One execution: an id or `latest`."""
    text = text.strip()
    if text == "latest":
        return await latest(client)
    try:
        return int(text)
    except ValueError:
        raise RangeError(f"{text!r} is not an execution id or latest") from None


async def undeletable(client: Client, ids: list[int]) -> list[str]:
    """Why some of ``ids`` cannot be deleted (still active, or a task's child), as the daemon would say."""
    why: list[str] = []
    for execution_id in ids:
        e = await client.get(execution_id)
        if e.task is not None:
            why.append(f"execution {execution_id} is a child of task {e.task} (runyard task delete {e.task})")
        elif e.status not in TERMINAL_STATUSES:
            why.append(f"execution {execution_id} is {e.status}: stop it first")
    return why
