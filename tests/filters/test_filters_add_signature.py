"""``add_signature`` wraps the message into multipart/mixed with a signature part."""

from __future__ import annotations

import asyncio
import email
import email.policy
import logging
import os
from collections.abc import Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.decision import CONTINUE
from courier_pyfilter.edit import split_headers
from courier_pyfilter.filters.add_signature import (
    AddSignature,
    SignatureError,
    find_signature_path,
    read_signature,
    signature_domain,
    wrap_with_signature,
)
from courier_pyfilter.message import Message
from courier_pyfilter.testing import make_context, make_message

LOGGER = "courier_pyfilter.filters.add_signature"
SIGNATURE = "-- \nAlice Ünicode\nExample Corp.\n"

CLIENT_MESSAGE = (
    b"From: Alice <alice@example.com>\n"
    b"To: b@example.net\n"
    b"Subject: hello\n"
    b"MIME-Version: 1.0\n"
    b"Content-Type: text/plain; charset=utf-8\n"
    b"Content-Transfer-Encoding: 8bit\n"
    b"Date: Wed, 25 Nov 2026 11:22:51 +0000\n"
    b"Message-ID: <sig.1@example.com>\n"
    b"\n"
    b"H\xc3\xa9llo\n"
)


def read(path: str) -> bytes:
    """The bytes of a message file (a plain function: the tests' async code calls it)."""
    return Path(path).read_bytes()


@pytest.fixture
def fixed_boundary(monkeypatch: pytest.MonkeyPatch) -> bytes:
    monkeypatch.setattr("secrets.token_hex", lambda n: "0" * (2 * n))
    return b"=_courier-pyfilter_" + b"0" * 24


def sig_file(tmp_path: Path, text: str | bytes = SIGNATURE, name: str = "sig") -> str:
    path = tmp_path / name
    if isinstance(text, str):
        path.write_text(text, encoding="utf-8")
    else:
        path.write_bytes(text)
    return str(path)


async def run(msg: Message, **settings: Any) -> None:
    ctx = make_context("add_signature", settings, defaults=AddSignature.defaults)
    flt = AddSignature(ctx)
    await flt.start()
    assert await flt.check(msg, ctx) is CONTINUE


def parse(data: bytes) -> EmailMessage:
    parsed = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(parsed, EmailMessage)
    return parsed


def warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == logging.WARNING
    ]


async def test_exact_result(tmp_path: Path, fixed_boundary: bytes) -> None:
    msg = make_message(tmp_path, auth_user="alice@example.com", raw=CLIENT_MESSAGE)
    before = read(msg.data_path)
    control = read(msg.control_paths[0])
    received = split_headers(before)[0][0]
    await run(msg, domains={"example.com": sig_file(tmp_path)})
    b = fixed_boundary
    assert read(msg.data_path) == (
        received + b"From: Alice <alice@example.com>\n"
        b"To: b@example.net\n"
        b"Subject: hello\n"
        b"Date: Wed, 25 Nov 2026 11:22:51 +0000\n"
        b"Message-ID: <sig.1@example.com>\n"
        b"MIME-Version: 1.0\n"
        b'Content-Type: multipart/mixed; boundary="' + b + b'"\n'
        b"Content-Transfer-Encoding: 8bit\n"
        b"\n"
        b"--" + b + b"\n"
        b"Content-Type: text/plain; charset=utf-8\n"
        b"Content-Transfer-Encoding: 8bit\n"
        b"\n"
        b"H\xc3\xa9llo\n"
        b"\n"
        b"--" + b + b"\n"
        b'Content-Type: text/plain; charset="utf-8"\n'
        b"Content-Transfer-Encoding: quoted-printable\n"
        b"\n"
        b"--=20\n"
        b"Alice =C3=9Cnicode\n"
        b"Example Corp.\n"
        b"\n"
        b"--" + b + b"--\n"
    )
    parsed = parse(read(msg.data_path))
    assert parsed.get_content_type() == "multipart/mixed"
    assert not parsed.defects
    first, second = parsed.iter_parts()
    assert isinstance(first, EmailMessage) and isinstance(second, EmailMessage)
    assert first.get_content() == "Héllo\n"
    assert second.get_content() == SIGNATURE
    assert second.get_content_charset() == "utf-8"
    assert read(msg.control_paths[0]) == control


