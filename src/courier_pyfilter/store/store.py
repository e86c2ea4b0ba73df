"""The async expiring key/value store: :class:`Store` and its per-database :class:`TtlDb`.

Typical use in a filter::

    store = await Store.open(config)                 # once, by the server
    passed = await store.database("greylist_Passed", ttl=36 * 86400, purge_interval=7200)
    if await passed.get_and_touch(key) is not None:  # atomic read + refresh
        ...
    await store.close()

Every operation is one atomic step on the backend, so several concurrent messages (or
several servers sharing PostgreSQL) never race: :meth:`TtlDb.set_if_absent` answers "was I
first?", :meth:`TtlDb.increment` counts in a window and returns the new total,
:meth:`TtlDb.delete` returns what it removed (so only one caller can "claim" an entry).
Entries older than the database's TTL are invisible at once and physically removed by a
background purge task per database.  Any backend failure raises
:class:`~courier_pyfilter.store.errors.StoreError`; filters answer with a temporary failure.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from dataclasses import replace
from types import TracebackType

from .base import Backend, CounterRow, DatabaseInfo, Entry
from .config import StoreConfig
from .errors import StoreError

__all__ = ["Clock", "Store", "TtlDb", "open_backend"]

Clock = Callable[[], float]
"""A function returning the current time in seconds since the epoch (``time.time``)."""

log = logging.getLogger("courier_pyfilter.store")


def open_backend(config: StoreConfig) -> Backend:
    """The (not yet opened) backend that ``config`` describes."""
    if config.backend == "sqlite":
        from .sqlite import SQLiteBackend

        return SQLiteBackend(
            config.path,
            read_only=config.read_only,
            busy_timeout=config.connect_timeout,
            owner=config.owner,
        )
    try:
        from .postgres import PostgresBackend
    except ImportError as exc:  # pragma: no cover - asyncpg is an optional dependency
        raise StoreError(
            "[ttldb] PostgreSQL needs asyncpg: pip install 'courier-pyfilter[pg]'"
        ) from exc
    return PostgresBackend(config)


def _check_time(name: str, value: float) -> float:
    value = float(value)
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    return value


class TtlDb:
    """One named database of timestamped keys and windowed counters.

    Obtain it with :meth:`Store.database`.  Timestamps are seconds since the epoch (floats;
    the original stored whole seconds, which import unchanged).  An entry whose timestamp is
    older than ``now - ttl`` counts as absent everywhere.  With ``dry_run`` every write is
    skipped and the methods answer as if it had happened (used by the replay tool).
    """

    def __init__(
        self,
        store: Store,
        name: str,
        ttl: float,
        purge_interval: float,
        *,
        dry_run: bool = False,
    ) -> None:
        self._store = store
        self.name = name
        self.ttl = ttl
        self.purge_interval = purge_interval
        self.dry_run = dry_run
        self._lock = asyncio.Lock()
        self.last_purge: float | None = None
        """Clock time of the last successful purge by this process."""

    def __repr__(self) -> str:
        return f"<TtlDb {self.name!r} ttl={self.ttl:g}s on {self._store.backend.description}>"

    @property
    def _backend(self) -> Backend:
        return self._store.backend

    def _now(self, now: float | None) -> float:
        return self._store.clock() if now is None else float(now)

    def _cutoff(self, now: float) -> float:
        return now - self.ttl

    # -- timestamped keys ------------------------------------------------------------------

    async def get(self, key: str, *, now: float | None = None) -> float | None:
        """The key's timestamp, or None when absent or expired."""
        entry = await self.get_entry(key, now=now)
        return None if entry is None else entry.ts

    async def get_entry(self, key: str, *, now: float | None = None) -> Entry | None:
        """The key's entry (timestamp and payload), or None when absent or expired."""
        return await self._backend.get(self.name, key, self._cutoff(self._now(now)))

    async def contains(self, key: str, *, now: float | None = None) -> bool:
        """True when the key is present and not expired."""
        return await self.get_entry(key, now=now) is not None

    async def set(self, key: str, ts: float | None = None, *, data: str | None = None) -> None:
        """Store ``key`` with timestamp ``ts`` (default: now) and optional payload."""
        if self.dry_run:
            return
        await self._backend.set(self.name, key, self._now(ts), data)

    async def set_if_absent(
        self, key: str, ts: float | None = None, *, data: str | None = None
    ) -> bool:
        """Atomically store ``key`` unless it is present; True when this call stored it."""
        _, inserted = await self.get_or_set(key, ts, data=data)
        return inserted

    async def get_or_set(
        self, key: str, ts: float | None = None, *, data: str | None = None
    ) -> tuple[float, bool]:
        """Atomically: the stored timestamp if present, else store ``ts`` (default now).

        Returns ``(timestamp now stored, inserted)``.  Greylisting uses this for "first
        seen": concurrent first attempts agree on one timestamp.
        """
        now = self._now(ts)
        cutoff = self._cutoff(self._store.clock())
        if self.dry_run:
            entry = await self._backend.get(self.name, key, cutoff)
            return (now, True) if entry is None else (entry.ts, False)
        entry, inserted = await self._backend.set_if_absent(self.name, key, now, data, cutoff)
        return entry.ts, inserted

    async def get_and_touch(self, key: str, ts: float | None = None) -> float | None:
        """Atomically return the key's timestamp and, if present, refresh it to ``ts``/now."""
        now = self._now(ts)
        cutoff = self._cutoff(self._store.clock())
        if self.dry_run:
            entry = await self._backend.get(self.name, key, cutoff)
        else:
            entry = await self._backend.touch(self.name, key, now, cutoff)
        return None if entry is None else entry.ts

    async def delete(self, key: str) -> float | None:
        """Remove the key; return the timestamp it had (None if absent).

        Only one of several concurrent callers gets the timestamp back, so this doubles as
        an atomic "claim" (e.g. promoting a greylist triplet exactly once).
        """
        if self.dry_run:
            return await self.get(key)
        entry = await self._backend.delete(self.name, key)
        return None if entry is None else entry.ts

    # -- windowed counters -------------------------------------------------------------------

    @staticmethod
    def _buckets(now: float, window: float, buckets: int) -> tuple[int, float, int]:
        window = _check_time("window", window)
        if buckets < 1:
            raise ValueError(f"buckets must be >= 1, got {buckets}")
        length = window / buckets
        index = math.floor(now / length)
        return index, index * length, index - buckets + 1

    async def increment(
        self,
        key: str,
        *,
        window: float,
        buckets: int = 1,
        amount: int = 1,
        now: float | None = None,
    ) -> int:
        """Atomically add ``amount`` to the key's counter and return the windowed total.

        The window of ``window`` seconds is split into ``buckets`` equal buckets aligned to
        the epoch; the total is the sum of the current bucket and the ``buckets - 1`` before
        it.  ``buckets=1`` is a fixed window; ``window=60*n, buckets=n`` reproduces the
        original ratelimit's per-minute buckets over ``n`` minutes.  Use the same window for a
        key every time, and a database TTL of at least ``window``.
        """
        index, start, first = self._buckets(self._now(now), window, buckets)
        if self.dry_run:
            return amount + await self._backend.count(self.name, key, first, index)
        return await self._backend.increment(self.name, key, index, start, first, amount)

    async def count(
        self, key: str, *, window: float, buckets: int = 1, now: float | None = None
    ) -> int:
        """The key's windowed total without changing it."""
        index, _, first = self._buckets(self._now(now), window, buckets)
        return await self._backend.count(self.name, key, first, index)

    # -- maintenance -------------------------------------------------------------------------

    async def purge(self, now: float | None = None) -> int:
        """Delete entries and counter buckets older than ``now - ttl``; return rows deleted."""
        if self.dry_run:
            return 0
        current = self._now(now)
        removed = await self._backend.purge(self.name, self._cutoff(current))
        self.last_purge = current
        return removed

    async def keys(self, *, include_expired: bool = False) -> AsyncIterator[Entry]:
        """Every entry of the database (admin use), in key order."""
        cutoff = self._cutoff(self._store.clock())
        async for batch in self._backend.entries(self.name):
            for entry in batch:
                if include_expired or entry.ts >= cutoff:
                    yield entry

    async def counters(self) -> AsyncIterator[CounterRow]:
        """Every counter bucket of the database (admin use)."""
        async for batch in self._backend.counters(self.name):
            for row in batch:
                yield row

    async def import_entries(self, rows: Sequence[Entry]) -> None:
        """Bulk-load entries (migration); an existing key keeps the newer timestamp."""
        if rows and not self.dry_run:
            await self._backend.import_entries(self.name, rows)

    @contextlib.asynccontextmanager
    async def lock(self) -> AsyncIterator[None]:
        """The original's per-database mutex, for legacy filters (this process only).

        New code should not need it: the atomic methods are safe across processes and
        servers, a lock is not.
        """
        async with self._lock:
            yield


