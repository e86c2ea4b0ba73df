from __future__ import annotations

import asyncio
import os
import shutil
import time
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from courier_pyfilter import edit as edit_mod
from courier_pyfilter.edit import (
    EditError,
    Editor,
    format_header,
    header_name,
    split_headers,
)
from courier_pyfilter.message import Message

SAMPLES = Path(__file__).parent / "samples"
NOW = 1795605936.5


def copy_sample(tmp_path: Path, data: str, *ctls: str, dry_run: bool = False) -> Message:
    dpath = tmp_path / "D1450318"
    shutil.copyfile(SAMPLES / data, dpath)
    cpaths = []
    for i, name in enumerate(ctls):
        p = tmp_path / f"C1450318.{i + 1}"
        shutil.copyfile(SAMPLES / name, p)
        cpaths.append(str(p))
    msg = Message(str(dpath), cpaths, dry_run=dry_run)
    # a deterministic clock and no fsync for speed; same API as message.edit
    msg._edit = Editor(msg, dry_run=dry_run, fsync=False, clock=lambda: NOW)
    return msg


def read(path: str) -> bytes:
    return Path(path).read_bytes()


def write(path: str, data: bytes) -> None:
    Path(path).write_bytes(data)


def exists(path: str) -> bool:
    return os.path.exists(path)


A_PLAIN = (SAMPLES / "a-plain.data").read_bytes()
A_RECEIVED = (
    b"Received: from vm ([::ffff:127.0.0.1])\n"
    b"  by vm with ESMTP\n"
    b"  id 000000000016214E.000000006B06C47B.00001AE3; Wed, 25 Nov 2026 11:20:27 +0000\n"
)

DKIM = (
    b"DKIM-Signature: v=1; a=rsa-sha256; c=relaxed/relaxed; d=example.com;\n"
    b"\ts=sel; t=1700000000; bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=;\n"
    b"\th=From:To:Subject; b=dGVzdCBzaWduYXR1cmUgZGF0YQ==  \n"
)
DKIM_MSG = (
    A_RECEIVED
    + DKIM
    + b"From: Someone <someone@example.com>\n"
    + b"To:  b@example.net ,\n    c@example.net\n"
    + b"Subject:  =?utf-8?q?caf=C3=A9?=\n"
    + b"X-Trace: one\n"
    + b"x-trace: two\n"
    + b"\n"
    + b"Body line\n"
)


def dkim_message(tmp_path: Path) -> Message:
    msg = copy_sample(tmp_path, "a-plain.data", "a-plain.ctl")
    Path(msg.data_path).write_bytes(DKIM_MSG)
    return msg


# -- pure helpers -------------------------------------------------------------------------


def test_split_headers_folding() -> None:
    fields, rest = split_headers(DKIM_MSG)
    assert fields[0] == A_RECEIVED
    assert fields[1] == DKIM
    assert rest == b"\nBody line\n"
    assert [header_name(f) for f in fields] == [
        b"received",
        b"dkim-signature",
        b"from",
        b"to",
        b"subject",
        b"x-trace",
        b"x-trace",
    ]


def test_header_name_non_headers() -> None:
    assert header_name(b"From sender Tue\n") is None
    assert header_name(b": x\n") is None
    assert header_name(b"Subject : x\n") == b"subject"


@given(st.binary(max_size=300))
def test_split_headers_lossless(raw: bytes) -> None:
    fields, rest = split_headers(raw)
    assert b"".join(fields) + rest == raw


def test_format_header() -> None:
    assert format_header("X-A", "v") == b"X-A: v\n"
    assert format_header("X-A", "") == b"X-A:\n"
    assert format_header("X-A", "a\r\n\tb") == b"X-A: a\n\tb\n"
    assert format_header("X-A", b"\xff") == b"X-A: \xff\n"
    assert format_header("X-A", "café") == "X-A: café\n".encode()


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("", "v"),
        ("X A", "v"),
        ("X:A", "v"),
        ("Xé", "v"),
        ("X-A", "a\nInjected: 1"),
        ("X-A", "a\n\nbody"),
        ("X-A", "a\n \n"),
        ("X-A", "a\rb"),
        ("X-A", "a\x00"),
    ],
)
def test_format_header_rejects(name: str, value: str) -> None:
    with pytest.raises(EditError):
        format_header(name, value)


# -- header edits -------------------------------------------------------------------------