async def test_plain_message_without_mime_headers(tmp_path: Path, fixed_boundary: bytes) -> None:
    raw = b"From: a@example.com\nSubject: x\n\nline 1\nline 2\n"
    msg = make_message(tmp_path, auth_user="alice@example.com", raw=raw, received=False)
    await run(msg, domains={"example.com": sig_file(tmp_path, "sig\n")})
    b = fixed_boundary
    assert read(msg.data_path) == (
        b"From: a@example.com\nSubject: x\n"
        b'MIME-Version: 1.0\nContent-Type: multipart/mixed; boundary="' + b + b'"\n\n'
        b"--" + b + b"\n\nline 1\nline 2\n\n"
        b"--" + b + b'\nContent-Type: text/plain; charset="utf-8"\n'
        b"Content-Transfer-Encoding: quoted-printable\n\nsig\n\n"
        b"--" + b + b"--\n"
    )
    first, _ = parse(read(msg.data_path)).iter_parts()
    assert first.get_content_type() == "text/plain"
    assert first.get_payload() == "line 1\nline 2\n"


async def test_multipart_original_is_nested_and_mime_names_ignore_case(tmp_path: Path) -> None:
    raw = (
        b"From: a@example.com\n"
        b"mime-version: 1.0\n"
        b'content-type: multipart/alternative; boundary="inner"\n'
        b"Content-Description: the text\n"
        b"Subject: x\n"
        b"\n"
        b"--inner\nContent-Type: text/plain\n\nplain\n"
        b"--inner\nContent-Type: text/html\n\n<p>html</p>\n"
        b"--inner--\n"
    )
    msg = make_message(tmp_path, auth_user="alice@example.com", raw=raw, received=False)
    await run(msg, domains={"example.com": sig_file(tmp_path)})
    data = read(msg.data_path)
    fields, _ = split_headers(data)
    assert fields[:2] == [b"From: a@example.com\n", b"Subject: x\n"]
    assert b"mime-version: 1.0" not in data  # replaced by the outer MIME-Version
    assert data.count(b"MIME-Version: 1.0\n") == 1
    assert b"Content-Transfer-Encoding" not in data.split(b"\n\n", 1)[0]  # 7-bit: no CTE
    parsed = parse(data)
    first, second = parsed.iter_parts()
    assert first.get_content_type() == "multipart/alternative"
    assert first["Content-Description"] == "the text"
    assert [p.get_content_type() for p in first.iter_parts()] == ["text/plain", "text/html"]
    assert second.get_content() == SIGNATURE


def test_header_block_ended_by_a_non_header_line() -> None:
    raw = b"Subject: x\nthis is no header\nmore\n"
    out = wrap_with_signature(raw, "sig\n")
    parsed = parse(out)
    assert parsed["Subject"] == "x"
    first, _ = parsed.iter_parts()
    assert first.get_payload() == "this is no header\nmore\n"


def test_message_without_body() -> None:
    parsed = parse(wrap_with_signature(b"Subject: x\n", "sig\n"))
    first, second = parsed.iter_parts()
    assert first.get_payload() == ""
    assert second.get_content() == "sig\n"


def test_boundary_never_occurs_in_the_message(monkeypatch: pytest.MonkeyPatch) -> None:
    values = iter(["a" * 24, "b" * 24])
    monkeypatch.setattr("secrets.token_hex", lambda n: next(values))
    raw = b"Subject: x\n\n--=_courier-pyfilter_" + b"a" * 24 + b"\n"
    out = wrap_with_signature(raw, "sig\n")
    assert b'boundary="=_courier-pyfilter_' + b"b" * 24 + b'"' in out


async def test_domain_selection(tmp_path: Path) -> None:
    default = sig_file(tmp_path, "default sig\n", "default")
    example = sig_file(tmp_path, "example sig\n", "example")
    domains = {"": default, "Example.COM": example}
    cases = [
        ("alice", "default sig\n"),
        ("alice@example.com", "example sig\n"),  # domains compare without case
        ("alice@example.com@other.org", "example sig\n"),  # the original's split('@')[1]
        ("alice@other.org", None),
        ("", None),  # an empty auth user is not authenticated here (as the original)
        (None, None),
    ]
    for user, expected in cases:
        msg = make_message(tmp_path, auth_user=user, raw=CLIENT_MESSAGE)
        before = read(msg.data_path)
        await run(msg, domains=domains)
        after = read(msg.data_path)
        if expected is None:
            assert after == before, user
        else:
            _, second = parse(after).iter_parts()
            assert second.get_content() == expected, user


