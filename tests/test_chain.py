"""The policy chain with fake filters: ``for`` bypass semantics, failures, shadow mode.

The expected results follow the original's chain (a filter's reply string: ``''`` = no
decision; with ``for``, a ``2xx`` adds the listed names to the bypass set and the chain
goes on; any other non-empty reply stops it; the final reply is the last computed reply,
or ``200 Ok`` when that is empty).  :func:`original` is a direct model of those rules over
reply strings, so the real chain can be compared with it on many generated chains.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from courier_pyfilter.chain import (
    INTERNAL_ERROR,
    TIMED_OUT,
    Chain,
    ChainEntry,
    failure_action,
)
from courier_pyfilter.decision import CONTINUE, OK, Decision, Verdict

MESSAGE: Any = object()  # the fake filters never look at the message


@dataclass(frozen=True)
class Junk:
    """A result that is returned as is (not a Decision)."""

    value: Any


@dataclass
class Fake:
    """A filter runner returning a fixed reply (or raising / hanging / returning junk)."""

    result: Any = ""
    whitelist: bool = False
    calls: int = 0
    events: list[str] = field(default_factory=list)
    name: str = "fake"
    fail_start: bool = False

    async def check(self, message: Any) -> Any:
        self.calls += 1
        self.events.append(f"check {self.name}")
        if isinstance(self.result, BaseException):
            raise self.result
        if self.result == "hang":
            await asyncio.sleep(3600)
        if isinstance(self.result, Junk):
            return self.result.value
        if isinstance(self.result, str):
            return Decision.from_reply(self.result)
        return self.result

    async def start(self) -> None:
        self.events.append(f"start {self.name}")
        if self.fail_start:
            raise RuntimeError(f"{self.name} cannot start")

    async def stop(self) -> None:
        self.events.append(f"stop {self.name}")


def entry(name: str, result: Any = "", bypass: Sequence[str] = (), **kw: Any) -> ChainEntry:
    """A chain entry around a :class:`Fake` called ``name``."""
    whitelist = kw.pop("whitelist", False)
    events = kw.pop("events", [])
    runner = Fake(result, whitelist=whitelist, name=name, events=events)
    return ChainEntry(name=name, runner=runner, bypass=frozenset(bypass), **kw)


async def run(*entries: ChainEntry) -> tuple[str, list[str], str | None]:
    """Run the chain: ``(final reply, names of the filters that ran, deciding filter)``."""
    result = await Chain(entries).run(MESSAGE)
    return result.decision.reply(), [o.name for o in result.outcomes], result.deciding


def original(lines: Sequence[tuple[str, str, Sequence[str]]]) -> tuple[str, list[str]]:
    """The original's chain over ``(name, reply, bypass)``: final reply and names run."""
    reply = ""
    bypass: set[str] = set()
    ran: list[str] = []
    for name, result, entry_bypass in lines:
        if name in bypass:
            continue
        ran.append(name)
        reply = result
        if reply:
            if entry_bypass and reply[0] == "2":
                bypass |= set(entry_bypass)
                continue
            break
    return (reply or "200 Ok"), ran


# -- the rules one by one ------------------------------------------------------------------


async def test_empty_chain_is_200_ok() -> None:
    assert await run() == ("200 Ok", [], None)


async def test_all_continue_is_200_ok() -> None:
    assert await run(entry("a"), entry("b")) == ("200 Ok", ["a", "b"], None)


async def test_reject_stops_chain() -> None:
    assert await run(entry("a", "550 no"), entry("b", "451 later")) == ("550 no", ["a"], "a")


async def test_2xx_without_for_stops_chain() -> None:
    reply, ran, deciding = await run(entry("a", "250 fine"), entry("b", "550 no"))
    assert (reply, ran, deciding) == ("250 fine", ["a"], "a")


async def test_050_stops_chain_even_with_for() -> None:
    reply, ran, _ = await run(entry("a", "050 OK", bypass=["b"]), entry("b"), entry("c", "550 x"))
    assert (reply, ran) == ("050 OK", ["a"])


