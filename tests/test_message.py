from __future__ import annotations

import ipaddress
import shutil
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from courier_pyfilter.edit import Editor
from courier_pyfilter.message import Message, MessageError, split_header_block

SAMPLES = Path(__file__).parent / "samples"


def write(path: str, data: bytes) -> None:
    Path(path).write_bytes(data)


def file_size(path: str) -> int:
    return Path(path).stat().st_size


def copy_sample(tmp_path: Path, data: str, *ctls: str) -> Message:
    dpath = tmp_path / "D1"
    shutil.copyfile(SAMPLES / data, dpath)
    cpaths = []
    for i, name in enumerate(ctls):
        p = tmp_path / f"C1.{i + 1}"
        shutil.copyfile(SAMPLES / name, p)
        cpaths.append(str(p))
    return Message(str(dpath), cpaths)


def test_construction_reads_nothing(tmp_path: Path) -> None:
    msg = Message(str(tmp_path / "missing"), [str(tmp_path / "missing-ctl")])
    assert msg.data_path.endswith("missing")
    assert msg.control_paths == (str(tmp_path / "missing-ctl"),)
    with pytest.raises(MessageError, match="control file"):
        _ = msg.control
    with pytest.raises(MessageError, match="stat"):
        _ = msg.size


async def test_missing_data_file_raises_message_error(tmp_path: Path) -> None:
    msg = Message(str(tmp_path / "missing"), [])
    with pytest.raises(MessageError, match="data file"):
        await msg.raw()
    with pytest.raises(MessageError):
        await msg.email()


def test_control_properties(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "c-auth-plain.data", "c-auth-plain.ctl")
    assert msg.sender == "mailtest@courier.test"
    assert msg.auth_user == "mailtest"
    assert msg.client_ip == ipaddress.IPv4Address("127.0.0.1")
    assert msg.helo == "vm"
    assert msg.msgid == "0000000000162172.000000006B06C50B.00002592"
    assert msg.source == "authsmtp"
    assert msg.addresses == ("mailtest2@courier.test",)
    assert msg.recipients[0].address == "mailtest2@courier.test"
    assert msg.control is msg.control  # parsed once


def test_control_cached_until_invalidated(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "a-plain.data", "a-plain.ctl")
    before = msg.addresses
    assert before == ("mailtest@courier.test",)
    with open(msg.control_paths[0], "ab") as fh:
        fh.write(b"rother@courier.test\nR\nN\n")
    assert msg.addresses == before
    msg.invalidate()
    after: tuple[str, ...] = msg.addresses
    assert after == ("mailtest@courier.test", "other@courier.test")


def test_batch_control_files(tmp_path: Path) -> None:
    msg = copy_sample(
        tmp_path, "a-plain.data", "e-batchsize2-3rcpt.ctl1", "e-batchsize2-3rcpt.ctl2"
    )
    assert msg.addresses == (
        "mailtest@courier.test",
        "mailtest2@courier.test",
        "mailtest3@courier.test",
    )


def test_oversized_control_file(tmp_path: Path) -> None:
    ctl = tmp_path / "ctl"
    ctl.write_bytes(b"8\n" * 100)
    msg = Message(str(tmp_path / "D"), [str(ctl)], max_control_size=50)
    with pytest.raises(MessageError, match="too large"):
        _ = msg.control


async def test_raw_is_cached(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "a-plain.data", "a-plain.ctl")
    original = (SAMPLES / "a-plain.data").read_bytes()
    assert await msg.raw() == original
    assert msg.size == len(original)
    write(msg.data_path, b"Subject: other\n\nx\n")
    assert await msg.raw() == original
    msg.invalidate()
    assert await msg.raw() == b"Subject: other\n\nx\n"
    assert msg.size == len(b"Subject: other\n\nx\n")


async def test_size_without_reading(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "b-dsn-3rcpt-alias.data", "b-dsn-3rcpt-alias.ctl")
    assert msg.size == 432


