"""The ``debug`` filter logs the process and file details and always continues."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import pytest

from courier_pyfilter.decision import CONTINUE
from courier_pyfilter.filters.debug import Debug
from courier_pyfilter.testing import make_context, make_message


async def test_debug_logs_and_continues(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    msg = make_message(tmp_path)
    ctx = make_context("debug")
    with caplog.at_level(logging.INFO):
        decision = await Debug(ctx).check(msg, ctx)
    assert decision is CONTINUE
    text = caplog.text
    assert f"PID {os.getpid()}" in text
    assert f"data file {msg.data_path}: os.stat_result(" in text
    for path in msg.control_paths:
        assert f"control file {path}: os.stat_result(" in text


async def test_debug_survives_missing_files(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    msg = make_message(tmp_path)
    os.unlink(msg.data_path)
    ctx = make_context("debug")
    with caplog.at_level(logging.INFO):
        assert await Debug(ctx).check(msg, ctx) is CONTINUE
    assert "cannot stat" in caplog.text
