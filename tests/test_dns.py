"""The shared resolver against a real DNS server on 127.0.0.1 (see ``dnsserver.py``).

Record types and answer shapes, NXDOMAIN/NODATA, SERVFAIL/REFUSED/unreachable servers,
the real deadline, the cache (TTL 0 and TTL > 0), sharing of identical lookups, prefetch,
and the ``[dns]`` configuration (``host:port`` nameservers, resolv.conf defaults).
"""

from __future__ import annotations

import asyncio
import doctest
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import courier_pyfilter.dns as dnsmod
from courier_pyfilter.dns import (
    MX,
    DnsConfig,
    DnsFailure,
    DnsTimeout,
    DnsUnavailable,
    Resolver,
    dns_resolver,
    format_nameserver,
    list_name,
    parse_nameserver,
    prefetch,
    read_resolv_conf,
    reverse_name,
)
from dnsserver import LISTED_IP, LISTED_IP6, TestDnsServer, txt_record

pytest_plugins = ["dns_fixture"]  # dns_server, dns, resolver, dns_context

TEST_TIMEOUT = 1.0  # the fixtures' resolver deadline (dns_fixture.TEST_TIMEOUT)


class FakeClock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def make_resolver(server: Any, **config: Any) -> Resolver:
    clock = config.pop("clock", time.monotonic)
    config.setdefault("timeout", TEST_TIMEOUT)
    return Resolver(DnsConfig(nameservers=(server.nameserver,), **config), clock=clock)


# -- configuration ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("192.0.2.1", ("192.0.2.1", 53)),
        ("192.0.2.1:5353", ("192.0.2.1", 5353)),
        (" 127.0.0.1:15353 ", ("127.0.0.1", 15353)),
        ("2001:db8::1", ("2001:db8::1", 53)),
        ("[2001:db8::1]", ("2001:db8::1", 53)),
        ("[::1]:5353", ("::1", 5353)),
    ],
)
def test_parse_nameserver(text: str, expected: tuple[str, int]) -> None:
    assert parse_nameserver(text) == expected


@pytest.mark.parametrize(
    "text", ["ns.example.com", "192.0.2.1:0", "192.0.2.1:70000", "192.0.2.1:x", "[::1", "[::1]x"]
)
def test_parse_nameserver_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="nameserver"):
        parse_nameserver(text)


def test_format_nameserver() -> None:
    assert format_nameserver("192.0.2.1") == "192.0.2.1:53"
    assert format_nameserver("::1", 5353) == "[::1]:5353"


def test_config_normalises_nameservers() -> None:
    cfg = DnsConfig(nameservers=("127.0.0.1:5353", "::1", "[::1]:54"))
    assert cfg.nameservers == ("127.0.0.1:5353", "[::1]:53", "[::1]:54")


