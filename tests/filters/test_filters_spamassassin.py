"""The ``spamassassin`` filter against a real spamd (Debian's shipped rules, offline) and
against broken ones: GTUBE rejected with the original's reply, ham tagged with spamd's
headers, oversize messages skipped, every fault turned into the failure action in time."""

from __future__ import annotations

import asyncio
import email
import email.policy
import email.utils
import logging
import os
import re
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.api import Context
from courier_pyfilter.chain import INTERNAL_ERROR, TIMED_OUT
from courier_pyfilter.decision import CONTINUE, Decision, Verdict
from courier_pyfilter.filters.spamassassin import (
    REJECT_PREFIX,
    SpamAssassin,
    merge_spam_headers,
    rejection,
    should_reject,
    spam_status,
)
from courier_pyfilter.legacyconf import evaluate, parse_modules_config
from courier_pyfilter.loader import build_chain
from courier_pyfilter.message import Message
from courier_pyfilter.spamd import SpamdProtocolError, spamd_client
from courier_pyfilter.testing import make_context, make_message
from spamd_fixture import (
    GTUBE,
    TEST_SPAM_SCORE,
    TEST_SPAM_TOKEN,
    SpamdFactory,
    SpamdServer,
    answer,
    close_at_once,
    fake_spamd,
    flood,
    hang,
    raw_request,
    spamd_factory,
    spamd_server,
)

__all__ = ["spamd_factory", "spamd_server"]  # fixtures used by this module

HEADERS = [
    ("From", "Alice <alice@example.com>"),
    ("To", "bob@example.net"),
    ("Subject", "lunch"),
    ("Date", email.utils.formatdate()),  # an old date would score DATE_IN_PAST_*
    ("Message-ID", "<lunch.1@example.com>"),
]
HAM_BODY = b"Shall we meet at noon?\n"
SPAM_BODY = b"Buy now!\n" + GTUBE + b"\n"
DKIM_HAM = (
    b"DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel;\n"
    b"\th=from:to:subject; bh=abc=;\n"
    b"\tb=def=\n"
    b"X-Spam-Status: No, score=-100 (forged upstream)\n"
    b"From: Alice <alice@example.com>\n"
    b"X-Spam-Flag: NO\n"
    b"To: bob@example.net\n"
    b"Subject:  lunch   with   spaces\n"
    b"x-spam-level: \n"
    b"Date: " + email.utils.formatdate().encode() + b"\n"
    b"Message-ID: <lunch.2@example.com>\n"
    b"\n"
    b"Shall we meet at noon?\n"
)


SPAMD_SAYS_SPAM = r"^554 Mail rejected - spam detected: Yes, score=\d{3,}\.\d "


def make(tmp_path: Path, body: bytes = HAM_BODY, **kwargs: Any) -> Message:
    """A message from a client with reverse DNS on a private address: a plain ham
    scores about -1 with the shipped rules (ALL_TRUSTED), GTUBE about 1000."""
    kwargs.setdefault("headers", HEADERS)
    return make_message(
        tmp_path, body=body, client_ip="10.20.30.40", rdns="mail.example.com", **kwargs
    )


def settings_for(address: str, **extra: Any) -> dict[str, Any]:
    return {"spamd_address": address, **extra}


async def run_filter(
    message: Message, settings: Mapping[str, Any], ctx: Context | None = None
) -> tuple[Decision, float]:
    """Start a fresh filter instance with ``settings``, check ``message``; return the
    decision and the seconds it took."""
    ctx = ctx or make_context("spamassassin", settings, defaults=SpamAssassin.defaults)
    flt = SpamAssassin(ctx)
    await flt.start()
    t0 = time.monotonic()
    try:
        decision = await flt.check(message, ctx)
    finally:
        elapsed = time.monotonic() - t0
        await ctx.services.close()
    return decision, elapsed


def read(message: Message) -> bytes:
    return Path(message.data_path).read_bytes()


