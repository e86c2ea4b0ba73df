"""SQLite backend (the default): one file, WAL mode, one writer connection.

Reads go through a second connection so they never wait behind a write.  Every write is
a single UPSERT/DELETE statement or an explicit ``BEGIN IMMEDIATE`` transaction: a
deferred read-then-write transaction fails at once with "database is locked" in WAL mode
when another process writes, whereas ``BEGIN IMMEDIATE`` waits for the busy timeout.
Several processes may share the file (the busy timeout serialises their writes).

aiosqlite runs each connection in a non-daemon thread: :meth:`SQLiteBackend.close` must
run at shutdown or the interpreter cannot exit.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import sqlite3
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar
from urllib.parse import quote

import aiosqlite

from .base import Backend, CounterRow, DatabaseInfo, Entry
from .errors import StoreError, StoreUnavailableError

__all__ = ["SCHEMA", "SQLiteBackend"]

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS ttldb_databases (
    name TEXT PRIMARY KEY,
    ttl REAL,
    purge_interval REAL,
    legacy_imported INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS ttldb_entries (
    db TEXT NOT NULL,
    key TEXT NOT NULL,
    ts REAL NOT NULL,
    data TEXT,
    PRIMARY KEY (db, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ttldb_entries_ts ON ttldb_entries (db, ts);
CREATE TABLE IF NOT EXISTS ttldb_counters (
    db TEXT NOT NULL,
    key TEXT NOT NULL,
    bucket INTEGER NOT NULL,
    start REAL NOT NULL,
    count INTEGER NOT NULL,
    PRIMARY KEY (db, key, bucket)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS ttldb_counters_start ON ttldb_counters (db, start);
"""


def _owner_ids(owner: str | None, directory: str) -> tuple[int, int]:
    """uid/gid for new files: the named user, else the directory's owner."""
    if owner is not None:
        try:
            entry = pwd.getpwuid(int(owner)) if owner.isdigit() else pwd.getpwnam(owner)
        except (KeyError, ValueError):
            raise StoreError(f"[ttldb] owner {owner!r}: no such user") from None
        return entry.pw_uid, entry.pw_gid
    st = os.stat(directory)
    return st.st_uid, st.st_gid