@pytest.mark.parametrize(
    "bad",
    [
        {"timeout": 0},
        {"timeout": -1},
        {"timeout": True},
        {"tries": 0},
        {"tries": 1.5},
        {"cache_size": -1},
        {"max_ttl": "x"},
        {"nameservers": "127.0.0.1"},
        {"nameservers": ("dns.example",)},
    ],
)
def test_config_refuses_bad_values(bad: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        DnsConfig(**bad)


def test_resolv_conf_defaults(tmp_path: Path) -> None:
    conf = tmp_path / "resolv.conf"
    conf.write_text(
        "# comment\nsearch example.org\nnameserver 192.0.2.53\nnameserver 2001:db8::53\n"
        "nameserver bogus\noptions rotate timeout:2 attempts:4\n"
    )
    found = read_resolv_conf(str(conf))
    assert found.nameservers == ("192.0.2.53:53", "[2001:db8::53]:53")
    assert (found.timeout, found.attempts) == (2.0, 4)
    cfg = DnsConfig.from_section({}, resolv_conf=str(conf))
    assert cfg.nameservers == ("192.0.2.53:53", "[2001:db8::53]:53")
    assert (cfg.timeout, cfg.tries) == (2.0, 4)
    # The section wins over resolv.conf; a string of servers is split; unknown keys ignored.
    cfg = DnsConfig.from_section(
        {
            "nameservers": "127.0.0.1:5353, [::1]:5353",
            "timeout": 3,
            "tries": 2,
            "cache_size": 5,
            "on_error": "continue",
        },
        resolv_conf=str(conf),
    )
    assert cfg.nameservers == ("127.0.0.1:5353", "[::1]:5353")
    assert (cfg.timeout, cfg.tries, cfg.cache_size) == (3.0, 2, 5)


def test_resolv_conf_missing_gives_localhost(tmp_path: Path) -> None:
    cfg = DnsConfig.from_section({}, resolv_conf=str(tmp_path / "none"))
    assert cfg.nameservers == ("127.0.0.1:53",)
    assert (cfg.timeout, cfg.tries) == (dnsmod.DEFAULT_TIMEOUT, dnsmod.DEFAULT_TRIES)


async def test_channel_gets_host_and_port_including_ipv6() -> None:
    r = Resolver(DnsConfig(nameservers=("127.0.0.1:15353", "[::1]:15354")))
    try:
        channel = r._get_channel(asyncio.get_running_loop())
        # aiodns' ``nameservers`` getter hides the port: look at the c-ares channel.
        assert channel._channel.servers == ["127.0.0.1:15353", "[::1]:15354"]
    finally:
        await r.close()


def test_names() -> None:
    assert reverse_name("192.0.2.1") == "1.2.0.192"
    assert list_name("::ffff:192.0.2.1", "bl.test.") == "1.2.0.192.bl.test"
    assert (
        list_name("2001:db8::1", "bl.test")
        == "1.0.0.0." + "0.0.0.0." * 5 + "8.b.d.0.1.0.0.2.bl.test"
    )


def test_doctests() -> None:
    assert doctest.testmod(dnsmod).failed == 0


def test_missing_aiodns_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aiodns", None)
    with pytest.raises(DnsUnavailable, match=r"courier-pyfilter\[dns\]"):
        Resolver(DnsConfig(nameservers=("127.0.0.1",)))


# -- answers ----------------------------------------------------------------------------------


async def test_a_records(resolver: Resolver) -> None:
    assert await resolver.a(list_name(LISTED_IP, "bl.test")) == ("127.0.0.2",)
    assert sorted(await resolver.a("4.0.0.127.bl.test")) == ["127.0.0.10", "127.0.0.4"]
    assert await resolver.a(list_name(LISTED_IP6, "bl.test")) == ("127.0.0.2",)


async def test_aaaa_and_cname(resolver: Resolver) -> None:
    assert await resolver.aaaa("mx1.dialback.test") == ("::1",)
    # The CNAME is followed; only the addresses are values.
    assert await resolver.a("alias.dialback.test") == ("127.0.0.1",)
    assert await resolver.query("alias.dialback.test", "CNAME") == ("mx1.dialback.test",)


async def test_txt_records(resolver: Resolver, dns: TestDnsServer) -> None:
    assert await resolver.txt("pass.spf.test") == ("v=spf1 ip4:127.0.0.1 -all",)
    # The strings of one record are joined without a separator (as SPF requires).
    assert await resolver.txt("twostrings.spf.test") == ("v=spf1 ip4:127.0.0.0/8 -all",)
    assert sorted(await resolver.txt("tworecords.spf.test")) == [
        "google-site-verification=abc",
        "v=spf1 -all",
    ]
    dns.add([txt_record("utf8.spf.test", "café".encode())])
    assert await resolver.txt("utf8.spf.test") == ("café",)


async def test_large_txt_falls_back_to_tcp(resolver: Resolver, dns: TestDnsServer) -> None:
    parts = [chr(ord("a") + i) * 250 for i in range(8)]
    dns.add("big.spf.test. 0 IN TXT " + " ".join(f'"{p}"' for p in parts))
    assert await resolver.txt("big.spf.test") == ("".join(parts),)


async def test_mx_sorted_by_preference(resolver: Resolver) -> None:
    # The zone lists 20 before 10.
    assert await resolver.mx("dialback.test") == (
        MX(10, "mx1.dialback.test"),
        MX(20, "mx2.dialback.test"),
    )


async def test_ptr(resolver: Resolver) -> None:
    assert await resolver.ptr("127.0.0.1") == ("mx1.dialback.test",)
    assert await resolver.ptr("::ffff:127.0.0.5") == ("mail.example.test",)
    assert await resolver.ptr("::1") == ("mx1.dialback.test",)
    assert await resolver.ptr("127.0.0.99") == ()


async def test_nxdomain_nodata_and_bad_names_are_empty(
    resolver: Resolver, dns: TestDnsServer
) -> None:
    assert await resolver.a(list_name("192.0.2.1", "bl.test")) == ()  # NXDOMAIN
    assert await resolver.txt("dialback.test") == ()  # NODATA
    assert await resolver.a("sub.dialback.test") == ()  # empty non-terminal
    long_label = "x" * 64 + ".bl.test"
    assert await resolver.a(long_label) == ()  # cannot exist: not even asked
    assert dns.count(long_label) == 0


async def test_servfail_is_a_failure(resolver: Resolver) -> None:
    with pytest.raises(DnsFailure) as info:
        await resolver.a("x.servfail.test")
    assert info.value.code == 3
    assert (info.value.name, info.value.qtype) == ("x.servfail.test", "A")


async def test_refused_is_a_failure(resolver: Resolver) -> None:
    with pytest.raises(DnsFailure):
        await resolver.a("x.refused.test")
    with pytest.raises(DnsFailure):
        await resolver.a("outside.invalid")  # outside every zone of the server


async def test_unreachable_server_is_a_failure() -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    r = Resolver(DnsConfig(nameservers=(f"127.0.0.1:{port}",), timeout=2.0))
    try:
        t0 = time.monotonic()
        with pytest.raises(DnsFailure):  # ICMP port unreachable, not a timeout
            await r.a("x.bl.test")
        assert time.monotonic() - t0 < 1.5
    finally:
        await r.close()


async def test_no_answer_times_out_at_the_deadline(dns: TestDnsServer) -> None:
    # Many tries with a tiny first timeout: c-ares alone would keep trying for a long
    # time.  The resolver's own deadline ends the lookup.
    r = make_resolver(dns, timeout=0.3, tries=8)
    try:
        for _ in range(5):  # fast answers first (c-ares then uses adaptive timeouts)
            await r.a("2.0.0.127.bl.test")
        t0 = time.monotonic()
        with pytest.raises(DnsTimeout) as info:
            await r.a("x.timeout.test")
        elapsed = time.monotonic() - t0
        assert 0.25 <= elapsed < 0.6
        assert r.stats.timeouts == 1
        assert "0.3 s" in str(info.value)
        # The resolver still works afterwards.
        assert await r.a("2.0.0.127.bl.test") == ("127.0.0.2",)
    finally:
        await r.close()


async def test_slow_answer_within_the_deadline(dns: TestDnsServer) -> None:
    dns.delay["slow.test"] = 0.2
    r = make_resolver(dns, timeout=1.0)
    try:
        for _ in range(5):
            await r.a("2.0.0.127.bl.test")
        assert await r.a("a.slow.test") == ("127.0.0.2",)
    finally:
        await r.close()


# -- cache ------------------------------------------------------------------------------------


async def test_ttl_zero_is_not_cached(resolver: Resolver, dns: TestDnsServer) -> None:
    before = dns.count("zero.ttl.test", "A")
    assert await resolver.a("zero.ttl.test") == ("192.0.2.11",)
    assert await resolver.a("zero.ttl.test") == ("192.0.2.11",)
    assert dns.count("zero.ttl.test", "A") - before == 2
    assert resolver.cached("zero.ttl.test", "A") is None
    assert resolver.stats.cache_hits == 0


async def test_ttl_is_respected(dns: TestDnsServer) -> None:
    clock = FakeClock()
    r = make_resolver(dns, clock=clock)
    try:
        assert await r.a("long.ttl.test") == ("192.0.2.10",)
        assert await r.a("LONG.ttl.test.") == ("192.0.2.10",)  # same question
        assert (r.stats.queries, r.stats.cache_hits) == (1, 1)
        assert r.cached("long.ttl.test", "A") == ("192.0.2.10",)
        clock.now += 299
        await r.a("long.ttl.test")
        assert r.stats.queries == 1
        clock.now += 2  # TTL 300 has passed
        assert r.cached("long.ttl.test", "A") is None
        await r.a("long.ttl.test")
        assert r.stats.queries == 2
    finally:
        await r.close()


async def test_cache_bounds(dns: TestDnsServer) -> None:
    clock = FakeClock()
    dns.add("a.ttl.test. 300 IN A 192.0.2.1\nb.ttl.test. 300 IN A 192.0.2.2")
    r = make_resolver(dns, clock=clock, cache_size=1, max_ttl=10)
    try:
        await r.a("a.ttl.test")
        await r.a("b.ttl.test")  # evicts a.ttl.test
        assert r.cached("a.ttl.test", "A") is None
        assert r.cached("b.ttl.test", "A") == ("192.0.2.2",)
        clock.now += 11  # max_ttl caps the TTL of 300
        assert r.cached("b.ttl.test", "A") is None
    finally:
        await r.close()


async def test_negative_ttl(dns: TestDnsServer) -> None:
    clock = FakeClock()
    r = make_resolver(dns, clock=clock, negative_ttl=30)
    try:
        assert await r.a("nothing.bl.test") == ()
        assert await r.a("nothing.bl.test") == ()
        assert r.stats.queries == 1
        clock.now += 31
        await r.a("nothing.bl.test")
        assert r.stats.queries == 2
    finally:
        await r.close()


async def test_failures_are_not_cached(resolver: Resolver, dns: TestDnsServer) -> None:
    for _ in range(2):
        with pytest.raises(DnsFailure):
            await resolver.a("y.servfail.test")
    assert resolver.stats.queries == 2


# -- sharing ----------------------------------------------------------------------------------


async def test_identical_concurrent_lookups_share_one_query(
    resolver: Resolver, dns: TestDnsServer
) -> None:
    dns.delay["shared.slow.test"] = 0.15
    answers = await asyncio.gather(*(resolver.a("shared.slow.test") for _ in range(10)))
    assert answers == [("127.0.0.2",)] * 10
    assert dns.count("shared.slow.test", "A") == 1
    assert (resolver.stats.queries, resolver.stats.joined) == (1, 9)


async def test_cancelling_one_caller_does_not_cancel_the_lookup(
    resolver: Resolver, dns: TestDnsServer
) -> None:
    dns.delay["cancel.slow.test"] = 0.15
    first = asyncio.ensure_future(resolver.a("cancel.slow.test"))
    second = asyncio.ensure_future(resolver.a("cancel.slow.test"))
    await asyncio.sleep(0.02)
    first.cancel()
    assert await second == ("127.0.0.2",)
    assert first.cancelled()
    assert dns.count("cancel.slow.test", "A") == 1


async def test_a_timeout_reaches_every_waiter(dns: TestDnsServer) -> None:
    r = make_resolver(dns, timeout=0.2)
    try:
        results = await asyncio.gather(
            *(r.a("w.timeout.test") for _ in range(3)), return_exceptions=True
        )
        assert all(isinstance(x, DnsTimeout) for x in results)
        assert r.stats.queries == 1
    finally:
        await r.close()


# -- prefetch ---------------------------------------------------------------------------------


async def test_prefetch_result_is_kept_for_the_filters(
    resolver: Resolver, dns: TestDnsServer
) -> None:
    name = list_name(LISTED_IP, "bl.test")
    started = resolver.prefetch([(name, "A"), ("pass.spf.test", "TXT"), (name, "A"), ("x", "SOA")])
    assert started == 2  # the duplicate and the unsupported type are skipped
    for _ in range(100):
        if dns.count(name, "A") and dns.count("pass.spf.test", "TXT"):
            break
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.02)
    # TTL 0, yet the filters get the prefetched answers without asking the server again.
    assert await resolver.a(name) == ("127.0.0.2",)
    assert await resolver.txt("pass.spf.test") == ("v=spf1 ip4:127.0.0.1 -all",)
    assert dns.count(name, "A") == 1
    assert dns.count("pass.spf.test", "TXT") == 1
    assert resolver.stats.joined == 2
    assert resolver.stats.prefetched == 2


