"""``quota``: temp-fail mail for local recipients over their Maildir++ quota."""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import authdaemon_fixture
import pytest
from authdaemon_fixture import (
    FakeAuthdaemon,
    Handler,
    RealAuthdaemon,
    answer,
    courier_sysconfdir,
    dead_socket,
    hang,
)

from courier_pyfilter.api import Context, Filter
from courier_pyfilter.decision import CONTINUE, Decision, Verdict
from courier_pyfilter.filters.quota import (
    AUTHDAEMON_FAILURE,
    MAX_MAILDIRSIZE,
    Quota,
    QuotaUsage,
    maildirsize_path,
    parse_maildirsize,
    read_maildirsize,
)
from courier_pyfilter.loader import find_module
from courier_pyfilter.testing import make_context, make_message

real_authdaemon = authdaemon_fixture.real_authdaemon
fake_authdaemon = authdaemon_fixture.fake_authdaemon

Fake = Callable[[Handler], Awaitable[FakeAuthdaemon]]
Run = Callable[..., Awaitable[Decision]]

OVER = b"1000S\n600 3\n500 2\n"
UNDER = b"1000S\n600 3\n300 2\n"


# -- maildirsize ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"1000S\n", QuotaUsage(1000, 0, 0, 0)),
        (b"1000S,10C\n100 1\n200 2\n", QuotaUsage(1000, 10, 300, 3)),
        (b"10C, 2000S\n", QuotaUsage(2000, 10, 0, 0)),
        (b"1S,2S,5C\n", QuotaUsage(2, 5, 0, 0)),  # a later item of a kind wins
        (b"1000S\n1200 3\n-300 -1\n", QuotaUsage(1000, 0, 900, 2)),  # deletions
        (b"1000S\r\n 5   1 \r\n7\t2", QuotaUsage(1000, 0, 12, 3)),  # any newline, no final one
        (b"0S,0C\n99999 99\n", QuotaUsage(0, 0, 99999, 99)),
    ],
)
def test_parse_maildirsize(data: bytes, expected: QuotaUsage) -> None:
    assert parse_maildirsize(data) == expected


@pytest.mark.parametrize(
    "data",
    [
        b"",  # no quota line
        b"\n",
        b"1000\n",  # no S/C suffix
        b"1000S,\n",  # empty item
        b"S\n",
        b"1000X\n",
        b"abcS\n",
        b"1000S\n100\n",  # one number
        b"1000S\n1 2 3\n",
        b"1000S\n\n1 1\n",  # an empty usage line
        b"1000S\nx 1\n",
        b"1000S\n1 \xff\n",  # not UTF-8
    ],
)
def test_malformed_maildirsize(data: bytes) -> None:
    with pytest.raises(ValueError):
        parse_maildirsize(data)


@pytest.mark.parametrize(
    ("usage", "over"),
    [
        (QuotaUsage(1000, 0, 999, 50), False),
        (QuotaUsage(1000, 0, 1000, 0), True),  # reaching the limit is over
        (QuotaUsage(0, 5, 10**9, 4), False),
        (QuotaUsage(0, 5, 0, 5), True),
        (QuotaUsage(0, 0, 10**9, 10**6), False),  # no limits
        (QuotaUsage(1000, 10, 10, 10), True),
    ],
)
def test_over_quota(usage: QuotaUsage, over: bool) -> None:
    assert usage.over_quota is over


@pytest.mark.parametrize(
    ("info", "path"),
    [
        ({"HOME": "/h/a", "MAILDIR": "/m/a"}, "/m/a/maildirsize"),
        ({"HOME": "/h/a", "MAILDIR": "./Maildir"}, "/h/a/./Maildir/maildirsize"),
        ({"HOME": "/h/a", "MAILDIR": "Mail/box"}, "/h/a/Mail/box/maildirsize"),
        ({"HOME": "/h/a", "MAILDIR": ""}, "/h/a/Maildir/maildirsize"),
        ({"HOME": "/h/a"}, "/h/a/Maildir/maildirsize"),
        ({"MAILDIR": "/m/a"}, "/m/a/maildirsize"),
        ({"MAILDIR": "./Maildir"}, None),  # relative, and no HOME to anchor it
        ({}, None),
        ({"HOME": "relative"}, None),
        ({"HOME": "/h/a", "MAILDIR": "/m/\0"}, None),
    ],
)
def test_maildirsize_path(info: dict[str, str], path: str | None) -> None:
    assert maildirsize_path(info) == path