async def test_4xx_5xx_with_for_stop_chain() -> None:
    assert (await run(entry("a", "451 t", bypass=["b"]), entry("c", "550 x")))[:2] == (
        "451 t",
        ["a"],
    )
    assert (await run(entry("a", "554 r", bypass=["b"]), entry("c", "550 x")))[:2] == (
        "554 r",
        ["a"],
    )


async def test_for_skips_only_listed_filters() -> None:
    reply, ran, _ = await run(
        entry("wl", "200 Whitelisted", bypass=["greylist", "spf"]),
        entry("greylist", "451 greylisted"),
        entry("spf", "550 spf fail"),
        entry("clamav", ""),
    )
    # clamav ran after the whitelist and had no decision: the last reply is '' -> 200 Ok
    assert (reply, ran) == ("200 Ok", ["wl", "clamav"])


async def test_for_whitelist_reply_kept_when_rest_is_bypassed() -> None:
    reply, ran, deciding = await run(
        entry("wl", "250 Whitelisted", bypass=["greylist"]),
        entry("greylist", "451 greylisted"),
    )
    assert (reply, ran, deciding) == ("250 Whitelisted", ["wl"], "wl")


async def test_rejection_after_for_whitelist_wins() -> None:
    reply, ran, deciding = await run(
        entry("wl", "200 Ok", bypass=["greylist"]),
        entry("greylist", "451 greylisted"),
        entry("clamav", "554 virus"),
    )
    assert (reply, ran, deciding) == ("554 virus", ["wl", "clamav"], "clamav")


async def test_bypass_sets_accumulate() -> None:
    reply, ran, _ = await run(
        entry("w1", "200 one", bypass=["a"]),
        entry("w2", "200 two", bypass=["b"]),
        entry("a", "550 a"),
        entry("b", "550 b"),
        entry("c", "550 c"),
    )
    assert (reply, ran) == ("550 c", ["w1", "w2", "c"])


async def test_bypassed_whitelist_does_not_add_its_set() -> None:
    reply, ran, _ = await run(
        entry("w1", "200 one", bypass=["w2"]),
        entry("w2", "200 two", bypass=["x"]),
        entry("x", "550 x"),
    )
    assert (reply, ran) == ("550 x", ["w1", "x"])


async def test_later_for_whitelist_reply_is_final() -> None:
    reply, _, deciding = await run(
        entry("w1", "250 first", bypass=["a"]),
        entry("w2", "251 second", bypass=["b"]),
        entry("a", "550 a"),
        entry("b", "550 b"),
    )
    assert (reply, deciding) == ("251 second", "w2")


async def test_empty_for_clause_is_like_no_for() -> None:
    reply, ran, _ = await run(entry("a", "200 Ok", bypass=[]), entry("b", "550 b"))
    assert (reply, ran) == ("200 Ok", ["a"])


async def test_bypass_names_compared_exactly() -> None:
    # "greylist.py" is not the entry "greylist"
    reply, ran, _ = await run(
        entry("wl", "200 Ok", bypass=["greylist.py", "Greylist"]),
        entry("greylist", "451 greylisted"),
    )
    assert (reply, ran) == ("451 greylisted", ["wl", "greylist"])


async def test_same_filter_listed_twice_both_run_and_bypass_both() -> None:
    reply, ran, _ = await run(
        entry("a"),
        entry("wl", "200 Ok", bypass=["a"]),
        entry("a", "550 second a"),
    )
    assert (reply, ran) == ("200 Ok", ["a", "wl"])


async def test_multiline_reply_passed_through() -> None:
    reply, _, _ = await run(entry("a", "517-first\n517 second"))
    assert reply == "517-first\n517 second"


@pytest.mark.parametrize("code", ["100", "300"])
async def test_non_2xx_accept_with_for_stops_chain(code: str) -> None:
    # The original only continues on a reply whose first character is "2".
    reply, ran, _ = await run(entry("w", f"{code} hmm", bypass=["a"]), entry("b", "550 b"))
    assert (reply, ran) == (f"{code} hmm", ["w"])


# -- property: the same answers as the original's rules --------------------------------------

