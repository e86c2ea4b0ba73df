"""``whitelist_auth`` accepts authenticated senders only."""

from __future__ import annotations

from pathlib import Path

from courier_pyfilter.decision import CONTINUE, Verdict
from courier_pyfilter.filters.whitelist_auth import WhitelistAuth
from courier_pyfilter.testing import make_context, make_message


async def test_authenticated_sender_is_accepted(tmp_path: Path) -> None:
    ctx = make_context("whitelist_auth")
    decision = await WhitelistAuth(ctx).check(make_message(tmp_path, auth_user="mailtest"), ctx)
    assert decision.verdict is Verdict.ACCEPT
    assert decision.reply() == "200 Ok"


async def test_unauthenticated_sender_continues(tmp_path: Path) -> None:
    ctx = make_context("whitelist_auth")
    assert await WhitelistAuth(ctx).check(make_message(tmp_path), ctx) is CONTINUE


async def test_empty_auth_user_continues(tmp_path: Path) -> None:
    ctx = make_context("whitelist_auth")
    msg = make_message(tmp_path, extra_records=["i"])
    assert await WhitelistAuth(ctx).check(msg, ctx) is CONTINUE


def test_whitelist_auth_is_a_whitelist() -> None:
    assert WhitelistAuth.whitelist is True
