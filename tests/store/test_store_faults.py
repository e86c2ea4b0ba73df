"""Fault behaviour: PostgreSQL outages, read-only SQLite, a full disk, bounded shutdown."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from typing import Any

import pytest
from store_testlib import PgCluster

from courier_pyfilter.store import (
    Store,
    StoreConfig,
    StoreError,
    StoreUnavailableError,
)

DAY = 86400.0


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_unreachable_postgres_fails_fast_at_start() -> None:
    config = StoreConfig(
        backend="postgres",
        dsn=f"postgresql://postgres:secret@127.0.0.1:{_closed_port()}/test",
        connect_timeout=2,
    )
    started = time.monotonic()
    with pytest.raises(StoreUnavailableError) as info:
        await Store.open(config)
    assert time.monotonic() - started < 5
    assert "cannot connect" in str(info.value)
    assert "secret" not in str(info.value)


async def test_postgres_restart_while_load_runs(pg_cluster: PgCluster) -> None:
    config = StoreConfig(
        backend="postgres", dsn=pg_cluster.dsn, connect_timeout=2, command_timeout=5
    )
    store = await Store.open(config, background_purge=False)
    db = await store.database("greylist_Passed", ttl=DAY)
    phase = ["up"]
    log: list[tuple[str, bool, float]] = []
    stop = asyncio.Event()

    async def worker(i: int) -> None:
        n = 0
        while not stop.is_set():
            current = phase[0]
            t0 = time.monotonic()
            try:
                await db.set(f"w{i}-{n}")
                await db.increment("counter", window=3600)
                await db.get(f"w{i}-{n}")
                ok = True
            except StoreError:
                ok = False
            if phase[0] == current:
                log.append((current, ok, time.monotonic() - t0))
            n += 1
            await asyncio.sleep(0.01)

    tasks = [asyncio.create_task(worker(i)) for i in range(8)]
    try:
        await asyncio.sleep(0.5)
        phase[0] = "stopping"
        await asyncio.to_thread(pg_cluster.stop)
        phase[0] = "down"
        await asyncio.sleep(1.0)
        phase[0] = "starting"
        await asyncio.to_thread(pg_cluster.start)
        phase[0] = "back"
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if sum(1 for p, ok, _ in log if p == "back" and ok) >= 20:
                break
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.wait_for(asyncio.gather(*tasks), 20)
        started = time.monotonic()
        await store.close(timeout=3)
        assert time.monotonic() - started < 5

    up = [(ok, d) for p, ok, d in log if p == "up"]
    down = [(ok, d) for p, ok, d in log if p == "down"]
    back = [(ok, d) for p, ok, d in log if p == "back"]
    assert up and all(ok for ok, _ in up)
    assert down, "no operation ran during the outage"
    assert not any(ok for ok, _ in down)  # the outage is reported, not hidden
    assert max(d for _, d in down) < 3  # and reported fast: no hang
    assert sum(1 for ok, _ in back if ok) >= 20  # the pool reconnected by itself
    # once recovered it stays recovered
    first_ok = next(i for i, (ok, _) in enumerate(back) if ok)
    assert all(ok for ok, _ in back[first_ok + 8 :])


async def test_postgres_close_is_bounded(pg_config: StoreConfig) -> None:
    store = await Store.open(pg_config, background_purge=False)
    pool = store.backend._pool  # type: ignore[attr-defined]
    conn = await pool.acquire()  # a connection that is never given back
    busy = asyncio.create_task(conn.execute("SELECT pg_sleep(30)"))
    await asyncio.sleep(0.1)
    started = time.monotonic()
    await store.close(timeout=1)
    assert time.monotonic() - started < 3
    with pytest.raises(BaseException):  # noqa: B017 - the terminated query fails somehow
        await asyncio.wait_for(busy, 5)


async def test_sqlite_read_only_open(sqlite_config: StoreConfig) -> None:
    async with await Store.open(sqlite_config, background_purge=False) as store:
        db = await store.database("auto_whitelist", ttl=DAY)
        await db.set("k")
    ro = sqlite_config.with_overrides(read_only=True)
    async with await Store.open(ro, background_purge=False) as store:
        db = await store.database("auto_whitelist", ttl=DAY)
        assert await db.contains("k")
        assert [i.name for i in await store.databases()] == ["auto_whitelist"]
        for write in (
            db.set("k2"),
            db.set_if_absent("k3"),
            db.increment("c", window=60),
            db.delete("k"),
            db.purge(),
        ):
            with pytest.raises(StoreError):
                await write
        assert await db.contains("k")


async def test_sqlite_read_only_missing_file(tmp_path: os.PathLike[str]) -> None:
    config = StoreConfig(path=os.path.join(tmp_path, "nope.sqlite3"), read_only=True)
    with pytest.raises(StoreUnavailableError):
        await Store.open(config)


async def test_sqlite_unopenable_path_is_store_error(tmp_path: os.PathLike[str]) -> None:
    blocker = os.path.join(tmp_path, "file")
    with open(blocker, "w") as f:
        f.write("x")
    config = StoreConfig(path=os.path.join(blocker, "sub", "ttldb.sqlite3"))
    with pytest.raises(StoreUnavailableError):
        await Store.open(config)


@pytest.fixture
def small_fs() -> Iterator[str]:
    """A 512 KiB tmpfs (needs root and mount permission; skipped otherwise)."""
    mountpoint = tempfile.mkdtemp(prefix="cpf-full-")
    if shutil.which("mount") is None:
        pytest.skip("no mount command: cannot simulate a full disk")
    proc = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", mountpoint],
        capture_output=True,
        text=True,
        check=False,
    )
    if proc.returncode != 0:
        os.rmdir(mountpoint)
        pytest.skip(f"cannot mount a small tmpfs here: {proc.stderr.strip()}")
    try:
        yield mountpoint
    finally:
        subprocess.run(["umount", "-l", mountpoint], check=False)
        os.rmdir(mountpoint)


async def test_sqlite_disk_full(small_fs: str) -> None:
    config = StoreConfig(path=os.path.join(small_fs, "ttldb.sqlite3"))
    async with await Store.open(config, background_purge=False) as store:
        db = await store.database("quarantine", ttl=DAY)
        await db.set("first", data="x")
        payload = "y" * 4000
        with pytest.raises(StoreError) as info:
            for i in range(1000):
                await db.set(f"k{i:04d}", data=payload)
        assert "full" in str(info.value).lower()
        # reads keep working and the store recovers once there is space again
        assert await db.contains("first")
        remount = ["mount", "-o", "remount,size=8m", small_fs]
        await asyncio.to_thread(subprocess.run, remount, check=True)
        await db.set("after", data=payload)
        assert await db.contains("after")


@pytest.mark.parametrize("in_thread", [True, False], ids=["one-hop", "async-fallback"])
async def test_sqlite_atomic_operations_with_and_without_the_one_hop_path(
    sqlite_config: StoreConfig, in_thread: bool
) -> None:
    """``set_if_absent`` and ``get_and_touch`` run in one hop to aiosqlite's thread; an
    aiosqlite without the private ``_execute`` gets the step-by-step transaction."""
    async with await Store.open(sqlite_config, background_purge=False) as store:
        backend: Any = store.backend
        if not in_thread:

            async def step_by_step(body: Any, fallback: Any) -> Any:
                return await backend._transaction(fallback)

            backend._transaction_in_thread = step_by_step
        db = await store.database("atomic", ttl=DAY)
        t = time.time()
        assert await db.get_and_touch("k", ts=t) is None
        assert await db.get_or_set("k", ts=t) == (t, True)
        assert await db.get_or_set("k", ts=t + 1) == (t, False)
        assert await db.get_and_touch("k", ts=t + 2) == t
        assert await db.get_and_touch("k", ts=t + 3) == t + 2
        results = await asyncio.gather(*(db.get_or_set("race", ts=t + i) for i in range(20)))
        assert sum(inserted for _ts, inserted in results) == 1
        assert len({ts for ts, _inserted in results}) == 1
