"""Tests of the ``recipient_limit`` filter, on messages laid out as Courier writes them.

Run from this directory with ``pip install -e '.[test]'`` then ``pytest`` (or, without
installing, ``PYTHONPATH=src pytest``; the entry-point test is then skipped).
"""

from __future__ import annotations

from importlib.metadata import entry_points
from pathlib import Path
from typing import Any

import pytest
from courier_pyfilter_recipient_limit import RecipientLimit, RecipientLimitConfigError

from courier_pyfilter.decision import CONTINUE, Verdict
from courier_pyfilter.testing import MessageFactory, make_context


async def started(**settings: Any) -> RecipientLimit:
    """A started filter with ``settings`` over its defaults."""
    ctx = make_context("recipient_limit", settings, defaults=RecipientLimit.defaults)
    flt = RecipientLimit(ctx)
    await flt.start()
    return flt


def rcpts(n: int) -> list[str]:
    return [f"user{i}@example.net" for i in range(n)]


@pytest.fixture
def messages(tmp_path: Path) -> MessageFactory:
    return MessageFactory(tmp_path, sender="someone@example.com")


async def test_at_the_limit_continues(messages: MessageFactory) -> None:
    flt = await started(limit=3)
    msg = messages(recipients=rcpts(3))
    assert await flt.check(msg, flt.ctx) is CONTINUE


async def test_over_the_limit_is_rejected(messages: MessageFactory) -> None:
    flt = await started(limit=3)
    decision = await flt.check(messages(recipients=rcpts(4)), flt.ctx)
    assert decision.verdict is Verdict.REJECT
    assert decision.reply() == "550 5.5.3 Too many recipients (4, at most 3 allowed)"


async def test_recipients_over_several_control_files_are_all_counted(
    messages: MessageFactory,
) -> None:
    flt = await started(limit=5)
    msg = messages(recipients=rcpts(6), batch_size=2)  # three control files
    assert len(msg.control_paths) == 3
    assert (await flt.check(msg, flt.ctx)).verdict is Verdict.REJECT


async def test_authenticated_users_have_their_own_limit(messages: MessageFactory) -> None:
    flt = await started(limit=2, auth_limit=10)
    assert await flt.check(messages(recipients=rcpts(10), auth_user="alice"), flt.ctx) is CONTINUE
    decision = await flt.check(messages(recipients=rcpts(11), auth_user="alice"), flt.ctx)
    assert decision.reply() == "550 5.5.3 Too many recipients (11, at most 10 allowed)"
    unlimited = await started(limit=2, auth_limit=None)
    msg = messages(recipients=rcpts(100), auth_user="alice")
    assert await unlimited.check(msg, unlimited.ctx) is CONTINUE


async def test_exempt_senders(messages: MessageFactory) -> None:
    flt = await started(limit=1, exempt_senders=["Lists@Example.com"])
    msg = messages(sender="lists@example.com", recipients=rcpts(5))
    assert await flt.check(msg, flt.ctx) is CONTINUE
    assert (await flt.check(messages(recipients=rcpts(5)), flt.ctx)).verdict is Verdict.REJECT


async def test_tempfail_action(messages: MessageFactory) -> None:
    flt = await started(limit=1, action="tempfail")
    decision = await flt.check(messages(recipients=rcpts(2)), flt.ctx)
    assert decision.verdict is Verdict.TEMPFAIL
    assert decision.reply() == "452 4.5.3 Too many recipients (2, at most 1 allowed)"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"limit": 0}, "limit must be a positive whole number"),
        ({"limit": "50"}, "limit must be a positive whole number"),
        ({"limit": True}, "limit must be a positive whole number"),
        ({"auth_limit": -1}, "auth_limit must be a positive whole number"),
        ({"exempt_senders": "a@example.com"}, "exempt_senders must be a list"),
        ({"exempt_senders": [1]}, "exempt_senders must hold strings"),
        ({"action": "drop"}, "action must be one of"),
    ],
)
async def test_bad_settings_stop_the_start(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(RecipientLimitConfigError, match=message):
        await started(**settings)


def test_entry_point_is_registered() -> None:
    eps = {ep.name: ep for ep in entry_points(group="courier_pyfilter.filters")}
    if "recipient_limit" not in eps:
        pytest.skip("package not installed (pip install -e .)")
    assert eps["recipient_limit"].load() is RecipientLimit
