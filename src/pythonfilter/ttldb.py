"""``pythonfilter.ttldb`` of courier-pythonfilter 3.0.6, on courier-pyfilter's store.

``TtlDb(name, ttl, purge_interval)`` gives the original's synchronous, dict-like API
(``lock()``, ``unlock()``, ``purge()``, ``key in db``, ``has_key``, ``db[key]`` as a string,
``db[key] = number`` stored as whole seconds, ``del db[key]``) over the named database of
:class:`courier_pyfilter.store.Store`.

Where the data lives
    Inside the daemon, the daemon's own store (``[ttldb]`` section; SQLite by default,
    PostgreSQL for a cluster): the daemon registers its event loop and store with
    :func:`_set_loop` (through :func:`courier.attach_daemon`) and every call is run on
    that loop with :func:`asyncio.run_coroutine_threadsafe` from the filter's worker
    thread.  Used on its own (scripts, tests), a private event loop thread opens the store
    configured by the ``[ttldb]`` section that :mod:`courier.config` reads.

Differences from the original, all deliberate:

* the ``[ttldb]`` types are the store's: ``type = 'dbm'`` means SQLite in ``dir`` with a
  one-time import of the old dbm files, ``'pg'``/``'psycopg2'`` PostgreSQL, no section at
  all SQLite in the state directory; MySQL is refused (:class:`OpenError`);
* an entry expires ``ttl`` seconds after it was last *written* and is invisible at once
  when expired (the original kept it until the next ``purge()`` and measured from the
  stored number; for the timestamps every shipped filter stores, this is the same);
* ``del db[key]`` of a missing key is not an error;
* ``lock()`` is shared by every ``TtlDb`` of the same name in the process and re-entrant,
  so ``purge()`` while holding it no longer deadlocks.

Calls from the event loop's own thread (e.g. module-level code run while the daemon
imports a filter) cannot wait for the loop: the constructor then defers opening, and
operations raise :class:`TtlDbError`.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from courier_pyfilter.store import Store
    from courier_pyfilter.store import TtlDb as StoreDb

__all__ = ["TIMEOUT", "OpenError", "TtlDb", "TtlDbError"]

T = TypeVar("T")

StoreGetter = Callable[[], Awaitable["Store"]]

TIMEOUT: float = 30.0
"""Seconds one database call may take before :class:`TtlDbError` is raised."""


class TtlDbError(Exception):
    """A database call failed or could not be made."""


class OpenError(TtlDbError):
    """The database could not be opened (bad ``[ttldb]`` settings, unreachable server)."""


# -- where calls run -------------------------------------------------------------------------


class _PrivateLoop:
    """An event loop in a daemon thread, with the store configured for standalone use."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self._store: Store | None = None
        self._store_lock = asyncio.Lock()
        self.thread = threading.Thread(
            target=self.loop.run_forever, name="pythonfilter-ttldb", daemon=True
        )
        self.thread.start()

    async def store(self) -> Store:
        async with self._store_lock:
            if self._store is None:
                self._store = await _open_standalone_store()
            return self._store

    def close(self) -> None:
        store, self._store = self._store, None
        if store is not None and self.loop.is_running():
            future = asyncio.run_coroutine_threadsafe(store.close(), self.loop)
            try:
                future.result(10)
            except Exception:
                pass
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self.thread.join(10)
        if not self.loop.is_running():
            self.loop.close()


async def _open_standalone_store() -> Store:
    from courier.config import get_module_config
    from courier_pyfilter.store import DEFAULT_STATE_DIR, Store, store_config_from_sections

    sections = {name: get_module_config(name) for name in ("ttldb", "TtlDb")}
    state_dir = get_module_config("courier-pyfilter").get("state_dir", DEFAULT_STATE_DIR)
    config = store_config_from_sections(sections, str(state_dir))
    return await Store.open(config)


_lock = threading.Lock()
_daemon: tuple[asyncio.AbstractEventLoop, StoreGetter] | None = None
_private: _PrivateLoop | None = None
_generation = 0
_name_locks: dict[str, threading.RLock] = {}


def _set_loop(loop: asyncio.AbstractEventLoop, store_getter: StoreGetter) -> None:
    """Run every database call on the daemon's ``loop`` against ``await store_getter()``.

    Called by the daemon at start and after each reload (a new store means new handles).
    """
    global _daemon, _generation
    with _lock:
        _daemon = (loop, store_getter)
        _generation += 1


def _clear_loop() -> None:
    """Forget the daemon's loop (shutdown); later calls use a private loop again."""
    global _daemon, _generation
    with _lock:
        _daemon = None
        _generation += 1


