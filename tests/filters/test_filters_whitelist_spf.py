"""``whitelist_spf`` through a real DNS server (``tests/dnsserver.py``, zone ``spf.test``).

``pass`` -> ``200 Ok``; every other result continues; a DNS failure or a missing sender
record never blocks mail (a whitelist continues); Courier's own verdict can be used.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.chain import ChainResult
from courier_pyfilter.decision import CONTINUE, Verdict
from courier_pyfilter.filters.spfcheck import SpfTemporaryError
from courier_pyfilter.filters.whitelist_spf import WhitelistSpf
from courier_pyfilter.loader import build_chain
from courier_pyfilter.message import Message
from courier_pyfilter.testing import make_message
from dnsserver import TestDnsServer

pytest_plugins = ["dns_fixture"]  # dns_server, dns, dns_context

CLIENT = "127.0.0.1"


async def check(
    dns_context: Any, tmp_path: Path, settings: Mapping[str, Any] | None = None, **msg: Any
) -> Any:
    ctx = dns_context("whitelist_spf", settings or {}, defaults=WhitelistSpf.defaults)
    flt = WhitelistSpf(ctx)
    await flt.start()
    msg.setdefault("client_ip", CLIENT)
    return await flt.check(make_message(tmp_path, **msg), ctx)


async def run_chain(
    dns_context: Any,
    tmp_path: Path,
    entries: list[tuple[str, frozenset[str]]],
    sections: Mapping[str, Mapping[str, Any]] | None = None,
    **msg: Any,
) -> ChainResult:
    ctx = dns_context("unused")
    sections = sections or {}
    chain = build_chain(entries, lambda s: dict(sections.get(s, {})), ctx.services)
    await chain.start()
    msg.setdefault("client_ip", CLIENT)
    try:
        return await chain.run(make_message(tmp_path, **msg))
    finally:
        await chain.stop()


def _without_sender(msg: Message) -> Message:
    for path in msg.control_paths:
        lines = Path(path).read_bytes().splitlines(keepends=True)
        Path(path).write_bytes(b"".join(line for line in lines if not line.startswith(b"s")))
    return Message(msg.data_path, msg.control_paths)


async def test_pass_is_accepted(dns_context: Any, tmp_path: Path) -> None:
    for sender in ("a@pass.spf.test", "a@include.spf.test", "a@twostrings.spf.test"):
        decision = await check(dns_context, tmp_path, sender=sender)
        assert decision.verdict is Verdict.ACCEPT
        assert decision.reply() == "200 Ok"


@pytest.mark.parametrize(
    ("sender", "client"),
    [
        ("a@pass.spf.test", "192.0.2.1"),  # fail
        ("a@fail.spf.test", CLIENT),
        ("a@softfail.spf.test", CLIENT),
        ("a@neutral.spf.test", CLIENT),
        ("a@example.test", CLIENT),  # none
    ],
)
async def test_anything_else_continues(
    dns_context: Any, tmp_path: Path, sender: str, client: str
) -> None:
    assert await check(dns_context, tmp_path, sender=sender, client_ip=client) is CONTINUE


async def test_null_sender(dns_context: Any, dns: TestDnsServer, tmp_path: Path) -> None:
    assert await check(dns_context, tmp_path, sender="", helo="pass.spf.test") is CONTINUE
    assert dns.queries == []
    decision = await check(
        dns_context, tmp_path, {"check_null_sender": True}, sender="", helo="pass.spf.test"
    )
    assert decision.reply() == "200 Ok"  # postmaster@pass.spf.test passes


async def test_failures_never_block_mail(
    dns_context: Any, dns: TestDnsServer, tmp_path: Path
) -> None:
    with pytest.raises(SpfTemporaryError):
        await check(dns_context, tmp_path, sender="a@servfail.test")
    entries = [("whitelist_spf", frozenset()), ("spfcheck", frozenset())]
    result = await run_chain(dns_context, tmp_path, entries[:1], sender="a@servfail.test")
    assert result.decision.reply() == "200 Ok"  # continued: nothing else refused it
    assert result.outcomes[0].decision is CONTINUE and result.outcomes[0].error is not None
    sections = {"whitelist_spf.py": {"on_error": "tempfail"}}
    result = await run_chain(dns_context, tmp_path, entries[:1], sections, sender="a@servfail.test")
    assert result.decision.verdict is Verdict.TEMPFAIL
    # a control file without a sender record: continue (the original answered 451)
    ctx = dns_context("whitelist_spf", defaults=WhitelistSpf.defaults)
    flt = WhitelistSpf(ctx)
    await flt.start()
    msg = _without_sender(make_message(tmp_path, sender="a@pass.spf.test", client_ip=CLIENT))
    assert msg.sender is None
    assert await flt.check(msg, ctx) is CONTINUE


async def test_for_skips_the_listed_filters(dns_context: Any, tmp_path: Path) -> None:
    entries = [("whitelist_spf", frozenset({"spfcheck"})), ("spfcheck", frozenset())]
    # pass: spfcheck is skipped
    result = await run_chain(dns_context, tmp_path, entries, sender="a@pass.spf.test")
    assert result.decision.reply() == "200 Ok"
    assert [o.name for o in result.outcomes] == ["whitelist_spf"]
    # fail: spfcheck runs and refuses
    result = await run_chain(dns_context, tmp_path, entries, sender="a@fail.spf.test")
    assert result.decision.reply() == "517 SPF returns deny"


async def test_courier_verdict(dns_context: Any, dns: TestDnsServer, tmp_path: Path) -> None:
    received_spf = (
        "Received-SPF: pass (Address passes the Sender Policy Framework)\n"
        "  SPF=MAILFROM;\n  sender=a@fail.spf.test;\n  remoteip=::ffff:127.0.0.1;\n"
        "  remotehost=mail.example.com;\n  helo=mail.example.com;\n  receiver=mx.example.org;\n"
        "Received: from mail.example.com (mail.example.com [::ffff:127.0.0.1])\n"
        "  by mx.example.org with ESMTP\n  id 0000000A.6553F100.00001234; Tue, 14 Nov 2023\n"
    )
    raw = (received_spf + "Subject: hi\n\nhello\n").encode()
    on = {"use_courier_verdict": True}
    decision = await check(
        dns_context, tmp_path, on, sender="a@fail.spf.test", raw=raw, received=False
    )
    assert decision.reply() == "200 Ok"
    assert dns.queries == []
    # without Courier's verdict: evaluated here (fail.spf.test fails)
    decision = await check(dns_context, tmp_path, on, sender="a@fail.spf.test")
    assert decision is CONTINUE
    assert dns.queries == [("fail.spf.test", "TXT")]


async def test_prefetch_hook_and_class(dns_context: Any, tmp_path: Path) -> None:
    ctx = dns_context("whitelist_spf", defaults=WhitelistSpf.defaults)
    flt = WhitelistSpf(ctx)
    msg = make_message(tmp_path, sender="a@pass.spf.test", client_ip=CLIENT)
    assert flt.dns_queries(msg, ctx) == [("pass.spf.test", "TXT")]
    assert WhitelistSpf.whitelist is True
    assert set(WhitelistSpf.defaults) == {
        "check_null_sender",
        "use_courier_verdict",
        "courier_verdict_missing",
        "spf_timeout",
    }