def status_from_spamd(spamd: SpamdServer, raw: bytes) -> str:
    """The X-Spam-Status spamd gives ``raw``, read without the code under test: a plain
    socket request and the email package; newlines removed as the original did."""
    answer_bytes = raw_request(spamd.tcp, "HEADERS", raw)
    block = answer_bytes.split(b"\r\n\r\n", 1)[1]
    parsed = email.message_from_bytes(block, policy=email.policy.compat32)
    value = parsed["X-Spam-Status"]
    assert value
    return str(value).replace("\n", "").replace("\r", "").strip()


# -- pure decision helpers ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("is_spam", "status", "reject_score", "expected"),
    [
        (True, "Yes, score=7.0 required=5.0", None, True),
        (False, "No, score=1.0 required=5.0", None, False),
        (True, None, 10.0, True),  # no X-Spam-Status: spamd's verdict decides
        (False, "", 10.0, False),
        (True, "Yes, score=7.0 required=5.0 tests=X", 10.0, False),
        (True, "Yes, score=10.0 required=5.0", 10.0, True),  # >= rejects
        (True, "Yes, score=1000.0 required=5.0", 10, True),
        (False, "No, score=4.0 required=5.0", 3.0, False),  # only "Yes," is ever rejected
        (True, "Yes, required=5.0", 3.0, False),  # no score= word
        (True, "Yes, score=abc required=5.0", 3.0, False),
    ],
)
def test_should_reject_as_the_original(
    is_spam: bool, status: str | None, reject_score: float | None, expected: bool
) -> None:
    assert should_reject(is_spam, status, reject_score) is expected


def test_spam_status_keeps_tabs_drops_newlines() -> None:
    block = (
        b"X-Spam-Level: *\n"
        b"X-Spam-Status: Yes, score=1000.0 required=5.0 tests=GTUBE,\n"
        b"\tNO_RECEIVED autolearn=disabled\n"
        b"From: a@b\n\n"
    )
    assert spam_status(block) == (
        "Yes, score=1000.0 required=5.0 tests=GTUBE,\tNO_RECEIVED autolearn=disabled"
    )
    assert spam_status(b"From: a@b\n\nX-Spam-Status: Yes\n") is None  # body, not header
    assert spam_status(b"X-Spam-Status:   \n\n") is None


def test_rejection_reply() -> None:
    assert rejection("Yes, score=9.1 required=5.0").reply() == (
        "554 Mail rejected - spam detected: Yes, score=9.1 required=5.0"
    )
    # a status as spamd folds it, with a great many rules: several reply lines
    rules = ",\t".join(",".join(f"RULE_{i:03d}_{j}" for j in range(5)) for i in range(40))
    long_status = f"Yes, score=9.1 required=5.0 tests={rules} autolearn=disabled version=4.0.1"
    decision = rejection(long_status)
    assert decision.verdict is Verdict.REJECT and decision.code == "554"
    assert len(decision.lines) > 1 and all(len(line) <= 500 for line in decision.lines)
    assert decision.lines[0].startswith(REJECT_PREFIX + "Yes, score=9.1 required=5.0 tests=")
    assert "\t".join(decision.lines).split() == (REJECT_PREFIX + long_status).split()
    assert decision.reply().startswith("554-Mail rejected") and "\n554 " in decision.reply()


def test_merge_spam_headers_keeps_every_other_byte() -> None:
    spamd_block = (
        b"X-Spam-Checker-Version: SpamAssassin 4.0.1 (2024-03-25) on host\r\n"
        b"X-Spam-Level: \r\n"
        b"X-Spam-Status: No, score=0.1 required=5.0 tests=NONE\r\n"
        b"\tautolearn=disabled version=4.0.1\r\n"
        b"From: Alice <alice@example.com>\r\n\r\n"
    )
    merged = merge_spam_headers(DKIM_HAM, spamd_block)
    added = (
        b"X-Spam-Checker-Version: SpamAssassin 4.0.1 (2024-03-25) on host\n"
        b"X-Spam-Level: \n"
        b"X-Spam-Status: No, score=0.1 required=5.0 tests=NONE\n"
        b"\tautolearn=disabled version=4.0.1\n"
    )
    without_forged = b"".join(
        line + b"\n"
        for line in DKIM_HAM.split(b"\n")[:-1]
        if not line.lower().startswith(b"x-spam-")
    )
    assert merged == added + without_forged
    with pytest.raises(SpamdProtocolError):
        merge_spam_headers(DKIM_HAM, b"X-Spam-Status: a\x00b\n\n")