async def test_add_header_top_in_place(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "a-plain.data", "a-plain.ctl")
    ino = os.stat(msg.data_path).st_ino
    await msg.edit.add_header("X-Filtered", "yes")
    assert read(msg.data_path) == b"X-Filtered: yes\n" + A_PLAIN
    assert os.stat(msg.data_path).st_ino == ino
    assert await msg.raw() == read(msg.data_path)
    assert msg.edit.changes == ["add header at top: 'X-Filtered: yes\\n'"]


async def test_add_header_bottom(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "b-dsn-3rcpt-alias.data", "b-dsn-3rcpt-alias.ctl")
    await msg.edit.add_header("X-Last", "1", top=False)
    expected = (
        (SAMPLES / "b-dsn-3rcpt-alias.data")
        .read_bytes()
        .replace(b"smtp-send.test>\n\n", b"smtp-send.test>\nX-Last: 1\n\n")
    )
    assert read(msg.data_path) == expected


async def test_add_header_bottom_headers_only_message(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "a-plain.data", "a-plain.ctl")
    write(msg.data_path, b"Subject: x")
    await msg.edit.add_header("X-Last", "1", top=False)
    assert read(msg.data_path) == b"Subject: x\nX-Last: 1\n"


async def test_remove_folded_received_header(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "a-plain.data", "a-plain.ctl")
    ino = os.stat(msg.data_path).st_ino
    assert await msg.edit.remove_headers("received") == 1
    assert read(msg.data_path) == A_PLAIN[len(A_RECEIVED) :]
    assert os.stat(msg.data_path).st_ino == ino
    assert await msg.edit.remove_headers("Received") == 0
    assert len(msg.edit.changes) == 1


async def test_remove_headers_all_and_first_only(tmp_path: Path) -> None:
    msg = dkim_message(tmp_path)
    assert await msg.edit.remove_headers("X-TRACE", first_only=True) == 1
    assert b"X-Trace: one\n" not in read(msg.data_path)
    assert b"x-trace: two\n" in read(msg.data_path)
    assert await msg.edit.remove_headers("x-trace") == 1
    assert read(msg.data_path) == DKIM_MSG.replace(b"X-Trace: one\nx-trace: two\n", b"")


async def test_dkim_signed_headers_stay_byte_identical(tmp_path: Path) -> None:
    msg = dkim_message(tmp_path)
    await msg.edit.add_header("X-Spam-Score", "1.5")
    await msg.edit.add_header("X-Bottom", "b", top=False)
    await msg.edit.remove_headers("X-Trace")
    await msg.edit.remove_headers("Received")
    out = read(msg.data_path)
    untouched = (
        DKIM
        + b"From: Someone <someone@example.com>\n"
        + b"To:  b@example.net ,\n    c@example.net\n"
        + b"Subject:  =?utf-8?q?caf=C3=A9?=\n"
    )
    assert out == b"X-Spam-Score: 1.5\n" + untouched + b"X-Bottom: b\n\nBody line\n"


async def test_replace_header(tmp_path: Path) -> None:
    msg = dkim_message(tmp_path)
    assert await msg.edit.replace_header("x-trace", "three") is True
    out = read(msg.data_path)
    assert out == DKIM_MSG.replace(b"X-Trace: one\nx-trace: two\n", b"x-trace: three\n")
    assert await msg.edit.replace_header("X-New", "n") is False
    assert read(msg.data_path) == b"X-New: n\n" + out


async def test_replace_body_keeps_headers(tmp_path: Path) -> None:
    msg = dkim_message(tmp_path)
    await msg.edit.replace_body(b"new\r\nbody")
    head = DKIM_MSG[: DKIM_MSG.index(b"\n\n") + 1]
    assert read(msg.data_path) == head + b"\nnew\nbody\n"


async def test_replace_body_without_separator(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "a-plain.data", "a-plain.ctl")
    write(msg.data_path, b"Subject: x")
    await msg.edit.replace_body(b"b\n")
    assert read(msg.data_path) == b"Subject: x\n\nb\n"


async def test_replace_message_shorter_truncates(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "a-plain.data", "a-plain.ctl")
    ino = os.stat(msg.data_path).st_ino
    await msg.edit.replace_message(b"Subject: short\r\n\r\nx")
    assert read(msg.data_path) == b"Subject: short\n\nx\n"
    assert os.stat(msg.data_path).st_ino == ino
    assert msg.size == len(b"Subject: short\n\nx\n")
    assert (await msg.email())["Subject"] == "short"


