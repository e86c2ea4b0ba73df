"""pythonfilter.ttldb: the original's synchronous TtlDb over the async store."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import courier.config as cfg
from courier_pyfilter.store import Store, StoreConfig
from pythonfilter import ttldb


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path) -> Iterator[Path]:
    conf = tmp_path / "modules.conf"
    db = tmp_path / "ttl.sqlite3"
    conf.write_text(f"[ttldb]\ntype = 'sqlite'\npath = {str(db)!r}\n")
    cfg._reset()
    ttldb._reset()
    cfg._configure(modules_configs=[str(conf)])
    yield db
    ttldb._reset()
    cfg._reset()


def rows(db: Path, name: str) -> dict[str, str | None]:
    with sqlite3.connect(db) as conn:
        return dict(conn.execute("SELECT key, data FROM ttldb_entries WHERE db = ?", (name,)))


def test_dict_api_standalone(_isolated: Path) -> None:
    db = ttldb.TtlDb("compat_test", 3600, 60)
    key = "0123456789abcdef0123456789abcdef"
    assert key not in db
    assert db.has_key(key) is False
    with pytest.raises(KeyError):
        _ = db[key]
    now = time.time()
    db[key] = now
    assert key in db and db.has_key(key)
    assert db[key] == str(int(now))  # whole seconds, as a string
    db[key] = "42"
    assert db[key] == "42"
    assert rows(_isolated, "compat_test") == {key: "42"}
    del db[key]
    assert key not in db
    del db[key]  # absent: no error
    with pytest.raises(ValueError):
        db[key] = "not a number"


def test_entries_expire_after_ttl() -> None:
    db = ttldb.TtlDb("compat_expire", 1, 1)
    db["k"] = time.time()
    assert "k" in db
    time.sleep(1.2)
    assert "k" not in db
    db.purge()
    assert db.last_purged > 0


def test_lock_serialises_read_modify_write() -> None:
    db = ttldb.TtlDb("compat_lock", 3600, 600)
    db["counter"] = 0

    def worker() -> None:
        for _ in range(10):
            db.lock()
            try:
                db["counter"] = int(db["counter"]) + 1
            finally:
                db.unlock()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert db["counter"] == "40"
    db.lock()
    db.purge()  # re-entrant: purging while holding the lock does not deadlock
    db.unlock()


def test_open_error_for_unsupported_type(tmp_path: Path) -> None:
    conf = tmp_path / "bad.conf"
    conf.write_text("[ttldb]\ntype = 'mysql'\n")
    cfg._configure(modules_configs=[str(conf)])
    with pytest.raises(ttldb.OpenError, match="Failed to open x db"):
        ttldb.TtlDb("x", 10, 10)


def test_daemon_loop_registration(tmp_path: Path) -> None:
    """With a registered loop, calls run there against the daemon's store."""
    daemon_db = tmp_path / "daemon.sqlite3"
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    opened: list[Store] = []

    async def open_store() -> Store:
        store = await Store.open(StoreConfig(path=str(daemon_db)))
        opened.append(store)
        return store

    store = asyncio.run_coroutine_threadsafe(open_store(), loop).result(10)

    async def getter() -> Store:
        return store

    ttldb._set_loop(loop, getter)
    try:
        db = ttldb.TtlDb("compat_daemon", 3600, 600)
        db["k"] = 7
        assert rows(daemon_db, "compat_daemon") == {"k": "7"}
        assert not (tmp_path / "ttl.sqlite3").exists()  # the standalone store is unused

        async def from_loop() -> str:
            # module-level code running in the loop thread: construction is deferred,
            # operations are refused instead of dead-locking
            deferred = ttldb.TtlDb("compat_daemon", 3600, 600)
            with pytest.raises(ttldb.TtlDbError, match="event loop thread"):
                _ = "k" in deferred
            return "ok"

        assert asyncio.run_coroutine_threadsafe(from_loop(), loop).result(10) == "ok"
    finally:
        ttldb._clear_loop()
        asyncio.run_coroutine_threadsafe(store.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(5)
        loop.close()
    assert len(opened) == 1