# -- the real spamd -------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_gtube_is_rejected_with_the_original_reply(
    spamd_server: SpamdServer, tmp_path: Path, transport: str
) -> None:
    msg = make(tmp_path, body=SPAM_BODY)
    before = read(msg)
    address = spamd_server.tcp_address if transport == "tcp" else spamd_server.socket_path
    decision, elapsed = await run_filter(msg, settings_for(address))
    expected = "554 Mail rejected - spam detected: " + status_from_spamd(spamd_server, before)
    assert re.match(SPAMD_SAYS_SPAM, expected)
    assert "GTUBE" in expected and "\t" in expected  # folded status: the tab stays
    assert decision.verdict is Verdict.REJECT
    assert decision.reply() == expected
    assert read(msg) == before  # a rejected message is not rewritten
    assert elapsed < 10


async def test_ham_gets_spamd_headers_and_keeps_its_bytes(
    spamd_server: SpamdServer, tmp_path: Path
) -> None:
    msg = make(tmp_path, body=HAM_BODY)
    before = read(msg)
    decision, _ = await run_filter(msg, settings_for(spamd_server.tcp_address))
    assert decision is CONTINUE
    after = read(msg)
    assert after.endswith(before)  # Courier's Received header and everything else intact
    added = after[: len(after) - len(before)]
    names = [line.split(b":")[0] for line in added.split(b"\n") if line and line[0] not in b" \t"]
    assert names == [b"X-Spam-Checker-Version", b"X-Spam-Level", b"X-Spam-Status"]
    status = spam_status(after)
    assert status is not None and status.startswith("No, score=")
    assert status == status_from_spamd(spamd_server, before)
    assert (await msg.raw()) == after  # later filters see the new message


async def test_dkim_signed_ham_keeps_other_headers_and_loses_forged_ones(
    spamd_server: SpamdServer, tmp_path: Path
) -> None:
    msg = make(tmp_path, raw=DKIM_HAM)
    before = read(msg)
    decision, _ = await run_filter(msg, settings_for(spamd_server.socket_path))
    assert decision is CONTINUE
    after = read(msg)
    expected_rest = b"".join(
        line + b"\n" for line in before.split(b"\n")[:-1] if not line.lower().startswith(b"x-spam-")
    )
    assert after.endswith(expected_rest)
    assert b"forged upstream" not in after and b"X-Spam-Flag: NO" not in after
    assert after.count(b"X-Spam-Status: ") == 1


async def test_spam_below_reject_score_is_tagged_not_rejected(
    spamd_server: SpamdServer, tmp_path: Path
) -> None:
    headers = [(k, f"{TEST_SPAM_TOKEN} {v}" if k == "Subject" else v) for k, v in HEADERS]
    msg = make(tmp_path, headers=headers, body=HAM_BODY)
    before = read(msg)
    decision, _ = await run_filter(msg, settings_for(spamd_server.tcp_address, reject_score=1000.0))
    assert decision is CONTINUE
    after = read(msg)
    assert after.endswith(before)
    assert b"\nX-Spam-Flag: YES\n" in after
    status = spam_status(after)
    assert status is not None and status.startswith("Yes, score=")
    score = float(status.split("score=")[1].split()[0])
    assert TEST_SPAM_SCORE - 2 <= score < 100  # our rule, give or take the shipped ones
    # the same message with a threshold below its score is rejected
    msg2 = make(tmp_path, headers=headers, body=HAM_BODY)
    decision2, _ = await run_filter(
        msg2, settings_for(spamd_server.tcp_address, reject_score=score)
    )
    assert decision2.reply().startswith(f"554 Mail rejected - spam detected: Yes, score={score}")
    assert "TEST_SUBJECT_SPAM" in decision2.reply()


