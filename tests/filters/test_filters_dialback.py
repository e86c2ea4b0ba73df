"""``dialback``: sender verification by SMTP call-back, end to end on 127.0.0.1.

The sender's domain lives in the test DNS server (``tests/dnsserver.py``):
``dialback.test`` has ``MX 10 mx1.dialback.test`` (127.0.0.1, ::1) and ``MX 20
mx2.dialback.test`` (127.0.0.3).  The MX servers are an aiosmtpd sink (the well-behaved
case) and scripted raw servers (hanging, resetting, garbage, 4xx/5xx) from
``tests/test_smtp_callout.py``, all on one free port given to the filter as
``smtp_port``.  The cache runs on both store backends.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.api import Context
from courier_pyfilter.chain import ChainResult
from courier_pyfilter.decision import CONTINUE, Decision, Verdict
from courier_pyfilter.dns import dns_resolver
from courier_pyfilter.filters.dialback import (
    BAD_DB,
    CONTROL_FAILURE,
    GOOD_DB,
    INVALID_SENDER,
    NO_SERVERS,
    Dialback,
    DialbackError,
    Status,
    callout_decision,
)
from courier_pyfilter.loader import build_chain
from courier_pyfilter.message import Message
from courier_pyfilter.smtp_callout import CalloutResult, Outcome, SmtpReply, Stage
from courier_pyfilter.store import Store, StoreError, TtlDb
from courier_pyfilter.testing import MessageFactory, make_context
from dnsserver import TestDnsServer
from test_smtp_callout import CLOSE, HANG, RESET, Conn, FakeMX, smtp_script

pytest_plugins = ["dns_fixture"]  # dns_server, dns


T0 = 1_700_000_000.0
DAY = 86400
SENDER = "user@dialback.test"
MX1, MX2 = "mx1.dialback.test", "mx2.dialback.test"
ME = "courier.test"


def dns_sections(server: TestDnsServer, **overrides: Any) -> dict[str, dict[str, Any]]:
    """A ``[dns]`` section pointing at the test server (deadline 1 s), with ``overrides``."""
    return {"dns": {"nameservers": [server.nameserver], "timeout": 1.0, **overrides}}


def md5(text: str) -> str:
    return hashlib.md5(text.encode()).hexdigest()


async def entries(db: TtlDb) -> dict[str, float]:
    rows = db.keys()
    return {e.key: e.ts async for e in rows}


# -- an aiosmtpd sink playing the sender's MX --------------------------------------------------


class SinkHandler:
    """aiosmtpd handler: records each call-back; refuses the addresses in ``unknown``."""

    def __init__(self) -> None:
        self.unknown: set[str] = set()
        self.rcpt_reply: str | None = None
        self.calls: list[tuple[str | None, str | None, str]] = []
        self.quits = 0

    async def handle_RCPT(
        self, server: Any, session: Any, envelope: Any, address: str, options: list[str]
    ) -> str:
        self.calls.append((session.host_name, envelope.mail_from, address))
        if self.rcpt_reply is not None:
            return self.rcpt_reply
        if address in self.unknown:
            return "550 5.1.1 No such user"
        envelope.rcpt_tos.append(address)
        return "250 2.1.5 Ok"

    async def handle_QUIT(self, server: Any, session: Any, envelope: Any) -> str:
        self.quits += 1
        return "221 2.0.0 Bye"


class Sink:
    """An aiosmtpd SMTP server in the test's event loop."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.handler = SinkHandler()
        self._protocols: list[Any] = []
        self._server: asyncio.Server | None = None

    async def start(self) -> Sink:
        from aiosmtpd.smtp import SMTP

        loop = asyncio.get_running_loop()

        def factory() -> Any:
            proto = SMTP(self.handler, hostname=MX1, loop=loop, enable_SMTPUTF8=True)
            self._protocols.append(proto)
            return proto

        self._server = await loop.create_server(factory, self.host, self.port)
        return self

    @property
    def connections(self) -> int:
        return len(self._protocols)

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for proto in self._protocols:
            transport = getattr(proto, "transport", None)
            if transport is not None:
                transport.close()
        await self._server.wait_closed()
        await asyncio.sleep(0)  # let the protocols' tasks see the close


def _port_free_everywhere() -> int:
    for _ in range(50):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        try:
            for host, family in (("127.0.0.3", socket.AF_INET), ("::1", socket.AF_INET6)):
                with socket.socket(family) as s:
                    s.bind((host, port))
        except OSError:
            continue
        return port
    raise RuntimeError("no port free on 127.0.0.1, 127.0.0.3 and ::1")


