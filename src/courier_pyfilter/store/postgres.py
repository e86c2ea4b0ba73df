"""PostgreSQL backend (a cluster of Courier servers shares one database) via asyncpg.

A small pool (``pool_min`` 1 by default) is created at open; the schema is created on first
use under an advisory lock, so several servers may start at once.  Each operation acquires
a connection for one statement (or one short transaction) and gives it back.  When the
server goes away the pool reconnects lazily: operations during the outage fail at once with
:class:`~courier_pyfilter.store.errors.StoreUnavailableError` (refused connections are not
retried in a loop), idempotent operations are retried once on a connection that died, and
everything works again as soon as the server is back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import asyncpg

from .base import Backend, CounterRow, DatabaseInfo, Entry
from .config import StoreConfig
from .errors import StoreError, StoreUnavailableError

__all__ = ["LEGACY_COLUMNS", "PostgresBackend"]

T = TypeVar("T")

LEGACY_COLUMNS = {"id": "character", "value": "bigint"}
"""Column name -> data type of the original's TtlDb tables (``id CHAR(64)``, ``value BIGINT``)."""

_CONNECTION_ERRORS: tuple[type[BaseException], ...] = (
    OSError,
    TimeoutError,
    asyncpg.PostgresConnectionError,
    asyncpg.ConnectionDoesNotExistError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    asyncpg.CrashShutdownError,
    asyncpg.InterfaceError,
)
_BROKEN_CONNECTION: tuple[type[BaseException], ...] = (
    *_CONNECTION_ERRORS,
    asyncpg.InternalClientError,
)
_ADVISORY_KEY = 0x7C0_0E5_7D8  # arbitrary constant: "courier-pyfilter store schema"


def _status_count(status: str) -> int:
    """Row count from a command status such as ``DELETE 12``."""
    try:
        return int(status.rsplit(" ", 1)[1])
    except (IndexError, ValueError):
        return 0


