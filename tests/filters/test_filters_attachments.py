"""``attachments`` refuses forbidden attachment names, also inside archives."""

from __future__ import annotations

import asyncio
import base64
import gzip
import io
import logging
import struct
import tarfile
import threading
import time
import zipfile
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.chain import Chain
from courier_pyfilter.decision import CONTINUE, Decision, Verdict
from courier_pyfilter.filters import attachments
from courier_pyfilter.filters.attachments import (
    BLOCKED_REPLY,
    DEFAULT_PATTERN,
    UNREADABLE_REPLY,
    Attachments,
    unparseable_reply,
)
from courier_pyfilter.legacyconf import parse_chain_config, parse_modules_config
from courier_pyfilter.loader import build_chain
from courier_pyfilter.message import Message
from courier_pyfilter.services import Services
from courier_pyfilter.settings import Settings
from courier_pyfilter.testing import make_context, make_message

BLOCKED = "554 The extension of the attached file is blacklisted"
LOGGER = "courier_pyfilter.filters.attachments"


# -- helpers --------------------------------------------------------------------------------


async def run(tmp_path: Path, raw: bytes, **settings: Any) -> Decision:
    ctx = make_context("attachments", settings, defaults=Attachments.defaults)
    flt = Attachments(ctx)
    await flt.start()
    return await flt.check(make_message(tmp_path, raw=raw), ctx)


def mail(*files: tuple[str, bytes]) -> bytes:
    msg = EmailMessage()
    msg["From"] = "a@example.com"
    msg["To"] = "b@example.net"
    msg["Subject"] = "files"
    msg.set_content("see attached\n")
    for name, data in files:
        msg.add_attachment(data, maintype="application", subtype="octet-stream", filename=name)
    return msg.as_bytes()


def multipart(*parts: bytes) -> bytes:
    body = b"".join(b"--XYZ\n" + p + b"\n" for p in parts)
    return (
        b"From: a@example.com\nSubject: t\nMIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="XYZ"\n\n--XYZ\n'
        b"Content-Type: text/plain\n\nhello\n" + body + b"--XYZ--\n"
    )


def make_zip(*members: tuple[str, bytes], extra: bytes = b"") -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.extra = extra
            zf.writestr(info, data)
    return buf.getvalue()