@pytest.fixture
async def servers() -> AsyncIterator[Any]:
    """Start MX servers on one port: ``await servers.sink(host)``, ``await
    servers.fake(handler, host)``; all closed after the test."""

    class Servers:
        port = _port_free_everywhere()

        def __init__(self) -> None:
            self.started: list[Sink | FakeMX] = []

        async def sink(self, host: str = "127.0.0.1") -> Sink:
            sink = await Sink(host, self.port).start()
            self.started.append(sink)
            return sink

        async def fake(self, handler: Any, host: str = "127.0.0.1") -> FakeMX:
            mx = await FakeMX(handler, host, self.port).start()
            self.started.append(mx)
            return mx

    made = Servers()
    try:
        yield made
    finally:
        for server in reversed(made.started):
            await server.close()


@pytest.fixture
def sysconf(tmp_path: Path) -> Path:
    """Courier's configuration: me, locals and hosteddomains."""
    conf = tmp_path / "courier"
    conf.mkdir()
    (conf / "me").write_text(ME + "\n")
    (conf / "locals").write_text(f"{ME}\nlocalhost\n")
    (conf / "hosteddomains").write_text("hosted.test\n.hosted.test\n")
    return conf


@pytest.fixture
async def sqlite_store(sqlite_config: Any, clock: Any) -> AsyncIterator[Store]:
    opened = await Store.open(sqlite_config, clock=clock, background_purge=False)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def messages(tmp_path: Path) -> MessageFactory:
    return MessageFactory(tmp_path, sender=SENDER, recipients=("rcpt@courier.test",))


Factory = Callable[..., Awaitable[Dialback]]


@pytest.fixture
async def dialback(
    dns: TestDnsServer, servers: Any, sysconf: Path, clock: Any
) -> AsyncIterator[Factory]:
    """``await dialback(store, dns_settings=..., **settings)``: a started filter whose
    MX port is the servers' port; stopped (and its resolver closed) after the test."""
    made: list[Dialback] = []
    clock.now = T0

    async def factory(
        store: Store, dns_settings: dict[str, Any] | None = None, **settings: Any
    ) -> Dialback:
        values = {"smtp_port": servers.port, "smtp_timeout": 2.0, "callout_timeout": 5.0}
        values.update(settings)
        ctx: Context = make_context(
            "dialback",
            values,
            defaults=Dialback.defaults,
            sections=dns_sections(dns, **(dns_settings or {})),
            sysconfdir=str(sysconf),
            clock=clock,
        )
        ctx.services.put("store", store)
        flt = Dialback(ctx)
        made.append(flt)
        await flt.start()
        return flt

    try:
        yield factory
    finally:
        for flt in made:
            await flt.stop()
            await flt.ctx.services.close()


async def run(flt: Dialback, msg: Message) -> Decision:
    return await flt.check(msg, flt.ctx)


def single_mx(dns: TestDnsServer, domain: str, host: str = MX1) -> None:
    dns.add(f"{domain}. 0 IN MX 10 {host}.")


# -- verified senders and the cache --------------------------------------------------------------


async def test_good_sender_is_verified_and_remembered(
    dialback: Factory, servers: Any, sqlite_store: Store, clock: Any, messages: MessageFactory
) -> None:
    sink = await servers.sink()
    flt = await dialback(sqlite_store)
    assert await run(flt, messages()) is CONTINUE
    assert sink.handler.calls == [(ME, f"postmaster@{ME}", SENDER)]
    assert sink.handler.quits == 1
    good, bad = await flt.databases()
    assert await entries(good) == {md5(SENDER): T0}
    assert await entries(bad) == {}

    clock.advance(3600.7)
    assert await run(flt, messages()) is CONTINUE
    assert sink.connections == 1  # from the cache
    assert await entries(good) == {md5(SENDER): float(int(T0 + 3600.7))}  # refreshed


async def test_unknown_sender_is_refused_and_remembered(
    dialback: Factory, servers: Any, sqlite_store: Store, clock: Any, messages: MessageFactory
) -> None:
    sink = await servers.sink()
    sink.handler.unknown.add("nobody@dialback.test")
    flt = await dialback(sqlite_store)
    decision = await run(flt, messages(sender="nobody@dialback.test"))
    assert decision.verdict is Verdict.REJECT
    assert decision.reply() == (
        "517-MX server mx1.dialback.test said:\n517 Sender does not exist: nobody@dialback.test"
    )
    assert sink.handler.quits == 1  # the original left this session open
    good, bad = await flt.databases()
    assert await entries(bad) == {md5("nobody@dialback.test"): T0}
    assert await entries(good) == {}

    clock.advance(DAY)
    decision = await run(flt, messages(sender="nobody@dialback.test"))
    assert decision.reply() == "517 Sender does not exist: nobody@dialback.test"
    assert sink.connections == 1
    assert await entries(bad) == {md5("nobody@dialback.test"): T0 + DAY}


