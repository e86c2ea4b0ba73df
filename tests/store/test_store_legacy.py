"""Importing the original's TtlDb data (dbm files, PostgreSQL tables) and copying stores."""

from __future__ import annotations

import dbm.dumb
import hashlib
import os
from typing import Any

import asyncpg
import pytest
from store_testlib import FakeClock, unavailable

from courier_pyfilter.store import Entry, Store, StoreConfig, legacy, store_config_from_sections
from courier_pyfilter.store.legacy import (
    LegacyFormatError,
    copy_store,
    import_pg_legacy,
    load_gdbm,
    read_dbm,
)

DAY = 86400.0


def greylist_key(sender: str, recipient: str, network: str) -> str:
    """The original greylist's key: MD5 hex of sender + recipient + network."""
    return hashlib.md5((sender + recipient + network).encode()).hexdigest()


KEY = greylist_key("a@example.org", "b@example.net", "192.0.2")


def write_dumb(path: str, items: dict[str, str]) -> None:
    with dbm.dumb.open(path, "c") as db:
        for k, v in items.items():
            db[k.encode()] = v.encode()


def gdbm_module() -> Any:
    module = load_gdbm()
    if module is None:
        unavailable("no GDBM module (install Debian's python3-gdbm)")
    return module


def write_gdbm(path: str, items: dict[str, str]) -> None:
    db = gdbm_module().open(path, "c")
    for k, v in items.items():
        db[k.encode()] = v.encode()
    db.close()


def test_read_dumb_dbm(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "auto_whitelist")
    write_dumb(path, {KEY: "1700000000", "b" * 32: "1700000001", "c" * 32: "junk"})
    entries, bad = read_dbm(path)
    assert sorted(entries, key=lambda e: e.key) == [
        Entry(KEY, 1700000000.0),
        Entry("b" * 32, 1700000001.0),
    ]
    assert bad == 1


def test_read_gdbm_in_process(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "greylist_Passed")
    write_gdbm(path, {KEY: "1700000000"})
    assert legacy.dbm_flavour(path) == "dbm.gnu"
    assert read_dbm(path) == ([Entry(KEY, 1700000000.0)], 0)


def test_read_gdbm_through_a_system_python(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = os.path.join(tmp_path, "greylist_Passed")
    write_gdbm(path, {KEY: "1700000000"})
    monkeypatch.setattr(legacy, "load_gdbm", lambda: None)
    if legacy._read_gdbm_subprocess(path) is None:
        unavailable("no system python3 with dbm.gnu")
    assert read_dbm(path) == ([Entry(KEY, 1700000000.0)], 0)


def test_gdbm_without_module_says_so(
    tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    path = os.path.join(tmp_path, "greylist_Passed")
    with open(path, "wb") as f:  # GDBM magic numbers, as whichdb recognises them
        f.write(bytes.fromhex("cf9a5713") + b"\0" * 60)
    monkeypatch.setattr(legacy, "load_gdbm", lambda: None)
    monkeypatch.setattr(legacy, "_system_pythons", lambda: [])
    with pytest.raises(LegacyFormatError, match="python3-gdbm"):
        read_dbm(path)


def test_unknown_file_is_rejected(tmp_path: os.PathLike[str]) -> None:
    path = os.path.join(tmp_path, "x")
    with open(path, "wb") as f:
        f.write(b"not a database at all" * 10)
    with pytest.raises(LegacyFormatError):
        read_dbm(path)


async def test_dbm_type_imports_old_files_once(
    tmp_path: os.PathLike[str], clock: FakeClock
) -> None:
    old = str(tmp_path)
    write_dumb(os.path.join(old, "greylist_Passed"), {KEY: str(int(clock.now) - 60)})
    config = store_config_from_sections({"ttldb": {"type": "dbm", "dir": old}}, "/unused")
    assert config.path == os.path.join(old, "ttldb.sqlite3")
    async with await Store.open(config, clock=clock, background_purge=False) as store:
        passed = await store.database("greylist_Passed", ttl=36 * DAY)
        assert await passed.get(KEY) == int(clock.now) - 60
        assert await passed.delete(KEY) is not None
        notpassed = await store.database("greylist_NotPassed", ttl=DAY)  # no file: fine
        assert await notpassed.get(KEY) is None
    async with await Store.open(config, clock=clock, background_purge=False) as store:
        passed = await store.database("greylist_Passed", ttl=36 * DAY)
        assert await passed.get(KEY) is None  # not imported a second time
        infos = {i.name: i for i in await store.databases()}
        assert infos["greylist_Passed"].legacy_imported


async def test_pg_legacy_tables_import_in_place(pg_config: StoreConfig, clock: FakeClock) -> None:
    schema = pg_config.schema
    conn = await asyncpg.connect(pg_config.dsn)
    try:
        await conn.execute(f'CREATE SCHEMA "{schema}"')
        # exactly what the original ran (unquoted name -> folded to lower case)
        await conn.execute(
            f'CREATE TABLE "{schema}".greylist_Passed (id CHAR(64) NOT NULL, '
            "value BIGINT NOT NULL, PRIMARY KEY(id))"
        )
        await conn.execute(f'CREATE TABLE "{schema}".other (id INT, value BIGINT)')
        await conn.executemany(
            f'INSERT INTO "{schema}".greylist_passed VALUES ($1, $2)',
            [(KEY, int(clock.now) - 100), ("f" * 32, int(clock.now) - 200)],
        )
    finally:
        await conn.close()
    async with await Store.open(pg_config, clock=clock, background_purge=False) as store:
        result = await import_pg_legacy(store, schema=schema)
        assert result == {"greylist_passed": 2}
        passed = await store.database("greylist_Passed", ttl=36 * DAY)
        assert await passed.get(KEY) == int(clock.now) - 100  # CHAR padding stripped
        info = {i.name: i for i in await store.databases()}["greylist_Passed"]
        assert (info.ttl, info.entries, info.legacy_imported) == (3110400.0, 2, True)


async def test_copy_sqlite_to_postgres(
    sqlite_config: StoreConfig, pg_config: StoreConfig, clock: FakeClock
) -> None:
    async with await Store.open(sqlite_config, clock=clock, background_purge=False) as src:
        a = await src.database("auto_whitelist", ttl=30 * DAY, purge_interval=100)
        await a.import_entries([Entry(f"{i:032x}", clock.now - i) for i in range(1500)])
        await a.set("payload", data="D1")
        r = await src.database("ratelimit", ttl=60)
        for _ in range(3):
            await r.increment("192.0.2.1", window=60)
    async with await Store.open(pg_config, clock=clock, background_purge=False) as dst:
        existing = await dst.database("auto_whitelist", ttl=30 * DAY)
        await existing.set(f"{5:032x}", clock.now)  # newer than the source's copy
        async with await Store.open(
            sqlite_config.with_overrides(read_only=True), clock=clock, background_purge=False
        ) as src:
            seen: list[int] = []
            result = await copy_store(src, dst, progress=seen.append)
        assert result == {"auto_whitelist": 1501, "ratelimit": 1}
        assert sum(seen) == 1502
        infos = {i.name: i for i in await dst.databases()}
        assert infos["auto_whitelist"].purge_interval == 100  # registry copied too
        a = await dst.database("auto_whitelist", ttl=30 * DAY)
        assert await a.get(f"{7:032x}") == clock.now - 7
        assert await a.get(f"{5:032x}") == clock.now  # the newer timestamp wins
        assert (await a.get_entry("payload")) == Entry("payload", clock.now, "D1")
        r = await dst.database("ratelimit", ttl=60)
        assert await r.count("192.0.2.1", window=60) == 3
