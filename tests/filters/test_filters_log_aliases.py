"""``log_aliases`` logs the original address of every pending recipient that has one."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from courier_pyfilter.decision import CONTINUE
from courier_pyfilter.filters.log_aliases import LogAliases, original_without_prefix
from courier_pyfilter.legacyconf import parse_modules_config
from courier_pyfilter.loader import build_chain
from courier_pyfilter.services import Services
from courier_pyfilter.settings import Settings
from courier_pyfilter.testing import make_context, make_message

LOGGER = "courier_pyfilter.filters.log_aliases"


def logged(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def test_logs_each_recipient_with_an_original(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    msg = make_message(
        tmp_path,
        recipients=[
            ("mailtest@courier.test", "rfc822;Orig-A@Example.org", "SF"),
            ("mailtest2@courier.test", "", "N"),  # no original: not logged
            ("mailtest3@courier.test", "x+plus@y.example", "D"),
            ("mailtest@courier.test", "postmaster@courier.test", ""),  # alias expansion
            ("same@courier.test", "RFC822;same@courier.test", ""),
        ],
    )
    ctx = make_context("log_aliases")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert await LogAliases(ctx).check(msg, ctx) is CONTINUE
    assert logged(caplog) == [
        "Message delivered to mailtest@courier.test was originally addressed to"
        " Orig-A@Example.org.",
        "Message delivered to mailtest3@courier.test was originally addressed to x+plus@y.example.",
        "Message delivered to mailtest@courier.test was originally addressed to"
        " postmaster@courier.test.",
        "Message delivered to same@courier.test was originally addressed to same@courier.test.",
    ]


async def test_delivered_recipients_are_skipped(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    msg = make_message(
        tmp_path,
        recipients=[
            ("a@courier.test", "alias1@courier.test", ""),
            ("b@courier.test", "alias2@courier.test", ""),
        ],
        extra_records=["S0 1700000000"],
    )
    ctx = make_context("log_aliases")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert await LogAliases(ctx).check(msg, ctx) is CONTINUE
    assert logged(caplog) == [
        "Message delivered to b@courier.test was originally addressed to alias2@courier.test."
    ]


async def test_several_control_files(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    rcpts = [(f"u{i}@courier.test", f"rfc822;o{i}@example.org", "") for i in range(3)]
    msg = make_message(tmp_path, recipients=rcpts, batch_size=2)
    assert len(msg.control_paths) == 2
    ctx = make_context("log_aliases")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        assert await LogAliases(ctx).check(msg, ctx) is CONTINUE
    assert logged(caplog) == [
        f"Message delivered to u{i}@courier.test was originally addressed to o{i}@example.org."
        for i in range(3)
    ]


async def test_nothing_logged_without_originals(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    msg = make_message(tmp_path, recipients=["a@courier.test", "b@courier.test"])
    ctx = make_context("log_aliases")
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        assert await LogAliases(ctx).check(msg, ctx) is CONTINUE
    assert logged(caplog) == []


def test_prefix_removal() -> None:
    assert original_without_prefix("rfc822;a@b") == "a@b"
    assert original_without_prefix("RFC822;a@b") == "a@b"
    assert original_without_prefix("a@b") == "a@b"
    assert original_without_prefix("x-rfc822;a@b") == "x-rfc822;a@b"


async def test_through_the_loader_and_chain(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    modules = parse_modules_config([("pythonfilter-modules.conf", "")])
    services = Services(Settings(state_dir=str(tmp_path / "state")), modules.section)
    chain = build_chain([("log_aliases", frozenset())], modules.section, services)
    await chain.start()
    msg = make_message(tmp_path, recipients=[("a@courier.test", "rfc822;list@courier.test", "")])
    try:
        with caplog.at_level(logging.INFO, logger=LOGGER):
            result = await chain.run(msg)
    finally:
        await chain.stop()
        await services.close()
    assert (result.deciding, result.decision.reply()) == (None, "200 Ok")
    assert logged(caplog) == [
        "Message delivered to a@courier.test was originally addressed to list@courier.test."
    ]
