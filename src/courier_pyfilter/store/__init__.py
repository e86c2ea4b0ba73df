"""Async expiring key/value store: the successor of the original's TtlDb.

One server keeps its state in an embedded SQLite file (the default); a cluster of Courier
servers shares PostgreSQL.  See :mod:`courier_pyfilter.store.store` for the API and
:mod:`courier_pyfilter.store.config` for the ``[ttldb]`` section.

Differences from the original, on purpose:

* ratelimit/ratelimitauth counters live in the store (:meth:`TtlDb.increment`), not in
  process memory: they survive restarts and a cluster sharing PostgreSQL enforces one limit;
* the quarantine index can live in the store too (an entry's ``data`` payload), so every
  server of a cluster can release a quarantined message;
* every operation is atomic across processes and servers (no lock needed, no lost updates),
  and expired entries are invisible at once rather than at the next purge;
* schema: three tables (``ttldb_databases``, ``ttldb_entries``, ``ttldb_counters``, see
  :mod:`courier_pyfilter.store.base`) instead of one ``id CHAR(64), value BIGINT`` table per
  database; ``courier-pyfilter store migrate pg-legacy`` imports the original's tables and
  ``type = 'dbm'`` imports the old dbm files once, keeping the original's key formats.
"""

from __future__ import annotations

from .base import CounterRow, DatabaseInfo, Entry
from .config import DEFAULT_STATE_DIR, StoreConfig, store_config_from_sections
from .errors import StoreConfigError, StoreError, StoreUnavailableError
from .store import Clock, Store, TtlDb, open_backend

__all__ = [
    "DEFAULT_STATE_DIR",
    "Clock",
    "CounterRow",
    "DatabaseInfo",
    "Entry",
    "Store",
    "StoreConfig",
    "StoreConfigError",
    "StoreError",
    "StoreUnavailableError",
    "TtlDb",
    "open_backend",
    "store_config_from_sections",
]