async def test_replace_message_rejects_empty_and_str(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "a-plain.data", "a-plain.ctl")
    with pytest.raises(EditError):
        await msg.edit.replace_message(b"")
    with pytest.raises(EditError):
        await msg.edit.replace_message("x")  # type: ignore[arg-type]
    assert read(msg.data_path) == A_PLAIN


async def test_edit_of_missing_file_raises_edit_error(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "a-plain.data", "a-plain.ctl")
    os.unlink(msg.data_path)
    with pytest.raises(EditError):
        await msg.edit.add_header("X-A", "1")
    with pytest.raises(EditError):
        await msg.edit.replace_message(b"x\n")
    assert not exists(msg.data_path)


async def test_concurrent_edits_are_serialised(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "a-plain.data", "a-plain.ctl")
    await asyncio.gather(*(msg.edit.add_header(f"X-N{i}", str(i)) for i in range(10)))
    out = read(msg.data_path)
    for i in range(10):
        assert f"X-N{i}: {i}\n".encode() in out
    assert out.endswith(A_PLAIN)


async def test_cancelled_caller_does_not_leave_half_written_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    msg = copy_sample(tmp_path, "a-plain.data", "a-plain.ctl")
    real = edit_mod._rewrite_in_place

    def slow(path: str, data: bytes, sync: bool) -> None:
        time.sleep(0.2)
        real(path, data, sync)

    monkeypatch.setattr(edit_mod, "_rewrite_in_place", slow)
    task = asyncio.create_task(msg.edit.add_header("X-Slow", "1"))
    await asyncio.sleep(0.05)
    assert msg.edit.busy
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert read(msg.data_path) == A_PLAIN  # still being written
    await msg.drain_edits()
    assert not msg.edit.busy
    assert read(msg.data_path) == b"X-Slow: 1\n" + A_PLAIN
    assert await msg.raw() == b"X-Slow: 1\n" + A_PLAIN


# -- recipients ---------------------------------------------------------------------------


async def test_add_recipient_appends_to_last_control_file(tmp_path: Path) -> None:
    msg = copy_sample(
        tmp_path, "a-plain.data", "e-batchsize2-3rcpt.ctl1", "e-batchsize2-3rcpt.ctl2"
    )
    await msg.edit.add_recipient("new@courier.test", notify="F")
    assert read(msg.control_paths[0]) == (SAMPLES / "e-batchsize2-3rcpt.ctl1").read_bytes()
    assert read(msg.control_paths[1]) == (
        (SAMPLES / "e-batchsize2-3rcpt.ctl2").read_bytes() + b"rnew@courier.test\nR\nNF\n"
    )
    new = msg.recipients[-1]
    assert (new.address, new.notify, new.file_index, new.index) == ("new@courier.test", "F", 1, 1)
    assert len(msg.recipients) == 4


async def test_add_recipient_after_unterminated_last_line(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "a-plain.data", "a-plain.ctl")
    write(msg.control_paths[0], b"sa@b\nrx@y\nR\nN")
    await msg.edit.add_recipient("z@y")
    assert read(msg.control_paths[0]) == b"sa@b\nrx@y\nR\nN\nrz@y\nR\nN\n"
    assert msg.addresses == ("x@y", "z@y")


async def test_add_recipient_rejects_bad_address(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "a-plain.data", "a-plain.ctl")
    with pytest.raises(EditError):
        await msg.edit.add_recipient("a@x\nrinjected@y")
    with pytest.raises(EditError):
        await Message(msg.data_path, []).edit.add_recipient("a@x")
    assert read(msg.control_paths[0]) == (SAMPLES / "a-plain.ctl").read_bytes()


async def test_remove_recipient_by_address_and_object(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "b-dsn-3rcpt-alias.data", "b-dsn-3rcpt-alias.ctl")
    base = (SAMPLES / "b-dsn-3rcpt-alias.ctl").read_bytes()
    removed = await msg.edit.remove_recipient("mailtest@courier.test", reason="duplicate")
    assert (removed.index, removed.original) == (0, "orig-a@example.org")
    assert read(msg.control_paths[0]) == base + b"I0 R 250 Ok - duplicate\nS0 1795605936\n"
    # the alias copy of the same address is next
    second = msg.recipients[-1]
    assert second.index == 3
    await msg.edit.remove_recipient(second)
    assert read(msg.control_paths[0]).endswith(b"I3 R 250 Ok - Removed by filter\nS3 1795605936\n")
    assert msg.addresses == ("mailtest2@courier.test", "mailtest3@courier.test")
    with pytest.raises(EditError, match="already done"):
        await msg.edit.remove_recipient(second)
    with pytest.raises(EditError, match="no pending"):
        await msg.edit.remove_recipient("mailtest@courier.test")


