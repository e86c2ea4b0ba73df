"""Tests of the typed decision and its exact reply rendering."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from courier_pyfilter.decision import CONTINUE, OK, Decision, ReplyFormatError, Verdict


def test_constructors_pick_conventional_codes() -> None:
    assert Decision.accept().reply() == "200 Ok"
    assert Decision.accept_skip_courier().reply() == "050 OK"
    assert Decision.tempfail("try later").reply() == "451 try later"
    assert Decision.reject("no").reply() == "554 no"
    assert OK.reply() == "200 Ok"
    assert Decision.continue_() is CONTINUE
    assert CONTINUE.reply() == ""


def test_multiline_rendering() -> None:
    d = Decision.reject(("MX server mx.example said:", "Sender does not exist: a@b"), code="517")
    assert d.reply() == "517-MX server mx.example said:\n517 Sender does not exist: a@b"
    assert d.text == "MX server mx.example said: Sender does not exist: a@b"


@pytest.mark.parametrize(
    ("reply", "verdict", "code", "lines"),
    [
        ("200 Ok", Verdict.ACCEPT, "200", ("Ok",)),
        ("050 OK", Verdict.ACCEPT_SKIP_COURIER, "050", ("OK",)),
        (
            "451 4.7.1 Greylisting in action, please come back in 00:05:00",
            Verdict.TEMPFAIL,
            "451",
            ("4.7.1 Greylisting in action, please come back in 00:05:00",),
        ),
        (
            "517-MX server h said:\n517 Sender does not exist: x",
            Verdict.REJECT,
            "517",
            ("MX server h said:", "Sender does not exist: x"),
        ),
        (
            "554 Virus found - Signature is Eicar\n",
            Verdict.REJECT,
            "554",
            ("Virus found - Signature is Eicar",),
        ),
        ("421 closing", Verdict.TEMPFAIL, "421", ("closing",)),
        ("550", Verdict.REJECT, "550", ("",)),
    ],
)
def test_from_reply(reply: str, verdict: Verdict, code: str, lines: tuple[str, ...]) -> None:
    d = Decision.from_reply(reply)
    assert (d.verdict, d.code, d.lines) == (verdict, code, lines)


def test_from_reply_empty_is_continue() -> None:
    assert Decision.from_reply("") is CONTINUE


@pytest.mark.parametrize("reply", ["hello", "ok 200", "20", "abc def", "\uff16\uff10\uff10 x"])
def test_from_reply_rejects_garbage(reply: str) -> None:
    with pytest.raises(ReplyFormatError):
        Decision.from_reply(reply)


def test_code_must_match_verdict() -> None:
    with pytest.raises(ReplyFormatError):
        Decision(Verdict.ACCEPT, "550", ("x",))
    with pytest.raises(ReplyFormatError):
        Decision.tempfail("x", code="554")
    with pytest.raises(ReplyFormatError):
        Decision(Verdict.CONTINUE, "200", ("x",))


def test_lines_may_not_contain_breaks() -> None:
    with pytest.raises(ReplyFormatError):
        Decision.reject(("a\rb",))


def test_verdict_properties() -> None:
    assert not Verdict.CONTINUE.is_final
    assert Verdict.REJECT.is_final
    assert Verdict.ACCEPT_SKIP_COURIER.delivers
    assert not Verdict.TEMPFAIL.delivers


line_text = st.text(
    alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=40
)


@given(
    st.sampled_from(["050", "200", "250", "421", "451", "550", "554"]),
    st.lists(line_text, min_size=1, max_size=5),
)
def test_reply_round_trip(code: str, lines: list[str]) -> None:
    verdict = Decision.from_reply(f"{code} x").verdict
    d = Decision(verdict, code, tuple(lines))
    assert Decision.from_reply(d.reply()) == d