async def test_prefetch_hold_expires(dns: TestDnsServer) -> None:
    clock = FakeClock()
    r = make_resolver(dns, clock=clock, prefetch_hold=5)
    try:
        r.prefetch([("zero.ttl.test", "A")])
        assert await r.a("zero.ttl.test") == ("192.0.2.11",)
        assert r.stats.queries == 1
        clock.now += 6
        await r.a("zero.ttl.test")
        assert r.stats.queries == 2
    finally:
        await r.close()


async def test_prefetched_failure_is_shared(resolver: Resolver, dns: TestDnsServer) -> None:
    resolver.prefetch([("p.servfail.test", "A")])
    await asyncio.sleep(0.1)
    with pytest.raises(DnsFailure):
        await resolver.a("p.servfail.test")
    assert resolver.stats.queries == 1


async def test_prefetch_makes_k_lookups_cost_one_round_trip(
    resolver: Resolver, dns: TestDnsServer
) -> None:
    delay = 0.2
    dns.delay_all = delay
    names = [list_name(LISTED_IP, zone) for zone in ("bl.test", "bl2.test", "wl.test")]
    t0 = time.monotonic()
    resolver.prefetch([(n, "A") for n in names])
    for n in names:  # the filters run one after the other
        assert await resolver.a(n)
    elapsed = time.monotonic() - t0
    assert elapsed < 2 * delay  # sequential lookups would take 3 * delay


