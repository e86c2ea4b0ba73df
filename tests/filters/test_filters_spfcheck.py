"""``spfcheck`` through a real DNS server (``tests/dnsserver.py``, zone ``spf.test``).

The original's decisions (``fail`` -> ``517 SPF returns deny``, everything else
continues, the null sender not checked, a missing sender record -> ``451 Internal
failure locating control files``), ``temperror`` as a filter failure (451 through the
chain, ``on_error`` applies), Courier's own verdict from its ``Received-SPF:`` field,
the prefetch hook, and one evaluation per message shared with ``whitelist_spf``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.chain import INTERNAL_ERROR, ChainResult
from courier_pyfilter.courier_headers import courier_spf_result, courier_spf_results
from courier_pyfilter.decision import CONTINUE, Verdict
from courier_pyfilter.dns import dns_resolver
from courier_pyfilter.filters.spfcheck import (
    NO_SENDER,
    SpfCheck,
    SpfTemporaryError,
    fail_reply,
    spf_evaluations,
)
from courier_pyfilter.loader import build_chain
from courier_pyfilter.message import Message
from courier_pyfilter.testing import make_message
from dnsserver import TestDnsServer

pytest_plugins = ["dns_fixture"]  # dns_server, dns, dns_context

CLIENT = "127.0.0.1"  # allowed by pass.spf.test and include.spf.test
DENY = "517 SPF returns deny"


async def check(
    dns_context: Any, tmp_path: Path, settings: Mapping[str, Any] | None = None, **msg: Any
) -> Any:
    ctx = dns_context("spfcheck", settings or {}, defaults=SpfCheck.defaults)
    flt = SpfCheck(ctx)
    await flt.start()
    msg.setdefault("client_ip", CLIENT)
    return await flt.check(make_message(tmp_path, **msg), ctx)


async def run_chain(
    dns_context: Any,
    tmp_path: Path,
    lines: list[str],
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    **msg: Any,
) -> ChainResult:
    """A chain built by the real loader from ``pythonfilter.conf`` lines."""
    ctx = dns_context("unused")
    sections = sections or {}
    entries = [(line, frozenset()) for line in lines]
    chain = build_chain(entries, lambda s: dict(sections.get(s, {})), ctx.services)
    await chain.start()
    msg.setdefault("client_ip", CLIENT)
    try:
        return await chain.run(make_message(tmp_path, **msg))
    finally:
        await chain.stop()


def _without(msg: Message, record: bytes) -> Message:
    """The message with the control records of letter ``record`` removed."""
    for path in msg.control_paths:
        lines = Path(path).read_bytes().splitlines(keepends=True)
        Path(path).write_bytes(b"".join(line for line in lines if not line.startswith(record)))
    return Message(msg.data_path, msg.control_paths)


# -- the original's decisions -----------------------------------------------------------------


async def test_fail_is_denied_with_the_original_reply(dns_context: Any, tmp_path: Path) -> None:
    decision = await check(dns_context, tmp_path, sender="user@fail.spf.test")
    assert decision.verdict is Verdict.REJECT
    assert decision.reply() == DENY
    # a pass domain fails a client it does not list
    decision = await check(
        dns_context, tmp_path, sender="user@pass.spf.test", client_ip="192.0.2.1"
    )
    assert decision.reply() == DENY


@pytest.mark.parametrize(
    "sender",
    [
        "user@pass.spf.test",  # pass
        "user@include.spf.test",  # pass through include
        "user@softfail.spf.test",
        "user@neutral.spf.test",
        "user@example.test",  # none: no TXT record
        "user@nxdomain.spf.test",  # none: no such domain
        "user@localhost",  # none: not a domain that can have SPF
    ],
)
async def test_other_results_continue(dns_context: Any, tmp_path: Path, sender: str) -> None:
    assert await check(dns_context, tmp_path, sender=sender) is CONTINUE


async def test_permerror_continues(dns_context: Any, dns: TestDnsServer, tmp_path: Path) -> None:
    dns.add('broken.spf.test. 0 IN TXT "v=spf1 ip4:127.0.0.1 moo -all"')
    dns.add('double.spf.test. 0 IN TXT "v=spf1 -all"')
    dns.add('double.spf.test. 0 IN TXT "v=spf1 +all"')
    for sender in ("a@broken.spf.test", "a@double.spf.test"):
        assert await check(dns_context, tmp_path, sender=sender) is CONTINUE


async def test_records_are_joined_and_others_ignored(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    # "v=spf1 ip4:127.0.0.0/8" " -all": the two strings are one record
    assert await check(dns_context, tmp_path, sender="a@twostrings.spf.test") is CONTINUE
    decision = await check(
        dns_context, tmp_path, sender="a@twostrings.spf.test", client_ip="192.0.2.1"
    )
    assert decision.reply() == DENY
    # an SPF record and another TXT record: only the SPF one counts
    assert (await check(dns_context, tmp_path, sender="a@tworecords.spf.test")).reply() == DENY
    # mx through the server: mx.spf.test allows the MX hosts of dialback.test
    assert await check(dns_context, tmp_path, sender="a@mx.spf.test") is CONTINUE
    assert ("mx1.dialback.test", "A") in dns.queries


async def test_ipv6_clients(dns_context: Any, dns: TestDnsServer, tmp_path: Path) -> None:
    dns.add('v6.spf.test. 0 IN TXT "v=spf1 ip4:127.0.0.1 ip6:2001:db8::/32 -all"')
    assert await check(dns_context, tmp_path, sender="a@v6.spf.test", client_ip="2001:db8::5") is (
        CONTINUE
    )
    decision = await check(dns_context, tmp_path, sender="a@v6.spf.test", client_ip="2001:db9::5")
    assert decision.reply() == DENY
    # Courier writes IPv4 clients IPv4-mapped (::ffff:127.0.0.1): checked as IPv4
    msg = {"sender": "a@v6.spf.test", "ipv4_mapped": True}
    assert await check(dns_context, tmp_path, **msg) is CONTINUE


async def test_null_sender_is_not_checked_by_default(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    assert await check(dns_context, tmp_path, sender="", helo="fail.spf.test") is CONTINUE
    assert dns.queries == []
    decision = await check(
        dns_context, tmp_path, {"check_null_sender": True}, sender="", helo="fail.spf.test"
    )
    assert decision.reply() == DENY  # postmaster@fail.spf.test
    assert dns.queries == [("fail.spf.test", "TXT")]
    decision = await check(
        dns_context, tmp_path, {"check_null_sender": True}, sender="", helo="pass.spf.test"
    )
    assert decision is CONTINUE


async def test_missing_sender_record_and_client_address(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    ctx = dns_context("spfcheck", defaults=SpfCheck.defaults)
    flt = SpfCheck(ctx)
    await flt.start()
    msg = _without(make_message(tmp_path, sender="a@fail.spf.test", client_ip=CLIENT), b"s")
    assert msg.sender is None
    decision = await flt.check(msg, ctx)
    assert decision.verdict is Verdict.TEMPFAIL
    assert decision.reply() == "451 " + NO_SENDER == "451 Internal failure locating control files"
    # no f record (no HELO name): checked all the same (the original crashed)
    msg = _without(make_message(tmp_path, sender="a@fail.spf.test", client_ip=CLIENT), b"f")
    assert msg.helo is None
    assert (await flt.check(msg, ctx)).reply() == DENY
    dns.clear_log()
    # locally submitted mail has no client address: not checked
    local = make_message(tmp_path, sender="a@fail.spf.test", client_ip=None, source="local")
    assert await flt.check(local, ctx) is CONTINUE
    assert dns.queries == []


# -- temperror ----------------------------------------------------------------------------------


async def test_dns_failure_is_a_filter_failure(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    with pytest.raises(SpfTemporaryError, match=r"temperror for a@servfail\.test"):
        await check(dns_context, tmp_path, sender="a@servfail.test")
    result = await run_chain(dns_context, tmp_path, ["spfcheck"], sender="a@servfail.test")
    assert result.decision.verdict is Verdict.TEMPFAIL
    assert result.decision == INTERNAL_ERROR  # 451 4.3.0 Temporary failure in mail filtering
    assert result.decision.reply().startswith("451 4.3.0 ")
    assert result.outcomes[0].error is not None and "SpfTemporaryError" in result.outcomes[0].error
    # on_error: the original let such mail through
    sections = {"spfcheck.py": {"on_error": "continue"}}
    result = await run_chain(
        dns_context, tmp_path, ["spfcheck"], sections, sender="a@servfail.test"
    )
    assert result.decision.reply() == "200 Ok"
    sections = {"spfcheck.py": {"on_error": "451 4.4.3 SPF check failed, try again later"}}
    result = await run_chain(
        dns_context, tmp_path, ["spfcheck"], sections, sender="a@servfail.test"
    )
    assert result.decision.reply() == "451 4.4.3 SPF check failed, try again later"


async def test_spf_timeout_bounds_the_evaluation(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    dns.add('slowspf.spf.test. 0 IN TXT "v=spf1 a:a.slow.test a:b.slow.test -all"')
    dns.delay["slow.test"] = 0.3
    started = time.monotonic()
    with pytest.raises(SpfTemporaryError, match=r"within 0.4 s"):
        await check(dns_context, tmp_path, {"spf_timeout": 0.4}, sender="a@slowspf.spf.test")
    assert time.monotonic() - started < 0.9


async def test_timeout_zone_through_the_chain(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    started = time.monotonic()
    result = await run_chain(dns_context, tmp_path, ["spfcheck"], sender="a@timeout.test")
    assert result.decision.verdict is Verdict.TEMPFAIL
    assert time.monotonic() - started < 2.0  # the [dns] deadline of the fixture: 1 s


# -- Courier's own verdict ------------------------------------------------------------------------

COURIER_RECEIVED = (
    "Received: from mail.example.com (mail.example.com [::ffff:127.0.0.1])\n"
    "  by mx.example.org with ESMTP\n"
    "  id 0000000A.6553F100.00001234; Tue, 14 Nov 2023 22:13:20 +0000\n"
)
BODY = "From: a@example.com\nTo: b@example.net\nSubject: hi\n\nhello\n"


def received_spf(result: str, identity: str, comment: str = "Address passes the SPF") -> str:
    """The field as Courier's submit writes it (courier/submit.C, my_spf_lookup)."""
    return (
        f"Received-SPF: {result} ({comment})\n"
        f"  SPF={identity};\n"
        "  sender=a@fail.spf.test;\n"
        "  remoteip=::ffff:127.0.0.1;\n"
        "  remotehost=mail.example.com;\n"
        "  helo=mail.example.com;\n"
        "  receiver=mx.example.org;\n"
    )


