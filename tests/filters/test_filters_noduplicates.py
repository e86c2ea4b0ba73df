"""``noduplicates`` removes repeated recipients, as the original, through the edit API."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from courier_pyfilter.decision import CONTINUE
from courier_pyfilter.edit import Editor
from courier_pyfilter.filters.noduplicates import NoDuplicates
from courier_pyfilter.message import Message
from courier_pyfilter.testing import make_context, make_message

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
NOW = 1795605936.5
LOGGER = "courier_pyfilter.filters.noduplicates"


def read(path: str) -> bytes:
    """The bytes of a message file (a plain function: the tests' async code calls it)."""
    return Path(path).read_bytes()


def fixed_clock(msg: Message) -> Message:
    """Give the message an editor with a known clock (the time written in S records)."""
    msg._edit = Editor(msg, fsync=False, clock=lambda: NOW)
    return msg


def sample(tmp_path: Path, data: str, *ctls: str) -> Message:
    dpath = tmp_path / "D1450318"
    shutil.copyfile(SAMPLES / data, dpath)
    paths = []
    for i, name in enumerate(ctls):
        path = tmp_path / f"C1450318.{i + 1}"
        shutil.copyfile(SAMPLES / name, path)
        paths.append(str(path))
    return fixed_clock(Message(str(dpath), paths))


def log_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER]


async def run(msg: Message) -> None:
    ctx = make_context("noduplicates")
    assert await NoDuplicates(ctx).check(msg, ctx) is CONTINUE


async def test_alias_duplicate_from_courier_sample(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Courier's own control file: postmaster@ aliased to mailtest@, which was also a
    # recipient with ORCPT and NOTIFY=SUCCESS,FAILURE
    msg = sample(tmp_path, "b-dsn-3rcpt-alias.data", "b-dsn-3rcpt-alias.ctl")
    data = read(msg.data_path)
    base = (SAMPLES / "b-dsn-3rcpt-alias.ctl").read_bytes()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        await run(msg)
    assert log_lines(caplog) == [
        'noduplicates filter: Removing duplicate address "mailtest@courier.test" from control file.'
    ]
    assert read(msg.control_paths[0]) == base + (
        b"I3 R 250 Ok - Duplicate address removed by noduplicates\nS3 1795605936\n"
    )
    # the first occurrence keeps its ORCPT and DSN flags
    assert [(r.address, r.original, r.notify) for r in msg.recipients] == [
        ("mailtest@courier.test", "orig-a@example.org", "SF"),
        ("mailtest2@courier.test", "", "N"),
        ("mailtest3@courier.test", "x+plus@y.example", "D"),
    ]
    assert read(msg.data_path) == data


async def test_every_later_copy_is_removed_and_case_matters(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    msg = fixed_clock(
        make_message(
            tmp_path,
            recipients=[
                "a@example.com",
                "b@example.com",
                ("a@example.com", "rfc822;x@example.com", "SF"),
                "A@example.com",
                "a@example.com",
                "b@example.com",
            ],
        )
    )
    before = read(msg.control_paths[0])
    with caplog.at_level(logging.INFO, logger=LOGGER):
        await run(msg)
    line = 'noduplicates filter: Removing duplicate address "%s" from control file.'
    assert log_lines(caplog) == [
        line % "a@example.com",
        line % "a@example.com",
        line % "b@example.com",
    ]
    reason = b"R 250 Ok - Duplicate address removed by noduplicates"
    assert read(msg.control_paths[0]) == before + (
        b"I2 " + reason + b"\nS2 1795605936\n"
        b"I4 " + reason + b"\nS4 1795605936\n"
        b"I5 " + reason + b"\nS5 1795605936\n"
    )
    assert msg.addresses == ("a@example.com", "b@example.com", "A@example.com")


async def test_duplicates_across_control_files(tmp_path: Path) -> None:
    msg = fixed_clock(
        make_message(
            tmp_path,
            recipients=["a@example.com", "b@example.com", "c@example.com", "a@example.com"],
            batch_size=2,
        )
    )
    first = read(msg.control_paths[0])
    second = read(msg.control_paths[1])
    await run(msg)
    assert read(msg.control_paths[0]) == first
    assert read(msg.control_paths[1]) == second + (
        b"I1 R 250 Ok - Duplicate address removed by noduplicates\nS1 1795605936\n"
    )
    assert msg.addresses == ("a@example.com", "b@example.com", "c@example.com")


async def test_delivered_recipients_do_not_count(tmp_path: Path) -> None:
    # recipient 0 is already done (as after an earlier filter removed it)
    msg = fixed_clock(
        make_message(
            tmp_path, recipients=["a@example.com", "a@example.com"], extra_records=["S0 1"]
        )
    )
    before = read(msg.control_paths[0])
    await run(msg)
    assert read(msg.control_paths[0]) == before
    assert msg.addresses == ("a@example.com",)


async def test_no_duplicates_no_change(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    msg = make_message(tmp_path, recipients=["a@example.com", "b@example.com"])
    before = read(msg.control_paths[0])
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        await run(msg)
    assert read(msg.control_paths[0]) == before
    assert log_lines(caplog) == []
    assert msg.edit.changes == []


async def test_dry_run_writes_nothing(tmp_path: Path) -> None:
    msg = make_message(tmp_path, recipients=["a@example.com", "a@example.com"], dry_run=True)
    before = read(msg.control_paths[0])
    await run(msg)
    assert read(msg.control_paths[0]) == before
    assert msg.addresses == ("a@example.com",)
    assert len(msg.edit.changes) == 1


# -- DKIM: the data file is never touched -------------------------------------------------

CLIENT_MESSAGE = (
    b"From: Alice <alice@example.com>\n"
    b"To: a@example.com,\n b@example.com\n"
    b"Subject: signed\n"
    b"Date: Wed, 25 Nov 2026 11:22:51 +0000\n"
    b"Message-ID: <signed.1@example.com>\n"
    b"\n"
    b"A body that is signed.\n"
)


async def test_dkim_signature_still_verifies(
    tmp_path: Path, dkim_pair: tuple[Callable[[bytes], bytes], Callable[[bytes], bool]]
) -> None:
    sign, verify = dkim_pair
    msg = make_message(
        tmp_path,
        recipients=["a@example.com", "b@example.com", "a@example.com"],
        raw=sign(CLIENT_MESSAGE),
    )
    before = read(msg.data_path)
    assert verify(before)
    await run(msg)
    assert msg.addresses == ("a@example.com", "b@example.com")
    after = read(msg.data_path)
    assert after == before
    assert verify(after)
    assert not verify(after.replace(b"signed.\n", b"signed!\n"))  # the check can fail
