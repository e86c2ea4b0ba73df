"""The behavioural suite of the store, run against SQLite and PostgreSQL alike."""

from __future__ import annotations

import asyncio

import pytest
from store_testlib import FakeClock

from courier_pyfilter.store import Entry, Store, StoreConfig, StoreError

DAY = 86400.0


async def test_get_set_contains_delete(store: Store, clock: FakeClock) -> None:
    db = await store.database("auto_whitelist", ttl=30 * DAY, purge_interval=43200)
    assert await db.get("k1") is None
    assert not await db.contains("k1")
    await db.set("k1")
    assert await db.get("k1") == clock.now
    assert await db.contains("k1")
    await db.set("k1", 1234.5)
    assert await db.get("k1") is None  # stored, but long expired
    await db.set("k1", clock.now - 10)
    assert await db.get("k1") == clock.now - 10
    assert await db.delete("k1") == clock.now - 10
    assert await db.delete("k1") is None
    assert await db.get("k1") is None


async def test_float_timestamps_and_payload_round_trip(store: Store, clock: FakeClock) -> None:
    db = await store.database("quarantine", ttl=14 * DAY)
    await db.set("123", clock.now + 0.25, data='{"data": "D123"}')
    entry = await db.get_entry("123")
    assert entry == Entry("123", clock.now + 0.25, '{"data": "D123"}')


async def test_databases_are_separate(store: Store) -> None:
    a = await store.database("greylist_Passed", ttl=DAY)
    b = await store.database("greylist_NotPassed", ttl=DAY)
    await a.set("same", 1_700_000_000.0)
    assert await b.get("same") is None
    assert await a.get("same") == 1_700_000_000.0


async def test_entries_expire_with_the_clock(store: Store, clock: FakeClock) -> None:
    db = await store.database("correspondents", ttl=100, purge_interval=60)
    await db.set("old")
    clock.advance(99)
    assert await db.contains("old")
    clock.advance(2)
    assert await db.get("old") is None
    assert not await db.contains("old")
    assert await db.get_and_touch("old") is None
    # an expired entry does not block set_if_absent
    assert await db.set_if_absent("old")
    assert await db.get("old") == clock.now


async def test_purge_removes_only_entries_older_than_ttl(store: Store, clock: FakeClock) -> None:
    db = await store.database("goodsenders", ttl=1000, purge_interval=60)
    await db.set("stale", clock.now - 1001)
    await db.set("edge", clock.now - 1000)
    await db.set("fresh", clock.now)
    await db.increment("ctr", window=60, now=clock.now - 2000)
    await db.increment("ctr", window=60)
    removed = await db.purge()
    assert removed == 2  # one entry and one old counter bucket
    keys = [e.key async for e in db.keys(include_expired=True)]
    assert keys == ["edge", "fresh"]
    assert [r.count async for r in db.counters()] == [1]
    assert db.last_purge == clock.now
    other = await store.database("badsenders", ttl=1, purge_interval=60)
    await other.set("x", clock.now - 10)
    assert await db.purge() == 0  # purging one database leaves the others alone
    assert [e.key async for e in other.keys(include_expired=True)] == ["x"]


async def test_set_if_absent_and_get_or_set(store: Store, clock: FakeClock) -> None:
    db = await store.database("greylist_NotPassed", ttl=DAY)
    first = clock.now
    assert await db.get_or_set("t") == (first, True)
    clock.advance(30)
    assert await db.get_or_set("t") == (first, False)  # first-seen time is kept
    assert not await db.set_if_absent("t")
    assert await db.get("t") == first


async def test_set_if_absent_has_exactly_one_winner(store: Store) -> None:
    db = await store.database("race", ttl=DAY)
    results = await asyncio.gather(*(db.set_if_absent("k") for _ in range(50)))
    assert results.count(True) == 1