def courier_raw(above: str = "", below: str = "") -> bytes:
    return (above + COURIER_RECEIVED + below + BODY).encode()


def _fields(raw: bytes) -> list[tuple[str, str]]:
    from email.parser import BytesParser
    from email.policy import default

    return list(BytesParser(policy=default).parsebytes(raw, headersonly=True).raw_items())


def test_courier_received_spf_parsing() -> None:
    both = received_spf("none", "HELO") + received_spf("softfail", "MAILFROM")
    assert courier_spf_results(_fields(courier_raw(both))) == {
        "HELO": "none",
        "MAILFROM": "softfail",
    }
    for word, result in [
        ("pass", "pass"),
        ("fail", "fail"),
        ("error", "temperror"),
        ("unknown", "permerror"),
    ]:
        fields = _fields(courier_raw(received_spf(word, "MAILFROM")))
        assert courier_spf_result(fields, "mailfrom") == result
        assert courier_spf_result(fields, "HELO") is None
    # below Courier's Received (written by the client), or without Received: not trusted
    assert courier_spf_results(_fields(courier_raw(below=received_spf("pass", "MAILFROM")))) == {}
    assert courier_spf_results(_fields(received_spf("pass", "MAILFROM").encode() + b"\n")) == {}
    # the comment may hold the checked domain's exp= text: never read as the identity
    forged = received_spf("pass", "HELO", comment="ok) SPF=MAILFROM; (x")
    assert courier_spf_results(_fields(courier_raw(forged))) == {"HELO": "pass"}


