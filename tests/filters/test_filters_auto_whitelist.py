"""``auto_whitelist``: learns correspondents of authenticated users, whitelists replies.

The store-backed tests run against SQLite and PostgreSQL with the store suite's own
fixtures (``tests/store/conftest.py``, imported below): PostgreSQL tests skip without a
server and fail under ``CI=true``.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from store_testlib import FakeClock

from courier_pyfilter.chain import Chain
from courier_pyfilter.decision import CONTINUE, Verdict
from courier_pyfilter.filters.auto_whitelist import DATABASE, AutoWhitelist, pair_key
from courier_pyfilter.legacyconf import parse_chain_config, parse_modules_config
from courier_pyfilter.loader import FilterLoadError, build_chain
from courier_pyfilter.message import Message
from courier_pyfilter.services import Services
from courier_pyfilter.settings import Settings
from courier_pyfilter.store import Entry, Store
from courier_pyfilter.testing import MessageFactory, make_context

DAY = 86400.0
ALICE = "Alice@Example.COM"  # a local user (authenticates)
BOB = "bob@Remote.org"  # her correspondent


def md5(text: str) -> str:
    """The original's key: MD5 hex of the plain concatenation (lower-cased)."""
    return hashlib.md5(text.encode("utf-8")).hexdigest()


@pytest.fixture
def msgdir(tmp_path: Path) -> Path:
    path = tmp_path / "msgs"
    path.mkdir()
    return path


@pytest.fixture
def messages(msgdir: Path) -> MessageFactory:
    return MessageFactory(msgdir)


@pytest.fixture
async def flt(store: Store, clock: FakeClock, msgdir: Path) -> AsyncIterator[AutoWhitelist]:
    """A started filter using the fixture store (no background purge, fake clock)."""
    ctx = make_context("auto_whitelist", defaults=AutoWhitelist.defaults, clock=clock)
    ctx.services.put("store", store)
    f = AutoWhitelist(ctx)
    await f.start()
    yield f
    await ctx.services.close()


def drop_sender_record(path: str) -> None:
    """Remove the ``s`` line from a control file (a malformed control file)."""
    lines = Path(path).read_bytes().splitlines(True)
    Path(path).write_bytes(b"".join(ln for ln in lines if not ln.startswith(b"s")))


async def entries(store: Store) -> dict[str, float]:
    db = await store.database(DATABASE, ttl=30 * DAY)
    return {e.key: e.ts async for e in db.keys(include_expired=True)}


def test_key_format_is_the_originals() -> None:
    assert pair_key("Alice@Example.COM", "Bob@Remote.ORG") == md5("alice@example.combob@remote.org")
    assert pair_key("a@b.c", "d@e.f") == "f97a779fde21654f0e8ab23f24df4617"
    assert md5("a@b.cd@e.f") == "f97a779fde21654f0e8ab23f24df4617"


def test_it_is_a_whitelist_with_the_originals_defaults() -> None:
    assert AutoWhitelist.whitelist is True
    assert AutoWhitelist.defaults == {"whitelist_ttl": 2592000, "whitelist_purge_interval": 43200}


# -- recording -------------------------------------------------------------------------------


async def test_authenticated_message_records_each_recipient(
    flt: AutoWhitelist, store: Store, clock: FakeClock, messages: MessageFactory
) -> None:
    msg = messages(
        sender=ALICE, auth_user="alice", recipients=[BOB, "Carol@x.net", "alice@example.com"]
    )
    assert await flt.check(msg, flt.ctx) is CONTINUE
    assert await entries(store) == {
        md5("alice@example.combob@remote.org"): clock.now,
        md5("alice@example.comcarol@x.net"): clock.now,
        # the sender writing to herself is not recorded
    }


async def test_recording_again_refreshes_the_timestamp(
    flt: AutoWhitelist, store: Store, clock: FakeClock, messages: MessageFactory
) -> None:
    await flt.check(messages(sender=ALICE, auth_user="alice", recipients=[BOB]), flt.ctx)
    clock.advance(1000)
    await flt.check(messages(sender=ALICE, auth_user="alice", recipients=[BOB, BOB]), flt.ctx)
    assert await entries(store) == {md5("alice@example.combob@remote.org"): clock.now}