async def test_remove_recipient_in_second_file(tmp_path: Path) -> None:
    msg = copy_sample(
        tmp_path, "a-plain.data", "e-batchsize2-3rcpt.ctl1", "e-batchsize2-3rcpt.ctl2"
    )
    await msg.edit.remove_recipient("mailtest3@courier.test")
    assert read(msg.control_paths[1]).endswith(
        b"\nI0 R 250 Ok - Removed by filter\nS0 1795605936\n"
    )
    assert read(msg.control_paths[0]) == (SAMPLES / "e-batchsize2-3rcpt.ctl1").read_bytes()
    assert msg.addresses == ("mailtest@courier.test", "mailtest2@courier.test")


async def test_clear_dsn_success(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "b-dsn-3rcpt-alias.data", "b-dsn-3rcpt-alias.ctl")
    base = (SAMPLES / "b-dsn-3rcpt-alias.ctl").read_bytes()
    first = msg.recipients[0]
    new = await msg.edit.clear_dsn_success(first)
    assert new is not None
    assert (new.address, new.original, new.notify, new.index) == (
        "mailtest@courier.test",
        "orig-a@example.org",
        "F",
        4,
    )
    assert read(msg.control_paths[0]) == base + (
        b"rmailtest@courier.test\nRorig-a@example.org\nNF\n"
        b"I0 R 250 Ok - success DSN suppressed\nS0 1795605936\n"
    )
    assert [r.notify for r in msg.recipients] == ["N", "D", "", "F"]
    # no S flag: nothing to do
    assert await msg.edit.clear_dsn_success("mailtest2@courier.test") is None
    assert len(msg.edit.changes) == 1


async def test_clear_dsn_success_only_s_becomes_default(tmp_path: Path) -> None:
    msg = copy_sample(
        tmp_path, "a-plain.data", "e-batchsize2-3rcpt.ctl1", "e-batchsize2-3rcpt.ctl2"
    )
    await msg.edit.add_recipient("s@courier.test", notify="S")
    with open(msg.control_paths[0], "ab") as fh:
        fh.write(b"rs0@courier.test\nR\nNS\n")
    msg.invalidate()
    new = await msg.edit.clear_dsn_success("s0@courier.test")
    assert new is not None and new.notify == "" and new.file_index == 1
    assert read(msg.control_paths[0]).endswith(
        b"I2 R 250 Ok - success DSN suppressed\nS2 1795605936\n"
    )
    assert read(msg.control_paths[1]).endswith(b"rs0@courier.test\nR\nN\n")
    assert "s0@courier.test" in msg.addresses


# -- dry run ------------------------------------------------------------------------------


async def test_dry_run_touches_nothing_but_shows_changes(tmp_path: Path) -> None:
    msg = copy_sample(
        tmp_path,
        "b-dsn-3rcpt-alias.data",
        "b-dsn-3rcpt-alias.ctl",
        dry_run=True,
    )
    before = {p: (read(p), os.stat(p).st_mtime_ns) for p in (msg.data_path, *msg.control_paths)}
    await msg.edit.add_header("X-Dry", "1")
    await msg.edit.remove_headers("Received")
    await msg.edit.add_recipient("new@courier.test")
    await msg.edit.remove_recipient("mailtest2@courier.test")
    await msg.edit.clear_dsn_success("mailtest@courier.test")
    await msg.edit.replace_body(b"dry body\n")
    after = {p: (read(p), os.stat(p).st_mtime_ns) for p in (msg.data_path, *msg.control_paths)}
    assert after == before
    assert len(msg.edit.changes) == 6
    raw = await msg.raw()
    assert raw.startswith(b"X-Dry: 1\nFrom: sender@example.com\n")
    assert raw.endswith(b"\n\ndry body\n")
    assert (await msg.email())["X-Dry"] == "1"
    assert msg.size == len(raw)
    assert msg.addresses == (
        "mailtest3@courier.test",
        "mailtest@courier.test",
        "new@courier.test",
        "mailtest@courier.test",
    )
    # invalidate keeps the in-memory edits
    msg.invalidate()
    assert await msg.raw() == raw
    assert "new@courier.test" in msg.addresses