async def test_courier_verdict_replaces_the_evaluation(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    on = {"use_courier_verdict": True}
    failed = courier_raw(received_spf("fail", "MAILFROM", "Address does not pass the SPF"))
    decision = await check(
        dns_context, tmp_path, on, sender="a@pass.spf.test", raw=failed, received=False
    )
    assert decision.reply() == DENY
    passed = courier_raw(received_spf("pass", "MAILFROM"))
    decision = await check(
        dns_context, tmp_path, on, sender="a@fail.spf.test", raw=passed, received=False
    )
    assert decision is CONTINUE
    assert dns.queries == []  # Courier's verdict, no lookup
    with pytest.raises(SpfTemporaryError):
        raw = courier_raw(received_spf("error", "MAILFROM"))
        await check(dns_context, tmp_path, on, sender="a@pass.spf.test", raw=raw, received=False)
    # the HELO verdict is for null senders (with check_null_sender)
    helo_fail = courier_raw(received_spf("fail", "HELO"))
    settings = {**on, "check_null_sender": True}
    decision = await check(
        dns_context, tmp_path, settings, sender="", helo="pass.spf.test", raw=helo_fail,
        received=False,
    )  # fmt: skip
    assert decision.reply() == DENY
    assert dns.queries == []


async def test_without_courier_verdict(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    on = {"use_courier_verdict": True}
    forged = courier_raw(below=received_spf("pass", "MAILFROM"))  # the client's own field
    decision = await check(
        dns_context, tmp_path, on, sender="a@fail.spf.test", raw=forged, received=False
    )
    assert decision.reply() == DENY  # evaluated here
    assert dns.queries == [("fail.spf.test", "TXT")]
    dns.clear_log()
    skip = {**on, "courier_verdict_missing": "continue"}
    decision = await check(
        dns_context, tmp_path, skip, sender="a@fail.spf.test", raw=forged, received=False
    )
    assert decision is CONTINUE
    assert dns.queries == []


# -- settings, reply, prefetch, sharing -----------------------------------------------------------


async def test_reply_setting(dns_context: Any, dns: TestDnsServer, tmp_path: Path) -> None:
    dns.add('exp.spf.test. 0 IN TXT "v=spf1 -all exp=why.spf.test"')
    dns.add('why.spf.test. 0 IN TXT "%{i} is not a mail server of %{d}"')
    settings = {"reply": "550 5.7.23 {explanation}"}
    decision = await check(dns_context, tmp_path, settings, sender="a@exp.spf.test")
    assert decision.reply() == "550 5.7.23 127.0.0.1 is not a mail server of exp.spf.test"
    decision = await check(dns_context, tmp_path, settings, sender="a@fail.spf.test")
    assert decision.reply() == (
        "550 5.7.23 fail.spf.test does not designate 127.0.0.1 as a permitted sender"
    )
    assert fail_reply("451 4.7.23 {explanation}", "bad\r\nline").reply() == ("451 4.7.23 bad??line")


@pytest.mark.parametrize(
    "settings",
    [
        {"reply": "250 fine"},
        {"reply": "no code"},
        {"reply": 517},
        {"check_null_sender": "yes"},
        {"use_courier_verdict": "sometimes"},
        {"courier_verdict_missing": "maybe"},
        {"spf_timeout": 0},
    ],
)
async def test_bad_settings_stop_the_start(dns_context: Any, settings: dict[str, Any]) -> None:
    ctx = dns_context("spfcheck", settings, defaults=SpfCheck.defaults)
    with pytest.raises(ValueError):
        await SpfCheck(ctx).start()


async def test_dns_queries_and_prefetch(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    ctx = dns_context("spfcheck", defaults=SpfCheck.defaults)
    flt = SpfCheck(ctx)
    await flt.start()
    msg = make_message(tmp_path, sender="a@Fail.SPF.test.", client_ip=CLIENT)
    assert flt.dns_queries(msg, ctx) == [("Fail.SPF.test", "TXT")]
    for other in (
        make_message(tmp_path, sender="", client_ip=CLIENT),
        make_message(tmp_path, sender="a@fail.spf.test", client_ip=None),
        make_message(tmp_path, sender="a@localhost", client_ip=CLIENT),
    ):
        assert flt.dns_queries(other, ctx) == []
    resolver = await dns_resolver(ctx)
    assert resolver.prefetch(flt.dns_queries(msg, ctx)) == 1
    assert (await flt.check(msg, ctx)).reply() == DENY
    assert dns.count("fail.spf.test", "TXT") == 1  # the check used the prefetched answer
    courier = dns_context("spfcheck", {"use_courier_verdict": True}, defaults=SpfCheck.defaults)
    assert SpfCheck(courier).dns_queries(msg, courier) == []


async def test_whitelist_and_check_share_one_evaluation(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    result = await run_chain(
        dns_context, tmp_path, ["whitelist_spf", "spfcheck"], sender="a@fail.spf.test"
    )
    assert result.decision.reply() == DENY
    assert result.deciding == "spfcheck"
    assert dns.count("fail.spf.test", "TXT") == 1
    ctx = dns_context("spfcheck", defaults=SpfCheck.defaults)
    evaluations = await spf_evaluations(ctx)
    flt = SpfCheck(ctx)
    await flt.start()
    msg = make_message(tmp_path, sender="a@pass.spf.test", client_ip=CLIENT)
    for _ in range(3):
        assert await flt.check(msg, ctx) is CONTINUE
    assert evaluations.evaluations == 1
    # a temperror is not kept: the next message asks again
    for _ in range(2):
        with pytest.raises(SpfTemporaryError):
            await flt.check(make_message(tmp_path, sender="a@servfail.test"), ctx)
    assert evaluations.evaluations == 3


async def test_loaded_by_name(dns_context: Any, tmp_path: Path) -> None:
    result = await run_chain(dns_context, tmp_path, ["spfcheck"], sender="a@pass.spf.test")
    assert result.decision.reply() == "200 Ok"
    assert [o.name for o in result.outcomes] == ["spfcheck"]
    assert SpfCheck.whitelist is False