async def test_cache_on_both_backends(
    dialback: Factory,
    servers: Any,
    dns: TestDnsServer,
    store: Store,
    clock: Any,
    messages: MessageFactory,
) -> None:
    sink = await servers.sink()
    flt = await dialback(store)
    good, bad = await flt.databases()
    assert (good.name, bad.name) == (GOOD_DB, BAD_DB) == ("goodsenders", "badsenders")
    assert good.ttl == bad.ttl == 7 * DAY
    # entries as the original wrote them: md5 of the sender exactly as given
    await good.set(md5("Known@dialback.test"), T0 - 6 * DAY)
    await bad.set(md5("spammer@dialback.test"), T0 - DAY)

    assert await run(flt, messages(sender="Known@dialback.test")) is CONTINUE
    decision = await run(flt, messages(sender="spammer@dialback.test"))
    assert decision.reply() == "517 Sender does not exist: spammer@dialback.test"
    assert sink.connections == 0
    assert dns.queries == []  # a cache hit needs no DNS either
    assert await good.get(md5("Known@dialback.test")) == T0  # refreshed
    assert await bad.get(md5("spammer@dialback.test")) == T0

    # the key is case-sensitive, as the original's: another spelling is verified anew
    assert await run(flt, messages(sender="known@dialback.test")) is CONTINUE
    assert sink.connections == 1

    # silent for longer than senders_ttl: verified again (and now accepted)
    clock.advance(7 * DAY + 1)
    assert await run(flt, messages(sender="spammer@dialback.test")) is CONTINUE
    assert sink.connections == 2
    assert await good.get(md5("spammer@dialback.test")) == T0 + 7 * DAY + 1


async def test_store_failures_never_accept(
    dialback: Factory,
    servers: Any,
    sqlite_store: Store,
    messages: MessageFactory,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sink = await servers.sink()
    flt = await dialback(sqlite_store, unverifiable="continue")

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise StoreError("backend down")

    with monkeypatch.context() as patch:
        patch.setattr(sqlite_store.backend, "touch", broken)
        with pytest.raises(StoreError):
            await run(flt, messages())
    assert sink.connections == 0
    # the call-back succeeds but its verdict cannot be stored: still a failure
    monkeypatch.setattr(sqlite_store.backend, "set", broken)
    with pytest.raises(StoreError):
        await run(flt, messages())
    assert sink.connections == 1
    assert Dialback.whitelist is False  # so the chain uses its failure action (451)


# -- which host, in which order ------------------------------------------------------------------


async def test_next_mx_when_the_first_is_down(
    dialback: Factory, servers: Any, sqlite_store: Store, messages: MessageFactory
) -> None:
    sink2 = await servers.sink("127.0.0.3")  # nobody on mx1 (127.0.0.1, ::1): refused
    flt = await dialback(sqlite_store)
    assert await run(flt, messages()) is CONTINUE
    assert sink2.handler.calls == [(ME, f"postmaster@{ME}", SENDER)]


async def test_next_mx_after_an_unknown_reply(
    dialback: Factory, servers: Any, sqlite_store: Store, messages: MessageFactory
) -> None:
    mx1 = await servers.fake(smtp_script(rcpt="450 4.2.0 try later"))
    sink2 = await servers.sink("127.0.0.3")
    flt = await dialback(sqlite_store)
    assert await run(flt, messages()) is CONTINUE
    assert mx1.lines[-2:] == [f"RCPT TO:<{SENDER}>", "QUIT"]
    assert len(sink2.handler.calls) == 1


async def test_the_last_host_gives_the_reply(
    dialback: Factory, servers: Any, sqlite_store: Store, messages: MessageFactory
) -> None:
    await servers.fake(smtp_script(rcpt="451 4.7.1 greylisted"), host="127.0.0.3")
    flt = await dialback(sqlite_store)
    decision = await run(flt, messages())
    # a proper two-line reply (the original glued both lines into one malformed line)
    assert decision.reply() == (
        "421-Unable to validate sender address.\n"
        "421 MX server mx2.dialback.test provided unknown reply"
    )
    good, bad = await flt.databases()
    assert await entries(good) == await entries(bad) == {}


async def test_no_mx_uses_the_domain_address(
    dialback: Factory, servers: Any, sqlite_store: Store, messages: MessageFactory
) -> None:
    sink = await servers.sink()
    flt = await dialback(sqlite_store)
    assert await run(flt, messages(sender="who@nomx.dialback.test")) is CONTINUE
    assert sink.handler.calls == [(ME, f"postmaster@{ME}", "who@nomx.dialback.test")]


async def test_ipv6_mx(
    dialback: Factory,
    servers: Any,
    dns: TestDnsServer,
    sqlite_store: Store,
    messages: MessageFactory,
) -> None:
    dns.add("v6.dialback.test. 0 IN MX 10 mx6.dialback.test.\nmx6.dialback.test. 0 IN AAAA ::1")
    sink = await servers.sink("::1")
    flt = await dialback(sqlite_store)
    assert await run(flt, messages(sender="a@v6.dialback.test")) is CONTINUE
    assert len(sink.handler.calls) == 1
    flt = await dialback(sqlite_store, ipv6=False)
    decision = await run(flt, messages(sender="b@v6.dialback.test"))
    assert decision.reply() == "451 Unable to connect to MX server mx6.dialback.test: no address"


async def test_address_literal_and_idn(
    dialback: Factory,
    servers: Any,
    dns: TestDnsServer,
    sqlite_store: Store,
    messages: MessageFactory,
) -> None:
    sink = await servers.sink()
    dns.add("xn--bcher-kva.dialback.test. 0 IN MX 10 mx1.dialback.test.")
    flt = await dialback(sqlite_store)
    assert await run(flt, messages(sender="user@[127.0.0.1]")) is CONTINUE
    assert await run(flt, messages(sender="user@b\u00fccher.dialback.test")) is CONTINUE
    assert [call[2] for call in sink.handler.calls] == [
        "user@[127.0.0.1]",
        "user@xn--bcher-kva.dialback.test",  # A-labels: no SMTPUTF8 needed
    ]
    good, _ = await flt.databases()
    assert set(await entries(good)) == {
        md5("user@[127.0.0.1]"),
        md5("user@b\u00fccher.dialback.test"),  # the key: the sender as given
    }


# -- the conversation ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("settings", "files", "expected"),
    [
        ({}, {}, ["EHLO courier.test", "MAIL FROM:<postmaster@courier.test>"]),
        ({"postmaster_addr": ""}, {}, ["EHLO courier.test", "MAIL FROM:<>"]),
        (
            {"postmaster_addr": "verify@courier.test", "ehlo": False},
            {"esmtphelo": "helo.courier.test"},
            ["HELO helo.courier.test", "MAIL FROM:<verify@courier.test>"],
        ),
        # '*': the reverse DNS name of the local address (127.0.0.1 -> mx1.dialback.test)
        ({}, {"esmtphelo": "*"}, ["EHLO mx1.dialback.test", "MAIL FROM:<postmaster@courier.test>"]),
    ],
)
async def test_helo_name_and_mail_from(
    dialback: Factory,
    servers: Any,
    sysconf: Path,
    sqlite_store: Store,
    messages: MessageFactory,
    settings: dict[str, Any],
    files: dict[str, str],
    expected: list[str],
) -> None:
    for name, text in files.items():
        (sysconf / name).write_text(text + "\n")
    mx = await servers.fake(smtp_script())
    flt = await dialback(sqlite_store, **settings)
    assert await run(flt, messages()) is CONTINUE
    assert mx.lines == [*expected, f"RCPT TO:<{SENDER}>", "QUIT"]