NAMES = ["a", "b", "c", "d", "e"]
REPLIES = ["", "", "200 Ok", "250 Whitelisted", "050 OK", "451 later", "550 no", "517-x\n517 y"]


LINES = st.lists(
    st.tuples(
        st.sampled_from(NAMES),
        st.sampled_from(REPLIES),
        st.lists(st.sampled_from([*NAMES, "zz"]), max_size=3),
    ),
    max_size=7,
)


@pytest.fixture(scope="module")
def runner() -> Iterator[asyncio.Runner]:
    """One event loop for all the generated examples (a loop per example is slow)."""
    with asyncio.Runner() as r:
        yield r


@settings(max_examples=200, deadline=None)
@given(lines=LINES)
def test_chain_matches_original_rules(
    runner: asyncio.Runner, lines: list[tuple[str, str, list[str]]]
) -> None:
    expected = original(lines)

    async def go() -> tuple[str, list[str]]:
        reply, ran, _ = await run(*(entry(n, r, bypass=b) for n, r, b in lines))
        return reply, ran

    assert runner.run(go()) == expected


# -- failures --------------------------------------------------------------------------


async def test_raising_filter_gives_on_error(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR):
        result = await Chain([entry("a", RuntimeError("kaputt")), entry("b", "550 b")]).run(MESSAGE)
    assert result.decision is INTERNAL_ERROR
    assert result.deciding == "a"
    assert result.outcomes[0].error == "RuntimeError: kaputt"
    assert [o.name for o in result.outcomes] == ["a"]
    record = next(r for r in caplog.records if "kaputt" in r.getMessage())
    assert record.exc_info is not None  # the traceback is logged


async def test_garbage_result_gives_on_error() -> None:
    for junk in (None, "550 a string", 42, OK.reply()):
        result = await Chain([entry("a", Junk(junk))]).run(MESSAGE)
        assert result.decision is INTERNAL_ERROR
        assert result.outcomes[0].error == "not a decision"


async def test_whitelist_failure_continues() -> None:
    reply, ran, _ = await run(
        entry("wl", RuntimeError("x"), whitelist=True, on_error=CONTINUE), entry("b", "550 b")
    )
    assert (reply, ran) == ("550 b", ["wl", "b"])


async def test_timeout_blocking_filter_gives_451() -> None:
    result = await Chain([entry("slow", "hang", timeout=0.05), entry("b", "550 b")]).run(MESSAGE)
    assert result.decision is TIMED_OUT
    assert result.outcomes[0].error == "timeout"
    assert result.decision.code == "451"


async def test_timeout_whitelist_continues() -> None:
    reply, ran, _ = await run(
        entry("slow", "hang", timeout=0.05, on_timeout=CONTINUE), entry("b", "550 b")
    )
    assert (reply, ran) == ("550 b", ["slow", "b"])


async def test_failure_never_accepts_with_for() -> None:
    # on_error CONTINUE from a for-entry adds nothing to the bypass set
    reply, ran, _ = await run(
        entry("wl", RuntimeError("x"), bypass=["b"], on_error=CONTINUE), entry("b", "550 b")
    )
    assert (reply, ran) == ("550 b", ["wl", "b"])


async def test_cancellation_propagates() -> None:
    chain = Chain([entry("slow", "hang")])
    task = asyncio.create_task(chain.run(MESSAGE))
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_systemexit_in_filter_is_a_failure() -> None:
    result = await Chain([entry("a", SystemExit(1))]).run(MESSAGE)
    assert result.decision is INTERNAL_ERROR


# -- shadow mode ------------------------------------------------------------------------