async def test_gtube_with_higher_reject_score_passes_tagged(
    spamd_server: SpamdServer, tmp_path: Path
) -> None:
    msg = make(tmp_path, body=SPAM_BODY)
    decision, _ = await run_filter(msg, settings_for(spamd_server.tcp_address, reject_score=5000))
    assert decision is CONTINUE
    after = read(msg)
    assert b"\nX-Spam-Flag: YES\n" in after and b"\nX-Spam-Report: " in after


async def test_ham_is_never_rejected_by_a_low_reject_score(
    spamd_server: SpamdServer, tmp_path: Path
) -> None:
    # As the original: only a status starting with "Yes," is compared with reject_score.
    msg = make(tmp_path, body=HAM_BODY)
    decision, _ = await run_filter(msg, settings_for(spamd_server.tcp_address, reject_score=-50))
    assert decision is CONTINUE


async def test_rewrite_message_replaces_with_spamd_output(
    spamd_server: SpamdServer, tmp_path: Path
) -> None:
    msg = make(tmp_path, body=HAM_BODY)
    before = read(msg)
    decision, _ = await run_filter(msg, settings_for(spamd_server.tcp_address, rewrite="message"))
    assert decision is CONTINUE
    direct = raw_request(spamd_server.tcp, "PROCESS", before).split(b"\r\n\r\n", 1)[1]
    assert read(msg) == direct
    assert direct.startswith(b"X-Spam-Checker-Version: ") and direct.endswith(before)


async def test_rewrite_none_leaves_the_message_but_still_rejects(
    spamd_server: SpamdServer, tmp_path: Path
) -> None:
    ham = make(tmp_path, body=HAM_BODY)
    before = read(ham)
    decision, _ = await run_filter(ham, settings_for(spamd_server.tcp_address, rewrite="none"))
    assert decision is CONTINUE and read(ham) == before
    spam = make(tmp_path, body=SPAM_BODY)
    decision, _ = await run_filter(spam, settings_for(spamd_server.tcp_address, rewrite="none"))
    assert re.match(SPAMD_SAYS_SPAM, decision.reply())


async def test_shadow_mode_changes_nothing(spamd_server: SpamdServer, tmp_path: Path) -> None:
    ham = make(tmp_path)
    before = read(ham)
    decision, _ = await run_filter(ham, settings_for(spamd_server.tcp_address, mode="shadow"))
    assert decision is CONTINUE and read(ham) == before
    spam = make(tmp_path, body=SPAM_BODY)  # the decision is still made (the chain logs it)
    decision, _ = await run_filter(spam, settings_for(spamd_server.tcp_address, mode="shadow"))
    assert decision.verdict is Verdict.REJECT


async def test_username_is_sent(spamd_server: SpamdServer, tmp_path: Path) -> None:
    msg = make(tmp_path, body=HAM_BODY)
    offset = spamd_server.log_size()
    decision, _ = await run_filter(
        msg, settings_for(spamd_server.tcp_address, username="spamfilter")
    )
    assert decision is CONTINUE
    spamd_server.wait_log(r"message .* for spamfilter:", after=offset, timeout=5)


async def test_size_limit(spamd_server: SpamdServer, tmp_path: Path) -> None:
    msg = make(tmp_path, body=SPAM_BODY)
    size = len(read(msg))
    # exactly at the limit: scanned (and rejected)
    decision, _ = await run_filter(msg, settings_for(spamd_server.tcp_address, max_msg_size=size))
    assert decision.verdict is Verdict.REJECT
    # one byte over: not scanned, not changed, spamd never asked (it is unreachable here)
    before = read(msg)
    decision, elapsed = await run_filter(
        msg, settings_for(str(tmp_path / "no-spamd.sock"), max_msg_size=size - 1)
    )
    assert decision is CONTINUE and read(msg) == before
    assert elapsed < 0.5