FAULTS = [
    # (script of the only MX, reply)
    (
        {"rcpt": HANG},
        "451 SMTP session with MX server mx1.dialback.test failed during RCPT TO: timed out",
    ),
    (
        {"greeting": HANG},
        "451 SMTP session with MX server mx1.dialback.test failed during greeting: timed out",
    ),
    (
        {"mail": RESET},
        "451 SMTP session with MX server mx1.dialback.test failed during MAIL FROM: "
        "connection closed",
    ),
    (
        {"ehlo": CLOSE},
        "451 SMTP session with MX server mx1.dialback.test failed during EHLO: connection closed",
    ),
    (
        {"greeting": "HTTP/1.0 200 OK"},
        "451 SMTP session with MX server mx1.dialback.test failed during greeting: malformed reply",
    ),
    (
        {"rcpt": b"250-fine\r\n550 not fine\r\n"},
        "451 SMTP session with MX server mx1.dialback.test failed during RCPT TO: malformed reply",
    ),
    ({"greeting": "554 5.7.1 no thanks"}, "421 mx1.dialback.test rejected the connection"),
    ({"ehlo": "421 4.3.2 busy"}, "421 mx1.dialback.test rejected the EHLO command"),
    (
        {"ehlo": "502 5.5.1 what", "helo": "550 5.7.1 not you"},
        "421 mx1.dialback.test rejected the HELO command",
    ),
    (
        {"mail": "553 5.7.1 postmasters not welcome"},
        "421 mx1.dialback.test rejected the MAIL FROM command",
    ),
    (
        {"rcpt": "450 4.2.1 later"},
        "421-Unable to validate sender address.\n"
        "421 MX server mx1.dialback.test provided unknown reply",
    ),
]


