"""``sentfolder`` pipes a copy of authenticated mail to sendmail, never changing it.

sendmail is a small stand-in program that records its arguments and input (and injects
faults); the run through the real Courier is an end-to-end test of its own.
"""

from __future__ import annotations

import email
import email.policy
import json
import logging
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.decision import CONTINUE
from courier_pyfilter.filters import sentfolder as mod
from courier_pyfilter.filters.sentfolder import (
    DEFAULT_SITEID,
    SentFolder,
    bcc_addresses,
    copy_header,
    fold_address_list,
)
from courier_pyfilter.message import Message
from courier_pyfilter.sendmail import SendmailError
from courier_pyfilter.testing import make_context, make_message

LOGGER = "courier_pyfilter.filters.sentfolder"
SITEID = "3f1c7a52-site"

RECORDER = """\
import json, os, sys
data = sys.stdin.buffer.read()
with open(os.path.join(%(dir)r, "stdin"), "wb") as fh:
    fh.write(data)
with open(os.path.join(%(dir)r, "argv.json"), "w") as fh:
    json.dump(sys.argv[1:], fh)
sys.exit(%(status)d)
"""

CLIENT_MESSAGE = (
    b"From: Alice <alice@example.com>\n"
    b"To: Bob <b@example.net>, undisclosed:;\n"
    b"Cc: =?utf-8?q?Doe=2C_Carol?= <C@Example.NET>\n"
    b"Resent-To: r@example.net\n"
    b"Subject: copy me\n"
    b"Date: Wed, 25 Nov 2026 11:22:51 +0000\n"
    b"Message-ID: <sent.1@example.com>\n"
    b"\n"
    b"Body line\n"
)


def read(path: str) -> bytes:
    """The bytes of a message file (a plain function: the tests' async code calls it)."""
    return Path(path).read_bytes()


def program(tmp_path: Path, body: str, *, python: bool = False) -> str:
    path = tmp_path / "sendmail"
    path.write_text(f"#!{sys.executable if python else '/bin/sh'}\n{body}")
    path.chmod(0o755)
    return str(path)


def recorder(tmp_path: Path, status: int = 0) -> str:
    return program(tmp_path, RECORDER % {"dir": str(tmp_path), "status": status}, python=True)


def context(tmp_path: Path, dry_run: bool = False, **settings: Any) -> Any:
    etc = tmp_path / "etc"
    etc.mkdir(exist_ok=True)
    (etc / "me").write_text("mx.example.org\n")
    return make_context(
        "sentfolder", settings, defaults=SentFolder.defaults, sysconfdir=str(etc), dry_run=dry_run
    )


async def run(msg: Message, ctx: Any) -> None:
    flt = SentFolder(ctx)
    await flt.start()
    assert await flt.check(msg, ctx) is CONTINUE


def sent(tmp_path: Path) -> tuple[list[str], bytes] | None:
    if not (tmp_path / "argv.json").exists():
        return None
    return json.loads((tmp_path / "argv.json").read_text()), (tmp_path / "stdin").read_bytes()


def lines(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == LOGGER and r.levelno == level]


def files(msg: Message) -> list[bytes]:
    return [Path(p).read_bytes() for p in (msg.data_path, *msg.control_paths)]


async def test_copy_to_auth_user(tmp_path: Path) -> None:
    msg = make_message(
        tmp_path,
        auth_user="alice",
        raw=CLIENT_MESSAGE,
        recipients=[
            "b@example.net",  # in To
            "c@example.net",  # in Cc, other case
            "r@example.net",  # in Resent-To
            "d@example.org",  # nowhere: Bcc
            ("mailbox@example.org", "rfc822;list@example.org", "SF"),  # alias: its ORCPT
            "D@example.org",  # repeated (other case)
        ],
    )
    before = files(msg)
    await run(msg, context(tmp_path, siteid=SITEID, sendmail=recorder(tmp_path)))
    record = sent(tmp_path)
    assert record is not None
    argv, stdin = record
    assert argv == ["-oi", "-f", "", "alice@mx.example.org"]
    assert stdin == (
        b"X-Deliver-To-Sent-Folder: " + SITEID.encode() + b"\n"
        b"Bcc: d@example.org, list@example.org\n" + before[0]
    )
    assert files(msg) == before  # the message itself is never changed
    assert msg.edit.changes == []


