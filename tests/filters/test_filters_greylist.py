"""``greylist``: the original's behaviour on the store, on both backends, with a fake clock."""

from __future__ import annotations

import asyncio
import hashlib
import ipaddress
from pathlib import Path
from typing import Any

import pytest
from store_testlib import FakeClock

from courier_pyfilter.api import Context
from courier_pyfilter.decision import CONTINUE, Decision, Verdict
from courier_pyfilter.filters._netkey import format_wait, md5_key, network_text
from courier_pyfilter.filters.greylist import (
    NO_CLIENT_IP,
    NO_SENDER,
    NOT_PASSED_DB,
    PASSED_DB,
    Greylist,
    courier_dnswl_zones,
    courier_spf_results,
)
from courier_pyfilter.message import Message
from courier_pyfilter.store import Store, StoreError, TtlDb
from courier_pyfilter.testing import MessageFactory, make_context

pytest_plugins = ["dns_fixture"]  # dns (the exemption tests)

T0 = 1_700_000_000.0
GREYLISTED = "451 4.7.1 Greylisting in action, please come back in 00:05:00"


def _ctx(store: Store, clock: Any, sysconfdir: str | None = None, **settings: Any) -> Context:
    ctx: Context = make_context(
        "greylist", settings, defaults=Greylist.defaults, clock=clock, sysconfdir=sysconfdir
    )
    ctx.services.put("store", store)
    return ctx


async def _greylist(
    store: Store, clock: Any, sysconfdir: str | None = None, **settings: Any
) -> Greylist:
    flt = Greylist(_ctx(store, clock, sysconfdir, **settings))
    await flt.start()
    return flt


async def _run(flt: Greylist, msg: Message) -> Decision:
    return await flt.check(msg, flt.ctx)


async def _keys(db: TtlDb) -> dict[str, float]:
    entries = db.keys()
    return {e.key: e.ts async for e in entries}


@pytest.fixture
def messages(tmp_path: Path) -> MessageFactory:
    return MessageFactory(
        tmp_path, sender="a@example.com", recipients=("b@example.net",), client_ip="192.0.2.1"
    )


@pytest.fixture
async def sqlite_store(sqlite_config: Any, clock: Any) -> Any:
    opened = await Store.open(sqlite_config, clock=clock, background_purge=False)
    try:
        yield opened
    finally:
        await opened.close()


# -- the original's behaviour, on both backends -------------------------------------------