def test_domain_helpers() -> None:
    assert signature_domain("alice") == ""
    assert signature_domain("alice@example.com") == "example.com"
    assert signature_domain("a@b@c") == "b"
    assert find_signature_path({"x.org": "/1", "X.ORG": "/2"}, "X.ORG") == "/2"
    assert find_signature_path({"x.org": "/1"}, "X.Org") == "/1"
    assert find_signature_path({"x.org": "/1"}, "../x.org") is None


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("missing", "No such file or directory"),
        ("directory", "not a regular file"),
        ("fifo", "not a regular file"),
        ("latin1", "not UTF-8 (invalid continuation byte at byte 1)"),
        ("large", "larger than max_size (100 bytes)"),
        ("unreadable", "Permission denied"),
    ],
)
async def test_unusable_signature_file_leaves_message_unchanged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, kind: str, reason: str
) -> None:
    path = tmp_path / "sig"
    if kind == "directory":
        path.mkdir()
    elif kind == "fifo":
        os.mkfifo(path)
    elif kind == "latin1":
        path.write_bytes(b"J\xe9r\xf4me\n")
    elif kind == "large":
        path.write_bytes(b"x" * 101)
    elif kind == "unreadable":
        if os.geteuid() == 0:
            pytest.skip("root reads any file")
        path.write_text("sig")
        path.chmod(0)
    msg = make_message(tmp_path, auth_user="alice@example.com", raw=CLIENT_MESSAGE)
    before = read(msg.data_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await run(msg, domains={"example.com": str(path)}, max_size=100)
    assert read(msg.data_path) == before
    assert msg.edit.changes == []
    assert warnings(caplog) == [
        f"add_signature filter: cannot use signature file {path} for domain 'example.com': "
        f"{reason}; message {msg.msgid} not changed"
    ]


async def test_empty_signature_file_means_no_signature(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    msg = make_message(tmp_path, auth_user="alice@example.com", raw=CLIENT_MESSAGE)
    before = read(msg.data_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await run(msg, domains={"example.com": sig_file(tmp_path, "")})
    assert read(msg.data_path) == before
    assert warnings(caplog) == []


def test_read_signature_normalises(tmp_path: Path) -> None:
    path = sig_file(tmp_path, "\ufeffline 1\r\nline 2\r\n".encode())
    assert read_signature(path, 100) == "line 1\nline 2\n"
    with pytest.raises(SignatureError, match="larger than max_size"):
        read_signature(path, 5)


async def test_signature_is_read_in_a_worker_thread(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[object] = []
    real = asyncio.to_thread

    async def spy(func: Callable[..., Any], /, *args: Any) -> Any:
        calls.append(func)
        return await real(func, *args)

    monkeypatch.setattr("asyncio.to_thread", spy)
    msg = make_message(tmp_path, auth_user="alice@example.com", raw=CLIENT_MESSAGE)
    await run(msg, domains={"example.com": sig_file(tmp_path)})
    assert read_signature in calls


async def test_dry_run_does_not_write(tmp_path: Path) -> None:
    msg = make_message(tmp_path, auth_user="alice@example.com", raw=CLIENT_MESSAGE, dry_run=True)
    before = read(msg.data_path)
    await run(msg, domains={"example.com": sig_file(tmp_path)})
    assert read(msg.data_path) == before
    assert (await msg.raw()).endswith(b"--\n")  # the message view shows the change


@pytest.mark.parametrize(
    "settings",
    [
        {"domains": ["example.com"]},
        {"domains": {"example.com": 3}},
        {"domains": {"example.com": ""}},
        {"max_size": 0},
        {"max_size": True},
    ],
)
async def test_bad_settings_fail_start(settings: dict[str, Any]) -> None:
    ctx = make_context("add_signature", settings, defaults=AddSignature.defaults)
    with pytest.raises(ValueError, match=r"\[add_signature.py\]"):
        await AddSignature(ctx).start()


def test_defaults_are_the_originals() -> None:
    assert AddSignature.defaults["domains"] == {
        "example.com": "/etc/courier/signatures/example.com"
    }


# -- DKIM: the body changes by nature ---------------------------------------------------------


async def test_dkim_body_hash_breaks_but_headers_are_kept(
    tmp_path: Path, dkim_pair: tuple[Callable[[bytes], bytes], Callable[[bytes], bool]]
) -> None:
    sign, verify = dkim_pair
    msg = make_message(tmp_path, auth_user="alice@example.com", raw=sign(CLIENT_MESSAGE))
    before = read(msg.data_path)
    assert verify(before)
    await run(msg, domains={"example.com": sig_file(tmp_path)})
    after = read(msg.data_path)
    assert not verify(after)  # documented: sign after filtering
    kept = [
        f for f in split_headers(before)[0] if not f.lower().startswith((b"content-", b"mime-"))
    ]
    assert split_headers(after)[0][: len(kept)] == kept
