"""``privateaddr``: only listed senders may write to private addresses."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.decision import CONTINUE, Verdict
from courier_pyfilter.filters.privateaddr import DEFAULT_PRIVATE_RCPTS, PrivateAddr
from courier_pyfilter.legacyconf import parse_modules_config
from courier_pyfilter.loader import FilterLoadError, build_chain
from courier_pyfilter.message import Message, MessageError
from courier_pyfilter.services import Services
from courier_pyfilter.settings import Settings
from courier_pyfilter.testing import MessageFactory, make_context

REFUSED = "517 Sender is not allowed by privacy settings."
LOGGER = "courier_pyfilter.filters.privateaddr"

RULES = {
    "boss@example.com": [r"[^@]*@example\.com$", r"assistant@partner\.example$"],
    "Alice@Example.com": [r"[^@]*@example\.com$"],
    "nobody-writes@example.com": [],
    "dsn-ok@example.com": [r"$"],  # the null sender only
}


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    path = tmp_path / "etc"
    path.mkdir()
    (path / "me").write_text("mx.example.com\n")
    return path


@pytest.fixture
def messages(tmp_path: Path) -> MessageFactory:
    path = tmp_path / "msgs"
    path.mkdir()
    return MessageFactory(path)


async def started(etc: Path, settings: Mapping[str, Any] | None = None) -> PrivateAddr:
    ctx = make_context(
        "privateaddr",
        {"private_rcpts": RULES, **(settings or {})},
        defaults=PrivateAddr.defaults,
        sysconfdir=str(etc),
    )
    flt = PrivateAddr(ctx)
    await flt.start()
    return flt


async def decide(flt: PrivateAddr, msg: Message) -> str | None:
    decision = await flt.check(msg, flt.ctx)
    if decision is CONTINUE:
        return None
    assert decision.verdict is Verdict.REJECT
    return decision.reply()


def drop_sender_record(path: str) -> None:
    """Remove the ``s`` line from a control file (a malformed control file)."""
    lines = Path(path).read_bytes().splitlines(True)
    Path(path).write_bytes(b"".join(ln for ln in lines if not ln.startswith(b"s")))


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


def test_defaults_are_the_originals() -> None:
    names = [
        "help",
        "webmaster",
        "msdn",
        "researchhelp",
        "desktophelp",
        "securityhelp",
        "gnlhelp",
        "memshelp",
        "compstudenthelp",
    ]
    assert {
        f"{n}@ee.washington.edu": ["[^@]*@.*washington.edu"] for n in names
    } == DEFAULT_PRIVATE_RCPTS
    assert PrivateAddr.defaults == {
        "private_rcpts": DEFAULT_PRIVATE_RCPTS,
        "check_final_address": True,
    }
    assert PrivateAddr.whitelist is False


async def test_default_rules(
    etc: Path, messages: MessageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    ctx = make_context("privateaddr", defaults=PrivateAddr.defaults, sysconfdir=str(etc))
    flt = PrivateAddr(ctx)
    await flt.start()
    ok = messages(sender="prof@ee.washington.edu", recipients=["help@ee.washington.edu"])
    assert await decide(flt, ok) is None
    with caplog.at_level(logging.INFO, logger=LOGGER):
        bad = messages(sender="spam@example.net", recipients=["help@ee.washington.edu"])
        assert await decide(flt, bad) == REFUSED
    assert logged(caplog) == [
        "Message to help@ee.washington.edu from spam@example.net refused by privateaddr.py"
    ]
    other = messages(sender="spam@example.net", recipients=["someone@ee.washington.edu"])
    assert await decide(flt, other) is None


async def test_any_listed_pattern_allows(etc: Path, messages: MessageFactory) -> None:
    flt = await started(etc)
    for sender in ("carol@example.com", "assistant@partner.example"):
        assert await decide(flt, messages(sender=sender, recipients=["boss@example.com"])) is None
    for sender in ("carol@example.com.evil", "other@partner.example", "x@sub.example.com"):
        msg = messages(sender=sender, recipients=["boss@example.com"])
        assert await decide(flt, msg) == REFUSED, sender


async def test_patterns_use_match_and_are_case_sensitive(
    etc: Path, messages: MessageFactory
) -> None:
    flt = await started(etc, {"private_rcpts": {"boss@example.com": ["example"]}})
    # re.match: anchored at the start only
    assert await decide(flt, messages(sender="example@x.org", recipients=["boss@example.com"])) is (
        None
    )
    assert await decide(flt, messages(sender="x@example.org", recipients=["boss@example.com"])) == (
        REFUSED
    )
    assert await decide(flt, messages(sender="EXAMPLE@x.org", recipients=["boss@example.com"])) == (
        REFUSED
    )


async def test_one_refused_recipient_refuses_the_message(
    etc: Path, messages: MessageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    flt = await started(etc)
    msg = messages(
        sender="out@example.net",
        recipients=["public@example.com", "nobody-writes@example.com", "boss@example.com"],
    )
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert await decide(flt, msg) == REFUSED
    assert logged(caplog) == [
        "Message to nobody-writes@example.com from out@example.net refused by privateaddr.py"
    ]


async def test_empty_pattern_list_refuses_everybody(etc: Path, messages: MessageFactory) -> None:
    flt = await started(etc)
    msg = messages(sender="ceo@example.com", recipients=["nobody-writes@example.com"])
    assert await decide(flt, msg) == REFUSED


async def test_null_sender_is_matched_as_the_empty_string(
    etc: Path, messages: MessageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    flt = await started(etc)
    assert await decide(flt, messages(sender="", recipients=["dsn-ok@example.com"])) is None
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert await decide(flt, messages(sender="", recipients=["boss@example.com"])) == REFUSED
    assert logged(caplog) == ["Message to boss@example.com from  refused by privateaddr.py"]


async def test_original_address_is_checked(
    etc: Path, messages: MessageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    flt = await started(etc, {"check_final_address": False})
    # boss@ is an alias of jsmith@: the R record holds the address the client used
    via_alias = messages(
        sender="out@example.net", recipients=[("jsmith@example.com", "rfc822;boss@example.com", "")]
    )
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert await decide(flt, via_alias) == REFUSED
    assert logged(caplog) == [
        "Message to boss@example.com from out@example.net refused by privateaddr.py"
    ]
    no_prefix = messages(
        sender="out@example.net", recipients=[("jsmith@example.com", "boss@example.com", "")]
    )
    assert await decide(flt, no_prefix) == REFUSED


async def test_original_only_mode_trusts_the_orcpt_like_the_original(
    etc: Path, messages: MessageFactory
) -> None:
    flt = await started(etc, {"check_final_address": False})
    spoofed = messages(
        sender="out@example.net", recipients=[("boss@example.com", "rfc822;x@example.net", "")]
    )
    assert await decide(flt, spoofed) is None


async def test_final_address_is_checked_too_by_default(
    etc: Path, messages: MessageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    flt = await started(etc)
    spoofed = messages(
        sender="out@example.net", recipients=[("boss@example.com", "rfc822;x@example.net", "")]
    )
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert await decide(flt, spoofed) == REFUSED
    assert logged(caplog) == [
        "Message to boss@example.com from out@example.net refused by privateaddr.py"
    ]
    allowed = messages(
        sender="carol@example.com",
        recipients=[("boss@example.com", "rfc822;x@example.net", "")],
    )
    assert await decide(flt, allowed) is None


async def test_domain_case_is_ignored(etc: Path, messages: MessageFactory) -> None:
    flt = await started(etc)
    for rcpt in ("boss@EXAMPLE.COM", "Alice@example.com", "Alice@EXAMPLE.com"):
        msg = messages(sender="out@example.net", recipients=[rcpt])
        assert await decide(flt, msg) == REFUSED, rcpt
    # without locallowercase local parts are case-sensitive, as in Courier
    for rcpt in ("BOSS@example.com", "alice@example.com"):
        msg = messages(sender="out@example.net", recipients=[rcpt])
        assert await decide(flt, msg) is None, rcpt


async def test_locallowercase_lowercases_addresses_and_keys(
    etc: Path, messages: MessageFactory, caplog: pytest.LogCaptureFixture
) -> None:
    (etc / "locallowercase").write_text("")
    flt = await started(etc)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        for rcpt in ("BOSS@Example.com", "alice@example.com", "ALICE@EXAMPLE.COM"):
            msg = messages(sender="out@example.net", recipients=[rcpt])
            assert await decide(flt, msg) == REFUSED, rcpt
    assert logged(caplog) == [
        "Message to boss@example.com from out@example.net refused by privateaddr.py",
        "Message to alice@example.com from out@example.net refused by privateaddr.py",
        "Message to alice@example.com from out@example.net refused by privateaddr.py",
    ]
    msg = messages(sender="carol@example.com", recipients=["ALICE@example.com"])
    assert await decide(flt, msg) is None


async def test_single_string_counts_as_one_pattern(etc: Path, messages: MessageFactory) -> None:
    flt = await started(etc, {"private_rcpts": {"boss@example.com": r"[^@]*@example\.com$"}})
    assert await decide(flt, messages(sender="c@example.com", recipients=["boss@example.com"])) is (
        None
    )
    assert await decide(flt, messages(sender="e@e.com", recipients=["boss@example.com"])) == (
        REFUSED
    )


async def test_nothing_configured_continues(etc: Path, messages: MessageFactory) -> None:
    flt = await started(etc, {"private_rcpts": {}})
    assert await decide(flt, messages(recipients=["help@ee.washington.edu"])) is None


async def test_missing_sender_record_is_an_error_only_for_private_recipients(
    etc: Path, messages: MessageFactory
) -> None:
    flt = await started(etc)
    for rcpt, private in (("public@example.com", False), ("boss@example.com", True)):
        msg = messages(sender="out@example.net", recipients=[rcpt])
        drop_sender_record(msg.control_paths[0])
        fresh = Message(msg.data_path, msg.control_paths)
        if private:
            with pytest.raises(MessageError, match="no envelope sender"):
                await flt.check(fresh, flt.ctx)
        else:
            assert await flt.check(fresh, flt.ctx) is CONTINUE


@pytest.mark.parametrize(
    ("rcpts", "message"),
    [
        (
            {"a@b.c": ["(unclosed"]},
            r"private_rcpts\['a@b.c'\]: invalid regular expression '\(unclosed'",
        ),
        ({"a@b.c": [42]}, r"private_rcpts\['a@b.c'\]: 42 is not a string"),
        ({"a@b.c": {"x": 1}}, r"private_rcpts\['a@b.c'\] must be a list"),
        ({"": ["x"]}, r"private_rcpts: bad address ''"),
        (["a@b.c"], r"private_rcpts must be a dict"),
    ],
)
async def test_bad_configuration_refuses_the_start(etc: Path, rcpts: Any, message: str) -> None:
    with pytest.raises(FilterLoadError, match=r"^\[privateaddr\.py\] " + message):
        await started(etc, {"private_rcpts": rcpts})


async def test_bad_check_final_address_refuses_the_start(etc: Path) -> None:
    with pytest.raises(FilterLoadError, match="check_final_address must be True or False"):
        await started(etc, {"check_final_address": "yes"})


async def test_invalid_regex_refuses_the_chain(tmp_path: Path) -> None:
    modules = parse_modules_config(
        [("pythonfilter-modules.conf", "[privateaddr.py]\nprivate_rcpts = {'a@b.c': ['[x']}\n")]
    )
    services = Services(Settings(state_dir=str(tmp_path)), modules.section)
    chain = build_chain([("privateaddr", frozenset())], modules.section, services)
    with pytest.raises(FilterLoadError, match="invalid regular expression"):
        await chain.start()
    await services.close()