async def test_shared_resolver_from_the_context(dns_context: Any, dns: TestDnsServer) -> None:
    ctx = dns_context("some_filter")
    r = await dns_resolver(ctx)
    assert await dns_resolver(ctx) is r
    assert await dns_resolver(ctx.services) is r
    assert r.config.nameservers == (dns.nameserver,)
    assert r.config.timeout == TEST_TIMEOUT
    assert await prefetch(ctx, [("pass.spf.test", "TXT")]) == 1
    assert await prefetch(r, [("pass.spf.test", "TXT")]) == 0  # already running
    assert await r.txt("pass.spf.test") == ("v=spf1 ip4:127.0.0.1 -all",)


async def test_bad_dns_section_is_a_service_error(dns_context: Any) -> None:
    ctx = dns_context("some_filter", dns_settings={"timeout": "soon"})
    with pytest.raises(DnsUnavailable, match=r"\[dns\] timeout"):
        await dns_resolver(ctx)


async def test_close_fails_running_lookups(dns: TestDnsServer) -> None:
    dns.delay["closing.slow.test"] = 0.3
    r = make_resolver(dns)
    pending = asyncio.ensure_future(r.a("closing.slow.test"))
    await asyncio.sleep(0.02)
    await r.close()
    with pytest.raises(DnsFailure, match="closed"):
        await pending
    with pytest.raises(DnsFailure, match="closed"):
        await r.a("2.0.0.127.bl.test")