async def test_first_attempt_retries_and_pass(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = T0
    flt = await _greylist(store, clock)
    assert (await _run(flt, messages())).reply() == GREYLISTED
    # early retries: the wait counts from the first attempt, which they do not reset
    clock.now = T0 + 100
    first_retry = await _run(flt, messages())
    assert first_retry.verdict is Verdict.TEMPFAIL
    assert first_retry.reply() == "451 4.7.1 Greylisting in action, please come back in 00:03:20"
    clock.now = T0 + 250
    assert (await _run(flt, messages())).reply().endswith("come back in 00:00:50")
    clock.now = T0 + 299
    assert (await _run(flt, messages())).reply().endswith("come back in 00:00:01")
    clock.now = T0 + 300
    assert await _run(flt, messages()) is CONTINUE

    not_passed, passed = await flt.databases()
    key = md5_key("a@example.com", "b@example.net", "192.0.2")
    assert await _keys(not_passed) == {}
    assert await _keys(passed) == {key: T0 + 300}


async def test_passed_triplet_is_refreshed_and_outlives_its_ttl(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = T0
    flt = await _greylist(store, clock)
    await _run(flt, messages())
    clock.now = T0 + 300
    assert await _run(flt, messages()) is CONTINUE
    _, passed = await flt.databases()
    key = md5_key("a@example.com", "b@example.net", "192.0.2")
    day = 86400
    for days in (20, 40, 70):  # each message refreshes the 36-day lifetime
        clock.now = T0 + 300 + days * day
        assert await _run(flt, messages()) is CONTINUE
        assert await passed.get(key) == T0 + 300 + days * day
    # silent for longer than senders_passed_ttl: greylisted again from scratch
    clock.now += 36 * day + 1
    assert (await _run(flt, messages())).reply() == GREYLISTED


async def test_pending_triplet_expires_after_a_day(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = T0
    flt = await _greylist(store, clock)
    await _run(flt, messages())
    clock.now = T0 + 86400 + 1
    assert (await _run(flt, messages())).reply() == GREYLISTED  # a new first attempt
    clock.now += 300
    assert await _run(flt, messages()) is CONTINUE


async def test_fifty_concurrent_first_attempts_agree_on_one_first_seen(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = T0
    flt = await _greylist(store, clock)
    batch = [messages() for _ in range(50)]
    replies = await asyncio.gather(*(_run(flt, m) for m in batch))
    assert [r.reply() for r in replies] == [GREYLISTED] * 50
    not_passed, passed = await flt.databases()
    key = md5_key("a@example.com", "b@example.net", "192.0.2")
    assert await _keys(not_passed) == {key: T0}
    assert await _keys(passed) == {}
    clock.now = T0 + 299
    assert (await _run(flt, messages())).reply().endswith("come back in 00:00:01")


class _TaskClock:
    """A clock that ticks one second per call and remembers each task's first reading."""

    def __init__(self, start: float) -> None:
        self.now = start
        self.first: dict[asyncio.Task[Any], float] = {}

    def __call__(self) -> float:
        self.now += 1
        task = asyncio.current_task()
        if task is not None:
            self.first.setdefault(task, self.now)
        return self.now


async def test_concurrent_first_attempts_with_a_moving_clock(
    store_config: Any, messages: MessageFactory
) -> None:
    # Every task reads a different time.  Whatever the interleaving, exactly one first-seen
    # time is stored and every reply counts its wait from it: no attempt overwrote it.
    ticking = _TaskClock(T0)
    async with await Store.open(store_config, clock=ticking, background_purge=False) as st:
        flt = await _greylist(st, ticking)
        await flt.databases()
        msgs = [messages() for _ in range(50)]

        async def attempt(msg: Message) -> tuple[float, str]:
            decision = await _run(flt, msg)
            task = asyncio.current_task()
            assert task is not None
            return ticking.first[task], decision.reply()

        results = await asyncio.gather(*(asyncio.create_task(attempt(m)) for m in msgs))
        not_passed, _ = await flt.databases()
        stored = await _keys(not_passed)
        assert len(stored) == 1
        (first_seen,) = stored.values()
        for now, reply in results:
            expected = format_wait(first_seen + 300 - now)
            assert reply == f"451 4.7.1 Greylisting in action, please come back in {expected}"


async def test_fifty_concurrent_retries_all_pass(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = T0
    flt = await _greylist(store, clock)
    await _run(flt, messages())
    clock.now = T0 + 301
    for _ in range(2):  # the promotion round, then a round on the passed triplet
        batch = [messages() for _ in range(50)]
        replies = await asyncio.gather(*(_run(flt, m) for m in batch))
        assert all(r is CONTINUE for r in replies), [r.reply() for r in replies]
        not_passed, passed = await flt.databases()
        assert list(await _keys(not_passed)) == []
        assert list(await _keys(passed)) == [md5_key("a@example.com", "b@example.net", "192.0.2")]


async def test_concurrent_filters_sharing_one_store(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    # Two chain instances (e.g. before and after a reload) share the same databases.
    clock.now = T0
    one, two = await _greylist(store, clock), await _greylist(store, clock)
    replies = await asyncio.gather(*(f.check(messages(), f.ctx) for f in [one, two] * 10))
    assert {r.reply() for r in replies} == {GREYLISTED}
    clock.now = T0 + 300
    replies = await asyncio.gather(*(f.check(messages(), f.ctx) for f in [one, two] * 10))
    assert all(r is CONTINUE for r in replies)


async def test_store_failure_raises(
    store: Store, clock: Any, messages: MessageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    flt = await _greylist(store, clock)

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("backend down")

    monkeypatch.setattr(store.backend, "touch", broken)
    with pytest.raises(StoreError):
        await _run(flt, messages())


# -- keys ----------------------------------------------------------------------------------


def test_keys_are_the_originals() -> None:
    # md5 hex of sender + recipient + network, computed independently here
    expected = hashlib.md5(b"a@example.comb@example.net192.0.2").hexdigest()
    assert md5_key("a@example.com", "b@example.net", "192.0.2") == expected
    ip4 = ipaddress.ip_address("192.0.2.200")
    ip6 = ipaddress.ip_address("2001:db8:1:2::25")
    assert network_text(ip4) == "192.0.2"
    assert network_text(ip6) == "2001:0db8:0001"
    assert network_text(ipaddress.ip_address("::1")) == "0000:0000:0000"
    assert network_text(ip4, ipv4_prefix=16) == "192.0.0.0/16"
    assert network_text(ip4, ipv4_prefix=32) == "192.0.2.200/32"
    assert network_text(ip6, ipv6_prefix=64) == "2001:db8:1:2::/64"


def test_wait_format() -> None:
    assert format_wait(300) == "00:05:00"
    assert format_wait(299.99) == "00:04:59"  # fractions are dropped, never rounded up
    assert format_wait(3661) == "01:01:01"
    assert format_wait(90000) == "25:00:00"  # the original wrapped to 01:00:00 here
    assert format_wait(-3) == "00:00:00"


async def test_key_lowercases_sender_and_recipient(
    sqlite_store: Store, clock: Any, messages: MessageFactory
) -> None:
    flt = await _greylist(sqlite_store, clock)
    msg = messages(sender="Alice@Example.COM", recipients=("Bob@Example.NET",))
    await _run(flt, msg)
    not_passed, _ = await flt.databases()
    key = hashlib.md5(b"alice@example.combob@example.net192.0.2").hexdigest()
    assert list(await _keys(not_passed)) == [key]


async def test_state_imported_from_the_original_is_honoured(
    sqlite_store: Store, clock: Any, messages: MessageFactory
) -> None:
    # A passed triplet as the original stored it (whole seconds, md5 key) passes at once.
    clock.now = T0
    flt = await _greylist(sqlite_store, clock)
    _, passed = await flt.databases()
    key = hashlib.md5(b"a@example.comb@example.net192.0.2").hexdigest()
    await passed.set(key, T0 - 86400)
    assert await _run(flt, messages()) is CONTINUE
    assert await passed.get(key) == T0


async def test_same_ipv4_network_shares_a_triplet(
    store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = T0
    flt = await _greylist(store, clock)
    await _run(flt, messages(client_ip="192.0.2.1"))
    clock.now = T0 + 300
    assert await _run(flt, messages(client_ip="192.0.2.254")) is CONTINUE
    assert (await _run(flt, messages(client_ip="192.0.3.1"))).reply() == GREYLISTED


async def test_ipv6_network_key(store: Store, clock: Any, messages: MessageFactory) -> None:
    clock.now = T0
    flt = await _greylist(store, clock)
    await _run(flt, messages(client_ip="2001:db8:1:2::5"))
    not_passed, passed = await flt.databases()
    key = hashlib.md5(b"a@example.comb@example.net2001:0db8:0001").hexdigest()
    assert list(await _keys(not_passed)) == [key]
    clock.now = T0 + 300
    # another host of the same /48 completes the triplet; another /48 starts a new one
    assert await _run(flt, messages(client_ip="2001:db8:1:ffff::9")) is CONTINUE
    assert list(await _keys(passed)) == [key]
    assert (await _run(flt, messages(client_ip="2001:db8:2::5"))).reply() == GREYLISTED


async def test_ipv4_mapped_client_uses_the_ipv4_network(
    sqlite_store: Store, clock: Any, messages: MessageFactory
) -> None:
    flt = await _greylist(sqlite_store, clock)
    await _run(flt, messages(client_ip="192.0.2.9", ipv4_mapped=True))
    not_passed, _ = await flt.databases()
    assert list(await _keys(not_passed)) == [md5_key("a@example.com", "b@example.net", "192.0.2")]


# -- recipients, senders, client address ----------------------------------------------------


async def test_several_recipients_longest_wait_and_partial_promotion(
    sqlite_store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = T0
    flt = await _greylist(sqlite_store, clock)
    await _run(flt, messages(recipients=("one@example.net",)))
    clock.now = T0 + 200
    await _run(flt, messages(recipients=("two@example.net",)))
    clock.now = T0 + 300
    all_three = messages(recipients=("one@example.net", "two@example.net", "three@example.net"))
    # one: passes now; two: 200 s left; three: new, 300 s -> the longest wait is shown,
    # and "one" is promoted although the message is refused (as in the original)
    assert (await _run(flt, all_three)).reply() == GREYLISTED
    _, passed = await flt.databases()
    assert list(await _keys(passed)) == [md5_key("a@example.com", "one@example.net", "192.0.2")]
    clock.now = T0 + 310
    # two: 190 s left, three: 290 s left
    assert (await _run(flt, all_three)).reply().endswith("come back in 00:04:50")
    clock.now = T0 + 600
    assert await _run(flt, all_three) is CONTINUE


async def test_null_sender_is_not_greylisted(
    sqlite_store: Store, clock: Any, messages: MessageFactory
) -> None:
    flt = await _greylist(sqlite_store, clock)
    assert await _run(flt, messages(sender="")) is CONTINUE
    not_passed, _ = await flt.databases()
    assert await _keys(not_passed) == {}


def _without_sender(msg: Message) -> Message:
    for path in msg.control_paths:
        lines = Path(path).read_bytes().splitlines(keepends=True)
        Path(path).write_bytes(b"".join(line for line in lines if not line.startswith(b"s")))
    return Message(msg.data_path, msg.control_paths)


async def test_missing_sender_record_tempfails(
    sqlite_store: Store, clock: Any, messages: MessageFactory
) -> None:
    flt = await _greylist(sqlite_store, clock)
    msg = _without_sender(messages())
    assert msg.sender is None
    decision = await _run(flt, msg)
    assert decision.verdict is Verdict.TEMPFAIL
    assert decision.reply() == "451 " + NO_SENDER


async def test_missing_client_ip_tempfails_by_default(
    sqlite_store: Store, clock: Any, messages: MessageFactory
) -> None:
    flt = await _greylist(sqlite_store, clock)
    decision = await _run(flt, messages(client_ip=None))
    assert decision.reply() == "451 " + NO_CLIENT_IP
    invalid = await _run(flt, messages(client_ip=None, extra_records=["OTCPREMOTEIP=bogus"]))
    assert invalid.reply() == "451 " + NO_CLIENT_IP
    not_passed, _ = await flt.databases()
    assert await _keys(not_passed) == {}


async def test_missing_client_ip_may_continue(
    sqlite_store: Store, clock: Any, messages: MessageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    flt = await _greylist(sqlite_store, clock, missing_ip="continue")
    with caplog.at_level("WARNING"):
        assert await _run(flt, messages(client_ip=None)) is CONTINUE
    assert "no valid client IP address" in caplog.text


async def test_locally_submitted_mail_is_not_greylisted(
    sqlite_store: Store, clock: Any, messages: MessageFactory
) -> None:
    flt = await _greylist(sqlite_store, clock)
    local = messages(client_ip=None, source="local")
    assert local.client_ip is None
    assert await _run(flt, local) is CONTINUE
    not_passed, _ = await flt.databases()
    assert await _keys(not_passed) == {}


# -- settings ------------------------------------------------------------------------------


async def test_custom_delay_and_network_sizes(
    sqlite_store: Store, clock: Any, messages: MessageFactory
) -> None:
    clock.now = T0
    flt = await _greylist(sqlite_store, clock, greylist_time=3600, ipv4_prefix=16)
    first = await _run(flt, messages(client_ip="192.0.2.1"))
    assert first.reply().endswith("come back in 01:00:00")
    clock.now = T0 + 3600
    assert await _run(flt, messages(client_ip="192.0.99.7")) is CONTINUE  # same /16
    _, passed = await flt.databases()
    assert list(await _keys(passed)) == [md5_key("a@example.com", "b@example.net", "192.0.0.0/16")]


@pytest.mark.parametrize(
    "settings",
    [
        {"greylist_time": "300"},
        {"greylist_time": 0},
        {"senders_passed_ttl": None},
        {"ipv4_prefix": 33},
        {"ipv6_prefix": -1},
        {"skip_spf_pass": "yes"},
        {"missing_ip": "accept"},
    ],
)
async def test_bad_settings_stop_the_start(sqlite_store: Store, settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=next(iter(settings))):
        await _greylist(sqlite_store, FakeClock(), **settings)


async def test_loads_by_name_and_a_store_failure_tempfails_the_chain(
    sqlite_store: Store, clock: Any, messages: MessageFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    from courier_pyfilter.loader import build_chain

    ctx = _ctx(sqlite_store, clock)
    sections = {"greylist.py": {"greylist_time": 60 * 10}}
    chain = build_chain(
        [("greylist", frozenset())], lambda name: sections.get(name, {}), ctx.services
    )
    await chain.start()
    try:
        first = (await chain.run(messages())).decision.reply()
        assert first == "451 4.7.1 Greylisting in action, please come back in 00:10:00"

        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise StoreError("database is locked")

        monkeypatch.setattr(sqlite_store.backend, "touch", broken)
        result = await chain.run(messages())
        assert result.decision.verdict is Verdict.TEMPFAIL
        assert result.decision.reply().startswith("451 4.3.0")
    finally:
        await chain.stop()


# -- skipping senders that pass SPF or are DNS-whitelisted --------------------------------

COURIER_RECEIVED = (
    "Received: from mail.example.com (mail.example.com [192.0.2.1])\n"
    "  by mx.example.org with ESMTP\n"
    "  id 0000000A.6553F100.00001234; Tue, 14 Nov 2023 22:13:20 +0000\n"
)
BODY = "From: a@example.com\nTo: b@example.net\nSubject: hi\n\nhello\n"


def _spf_field(result: str, identity: str) -> str:
    return (
        f"Received-SPF: {result} (Address passes the Sender Policy Framework)\n"
        f"  SPF={identity};\n"
        "  sender=a@example.com;\n"
        "  remoteip=::ffff:192.0.2.1;\n"
        "  remotehost=mail.example.com;\n"
        "  helo=mail.example.com;\n"
        "  receiver=mx.example.org;\n"
    )


def _raw(above: str = "", below: str = "") -> bytes:
    return (above + COURIER_RECEIVED + below + BODY).encode()


def _fields(raw: bytes) -> list[tuple[str, str]]:
    from email.parser import BytesParser

    return list(BytesParser().parsebytes(raw, headersonly=True).items())


def test_courier_spf_results_trusts_only_fields_above_its_received() -> None:
    assert courier_spf_results(_fields(_raw(_spf_field("pass", "MAILFROM")))) == {
        "MAILFROM": "pass"
    }
    both = _spf_field("neutral", "HELO") + _spf_field("softfail", "MAILFROM")
    assert courier_spf_results(_fields(_raw(both))) == {"HELO": "neutral", "MAILFROM": "softfail"}
    assert courier_spf_results(_fields(_raw(below=_spf_field("pass", "MAILFROM")))) == {}
    # no Received field at all: nothing can be told apart from the client's own fields
    assert courier_spf_results(_fields(_spf_field("pass", "MAILFROM").encode() + b"\n")) == {}


def test_courier_dnswl_zones_reads_the_field_below_its_received() -> None:
    a_r = (
        "Authentication-Results: mx.example.org;\n"
        "    dnswl=pass dns.zone=list.dnswl.org\n"
        "    policy.ip=127.0.10.1;\n"
        "    dnswl=pass dns.zone=wl.example\n"
    )
    me = ["mx.example.org"]
    assert courier_dnswl_zones(_fields(_raw(below=a_r)), me) == ["list.dnswl.org", "wl.example"]
    assert courier_dnswl_zones(_fields(_raw(below=a_r)), ["other.example"]) == []
    not_first = "X-Something: 1\n" + a_r
    assert courier_dnswl_zones(_fields(_raw(below=not_first)), me) == []
    failing = a_r.replace("dnswl=pass", "dnswl=fail")
    assert courier_dnswl_zones(_fields(_raw(below=failing)), me) == []


async def test_skip_spf_pass(sqlite_store: Store, clock: Any, messages: MessageFactory) -> None:
    passed_spf = _raw(_spf_field("pass", "MAILFROM"))
    off = await _greylist(sqlite_store, clock)
    assert (await _run(off, messages(raw=passed_spf, received=False))).reply() == GREYLISTED

    on = await _greylist(sqlite_store, clock, skip_spf_pass=True)
    assert await _run(on, messages(raw=passed_spf, received=False)) is CONTINUE
    for raw in (
        _raw(_spf_field("softfail", "MAILFROM")),
        _raw(_spf_field("pass", "HELO")),  # a HELO pass says nothing about the sender
        _raw(below=_spf_field("pass", "MAILFROM")),  # written by the client: not trusted
    ):
        decision = await _run(on, messages(raw=raw, received=False))
        assert decision.verdict is Verdict.TEMPFAIL


async def test_skip_dnswl(
    sqlite_store: Store, clock: Any, messages: MessageFactory, tmp_path: Path
) -> None:
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "me").write_text("mx.example.org\n")
    a_r = "Authentication-Results: mx.example.org;\n    dnswl=pass dns.zone=list.dnswl.org\n"
    listed = _raw(below=a_r)
    on = await _greylist(sqlite_store, clock, sysconfdir=str(etc), skip_dnswl=True)
    assert await _run(on, messages(raw=listed, received=False)) is CONTINUE
    forged = _raw(below=a_r.replace("mx.example.org", "evil.example"))
    assert (await _run(on, messages(raw=forged, received=False))).reply() == GREYLISTED
    off = await _greylist(sqlite_store, clock, sysconfdir=str(etc))
    assert (await _run(off, messages(raw=listed, received=False))).verdict is Verdict.TEMPFAIL


async def test_spf_hook_can_be_replaced(
    sqlite_store: Store, clock: Any, messages: MessageFactory
) -> None:
    class DnsSpfGreylist(Greylist):
        async def spf_result(self, message: Message, ctx: Context) -> str | None:
            return "pass" if message.sender == "good@example.com" else "none"

    flt = DnsSpfGreylist(_ctx(sqlite_store, clock, skip_spf_pass=True))
    await flt.start()
    assert await _run(flt, messages(sender="good@example.com")) is CONTINUE
    assert (await _run(flt, messages(sender="bad@example.com"))).reply() == GREYLISTED


def test_database_names_are_the_originals() -> None:
    assert (NOT_PASSED_DB, PASSED_DB) == ("greylist_NotPassed", "greylist_Passed")
    assert Greylist.whitelist is False
    assert Greylist.defaults["greylist_time"] == 300
    assert Greylist.defaults["senders_passed_ttl"] == 3110400
    assert Greylist.defaults["senders_not_passed_ttl"] == 86400
    assert Greylist.defaults["senders_purge_interval"] == 7200


# -- exemptions through the server's own SPF evaluation and DNSWL lookups ------------------


async def _exempting_greylist(dns: Any, tmp_path: Path, **settings: Any) -> Any:
    from dns_fixture import dns_sections

    sections = {
        **dns_sections(dns),
        "ttldb": {"type": "sqlite", "path": str(tmp_path / "grey.sqlite3")},
    }
    ctx = make_context("greylist", settings, defaults=Greylist.defaults, sections=sections)
    flt = Greylist(ctx)
    await flt.start()
    return flt, ctx


async def test_spf_pass_by_own_evaluation_skips_greylisting(
    dns: Any, tmp_path: Path, messages: MessageFactory
) -> None:
    flt, ctx = await _exempting_greylist(dns, tmp_path, skip_spf_pass=True, spf_source="evaluate")
    try:
        # pass.spf.test allows 127.0.0.1 only
        passing = messages(sender="a@pass.spf.test", client_ip="127.0.0.1")
        assert await flt.check(passing, ctx) is CONTINUE
        failing = messages(sender="a@fail.spf.test", client_ip="127.0.0.1")
        assert (await flt.check(failing, ctx)).verdict is Verdict.TEMPFAIL
    finally:
        await ctx.services.close()


async def test_own_dnswl_lookup_skips_greylisting_and_a_dns_failure_does_not(
    dns: Any, tmp_path: Path, messages: MessageFactory
) -> None:
    flt, ctx = await _exempting_greylist(dns, tmp_path, skip_dnswl=True, dnswl_zone=["wl.test"])
    try:
        listed = messages(client_ip="127.0.0.2")  # in wl.test
        assert await flt.check(listed, ctx) is CONTINUE
        assert flt.dns_queries(listed, ctx) == [("2.0.0.127.wl.test", "A")]
        unlisted = messages(client_ip="192.0.2.1")
        assert (await flt.check(unlisted, ctx)).verdict is Verdict.TEMPFAIL
        dns.servfail.add("wl.test")
        broken = messages(client_ip="127.0.0.2", sender="other@example.org")
        assert (await flt.check(broken, ctx)).verdict is Verdict.TEMPFAIL  # not exempted
    finally:
        await ctx.services.close()