async def test_user_with_domain_and_no_bcc(tmp_path: Path) -> None:
    msg = make_message(
        tmp_path,
        auth_user="alice@example.com",
        raw=CLIENT_MESSAGE,
        recipients=["b@example.net"],
    )
    await run(msg, context(tmp_path, sendmail=recorder(tmp_path)))
    record = sent(tmp_path)
    assert record is not None
    argv, stdin = record
    assert argv[-1] == "alice@example.com"
    assert stdin.startswith(f"X-Deliver-To-Sent-Folder: {DEFAULT_SITEID}\nReceived: ".encode())


async def test_copy_has_the_current_content(tmp_path: Path) -> None:
    # an earlier filter's edit is in the copy (the data file is streamed as it is now)
    msg = make_message(
        tmp_path, auth_user="alice", raw=CLIENT_MESSAGE, recipients=["b@example.net"]
    )
    await msg.edit.add_header("X-Earlier", "yes")
    await run(msg, context(tmp_path, siteid=SITEID, sendmail=recorder(tmp_path)))
    record = sent(tmp_path)
    assert record is not None
    assert record[1] == (f"X-Deliver-To-Sent-Folder: {SITEID}\n".encode() + read(msg.data_path))
    assert b"\nX-Earlier: yes\n" in b"\n" + read(msg.data_path)


async def test_long_bcc_is_folded(tmp_path: Path) -> None:
    rcpts = [f"recipient-number-{i:02d}@example.org" for i in range(30)]
    msg = make_message(tmp_path, auth_user="alice", raw=CLIENT_MESSAGE, recipients=rcpts)
    await run(msg, context(tmp_path, sendmail=recorder(tmp_path)))
    record = sent(tmp_path)
    assert record is not None
    head = record[1].split(b"\nReceived: ", 1)[0] + b"\n"
    assert all(len(line) <= 78 for line in head.split(b"\n"))
    parsed = email.message_from_bytes(head + b"\n", policy=email.policy.default)
    assert [a.addr_spec for a in parsed["Bcc"].addresses] == rcpts


def test_bcc_helpers() -> None:
    assert bcc_addresses(["a@x", "B@x", "b@X", "c@x"], {"a@x"}) == ["B@x", "c@x"]
    assert fold_address_list(["a@x", "b@x"], 5) == "a@x, b@x"
    assert fold_address_list(["a" * 40 + "@x", "b" * 40 + "@x"], 5) == (
        "a" * 40 + "@x,\n " + "b" * 40 + "@x"
    )
    assert copy_header("s", []) == b"X-Deliver-To-Sent-Folder: s\n"


async def test_no_copy_without_authentication(tmp_path: Path) -> None:
    for user in (None, ""):
        msg = make_message(tmp_path, auth_user=user, raw=CLIENT_MESSAGE)
        await run(msg, context(tmp_path, sendmail=recorder(tmp_path)))
        assert sent(tmp_path) is None


async def test_a_copy_is_never_copied_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # the copy as it comes back: marked with our siteid (here even authenticated)
    marked = b"X-Deliver-To-Sent-Folder:  " + SITEID.encode() + b" \n" + CLIENT_MESSAGE
    msg = make_message(tmp_path, auth_user="alice", raw=marked, sender="")
    with caplog.at_level(logging.INFO, logger=LOGGER):
        await run(msg, context(tmp_path, siteid=SITEID, sendmail=recorder(tmp_path)))
    assert sent(tmp_path) is None
    assert lines(caplog, logging.INFO) == [
        f"sentfolder filter: message {msg.msgid} already carries X-Deliver-To-Sent-Folder "
        "for this site; no copy made"
    ]
    # another site's marker does not stop the copy
    other = b"X-Deliver-To-Sent-Folder: other-site\n" + CLIENT_MESSAGE
    msg = make_message(tmp_path, auth_user="alice", raw=other)
    await run(msg, context(tmp_path, siteid=SITEID, sendmail=recorder(tmp_path)))
    assert sent(tmp_path) is not None