@pytest.mark.parametrize(
    ("script", "reply"),
    FAULTS,
    ids=[
        "rcpt-hangs",
        "greeting-hangs",
        "mail-reset",
        "ehlo-closed",
        "garbage-greeting",
        "garbage-rcpt",
        "greeting-554",
        "ehlo-421",
        "helo-550",
        "mail-553",
        "rcpt-450",
    ],
)
async def test_faulty_mx(
    dialback: Factory,
    servers: Any,
    dns: TestDnsServer,
    sqlite_store: Store,
    messages: MessageFactory,
    script: dict[str, Any],
    reply: str,
) -> None:
    single_mx(dns, "one.dialback.test")
    mx = await servers.fake(smtp_script(**script))
    flt = await dialback(sqlite_store, smtp_timeout=0.3)
    t0 = time.monotonic()
    decision = await run(flt, messages(sender="someone@one.dialback.test"))
    elapsed = time.monotonic() - t0
    assert decision.verdict is Verdict.TEMPFAIL
    assert decision.reply() == reply
    assert elapsed < (0.8 if HANG in script.values() else 0.25)
    good, bad = await flt.databases()
    assert await entries(good) == await entries(bad) == {}  # nothing learnt
    await mx.wait_eof()  # the connection is closed in every case
    if reply.startswith("421"):
        assert mx.lines[-1] == "QUIT"


async def test_refused_connection(
    dialback: Factory, dns: TestDnsServer, sqlite_store: Store, messages: MessageFactory
) -> None:
    single_mx(dns, "one.dialback.test")  # nobody listens at mx1
    flt = await dialback(sqlite_store)
    decision = await run(flt, messages(sender="someone@one.dialback.test"))
    assert decision.reply() == (
        "451 Unable to connect to MX server mx1.dialback.test: connection refused"
    )


async def test_deadline_for_all_hosts(
    dialback: Factory, servers: Any, sqlite_store: Store, messages: MessageFactory
) -> None:
    mx1 = await servers.fake(smtp_script(greeting=HANG))
    mx2 = await servers.fake(smtp_script(), host="127.0.0.3")
    flt = await dialback(sqlite_store, smtp_timeout=5, callout_timeout=0.4)
    t0 = time.monotonic()
    decision = await run(flt, messages())
    elapsed = time.monotonic() - t0
    assert 0.35 < elapsed < 0.9
    assert decision.reply() == (
        "451 SMTP session with MX server mx1.dialback.test failed during greeting: timed out"
    )
    assert len(mx1.conns) == 1 and mx2.conns == []  # no time left for mx2


# -- DNS -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("domain", "slow"),
    [("x.timeout.test", True), ("x.servfail.test", False), ("x.refused.test", False)],
)
async def test_dns_failure(
    dialback: Factory,
    sqlite_store: Store,
    messages: MessageFactory,
    domain: str,
    slow: bool,
) -> None:
    flt = await dialback(sqlite_store, dns_settings={"timeout": 0.3})
    t0 = time.monotonic()
    decision = await run(flt, messages(sender=f"a@{domain}"))
    elapsed = time.monotonic() - t0
    assert decision.reply() == f"421 DNS failure resolving {domain}"
    if slow:
        assert 0.25 < elapsed < 0.9  # the resolver's deadline, not c-ares' retries
    else:
        assert elapsed < 0.25


async def test_mx_host_without_dns_answer(
    dialback: Factory, dns: TestDnsServer, sqlite_store: Store, messages: MessageFactory
) -> None:
    dns.add("lame.dialback.test. 0 IN MX 10 mx.timeout.test.")
    flt = await dialback(sqlite_store, dns_settings={"timeout": 0.3})
    t0 = time.monotonic()
    decision = await run(flt, messages(sender="a@lame.dialback.test"))
    assert time.monotonic() - t0 < 0.9
    assert decision.reply() == "451 Unable to connect to MX server mx.timeout.test: DNS failure"


async def test_domain_without_mail_server(
    dialback: Factory, dns: TestDnsServer, sqlite_store: Store, messages: MessageFactory
) -> None:
    dns.add("nullmx.dialback.test. 0 IN MX 0 .")
    flt = await dialback(sqlite_store)
    decision = await run(flt, messages(sender="a@nothing.dialback.test"))  # NXDOMAIN
    assert decision.verdict is Verdict.REJECT
    assert decision.reply() == "550 5.1.8 Sender domain has no mail server: nothing.dialback.test"
    decision = await run(flt, messages(sender="a@nullmx.dialback.test"))
    assert decision.reply() == (
        "550 5.7.27 Sender domain does not accept mail (null MX): nullmx.dialback.test"
    )
    good, bad = await flt.databases()
    assert await entries(good) == await entries(bad) == {}  # DNS verdicts are not stored