class Store:
    """The store of one server: a backend, named databases and their purge tasks."""

    def __init__(
        self,
        backend: Backend,
        config: StoreConfig | None = None,
        *,
        clock: Clock = time.time,
        dry_run: bool = False,
        background_purge: bool = True,
    ) -> None:
        self.backend = backend
        self.config = config
        self.clock = clock
        self.dry_run = dry_run
        self.background_purge = background_purge
        self._databases: dict[str, TtlDb] = {}
        self._purge_tasks: dict[str, asyncio.Task[None]] = {}
        self._db_lock = asyncio.Lock()
        self._closed = False
        self._scratch: str | None = None  # dry run: the temporary directory to remove

    @classmethod
    async def open(
        cls,
        config: StoreConfig,
        *,
        clock: Clock = time.time,
        dry_run: bool = False,
        background_purge: bool = True,
    ) -> Store:
        """Open the configured backend; raises StoreError (clear message) if unreachable.

        With ``dry_run`` nothing is written (the replay tool): every write to the
        databases is skipped and nothing is registered.  An SQLite file that does not
        exist yet is not created: an empty temporary one stands in for it (removed by
        :meth:`close`), so a dry run as root never leaves a root-owned store behind.
        """
        scratch: str | None = None
        if dry_run and config.backend == "sqlite" and not config.read_only:
            config, scratch = await asyncio.to_thread(_dry_run_sqlite, config)
        backend = open_backend(config)
        try:
            await backend.open()
        except BaseException:
            if scratch is not None:
                shutil.rmtree(scratch, ignore_errors=True)
            raise
        store = cls(
            backend, config, clock=clock, dry_run=dry_run, background_purge=background_purge
        )
        store._scratch = scratch
        return store

    async def __aenter__(self) -> Store:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def database(
        self,
        name: str,
        *,
        ttl: float,
        purge_interval: float = 43200.0,
        dry_run: bool | None = None,
    ) -> TtlDb:
        """The database ``name`` (created on first use) with its TTL and purge interval.

        Repeated calls return the same handle (sharing its :meth:`TtlDb.lock`), updated to the
        latest ``ttl``/``purge_interval``.  For a store configured with ``type = 'dbm'`` the
        original's dbm file of that name is imported the first time.  A background task
        purges the database every ``purge_interval`` seconds (the first purge runs at once).
        """
        if self._closed:
            raise StoreError("store is closed")
        if not name or len(name) > 200:
            raise ValueError(f"bad database name {name!r}")
        ttl = _check_time("ttl", ttl)
        purge_interval = _check_time("purge_interval", purge_interval)
        async with self._db_lock:
            handle = self._databases.get(name)
            if handle is None:
                handle = TtlDb(
                    self,
                    name,
                    ttl,
                    purge_interval,
                    dry_run=self.dry_run if dry_run is None else dry_run,
                )
            else:
                handle.ttl, handle.purge_interval = ttl, purge_interval
            # A dry run records nothing, not even the database's TTL (and imports nothing).
            imported = handle.dry_run or await self.backend.register(name, ttl, purge_interval)
            legacy_dir = self.config.legacy_dir if self.config else None
            if legacy_dir and not imported and not handle.dry_run:
                await self._import_legacy(handle, legacy_dir)
            self._databases[name] = handle
            if self.background_purge and name not in self._purge_tasks and not handle.dry_run:
                self._purge_tasks[name] = asyncio.create_task(
                    self._purge_loop(handle), name=f"store-purge-{name}"
                )
        return handle

    async def _import_legacy(self, handle: TtlDb, directory: str) -> None:
        from .legacy import LegacyFormatError, find_dbm_file, import_dbm_file

        path = find_dbm_file(directory, handle.name)
        if path is None:
            await self.backend.mark_legacy_imported(handle.name)
            return
        try:
            count = await import_dbm_file(handle, path)
        except LegacyFormatError as exc:
            log.error("store: not importing the original's %s: %s", path, exc)
            return
        await self.backend.mark_legacy_imported(handle.name)
        log.info("store: imported %d entries for %s from %s", count, handle.name, path)

    async def _purge_loop(self, handle: TtlDb) -> None:
        while True:
            try:
                removed = await handle.purge()
                if removed:
                    log.info("store: purged %d expired rows from %s", removed, handle.name)
            except StoreError as exc:
                log.warning("store: purge of %s failed: %s", handle.name, exc)
            await asyncio.sleep(handle.purge_interval)

    async def databases(self) -> list[DatabaseInfo]:
        """Every database the backend knows (registered or holding data)."""
        return await self.backend.databases()

    def opened(self) -> Iterable[TtlDb]:
        """The handles opened through :meth:`database` in this process."""
        return tuple(self._databases.values())

    async def purge_all(self, now: float | None = None) -> dict[str, int]:
        """Purge every registered database now, using its recorded TTL; rows deleted per name."""
        result: dict[str, int] = {}
        for info in await self.backend.databases():
            if info.ttl is None:
                continue
            current = self.clock() if now is None else now
            result[info.name] = await self.backend.purge(info.name, current - info.ttl)
        return result

    async def close(self, timeout: float = 5.0) -> None:
        """Stop the purge tasks and close every connection, within about ``timeout`` s."""
        self._closed = True
        tasks = list(self._purge_tasks.values())
        self._purge_tasks.clear()
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=timeout)
        await self.backend.close(timeout)
        if self._scratch is not None:
            shutil.rmtree(self._scratch, ignore_errors=True)
            self._scratch = None


def _dry_run_sqlite(config: StoreConfig) -> tuple[StoreConfig, str | None]:
    """The SQLite configuration a dry run uses: the file itself when it exists (opened as
    usual, which leaves no journal files behind, unlike a read-only connection; the dry
    run writes nothing), else an empty scratch file and the directory to remove."""
    if os.path.exists(config.path):
        return replace(config, legacy_dir=None), None
    scratch = tempfile.mkdtemp(prefix="courier-pyfilter-dry-run-")
    path = os.path.join(scratch, os.path.basename(config.path) or "ttldb.sqlite3")
    return replace(config, path=path, legacy_dir=None, owner=None), scratch