class SQLiteBackend(Backend):
    """The embedded backend; see the module docstring."""

    def __init__(
        self,
        path: str,
        *,
        read_only: bool = False,
        busy_timeout: float = 5.0,
        owner: str | None = None,
    ) -> None:
        self.path = os.path.abspath(path)
        self.read_only = read_only
        self.busy_timeout = busy_timeout
        self.owner = owner
        self.description = f"SQLite {self.path}" + (" (read-only)" if read_only else "")
        self._writer: aiosqlite.Connection | None = None
        self._reader: aiosqlite.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._closed = False

    # -- lifecycle -----------------------------------------------------------------------

    def _prepare_files(self) -> None:
        """Create the directory and file with permissions for the mail user (blocking)."""
        directory = os.path.dirname(self.path)
        created_dir = False
        if not os.path.isdir(directory):
            os.makedirs(directory, mode=0o750, exist_ok=True)
            created_dir = True
        if os.path.exists(self.path):
            return
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        except FileExistsError:
            return  # another process created it just now (and sets its owner)
        os.close(fd)
        if os.geteuid() == 0:
            uid, gid = _owner_ids(self.owner, directory)
            os.chown(self.path, uid, gid)
            if created_dir and self.owner is not None:
                os.chown(directory, uid, gid)

    async def _connect(self, read_only: bool) -> aiosqlite.Connection:
        if read_only:
            target = f"file:{quote(self.path)}?mode=ro"
            conn = await aiosqlite.connect(
                target, uri=True, timeout=self.busy_timeout, isolation_level=None
            )
        else:
            conn = await aiosqlite.connect(
                self.path, timeout=self.busy_timeout, isolation_level=None
            )
        try:
            await conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
        except BaseException:
            await conn.close()
            raise
        return conn

    async def open(self) -> None:
        """Open the writer and reader connections, switch to WAL, create the tables.

        Another process opening the same new file at the same moment can make SQLite
        answer "database is locked" without waiting (switching to WAL, WAL recovery);
        that is retried until ``busy_timeout`` has passed.
        """
        loop = asyncio.get_running_loop()
        give_up = loop.time() + max(self.busy_timeout, 1.0)
        pause = 0.01
        while True:
            try:
                await self._open_once()
                return
            except StoreUnavailableError as exc:
                if not _is_busy(exc.__cause__) or loop.time() >= give_up:
                    raise
            self._closed = False
            await asyncio.sleep(pause)
            pause = min(pause * 2, 0.2)

    async def _open_once(self) -> None:
        try:
            if self.read_only:
                if not await asyncio.to_thread(os.path.exists, self.path):
                    raise StoreUnavailableError(f"{self.description}: file does not exist")
                self._reader = await self._connect(read_only=True)
                await self._reader.execute("SELECT count(*) FROM ttldb_entries")
                return
            await asyncio.to_thread(self._prepare_files)
            self._writer = await self._connect(read_only=False)
            async with self._writer.execute("PRAGMA journal_mode = WAL") as cur:
                row = await cur.fetchone()
            if row is None or str(row[0]).lower() != "wal":
                raise StoreError(f"{self.description}: cannot switch to WAL mode ({row!r})")
            await self._writer.execute("PRAGMA synchronous = NORMAL")
            async with self._write_lock:
                await self._writer.execute("BEGIN IMMEDIATE")
                try:
                    for statement in SCHEMA.split(";"):
                        if statement.strip():
                            await self._writer.execute(statement)
                    await self._writer.execute("COMMIT")
                except BaseException:
                    await self._writer.execute("ROLLBACK")
                    raise
            self._reader = await self._connect(read_only=True)
        except StoreError:
            await self.close()
            raise
        except (sqlite3.Error, OSError, ValueError) as exc:
            await self.close()
            raise StoreUnavailableError(f"{self.description}: cannot open: {exc}") from exc

    async def close(self, timeout: float = 5.0) -> None:
        """Close both connections (stops aiosqlite's threads); bounded by ``timeout``."""
        self._closed = True
        for attr in ("_reader", "_writer"):
            conn: aiosqlite.Connection | None = getattr(self, attr)
            setattr(self, attr, None)
            if conn is None:
                continue
            try:
                await asyncio.wait_for(conn.close(), timeout)
            except (TimeoutError, sqlite3.Error, ValueError):
                with contextlib.suppress(Exception):
                    conn.stop()

    # -- helpers -------------------------------------------------------------------------

    def _writer_conn(self) -> aiosqlite.Connection:
        if self.read_only:
            raise StoreError(f"{self.description}: store is read-only")
        if self._writer is None:
            raise StoreUnavailableError(f"{self.description}: store is closed")
        return self._writer

    def _reader_conn(self) -> aiosqlite.Connection:
        if self._reader is None:
            raise StoreUnavailableError(f"{self.description}: store is closed")
        return self._reader

    async def _guard(self, op: str, coro: Awaitable[T]) -> T:
        try:
            return await coro
        except StoreError:
            raise
        except (sqlite3.Error, OSError, ValueError) as exc:
            raise StoreError(f"{self.description}: {op} failed: {exc}") from exc

    async def _fetchone(self, sql: str, params: Sequence[Any]) -> sqlite3.Row | None:
        conn = self._reader_conn()
        async with conn.execute(sql, params) as cur:
            return await cur.fetchone()

    async def _fetchall(self, sql: str, params: Sequence[Any]) -> list[Any]:
        conn = self._reader_conn()
        async with conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def _write(self, sql: str, params: Sequence[Any]) -> list[Any]:
        """One statement on the writer connection (autocommit), returning its rows."""
        conn = self._writer_conn()
        async with self._write_lock, conn.execute(sql, params) as cur:
            return list(await cur.fetchall())

    async def _transaction(self, body: Callable[[aiosqlite.Connection], Awaitable[T]]) -> T:
        """Run ``body`` inside ``BEGIN IMMEDIATE`` on the writer connection."""
        conn = self._writer_conn()
        async with self._write_lock:
            await conn.execute("BEGIN IMMEDIATE")
            try:
                result = await body(conn)
                await conn.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    await asyncio.shield(conn.execute("ROLLBACK"))
                raise
            return result

    async def _transaction_in_thread(
        self,
        body: Callable[[sqlite3.Connection], T],
        fallback: Callable[[aiosqlite.Connection], Awaitable[T]],
    ) -> T:
        """Run ``body`` inside ``BEGIN IMMEDIATE`` in one hop to aiosqlite's thread.

        The hot operations (greylist's refresh and first sight) would otherwise cost five
        thread hops each (BEGIN, SELECT, fetch, write, COMMIT).  A cancelled caller cannot
        leave the transaction half done either: the thread finishes it.  Uses aiosqlite's
        ``_execute`` when this aiosqlite has it, else the async ``fallback`` body.
        """
        conn = self._writer_conn()
        run = getattr(conn, "_execute", None)
        raw = getattr(conn, "_conn", None)
        if run is None or not isinstance(raw, sqlite3.Connection):
            return await self._transaction(fallback)

        def transaction() -> T:
            raw.execute("BEGIN IMMEDIATE")
            try:
                result = body(raw)
                raw.execute("COMMIT")
            except BaseException:
                with contextlib.suppress(Exception):
                    raw.execute("ROLLBACK")
                raise
            return result

        async with self._write_lock:
            return await asyncio.shield(run(transaction))  # type: ignore[no-any-return]

    # -- database registry ---------------------------------------------------------------

    async def register(self, db: str, ttl: float, purge_interval: float) -> bool:
        """Record ttl/purge interval (read-only stores only look the flag up)."""
        if not self.read_only:
            await self._guard(
                "register",
                self._write(
                    "INSERT INTO ttldb_databases (name, ttl, purge_interval) VALUES (?, ?, ?) "
                    "ON CONFLICT (name) DO UPDATE SET ttl = excluded.ttl, "
                    "purge_interval = excluded.purge_interval",
                    (db, ttl, purge_interval),
                ),
            )
        row = await self._guard(
            "register",
            self._fetchone("SELECT legacy_imported FROM ttldb_databases WHERE name = ?", (db,)),
        )
        return bool(row and row[0])

    async def mark_legacy_imported(self, db: str) -> None:
        """Set the database's ``legacy_imported`` flag."""
        await self._guard(
            "mark imported",
            self._write(
                "INSERT INTO ttldb_databases (name, legacy_imported) VALUES (?, 1) "
                "ON CONFLICT (name) DO UPDATE SET legacy_imported = 1",
                (db,),
            ),
        )

    async def databases(self) -> list[DatabaseInfo]:
        """Registered databases and databases with data, with row counts."""
        sql = """
            WITH names AS (
                SELECT name FROM ttldb_databases
                UNION SELECT DISTINCT db FROM ttldb_entries
                UNION SELECT DISTINCT db FROM ttldb_counters)
            SELECT n.name, d.ttl, d.purge_interval, COALESCE(d.legacy_imported, 0),
                   (SELECT count(*) FROM ttldb_entries e WHERE e.db = n.name),
                   (SELECT count(*) FROM ttldb_counters c WHERE c.db = n.name)
            FROM names n LEFT JOIN ttldb_databases d ON d.name = n.name ORDER BY n.name"""
        rows = await self._guard("list databases", self._fetchall(sql, ()))
        return [
            DatabaseInfo(
                name=r[0],
                ttl=r[1],
                purge_interval=r[2],
                legacy_imported=bool(r[3]),
                entries=r[4],
                counters=r[5],
            )
            for r in rows
        ]

    # -- entries ---------------------------------------------------------------------------

    async def get(self, db: str, key: str, cutoff: float) -> Entry | None:
        """Live entry lookup on the reader connection."""
        row = await self._guard(
            "get",
            self._fetchone(
                "SELECT ts, data FROM ttldb_entries WHERE db = ? AND key = ? AND ts >= ?",
                (db, key, cutoff),
            ),
        )
        return None if row is None else Entry(key, row[0], row[1])

    async def set(self, db: str, key: str, ts: float, data: str | None) -> None:
        """Single-statement upsert."""
        await self._guard(
            "set",
            self._write(
                "INSERT INTO ttldb_entries (db, key, ts, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (db, key) DO UPDATE SET ts = excluded.ts, data = excluded.data",
                (db, key, ts, data),
            ),
        )

    async def set_if_absent(
        self, db: str, key: str, ts: float, data: str | None, cutoff: float
    ) -> tuple[Entry, bool]:
        """Check and insert inside one ``BEGIN IMMEDIATE`` transaction."""
        select = "SELECT ts, data FROM ttldb_entries WHERE db = ? AND key = ?"
        upsert = (
            "INSERT INTO ttldb_entries (db, key, ts, data) VALUES (?, ?, ?, ?) "
            "ON CONFLICT (db, key) DO UPDATE SET ts = excluded.ts, data = excluded.data"
        )

        def body(raw: sqlite3.Connection) -> tuple[Entry, bool]:
            row = raw.execute(select, (db, key)).fetchone()
            if row is not None and row[0] >= cutoff:
                return Entry(key, row[0], row[1]), False
            raw.execute(upsert, (db, key, ts, data))
            return Entry(key, ts, data), True

        async def fallback(conn: aiosqlite.Connection) -> tuple[Entry, bool]:
            async with conn.execute(select, (db, key)) as cur:
                row = await cur.fetchone()
            if row is not None and row[0] >= cutoff:
                return Entry(key, row[0], row[1]), False
            await conn.execute(upsert, (db, key, ts, data))
            return Entry(key, ts, data), True

        return await self._guard("set_if_absent", self._transaction_in_thread(body, fallback))

    async def touch(self, db: str, key: str, ts: float, cutoff: float) -> Entry | None:
        """Read the old entry and update its timestamp in one transaction."""
        select = "SELECT ts, data FROM ttldb_entries WHERE db = ? AND key = ? AND ts >= ?"
        update = "UPDATE ttldb_entries SET ts = ? WHERE db = ? AND key = ?"

        def body(raw: sqlite3.Connection) -> Entry | None:
            row = raw.execute(select, (db, key, cutoff)).fetchone()
            if row is None:
                return None
            raw.execute(update, (ts, db, key))
            return Entry(key, row[0], row[1])

        async def fallback(conn: aiosqlite.Connection) -> Entry | None:
            async with conn.execute(select, (db, key, cutoff)) as cur:
                row = await cur.fetchone()
            if row is None:
                return None
            await conn.execute(update, (ts, db, key))
            return Entry(key, row[0], row[1])

        return await self._guard("get_and_touch", self._transaction_in_thread(body, fallback))

    async def delete(self, db: str, key: str) -> Entry | None:
        """``DELETE ... RETURNING`` in one statement."""
        rows = await self._guard(
            "delete",
            self._write(
                "DELETE FROM ttldb_entries WHERE db = ? AND key = ? RETURNING ts, data",
                (db, key),
            ),
        )
        return Entry(key, rows[0][0], rows[0][1]) if rows else None

    # -- counters --------------------------------------------------------------------------

    async def increment(
        self, db: str, key: str, bucket: int, start: float, first_bucket: int, amount: int
    ) -> int:
        """Upsert the bucket and sum the window inside one transaction."""

        async def body(conn: aiosqlite.Connection) -> int:
            await conn.execute(
                "INSERT INTO ttldb_counters (db, key, bucket, start, count) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (db, key, bucket) "
                "DO UPDATE SET count = count + excluded.count",
                (db, key, bucket, start, amount),
            )
            async with conn.execute(
                "SELECT COALESCE(sum(count), 0) FROM ttldb_counters "
                "WHERE db = ? AND key = ? AND bucket BETWEEN ? AND ?",
                (db, key, first_bucket, bucket),
            ) as cur:
                row = await cur.fetchone()
            return int(row[0]) if row else 0

        return await self._guard("increment", self._transaction(body))

    async def count(self, db: str, key: str, first_bucket: int, last_bucket: int) -> int:
        """Read-only window sum."""
        row = await self._guard(
            "count",
            self._fetchone(
                "SELECT COALESCE(sum(count), 0) FROM ttldb_counters "
                "WHERE db = ? AND key = ? AND bucket BETWEEN ? AND ?",
                (db, key, first_bucket, last_bucket),
            ),
        )
        return int(row[0]) if row else 0

    # -- maintenance -----------------------------------------------------------------------

    async def purge(self, db: str, cutoff: float) -> int:
        """Two indexed range deletes in one transaction."""

        async def body(conn: aiosqlite.Connection) -> int:
            total = 0
            for sql in (
                "DELETE FROM ttldb_entries WHERE db = ? AND ts < ?",
                "DELETE FROM ttldb_counters WHERE db = ? AND start < ?",
            ):
                async with conn.execute(sql, (db, cutoff)) as cur:
                    total += max(cur.rowcount, 0)
            return total

        return await self._guard("purge", self._transaction(body))

    async def entries(self, db: str, batch: int = 1000) -> AsyncIterator[list[Entry]]:
        """Keyset-paginated scan of a database's entries."""
        last = ""
        while True:
            rows = await self._guard(
                "list keys",
                self._fetchall(
                    "SELECT key, ts, data FROM ttldb_entries WHERE db = ? AND key > ? "
                    "ORDER BY key LIMIT ?",
                    (db, last, batch),
                ),
            )
            if not rows:
                return
            yield [Entry(r[0], r[1], r[2]) for r in rows]
            last = rows[-1][0]

    async def counters(self, db: str, batch: int = 1000) -> AsyncIterator[list[CounterRow]]:
        """Keyset-paginated scan of a database's counter buckets."""
        last_key, last_bucket = "", -(2**62)
        while True:
            rows = await self._guard(
                "list counters",
                self._fetchall(
                    "SELECT key, bucket, start, count FROM ttldb_counters WHERE db = ? "
                    "AND (key > ? OR (key = ? AND bucket > ?)) ORDER BY key, bucket LIMIT ?",
                    (db, last_key, last_key, last_bucket, batch),
                ),
            )
            if not rows:
                return
            yield [CounterRow(r[0], r[1], r[2], r[3]) for r in rows]
            last_key, last_bucket = rows[-1][0], rows[-1][1]

    async def import_entries(self, db: str, rows: Sequence[Entry]) -> None:
        """Batch upsert keeping the newer timestamp."""

        async def body(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "INSERT INTO ttldb_entries (db, key, ts, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (db, key) DO UPDATE SET ts = max(ts, excluded.ts), "
                "data = CASE WHEN excluded.ts > ts THEN excluded.data ELSE data END",
                [(db, r.key, r.ts, r.data) for r in rows],
            )

        await self._guard("import", self._transaction(body))

    async def import_counters(self, db: str, rows: Sequence[CounterRow]) -> None:
        """Batch upsert keeping the larger count."""

        async def body(conn: aiosqlite.Connection) -> None:
            await conn.executemany(
                "INSERT INTO ttldb_counters (db, key, bucket, start, count) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (db, key, bucket) "
                "DO UPDATE SET count = max(count, excluded.count)",
                [(db, r.key, r.bucket, r.start, r.count) for r in rows],
            )

        await self._guard("import", self._transaction(body))


def _is_busy(exc: BaseException | None) -> bool:
    """True for SQLite's "database is locked"/"busy" errors (worth another try)."""
    if not isinstance(exc, sqlite3.OperationalError):
        return False
    text = str(exc).lower()
    return "locked" in text or "busy" in text
