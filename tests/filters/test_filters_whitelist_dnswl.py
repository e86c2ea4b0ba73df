"""``whitelist_dnswl`` through a real DNS server (``tests/dnsserver.py``).

The original's behaviour (any A answer in a zone of ``dnswl_zone`` -> ``200 Ok``), plus
IPv6, a bare-string zone, ignored answers, and the failure cases: a DNS failure lets the
chain continue (it is a whitelist) within the resolver's deadline.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.chain import ChainResult
from courier_pyfilter.decision import CONTINUE, Verdict
from courier_pyfilter.dns import DnsFailure, DnsTimeout, dns_resolver, list_name, prefetch
from courier_pyfilter.filters.whitelist_dnswl import WhitelistDnswl
from courier_pyfilter.loader import build_chain
from courier_pyfilter.testing import make_message
from dnsserver import (
    BL2_ONLY_IP,
    CLEAN_IP,
    LISTED_IP,
    LISTED_IP6,
    WL_BLOCKED_IP,
    TestDnsServer,
)

pytest_plugins = ["dns_fixture"]  # dns_server, dns, dns_context


async def started(ctx: Any) -> WhitelistDnswl:
    flt = WhitelistDnswl(ctx)
    await flt.start()
    return flt


async def check(
    dns_context: Any,
    tmp_path: Path,
    settings: Mapping[str, Any],
    dns_settings: Mapping[str, Any] | None = None,
    **msg: Any,
) -> Any:
    ctx = dns_context(
        "whitelist_dnswl", settings, defaults=WhitelistDnswl.defaults, dns_settings=dns_settings
    )
    flt = await started(ctx)
    return await flt.check(make_message(tmp_path, **msg), ctx)


async def run_chain(
    dns_context: Any,
    tmp_path: Path,
    sections: Mapping[str, Mapping[str, Any]],
    lines: Sequence[str] = ("whitelist_dnswl",),
    dns_settings: Mapping[str, Any] | None = None,
    **msg: Any,
) -> ChainResult:
    """Run a chain built by the real loader, as the server does."""
    ctx = dns_context("unused", dns_settings=dns_settings)
    chain = build_chain(
        [(name, frozenset()) for name in lines],
        lambda section: dict(sections.get(section, {})),
        ctx.services,
    )
    await chain.start()
    try:
        return await chain.run(make_message(tmp_path, **msg))
    finally:
        await chain.stop()


# -- the original's behaviour -----------------------------------------------------------------


async def test_listed_client_is_accepted(dns_context: Any, tmp_path: Path) -> None:
    decision = await check(dns_context, tmp_path, {"dnswl_zone": ["wl.test"]}, client_ip=LISTED_IP)
    assert decision.verdict is Verdict.ACCEPT
    assert decision.reply() == "200 Ok"


async def test_unlisted_client_continues(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    decision = await check(dns_context, tmp_path, {"dnswl_zone": ["wl.test"]}, client_ip=CLEAN_IP)
    assert decision is CONTINUE
    assert dns.count(list_name(CLEAN_IP, "wl.test"), "A") == 1


async def test_no_client_address_continues_without_lookups(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    decision = await check(dns_context, tmp_path, {"dnswl_zone": ["wl.test"]}, client_ip=None)
    assert decision is CONTINUE
    assert dns.queries == []


async def test_default_zone_is_dnswl_org(dns_context: Any, dns: TestDnsServer) -> None:
    ctx = dns_context("whitelist_dnswl", {}, defaults=WhitelistDnswl.defaults)
    flt = await started(ctx)
    assert flt.zones == ("list.dnswl.org",)


async def test_any_answer_counts_by_default(dns_context: Any, tmp_path: Path) -> None:
    # 127.0.0.255 is dnswl.org's "blocked querier" answer; the original accepts on it.
    decision = await check(
        dns_context, tmp_path, {"dnswl_zone": ["wl.test"]}, client_ip=WL_BLOCKED_IP
    )
    assert decision.verdict is Verdict.ACCEPT


async def test_ignored_answers_do_not_count(dns_context: Any, tmp_path: Path) -> None:
    settings = {"dnswl_zone": ["wl.test"], "ignore_answers": ["127.0.0.255"]}
    assert await check(dns_context, tmp_path, settings, client_ip=WL_BLOCKED_IP) is CONTINUE
    decision = await check(dns_context, tmp_path, settings, client_ip=LISTED_IP)
    assert decision.verdict is Verdict.ACCEPT


async def test_any_zone_of_several(dns_context: Any, dns: TestDnsServer, tmp_path: Path) -> None:
    settings = {"dnswl_zone": ["wl2.test", "wl.test"]}
    assert (await check(dns_context, tmp_path, settings, client_ip=LISTED_IP)).verdict is (
        Verdict.ACCEPT
    )
    assert (await check(dns_context, tmp_path, settings, client_ip=BL2_ONLY_IP)).verdict is (
        Verdict.ACCEPT
    )
    assert await check(dns_context, tmp_path, settings, client_ip=CLEAN_IP) is CONTINUE


# -- improvements -----------------------------------------------------------------------------


async def test_bare_string_zone_is_one_zone(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    decision = await check(dns_context, tmp_path, {"dnswl_zone": "wl.test"}, client_ip=LISTED_IP)
    assert decision.verdict is Verdict.ACCEPT
    # One lookup in wl.test, not one per character of the string.
    assert dns.queries == [(list_name(LISTED_IP, "wl.test"), "A")]


async def test_ipv6_client_in_nibble_format(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    decision = await check(dns_context, tmp_path, {"dnswl_zone": "wl.test"}, client_ip=LISTED_IP6)
    assert decision.verdict is Verdict.ACCEPT
    name = list_name(LISTED_IP6, "wl.test")
    assert name.startswith("2.0.0.0.0.0.0.0.") and name.count(".") == 33
    assert dns.count(name, "A") == 1


async def test_ipv6_can_be_switched_off(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    settings = {"dnswl_zone": "wl.test", "ipv6": False}
    assert await check(dns_context, tmp_path, settings, client_ip=LISTED_IP6) is CONTINUE
    assert dns.queries == []


async def test_ipv4_mapped_client_is_looked_up_as_ipv4(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    decision = await check(
        dns_context, tmp_path, {"dnswl_zone": "wl.test"}, client_ip=f"::ffff:{LISTED_IP}"
    )
    assert decision.verdict is Verdict.ACCEPT
    assert dns.queries == [(list_name(LISTED_IP, "wl.test"), "A")]


@pytest.mark.parametrize("zones", [5, [""], ["wl.test", 3], None])
async def test_invalid_zone_setting_stops_start(dns_context: Any, zones: Any) -> None:
    ctx = dns_context("whitelist_dnswl", {"dnswl_zone": zones}, defaults=WhitelistDnswl.defaults)
    with pytest.raises(ValueError, match="dnswl_zone"):
        await started(ctx)


# -- failures ---------------------------------------------------------------------------------


async def test_dns_failure_raises_from_check(dns_context: Any, tmp_path: Path) -> None:
    with pytest.raises(DnsFailure):
        await check(dns_context, tmp_path, {"dnswl_zone": "servfail.test"}, client_ip=LISTED_IP)


async def test_a_listing_wins_over_a_failing_zone(dns_context: Any, tmp_path: Path) -> None:
    settings = {"dnswl_zone": ["servfail.test", "timeout.test", "wl.test"]}
    decision = await check(
        dns_context, tmp_path, settings, dns_settings={"timeout": 0.3}, client_ip=LISTED_IP
    )
    assert decision.verdict is Verdict.ACCEPT


async def test_chain_continues_on_servfail(dns_context: Any, tmp_path: Path) -> None:
    result = await run_chain(
        dns_context,
        tmp_path,
        {"whitelist_dnswl.py": {"dnswl_zone": "servfail.test"}},
        client_ip=LISTED_IP,
    )
    assert result.decision.reply() == "200 Ok"  # nobody decided
    assert result.outcomes[0].decision is CONTINUE
    assert result.outcomes[0].error is not None and "DnsFailure" in result.outcomes[0].error


async def test_chain_continues_on_timeout_within_the_deadline(
    dns_context: Any, tmp_path: Path
) -> None:
    t0 = time.monotonic()
    result = await run_chain(
        dns_context,
        tmp_path,
        {"whitelist_dnswl.py": {"dnswl_zone": "timeout.test"}},
        dns_settings={"timeout": 0.3},
        client_ip=LISTED_IP,
    )
    elapsed = time.monotonic() - t0
    assert result.outcomes[0].decision is CONTINUE
    assert "DnsTimeout" in (result.outcomes[0].error or "")
    assert elapsed < 0.8


async def test_on_error_tempfail_is_honoured(dns_context: Any, tmp_path: Path) -> None:
    result = await run_chain(
        dns_context,
        tmp_path,
        {"whitelist_dnswl.py": {"dnswl_zone": "servfail.test", "on_error": "tempfail"}},
        client_ip=LISTED_IP,
    )
    assert result.decision.verdict is Verdict.TEMPFAIL


async def test_loaded_by_name_as_a_whitelist(dns_context: Any, tmp_path: Path) -> None:
    result = await run_chain(
        dns_context,
        tmp_path,
        {"whitelist_dnswl.py": {"dnswl_zone": ["wl.test"]}},
        client_ip=LISTED_IP,
    )
    assert result.deciding == "whitelist_dnswl"
    assert result.decision.reply() == "200 Ok"


# -- prefetch ---------------------------------------------------------------------------------


async def test_dns_queries_match_the_lookups(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    ctx = dns_context(
        "whitelist_dnswl", {"dnswl_zone": ["wl.test", "wl2.test"]}, defaults=WhitelistDnswl.defaults
    )
    flt = await started(ctx)
    msg = make_message(tmp_path, client_ip=LISTED_IP)
    queries = flt.dns_queries(msg, ctx)
    assert queries == [
        (list_name(LISTED_IP, "wl.test"), "A"),
        (list_name(LISTED_IP, "wl2.test"), "A"),
    ]
    assert flt.dns_queries(make_message(tmp_path, client_ip=None), ctx) == []
    assert await prefetch(ctx, queries) == 2
    decision = await flt.check(msg, ctx)
    assert decision.verdict is Verdict.ACCEPT
    assert len(dns.queries) == 2  # the check reused the prefetched lookups
    assert (await dns_resolver(ctx)).stats.joined == 2


async def test_timeout_error_type(dns_context: Any, tmp_path: Path) -> None:
    ctx = dns_context(
        "whitelist_dnswl",
        {"dnswl_zone": "timeout.test"},
        defaults=WhitelistDnswl.defaults,
        dns_settings={"timeout": 0.2},
    )
    flt = await started(ctx)
    with pytest.raises(DnsTimeout):
        await flt.check(make_message(tmp_path, client_ip=LISTED_IP), ctx)


def test_is_a_whitelist() -> None:
    assert WhitelistDnswl.whitelist is True