async def test_headers_only(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "b-dsn-3rcpt-alias.data", "b-dsn-3rcpt-alias.ctl")
    hdrs = await msg.headers()
    assert hdrs["Subject"] == "dsn 3 rcpts"
    assert len(hdrs.get_all("Received") or []) == 1
    assert "postmaster@courier.test" in str(hdrs["To"])
    assert hdrs.get_payload() == ""
    assert await msg.headers() is hdrs


async def test_email_full_parse(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "f-8bitmime.data", "f-8bitmime.ctl")
    parsed = await msg.email()
    assert parsed["Subject"] == "8bit"
    assert parsed.get_payload(decode=True) == "héllo wörld 8bit body\n".encode()
    assert await msg.email() is parsed


async def test_smtputf8_headers(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "g-smtputf8.data", "g-smtputf8.ctl")
    assert msg.sender == "sénder@example.com"
    assert (await msg.email())["From"] == "sénder@example.com"


async def test_malformed_mime_records_defects(tmp_path: Path) -> None:
    data = tmp_path / "D"
    data.write_bytes(
        b'From: <<<@@@\nContent-Type: multipart/mixed; boundary="b"\n'
        b"Subject: =?utf-8?q?\xff?=\n\n--b\nContent-Type: text/plain\n\nhi\n"
    )
    msg = Message(str(data), [])
    parsed = await msg.email()
    assert parsed.defects
    assert [p.get_content_type() for p in parsed.walk()] == ["multipart/mixed", "text/plain"]


@given(st.binary(max_size=500))
async def test_email_never_raises_on_garbage(data: bytes) -> None:
    import os
    import tempfile

    fd, path = tempfile.mkstemp()
    try:
        os.write(fd, data)
        os.close(fd)
        msg = Message(path, [])
        parsed = await msg.email()
        assert parsed is not None
        await msg.headers()
    finally:
        os.unlink(path)


async def test_large_message_parsed(tmp_path: Path) -> None:
    body = b"line of text\n" * 40000
    data = tmp_path / "D"
    data.write_bytes(b"Subject: big\n\n" + body)
    msg = Message(str(data), [])
    parsed = await msg.email()
    assert parsed["Subject"] == "big"
    assert parsed.get_payload(decode=True) == body


async def test_drain_edits_without_editor(tmp_path: Path) -> None:
    msg = Message(str(tmp_path / "D"), [])
    await msg.drain_edits()
    assert msg._edit is None


def test_edit_is_lazy_and_shared(tmp_path: Path) -> None:
    msg = Message(str(tmp_path / "D"), [])
    ed = msg.edit
    assert isinstance(ed, Editor)
    assert msg.edit is ed
    assert ed.dry_run is False
    assert Message("x", [], dry_run=True).edit.dry_run is True


async def test_views_follow_edits(tmp_path: Path) -> None:
    msg = copy_sample(tmp_path, "a-plain.data", "a-plain.ctl")
    assert (await msg.headers())["X-New"] is None
    assert (await msg.email())["X-New"] is None
    await msg.edit.add_header("X-New", "yes")
    assert (await msg.headers())["X-New"] == "yes"
    assert (await msg.email())["X-New"] == "yes"
    assert msg.size == file_size(msg.data_path)


@pytest.mark.parametrize(
    ("raw", "head", "rest"),
    [
        (b"A: 1\nB: 2\n\nbody\n", b"A: 1\nB: 2\n", b"\nbody\n"),
        (b"A: 1\n", b"A: 1\n", b""),
        (b"\nbody", b"", b"\nbody"),
        (b"A: 1\r\n\r\nbody", b"A: 1\r\n", b"\r\nbody"),
        (b"", b"", b""),
    ],
)
def test_split_header_block(raw: bytes, head: bytes, rest: bytes) -> None:
    assert split_header_block(raw) == (head, rest)


@given(st.binary(max_size=200))
def test_split_header_block_lossless(raw: bytes) -> None:
    head, rest = split_header_block(raw)
    assert head + rest == raw
    assert b"\n\n" not in head