async def test_prefetch_hook(
    dialback: Factory, servers: Any, dns: TestDnsServer, sqlite_store: Store, tmp_path: Path
) -> None:
    await servers.sink()
    flt = await dialback(sqlite_store)
    ctx = flt.ctx
    msgs = MessageFactory(tmp_path)
    assert flt.dns_queries(msgs(sender=SENDER), ctx) == [("dialback.test", "MX")]
    assert flt.dns_queries(msgs(sender="a@B\u00fccher.dialback.test"), ctx) == [
        ("xn--bcher-kva.dialback.test", "MX")
    ]
    for skipped in (
        msgs(sender=""),
        msgs(sender="invalid"),
        msgs(sender=f"local@{ME}"),
        msgs(sender="a@[127.0.0.1]"),
        msgs(sender=SENDER, auth_user="alice"),
    ):
        assert flt.dns_queries(skipped, ctx) == []
    # a prefetched lookup is the one check uses: one query in all
    msg = msgs(sender=SENDER)
    resolver = await dns_resolver(ctx)
    assert resolver.prefetch(flt.dns_queries(msg, ctx)) == 1
    joined = resolver.stats.joined
    assert await run(flt, msg) is CONTINUE
    assert resolver.stats.joined == joined + 1  # check's MX lookup took the prefetched one
    assert dns.count("dialback.test", "MX") == 1


# -- who is not called back ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "sender",
    ["", f"someone@{ME}", "someone@COURIER.test", "x@hosted.test", "x@sub.hosted.test"],
)
async def test_null_sender_and_local_domains_are_not_called_back(
    dialback: Factory,
    dns: TestDnsServer,
    sqlite_store: Store,
    messages: MessageFactory,
    sender: str,
) -> None:
    flt = await dialback(sqlite_store)
    assert await run(flt, messages(sender=sender)) is CONTINUE
    assert dns.queries == []
    good, bad = await flt.databases()
    assert await entries(good) == await entries(bad) == {}


async def test_local_domains_with_skip_local_off(
    dialback: Factory, dns: TestDnsServer, sqlite_store: Store, messages: MessageFactory
) -> None:
    flt = await dialback(sqlite_store, skip_local=False)
    decision = await run(flt, messages(sender=f"someone@{ME}"))
    assert decision.reply() == f"421 DNS failure resolving {ME}"  # not in the test DNS
    assert dns.count(ME, "MX") >= 1  # c-ares tries a REFUSED query again


async def test_trusted_clients(
    dialback: Factory,
    servers: Any,
    dns: TestDnsServer,
    sqlite_store: Store,
    messages: MessageFactory,
) -> None:
    sink = await servers.sink()
    flt = await dialback(sqlite_store)
    assert await run(flt, messages(auth_user="alice")) is CONTINUE
    assert await run(flt, messages(relay_client=True)) is CONTINUE
    assert sink.connections == 0 and dns.queries == []
    flt = await dialback(sqlite_store, skip_trusted=False)
    assert await run(flt, messages(auth_user="alice")) is CONTINUE
    assert sink.connections == 1


@pytest.mark.parametrize(
    "sender",
    [
        "no-at-sign",
        "a@b@dialback.test",
        "@dialback.test",
        "user@",
        "user@bad..dialback.test",
        "user@bad domain.test",
        "user@[300.1.1.1]",
        "user@" + "x" * 64 + ".test",
        "us<er>@dialback.test",
    ],
)
async def test_invalid_senders(
    dialback: Factory,
    dns: TestDnsServer,
    sqlite_store: Store,
    messages: MessageFactory,
    sender: str,
) -> None:
    flt = await dialback(sqlite_store)
    decision = await run(flt, messages(sender=sender))
    assert decision is INVALID_SENDER
    assert decision.reply() == "501 Envelope sender is invalid"
    assert dns.queries == []


async def test_missing_sender_record(
    dialback: Factory, sqlite_store: Store, messages: MessageFactory
) -> None:
    msg = messages()
    with open(msg.control_paths[0], "rb") as fh:
        lines = fh.read().split(b"\n")
    with open(msg.control_paths[0], "wb") as fh:
        fh.write(b"\n".join(line for line in lines if not line.startswith(b"s")))
    flt = await dialback(sqlite_store)
    decision = await run(flt, Message(msg.data_path, msg.control_paths))
    assert decision is CONTROL_FAILURE
    assert decision.reply() == "451 Internal failure locating control files"


# -- unverifiable senders: the failure action ------------------------------------------------------


async def run_chain(
    dns: TestDnsServer,
    sqlite_store: Store,
    sysconf: Path,
    port: int,
    msg: Message,
    section: dict[str, Any],
    dns_timeout: float = 0.3,
) -> ChainResult:
    """A chain with only ``dialback``, built by the real loader."""
    ctx = make_context(
        "unused", sections=dns_sections(dns, timeout=dns_timeout), sysconfdir=str(sysconf)
    )
    ctx.services.put("store", sqlite_store)
    sections = {"dialback.py": {"smtp_port": port, **section}}
    chain = build_chain(
        [("dialback", frozenset())], lambda s: dict(sections.get(s, {})), ctx.services
    )
    await chain.start()
    try:
        return await chain.run(msg)
    finally:
        await chain.stop()
        await ctx.services.close()


