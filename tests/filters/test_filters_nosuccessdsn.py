"""``nosuccessdsn`` drops NOTIFY=SUCCESS through ``clear_dsn_success``."""

from __future__ import annotations

import logging
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from courier_pyfilter.decision import CONTINUE
from courier_pyfilter.edit import Editor
from courier_pyfilter.filters.nosuccessdsn import NoSuccessDsn
from courier_pyfilter.message import Message
from courier_pyfilter.testing import make_context, make_message

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
NOW = 1795605936.5
LOGGER = "courier_pyfilter.filters.nosuccessdsn"


def read(path: str) -> bytes:
    """The bytes of a message file (a plain function: the tests' async code calls it)."""
    return Path(path).read_bytes()


def fixed_clock(msg: Message) -> Message:
    msg._edit = Editor(msg, fsync=False, clock=lambda: NOW)
    return msg


async def run(msg: Message) -> None:
    ctx = make_context("nosuccessdsn")
    assert await NoSuccessDsn(ctx).check(msg, ctx) is CONTINUE


async def test_courier_sample(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # Courier's control file of a message with RCPT TO ... NOTIFY=SUCCESS,FAILURE
    # ORCPT=rfc822;orig-a@example.org (and NEVER, DELAY and default for the others)
    dpath = tmp_path / "D1"
    shutil.copyfile(SAMPLES / "b-dsn-3rcpt-alias.data", dpath)
    cpath = tmp_path / "C1"
    shutil.copyfile(SAMPLES / "b-dsn-3rcpt-alias.ctl", cpath)
    msg = fixed_clock(Message(str(dpath), [str(cpath)]))
    base = cpath.read_bytes()
    data = dpath.read_bytes()
    with caplog.at_level(logging.INFO, logger=LOGGER):
        await run(msg)
    assert cpath.read_bytes() == base + (
        b"rmailtest@courier.test\nRorig-a@example.org\nNF\n"
        b"I0 R 250 Ok - success DSN suppressed\nS0 1795605936\n"
    )
    assert [(r.address, r.original, r.notify) for r in msg.recipients] == [
        ("mailtest2@courier.test", "", "N"),
        ("mailtest3@courier.test", "x+plus@y.example", "D"),
        ("mailtest@courier.test", "postmaster@courier.test", ""),
        ("mailtest@courier.test", "orig-a@example.org", "F"),
    ]
    assert dpath.read_bytes() == data
    assert [r for r in caplog.records if r.name == LOGGER] == []  # silent, as the original


async def test_every_success_request_is_cleared(tmp_path: Path) -> None:
    msg = fixed_clock(
        make_message(
            tmp_path,
            recipients=[
                ("s@example.com", "", "S"),
                ("n@example.com", "", "N"),
                ("sd@example.com", "rfc822;orig@example.com", "SD"),
                ("plain@example.com", "", ""),
                ("sfd@example.com", "", "SFD"),
            ],
        )
    )
    before = read(msg.control_paths[0])
    await run(msg)
    reason = b"R 250 Ok - success DSN suppressed"
    assert read(msg.control_paths[0]) == before + (
        b"rs@example.com\nR\nN\nI0 " + reason + b"\nS0 1795605936\n"
        b"rsd@example.com\nRrfc822;orig@example.com\nND\nI2 " + reason + b"\nS2 1795605936\n"
        b"rsfd@example.com\nR\nNFD\nI4 " + reason + b"\nS4 1795605936\n"
    )
    assert [(r.address, r.notify) for r in msg.recipients] == [
        ("n@example.com", "N"),
        ("plain@example.com", ""),
        ("s@example.com", ""),
        ("sd@example.com", "D"),
        ("sfd@example.com", "FD"),
    ]
    assert not any(r.wants_success_dsn for r in msg.recipients)


async def test_retired_recipients_are_never_reported_by_courier(tmp_path: Path) -> None:
    # Courier (libs/comdsn2.c, dsn_sender) reports a success only when the S record
    # carries an "l" (local) or "r" (relayed) flag after the time: the record written
    # for the retired original has none.
    msg = fixed_clock(make_message(tmp_path, recipients=[("s@example.com", "", "SF")]))
    await run(msg)
    lines = read(msg.control_paths[0]).decode().splitlines()
    success = [line for line in lines if line.startswith("S")]
    assert success == ["S0 1795605936"]
    assert all(re.fullmatch(r"S\d+ \d+", line) for line in success)


async def test_recipient_in_an_earlier_control_file(tmp_path: Path) -> None:
    msg = fixed_clock(
        make_message(
            tmp_path,
            recipients=[("a@example.com", "", "SF"), "b@example.com", "c@example.com"],
            batch_size=2,
        )
    )
    first = read(msg.control_paths[0])
    second = read(msg.control_paths[1])
    await run(msg)
    # the copy goes to the last file, the original is retired in its own file
    assert read(msg.control_paths[1]) == second + b"ra@example.com\nR\nNF\n"
    assert read(msg.control_paths[0]) == first + (
        b"I0 R 250 Ok - success DSN suppressed\nS0 1795605936\n"
    )
    assert msg.addresses == ("b@example.com", "c@example.com", "a@example.com")


async def test_nothing_to_do(tmp_path: Path) -> None:
    msg = make_message(tmp_path, recipients=[("a@example.com", "", "F"), "b@example.com"])
    before = read(msg.control_paths[0])
    await run(msg)
    assert read(msg.control_paths[0]) == before
    assert msg.edit.changes == []


async def test_debug_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    msg = make_message(tmp_path, recipients=[("a@example.com", "", "SF")])
    with caplog.at_level(logging.DEBUG, logger=LOGGER):
        await run(msg)
    assert [r.getMessage() for r in caplog.records if r.name == LOGGER] == [
        "nosuccessdsn filter: success DSN of a@example.com cleared (NOTIFY 'SF' -> 'F')"
    ]


# -- DKIM: the data file is never touched -------------------------------------------------

CLIENT_MESSAGE = (
    b"From: Alice <alice@example.com>\n"
    b"To: a@example.com\n"
    b"Subject: signed\n"
    b"Date: Wed, 25 Nov 2026 11:22:51 +0000\n"
    b"Message-ID: <signed.2@example.com>\n"
    b"\n"
    b"A body that is signed.\n"
)


async def test_dkim_signature_still_verifies(
    tmp_path: Path, dkim_pair: tuple[Callable[[bytes], bytes], Callable[[bytes], bool]]
) -> None:
    sign, verify = dkim_pair
    msg = make_message(tmp_path, recipients=[("a@example.com", "", "SF")], raw=sign(CLIENT_MESSAGE))
    before = read(msg.data_path)
    assert verify(before)
    await run(msg)
    assert [r.notify for r in msg.recipients] == ["F"]
    after = read(msg.data_path)
    assert after == before
    assert verify(after)
    assert not verify(after.replace(b"Subject: signed", b"Subject: signed!"))
