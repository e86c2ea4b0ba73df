"""``dnsbl`` through a real DNS server (``tests/dnsserver.py``).

Client-address lists and domain lists (RHSBL), scores, answer maps, allow-lists, the
reply, and the failure cases: SERVFAIL and timeouts give the failure action (451 through
the chain) within the deadline, or count as "not listed" with ``dns_error = 'ignore'``.
Also: prefetching the lookups of two DNS filters costs about one round trip.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.chain import ChainResult
from courier_pyfilter.decision import CONTINUE, Verdict
from courier_pyfilter.dns import DnsFailure, DnsTimeout, dns_resolver, list_name, prefetch
from courier_pyfilter.filters.dnsbl import Dnsbl
from courier_pyfilter.filters.whitelist_dnswl import WhitelistDnswl
from courier_pyfilter.loader import build_chain
from courier_pyfilter.testing import make_message
from dnsserver import (
    BL2_ONLY_IP,
    CLEAN_DOMAIN,
    CLEAN_IP,
    ERROR_CODE_IP,
    LISTED_DOMAIN,
    LISTED_IP,
    LISTED_IP6,
    MULTI_CODE_IP,
    PHISH_DOMAIN,
    TestDnsServer,
    txt_record,
)

pytest_plugins = ["dns_fixture"]  # dns_server, dns, dns_context


async def started(ctx: Any) -> Dnsbl:
    flt = Dnsbl(ctx)
    await flt.start()
    return flt


async def check(
    dns_context: Any,
    tmp_path: Path,
    settings: Mapping[str, Any],
    dns_settings: Mapping[str, Any] | None = None,
    **msg: Any,
) -> Any:
    ctx = dns_context("dnsbl", settings, defaults=Dnsbl.defaults, dns_settings=dns_settings)
    flt = await started(ctx)
    return await flt.check(make_message(tmp_path, **msg), ctx)


async def run_chain(
    dns_context: Any,
    tmp_path: Path,
    settings: Mapping[str, Any],
    dns_settings: Mapping[str, Any] | None = None,
    **msg: Any,
) -> ChainResult:
    """A chain with only ``dnsbl``, built by the real loader."""
    ctx = dns_context("unused", dns_settings=dns_settings)
    sections = {"dnsbl.py": dict(settings)}
    chain = build_chain([("dnsbl", frozenset())], lambda s: dict(sections.get(s, {})), ctx.services)
    await chain.start()
    try:
        return await chain.run(make_message(tmp_path, **msg))
    finally:
        await chain.stop()


# -- client address lists ---------------------------------------------------------------------


async def test_listed_client_is_rejected(dns_context: Any, tmp_path: Path) -> None:
    decision = await check(dns_context, tmp_path, {"lists": ["bl.test"]}, client_ip=LISTED_IP)
    assert decision.verdict is Verdict.REJECT
    assert decision.reply() == (
        "554 5.7.1 Message refused: 127.0.0.2 is listed in bl.test (127.0.0.2)"
    )


async def test_clean_client_continues(dns_context: Any, dns: TestDnsServer, tmp_path: Path) -> None:
    settings = {"lists": ["bl.test", "bl2.test"]}
    assert await check(dns_context, tmp_path, settings, client_ip=CLEAN_IP) is CONTINUE
    assert sorted(dns.queries) == [
        (list_name(CLEAN_IP, "bl.test"), "A"),
        (list_name(CLEAN_IP, "bl2.test"), "A"),
    ]


async def test_nothing_configured_continues(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    assert await check(dns_context, tmp_path, {}, client_ip=LISTED_IP) is CONTINUE
    assert dns.queries == []


async def test_scores_add_up_to_the_threshold(dns_context: Any, tmp_path: Path) -> None:
    settings = {"lists": {"bl.test": 3, "bl2.test": 3}, "threshold": 5}
    decision = await check(dns_context, tmp_path, settings, client_ip=LISTED_IP)
    assert decision.verdict is Verdict.REJECT
    text = decision.reply()
    assert "listed in bl.test (127.0.0.2)" in text and "listed in bl2.test (127.0.0.3)" in text
    # Listed in bl2.test only: 3 < 5.
    assert await check(dns_context, tmp_path, settings, client_ip=BL2_ONLY_IP) is CONTINUE


async def test_answer_map_scores(dns_context: Any, tmp_path: Path) -> None:
    # MULTI_CODE_IP answers 127.0.0.4 and 127.0.0.10: the list adds its best score.
    settings = {"lists": {"bl.test": {"127.0.0.4": 2, "127.0.0.10/31": 4}}, "threshold": 4}
    decision = await check(dns_context, tmp_path, settings, client_ip=MULTI_CODE_IP)
    assert decision.verdict is Verdict.REJECT
    settings = {"lists": {"bl.test": {"127.0.0.4": 2}}, "threshold": 4}
    assert await check(dns_context, tmp_path, settings, client_ip=MULTI_CODE_IP) is CONTINUE
    # An answer the map does not name does not count at all.
    settings = {"lists": {"bl.test": {"127.0.0.4": 9}}, "threshold": 1}
    assert await check(dns_context, tmp_path, settings, client_ip=LISTED_IP) is CONTINUE


async def test_error_answers_do_not_count(dns_context: Any, tmp_path: Path) -> None:
    # bl.test answers 127.255.255.254 for ERROR_CODE_IP (e.g. "public resolver").
    settings = {"lists": ["bl.test"]}
    assert await check(dns_context, tmp_path, settings, client_ip=ERROR_CODE_IP) is CONTINUE
    settings = {"lists": ["bl.test"], "ignore_answers": []}
    decision = await check(dns_context, tmp_path, settings, client_ip=ERROR_CODE_IP)
    assert decision.verdict is Verdict.REJECT


async def test_answers_outside_loopback_never_count(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    dns.add(f"{list_name('192.0.2.77', 'bl.test')}. 0 IN A 192.0.2.1")  # a wildcarding typo
    decision = await check(dns_context, tmp_path, {"lists": ["bl.test"]}, client_ip="192.0.2.77")
    assert decision is CONTINUE


async def test_negative_scores(dns_context: Any, tmp_path: Path) -> None:
    settings = {"lists": {"bl.test": 5, "wl.test": -5}, "threshold": 5}
    assert await check(dns_context, tmp_path, settings, client_ip=LISTED_IP) is CONTINUE


async def test_ipv6_client(dns_context: Any, dns: TestDnsServer, tmp_path: Path) -> None:
    decision = await check(dns_context, tmp_path, {"lists": ["bl.test"]}, client_ip=LISTED_IP6)
    assert decision.verdict is Verdict.REJECT
    assert "2001:db8::2 is listed in bl.test" in decision.reply()
    dns.clear_log()
    settings = {"lists": ["bl.test"], "ipv6": False}
    assert await check(dns_context, tmp_path, settings, client_ip=LISTED_IP6) is CONTINUE
    assert dns.queries == []


async def test_reply_code_text_and_txt(dns_context: Any, tmp_path: Path) -> None:
    settings = {
        "lists": ["bl.test"],
        "code": "550",
        "reply": "5.7.1 Blocked ({score}): {reasons}",
        "txt": True,
    }
    decision = await check(dns_context, tmp_path, settings, client_ip=LISTED_IP)
    assert decision.reply() == (
        "550 5.7.1 Blocked (1): 127.0.0.2 is listed in bl.test (127.0.0.2): "
        "Listed in bl.test, see https://bl.test/q?127.0.0.2"
    )
    settings = {"lists": ["bl.test"], "code": "450"}
    decision = await check(dns_context, tmp_path, settings, client_ip=LISTED_IP)
    assert decision.verdict is Verdict.TEMPFAIL
    assert decision.reply().startswith("450 ")


async def test_txt_is_sanitised(dns_context: Any, dns: TestDnsServer, tmp_path: Path) -> None:
    name = list_name(BL2_ONLY_IP, "bl2.test")
    dns.add([txt_record(name, b"line1\r\nline2 \xff ", b"x" * 250)])
    settings = {"lists": ["bl2.test"], "txt": True}
    decision = await check(dns_context, tmp_path, settings, client_ip=BL2_ONLY_IP)
    reply = decision.reply()
    assert "\n" not in reply and "\r" not in reply
    assert "line1??line2 ? xxx" in reply
    assert reply.endswith("...") and len(reply) < 400


# -- domain lists -----------------------------------------------------------------------------


async def test_listed_sender_domain(dns_context: Any, tmp_path: Path) -> None:
    settings = {"domain_lists": ["dbl.test"]}
    decision = await check(
        dns_context, tmp_path, settings, client_ip=CLEAN_IP, sender=f"bob@{LISTED_DOMAIN}"
    )
    assert decision.verdict is Verdict.REJECT
    assert f"sender domain {LISTED_DOMAIN} is listed in dbl.test (127.0.1.2)" in decision.reply()
    decision = await check(
        dns_context, tmp_path, settings, client_ip=CLEAN_IP, sender=f"bob@{CLEAN_DOMAIN}"
    )
    assert decision is CONTINUE


async def test_null_sender_has_no_domain(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    settings = {"domain_lists": ["dbl.test"]}
    assert await check(dns_context, tmp_path, settings, client_ip=CLEAN_IP, sender="") is CONTINUE
    assert dns.queries == []


async def test_helo_domain(dns_context: Any, tmp_path: Path) -> None:
    settings = {"domain_lists": {"dbl.test": 2}, "threshold": 2, "domains": ["sender", "helo"]}
    decision = await check(
        dns_context,
        tmp_path,
        settings,
        client_ip=CLEAN_IP,
        sender=f"a@{CLEAN_DOMAIN}",
        helo=PHISH_DOMAIN.upper() + ".",
    )
    assert decision.verdict is Verdict.REJECT
    assert f"helo domain {PHISH_DOMAIN} is listed in dbl.test (127.0.1.4)" in decision.reply()


async def test_address_literals_are_not_domains(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    settings = {"domain_lists": ["dbl.test"], "domains": ["helo"]}
    for helo in ("[192.0.2.1]", "192.0.2.1", "localhost"):
        assert await check(dns_context, tmp_path, settings, client_ip=CLEAN_IP, helo=helo) is (
            CONTINUE
        )
    assert dns.queries == []


async def test_client_and_domain_scores_add_up(dns_context: Any, tmp_path: Path) -> None:
    settings = {"lists": {"bl2.test": 2}, "domain_lists": {"dbl.test": 2}, "threshold": 4}
    decision = await check(
        dns_context, tmp_path, settings, client_ip=BL2_ONLY_IP, sender=f"x@{LISTED_DOMAIN}"
    )
    assert decision.verdict is Verdict.REJECT
    assert (
        await check(
            dns_context, tmp_path, settings, client_ip=BL2_ONLY_IP, sender=f"x@{CLEAN_DOMAIN}"
        )
        is CONTINUE
    )


# -- exemptions -------------------------------------------------------------------------------


async def test_allowed_ips_are_not_checked(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    settings = {"lists": ["bl.test"], "domain_lists": ["dbl.test"], "allow_ips": ["127.0.0.0/8"]}
    decision = await check(
        dns_context, tmp_path, settings, client_ip=LISTED_IP, sender=f"x@{LISTED_DOMAIN}"
    )
    assert decision is CONTINUE
    assert dns.queries == []


async def test_allowed_domains_and_subdomains_are_not_checked(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    settings = {"domain_lists": ["dbl.test"], "allow_domains": [CLEAN_DOMAIN]}
    decision = await check(
        dns_context, tmp_path, settings, client_ip=CLEAN_IP, sender=f"x@{LISTED_DOMAIN}"
    )
    assert decision is CONTINUE  # spammer.example.test is below example.test
    assert dns.queries == []


async def test_trusted_clients_are_skipped(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    settings = {"lists": ["bl.test"]}
    msg: dict[str, Any] = {"client_ip": LISTED_IP, "auth_user": "alice"}
    assert await check(dns_context, tmp_path, settings, **msg) is CONTINUE
    relay: dict[str, Any] = {"client_ip": LISTED_IP, "relay_client": True}
    assert await check(dns_context, tmp_path, settings, **relay) is CONTINUE
    assert dns.queries == []
    decision = await check(dns_context, tmp_path, {**settings, "skip_trusted": False}, **msg)
    assert decision.verdict is Verdict.REJECT


async def test_local_mail_is_not_checked(dns_context: Any, tmp_path: Path) -> None:
    settings = {"lists": ["bl.test"], "domain_lists": ["dbl.test"]}
    decision = await check(
        dns_context, tmp_path, settings, client_ip=None, sender=f"x@{LISTED_DOMAIN}"
    )
    assert decision is CONTINUE


# -- failures ---------------------------------------------------------------------------------


async def test_servfail_fails_the_filter(dns_context: Any, tmp_path: Path) -> None:
    with pytest.raises(DnsFailure):
        await check(dns_context, tmp_path, {"lists": ["servfail.test"]}, client_ip=CLEAN_IP)


async def test_servfail_tempfails_through_the_chain(dns_context: Any, tmp_path: Path) -> None:
    result = await run_chain(
        dns_context, tmp_path, {"lists": ["bl.test", "servfail.test"]}, client_ip=CLEAN_IP
    )
    assert result.decision.verdict is Verdict.TEMPFAIL
    assert result.decision.reply().startswith("451 4.3.0 ")
    assert "DnsFailure" in (result.outcomes[0].error or "")


async def test_timeout_tempfails_within_the_deadline(dns_context: Any, tmp_path: Path) -> None:
    t0 = time.monotonic()
    result = await run_chain(
        dns_context,
        tmp_path,
        {"lists": ["bl.test", "timeout.test"]},
        dns_settings={"timeout": 0.3},
        client_ip=CLEAN_IP,
    )
    elapsed = time.monotonic() - t0
    assert result.decision.verdict is Verdict.TEMPFAIL
    assert "DnsTimeout" in (result.outcomes[0].error or "")
    assert 0.25 <= elapsed < 0.8


async def test_dns_error_ignore_counts_as_not_listed(
    dns_context: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = {"lists": ["servfail.test", "timeout.test"], "dns_error": "ignore"}
    decision = await check(
        dns_context, tmp_path, settings, dns_settings={"timeout": 0.2}, client_ip=CLEAN_IP
    )
    assert decision is CONTINUE
    assert "servfail.test" in caplog.text and "timeout.test" in caplog.text
    # ... but the other lists still count.
    settings = {**settings, "lists": ["servfail.test", "bl.test"]}
    decision = await check(dns_context, tmp_path, settings, client_ip=LISTED_IP)
    assert decision.verdict is Verdict.REJECT


async def test_threshold_reached_despite_a_failing_list(dns_context: Any, tmp_path: Path) -> None:
    settings = {"lists": ["bl.test", "servfail.test"]}
    decision = await check(dns_context, tmp_path, settings, client_ip=LISTED_IP)
    assert decision.verdict is Verdict.REJECT


async def test_a_failing_negative_list_keeps_the_verdict_open(
    dns_context: Any, tmp_path: Path
) -> None:
    settings = {"lists": {"bl.test": 5, "timeout.test": -5}, "threshold": 5}
    with pytest.raises(DnsTimeout):
        await check(
            dns_context, tmp_path, settings, dns_settings={"timeout": 0.2}, client_ip=LISTED_IP
        )


@pytest.mark.parametrize(
    "settings",
    [
        {"threshold": 0},
        {"threshold": "5"},
        {"lists": {"bl.test": "high"}},
        {"lists": {"bl.test": {}}},
        {"lists": {"bl.test": {"not-an-ip": 1}}},
        {"lists": 5},
        {"domains": ["from"]},
        {"dns_error": "maybe"},
        {"reply": "refused {why}"},
        {"code": "250"},
        {"allow_ips": ["example.org"]},
    ],
)
async def test_bad_settings_stop_start(dns_context: Any, settings: dict[str, Any]) -> None:
    ctx = dns_context("dnsbl", settings, defaults=Dnsbl.defaults)
    with pytest.raises(ValueError):
        await started(ctx)


# -- prefetch ---------------------------------------------------------------------------------


async def test_dns_queries_match_the_lookups(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    settings = {"lists": ["bl.test", "bl2.test"], "domain_lists": ["dbl.test"]}
    ctx = dns_context("dnsbl", settings, defaults=Dnsbl.defaults)
    flt = await started(ctx)
    msg = make_message(tmp_path, client_ip=LISTED_IP, sender=f"x@{LISTED_DOMAIN}")
    queries = flt.dns_queries(msg, ctx)
    assert queries == [
        (list_name(LISTED_IP, "bl.test"), "A"),
        (list_name(LISTED_IP, "bl2.test"), "A"),
        (f"{LISTED_DOMAIN}.dbl.test", "A"),
    ]
    assert await prefetch(ctx, queries) == 3
    assert (await flt.check(msg, ctx)).verdict is Verdict.REJECT
    assert len(dns.queries) == 3


async def test_two_dns_filters_cost_about_one_round_trip(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    """What the chain's prefetch hook will do: start every filter's lookups at arrival."""
    delay = 0.2
    ctx_wl = dns_context(
        "whitelist_dnswl", {"dnswl_zone": ["wl2.test"]}, defaults=WhitelistDnswl.defaults
    )
    wl = WhitelistDnswl(ctx_wl)
    await wl.start()
    # Filters of one configuration share its services, hence one resolver.
    settings = {**Dnsbl.defaults, "lists": ["bl.test", "bl2.test"]}
    ctx_bl = dataclasses.replace(ctx_wl, name="dnsbl", settings=settings)
    bl = await started(ctx_bl)
    msg = make_message(tmp_path, client_ip=LISTED_IP)
    dns.delay_all = delay

    t0 = time.monotonic()
    await prefetch(ctx_wl, wl.dns_queries(msg, ctx_wl) + bl.dns_queries(msg, ctx_bl))
    assert await wl.check(msg, ctx_wl) is CONTINUE
    assert (await bl.check(msg, ctx_bl)).verdict is Verdict.REJECT
    elapsed = time.monotonic() - t0
    assert elapsed < 1.6 * delay  # without prefetch: 2 round trips (wl, then bl)
    assert len(dns.queries) == 3
    assert (await dns_resolver(ctx_wl)).stats.joined == 3