class PostgresBackend(Backend):
    """The shared backend; see the module docstring."""

    def __init__(self, config: StoreConfig) -> None:
        self.config = config
        self.description = config.describe()
        self._pool: asyncpg.Pool | None = None
        prefix = f'"{config.schema}".' if config.schema else ""
        self.t_databases = f"{prefix}ttldb_databases"
        self.t_entries = f"{prefix}ttldb_entries"
        self.t_counters = f"{prefix}ttldb_counters"

    # -- lifecycle -----------------------------------------------------------------------

    def _schema_sql(self) -> str:
        schema = self.config.schema
        create_schema = f'CREATE SCHEMA IF NOT EXISTS "{schema}";' if schema else ""
        return f"""
            {create_schema}
            CREATE TABLE IF NOT EXISTS {self.t_databases} (
                name TEXT PRIMARY KEY,
                ttl DOUBLE PRECISION,
                purge_interval DOUBLE PRECISION,
                legacy_imported BOOLEAN NOT NULL DEFAULT FALSE);
            CREATE TABLE IF NOT EXISTS {self.t_entries} (
                db TEXT NOT NULL,
                key TEXT NOT NULL,
                ts DOUBLE PRECISION NOT NULL,
                data TEXT,
                PRIMARY KEY (db, key));
            CREATE INDEX IF NOT EXISTS ttldb_entries_ts ON {self.t_entries} (db, ts);
            CREATE TABLE IF NOT EXISTS {self.t_counters} (
                db TEXT NOT NULL,
                key TEXT NOT NULL,
                bucket BIGINT NOT NULL,
                start DOUBLE PRECISION NOT NULL,
                count BIGINT NOT NULL,
                PRIMARY KEY (db, key, bucket));
            CREATE INDEX IF NOT EXISTS ttldb_counters_start ON {self.t_counters} (db, start);
        """

    async def open(self) -> None:
        """Create the pool and the schema; StoreUnavailableError if the server is unreachable."""
        c = self.config
        try:
            self._pool = await asyncpg.create_pool(
                dsn=c.dsn,
                host=c.host,
                port=c.port,
                user=c.user,
                password=c.password,
                database=c.database,
                min_size=c.pool_min,
                max_size=c.pool_max,
                timeout=c.connect_timeout,
                command_timeout=c.command_timeout,
                server_settings={"application_name": "courier-pyfilter"},
            )
        except _CONNECTION_ERRORS as exc:
            raise StoreUnavailableError(f"{self.description}: cannot connect: {exc}") from exc
        except (asyncpg.PostgresError, ValueError) as exc:
            raise StoreUnavailableError(f"{self.description}: cannot open: {exc}") from exc
        try:

            async def create(con: asyncpg.Connection) -> None:
                async with con.transaction():
                    await con.execute("SELECT pg_advisory_xact_lock($1)", _ADVISORY_KEY)
                    await con.execute(self._schema_sql())

            await self._run("create schema", create, retry=True)
        except BaseException:
            await self.close()
            raise

    async def close(self, timeout: float = 5.0) -> None:
        """Close the pool; connections still busy after ``timeout`` are terminated."""
        pool, self._pool = self._pool, None
        if pool is None:
            return
        try:
            await asyncio.wait_for(pool.close(), timeout)
        except (TimeoutError, *_CONNECTION_ERRORS, asyncpg.PostgresError):
            pool.terminate()

    # -- helpers -------------------------------------------------------------------------

    async def _run(
        self, op: str, fn: Callable[[asyncpg.Connection], Awaitable[T]], *, retry: bool
    ) -> T:
        """Acquire a connection, run ``fn``; map every failure to StoreError."""
        pool = self._pool
        if pool is None:
            raise StoreUnavailableError(f"{self.description}: store is closed")
        attempts = 2 if retry else 1
        for attempt in range(attempts):
            try:
                async with pool.acquire(timeout=self.config.connect_timeout) as con:
                    try:
                        return await fn(con)
                    except _BROKEN_CONNECTION:
                        # never give a connection in an unknown state back to the pool
                        con.terminate()
                        raise
            except _BROKEN_CONNECTION as exc:
                refused = isinstance(exc, OSError | TimeoutError)
                if attempt + 1 < attempts and not refused:
                    continue
                raise StoreUnavailableError(
                    f"{self.description}: {op} failed: {type(exc).__name__}: {exc}"
                ) from exc
            except StoreError:
                raise
            except Exception as exc:  # asyncpg's other errors: still the store's failure
                raise StoreError(f"{self.description}: {op} failed: {exc}") from exc
        raise AssertionError("unreachable")  # pragma: no cover

    async def _fetchrow(self, op: str, sql: str, *args: Any, retry: bool = True) -> Any:
        async def fn(con: asyncpg.Connection) -> Any:
            return await con.fetchrow(sql, *args)

        return await self._run(op, fn, retry=retry)

    async def _fetch(self, op: str, sql: str, *args: Any, retry: bool = True) -> list[Any]:
        async def fn(con: asyncpg.Connection) -> list[Any]:
            return list(await con.fetch(sql, *args))

        return await self._run(op, fn, retry=retry)

    async def _execute(self, op: str, sql: str, *args: Any, retry: bool = True) -> str:
        async def fn(con: asyncpg.Connection) -> str:
            return str(await con.execute(sql, *args))

        return await self._run(op, fn, retry=retry)

    # -- database registry ---------------------------------------------------------------

    async def register(self, db: str, ttl: float, purge_interval: float) -> bool:
        """Upsert the database row and return its ``legacy_imported`` flag."""
        row = await self._fetchrow(
            "register",
            f"INSERT INTO {self.t_databases} AS d (name, ttl, purge_interval) "
            "VALUES ($1, $2, $3) ON CONFLICT (name) DO UPDATE "
            "SET ttl = EXCLUDED.ttl, purge_interval = EXCLUDED.purge_interval "
            "RETURNING legacy_imported",
            db,
            ttl,
            purge_interval,
        )
        return bool(row["legacy_imported"])

    async def mark_legacy_imported(self, db: str) -> None:
        """Set the database's ``legacy_imported`` flag."""
        await self._execute(
            "mark imported",
            f"INSERT INTO {self.t_databases} (name, legacy_imported) VALUES ($1, TRUE) "
            "ON CONFLICT (name) DO UPDATE SET legacy_imported = TRUE",
            db,
        )

    async def databases(self) -> list[DatabaseInfo]:
        """Registered databases and databases with data, with row counts."""
        rows = await self._fetch(
            "list databases",
            f"""WITH names AS (
                    SELECT name FROM {self.t_databases}
                    UNION SELECT DISTINCT db FROM {self.t_entries}
                    UNION SELECT DISTINCT db FROM {self.t_counters})
                SELECT n.name, d.ttl, d.purge_interval,
                       COALESCE(d.legacy_imported, FALSE) AS legacy_imported,
                       (SELECT count(*) FROM {self.t_entries} e WHERE e.db = n.name) AS entries,
                       (SELECT count(*) FROM {self.t_counters} c WHERE c.db = n.name) AS counters
                FROM names n LEFT JOIN {self.t_databases} d ON d.name = n.name
                ORDER BY n.name""",
        )
        return [
            DatabaseInfo(
                name=r["name"],
                ttl=r["ttl"],
                purge_interval=r["purge_interval"],
                legacy_imported=r["legacy_imported"],
                entries=r["entries"],
                counters=r["counters"],
            )
            for r in rows
        ]

    # -- entries ---------------------------------------------------------------------------

    async def get(self, db: str, key: str, cutoff: float) -> Entry | None:
        """Live entry lookup."""
        row = await self._fetchrow(
            "get",
            f"SELECT ts, data FROM {self.t_entries} WHERE db = $1 AND key = $2 AND ts >= $3",
            db,
            key,
            cutoff,
        )
        return None if row is None else Entry(key, row["ts"], row["data"])

    async def set(self, db: str, key: str, ts: float, data: str | None) -> None:
        """Single-statement upsert."""
        await self._execute(
            "set",
            f"INSERT INTO {self.t_entries} (db, key, ts, data) VALUES ($1, $2, $3, $4) "
            "ON CONFLICT (db, key) DO UPDATE SET ts = EXCLUDED.ts, data = EXCLUDED.data",
            db,
            key,
            ts,
            data,
        )

    async def set_if_absent(
        self, db: str, key: str, ts: float, data: str | None, cutoff: float
    ) -> tuple[Entry, bool]:
        """Drop an expired row, then one upsert whose ``xmax = 0`` tells who inserted."""

        async def fn(con: asyncpg.Connection) -> tuple[Entry, bool]:
            await con.execute(
                f"DELETE FROM {self.t_entries} WHERE db = $1 AND key = $2 AND ts < $3",
                db,
                key,
                cutoff,
            )
            row = await con.fetchrow(
                f"INSERT INTO {self.t_entries} AS e (db, key, ts, data) "
                "VALUES ($1, $2, $3, $4) ON CONFLICT (db, key) DO UPDATE SET ts = e.ts "
                "RETURNING ts, data, (xmax = 0) AS inserted",
                db,
                key,
                ts,
                data,
            )
            return Entry(key, row["ts"], row["data"]), bool(row["inserted"])

        return await self._run("set_if_absent", fn, retry=False)

    async def touch(self, db: str, key: str, ts: float, cutoff: float) -> Entry | None:
        """Lock the live row, update its timestamp, return the old one (one statement)."""
        row = await self._fetchrow(
            "get_and_touch",
            f"""WITH old AS (
                    SELECT ts, data FROM {self.t_entries}
                    WHERE db = $1 AND key = $2 AND ts >= $4 FOR UPDATE)
                UPDATE {self.t_entries} e SET ts = $3 FROM old
                WHERE e.db = $1 AND e.key = $2 RETURNING old.ts, old.data""",
            db,
            key,
            ts,
            cutoff,
        )
        return None if row is None else Entry(key, row["ts"], row["data"])

    async def delete(self, db: str, key: str) -> Entry | None:
        """``DELETE ... RETURNING``."""
        row = await self._fetchrow(
            "delete",
            f"DELETE FROM {self.t_entries} WHERE db = $1 AND key = $2 RETURNING ts, data",
            db,
            key,
        )
        return None if row is None else Entry(key, row["ts"], row["data"])

    # -- counters --------------------------------------------------------------------------

    async def increment(
        self, db: str, key: str, bucket: int, start: float, first_bucket: int, amount: int
    ) -> int:
        """One statement: upsert the bucket, add the window's older buckets."""
        row = await self._fetchrow(
            "increment",
            f"""WITH up AS (
                    INSERT INTO {self.t_counters} AS c (db, key, bucket, start, count)
                    VALUES ($1, $2, $3, $4, $5) ON CONFLICT (db, key, bucket)
                    DO UPDATE SET count = c.count + EXCLUDED.count RETURNING count)
                SELECT ((SELECT count FROM up) + COALESCE((
                    SELECT sum(count) FROM {self.t_counters}
                    WHERE db = $1 AND key = $2 AND bucket >= $6 AND bucket < $3), 0))::bigint
                    AS total""",
            db,
            key,
            bucket,
            start,
            amount,
            first_bucket,
            retry=False,
        )
        return int(row["total"])

    async def count(self, db: str, key: str, first_bucket: int, last_bucket: int) -> int:
        """Read-only window sum."""
        row = await self._fetchrow(
            "count",
            f"SELECT COALESCE(sum(count), 0)::bigint AS total FROM {self.t_counters} "
            "WHERE db = $1 AND key = $2 AND bucket BETWEEN $3 AND $4",
            db,
            key,
            first_bucket,
            last_bucket,
        )
        return int(row["total"])

    # -- maintenance -----------------------------------------------------------------------

    async def purge(self, db: str, cutoff: float) -> int:
        """Two indexed range deletes in one transaction."""

        async def fn(con: asyncpg.Connection) -> int:
            async with con.transaction():
                a = await con.execute(
                    f"DELETE FROM {self.t_entries} WHERE db = $1 AND ts < $2", db, cutoff
                )
                b = await con.execute(
                    f"DELETE FROM {self.t_counters} WHERE db = $1 AND start < $2", db, cutoff
                )
            return _status_count(a) + _status_count(b)

        return await self._run("purge", fn, retry=True)

    async def entries(self, db: str, batch: int = 1000) -> AsyncIterator[list[Entry]]:
        """Keyset-paginated scan of a database's entries."""
        last = ""
        while True:
            rows = await self._fetch(
                "list keys",
                f"SELECT key, ts, data FROM {self.t_entries} WHERE db = $1 AND key > $2 "
                'ORDER BY key COLLATE "C" LIMIT $3',
                db,
                last,
                batch,
            )
            if not rows:
                return
            yield [Entry(r["key"], r["ts"], r["data"]) for r in rows]
            last = rows[-1]["key"]

    async def counters(self, db: str, batch: int = 1000) -> AsyncIterator[list[CounterRow]]:
        """Keyset-paginated scan of a database's counter buckets."""
        last_key, last_bucket = "", -(2**62)
        while True:
            rows = await self._fetch(
                "list counters",
                f"SELECT key, bucket, start, count FROM {self.t_counters} WHERE db = $1 "
                'AND (key COLLATE "C", bucket) > ($2, $3) '
                'ORDER BY key COLLATE "C", bucket LIMIT $4',
                db,
                last_key,
                last_bucket,
                batch,
            )
            if not rows:
                return
            yield [CounterRow(r["key"], r["bucket"], r["start"], r["count"]) for r in rows]
            last_key, last_bucket = rows[-1]["key"], rows[-1]["bucket"]

    async def import_entries(self, db: str, rows: Sequence[Entry]) -> None:
        """Batch upsert keeping the newer timestamp."""

        async def fn(con: asyncpg.Connection) -> None:
            await con.executemany(
                f"INSERT INTO {self.t_entries} AS e (db, key, ts, data) VALUES ($1, $2, $3, $4) "
                "ON CONFLICT (db, key) DO UPDATE SET ts = GREATEST(e.ts, EXCLUDED.ts), "
                "data = CASE WHEN EXCLUDED.ts > e.ts THEN EXCLUDED.data ELSE e.data END",
                [(db, r.key, float(r.ts), r.data) for r in rows],
            )

        await self._run("import", fn, retry=True)

    async def import_counters(self, db: str, rows: Sequence[CounterRow]) -> None:
        """Batch upsert keeping the larger count."""

        async def fn(con: asyncpg.Connection) -> None:
            await con.executemany(
                f"INSERT INTO {self.t_counters} AS c (db, key, bucket, start, count) "
                "VALUES ($1, $2, $3, $4, $5) ON CONFLICT (db, key, bucket) "
                "DO UPDATE SET count = GREATEST(c.count, EXCLUDED.count)",
                [(db, r.key, r.bucket, float(r.start), r.count) for r in rows],
            )

        await self._run("import", fn, retry=True)

    # -- the original's tables -------------------------------------------------------------

    async def legacy_tables(self, schema: str | None = None) -> list[str]:
        """Tables shaped like the original's TtlDb (``id CHAR(64)``, ``value BIGINT``)."""
        rows = await self._fetch(
            "find legacy tables",
            """SELECT table_name FROM information_schema.columns
               WHERE table_schema = COALESCE($1, current_schema())
               GROUP BY table_name
               HAVING count(*) = 2
                  AND bool_and((column_name = 'id' AND data_type = 'character')
                            OR (column_name = 'value' AND data_type = 'bigint'))
               ORDER BY table_name""",
            schema,
        )
        return [r["table_name"] for r in rows]

    async def import_legacy_table(self, table: str, db: str, schema: str | None = None) -> int:
        """Copy one original table into the store server-side; return rows imported."""
        ident = '"' + table.replace('"', '""') + '"'
        if schema:
            ident = '"' + schema.replace('"', '""') + '".' + ident

        async def fn(con: asyncpg.Connection) -> int:
            async with con.transaction():
                status = await con.execute(
                    f"INSERT INTO {self.t_entries} AS e (db, key, ts) "
                    f"SELECT $1, rtrim(id), value::double precision FROM {ident} "
                    "ON CONFLICT (db, key) DO UPDATE SET ts = GREATEST(e.ts, EXCLUDED.ts)",
                    db,
                )
                await con.execute(
                    f"INSERT INTO {self.t_databases} (name, legacy_imported) VALUES ($1, TRUE) "
                    "ON CONFLICT (name) DO UPDATE SET legacy_imported = TRUE",
                    db,
                )
            return _status_count(status)

        return await self._run("import legacy table", fn, retry=False)