async def test_empty_auth_user_is_not_authenticated(
    flt: AutoWhitelist, store: Store, messages: MessageFactory
) -> None:
    msg = messages(sender=ALICE, recipients=[BOB], extra_records=["i"])
    assert msg.auth_user == ""
    assert await flt.check(msg, flt.ctx) is CONTINUE
    assert await entries(store) == {}


async def test_authenticated_null_sender_records_like_the_original(
    flt: AutoWhitelist, store: Store, clock: FakeClock, messages: MessageFactory
) -> None:
    await flt.check(messages(sender="", auth_user="alice", recipients=[BOB]), flt.ctx)
    assert await entries(store) == {md5("bob@remote.org"): clock.now}


# -- checking --------------------------------------------------------------------------------


async def test_reply_from_a_correspondent_is_accepted(
    flt: AutoWhitelist, messages: MessageFactory
) -> None:
    await flt.check(messages(sender=ALICE, auth_user="alice", recipients=[BOB]), flt.ctx)
    reply = messages(sender="BOB@remote.ORG", recipients=["alice@EXAMPLE.com"])
    decision = await flt.check(reply, flt.ctx)
    assert decision.verdict is Verdict.ACCEPT
    assert decision.reply() == "200 Ok"


async def test_every_recipient_must_have_written_to_the_sender(
    flt: AutoWhitelist, messages: MessageFactory
) -> None:
    await flt.check(messages(sender=ALICE, auth_user="alice", recipients=[BOB]), flt.ctx)
    both = messages(sender=BOB, recipients=[ALICE, "dave@example.com"])
    assert await flt.check(both, flt.ctx) is CONTINUE
    assert (await flt.check(messages(sender=BOB, recipients=[ALICE]), flt.ctx)).reply() == (
        "200 Ok"
    )


async def test_unknown_sender_and_wrong_direction_continue(
    flt: AutoWhitelist, messages: MessageFactory
) -> None:
    await flt.check(messages(sender=ALICE, auth_user="alice", recipients=[BOB]), flt.ctx)
    assert await flt.check(messages(sender="eve@remote.org", recipients=[ALICE]), flt.ctx) is (
        CONTINUE
    )
    # Alice writing to Bob does not whitelist (unauthenticated) mail from Alice to Bob
    assert await flt.check(messages(sender=ALICE, recipients=[BOB]), flt.ctx) is CONTINUE


async def test_lookups_do_not_refresh_and_pairs_expire_after_the_ttl(
    flt: AutoWhitelist, store: Store, clock: FakeClock, messages: MessageFactory
) -> None:
    await flt.check(messages(sender=ALICE, auth_user="alice", recipients=[BOB]), flt.ctx)
    recorded = clock.now
    clock.advance(30 * DAY - 10)
    reply = messages(sender=BOB, recipients=[ALICE])
    assert (await flt.check(reply, flt.ctx)).verdict is Verdict.ACCEPT
    assert await entries(store) == {md5("alice@example.combob@remote.org"): recorded}
    clock.advance(11)
    assert await flt.check(messages(sender=BOB, recipients=[ALICE]), flt.ctx) is CONTINUE


async def test_state_imported_from_the_original_is_used(
    flt: AutoWhitelist, store: Store, clock: FakeClock, messages: MessageFactory
) -> None:
    db = await store.database(DATABASE, ttl=30 * DAY)
    # what `store migrate` / the dbm import write: the original's keys, whole seconds
    await db.import_entries([Entry(md5("alice@example.combob@remote.org"), int(clock.now) - 5)])
    decision = await flt.check(messages(sender=BOB, recipients=[ALICE]), flt.ctx)
    assert decision.reply() == "200 Ok"


async def test_no_pending_recipients_is_not_whitelisted(
    flt: AutoWhitelist, store: Store, messages: MessageFactory
) -> None:
    await flt.check(messages(sender=ALICE, auth_user="alice", recipients=[BOB]), flt.ctx)
    none = messages(sender=BOB, recipients=[])
    assert none.recipients == ()
    assert await flt.check(none, flt.ctx) is CONTINUE
    # all recipients already delivered (S record) counts as none pending
    done = messages(sender=BOB, recipients=[ALICE], extra_records=["S0 1700000000"])
    assert done.recipients == ()
    assert await flt.check(done, flt.ctx) is CONTINUE


