"""The backend contract shared by the SQLite and PostgreSQL implementations.

Both backends keep three tables (the same layout in both):

``ttldb_databases``
    one row per named database: ``name`` (primary key), ``ttl`` and ``purge_interval``
    (seconds), ``legacy_imported`` (1 once the original's dbm file was imported).
``ttldb_entries``
    timestamped keys: ``db``, ``key`` (primary key together), ``ts`` (seconds since the
    epoch, a float), optional ``data`` (text payload, e.g. the quarantine index).
    Indexed on ``(db, ts)`` so purging is a range delete.
``ttldb_counters``
    windowed counters: ``db``, ``key``, ``bucket`` (integer bucket number, primary key
    together), ``start`` (bucket start time, for purging), ``count``.

Every method is atomic on its own; none may be built as a client-side read-modify-write.
Backends raise only :class:`~courier_pyfilter.store.errors.StoreError`.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

__all__ = ["Backend", "CounterRow", "DatabaseInfo", "Entry"]


@dataclass(frozen=True, slots=True)
class Entry:
    """One timestamped key of a database."""

    key: str
    """The key (the original's filters use 32-character hex MD5 digests)."""
    ts: float
    """When the key was last set, in seconds since the epoch."""
    data: str | None = None
    """Optional payload stored with the key."""


@dataclass(frozen=True, slots=True)
class CounterRow:
    """One bucket of a windowed counter."""

    key: str
    """The counted key."""
    bucket: int
    """Bucket number (``floor(time / bucket_length)``)."""
    start: float
    """Start time of the bucket in seconds since the epoch."""
    count: int
    """Amount counted in this bucket."""


@dataclass(frozen=True, slots=True)
class DatabaseInfo:
    """What the store knows about one named database."""

    name: str
    """The database name (the original's TtlDb name, e.g. ``greylist_Passed``)."""
    ttl: float | None
    """Seconds after which entries expire (None: never registered, only has data)."""
    purge_interval: float | None
    """Seconds between background purges."""
    entries: int = 0
    """Number of stored timestamped keys (expired but unpurged ones included)."""
    counters: int = 0
    """Number of stored counter buckets."""
    legacy_imported: bool = False
    """True once the original's dbm file for this database was imported."""


class Backend(abc.ABC):
    """Storage primitives over named databases; see the module docstring for the layout."""

    description: str = ""
    """Human description of where the data lives (no secrets)."""

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect and create the schema if needed; raises StoreError when unreachable."""

    @abc.abstractmethod
    async def close(self, timeout: float = 5.0) -> None:
        """Release every connection within ``timeout`` seconds (idempotent)."""

    @abc.abstractmethod
    async def register(self, db: str, ttl: float, purge_interval: float) -> bool:
        """Record a database's TTL and purge interval; return its ``legacy_imported`` flag."""

    @abc.abstractmethod
    async def mark_legacy_imported(self, db: str) -> None:
        """Remember that the original's data for ``db`` was imported."""

    @abc.abstractmethod
    async def databases(self) -> list[DatabaseInfo]:
        """Every registered database and every database that holds data, by name."""

    @abc.abstractmethod
    async def get(self, db: str, key: str, cutoff: float) -> Entry | None:
        """The entry for ``key`` if its timestamp is at least ``cutoff``."""

    @abc.abstractmethod
    async def set(self, db: str, key: str, ts: float, data: str | None) -> None:
        """Insert or overwrite ``key`` (one upsert statement)."""

    @abc.abstractmethod
    async def set_if_absent(
        self, db: str, key: str, ts: float, data: str | None, cutoff: float
    ) -> tuple[Entry, bool]:
        """Insert ``key`` unless a live entry (ts >= cutoff) exists.

        Returns the entry now stored and True when this call inserted it.
        """

    @abc.abstractmethod
    async def touch(self, db: str, key: str, ts: float, cutoff: float) -> Entry | None:
        """If a live entry exists, set its timestamp to ``ts`` and return the previous entry."""

    @abc.abstractmethod
    async def delete(self, db: str, key: str) -> Entry | None:
        """Remove ``key`` and return what was stored (None if absent)."""

    @abc.abstractmethod
    async def increment(
        self, db: str, key: str, bucket: int, start: float, first_bucket: int, amount: int
    ) -> int:
        """Add ``amount`` to ``bucket`` and return the sum of buckets ``first_bucket..bucket``."""

    @abc.abstractmethod
    async def count(self, db: str, key: str, first_bucket: int, last_bucket: int) -> int:
        """Sum of the buckets ``first_bucket..last_bucket`` of ``key`` (read only)."""

    @abc.abstractmethod
    async def purge(self, db: str, cutoff: float) -> int:
        """Delete entries and counter buckets older than ``cutoff``; return rows deleted."""

    @abc.abstractmethod
    def entries(self, db: str, batch: int = 1000) -> AsyncIterator[list[Entry]]:
        """All entries of ``db`` (expired ones too), in key order, ``batch`` at a time."""

    @abc.abstractmethod
    def counters(self, db: str, batch: int = 1000) -> AsyncIterator[list[CounterRow]]:
        """All counter buckets of ``db``, ``batch`` at a time."""

    @abc.abstractmethod
    async def import_entries(self, db: str, rows: Sequence[Entry]) -> None:
        """Upsert many entries; on conflict keep the newer timestamp (migration)."""

    @abc.abstractmethod
    async def import_counters(self, db: str, rows: Sequence[CounterRow]) -> None:
        """Upsert many counter buckets; on conflict keep the larger count (migration)."""