def _reset() -> None:
    """Clear the daemon binding and close the private loop and its store (tests, exit)."""
    global _private, _generation
    _clear_loop()
    with _lock:
        private, _private = _private, None
        _generation += 1
    if private is not None:
        private.close()


atexit.register(_reset)


def _target() -> tuple[asyncio.AbstractEventLoop, StoreGetter, int]:
    global _private
    with _lock:
        if _daemon is not None:
            return _daemon[0], _daemon[1], _generation
        if _private is None:
            _private = _PrivateLoop()
        return _private.loop, _private.store, _generation


def _in_loop_thread(loop: asyncio.AbstractEventLoop) -> bool:
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


def _wait(loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, T]) -> T:
    future = asyncio.run_coroutine_threadsafe(coro, loop)
    try:
        return future.result(TIMEOUT)
    except concurrent.futures.TimeoutError:
        future.cancel()
        raise TtlDbError(f"database call did not finish within {TIMEOUT:g} s") from None


# -- the database ----------------------------------------------------------------------------


class TtlDb:
    """A named database of keys with an integer value (a time) and a time to live."""

    def __init__(self, name: str, ttl: float, purge_interval: float) -> None:
        """Open (or create) database ``name``; raises :class:`OpenError`."""
        if not isinstance(name, str) or not name:
            raise OpenError(f"bad database name {name!r}")
        self.name = name
        self.ttl = ttl
        self.purge_interval = purge_interval
        self.last_purged = 0.0
        with _lock:
            self._mutex = _name_locks.setdefault(name, threading.RLock())
        self._handle: StoreDb | None = None
        self._handle_generation = -1
        loop, _, _ = _target()
        if not _in_loop_thread(loop):
            self._db()

    def __repr__(self) -> str:
        return f"<pythonfilter.ttldb.TtlDb {self.name!r} ttl={self.ttl}>"

    def _db(self) -> tuple[asyncio.AbstractEventLoop, StoreDb]:
        loop, getter, generation = _target()
        if _in_loop_thread(loop):
            raise TtlDbError(
                f"TtlDb {self.name!r} used from the event loop thread; "
                "use it inside init_filter/do_filter"
            )
        handle = self._handle
        if handle is None or self._handle_generation != generation:
            name, ttl, interval = self.name, self.ttl, self.purge_interval

            async def open_handle() -> StoreDb:
                store = await getter()
                return await store.database(name, ttl=ttl, purge_interval=interval)

            try:
                handle = _wait(loop, open_handle())
            except TtlDbError as exc:
                raise OpenError(f"Failed to open {name} db: {exc}") from exc
            except Exception as exc:
                raise OpenError(f"Failed to open {name} db: {exc}") from exc
            self._handle, self._handle_generation = handle, generation
        return loop, handle

    def _call(self, fn: Callable[[StoreDb], Coroutine[Any, Any, T]]) -> T:
        loop, handle = self._db()
        return _wait(loop, fn(handle))

    # -- locking ---------------------------------------------------------------------------

    def lock(self) -> None:
        """Take the database's mutex (wrap read-modify-write sequences in it)."""
        self._mutex.acquire()

    def unlock(self) -> None:
        """Release the mutex taken by :meth:`lock`."""
        self._mutex.release()

    # -- dict-like access ------------------------------------------------------------------

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is present and not expired."""
        text = str(key)
        return self._call(lambda db: db.contains(text))

    def has_key(self, key: str) -> bool:
        """Same as ``key in db``."""
        return key in self

    def __getitem__(self, key: str) -> str:
        """The stored number as a string; ``KeyError`` when absent or expired."""
        text = str(key)
        entry = self._call(lambda db: db.get_entry(text))
        if entry is None:
            raise KeyError(key)
        return entry.data if entry.data is not None else str(int(entry.ts))

    def __setitem__(self, key: str, value: float | int | str) -> None:
        """Store ``int(value)`` under ``key`` (whole seconds, as the original)."""
        text, stored = str(key), str(int(float(value)))
        self._call(lambda db: db.set(text, data=stored))

    def __delitem__(self, key: str) -> None:
        """Remove ``key`` (no error when it is absent)."""
        text = str(key)
        self._call(lambda db: db.delete(text))

    def purge(self) -> None:
        """Remove expired entries, at most once per ``purge_interval`` seconds."""
        with self._mutex:
            now = time.time()
            if now > self.last_purged + self.purge_interval:
                self._call(lambda db: db.purge(now))
                self.last_purged = now