async def test_null_sender_is_not_whitelisted(flt: AutoWhitelist, messages: MessageFactory) -> None:
    await flt.check(messages(sender=ALICE, auth_user="alice", recipients=[BOB]), flt.ctx)
    assert await flt.check(messages(sender="", recipients=[ALICE]), flt.ctx) is CONTINUE


async def test_missing_sender_record_continues_and_logs(
    flt: AutoWhitelist, store: Store, messages: MessageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    for auth in ("alice", None):
        msg = messages(sender=ALICE, auth_user=auth, recipients=[BOB])
        drop_sender_record(msg.control_paths[0])
        fresh = Message(msg.data_path, msg.control_paths)
        assert fresh.sender is None
        with caplog.at_level(logging.WARNING):
            assert await flt.check(fresh, flt.ctx) is CONTINUE
        assert f"auto_whitelist: {fresh.msgid} has no envelope sender record" in caplog.messages
    assert await entries(store) == {}


async def test_database_is_registered_with_ttl_and_purge_interval(
    store: Store, clock: FakeClock
) -> None:
    ctx = make_context(
        "auto_whitelist",
        {"whitelist_ttl": 100, "whitelist_purge_interval": 60 * 60},
        defaults=AutoWhitelist.defaults,
        clock=clock,
    )
    ctx.services.put("store", store)
    await AutoWhitelist(ctx).start()
    info = {i.name: i for i in await store.databases()}[DATABASE]
    assert (info.ttl, info.purge_interval) == (100.0, 3600.0)
    handle = next(h for h in store.opened() if h.name == DATABASE)
    assert (handle.ttl, handle.purge_interval) == (100.0, 3600.0)


async def test_custom_ttl_is_honoured(store: Store, clock: FakeClock, msgdir: Path) -> None:
    ctx = make_context(
        "auto_whitelist", {"whitelist_ttl": 100}, defaults=AutoWhitelist.defaults, clock=clock
    )
    ctx.services.put("store", store)
    f = AutoWhitelist(ctx)
    await f.start()
    messages = MessageFactory(msgdir)
    await f.check(messages(sender=ALICE, auth_user="alice", recipients=[BOB]), ctx)
    clock.advance(100)
    assert (await f.check(messages(sender=BOB, recipients=[ALICE]), ctx)).reply() == "200 Ok"
    clock.advance(1)
    assert await f.check(messages(sender=BOB, recipients=[ALICE]), ctx) is CONTINUE
    db = await store.database(DATABASE, ttl=100)
    assert await db.purge() == 1
    assert await entries(store) == {}


# -- store failures never block mail ---------------------------------------------------------


async def test_store_failing_mid_life_continues_and_logs(
    flt: AutoWhitelist, store: Store, messages: MessageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    await flt.check(messages(sender=ALICE, auth_user="alice", recipients=[BOB]), flt.ctx)
    await store.backend.close()  # the database goes away under the filter
    with caplog.at_level(logging.WARNING):
        recorded = await flt.check(
            messages(sender=ALICE, auth_user="alice", recipients=[BOB]), flt.ctx
        )
        checked = await flt.check(messages(sender=BOB, recipients=[ALICE]), flt.ctx)
    assert recorded is CONTINUE
    assert checked is CONTINUE  # the pair is known, but the store cannot say so
    logged = "\n".join(caplog.messages)
    assert f"auto_whitelist: not recording correspondents of {ALICE}: store error:" in logged
    assert f"auto_whitelist: not whitelisting {BOB}: store error:" in logged


async def test_unreachable_store_at_start_is_logged_and_retried(
    tmp_path: Path, msgdir: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    ctx = make_context(
        "auto_whitelist",
        defaults=AutoWhitelist.defaults,
        sections={"ttldb": {"type": "sqlite", "path": str(blocker / "ttldb.sqlite3")}},
    )
    f = AutoWhitelist(ctx)
    messages = MessageFactory(msgdir)
    try:
        with caplog.at_level(logging.WARNING):
            await f.start()
            assert await f.check(
                messages(sender=ALICE, auth_user="alice", recipients=[BOB]), ctx
            ) is (CONTINUE)
            assert await f.check(messages(sender=BOB, recipients=[ALICE]), ctx) is CONTINUE
        logged = "\n".join(caplog.messages)
        assert "auto_whitelist: store unavailable at start:" in logged
        assert f"auto_whitelist: not recording correspondents of {ALICE}: store error:" in logged
        assert f"auto_whitelist: not whitelisting {BOB}: store error:" in logged
        # once the store can be opened, the filter works without a restart (after the
        # services' pause between attempts to open a failed client)
        blocker.unlink()
        monkeypatch.setattr("courier_pyfilter.services.RETRY_FAILED_AFTER", 0.0)
        await f.check(messages(sender=ALICE, auth_user="alice", recipients=[BOB]), ctx)
        assert (await f.check(messages(sender=BOB, recipients=[ALICE]), ctx)).reply() == "200 Ok"
    finally:
        await ctx.services.close()


async def test_bad_store_configuration_refuses_the_start(tmp_path: Path) -> None:
    ctx = make_context(
        "auto_whitelist", defaults=AutoWhitelist.defaults, sections={"ttldb": {"type": "mysql"}}
    )
    with pytest.raises(FilterLoadError, match=r"auto_whitelist: \[ttldb\]"):
        await AutoWhitelist(ctx).start()
    await ctx.services.close()


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("whitelist_ttl", "30 days"),
        ("whitelist_ttl", 0),
        ("whitelist_ttl", True),
        ("whitelist_purge_interval", -1),
        ("whitelist_purge_interval", None),
    ],
)
async def test_bad_settings_refuse_the_start(key: str, value: Any, tmp_path: Path) -> None:
    ctx = make_context(
        "auto_whitelist", {key: value}, defaults=AutoWhitelist.defaults, state_dir=tmp_path
    )
    with pytest.raises(FilterLoadError, match=rf"\[auto_whitelist.py\] {key} must be"):
        await AutoWhitelist(ctx).start()
    await ctx.services.close()


# -- through the real loader and chain -------------------------------------------------------


async def _chain(tmp_path: Path, modules_text: str) -> tuple[Chain, Services]:
    modules = parse_modules_config([("pythonfilter-modules.conf", modules_text)])
    lines = [
        (e.name, e.bypass) for e in parse_chain_config("auto_whitelist\nwhitelist_auth\n").entries
    ]
    services = Services(Settings(state_dir=str(tmp_path / "state")), modules.section)
    chain = build_chain(lines, modules.section, services)
    await chain.start()
    return chain, services


async def test_in_the_chain_before_whitelist_auth(tmp_path: Path, msgdir: Path) -> None:
    chain, services = await _chain(tmp_path, "[ttldb]\ntype = 'sqlite'\n")
    messages = MessageFactory(msgdir)
    try:
        sent = await chain.run(messages(sender=ALICE, auth_user="alice", recipients=[BOB]))
        assert (sent.deciding, sent.decision.reply()) == ("whitelist_auth", "200 Ok")
        reply = await chain.run(messages(sender=BOB, recipients=[ALICE]))
        assert (reply.deciding, reply.decision.reply()) == ("auto_whitelist", "200 Ok")
        other = await chain.run(messages(sender="eve@remote.org", recipients=[ALICE]))
        assert other.deciding is None
        assert list(await entries(await services.store())) == [
            md5("alice@example.combob@remote.org")
        ]
    finally:
        await chain.stop()
        await services.close()


async def test_in_the_chain_a_broken_store_lets_mail_through(tmp_path: Path, msgdir: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    chain, services = await _chain(
        tmp_path, f"[ttldb]\ntype = 'sqlite'\npath = '{blocker}/ttldb.sqlite3'\n"
    )
    messages = MessageFactory(msgdir)
    try:
        result = await chain.run(messages(sender=BOB, recipients=[ALICE]))
        assert result.decision.reply() == "200 Ok"
        assert result.deciding is None
        assert [o.error for o in result.outcomes] == [None, None]
    finally:
        await chain.stop()
        await services.close()
