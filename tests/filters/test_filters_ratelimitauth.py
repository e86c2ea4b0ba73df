"""``ratelimitauth``: 50 messages per 120 minutes per SMTP AUTH user, counted in the store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.api import Context
from courier_pyfilter.decision import CONTINUE, Decision, Verdict
from courier_pyfilter.filters import ratelimitauth
from courier_pyfilter.filters.ratelimitauth import RATELIMITAUTH_DB, RateLimitAuth
from courier_pyfilter.loader import find_module
from courier_pyfilter.message import Message
from courier_pyfilter.store import Store
from courier_pyfilter.testing import MessageFactory, make_context

MINUTE = 60.0
M0 = 28_333_333 * MINUTE


def _exceeded(user: str) -> str:
    return f"421 User {user} has exceeded sending limits; wait awhile and try again."


async def _limit(store: Store, clock: Any, **settings: Any) -> RateLimitAuth:
    ctx: Context = make_context(
        "ratelimitauth", settings, defaults=RateLimitAuth.defaults, clock=clock
    )
    ctx.services.put("store", store)
    flt = RateLimitAuth(ctx)
    await flt.start()
    return flt


async def _run(flt: RateLimitAuth, msg: Message) -> Decision:
    return await flt.check(msg, flt.ctx)


@pytest.fixture
def messages(tmp_path: Path) -> MessageFactory:
    return MessageFactory(tmp_path, auth_user="alice", client_ip="198.51.100.4")


async def test_fifty_per_two_hours(store: Store, clock: Any, messages: MessageFactory) -> None:
    clock.now = M0 + 30
    flt = await _limit(store, clock)
    assert all([await _run(flt, messages()) is CONTINUE for _ in range(50)])
    over = await _run(flt, messages())
    assert over.verdict is Verdict.TEMPFAIL
    assert over.reply() == _exceeded("alice")
    # still inside the 120-minute window of the first minute's messages
    clock.now = M0 + 119 * MINUTE + 59
    assert (await _run(flt, messages())).reply() == _exceeded("alice")
    # minute 120: the first minute's 51 messages have left the window; one is left
    clock.now = M0 + 120 * MINUTE
    assert all([await _run(flt, messages()) is CONTINUE for _ in range(49)])
    assert (await _run(flt, messages())).verdict is Verdict.TEMPFAIL
    db = await flt.database()
    assert db.name == RATELIMITAUTH_DB == "ratelimitauth"
    assert {row.key async for row in db.counters()} == {"alice"}


async def test_users_are_counted_separately_from_any_address(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = M0
    flt = await _limit(store, clock, max_connections=1, interval=1)
    assert await _run(flt, messages(client_ip="192.0.2.1")) is CONTINUE
    assert await _run(flt, messages(auth_user="bob")) is CONTINUE
    assert (await _run(flt, messages(client_ip="192.0.2.99"))).reply() == _exceeded("alice")


async def test_unauthenticated_mail_is_not_counted(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    flt = await _limit(store, clock, max_connections=0)
    assert await _run(flt, messages(auth_user=None)) is CONTINUE
    assert await _run(flt, messages(auth_user=None, extra_records=["i"])) is CONTINUE
    db = await flt.database()
    assert [row async for row in db.counters()] == []
    assert (await _run(flt, messages())).reply() == _exceeded("alice")


async def test_count_rejected_false(store: Store, clock: Any, messages: MessageFactory) -> None:
    clock.now = M0
    flt = await _limit(store, clock, max_connections=1, interval=1, count_rejected=False)
    results = [await _run(flt, messages()) for _ in range(3)]
    assert [r is CONTINUE for r in results] == [True, False, False]
    db = await flt.database()
    assert await db.count("alice", window=60, now=M0) == 1


def test_loaded_by_name_with_the_originals_defaults() -> None:
    loaded = find_module("ratelimitauth")
    assert loaded.module is ratelimitauth
    assert ratelimitauth.FILTER is RateLimitAuth
    assert RateLimitAuth.defaults["max_connections"] == 50
    assert RateLimitAuth.defaults["interval"] == 120
    assert RateLimitAuth.defaults["senders_purge_interval"] == 43200