async def test_default_size_limit_skips_big_messages(tmp_path: Path) -> None:
    body = b"".join(b"%080d\n" % i for i in range(6400))  # 518,400 bytes
    msg = make(tmp_path, body=GTUBE + b"\n" + body)
    assert msg.size > 512000
    decision, elapsed = await run_filter(msg, settings_for(str(tmp_path / "none.sock")))
    assert decision is CONTINUE and elapsed < 0.5


async def test_concurrent_messages_share_one_capped_client(
    spamd_server: SpamdServer, tmp_path: Path
) -> None:
    settings = settings_for(spamd_server.tcp_address, spamd_max_concurrency=2)
    ctx = make_context("spamassassin", settings, defaults=SpamAssassin.defaults)
    flt = SpamAssassin(ctx)
    await flt.start()
    messages = [make(tmp_path, body=SPAM_BODY if i % 3 == 0 else HAM_BODY) for i in range(9)]
    client = await spamd_client(ctx)
    try:
        decisions = await asyncio.gather(*(flt.check(m, ctx) for m in messages))
        assert await spamd_client(ctx) is client
    finally:
        await ctx.services.close()
    assert [d.verdict for d in decisions] == [
        Verdict.REJECT if i % 3 == 0 else Verdict.CONTINUE for i in range(9)
    ]
    assert client.max_concurrency == 2


async def test_through_the_chain(spamd_server: SpamdServer, tmp_path: Path) -> None:
    """Loaded by name like a pythonfilter.conf line; the chain replies with its decision."""
    ctx = make_context("spamassassin")
    sections = {"spamassassin.py": {"spamd_address": spamd_server.socket_path}}
    chain = build_chain(
        [("spamassassin", frozenset())], lambda s: sections.get(s, {}), ctx.services
    )
    await chain.start()
    try:
        spam = make(tmp_path, body=SPAM_BODY)
        result = await chain.run(spam)
        assert result.deciding == "spamassassin"
        assert result.decision.reply().startswith("554 Mail rejected - spam detected: Yes,")
        ham = make(tmp_path, body=HAM_BODY)
        result = await chain.run(ham)
        assert result.decision.reply() == "200 Ok"
        assert (await ham.raw()).startswith(b"X-Spam-Checker-Version: ")
    finally:
        await chain.stop()
        await ctx.services.close()


# -- settings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    [
        {"rewrite": "body"},
        {"spamd_address": "host:99999"},
        {"spamd_timeout": 0},
        {"spamd_max_concurrency": "5"},
        {"reject_score": "10"},
        {"max_msg_size": -1},
        {"username": ""},
        {"username": "a\nb"},
        {"on_error": "accept"},
    ],
)
async def test_bad_settings_fail_at_start(bad: dict[str, Any]) -> None:
    ctx = make_context("spamassassin", bad, defaults=SpamAssassin.defaults)
    with pytest.raises(ValueError):
        await SpamAssassin(ctx).start()


def test_defaults_keep_the_original_keys() -> None:
    d = SpamAssassin.defaults
    assert (d["spamc_path"], d["max_msg_size"], d["username"], d["reject_score"]) == (
        "/usr/bin/spamc",
        512000,
        None,
        None,
    )
    assert (d["spamd_address"], d["spamd_timeout"], d["spamd_max_concurrency"]) == (
        "127.0.0.1:783",
        30.0,
        5,
    )
    assert d["rewrite"] == "headers"


# -- faults: the failure action, in time ----------------------------------------------------