def test_read_maildirsize_refuses_what_is_not_a_plain_file(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.write_bytes(OVER)
    assert read_maildirsize(str(real)) == OVER
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(OSError):
        read_maildirsize(str(link))
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(OSError, match="not a regular file"):
        read_maildirsize(str(fifo))  # returns at once instead of blocking
    with pytest.raises(OSError, match="not a regular file"):
        read_maildirsize(str(tmp_path))
    big = tmp_path / "big"
    big.write_bytes(b"1000S\n" + b"1 1\n" * (MAX_MAILDIRSIZE // 4))
    with pytest.raises(OSError, match="larger than"):
        read_maildirsize(str(big))
    with pytest.raises(FileNotFoundError):
        read_maildirsize(str(tmp_path / "absent"))


# -- the filter ---------------------------------------------------------------------------


def test_filter_class_and_loading() -> None:
    assert Quota.defaults == {}
    assert Quota.whitelist is False
    loaded = find_module("quota")
    assert loaded.origin == "built-in"
    classes = [
        v
        for v in vars(loaded.module).values()
        if isinstance(v, type) and issubclass(v, Filter) and v is not Filter
    ]
    assert classes == [Quota]


@pytest.fixture
async def run(tmp_path: Path) -> AsyncIterator[Run]:
    """``await run(socket_path, recipients=[...], **message_kwargs)``."""
    contexts: list[Context] = []
    sysconfdir = courier_sysconfdir(tmp_path / "etc")

    async def run_filter(socket_path: str, **kw: Any) -> Decision:
        ctx = make_context(
            "quota",
            sections={"authdaemon.py": {"socket_path": socket_path, "TIMEOUT_READ": 0.5}},
            sysconfdir=sysconfdir,
        )
        contexts.append(ctx)
        flt = Quota(ctx)
        await flt.start()
        decision = await flt.check(make_message(tmp_path, **kw), ctx)
        assert isinstance(decision, Decision)
        return decision

    yield run_filter
    for ctx in contexts:
        await ctx.services.close()


@pytest.fixture
def maildirsize(real_authdaemon: RealAuthdaemon) -> Iterator[Callable[[str, bytes], Path]]:
    """``maildirsize(account, data)`` writes the account's file; removed after the test."""
    written: list[Path] = []

    def write(account: str, data: bytes) -> Path:
        path = real_authdaemon.maildir(account) / "maildirsize"
        path.write_bytes(data)
        written.append(path)
        return path

    yield write
    for path in written:
        path.unlink(missing_ok=True)


@pytest.fixture
def down(tmp_path: Path) -> str:
    """A socket path where nothing answers: any lookup would give 451."""
    return dead_socket(tmp_path / "down.sock")


MaildirSize = Callable[[str, bytes], Path]


async def test_local_recipient_over_quota(
    run: Run, real_authdaemon: RealAuthdaemon, maildirsize: MaildirSize
) -> None:
    maildirsize("alice", OVER)
    decision = await run(real_authdaemon.socket_path, recipients=["alice@courier.test"])
    assert decision.verdict is Verdict.TEMPFAIL
    assert decision.reply() == '421 User "alice" is over quota'


async def test_local_recipient_under_quota(
    run: Run, real_authdaemon: RealAuthdaemon, maildirsize: MaildirSize
) -> None:
    maildirsize("alice", UNDER)
    assert await run(real_authdaemon.socket_path, recipients=["alice@courier.test"]) is CONTINUE


async def test_message_count_limit(
    run: Run, real_authdaemon: RealAuthdaemon, maildirsize: MaildirSize
) -> None:
    maildirsize("alice", b"0S,5C\n100 4\n")
    assert await run(real_authdaemon.socket_path, recipients=["alice@courier.test"]) is CONTINUE
    maildirsize("alice", b"0S,5C\n100 4\n20 1\n")
    decision = await run(real_authdaemon.socket_path, recipients=["alice@courier.test"])
    assert decision.reply() == '421 User "alice" is over quota'


async def test_home_maildir_when_authdaemond_gives_no_maildir(
    run: Run, real_authdaemon: RealAuthdaemon, maildirsize: MaildirSize
) -> None:
    path = maildirsize("bob", OVER)
    assert path == real_authdaemon.home("bob") / "Maildir" / "maildirsize"
    decision = await run(real_authdaemon.socket_path, recipients=["bob@courier.test"])
    assert decision.reply() == '421 User "bob" is over quota'


async def test_relative_maildir_counts_from_home(
    run: Run, real_authdaemon: RealAuthdaemon, maildirsize: MaildirSize
) -> None:
    path = maildirsize("dave", OVER)
    assert path == real_authdaemon.home("dave") / "Mail" / "box" / "maildirsize"
    decision = await run(real_authdaemon.socket_path, recipients=["dave@courier.test"])
    assert decision.reply() == '421 User "dave" is over quota'


async def test_hosted_recipient_uses_the_whole_address(
    run: Run, real_authdaemon: RealAuthdaemon, maildirsize: MaildirSize
) -> None:
    maildirsize("carol@hosted.test", OVER)
    decision = await run(real_authdaemon.socket_path, recipients=["carol@hosted.test"])
    assert decision.reply() == '421 User "carol@hosted.test" is over quota'


async def test_first_full_mailbox_in_recipient_order_answers(
    run: Run, real_authdaemon: RealAuthdaemon, maildirsize: MaildirSize
) -> None:
    maildirsize("alice", OVER)
    maildirsize("bob", OVER)
    path = real_authdaemon.socket_path
    recipients = ["x@example.org", "dave@courier.test", "bob@courier.test", "alice@courier.test"]
    decision = await run(path, recipients=recipients)
    assert decision.reply() == '421 User "bob" is over quota'
    decision = await run(path, recipients=["alice@courier.test", "bob@courier.test"])
    assert decision.reply() == '421 User "alice" is over quota'


async def test_same_user_twice(
    run: Run, real_authdaemon: RealAuthdaemon, maildirsize: MaildirSize
) -> None:
    maildirsize("alice", OVER)
    recipients = ["alice@courier.test", "alice@localhost", "carol@hosted.test"]
    decision = await run(real_authdaemon.socket_path, recipients=recipients)
    assert decision.reply() == '421 User "alice" is over quota'


@pytest.mark.parametrize(
    "content",
    [None, b"", b"garbage\n", b"1000S\n600 3\nbroken\n", b"1000S\n600 \xff\n"],
    ids=["missing", "empty", "garbage", "bad-line", "not-utf8"],
)
async def test_unusable_maildirsize_is_not_over_quota(
    run: Run, real_authdaemon: RealAuthdaemon, maildirsize: MaildirSize, content: bytes | None
) -> None:
    if content is not None:
        maildirsize("alice", content)
    assert await run(real_authdaemon.socket_path, recipients=["alice@courier.test"]) is CONTINUE


async def test_symlinked_maildirsize_is_not_followed(
    run: Run, real_authdaemon: RealAuthdaemon, maildirsize: MaildirSize, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.write_bytes(OVER)
    path = maildirsize("alice", b"")
    path.unlink()
    path.symlink_to(elsewhere)
    assert await run(real_authdaemon.socket_path, recipients=["alice@courier.test"]) is CONTINUE


async def test_fifo_maildirsize_does_not_block(
    run: Run, real_authdaemon: RealAuthdaemon, maildirsize: MaildirSize
) -> None:
    path = maildirsize("alice", b"")
    path.unlink()
    os.mkfifo(path)
    decision = await asyncio.wait_for(
        run(real_authdaemon.socket_path, recipients=["alice@courier.test"]), 5
    )
    assert decision is CONTINUE


async def test_unknown_recipient_is_logged_and_passes(
    run: Run, real_authdaemon: RealAuthdaemon, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, "courier_pyfilter.filters.quota"):
        decision = await run(real_authdaemon.socket_path, recipients=["nobody@courier.test"])
    assert decision is CONTINUE
    assert 'quota filter: authdaemon failed to look up "nobody"' in caplog.messages


async def test_non_local_recipients_need_no_lookup(run: Run, down: str) -> None:
    recipients = ["a@example.org", "b@example.net", "postmaster", '"john doe"@courier.test']
    assert await run(down, recipients=recipients) is CONTINUE


# -- authdaemond failures -----------------------------------------------------------------


def test_failure_reply_text() -> None:
    assert AUTHDAEMON_FAILURE.reply() == (
        "451 4.4.3 Cannot check the recipient's mailbox quota now, try again later"
    )


async def test_daemon_down(run: Run, down: str, caplog: pytest.LogCaptureFixture) -> None:
    assert await run(down, recipients=["alice@courier.test"]) == AUTHDAEMON_FAILURE
    assert "cannot look up recipient alice" in caplog.text


async def test_daemon_hangs(run: Run, fake_authdaemon: Fake) -> None:
    daemon = await fake_authdaemon(hang)
    decision = await asyncio.wait_for(run(daemon.path, recipients=["carol@hosted.test"]), 5)
    assert decision == AUTHDAEMON_FAILURE
    assert daemon.requests == [b"PRE . smtp carol@hosted.test\n"]


async def test_daemon_answers_garbage(run: Run, fake_authdaemon: Fake) -> None:
    daemon = await fake_authdaemon(answer(b"HOME /tmp\n.\n"))
    assert await run(daemon.path, recipients=["alice@courier.test"]) == AUTHDAEMON_FAILURE


async def test_recipient_order_decides_between_full_mailbox_and_failure(
    run: Run, fake_authdaemon: Fake, tmp_path: Path
) -> None:
    # "full" has a full mailbox; asking about "broken" gets garbage.
    home = tmp_path / "full"
    (home / "Maildir").mkdir(parents=True)
    (home / "Maildir" / "maildirsize").write_bytes(OVER)

    def reply(request: bytes) -> bytes:
        if request == b"PRE . smtp full\n":
            return f"HOME={home}\nADDRESS=full\n.\n".encode()
        return b"\x00garbage"

    daemon = await fake_authdaemon(answer(reply))
    first = await run(daemon.path, recipients=["full@courier.test", "broken@courier.test"])
    assert first.reply() == '421 User "full" is over quota'
    second = await run(daemon.path, recipients=["broken@courier.test", "full@courier.test"])
    assert second == AUTHDAEMON_FAILURE
    assert sorted(set(daemon.requests)) == [b"PRE . smtp broken\n", b"PRE . smtp full\n"]