def make_tgz(*members: tuple[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def set_encrypted(data: bytes) -> bytes:
    out = bytearray(data)
    for sig, at in ((b"PK\x03\x04", 6), (b"PK\x01\x02", 8)):
        pos = out.find(sig)
        while pos >= 0:
            out[pos + at] |= 1
            pos = out.find(sig, pos + 4)
    return bytes(out)


def is_blocked(decision: Decision) -> bool:
    return decision.verdict is Verdict.REJECT and decision.reply() == BLOCKED


# -- the original's behaviour ---------------------------------------------------------------


def test_defaults_are_the_originals() -> None:
    assert Attachments.defaults["blocked_pattern"] == DEFAULT_PATTERN
    assert DEFAULT_PATTERN == (
        r"^.*\.(scr|exe|com|bat|pif|lnk|sys|mid|vb|js|ws|shs|ceo|cmd|cpl|hta|vbs)$"
    )
    assert Decision.reject(BLOCKED_REPLY).reply() == BLOCKED
    assert Attachments.whitelist is False


async def test_clean_message_continues(tmp_path: Path) -> None:
    assert await run(tmp_path, mail(("report.pdf", b"%PDF-1.4\n"))) is CONTINUE


async def test_message_without_mime_continues(tmp_path: Path) -> None:
    assert await run(tmp_path, b"Subject: hi\n\nplain text\n") is CONTINUE


@pytest.mark.parametrize(
    "name", ["evil.exe", "EVIL.EXE", "x.Scr", "a.b.vbs", "script.js", "dir/x.bat", "x.mid"]
)
async def test_blocked_filename(tmp_path: Path, name: str) -> None:
    assert is_blocked(await run(tmp_path, mail(("ok.txt", b"x"), (name, b"MZ"))))


@pytest.mark.parametrize("name", ["evil.exe.txt", "exe", "notes.json", "x.jsx", "x.com.pdf"])
async def test_allowed_filename(tmp_path: Path, name: str) -> None:
    assert await run(tmp_path, mail((name, b"x"))) is CONTINUE


async def test_name_only_on_content_type(tmp_path: Path) -> None:
    raw = multipart(b'Content-Type: application/octet-stream; name="setup.exe"\n\nMZ')
    assert is_blocked(await run(tmp_path, raw))


async def test_non_multipart_message_with_name(tmp_path: Path) -> None:
    raw = (
        b"From: a@example.com\nMIME-Version: 1.0\n"
        b'Content-Type: application/octet-stream; name="invoice.pif"\n'
        b"Content-Transfer-Encoding: base64\n\nTVo=\n"
    )
    assert is_blocked(await run(tmp_path, raw))


async def test_rfc2231_continuations_with_charset(tmp_path: Path) -> None:
    raw = multipart(
        b"Content-Type: application/octet-stream\n"
        b"Content-Disposition: attachment;\n"
        b" filename*0*=utf-8''%C3%A9v%69l;\n"
        b' filename*1=".e";\n'
        b' filename*2="xe"\n\nMZ'
    )
    assert is_blocked(await run(tmp_path, raw))
    harmless = raw.replace(b'"xe"', b'"xt"')
    assert await run(tmp_path, harmless) is CONTINUE


async def test_rfc2231_encoded_extension(tmp_path: Path) -> None:
    raw = multipart(b"Content-Disposition: attachment; filename*=iso-8859-1'en'x%2E%65xe\n\nMZ")
    assert is_blocked(await run(tmp_path, raw))


@pytest.mark.parametrize(
    "param",
    [
        b'name="=?utf-8?B?ZXZpbC5leGU=?="',
        b"name==?utf-8?Q?evil=2Eexe?=",
        b'name="=?iso-8859-1?Q?=E9vil?= =?us-ascii?Q?=2Ecmd?="',
    ],
)
async def test_rfc2047_encoded_names(tmp_path: Path, param: bytes) -> None:
    raw = multipart(b"Content-Type: application/octet-stream; " + param + b"\n\nMZ")
    assert is_blocked(await run(tmp_path, raw))


async def test_comment_in_parameter(tmp_path: Path) -> None:
    raw = multipart(b'Content-Disposition: attachment; filename=(x)"evil.exe"\n\nx')
    assert is_blocked(await run(tmp_path, raw))


async def test_filename_and_name_are_both_tested(tmp_path: Path) -> None:
    raw = multipart(
        b'Content-Type: application/octet-stream; name="evil.exe"\n'
        b'Content-Disposition: attachment; filename="harmless.txt"\n\nMZ'
    )
    assert is_blocked(await run(tmp_path, raw))


async def test_duplicated_parameter_and_header(tmp_path: Path) -> None:
    dup_param = multipart(
        b'Content-Disposition: attachment; filename="a.txt"; filename="b.exe"\n\nx'
    )
    dup_header = multipart(
        b'Content-Disposition: attachment; filename="a.txt"\n'
        b'Content-Disposition: attachment; filename="b.exe"\n\nx'
    )
    assert is_blocked(await run(tmp_path, dup_param))
    assert is_blocked(await run(tmp_path, dup_header))


async def test_windows_trailing_dot_and_space(tmp_path: Path) -> None:
    raw = multipart(b"Content-Disposition: attachment; filename*=utf-8''evil.exe. %20\n\nx")
    assert is_blocked(await run(tmp_path, raw))


async def test_nested_rfc822_message(tmp_path: Path) -> None:
    inner = mail(("payload.scr", b"MZ"))
    raw = multipart(b"Content-Type: message/rfc822\n\n" + inner)
    assert is_blocked(await run(tmp_path, raw))
    assert await run(tmp_path, multipart(b"Content-Type: message/rfc822\n\n" + mail())) is CONTINUE


async def test_base64_encoded_rfc822_message(tmp_path: Path) -> None:
    inner = mail(("payload.scr", b"MZ"))
    raw = multipart(
        b"Content-Type: message/rfc822\nContent-Transfer-Encoding: base64\n\n"
        + base64.encodebytes(inner)
    )
    assert is_blocked(await run(tmp_path, raw))


async def test_match_semantics_anchor_at_start(tmp_path: Path) -> None:
    # re.match: "exe" would be found by search() but does not match at the start
    assert await run(tmp_path, mail(("evil.exe", b"x")), blocked_pattern="exe") is CONTINUE
    assert is_blocked(await run(tmp_path, mail(("evil.exe", b"x")), blocked_pattern="EVIL"))


async def test_trailing_newline_matches_dollar(tmp_path: Path) -> None:
    # Python's "$" also matches before a final newline, as in the original
    raw = mail(("files.zip", make_zip(("evil.exe\n", b"MZ"))))
    assert is_blocked(await run(tmp_path, raw))
    assert await run(tmp_path, raw, blocked_pattern=r"^.*\.exe\Z") is CONTINUE
    mime = multipart(b"Content-Disposition: attachment; filename*=utf-8''evil.exe%0A\n\nx")
    assert is_blocked(await run(tmp_path, mime, blocked_pattern=r"^.*\.exe\Z"))  # stripped form


# -- archives -------------------------------------------------------------------------------


async def test_zip_member(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = mail(("docs.zip", make_zip(("readme.txt", b"x"), ("bin/tool.exe", b"MZ"))))
    with caplog.at_level(logging.INFO, LOGGER):
        assert is_blocked(await run(tmp_path, raw))
    assert "blocked attachment name 'bin/tool.exe' in archive 'docs.zip'" in caplog.text


async def test_harmless_zip_continues(tmp_path: Path) -> None:
    raw = mail(("docs.zip", make_zip(("readme.txt", b"x"), ("a.pdf", b"%PDF"))))
    assert await run(tmp_path, raw) is CONTINUE


async def test_zip_in_zip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    inner = make_zip(("evil.cmd", b"@echo"))
    raw = mail(("outer.zip", make_zip(("x.txt", b"x"), ("inner.zip", inner))))
    with caplog.at_level(logging.INFO, LOGGER):
        assert is_blocked(await run(tmp_path, raw))
    assert "'evil.cmd' in archive 'outer.zip' > 'inner.zip'" in caplog.text


async def test_archive_detected_by_content_not_name(tmp_path: Path) -> None:
    raw = mail(("photo.jpg", make_zip(("evil.exe", b"MZ"))))
    assert is_blocked(await run(tmp_path, raw))


async def test_tar_gz(tmp_path: Path) -> None:
    raw = mail(("src.tar.gz", make_tgz(("src/main.c", b"int"), ("src/run.bat", b"x"))))
    assert is_blocked(await run(tmp_path, raw))
    clean = mail(("src.tgz", make_tgz(("src/main.c", b"int"))))
    assert await run(tmp_path, clean) is CONTINUE


async def test_gzip_original_name(tmp_path: Path) -> None:
    buf = io.BytesIO()
    with gzip.GzipFile(filename="invoice.exe", mode="wb", fileobj=buf) as gz:
        gz.write(b"MZ")
    assert is_blocked(await run(tmp_path, mail(("invoice.gz", buf.getvalue()))))


async def test_zip_unicode_path_field(tmp_path: Path) -> None:
    name = b"evil.exe"
    extra = struct.pack("<HHBL", 0x7075, 5 + len(name), 1, 0) + name
    assert is_blocked(await run(tmp_path, mail(("a.zip", make_zip(("a.txt", b"x"), extra=extra)))))


async def test_archive_inspection_disabled(tmp_path: Path) -> None:
    raw = mail(("docs.zip", make_zip(("tool.exe", b"MZ"))))
    assert await run(tmp_path, raw, archive_max_depth=0) is CONTINUE
    decision = await run(tmp_path, raw, archive_max_depth=0, reject_unreadable_archives=True)
    assert decision.reply() == f"554 {UNREADABLE_REPLY}"


# -- archives that cannot be (fully) inspected ----------------------------------------------


async def test_corrupt_zip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    data = make_zip(("a.txt", b"hello"), ("b.txt", b"world"))
    corrupt = data[: data.find(b"PK\x01\x02")]  # central directory lost
    raw = mail(("broken.zip", corrupt))
    with caplog.at_level(logging.INFO, LOGGER):
        assert await run(tmp_path, raw) is CONTINUE
    assert "archive 'broken.zip': damaged" in caplog.text
    decision = await run(tmp_path, raw, reject_unreadable_archives=True)
    assert decision.verdict is Verdict.REJECT
    assert decision.reply() == "554 An attached archive could not be inspected"


async def test_corrupt_zip_readable_names_are_still_tested(tmp_path: Path) -> None:
    data = make_zip(("a.txt", b"hello"), ("evil.exe", b"MZ"))
    raw = mail(("broken.zip", data[: data.find(b"PK\x01\x02")]))
    assert is_blocked(await run(tmp_path, raw))


async def test_encrypted_zip(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    raw = mail(("secret.zip", set_encrypted(make_zip(("invoice.pdf", b"x")))))
    with caplog.at_level(logging.INFO, LOGGER):
        assert await run(tmp_path, raw) is CONTINUE
    assert "encrypted" in caplog.text
    assert (await run(tmp_path, raw, reject_unreadable_archives=True)).verdict is Verdict.REJECT
    named = mail(("secret.zip", set_encrypted(make_zip(("invoice.exe", b"x")))))
    assert is_blocked(await run(tmp_path, named))  # names of encrypted members are readable


async def test_rar_is_unsupported(tmp_path: Path) -> None:
    raw = mail(("x.rar", b"Rar!\x1a\x07\x00" + bytes(200)))
    assert await run(tmp_path, raw) is CONTINUE
    assert (await run(tmp_path, raw, reject_unreadable_archives=True)).verdict is Verdict.REJECT


async def test_member_count_limit(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    many = [(f"file{i:04}.txt", b"") for i in range(300)]
    late = mail(("many.zip", make_zip(*many, ("evil.exe", b"MZ"))))
    early = mail(("many.zip", make_zip(("evil.exe", b"MZ"), *many)))
    with caplog.at_level(logging.INFO, LOGGER):
        # the member after the limit is not read: the message passes, the limit is logged
        assert await run(tmp_path, late, archive_max_members=100) is CONTINUE
    assert "more than 100 archive members" in caplog.text
    assert is_blocked(await run(tmp_path, early, archive_max_members=100))
    assert is_blocked(await run(tmp_path, late))  # default limit 10000
    decision = await run(tmp_path, late, archive_max_members=100, reject_unreadable_archives=True)
    assert decision.reply() == f"554 {UNREADABLE_REPLY}"


async def test_decompression_limit(tmp_path: Path) -> None:
    bomb = make_tgz(("zeros.bin", bytes(3_000_000)), ("evil.exe", b"MZ"))
    raw = mail(("bomb.tgz", bomb))
    assert len(bomb) < 20_000
    assert await run(tmp_path, raw, archive_max_bytes=1_000_000) is CONTINUE
    assert is_blocked(await run(tmp_path, raw))  # default 64 MiB


async def test_depth_limit(tmp_path: Path) -> None:
    nested = make_zip(("l2.zip", make_zip(("l3.zip", make_zip(("deep.exe", b"MZ"))))))
    raw = mail(("l1.zip", nested))
    assert is_blocked(await run(tmp_path, raw))
    assert await run(tmp_path, raw, archive_max_depth=2) is CONTINUE


async def test_large_message_checks_names_but_not_archives(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    zipped = mail(("docs.zip", make_zip(("tool.exe", b"MZ"))), ("pad.bin", bytes(5000)))
    with caplog.at_level(logging.INFO, LOGGER):
        assert await run(tmp_path, zipped, max_size=1000) is CONTINUE
    assert "larger than max_size (1000 bytes)" in caplog.text
    assert "archive 'docs.zip': skipped" in caplog.text
    decision = await run(tmp_path, zipped, max_size=1000, reject_unreadable_archives=True)
    assert decision.reply() == f"554 {UNREADABLE_REPLY}"
    named = mail(("tool.exe", b"MZ"), ("pad.bin", bytes(5000)))
    assert is_blocked(await run(tmp_path, named, max_size=1000))


# -- unparseable messages -------------------------------------------------------------------


async def test_too_many_parts_is_unparseable(tmp_path: Path) -> None:
    raw = multipart(*[b"Content-Type: text/plain\n\nx"] * 20)
    decision = await run(tmp_path, raw, max_parts=10)
    assert decision.verdict is Verdict.REJECT
    assert decision.reply() == "554 Message has more than 10 MIME parts"
    assert await run(tmp_path, raw) is CONTINUE


async def test_parser_failure_is_554_with_the_exception_text(tmp_path: Path) -> None:
    # the email package raises IndexError on a parameter name ending in "*" without "="
    raw = b"MIME-Version: 1.0\nContent-Type: text/plain; name*\n\nx\n"
    decision = await run(tmp_path, raw)
    assert decision.reply() == "554 string index out of range"


async def test_absurd_nesting_is_unparseable(tmp_path: Path) -> None:
    raw = b"".join(b"Content-Type: message/rfc822\n\n" for _ in range(5000)) + b"x\n"
    decision = await run(tmp_path, raw)
    assert decision.verdict is Verdict.REJECT
    assert decision.code == "554"
    assert "recursion" in decision.text


async def test_deep_but_parseable_nesting_is_checked(tmp_path: Path) -> None:
    raw = b"".join(b"Content-Type: message/rfc822\n\n" for _ in range(300))
    raw += b'Content-Type: application/x; name="deep.exe"\n\nx\n'
    assert is_blocked(await run(tmp_path, raw))


async def test_unreadable_data_file_is_a_failure_not_a_verdict(tmp_path: Path) -> None:
    ctx = make_context("attachments", defaults=Attachments.defaults)
    flt = Attachments(ctx)
    await flt.start()
    msg = make_message(tmp_path, raw=mail())
    await asyncio.to_thread(Path(msg.data_path).unlink)
    with pytest.raises(Exception, match="cannot read data file"):
        await flt.check(msg, ctx)


def test_unparseable_reply_is_one_safe_line() -> None:
    assert unparseable_reply(ValueError("bad\r\nthing \u00e9")) == "bad thing ?"
    assert unparseable_reply(ValueError("")) == "ValueError"
    assert len(unparseable_reply(ValueError("x" * 1000))) == 200
    assert Decision.reject(unparseable_reply(RuntimeError("a\nb"))).reply() == "554 a b"


# -- settings, threading, loader ------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [
        {"blocked_pattern": "(unclosed"},
        {"blocked_pattern": 3},
        {"max_size": -1},
        {"archive_max_depth": "4"},
        {"archive_max_members": True},
        {"reject_unreadable_archives": "yes"},
    ],
)
async def test_bad_settings_fail_start(settings: dict[str, Any]) -> None:
    ctx = make_context("attachments", settings, defaults=Attachments.defaults)
    with pytest.raises(ValueError, match=r"\[attachments.py\]"):
        await Attachments(ctx).start()


async def test_scan_runs_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    threads: list[int] = []
    real = attachments._scan

    def spy(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return real(*args)

    monkeypatch.setattr(attachments, "_scan", spy)
    assert is_blocked(await run(tmp_path, mail(("x.exe", b""))))
    assert threads and threads[0] != threading.get_ident()


async def test_cancellation_stops_the_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    stopped = threading.Event()
    started = threading.Event()

    def slow(msg: Any, pattern: Any, limits: Any, inspect: bool, should_stop: Any) -> Any:
        started.set()
        give_up = time.monotonic() + 5
        while not should_stop() and time.monotonic() < give_up:  # as iter_message_names
            time.sleep(0.01)
        if should_stop():
            stopped.set()
        return attachments._Outcome()

    monkeypatch.setattr(attachments, "_scan", slow)
    ctx = make_context("attachments", defaults=Attachments.defaults)
    flt = Attachments(ctx)
    await flt.start()
    task = asyncio.create_task(flt.check(make_message(tmp_path, raw=mail()), ctx))
    assert await asyncio.to_thread(started.wait, 5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await asyncio.to_thread(stopped.wait, 5)


async def test_loaded_by_name_through_the_chain(tmp_path: Path) -> None:
    modules = parse_modules_config(
        [("pythonfilter-modules.conf", "[attachments.py]\nblocked_pattern = r'^.*\\.pdf$'\n")]
    )
    lines = [(e.name, e.bypass) for e in parse_chain_config("attachments\n").entries]
    services = Services(Settings(state_dir=str(tmp_path)), modules.section)
    chain: Chain = build_chain(lines, modules.section, services)
    await chain.start()
    try:
        msg: Message = make_message(tmp_path, raw=mail(("report.pdf", b"%PDF")))
        result = await chain.run(msg)
        assert result.decision.reply() == BLOCKED
        assert result.deciding == "attachments"
        result = await chain.run(make_message(tmp_path, raw=mail(("x.exe", b"MZ"))))
        assert result.decision.reply() == "200 Ok"
    finally:
        await chain.stop()
        await services.close()
