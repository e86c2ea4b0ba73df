"""``ratelimit``: the original's per-minute windows and replies, counted in the store."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.api import Context
from courier_pyfilter.decision import CONTINUE, Decision, Verdict
from courier_pyfilter.filters.ratelimit import RATELIMIT_DB, RateLimit
from courier_pyfilter.message import Message
from courier_pyfilter.store import Store, StoreError
from courier_pyfilter.testing import MessageFactory, make_context

MINUTE = 60.0
M0 = 28_333_333 * MINUTE  # the start of a calendar minute (1_699_999_980)


def _slow_down(ip: str) -> str:
    return f"421 Too many messages from {ip}, slow down."


async def _ratelimit(store: Store, clock: Any, **settings: Any) -> RateLimit:
    ctx: Context = make_context("ratelimit", settings, defaults=RateLimit.defaults, clock=clock)
    ctx.services.put("store", store)
    flt = RateLimit(ctx)
    await flt.start()
    return flt


async def _run(flt: RateLimit, msg: Message) -> Decision:
    return await flt.check(msg, flt.ctx)


async def _send(flt: RateLimit, messages: MessageFactory, n: int, **kw: Any) -> list[Decision]:
    return [await _run(flt, messages(**kw)) for _ in range(n)]


@pytest.fixture
def messages(tmp_path: Path) -> MessageFactory:
    return MessageFactory(tmp_path, client_ip="192.0.2.1")


async def test_sixty_per_calendar_minute(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = M0 + 50  # late in the minute: the window is the calendar minute
    flt = await _ratelimit(store, clock)
    assert all(d is CONTINUE for d in await _send(flt, messages, 60))
    over = await _run(flt, messages())
    assert over.verdict is Verdict.TEMPFAIL
    assert over.reply() == _slow_down("192.0.2.1")
    clock.now = M0 + 59.999
    assert (await _run(flt, messages())).reply() == _slow_down("192.0.2.1")
    clock.now = M0 + MINUTE  # the next minute starts from zero
    assert all(d is CONTINUE for d in await _send(flt, messages, 60))
    assert (await _run(flt, messages())).reply() == _slow_down("192.0.2.1")


async def test_window_of_several_minutes_counts_per_minute_buckets(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    flt = await _ratelimit(store, clock, max_connections=5, interval=3)
    clock.now = M0 + 30
    assert all(d is CONTINUE for d in await _send(flt, messages, 2))
    clock.now = M0 + MINUTE + 30
    assert all(d is CONTINUE for d in await _send(flt, messages, 2))
    clock.now = M0 + 2 * MINUTE + 30
    assert await _run(flt, messages()) is CONTINUE  # 5 in minutes 0..2
    assert (await _run(flt, messages())).reply() == _slow_down("192.0.2.1")  # 6, counted
    # minute 3: window 1..3 holds 2 + 2 (+1 refused) = 4 before this one
    clock.now = M0 + 3 * MINUTE
    assert await _run(flt, messages()) is CONTINUE
    assert (await _run(flt, messages())).reply() == _slow_down("192.0.2.1")
    # minute 5: window 3..5 holds the 2 of minute 3
    clock.now = M0 + 5 * MINUTE + 59
    assert all(d is CONTINUE for d in await _send(flt, messages, 3))
    assert (await _run(flt, messages())).verdict is Verdict.TEMPFAIL
    db = await flt.database()
    assert await db.count("192.0.2.1", window=180, buckets=3, now=clock.now) == 6


async def test_count_rejected_false_counts_only_accepted_messages(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = M0
    counting = await _ratelimit(store, clock, max_connections=2)
    await _send(counting, messages, 5)
    db = await counting.database()
    assert await db.count("192.0.2.1", window=60, now=M0) == 5  # the original's way

    lenient = await _ratelimit(store, clock, max_connections=2, count_rejected=False)
    results = await _send(lenient, messages, 5, client_ip="192.0.2.2")
    assert [d is CONTINUE for d in results] == [True, True, False, False, False]
    assert await db.count("192.0.2.2", window=60, now=M0) == 2


async def test_each_address_has_its_own_counter(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = M0
    flt = await _ratelimit(store, clock, max_connections=1)
    assert await _run(flt, messages(client_ip="192.0.2.1")) is CONTINUE
    assert await _run(flt, messages(client_ip="192.0.2.2")) is CONTINUE
    assert (await _run(flt, messages(client_ip="192.0.2.1"))).verdict is Verdict.TEMPFAIL
    db = await flt.database()
    assert db.name == RATELIMIT_DB
    assert sorted({row.key async for row in db.counters()}) == ["192.0.2.1", "192.0.2.2"]


async def test_limit_network(store: Store, clock: Any, messages: MessageFactory) -> None:
    clock.now = M0
    flt = await _ratelimit(store, clock, max_connections=2, limit_network=True)
    assert await _run(flt, messages(client_ip="192.0.2.1")) is CONTINUE
    assert await _run(flt, messages(client_ip="192.0.2.200")) is CONTINUE
    # the reply names the client itself, not its network
    assert (await _run(flt, messages(client_ip="192.0.2.7"))).reply() == _slow_down("192.0.2.7")
    assert await _run(flt, messages(client_ip="192.0.3.1")) is CONTINUE
    # IPv6: the first three groups
    assert await _run(flt, messages(client_ip="2001:db8:1::1")) is CONTINUE
    assert await _run(flt, messages(client_ip="2001:db8:1:ff::2")) is CONTINUE
    over = await _run(flt, messages(client_ip="2001:db8:1:0:0:0:0:3"))
    assert over.reply() == _slow_down("2001:db8:1::3")
    assert await _run(flt, messages(client_ip="2001:db8:2::1")) is CONTINUE
    db = await flt.database()
    keys = {row.key async for row in db.counters()}
    assert keys == {"192.0.2", "192.0.3", "2001:0db8:0001", "2001:0db8:0002"}


async def test_addresses_as_the_original_shows_them(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = M0
    flt = await _ratelimit(store, clock, max_connections=0)
    mapped = await _run(flt, messages(client_ip="192.0.2.9", ipv4_mapped=True))
    assert mapped.reply() == _slow_down("192.0.2.9")
    v6 = await _run(flt, messages(client_ip="2001:0db8:0000:0000:0000:0000:0000:0001"))
    assert v6.reply() == _slow_down("2001:db8::1")


async def test_messages_without_client_address_share_one_counter(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = M0
    flt = await _ratelimit(store, clock, max_connections=1)
    assert await _run(flt, messages(client_ip=None)) is CONTINUE
    over = await _run(flt, messages(client_ip=None, extra_records=["OTCPREMOTEIP=junk"]))
    assert over.reply() == _slow_down("unknown")


async def test_concurrent_messages_are_counted_exactly(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = M0 + 10
    flt = await _ratelimit(store, clock)
    batch = [messages() for _ in range(100)]
    results = await asyncio.gather(*(_run(flt, m) for m in batch))
    assert sum(r is CONTINUE for r in results) == 60
    assert {r.reply() for r in results if r is not CONTINUE} == {_slow_down("192.0.2.1")}
    db = await flt.database()
    assert await db.count("192.0.2.1", window=60, now=clock.now) == 100


async def test_counters_survive_a_new_filter_instance(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    # e.g. a reload or a restart: the counts are in the store, not in the process
    clock.now = M0
    first = await _ratelimit(store, clock, max_connections=3)
    await _send(first, messages, 3)
    second = await _ratelimit(store, clock, max_connections=3)
    assert (await _run(second, messages())).verdict is Verdict.TEMPFAIL


async def test_store_failure_raises(
    store: Store, clock: Any, messages: MessageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    flt = await _ratelimit(store, clock)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("backend down")

    monkeypatch.setattr(store.backend, "increment", broken)
    with pytest.raises(StoreError):
        await _run(flt, messages())
    assert RateLimit.whitelist is False  # so the chain tempfails


@pytest.mark.parametrize(
    "settings",
    [
        {"max_connections": -1},
        {"max_connections": 2.5},
        {"interval": 0},
        {"interval": "1"},
        {"limit_network": "yes"},
        {"count_rejected": None},
        {"senders_purge_interval": 0},
    ],
)
async def test_bad_settings_stop_the_start(
    store: Store, clock: Any, settings: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match=next(iter(settings))):
        await _ratelimit(store, clock, **settings)


def test_defaults_are_the_originals() -> None:
    assert RateLimit.defaults["max_connections"] == 60
    assert RateLimit.defaults["interval"] == 1
    assert RateLimit.defaults["senders_purge_interval"] == 43200
    assert RateLimit.defaults["limit_network"] is False


def test_loaded_by_name() -> None:
    from courier_pyfilter.filters import ratelimit
    from courier_pyfilter.loader import find_module

    assert find_module("ratelimit").module is ratelimit
