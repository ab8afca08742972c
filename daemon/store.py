"""All durable state, in SQLite through aiosqlite.

Every state transition is one transaction that updates the execution and
appends its event, so the event log and the executions table never disagree.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import aiosqlite

from runyard.protocol.messages import Event

from .lifecycle import ACTIVE_STATUSES, ALLOWED, TERMINAL
from .record import COLUMNS, SELECT, ExecutionRow, column_values, encode_field, row_of
from .schema import MIGRATIONS, SCHEMA_VERSION

T = TypeVar("T")

__all__ = ["ACTIVE_STATUSES", "ALLOWED", "TERMINAL", "ExecutionRow", "Store", "StoreError", "utcnow"]


class StoreError(Exception):
    pass


class SchemaTooNew(StoreError):
    pass


def utcnow() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class StoredPoint(NamedTuple):
    """One metadata point as recorded: its number in the execution, time, values, attempt, and the
    length of its JSON text (what it costs in a reply)."""

    n: int
    at: str
    values: dict[str, Any]
    attempt: int
    size: int


class Store:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self.db = db
        self.daemon_id = ""
        # One connection is shared by every coroutine: transactions must not interleave.
        self._lock = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def _tx(self) -> AsyncIterator[None]:
        """One write transaction, which a cancel at any await can never leave open.

        aiosqlite runs statements in order on its own thread, and a statement whose
        awaiting task was cancelled still runs there. So the ROLLBACK that a cancel
        queues runs after whatever was already queued (the BEGIN included), and
        COMMIT/ROLLBACK are awaited to the end even through further cancels, before
        the lock lets the next transaction begin.
        """
        async with self._lock:
            try:
                await self.db.execute("BEGIN IMMEDIATE")
                yield
            except BaseException:
                # Also when the BEGIN itself failed or was cancelled before it ran: rolling
                # back then finds no transaction, which is what we want.
                await _to_the_end(self._rollback())
                raise
            try:
                await _to_the_end(self.db.execute("COMMIT"))
            except BaseException:
                # A COMMIT that failed (disk full, I/O error) leaves the transaction open.
                await _to_the_end(self._rollback())
                raise

    async def _in_one_hop(self, work: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``work`` as one write transaction in one trip to aiosqlite's thread.

        Each awaited statement is a round trip through that thread and back to the event loop
        (about 0.1 ms each on a busy machine): a submit's BEGIN, two INSERTs and COMMIT were
        most of its cost. ``work`` runs whole on the thread, so a cancel of the caller can never
        leave its transaction open: the lock is held until it has ended either way."""
        def run() -> T:
            conn = self.db._conn  # aiosqlite's own connection, only ever used on its thread
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = work(conn)
                conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(sqlite3.OperationalError):
                    conn.execute("ROLLBACK")
                raise
            return result

        async with self._lock:
            hop: asyncio.Future[T] = asyncio.ensure_future(self.db._execute(run))  # type: ignore[no-untyped-call]
            await _to_the_end(hop)
            return hop.result()

    async def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.OperationalError):  # "no transaction is active"
            await self.db.execute("ROLLBACK")

    @classmethod
    async def open(cls, path: Path) -> Store:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        await db.execute("PRAGMA journal_mode=WAL")
        # NORMAL with WAL survives a process kill; only power loss can drop the last commits.
        await db.execute("PRAGMA synchronous=NORMAL")
        await db.execute("PRAGMA foreign_keys=ON")
        store = cls(db)
        await store._migrate()
        store.daemon_id = await store._daemon_id()
        return store

    async def close(self) -> None:
        await self.db.close()

    async def _migrate(self) -> None:
        async with self.db.execute("PRAGMA user_version") as cur:
            row = await cur.fetchone()
        version = int(row[0]) if row else 0
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the database has schema version {version}, newer than this runyard "
                f"understands ({SCHEMA_VERSION}); upgrade runyard"
            )
        for index in range(version, SCHEMA_VERSION):
            async with self._tx():
                for statement in _split_sql(MIGRATIONS[index]):
                    await self.db.execute(statement)
                await self.db.execute(f"PRAGMA user_version = {index + 1}")

    async def _daemon_id(self) -> str:
        async with self.db.execute("SELECT value FROM meta WHERE key = 'daemon_id'") as cur:
            row = await cur.fetchone()
        if row:
            return str(row[0])
        daemon_id = uuid.uuid4().hex[:12]
        async with self._tx():
            await self.db.execute("INSERT INTO meta (key, value) VALUES ('daemon_id', ?)", (daemon_id,))
        return daemon_id

    # -- executions ---------------------------------------------------------

    async def create_execution(self, new: ExecutionRow, status: str = "queued") -> tuple[ExecutionRow, Event]:
        """Record a new execution from ``new`` (its id, status and creation time are assigned here)."""
        now = utcnow()
        new.status, new.created_at = status, now
        names = [c for c in COLUMNS if c != "id"]
        insert = f"INSERT INTO executions ({', '.join(names)}) VALUES ({','.join('?' * len(names))})"
        values = column_values(new, names)

        def work(conn: sqlite3.Connection) -> tuple[int, int]:
            execution_id = int(conn.execute(insert, values).lastrowid or 0)
            seq = conn.execute("INSERT INTO events (execution_id, kind, status, reason, at) VALUES (?,?,?,?,?)",
                               (execution_id, "created", status, new.reason, now)).lastrowid
            return execution_id, int(seq or 0)

        execution_id, seq = await self._in_one_hop(work)
        event = Event(seq=seq, execution_id=execution_id, kind="created", status=status, reason=new.reason, at=now)
        # Every column was written from ``new``: it is the row, with its id.
        return dataclasses.replace(new, id=execution_id), event

    async def get(self, execution_id: int) -> ExecutionRow | None:
        async with self.db.execute(f"SELECT {SELECT} FROM executions WHERE id = ?", (execution_id,)) as cur:
            r = await cur.fetchone()
        return row_of(r) if r else None

    async def list_executions(self, *, statuses: Iterable[str] = (), limit: int = 100,
                   before_id: int | None = None, tags: Iterable[str] = ()) -> list[ExecutionRow]:
        where: list[str] = []
        args: list[Any] = []
        statuses = list(statuses)
        if statuses:
            where.append(f"status IN ({','.join('?' * len(statuses))})")
            args += statuses
        tags = list(tags)
        if tags:  # any of them
            marks = ",".join("?" * len(tags))
            where.append(f"EXISTS (SELECT 1 FROM json_each(executions.tags) WHERE value IN ({marks}))")
            args += tags
        if before_id is not None:
            where.append("id < ?")
            args.append(before_id)
        sql = f"SELECT {SELECT} FROM executions"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        async with self.db.execute(sql, args) as cur:
            return [row_of(r) for r in await cur.fetchall()]

    async def active(self) -> list[ExecutionRow]:
        async with self.db.execute(
            f"SELECT {SELECT} FROM executions WHERE status IN (?,?,?,?) ORDER BY priority DESC, id",
            ACTIVE_STATUSES,
        ) as cur:
            return [row_of(r) for r in await cur.fetchall()]

    async def transition(self, execution_id: int, status: str, *, reason: str | None = None,
                         new_attempt: bool = False, **fields: Any) -> tuple[ExecutionRow, Event] | None:
        """Move an execution to ``status`` and record the event, atomically.

        Returns None when the move is not allowed from the current status (a race
        with another actor that already moved it), so callers can be idempotent.
        """
        now = utcnow()

        def work(conn: sqlite3.Connection) -> tuple[ExecutionRow, Event] | None:
            r = conn.execute("SELECT status FROM executions WHERE id = ?", (execution_id,)).fetchone()
            if r is None or status not in ALLOWED.get(r[0], frozenset()):
                return None
            if status == "started":
                fields.setdefault("started_at", now)
            if status in TERMINAL:
                fields.setdefault("ended_at", now)
            sets = ["status = ?", "reason = ?"] + [f"{k} = ?" for k in fields]
            conn.execute(f"UPDATE executions SET {', '.join(sets)} WHERE id = ?",
                         (status, reason, *(encode_field(k, v) for k, v in fields.items()), execution_id))
            if new_attempt:  # back to the queue: the next attempt's latest values start empty
                conn.execute("DELETE FROM metadata_latest WHERE execution_id = ?", (execution_id,))
            seq = conn.execute("INSERT INTO events (execution_id, kind, status, reason, at) VALUES (?,?,?,?,?)",
                               (execution_id, "status", status, reason, now)).lastrowid
            row = row_of(conn.execute(f"SELECT {SELECT} FROM executions WHERE id = ?", (execution_id,)).fetchone())
            return row, Event(seq=int(seq or 0), execution_id=execution_id, kind="status", status=status,
                              reason=reason, at=now)

        return await self._in_one_hop(work)

    async def transition_many(self, moves: list[tuple[int, str, str | None]]
                              ) -> list[tuple[int, str, str | None, str, int]]:
        """``transition`` for many executions in one transaction: (id, status, reason) each, no
        other fields. Moves not allowed from an execution's current status are left out.

        Returns (id, status, reason, at, event seq) for each move made: the caller knows the rest
        of each row. A handful of statements whatever the count (stopping a 10,000-run sweep is
        one request).
        """
        now = utcnow()
        wanted = {execution_id: (status, reason) for execution_id, status, reason in moves}
        async with self._tx():
            current = await self._statuses(list(wanted))
            allowed = [(i, status, reason) for i, (status, reason) in wanted.items()
                       if status in ALLOWED.get(current.get(i, ""), frozenset())]
            await self.db.executemany(
                "UPDATE executions SET status = ?, reason = ?, ended_at = COALESCE(?, ended_at) WHERE id = ?",
                [(status, reason, now if status in TERMINAL else None, i) for i, status, reason in allowed])
            async with self.db.execute("SELECT COALESCE(MAX(seq), 0) FROM events") as cur:
                before = int((await cur.fetchone() or (0,))[0])
            await self.db.executemany(
                "INSERT INTO events (execution_id, kind, status, reason, at) VALUES (?, 'status', ?, ?, ?)",
                [(i, status, reason, now) for i, status, reason in allowed])
            async with self.db.execute("SELECT seq, execution_id FROM events WHERE seq > ? ORDER BY seq",
                                       (before,)) as cur:
                seqs = {int(execution_id): int(seq) for seq, execution_id in await cur.fetchall()}
        return [(i, status, reason, now, seqs[i]) for i, status, reason in allowed if i in seqs]

    async def _statuses(self, ids: list[int]) -> dict[int, str]:
        found: dict[int, str] = {}
        for at in range(0, len(ids), 500):  # SQLite caps bound parameters
            chunk = ids[at:at + 500]
            async with self.db.execute(f"SELECT id, status FROM executions WHERE id IN ({','.join('?' * len(chunk))})",
                                       chunk) as cur:
                found.update({int(i): str(status) for i, status in await cur.fetchall()})
        return found

    async def update(self, execution_id: int, **fields: Any) -> None:
        """Change fields that are not the status (container id, GPUs, a limit's reason ...)."""
        sets = ", ".join(f"{k} = ?" for k in fields)
        async with self._tx():
            await self.db.execute(f"UPDATE executions SET {sets} WHERE id = ?",
                                  (*(encode_field(k, v) for k, v in fields.items()), execution_id))

    async def rename(self, execution_id: int, title: str | None) -> Event:
        now = utcnow()
        async with self._tx():
            await self.db.execute("UPDATE executions SET title = ? WHERE id = ?", (title, execution_id))
            async with self.db.execute("SELECT status, reason FROM executions WHERE id = ?", (execution_id,)) as cur:
                r = await cur.fetchone()
            assert r is not None
            event = await self._append_event(execution_id, "renamed", r[0], r[1], now)
        return event

    async def delete(self, execution_id: int) -> Event:
        now = utcnow()
        async with self._tx():
            for table in ("metadata", "metadata_latest", "outputs"):
                await self.db.execute(f"DELETE FROM {table} WHERE execution_id = ?", (execution_id,))
            await self.db.execute("DELETE FROM executions WHERE id = ?", (execution_id,))
            event = await self._append_event(execution_id, "deleted", "deleted", None, now)
        return event

    async def place(self, placements: Sequence[tuple[int, str | None, Sequence[str]]]) -> set[int]:
        """Record (or with host None, undo) where queued executions will run, before they are created
        there; one transaction for a whole scheduling pass. Returns the ids recorded.

        Recorded first so that after a crash an execution waits for that host to say
        whether it has a container for it, instead of being run somewhere else too.
        """
        async with self._tx():
            # A few statements whatever the count: a pass that fills a pool places hundreds.
            current = await self._statuses([execution_id for execution_id, _, _ in placements])
            moves = [(host, json.dumps(list(gpu_ids)), execution_id) for execution_id, host, gpu_ids in placements
                     if current.get(execution_id) == "queued"]
            await self.db.executemany("UPDATE executions SET host = ?, gpu_ids = ? WHERE id = ?", moves)
        return {execution_id for _, _, execution_id in moves}

    async def host_admin(self) -> dict[str, str]:
        async with self.db.execute("SELECT name, admin FROM host_admin") as cur:
            return {r[0]: r[1] for r in await cur.fetchall()}

    async def set_host_admin(self, name: str, admin: str) -> None:
        async with self._tx():
            if admin == "enabled":
                await self.db.execute("DELETE FROM host_admin WHERE name = ?", (name,))
            else:
                await self.db.execute("INSERT OR REPLACE INTO host_admin VALUES (?, ?)", (name, admin))

    # -- events -------------------------------------------------------------

    async def _append_event(self, execution_id: int, kind: str, status: str, reason: str | None,
                            at: str) -> Event:
        cur = await self.db.execute(
            "INSERT INTO events (execution_id, kind, status, reason, at) VALUES (?,?,?,?,?)",
            (execution_id, kind, status, reason, at),
        )
        return Event(seq=int(cur.lastrowid or 0), execution_id=execution_id, kind=kind,
                     status=status, reason=reason, at=at)

    async def host_event(self, host: str, state: str, detail: str | None) -> Event:
        """A host's state change, in the same sequence as executions' so clients see one order."""
        now = utcnow()
        async with self._tx():
            cur = await self.db.execute(
                "INSERT INTO events (execution_id, kind, status, reason, at, host) VALUES (0, 'host', ?, ?, ?, ?)",
                (state, detail, now, host),
            )
        return Event(seq=int(cur.lastrowid or 0), execution_id=0, kind="host", status=state, reason=detail,
                     at=now, host=host)

    async def events_since(self, seq: int, limit: int = 10_000) -> list[Event]:
        async with self.db.execute(
            "SELECT seq, execution_id, kind, status, reason, at, host FROM events WHERE seq > ? ORDER BY seq LIMIT ?",
            (seq, limit),
        ) as cur:
            return [Event(seq=r[0], execution_id=r[1], kind=r[2], status=r[3], reason=r[4], at=r[5], host=r[6])
                    for r in await cur.fetchall()]

    async def event_bounds(self) -> tuple[int, int]:
        """(oldest kept seq, latest seq); (0, 0) when none was ever recorded."""
        async with self.db.execute("SELECT MIN(seq), MAX(seq) FROM events") as cur:
            r = await cur.fetchone()
        if r is None or r[1] is None:
            async with self.db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'events'") as cur:
                s = await cur.fetchone()
            latest = int(s[0]) if s else 0
            return latest + 1, latest
        return int(r[0]), int(r[1])

    async def prune_events(self, keep: int) -> None:
        async with self._tx():
            await self.db.execute(
                "DELETE FROM events WHERE seq <= (SELECT MAX(seq) FROM events) - ?", (keep,)
            )

    # -- metadata -----------------------------------------------------------

    async def add_metadata(self, execution_id: int, points: list[tuple[str, str, dict[str, Any]]],
                           new_offset: int, *, attempt: int = 0) -> None:
        """Record points (time, the JSON text as printed, parsed values) and the log offset read.

        The offset, in the same transaction, is what makes re-reading the log after
        a crash add no point twice. Points keep the program's own JSON text, so
        nothing (NaN, big integers) is changed by re-encoding. ``attempt`` is the
        attempt that printed them (its log_base); only the execution's current
        attempt changes the latest values, so a late flush of an abandoned attempt
        is kept in the history but never shown as the latest.
        """
        latest: dict[str, Any] = {}
        for _at, _raw, values in points:
            latest.update(values)
        latest_rows = [(execution_id, k, json.dumps(v, allow_nan=True)) for k, v in latest.items()]
        if points:
            latest_rows.append((execution_id, "_time", json.dumps(points[-1][0])))
        async with self._tx():
            async with self.db.execute(
                "SELECT metadata_count, log_base FROM executions WHERE id = ?", (execution_id,)
            ) as cur:
                r = await cur.fetchone()
            count = int(r[0]) if r else 0
            current = int(r[1]) if r else attempt
            rows = [(execution_id, count + i, at, raw, attempt) for i, (at, raw, _values) in enumerate(points)]
            await self.db.executemany(
                "INSERT INTO metadata (execution_id, n, at, data, attempt) VALUES (?,?,?,?,?)", rows)
            if attempt == current:
                await self.db.executemany("INSERT OR REPLACE INTO metadata_latest VALUES (?,?,?)", latest_rows)
            await self.db.execute(
                "UPDATE executions SET metadata_offset = ?, metadata_count = ? WHERE id = ?",
                (new_offset, count + len(points), execution_id),
            )

    async def start_attempt(self, execution_id: int, attempt: int) -> None:
        """A new attempt begins (``attempt``: its log_base): the latest values start empty again.

        Its points are told apart by their attempt; the earlier attempts' stay in the history.
        """
        async with self._tx():
            await self.db.execute("DELETE FROM metadata_latest WHERE execution_id = ?", (execution_id,))

    async def metadata_count(self, execution_id: int, attempt: int | None = None) -> int:
        """How many points one attempt (None: all attempts) recorded."""
        sql, args = "SELECT COUNT(*) FROM metadata WHERE execution_id = ?", [execution_id]
        if attempt is not None:
            sql += " AND attempt = ?"
            args.append(attempt)
        async with self.db.execute(sql, args) as cur:
            r = await cur.fetchone()
        return int(r[0]) if r else 0

    async def metadata(self, execution_id: int, *, attempt: int | None = None, offset: int = 0,
                       limit: int = -1, every: int = 1) -> list[StoredPoint]:
        """Points numbered ``offset`` and on, in order, of one attempt (None: all), at most ``limit``
        (-1: no limit). With ``every`` k > 1, only every k-th point of the attempt and its last one:
        which points those are does not depend on ``offset``, so pages of them fit together."""
        where, args = "execution_id = ?", [execution_id]
        if attempt is not None:
            where += " AND attempt = ?"
            args.append(attempt)
        if every <= 1:
            sql = (f"SELECT n, at, data, attempt FROM metadata WHERE {where} AND n >= ? "
                   "ORDER BY n LIMIT ?")
            args += [offset, limit]
        else:
            sql = ("SELECT n, at, data, attempt FROM ("
                   "SELECT n, at, data, attempt, ROW_NUMBER() OVER (ORDER BY n) - 1 AS i, COUNT(*) OVER () AS total "
                   f"FROM metadata WHERE {where}) WHERE n >= ? AND (i % ? = 0 OR i = total - 1) ORDER BY n LIMIT ?")
            args += [offset, every, limit]
        async with self.db.execute(sql, args) as cur:
            rows = await cur.fetchall()
        points = []
        for n, at, raw, point_attempt in rows:
            values = json.loads(raw)
            values.setdefault("_time", at)
            points.append(StoredPoint(n=n, at=at, values=values, attempt=point_attempt, size=len(raw)))
        return points

    async def latest_metadata_many(self, execution_ids: list[int]) -> dict[int, dict[str, Any]]:
        """Latest metadata of a page of executions in one query, for lists that show metadata columns."""
        found: dict[int, dict[str, Any]] = {i: {} for i in execution_ids}
        if not execution_ids:
            return found
        marks = ",".join("?" * len(execution_ids))
        async with self.db.execute(
            f"SELECT execution_id, key, value FROM metadata_latest WHERE execution_id IN ({marks})", execution_ids
        ) as cur:
            for execution_id, key, value in await cur.fetchall():
                found[execution_id][key] = json.loads(value)
        return found

    async def latest_metadata(self, execution_id: int) -> dict[str, Any]:
        async with self.db.execute(
            "SELECT key, value FROM metadata_latest WHERE execution_id = ? ORDER BY key", (execution_id,)
        ) as cur:
            return {r[0]: json.loads(r[1]) for r in await cur.fetchall()}

    # -- outputs ------------------------------------------------------------

    async def set_outputs(self, execution_id: int, files: list[tuple[str, int, str]],
                          properties: dict[str, dict[str, Any]] | None = None) -> None:
        properties = properties or {}
        rows = [(execution_id, path, size, sha, json.dumps(properties.get(path, {}))) for path, size, sha in files]
        async with self._tx():
            await self.db.execute("DELETE FROM outputs WHERE execution_id = ?", (execution_id,))
            await self.db.executemany(
                "INSERT INTO outputs (execution_id, path, size, sha256, properties) VALUES (?,?,?,?,?)", rows
            )

    async def add_outputs(self, execution_id: int, files: list[tuple[str, int, str]]) -> None:
        """Record outputs stored while the execution runs (live outputs), next to any already there."""
        rows = [(execution_id, path, size, sha) for path, size, sha in files]
        async with self._tx():
            await self.db.executemany(
                "INSERT OR REPLACE INTO outputs (execution_id, path, size, sha256) VALUES (?,?,?,?)", rows
            )

    async def outputs(self, execution_id: int) -> list[tuple[str, int, str, dict[str, Any]]]:
        async with self.db.execute(
            "SELECT path, size, sha256, properties FROM outputs WHERE execution_id = ? ORDER BY path",
            (execution_id,),
        ) as cur:
            return [(r[0], r[1], r[2], json.loads(r[3])) for r in await cur.fetchall()]


async def _to_the_end(work: Awaitable[Any]) -> None:
    """Await ``work`` until it is done even if this task is cancelled meanwhile, then pass the
    cancel on: a COMMIT or ROLLBACK abandoned halfway would leave the connection in a transaction."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while not task.done():
        try:
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if task.cancelled():
                raise
            cancelled = True
    task.result()
    if cancelled:
        raise asyncio.CancelledError


def _split_sql(script: str) -> list[str]:
    return [s.strip() for s in script.split(";") if s.strip()]