async def test_shadow_decision_logged_and_chain_continues(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        result = await Chain(
            [entry("sh", "550 would reject", shadow=True), entry("b", "451 later")]
        ).run(MESSAGE)
    assert result.decision.reply() == "451 later"
    assert [o.name for o in result.outcomes] == ["sh", "b"]
    assert result.outcomes[0].shadow_decision == Decision.from_reply("550 would reject")
    assert result.outcomes[0].decision is CONTINUE
    assert 'shadow: "sh" would have answered 550 would reject' in caplog.text


async def test_shadow_whitelist_does_not_bypass() -> None:
    reply, ran, _ = await run(entry("sh", "200 Ok", bypass=["b"], shadow=True), entry("b", "550 b"))
    assert (reply, ran) == ("550 b", ["sh", "b"])


async def test_shadow_continue_logs_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO):
        assert (await run(entry("sh", "", shadow=True)))[0] == "200 Ok"
    assert "would have" not in caplog.text


# -- timing and outcomes -----------------------------------------------------------------


async def test_outcome_times_from_clock() -> None:
    ticks = iter(range(100))
    chain = Chain([entry("a"), entry("b", "550 b")], clock=lambda: float(next(ticks)))
    result = await chain.run(MESSAGE)
    assert [o.seconds for o in result.outcomes] == [1.0, 1.0]
    assert result.seconds == 5.0


# -- start / stop / in-flight ----------------------------------------------------------------


async def test_start_and_stop_order(caplog: pytest.LogCaptureFixture) -> None:
    events: list[str] = []
    chain = Chain([entry(n, events=events) for n in ("a", "b", "c")])
    with caplog.at_level(logging.INFO):
        await chain.start()
    await chain.stop()
    assert events == ["start a", "start b", "start c", "stop c", "stop b", "stop a"]
    for n in ("a", "b", "c"):
        assert f'Initialized the "{n}" python filter' in caplog.text
    await chain.stop()  # idempotent
    assert len(events) == 6


async def test_failed_start_stops_started_filters() -> None:
    events: list[str] = []
    bad = entry("b", events=events)
    bad.runner.fail_start = True  # type: ignore[attr-defined]
    chain = Chain([entry("a", events=events), bad, entry("c", events=events)])
    with pytest.raises(RuntimeError, match="b cannot start"):
        await chain.start()
    assert events == ["start a", "start b", "stop a"]


async def test_stop_errors_are_logged_not_raised(caplog: pytest.LogCaptureFixture) -> None:
    events: list[str] = []
    a, b = entry("a", events=events), entry("b", events=events)

    async def boom() -> None:
        raise OSError("close failed")

    b.runner.stop = boom  # type: ignore[method-assign]
    chain = Chain([a, b])
    await chain.start()
    await chain.stop()
    assert events[-1] == "stop a"
    assert "close failed" in caplog.text


async def test_wait_idle_tracks_in_flight() -> None:
    chain = Chain([])
    await asyncio.wait_for(chain.wait_idle(), 1)
    chain.acquire()
    chain.acquire()
    waiter = asyncio.create_task(chain.wait_idle())
    await asyncio.sleep(0.01)
    chain.release()
    await asyncio.sleep(0.01)
    assert not waiter.done()
    chain.release()
    await asyncio.wait_for(waiter, 1)
    assert chain.in_flight == 0


async def test_names() -> None:
    assert Chain([entry("a"), entry("b.c")]).names == ["a", "b.c"]


# -- failure_action ----------------------------------------------------------------------


def test_failure_action_defaults() -> None:
    assert failure_action(None, whitelist=False) is INTERNAL_ERROR
    assert failure_action(None, whitelist=True) is CONTINUE
    assert failure_action(None, whitelist=False, default=TIMED_OUT) is TIMED_OUT


def test_failure_action_words() -> None:
    assert failure_action("tempfail", whitelist=True) is INTERNAL_ERROR
    assert failure_action("continue", whitelist=False) is CONTINUE
    reject = failure_action("reject", whitelist=False)
    assert reject.verdict is Verdict.REJECT and reject.code.startswith("5")


def test_failure_action_full_reply() -> None:
    d = failure_action("421 4.3.0 try later", whitelist=False)
    assert d.reply() == "421 4.3.0 try later"


@pytest.mark.parametrize("bad", ["200 Ok", "050 OK", 3, ["continue"]])
def test_failure_action_refuses_accepting_or_wrong_type(bad: Any) -> None:
    with pytest.raises(ValueError):
        failure_action(bad, whitelist=False)