@pytest.mark.parametrize(
    ("section", "reply"),
    [
        ({}, "421 DNS failure resolving x.servfail.test"),
        (
            {"unverifiable": "fail"},
            "451 4.3.0 Temporary failure in mail filtering, try again later",
        ),
        ({"unverifiable": "fail", "on_error": "450 4.4.3 try later"}, "450 4.4.3 try later"),
        ({"unverifiable": "continue"}, "200 Ok"),  # the chain's answer: nobody objected
    ],
)
@pytest.mark.parametrize("domain", ["x.servfail.test", "x.timeout.test"])
async def test_unverifiable_through_the_chain(
    dns: TestDnsServer,
    servers: Any,
    sqlite_store: Store,
    sysconf: Path,
    tmp_path: Path,
    section: dict[str, Any],
    reply: str,
    domain: str,
) -> None:
    msg = MessageFactory(tmp_path)(sender=f"a@{domain}")
    t0 = time.monotonic()
    result = await run_chain(dns, sqlite_store, sysconf, servers.port, msg, section)
    elapsed = time.monotonic() - t0
    assert result.decision.reply() == reply.replace("x.servfail.test", domain)
    assert elapsed < 0.9  # within the DNS deadline (0.3 s) plus start-up


async def test_unverifiable_mx_through_the_chain(
    dns: TestDnsServer, servers: Any, sqlite_store: Store, sysconf: Path, tmp_path: Path
) -> None:
    single_mx(dns, "one.dialback.test")
    await servers.fake(smtp_script(rcpt=HANG))
    msg = MessageFactory(tmp_path)(sender="a@one.dialback.test")
    section = {"unverifiable": "fail", "smtp_timeout": 0.2}
    result = await run_chain(dns, sqlite_store, sysconf, servers.port, msg, section)
    assert (
        result.decision.reply() == "451 4.3.0 Temporary failure in mail filtering, try again later"
    )
    # the filter's own timeout cuts a verification that would take too long
    section = {"smtp_timeout": 5, "callout_timeout": 5, "timeout": 0.3}
    t0 = time.monotonic()
    result = await run_chain(dns, sqlite_store, sysconf, servers.port, msg, section)
    assert time.monotonic() - t0 < 1.0
    assert result.decision.reply() == "451 4.3.0 Mail filtering timed out, try again later"


async def test_unverifiable_modes_direct(
    dialback: Factory,
    servers: Any,
    dns: TestDnsServer,
    sqlite_store: Store,
    messages: MessageFactory,
    caplog: pytest.LogCaptureFixture,
) -> None:
    single_mx(dns, "one.dialback.test")
    await servers.fake(smtp_script(rcpt="452 4.3.1 full"))
    msg = messages(sender="a@one.dialback.test")
    flt = await dialback(sqlite_store, unverifiable="fail")
    with pytest.raises(DialbackError, match=r"cannot verify sender a@one\.dialback\.test: Unable"):
        await run(flt, msg)
    assert DialbackError.log_traceback is False
    flt = await dialback(sqlite_store, unverifiable="continue")
    with caplog.at_level(logging.WARNING):
        assert await run(flt, msg) is CONTINUE
    assert "not verified" in caplog.text and "unverifiable = 'continue'" in caplog.text
    good, _ = await flt.databases()
    assert await entries(good) == {}  # letting it through is not remembering it as good


# -- abuse limits ----------------------------------------------------------------------------------


def counting_server(delay: float, stats: dict[str, int]) -> Callable[[Conn], Awaitable[None]]:
    """An MX that accepts everything, slowly, and counts concurrent sessions."""
    inner = smtp_script()

    async def handler(conn: Conn) -> None:
        stats["now"] = stats.get("now", 0) + 1
        stats["peak"] = max(stats.get("peak", 0), stats["now"])
        stats["total"] = stats.get("total", 0) + 1
        try:
            await asyncio.sleep(delay)
            await inner(conn)
        finally:
            stats["now"] -= 1

    return handler


async def test_one_verification_per_sender(
    dialback: Factory, servers: Any, sqlite_store: Store, messages: MessageFactory
) -> None:
    stats: dict[str, int] = {}
    await servers.fake(counting_server(0.2, stats))
    flt = await dialback(sqlite_store)
    results = await asyncio.gather(*(run(flt, messages()) for _ in range(5)))
    assert results == [CONTINUE] * 5
    assert stats["total"] == 1


