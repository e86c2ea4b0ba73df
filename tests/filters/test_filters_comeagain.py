"""``comeagain``: one 421 per new (sender, recipient) pair, keys and lifetimes as the original."""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.api import Context
from courier_pyfilter.decision import CONTINUE, Decision, Verdict
from courier_pyfilter.filters.comeagain import CORRESPONDENTS_DB, NO_SENDER, ComeAgain
from courier_pyfilter.message import Message
from courier_pyfilter.store import Store, StoreError, TtlDb
from courier_pyfilter.testing import MessageFactory, make_context

T0 = 1_700_000_000.0
COME_AGAIN = "421 Please send the message again to prove you are not spamware or virusware."
DAY = 86400


async def _comeagain(store: Store, clock: Any, **settings: Any) -> ComeAgain:
    ctx: Context = make_context("comeagain", settings, defaults=ComeAgain.defaults, clock=clock)
    ctx.services.put("store", store)
    flt = ComeAgain(ctx)
    await flt.start()
    return flt


async def _run(flt: ComeAgain, msg: Message) -> Decision:
    return await flt.check(msg, flt.ctx)


async def _keys(db: TtlDb) -> dict[str, float]:
    entries = db.keys()
    return {e.key: e.ts async for e in entries}


def _md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


@pytest.fixture
def messages(tmp_path: Path) -> MessageFactory:
    return MessageFactory(tmp_path, sender="a@example.com", recipients=("b@example.net",))


async def test_first_message_421_then_an_immediate_retry_passes(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = T0 + 0.75
    flt = await _comeagain(store, clock)
    first = await _run(flt, messages())
    assert first.verdict is Verdict.TEMPFAIL
    assert first.reply() == COME_AGAIN
    assert await _run(flt, messages()) is CONTINUE  # no minimum delay
    db = await flt.database()
    assert db.name == CORRESPONDENTS_DB == "correspondents"
    assert await _keys(db) == {_md5("a@example.comb@example.net"): T0}  # whole seconds


async def test_known_pairs_are_refreshed_and_expire_after_silence(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = T0
    flt = await _comeagain(store, clock)
    await _run(flt, messages())
    db = await flt.database()
    for days in (20, 40, 60):  # each message refreshes the 30-day lifetime
        clock.now = T0 + days * DAY
        assert await _run(flt, messages()) is CONTINUE
        assert await db.get(_md5("a@example.comb@example.net")) == clock.now
    clock.now += 30 * DAY + 1
    assert (await _run(flt, messages())).reply() == COME_AGAIN


async def test_keys_keep_the_case_and_ignore_the_client(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    flt = await _comeagain(store, clock)
    await _run(flt, messages(client_ip="192.0.2.1"))
    # another client address: still the same pair
    assert await _run(flt, messages(client_ip="2001:db8::1")) is CONTINUE
    assert await _run(flt, messages(client_ip=None)) is CONTINUE
    # the key is case-sensitive, as in the original
    assert (await _run(flt, messages(sender="A@Example.com"))).reply() == COME_AGAIN
    db = await flt.database()
    assert set(await _keys(db)) == {
        _md5("a@example.comb@example.net"),
        _md5("A@Example.comb@example.net"),
    }


async def test_every_new_recipient_is_remembered(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    flt = await _comeagain(store, clock)
    await _run(flt, messages(recipients=("one@example.net",)))
    pair = messages(recipients=("one@example.net", "two@example.net"))
    assert (await _run(flt, pair)).reply() == COME_AGAIN
    assert await _run(flt, pair) is CONTINUE


async def test_imported_pair_passes(store: Store, clock: Any, messages: MessageFactory) -> None:
    clock.now = T0
    flt = await _comeagain(store, clock)
    db = await flt.database()
    await db.set(hashlib.md5(b"a@example.comb@example.net").hexdigest(), T0 - DAY)
    assert await _run(flt, messages()) is CONTINUE


async def test_fifty_concurrent_first_messages(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    flt = await _comeagain(store, clock)
    batch = [messages() for _ in range(50)]
    replies = await asyncio.gather(*(_run(flt, m) for m in batch))
    refused = [r for r in replies if r is not CONTINUE]
    assert refused  # at least the first one to reach the store
    assert {r.reply() for r in refused} == {COME_AGAIN}
    assert len(await _keys(await flt.database())) == 1
    assert await _run(flt, messages()) is CONTINUE


async def test_null_sender_continues_and_stores_nothing(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    flt = await _comeagain(store, clock)
    assert await _run(flt, messages(sender="")) is CONTINUE
    assert await _keys(await flt.database()) == {}


def _without_sender(msg: Message) -> Message:
    for path in msg.control_paths:
        lines = Path(path).read_bytes().splitlines(keepends=True)
        Path(path).write_bytes(b"".join(line for line in lines if not line.startswith(b"s")))
    return Message(msg.data_path, msg.control_paths)


async def test_missing_sender_record_tempfails(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    flt = await _comeagain(store, clock)
    decision = await _run(flt, _without_sender(messages()))
    assert decision.reply() == "451 " + NO_SENDER


async def test_store_failure_raises(
    store: Store, clock: Any, messages: MessageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    flt = await _comeagain(store, clock)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("backend down")

    monkeypatch.setattr(store.backend, "touch", broken)
    with pytest.raises(StoreError):
        await _run(flt, messages())
    assert ComeAgain.whitelist is False  # so the chain tempfails


@pytest.mark.parametrize("settings", [{"senders_ttl": 0}, {"senders_purge_interval": "1h"}])
async def test_bad_settings_stop_the_start(
    store: Store, clock: Any, settings: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match=next(iter(settings))):
        await _comeagain(store, clock, **settings)


def test_defaults_are_the_originals() -> None:
    assert ComeAgain.defaults == {"senders_ttl": 2592000, "senders_purge_interval": 43200}


def test_loaded_by_name() -> None:
    from courier_pyfilter.filters import comeagain
    from courier_pyfilter.loader import find_module

    assert find_module("comeagain").module is comeagain
