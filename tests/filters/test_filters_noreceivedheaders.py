"""``noreceivedheaders`` removes Courier's Received header of authenticated mail."""

from __future__ import annotations

import logging
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from courier_pyfilter.decision import CONTINUE
from courier_pyfilter.edit import split_headers
from courier_pyfilter.filters.noreceivedheaders import (
    NoReceivedHeaders,
    is_courier_auth_received,
)
from courier_pyfilter.message import Message
from courier_pyfilter.testing import make_context, make_message

SAMPLES = Path(__file__).resolve().parent.parent / "samples"
LOGGER = "courier_pyfilter.filters.noreceivedheaders"

CLIENT_MESSAGE = (
    b"Received: from [10.0.0.5] (laptop.lan [10.0.0.5])\n"
    b"\tby client-relay.example.com with ESMTP; Wed, 25 Nov 2026 11:22:50 +0000\n"
    b"From: Alice <alice@example.com>\n"
    b"To: Bob <b@example.net>,\n"
    b"    Carol <c@example.net>\n"
    b"Subject:  =?utf-8?q?caf=C3=A9?=  \n"
    b"Date: Wed, 25 Nov 2026 11:22:51 +0000\n"
    b"Message-ID: <signed.3@example.com>\n"
    b"X-Trace: one\n"
    b"\n"
    b"Body line\n"
)


def read(path: str) -> bytes:
    """The bytes of a message file (a plain function: the tests' async code calls it)."""
    return Path(path).read_bytes()


def write(path: str, data: bytes) -> None:
    Path(path).write_bytes(data)


async def run(msg: Message, **settings: object) -> None:
    ctx = make_context("noreceivedheaders", settings, defaults=NoReceivedHeaders.defaults)
    flt = NoReceivedHeaders(ctx)
    await flt.start()
    assert await flt.check(msg, ctx) is CONTINUE


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


async def test_removes_only_courier_header(tmp_path: Path) -> None:
    msg = make_message(tmp_path, auth_user="alice", raw=CLIENT_MESSAGE)
    before = read(msg.data_path)
    fields, _ = split_headers(before)
    top = fields[0]
    assert top.startswith(b"Received: from mail.example.com ([::ffff:192.0.2.1])\n")
    assert b"  (AUTH: PLAIN alice)\n" in top
    await run(msg)
    # exactly the top field is gone; the client's own Received and all else unchanged
    assert read(msg.data_path) == before[len(top) :] == CLIENT_MESSAGE
    assert msg.edit.changes == ["remove 1 'Received' header(s)"]


async def test_courier_sample(tmp_path: Path) -> None:
    # the data file Courier wrote for an authenticated submission (user "mailtest")
    data = tmp_path / "D1"
    shutil.copyfile(SAMPLES / "c-auth-plain.data", data)
    ctl = tmp_path / "C1"
    shutil.copyfile(SAMPLES / "c-auth-plain.ctl", ctl)
    msg = Message(str(data), [str(ctl)])
    original = (SAMPLES / "c-auth-plain.data").read_bytes()
    await run(msg)
    assert data.read_bytes() == original.split(b"\n", 4)[4]
    assert data.read_bytes().startswith(b"Date: Wed, 25 Nov 2026 11:22:51 +0000\n")
    assert ctl.read_bytes() == (SAMPLES / "c-auth-plain.ctl").read_bytes()


async def test_remove_all_restores_the_original_behaviour(tmp_path: Path) -> None:
    msg = make_message(tmp_path, auth_user="alice", raw=CLIENT_MESSAGE)
    await run(msg, remove_all=True)
    assert read(msg.data_path) == CLIENT_MESSAGE.split(b"\n", 2)[2]


async def test_unauthenticated_mail_is_untouched(tmp_path: Path) -> None:
    msg = make_message(tmp_path, raw=CLIENT_MESSAGE)
    before = read(msg.data_path)
    await run(msg)
    await run(msg, remove_all=True)
    assert read(msg.data_path) == before
    assert msg.edit.changes == []


async def test_empty_auth_user_counts_as_authenticated(tmp_path: Path) -> None:
    msg = make_message(tmp_path, auth_user="", raw=CLIENT_MESSAGE)
    assert msg.auth_user == ""
    await run(msg)
    assert read(msg.data_path) == CLIENT_MESSAGE