@pytest.mark.parametrize(
    ("body", "timeout", "reason"),
    [
        ("cat >/dev/null\necho 'sendmail: Unable to submit message.' >&2\nexit 75\n", 30, None),
        ("sleep 30\n", 0.3, "did not finish within 0.3 s"),
        ("exec 0<&-\nexit 0\n", 30, "exited before reading the whole message"),
    ],
)
async def test_failed_copy_never_blocks_the_message(
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    body: str,
    timeout: float,
    reason: str | None,
) -> None:
    big = CLIENT_MESSAGE + b"x" * (2 * 1024 * 1024) + b"\n"
    msg = make_message(tmp_path, auth_user="alice", raw=big)
    before = files(msg)
    sendmail = program(tmp_path, body)
    started = time.monotonic()
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        await run(msg, context(tmp_path, sendmail=sendmail, sendmail_timeout=timeout))
    assert time.monotonic() - started < 10
    assert files(msg) == before
    expected = reason or "exited with status 75: sendmail: Unable to submit message."
    [line] = lines(caplog, logging.ERROR)
    assert line.startswith(
        f"sentfolder filter: cannot send a copy of {msg.msgid} to alice@mx.example.org: {sendmail} "
    )
    assert expected in line


async def test_missing_program_is_logged(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    msg = make_message(tmp_path, auth_user="alice", raw=CLIENT_MESSAGE)
    missing = str(tmp_path / "no-sendmail")
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        await run(msg, context(tmp_path, sendmail=missing))
    [line] = lines(caplog, logging.ERROR)
    assert f"cannot run {missing}: " in line


async def test_invalid_auth_user_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    msg = make_message(tmp_path, auth_user="-bs", raw=CLIENT_MESSAGE)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        await run(msg, context(tmp_path, sendmail=recorder(tmp_path)))
    assert sent(tmp_path) is None
    [line] = lines(caplog, logging.ERROR)
    assert "would be read as an option" in line


async def test_dry_run_sends_nothing(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    msg = make_message(tmp_path, auth_user="alice", raw=CLIENT_MESSAGE)
    with caplog.at_level(logging.INFO, logger=LOGGER):
        await run(msg, context(tmp_path, dry_run=True, sendmail=recorder(tmp_path)))
    assert sent(tmp_path) is None
    assert lines(caplog, logging.INFO) == [
        "sentfolder filter: dry run: would send a copy to alice@mx.example.org"
    ]


async def test_start_warns_when_no_sendmail(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def none(*args: object, **kwargs: object) -> str:
        raise SendmailError("no sendmail program found (tried x)", program="sendmail")

    monkeypatch.setattr(mod, "find_sendmail", none)
    ctx = context(tmp_path)
    with caplog.at_level(logging.WARNING, logger=LOGGER):
        await SentFolder(ctx).start()
    assert lines(caplog, logging.WARNING) == [
        "sentfolder filter: no sendmail program found (tried x); copies will fail"
    ]
    # and each message logs the failure but passes
    msg = make_message(tmp_path, auth_user="alice", raw=CLIENT_MESSAGE)
    with caplog.at_level(logging.ERROR, logger=LOGGER):
        await run(msg, ctx)
    assert any("no sendmail program found" in line for line in lines(caplog, logging.ERROR))


@pytest.mark.parametrize(
    "settings",
    [
        {"siteid": ""},
        {"siteid": "a\nBcc: x@y"},
        {"siteid": " padded"},
        {"siteid": 7},
        {"sendmail": ""},
        {"sendmail_timeout": 0},
        {"sendmail_timeout": "5"},
    ],
)
async def test_bad_settings_fail_start(tmp_path: Path, settings: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"\[sentfolder.py\]"):
        await SentFolder(context(tmp_path, **settings)).start()


def test_defaults_are_the_originals() -> None:
    assert SentFolder.defaults["siteid"] == "69f7dc20-7aef-420b-a8d2-85ea229f97ba"


# -- DKIM: the message is not touched, and the copy carries it unchanged ---------------------


async def test_dkim_signature_still_verifies(
    tmp_path: Path, dkim_pair: tuple[Callable[[bytes], bytes], Callable[[bytes], bool]]
) -> None:
    sign, verify = dkim_pair
    msg = make_message(
        tmp_path,
        auth_user="alice",
        raw=sign(CLIENT_MESSAGE, [b"from", b"to", b"cc", b"subject", b"date", b"message-id"]),
        recipients=["b@example.net", "hidden@example.org"],
    )
    before = read(msg.data_path)
    assert verify(before)
    await run(msg, context(tmp_path, siteid=SITEID, sendmail=recorder(tmp_path)))
    assert read(msg.data_path) == before
    assert verify(read(msg.data_path))
    record = sent(tmp_path)
    assert record is not None
    prefix = f"X-Deliver-To-Sent-Folder: {SITEID}\nBcc: hidden@example.org\n".encode()
    assert record[1] == prefix + before
    assert verify(record[1])  # the added fields are not signed: the copy verifies too


# -- the five filters in one chain, loaded the way the server loads them ---------------------


async def test_chain_of_the_message_changing_filters(tmp_path: Path) -> None:
    from courier_pyfilter.legacyconf import parse_chain_config, parse_modules_config
    from courier_pyfilter.loader import build_chain
    from courier_pyfilter.services import Services
    from courier_pyfilter.settings import Settings

    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "me").write_text("mx.example.org\n")
    signature = tmp_path / "signature"
    signature.write_text("-- \nAlice\n")
    state = tmp_path / "state"
    state.mkdir()
    modules_text = (
        "[add_signature.py]\n"
        f"domains = {{'': {str(signature)!r}}}\n"
        "[sentfolder.py]\n"
        f"siteid = {SITEID!r}\n"
        f"sendmail = {recorder(tmp_path)!r}\n"
    )
    modules = parse_modules_config([("pythonfilter-modules.conf", modules_text)])
    names = "noduplicates\nnosuccessdsn\nnoreceivedheaders\nadd_signature\nsentfolder\n"
    lines = [(e.name, e.bypass) for e in parse_chain_config(names).entries]
    services = Services(Settings(state_dir=str(state), sysconfdir=str(etc)), modules.section)
    chain = build_chain(lines, modules.section, services)
    await chain.start()
    try:
        msg = make_message(
            tmp_path,
            auth_user="alice",
            raw=CLIENT_MESSAGE,
            recipients=[("b@example.net", "", "SF"), "b@example.net", "x@example.org"],
        )
        result = await chain.run(msg)
    finally:
        await chain.stop()
        await services.close()
    assert result.decision.reply() == "200 Ok"
    assert [(r.address, r.notify) for r in msg.recipients] == [
        ("x@example.org", ""),
        ("b@example.net", "F"),
    ]
    data = read(msg.data_path)
    assert b"(AUTH: PLAIN alice)" not in data
    assert data.startswith(b"From: Alice <alice@example.com>\n")
    assert b"Content-Type: multipart/mixed;" in data
    record = sent(tmp_path)
    assert record is not None
    argv, stdin = record
    assert argv[-1] == "alice@mx.example.org"
    # the copy is the message as the earlier filters left it
    assert stdin == (f"X-Deliver-To-Sent-Folder: {SITEID}\nBcc: x@example.org\n".encode() + data)