async def test_concurrent_callouts_per_host_are_limited(
    dialback: Factory, servers: Any, sqlite_store: Store, messages: MessageFactory
) -> None:
    stats: dict[str, int] = {}
    await servers.fake(counting_server(0.1, stats))
    flt = await dialback(sqlite_store, max_callouts_per_host=2)
    senders = [f"u{i}@dialback.test" for i in range(5)]
    results = await asyncio.gather(*(run(flt, messages(sender=s)) for s in senders))
    assert results == [CONTINUE] * 5
    assert stats["total"] == 5 and stats["peak"] == 2
    assert flt.limiter.active(MX1) == 0


async def test_no_slot_within_the_deadline(
    dialback: Factory, servers: Any, sqlite_store: Store, messages: MessageFactory
) -> None:
    sink = await servers.sink()
    flt = await dialback(sqlite_store, max_callouts_per_host=1, callout_timeout=0.3)
    async with flt.limiter.slot(MX1.upper(), timeout=1):  # another session holds mx1's slot
        t0 = time.monotonic()
        decision = await run(flt, messages())
        elapsed = time.monotonic() - t0
    assert decision.reply() == (
        "451 Unable to connect to MX server mx1.dialback.test: too many concurrent verifications"
    )
    assert 0.25 < elapsed < 0.8
    assert sink.connections == 0


async def test_stop_cancels_running_verifications(
    dialback: Factory, servers: Any, sqlite_store: Store, messages: MessageFactory
) -> None:
    mx = await servers.fake(smtp_script(rcpt=HANG))
    flt = await dialback(sqlite_store, smtp_timeout=30, callout_timeout=30)
    task = asyncio.create_task(run(flt, messages()))
    for _ in range(200):
        await asyncio.sleep(0.01)
        if any(line.startswith("RCPT") for line in mx.lines):
            break
    task.cancel()  # the message gives up; the shared verification goes on
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert len(flt._inflight) == 1
    await flt.stop()
    assert flt._inflight == {}
    await mx.wait_eof(timeout=1.0)


# -- settings and helpers ------------------------------------------------------------------------


def test_defaults() -> None:
    original = {
        "senders_ttl": 604800,
        "senders_purge_interval": 43200,
        "smtp_timeout": 20,  # the original's 60 was never applied
        "postmaster_addr": None,  # postmaster@ Courier's me, as the original
    }
    assert {k: Dialback.defaults[k] for k in original} == original
    assert Dialback.defaults["smtp_port"] == 25
    assert Dialback.defaults["unverifiable"] == "tempfail"


def test_loaded_by_name() -> None:
    from courier_pyfilter.filters import dialback
    from courier_pyfilter.loader import find_module

    assert find_module("dialback").module is dialback


@pytest.mark.parametrize(
    "settings",
    [
        {"smtp_timeout": 0},
        {"callout_timeout": "45"},
        {"senders_ttl": -1},
        {"smtp_port": 70000},
        {"max_callouts_per_host": 0},
        {"unverifiable": "maybe"},
        {"postmaster_addr": "<pm@x>"},
        {"postmaster_addr": 5},
        {"ehlo": "yes"},
    ],
)
async def test_bad_settings_stop_the_start(
    dialback: Factory, sqlite_store: Store, settings: dict[str, Any]
) -> None:
    with pytest.raises(ValueError, match=next(iter(settings))):
        await dialback(sqlite_store, **settings)


async def test_timeout_warning(
    dialback: Factory, sqlite_store: Store, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        await dialback(sqlite_store, timeout=30, callout_timeout=45)
    assert "callout_timeout (45s) is not shorter than the filter's timeout (30s)" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        await dialback(sqlite_store, timeout=60, callout_timeout=45)
    assert "callout_timeout" not in caplog.text


async def test_verify_api(dialback: Factory, servers: Any, sqlite_store: Store) -> None:
    sink = await servers.sink()
    sink.handler.unknown.add("gone@dialback.test")
    flt = await dialback(sqlite_store)
    found = await flt.verify("gone@dialback.test")
    assert found.status is Status.BAD
    found = await flt.verify(SENDER)
    assert (found.status, found.decision) == (Status.GOOD, CONTINUE)
    for bad in ("", "x", f"a@{ME}"):
        with pytest.raises(ValueError):
            await flt.verify(bad)


def test_callout_decision() -> None:
    reply = SmtpReply(421, ("busy",))
    assert (
        callout_decision(
            CalloutResult("mx\x00.test", Outcome.REFUSED, Stage.GREETING, reply)
        ).reply()
        == "421 mx?.test rejected the connection"
    )
    assert (
        callout_decision(CalloutResult("mx.test", Outcome.REFUSED, Stage.MAIL, reply)).reply()
        == "421 mx.test rejected the MAIL FROM command"
    )
    with pytest.raises(ValueError):
        callout_decision(CalloutResult("mx.test", Outcome.ACCEPTED, Stage.RCPT, reply))
    assert NO_SERVERS.reply() == "421 No SMTP servers were available to authenticate sender"