async def test_foreign_top_header_is_kept(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    # no Courier header on top (received=False): the client's header must stay
    msg = make_message(tmp_path, auth_user="alice", raw=CLIENT_MESSAGE, received=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await run(msg)
    assert read(msg.data_path) == CLIENT_MESSAGE
    assert warnings(caplog) == [
        f"noreceivedheaders filter: the top Received header of message {msg.msgid} is not "
        "Courier's header for the authenticated user 'alice'; nothing removed"
    ]


async def test_header_for_another_user_is_kept(tmp_path: Path) -> None:
    msg = make_message(tmp_path, auth_user="alice", raw=CLIENT_MESSAGE)
    before = read(msg.data_path)
    forged = before.replace(b"(AUTH: PLAIN alice)", b"(AUTH: PLAIN mallory)")
    write(msg.data_path, forged)
    msg.invalidate()
    await run(msg)
    assert read(msg.data_path) == forged


async def test_no_received_header(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = b"From: a@example.com\nSubject: x\n\nbody\n"
    msg = make_message(tmp_path, auth_user="alice", raw=raw, received=False)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await run(msg)
    assert read(msg.data_path) == raw
    assert warnings(caplog) == [
        f"noreceivedheaders filter: message {msg.msgid} has no Received header; nothing removed"
    ]


async def test_header_below_another_filter_header(tmp_path: Path) -> None:
    # an earlier filter added a header on top: Courier's is still the top Received
    msg = make_message(tmp_path, auth_user="alice", raw=CLIENT_MESSAGE)
    await msg.edit.add_header("X-Filtered", "yes")
    await run(msg)
    assert read(msg.data_path) == b"X-Filtered: yes\n" + CLIENT_MESSAGE


async def test_bad_setting_fails_start() -> None:
    ctx = make_context("noreceivedheaders", {"remove_all": "yes"})
    with pytest.raises(ValueError, match="remove_all must be True or False"):
        await NoReceivedHeaders(ctx).start()


@pytest.mark.parametrize(
    ("field", "user", "expected"),
    [
        (b"Received: from a\n  (AUTH: PLAIN alice)\n  by b with ESMTPA\n", "alice", True),
        (b"received: from a (AUTH: LOGIN alice@example.com) by b\n", "alice@example.com", True),
        (b"Received: from a\n  (AUTH: PLAIN alice)\n", "alic", False),
        (b"Received: from a\n  (AUTH: PLAIN xalice)\n", "alice", False),
        (b"Received: from a\n  by b with ESMTP\n", "alice", False),
        (b"X-Received: from a\n  (AUTH: PLAIN alice)\n", "alice", False),
        (b"Received: from a\n  (AUTH: PLAIN )\n", "", True),
        (b"Received: from a\n  (AUTH: PLAIN)\n", "", True),
        (b"Received: from a\n  (AUTH: PLAIN b\xc3\xa9a)\n", "b\u00e9a", True),
    ],
)
def test_recognising_courier_header(field: bytes, user: str, expected: bool) -> None:
    assert is_courier_auth_received(field, user) is expected


# -- DKIM: other headers stay byte-identical -------------------------------------------------


@pytest.mark.parametrize("remove_all", [False, True])
async def test_dkim_signature_survives(
    tmp_path: Path,
    dkim_pair: tuple[Callable[[bytes], bytes], Callable[[bytes], bool]],
    remove_all: bool,
) -> None:
    sign, verify = dkim_pair
    signed = sign(CLIENT_MESSAGE, [b"from", b"to", b"subject", b"date", b"message-id", b"x-trace"])
    msg = make_message(tmp_path, auth_user="alice", raw=signed)
    before = read(msg.data_path)
    assert verify(before)
    await run(msg, remove_all=remove_all)
    after = read(msg.data_path)
    fields_before, body_before = split_headers(before)
    fields_after, body_after = split_headers(after)
    removed = fields_before[:1] if not remove_all else [fields_before[0], fields_before[2]]
    assert [f for f in fields_before if f not in removed] == fields_after
    assert body_after == body_before
    assert verify(after)