# -- a server on ::1 --------------------------------------------------------------------------


def _ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as sock:
            sock.bind(("::1", 0))
        return True
    except OSError:
        return False


@pytest.mark.skipif(not _ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
async def test_ipv6_nameserver_with_port() -> None:
    with TestDnsServer(host="::1") as server:
        assert server.nameserver.startswith("[::1]:")
        r = Resolver(DnsConfig(nameservers=(server.nameserver,), timeout=TEST_TIMEOUT))
        try:
            assert await r.a("2.0.0.127.bl.test") == ("127.0.0.2",)
        finally:
            await r.close()
        assert server.count("2.0.0.127.bl.test", "A") == 1


async def test_a_new_prefetch_asks_again(resolver: Resolver, dns: TestDnsServer) -> None:
    # A held result serves the filters of the message that prefetched it; the next
    # message's prefetch gets a fresh answer (and a fresh chance after a failure).
    assert resolver.prefetch([("zero.ttl.test", "A"), ("q.servfail.test", "A")]) == 2
    assert await resolver.a("zero.ttl.test") == ("192.0.2.11",)
    with pytest.raises(DnsFailure):
        await resolver.a("q.servfail.test")
    dns.remove("zero.ttl.test")
    dns.add("zero.ttl.test. 0 IN A 192.0.2.12")
    dns.servfail.discard("servfail.test")
    dns.add("q.servfail.test. 0 IN A 192.0.2.13")
    assert resolver.prefetch([("zero.ttl.test", "A"), ("q.servfail.test", "A")]) == 2
    assert await resolver.a("zero.ttl.test") == ("192.0.2.12",)
    assert await resolver.a("q.servfail.test") == ("192.0.2.13",)
    assert dns.count("zero.ttl.test", "A") == 2


# -- the test server itself -------------------------------------------------------------------


def test_unavailable_server_skips_locally_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import dns_fixture

    monkeypatch.setattr(dns_fixture, "IN_CI", False)
    with pytest.raises(pytest.skip.Exception, match="no server"):
        dns_fixture.unavailable("no server")
    monkeypatch.setattr(dns_fixture, "IN_CI", True)
    with pytest.raises(pytest.fail.Exception, match=r"CI=true.*no server"):
        dns_fixture.unavailable("no server")


async def test_server_as_a_separate_process() -> None:
    from dnsserver import spawn_server

    proc = spawn_server(delay_all=0.05)
    try:
        r = Resolver(DnsConfig(nameservers=(proc.nameserver,), timeout=TEST_TIMEOUT))
        try:
            t0 = time.monotonic()
            assert await r.mx("dialback.test") == (
                MX(10, "mx1.dialback.test"),
                MX(20, "mx2.dialback.test"),
            )
            assert time.monotonic() - t0 >= 0.05  # the delay knob
        finally:
            await r.close()
    finally:
        proc.stop()
    assert proc.proc.returncode is not None