async def test_delete_claims_exactly_once(store: Store, clock: FakeClock) -> None:
    db = await store.database("race2", ttl=DAY)
    await db.set("k")
    results = await asyncio.gather(*(db.delete("k") for _ in range(20)))
    assert [r for r in results if r is not None] == [clock.now]


async def test_get_and_touch_returns_old_and_refreshes(store: Store, clock: FakeClock) -> None:
    db = await store.database("dialback", ttl=DAY)
    assert await db.get_and_touch("s") is None
    assert await db.get("s") is None  # touching an absent key does not create it
    await db.set("s")
    old = clock.now
    clock.advance(500)
    assert await db.get_and_touch("s") == old
    assert await db.get("s") == clock.now


async def test_increment_fixed_window(store: Store, clock: FakeClock) -> None:
    db = await store.database("ratelimit", ttl=60)
    clock.now = 6000.0  # start of a minute
    assert [await db.increment("ip", window=60) for _ in range(3)] == [1, 2, 3]
    assert await db.increment("other", window=60) == 1
    clock.advance(59.9)
    assert await db.increment("ip", window=60, amount=2) == 5
    clock.advance(0.2)  # next minute: a fresh window
    assert await db.increment("ip", window=60) == 1
    assert await db.count("ip", window=60) == 1


async def test_increment_sliding_buckets(store: Store, clock: FakeClock) -> None:
    db = await store.database("ratelimitauth", ttl=300)
    clock.now = 60_000.0
    for minute in range(5):
        total = await db.increment("u", window=300, buckets=5, now=clock.now + 60 * minute)
        assert total == minute + 1
    # one minute later the first bucket has left the 5-minute window
    assert await db.increment("u", window=300, buckets=5, now=clock.now + 300) == 5
    assert await db.count("u", window=300, buckets=5, now=clock.now + 300) == 5
    assert await db.count("u", window=300, buckets=5, now=clock.now + 10_000) == 0


async def test_concurrent_increments_are_exact(store: Store) -> None:
    db = await store.database("ratelimit", ttl=3600)
    totals = await asyncio.gather(*(db.increment("ip", window=3600) for _ in range(200)))
    assert sorted(totals) == list(range(1, 201))


async def test_increment_rejects_bad_windows(store: Store) -> None:
    db = await store.database("ratelimit", ttl=60)
    with pytest.raises(ValueError):
        await db.increment("k", window=0)
    with pytest.raises(ValueError):
        await db.increment("k", window=60, buckets=0)


async def test_keys_lists_live_entries_in_order(store: Store, clock: FakeClock) -> None:
    db = await store.database("many", ttl=100)
    await db.import_entries([Entry(f"k{i:05d}", clock.now) for i in (0, 1000, 2000)])
    await db.import_entries([Entry(f"b{i:05d}", clock.now) for i in range(2100)])
    await db.set("expired", clock.now - 200)
    live = [e.key async for e in db.keys()]  # noqa: SIM118 (not a dict)
    assert live == sorted(live)
    assert len(live) == 2100 + 3
    assert "expired" not in live
    assert "expired" in [e.key async for e in db.keys(include_expired=True)]


async def test_import_keeps_the_newer_timestamp(store: Store, clock: FakeClock) -> None:
    db = await store.database("imp", ttl=DAY)
    await db.set("a", clock.now - 10)
    await db.set("b", clock.now - 10)
    await db.import_entries([Entry("a", clock.now - 20), Entry("b", clock.now - 5)])
    assert await db.get("a") == clock.now - 10
    assert await db.get("b") == clock.now - 5