async def test_dead_spamd_gives_the_failure_action(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    msg = make(tmp_path, body=SPAM_BODY)
    before = read(msg)
    with caplog.at_level(logging.ERROR):
        decision, elapsed = await run_filter(msg, settings_for("127.0.0.1:1"))
    assert decision == INTERNAL_ERROR
    assert decision.reply() == "451 4.3.0 Temporary failure in mail filtering, try again later"
    assert elapsed < 1.0 and read(msg) == before
    assert (
        "spamd scan of" in caplog.text and "cannot connect to spamd at 127.0.0.1:1" in caplog.text
    )
    # the admin's on_error applies
    decision, _ = await run_filter(msg, settings_for("127.0.0.1:1", on_error="continue"))
    assert decision is CONTINUE
    decision, _ = await run_filter(
        msg, settings_for(str(tmp_path / "gone.sock"), on_error="421 4.3.2 spam filter down")
    )
    assert decision.reply() == "421 4.3.2 spam filter down"


async def test_spamd_killed_mid_scan(spamd_factory: SpamdFactory, tmp_path: Path) -> None:
    server = spamd_factory(children=1).start()
    [child] = server.wait_children()
    body = b"".join(b"line %d of a long and boring message body\n" % i for i in range(9000))
    msg = make(tmp_path, body=body)
    before = read(msg)
    offset = server.log_size()
    settings = settings_for(server.tcp_address, spamd_timeout=20)
    task = asyncio.create_task(run_filter(msg, settings))
    await asyncio.to_thread(server.wait_log, r"(checking|processing) message", after=offset)
    os.kill(child, 9)
    decision, elapsed = await task
    assert decision == INTERNAL_ERROR
    assert elapsed < 5.0  # far below spamd_timeout
    assert read(msg) == before


async def test_spamd_hanging(spamd_factory: SpamdFactory, tmp_path: Path) -> None:
    server = spamd_factory(children=1).start()
    msg = make(tmp_path, body=SPAM_BODY)
    before = read(msg)
    server.pause()
    try:
        decision, elapsed = await run_filter(
            msg, settings_for(server.socket_path, spamd_timeout=0.5)
        )
        assert decision == TIMED_OUT
        assert decision.reply() == "451 4.3.0 Mail filtering timed out, try again later"
        assert 0.48 <= elapsed < 2.0
        decision, _ = await run_filter(
            msg, settings_for(server.socket_path, spamd_timeout=0.2, on_error="reject")
        )
        assert decision.reply() == "554 5.3.0 Mail filtering failed"
    finally:
        server.resume()
    assert read(msg) == before
    # once spamd thaws, the same message is rejected normally
    decision, _ = await run_filter(msg, settings_for(server.socket_path))
    assert decision.verdict is Verdict.REJECT


GARBAGE = {
    "http": answer(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"),
    "binary": answer(os.urandom(512)),
    "truncated": answer(
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 5000\r\nSpam: False ; 0.0 / 5.0\r\n\r\nX-Sp"
    ),
    "no-verdict": answer(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 4\r\n\r\nab\n\n"),
    "error-status": answer(b"SPAMD/1.0 70 Internal software error\r\n"),
    "silent-close": close_at_once(),
    "flood": flood(),
    "bad-header-field": answer(
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 18\r\nSpam: False ; 0 / 5\r\n\r\n"
        b"X-Spam-Status: \x00\n\n"
    ),
}


@pytest.mark.parametrize("kind", sorted(GARBAGE))
async def test_garbage_from_spamd_gives_the_failure_action(kind: str, tmp_path: Path) -> None:
    msg = make(tmp_path, body=HAM_BODY)
    before = read(msg)
    async with fake_spamd(GARBAGE[kind]) as fake:
        decision, elapsed = await run_filter(msg, settings_for(fake.address, spamd_timeout=5))
    assert decision == INTERNAL_ERROR
    assert elapsed < 3.0
    assert read(msg) == before  # never tagged "clean" by accident


async def test_fake_hang_over_tcp_gives_the_timeout_action(tmp_path: Path) -> None:
    msg = make(tmp_path, body=HAM_BODY)
    async with fake_spamd(hang()) as fake:
        decision, elapsed = await run_filter(
            msg, settings_for(fake.address, spamd_timeout=0.3, on_error="continue")
        )
        assert decision is CONTINUE  # on_error='continue' covers timeouts too
        decision, elapsed = await run_filter(msg, settings_for(fake.address, spamd_timeout=0.3))
    assert decision == TIMED_OUT
    assert 0.28 <= elapsed < 1.5


# -- the documentation matches the code ----------------------------------------------------

DOC = Path(__file__).resolve().parents[2] / "docs" / "filters" / "spamassassin.md"


def test_doc_settings_table_matches_the_defaults() -> None:
    text = DOC.read_text(encoding="utf-8")
    section = text[text.index("## Settings\n") :]
    section = section[: section.index("\n## ", 1)]
    rows = {}
    for line in section.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| `") and len(cells) >= 3:
            rows[cells[0].strip("`")] = evaluate(cells[1].strip("`"))
    assert rows == dict(SpamAssassin.defaults)


async def test_doc_example_configuration_loads(tmp_path: Path) -> None:
    text = DOC.read_text(encoding="utf-8")
    block = re.search(r"```ini title=pythonfilter-modules.conf\n(.*?)```", text, re.S)
    assert block is not None
    config = parse_modules_config([("pythonfilter-modules.conf", block.group(1))])
    section = config.section("spamassassin.py")
    assert section["spamd_address"] == "/run/spamd.sock"
    assert section["spamd_max_concurrency"] == 5 and section["reject_score"] == 10.0
    ctx = make_context("spamassassin", section, defaults=SpamAssassin.defaults)
    await SpamAssassin(ctx).start()  # valid settings
    # and the filter behaves as documented with them: no spamd there -> failure action
    msg = make(tmp_path)
    decision, _ = await run_filter(msg, {**section, "spamd_address": str(tmp_path / "x.sock")})
    assert decision == INTERNAL_ERROR


class _RecordingQuarantine:
    """Stands in for the quarantine service (its own tests use the real one)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.calls: list[tuple[str, str]] = []

    async def quarantine(self, message: Message, explanation: str) -> None:
        if self.fail:
            from courier_pyfilter.quarantine import QuarantineError

            raise QuarantineError("disk full")
        self.calls.append((message.data_path, explanation))


async def test_action_quarantine_quarantines_spam_and_answers_050(
    spamd_server: SpamdServer, tmp_path: Path
) -> None:
    msg = make(tmp_path, body=SPAM_BODY)
    settings = settings_for(spamd_server.tcp_address, action="quarantine")
    ctx = make_context("spamassassin", settings, defaults=SpamAssassin.defaults)
    service = _RecordingQuarantine()
    ctx.services.put("quarantine", service)
    decision, _ = await run_filter(msg, settings, ctx)
    assert decision.reply() == "050 OK"
    assert len(service.calls) == 1
    assert service.calls[0][0] == msg.data_path
    assert service.calls[0][1].startswith("SpamAssassin found spam in the message: Yes, score=")


async def test_failed_quarantine_is_never_a_delivery(
    spamd_server: SpamdServer, tmp_path: Path
) -> None:
    from courier_pyfilter.quarantine import QuarantineError

    msg = make(tmp_path, body=SPAM_BODY)
    settings = settings_for(spamd_server.tcp_address, action="quarantine")
    ctx = make_context("spamassassin", settings, defaults=SpamAssassin.defaults)
    ctx.services.put("quarantine", _RecordingQuarantine(fail=True))
    with pytest.raises(QuarantineError):  # the chain turns this into its failure action
        await run_filter(msg, settings, ctx)


async def test_unknown_action_is_refused_at_start() -> None:
    ctx = make_context("spamassassin", {"action": "discard"}, defaults=SpamAssassin.defaults)
    with pytest.raises(ValueError, match="action must be"):
        await SpamAssassin(ctx).start()