async def test_dry_run_skips_writes(store_config: StoreConfig, clock: FakeClock) -> None:
    async with await Store.open(store_config, clock=clock, background_purge=False) as real:
        db = await real.database("g", ttl=DAY)
        await db.set("present", clock.now - 5)
        await db.increment("c", window=60)
    async with await Store.open(
        store_config, clock=clock, dry_run=True, background_purge=False
    ) as dry:
        db = await dry.database("g", ttl=DAY)
        assert db.dry_run
        await db.set("new")
        assert await db.set_if_absent("other") is True
        assert await db.set_if_absent("other") is True  # nothing was written
        assert await db.get_or_set("present") == (clock.now - 5, False)
        assert await db.increment("c", window=60) == 2
        assert await db.increment("c", window=60) == 2
        assert await db.delete("present") == clock.now - 5
        assert await db.get("present") == clock.now - 5
        assert await db.get_and_touch("present") == clock.now - 5
        assert await db.get("present") == clock.now - 5
        assert await db.purge() == 0
        assert await db.get("new") is None


async def test_lock_serialises_legacy_read_modify_write(store: Store) -> None:
    db = await store.database("legacy", ttl=DAY)
    again = await store.database("legacy", ttl=DAY)
    assert again is db  # one handle per name, so one lock

    async def bump() -> None:
        async with db.lock():
            value = await db.get("n") or 1_700_000_000.0
            await asyncio.sleep(0)
            await db.set("n", value + 1)

    await asyncio.gather(*(bump() for _ in range(20)))
    assert await db.get("n") == 1_700_000_020.0


async def test_databases_lists_registered_and_counts(store: Store, clock: FakeClock) -> None:
    a = await store.database("alpha", ttl=100, purge_interval=10)
    await store.database("beta", ttl=200, purge_interval=20)
    await a.set("x")
    await a.increment("c", window=60)
    infos = {i.name: i for i in await store.databases()}
    assert set(infos) == {"alpha", "beta"}
    assert (infos["alpha"].ttl, infos["alpha"].purge_interval) == (100, 10)
    assert (infos["alpha"].entries, infos["alpha"].counters) == (1, 1)
    assert (infos["beta"].entries, infos["beta"].counters) == (0, 0)
    # re-opening with other settings updates the registry
    await store.database("beta", ttl=300, purge_interval=30)
    infos = {i.name: i for i in await store.databases()}
    assert infos["beta"].ttl == 300


async def test_purge_all_uses_registered_ttls(store: Store, clock: FakeClock) -> None:
    short = await store.database("short", ttl=10)
    long = await store.database("long", ttl=1000)
    await short.set("k", clock.now - 50)
    await long.set("k", clock.now - 50)
    assert await store.purge_all() == {"short": 1, "long": 0}


async def test_background_purge_runs(store_config: StoreConfig, clock: FakeClock) -> None:
    async with await Store.open(store_config, clock=clock, background_purge=False) as s:
        db = await s.database("bg", ttl=10)
        await db.set("old", clock.now - 100)
    async with await Store.open(store_config, clock=clock) as s:
        db = await s.database("bg", ttl=10, purge_interval=0.05)
        for _ in range(100):
            if not [e async for e in db.keys(include_expired=True)]:
                break
            await asyncio.sleep(0.05)
        assert [e async for e in db.keys(include_expired=True)] == []
        await db.set("old2", clock.now - 100)
        for _ in range(100):
            if not [e async for e in db.keys(include_expired=True)]:
                break
            await asyncio.sleep(0.05)
        assert [e async for e in db.keys(include_expired=True)] == []


async def test_closed_store_raises_store_error(store_config: StoreConfig) -> None:
    s = await Store.open(store_config, background_purge=False)
    db = await s.database("c", ttl=10)
    await s.close()
    with pytest.raises(StoreError):
        await db.get("k")
    with pytest.raises(StoreError):
        await db.set("k")
    with pytest.raises(StoreError):
        await s.database("d", ttl=10)
    await s.close()  # idempotent


async def test_database_argument_validation(store: Store) -> None:
    with pytest.raises(ValueError):
        await store.database("x", ttl=0)
    with pytest.raises(ValueError):
        await store.database("", ttl=10)
    with pytest.raises(ValueError):
        await store.database("x", ttl=10, purge_interval=-1)
