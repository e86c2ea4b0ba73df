"""The SMTP call-back client: the sans-I/O reply parser with literal bytes, one session
and the whole conversation against scripted servers on 127.0.0.1 (well-behaved, slow,
hanging, resetting, talking garbage), deadlines, QUIT, and the per-host limiter.

:class:`FakeMX` and :func:`smtp_script` are reused by ``tests/filters/test_filters_dialback.py``.
"""

from __future__ import annotations

import asyncio
import doctest
import socket
import struct
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

import courier_pyfilter.smtp_callout as callout_module
from courier_pyfilter.smtp_callout import (
    CalloutResult,
    HostLimiter,
    Outcome,
    ReplyParser,
    SmtpClosed,
    SmtpConnectError,
    SmtpProtocolError,
    SmtpReply,
    SmtpSession,
    SmtpTimeout,
    Stage,
    callout,
    ehlo_extensions,
    resolve_literal,
)

# -- a scriptable SMTP server ------------------------------------------------------------------

HANG = object()
"""Action: never answer (the client must time out)."""
RESET = object()
"""Action: reset the connection (TCP RST)."""
CLOSE = object()
"""Action: close the connection without a word."""

Action = Any  # str (a reply; "\n" separates lines), bytes (raw), HANG, RESET or CLOSE


class Conn:
    """One client connection of a :class:`FakeMX`."""

    def __init__(self, mx: FakeMX, reader: asyncio.StreamReader, writer: asyncio.StreamWriter):
        self.mx = mx
        self.reader = reader
        self.writer = writer
        self.lines: list[str] = []
        self.eof = False

    async def readline(self) -> str | None:
        """The next command line (recorded), None at end of file or on a reset."""
        try:
            raw = await self.reader.readline()
        except (ConnectionError, OSError):
            raw = b""
        if not raw:
            self.eof = True
            return None
        line = raw.rstrip(b"\r\n").decode("utf-8", "replace")
        self.lines.append(line)
        self.mx.lines.append(line)
        return line

    async def act(self, action: Action) -> bool:
        """Perform ``action``; False when the connection is gone afterwards."""
        if action is HANG:
            await asyncio.Event().wait()
        if action is RESET:
            self.reset()
            return False
        if action is CLOSE:
            self.writer.close()
            return False
        data = (
            action if isinstance(action, bytes) else action.replace("\n", "\r\n").encode() + b"\r\n"
        )
        try:
            self.writer.write(data)
            await self.writer.drain()
        except (ConnectionError, OSError):
            return False
        return True

    def reset(self) -> None:
        """Close with SO_LINGER 0: the client sees a connection reset."""
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.writer.transport.abort()


Handler = Callable[[Conn], Awaitable[None]]


def smtp_script(
    *,
    greeting: Action = "220 mx.test ESMTP",
    ehlo: Action = "250-mx.test\n250-SIZE 1000000\n250 HELP",
    helo: Action = "250 mx.test",
    mail: Action = "250 2.1.0 Ok",
    rcpt: Action = "250 2.1.5 Ok",
    quit: Action = "221 2.0.0 Bye",
) -> Handler:
    """A server answering each command with the given action (see :class:`Conn.act`)."""
    actions = {"EHLO": ehlo, "HELO": helo, "MAIL": mail, "RCPT": rcpt, "QUIT": quit}

    async def handler(conn: Conn) -> None:
        if not await conn.act(greeting):
            return
        while True:
            line = await conn.readline()
            if line is None:
                return
            verb = line.split(" ", 1)[0].split(":", 1)[0].upper()
            if not await conn.act(actions.get(verb, "500 5.5.2 Unknown command")):
                return
            if verb == "QUIT":
                conn.writer.close()
                return

    return handler


class FakeMX:
    """A raw SMTP server on ``host`` (a free port unless given) running ``handler`` per
    connection; :attr:`lines` records every command line received."""

    def __init__(self, handler: Handler, host: str = "127.0.0.1", port: int = 0) -> None:
        self.handler = handler
        self.host = host
        self.port = port
        self.lines: list[str] = []
        self.conns: list[Conn] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None

    async def start(self) -> FakeMX:
        self._server = await asyncio.start_server(self._client, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def _client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        conn = Conn(self, reader, writer)
        self.conns.append(conn)
        try:
            await self.handler(conn)
        except asyncio.CancelledError:
            pass
        finally:
            writer.close()
            self._tasks.discard(task)

    async def wait_eof(self, timeout: float = 2.0) -> None:
        """Read until every connection has seen end of file (the client closed)."""
        async with asyncio.timeout(timeout):
            for conn in self.conns:
                while not conn.eof:
                    await conn.readline()

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()

    async def __aenter__(self) -> FakeMX:
        return await self.start()

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on (connections to it are refused)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def run(mx: FakeMX, **kwargs: Any) -> CalloutResult:
    """:func:`callout` to ``mx`` with test defaults."""
    args: dict[str, Any] = {
        "rcpt": "sender@dialback.test",
        "mail_from": "postmaster@courier.test",
        "helo": "courier.test",
        "port": mx.port,
        "command_timeout": 2.0,
    }
    args.update(kwargs)
    return await callout("mx1.dialback.test", [mx.host], **args)


# -- the parser --------------------------------------------------------------------------------


def test_module_doctests() -> None:
    assert doctest.testmod(callout_module).failed == 0


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"250 Ok\r\n", [SmtpReply(250, ("Ok",))]),
        (b"250 Ok\n", [SmtpReply(250, ("Ok",))]),  # bare LF
        (b"250\r\n", [SmtpReply(250, ("",))]),  # code only
        (b"221 \r\n", [SmtpReply(221, ("",))]),
        (b"550 5.1.1  two  spaces \r\n", [SmtpReply(550, ("5.1.1  two  spaces ",))]),
        (
            b"250-mx.example\r\n250-PIPELINING\r\n250 SMTPUTF8\r\n",
            [SmtpReply(250, ("mx.example", "PIPELINING", "SMTPUTF8"))],
        ),
        (b"250 a\r\n451 b\r\n", [SmtpReply(250, ("a",)), SmtpReply(451, ("b",))]),
        (b"250-\r\n250 x\r\n", [SmtpReply(250, ("", "x"))]),
        (b"554 caf\xc3\xa9 \xff\r\n", [SmtpReply(554, ("caf\u00e9 \ufffd",))]),
        (b"250 Ok", []),  # incomplete: no line end yet
    ],
)
def test_parser_replies(data: bytes, expected: list[SmtpReply]) -> None:
    assert ReplyParser().feed(data) == expected


def test_parser_byte_by_byte() -> None:
    data = b"220-mx.example ESMTP\r\n220-second\r\n220 third\r\n250 next\n"
    parser = ReplyParser()
    replies: list[SmtpReply] = []
    for i in range(len(data)):
        completed = parser.feed(data[i : i + 1])
        assert parser.pending is not bool(completed)  # nothing held right after a reply
        replies += completed
    assert replies == [
        SmtpReply(220, ("mx.example ESMTP", "second", "third")),
        SmtpReply(250, ("next",)),
    ]
    assert not parser.pending


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"hello there\r\n", "not an SMTP reply"),
        (b"\r\n", "not an SMTP reply"),
        (b"25 short\r\n", "not an SMTP reply"),
        (b"2500 long code\r\n", "not an SMTP reply"),
        (b"250_x\r\n", "not an SMTP reply"),
        (b"650 bad class\r\n", "not an SMTP reply"),
        (b"050 bad class\r\n", "not an SMTP reply"),
        (b"-250 x\r\n", "not an SMTP reply"),
        (b"\x00\x01\x02garbage\r\n", "not an SMTP reply"),
        (b"250-a\r\n550 b\r\n", "changed from 250 to 550"),
        (b"250-a\r\n", None),  # fine so far: incomplete
    ],
)
def test_parser_garbage(data: bytes, message: str | None) -> None:
    parser = ReplyParser()
    if message is None:
        assert parser.feed(data) == []
        assert parser.pending
        return
    with pytest.raises(SmtpProtocolError, match=message):
        parser.feed(data)
    # broken for good: the session must be dropped
    with pytest.raises(SmtpProtocolError):
        parser.feed(b"250 Ok\r\n")


def test_parser_limits() -> None:
    with pytest.raises(SmtpProtocolError, match="longer than 10 bytes"):
        ReplyParser(max_line=10).feed(b"250 " + b"x" * 20)  # no line end: buffer bound
    with pytest.raises(SmtpProtocolError, match="longer than 10 bytes"):
        ReplyParser(max_line=10).feed(b"250 " + b"x" * 20 + b"\r\n")
    assert ReplyParser(max_line=10).feed(b"250 xxxxxx\r\n") == [SmtpReply(250, ("xxxxxx",))]
    with pytest.raises(SmtpProtocolError, match="longer than 3 lines"):
        ReplyParser(max_lines=3).feed(b"250-a\r\n" * 3 + b"250 b\r\n")
    assert ReplyParser(max_lines=3).feed(b"250-a\r\n" * 2 + b"250 b\r\n") == [
        SmtpReply(250, ("a", "a", "b"))
    ]


def test_reply_helpers() -> None:
    reply = SmtpReply(250, ("mx.example", "SIZE 100", "smtputf8", "8BITMIME", ""))
    assert reply.kind == 2
    assert str(reply) == "250-mx.example\n250-SIZE 100\n250-smtputf8\n250-8BITMIME\n250 "
    assert ehlo_extensions(reply) == {"SIZE", "SMTPUTF8", "8BITMIME"}
    assert ehlo_extensions(SmtpReply(250, ("only the greeting name",))) == frozenset()
    assert SmtpReply(451, ("a", "b")).text == "a b"
    assert str(SmtpReply(550, ("no",))) == "550 no"


@pytest.mark.parametrize(
    ("domain", "address"),
    [
        ("[192.0.2.1]", "192.0.2.1"),
        ("[IPv6:2001:db8::1]", "2001:db8::1"),
        ("[ipv6:::1]", "::1"),
        ("[192.0.2.256]", None),
        ("[2001:db8::1]", None),  # IPv6 literals need the IPv6: tag
        ("[IPv6:192.0.2.1]", None),
        ("example.com", None),
        ("[example.com]", None),
        ("[]", None),
    ],
)
def test_resolve_literal(domain: str, address: str | None) -> None:
    assert resolve_literal(domain) == address


# -- one session -------------------------------------------------------------------------------


async def test_session_basics() -> None:
    async with FakeMX(smtp_script(greeting="220-first\n220 second")) as mx:
        session = await SmtpSession.open("127.0.0.1", mx.port, 1.0)
        try:
            assert session.local_address == "127.0.0.1"
            assert session.peer_address == "127.0.0.1"
            assert await session.read_reply(1.0) == SmtpReply(220, ("first", "second"))
            reply = await session.command("EHLO me", 1.0)
            assert reply.code == 250 and reply.lines[0] == "mx.test"
            with pytest.raises(ValueError, match="one line"):
                await session.send("RCPT TO:<a@b>\r\nDATA", 1.0)
            with pytest.raises(UnicodeEncodeError):
                await session.send("RCPT TO:<j\u00f6rg@b>", 1.0)  # not without utf8=True
            assert await session.quit(1.0) == SmtpReply(221, ("2.0.0 Bye",))
        finally:
            session.close()
        assert session.closed
        session.close()  # idempotent
        with pytest.raises(SmtpClosed):
            await session.read_reply(1.0)
        with pytest.raises(SmtpClosed):
            await session.send("NOOP", 1.0)
        await mx.wait_eof()
    assert mx.lines == ["EHLO me", "QUIT"]


async def test_session_errors() -> None:
    port = free_port()
    with pytest.raises(SmtpConnectError) as info:
        await SmtpSession.open("127.0.0.1", port, 1.0)
    assert info.value.reason == "connection refused"
    with pytest.raises(SmtpConnectError) as info:
        await SmtpSession.open("127.0.0.1", port, 0)
    assert info.value.reason == "timed out"

    async with FakeMX(smtp_script(greeting=HANG)) as mx:
        session = await SmtpSession.open("127.0.0.1", mx.port, 1.0)
        t0 = time.monotonic()
        with pytest.raises(SmtpTimeout):
            await session.read_reply(0.2)
        assert 0.15 < time.monotonic() - t0 < 0.6
        with pytest.raises(SmtpTimeout):
            await session.read_reply(0)
        session.close()

    async with FakeMX(smtp_script(greeting=b"220 fine\r\nHTTP/1.1 400 Bad\r\n")) as mx:
        session = await SmtpSession.open("127.0.0.1", mx.port, 1.0)
        with pytest.raises(SmtpProtocolError):
            # the garbage arrives with the greeting: the parser fails on that chunk
            await session.read_reply(1.0)
        session.close()


async def test_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    async def never(*args: Any, **kwargs: Any) -> Any:
        await asyncio.Event().wait()

    monkeypatch.setattr(asyncio, "open_connection", never)
    t0 = time.monotonic()
    with pytest.raises(SmtpConnectError) as info:
        await SmtpSession.open("192.0.2.1", 25, 0.2)
    assert info.value.reason == "timed out"
    assert time.monotonic() - t0 < 0.6


# -- whole call-backs --------------------------------------------------------------------------


async def test_accepted_with_quit() -> None:
    async with FakeMX(smtp_script()) as mx:
        result = await run(mx)
        await mx.wait_eof()
    assert result == CalloutResult(
        "mx1.dialback.test",
        Outcome.ACCEPTED,
        Stage.RCPT,
        SmtpReply(250, ("2.1.5 Ok",)),
        address="127.0.0.1",
        command="RCPT TO",
    )
    assert mx.lines == [
        "EHLO courier.test",
        "MAIL FROM:<postmaster@courier.test>",
        "RCPT TO:<sender@dialback.test>",
        "QUIT",
    ]


@pytest.mark.parametrize(
    ("rcpt", "outcome"),
    [
        ("550 5.1.1 No such user", Outcome.REJECTED),
        ("553-5.1.1 multi\n553 5.1.1 line", Outcome.REJECTED),
        ("450 4.2.0 Mailbox busy", Outcome.UNKNOWN),
        ("451-4.3.0 greylisted\n451 4.3.0 come back", Outcome.UNKNOWN),
        ("354 what?", Outcome.UNKNOWN),
        ("251 will forward", Outcome.ACCEPTED),
    ],
)
async def test_rcpt_replies(rcpt: str, outcome: Outcome) -> None:
    async with FakeMX(smtp_script(rcpt=rcpt)) as mx:
        result = await run(mx)
        await mx.wait_eof()
    assert result.outcome is outcome
    assert result.stage is Stage.RCPT
    assert result.reply is not None and str(result.reply) == rcpt
    assert mx.lines[-1] == "QUIT"  # the original left these sessions open


async def test_null_sender_and_helo_callable() -> None:
    seen: list[str | None] = []

    async def helo(session: SmtpSession) -> str:
        seen.append(session.local_address)
        return "rdns.courier.test"

    async with FakeMX(smtp_script()) as mx:
        result = await run(mx, mail_from="", helo=helo)
    assert result.outcome is Outcome.ACCEPTED
    assert seen == ["127.0.0.1"]
    assert mx.lines[:2] == ["EHLO rdns.courier.test", "MAIL FROM:<>"]


async def test_ehlo_refused_falls_back_to_helo() -> None:
    async with FakeMX(smtp_script(ehlo="502 5.5.1 EHLO not implemented")) as mx:
        result = await run(mx)
    assert result.outcome is Outcome.ACCEPTED
    assert mx.lines[:3] == [
        "EHLO courier.test",
        "HELO courier.test",
        "MAIL FROM:<postmaster@courier.test>",
    ]


async def test_helo_only() -> None:
    async with FakeMX(smtp_script(ehlo="250 should not be used")) as mx:
        result = await run(mx, ehlo=False)
    assert result.outcome is Outcome.ACCEPTED
    assert mx.lines[0] == "HELO courier.test"


@pytest.mark.parametrize(
    ("script", "stage", "command", "code"),
    [
        ({"greeting": "554 5.7.1 go away"}, Stage.GREETING, "", 554),
        ({"greeting": "421 busy"}, Stage.GREETING, "", 421),
        ({"ehlo": "421 4.3.2 shutting down"}, Stage.HELO, "EHLO", 421),
        ({"ehlo": "500 no", "helo": "550 not you"}, Stage.HELO, "HELO", 550),
        ({"mail": "550 5.7.1 postmaster not welcome"}, Stage.MAIL, "MAIL FROM", 550),
        ({"mail": "451 later"}, Stage.MAIL, "MAIL FROM", 451),
    ],
)
async def test_refused_before_rcpt(
    script: dict[str, Any], stage: Stage, command: str, code: int
) -> None:
    async with FakeMX(smtp_script(**script)) as mx:
        result = await run(mx)
        await mx.wait_eof()
    assert (result.outcome, result.stage, result.command) == (Outcome.REFUSED, stage, command)
    assert result.reply is not None and result.reply.code == code
    assert mx.lines[-1] == "QUIT"
    assert not any(line.startswith("RCPT") for line in mx.lines)


async def test_smtputf8() -> None:
    ehlo = "250-mx.test\n250 SMTPUTF8"
    async with FakeMX(smtp_script(ehlo=ehlo)) as mx:
        result = await run(mx, rcpt="j\u00f6rg@dialback.test")
    assert result.outcome is Outcome.ACCEPTED
    assert mx.lines[1:3] == [
        "MAIL FROM:<postmaster@courier.test> SMTPUTF8",
        "RCPT TO:<j\u00f6rg@dialback.test>",
    ]
    async with FakeMX(smtp_script()) as mx:  # no SMTPUTF8 offered
        result = await run(mx, rcpt="j\u00f6rg@dialback.test")
        await mx.wait_eof()
    assert (result.outcome, result.stage, result.reason) == (
        Outcome.FAILED,
        Stage.MAIL,
        "no SMTPUTF8 support",
    )
    assert mx.lines == ["EHLO courier.test", "QUIT"]


@pytest.mark.parametrize(
    ("script", "stage"),
    [
        ({"greeting": HANG}, Stage.GREETING),
        ({"ehlo": HANG}, Stage.HELO),
        ({"mail": HANG}, Stage.MAIL),
        ({"rcpt": HANG}, Stage.RCPT),
    ],
)
async def test_hanging_server_times_out(script: dict[str, Any], stage: Stage) -> None:
    async with FakeMX(smtp_script(**script)) as mx:
        t0 = time.monotonic()
        result = await run(mx, command_timeout=0.25)
        elapsed = time.monotonic() - t0
        await mx.wait_eof()  # the client closed the connection
    assert (result.outcome, result.stage, result.reason) == (Outcome.FAILED, stage, "timed out")
    assert 0.2 < elapsed < 0.8
    assert "QUIT" not in mx.lines  # nobody listens: just close


async def test_deadline_bounds_the_whole_conversation() -> None:
    slow = "250 slow"

    async def handler(conn: Conn) -> None:
        await conn.act("220 slow server")
        while (line := await conn.readline()) is not None:
            await asyncio.sleep(0.15)  # every answer is late, but within command_timeout
            if not await conn.act("221 bye" if line == "QUIT" else slow):
                return

    async with FakeMX(handler) as mx:
        loop = asyncio.get_running_loop()
        t0 = time.monotonic()
        result = await run(mx, command_timeout=1.0, deadline=loop.time() + 0.4)
        elapsed = time.monotonic() - t0
    assert result.outcome is Outcome.FAILED and result.reason == "timed out"
    assert result.stage in (Stage.MAIL, Stage.RCPT)
    assert 0.35 < elapsed < 0.8


@pytest.mark.parametrize(
    ("script", "stage", "reason"),
    [
        ({"greeting": CLOSE}, Stage.GREETING, "connection closed"),
        ({"greeting": RESET}, Stage.GREETING, "connection closed"),
        ({"ehlo": RESET}, Stage.HELO, "connection closed"),
        ({"mail": CLOSE}, Stage.MAIL, "connection closed"),
        ({"rcpt": RESET}, Stage.RCPT, "connection closed"),
        ({"greeting": "SSH-2.0-OpenSSH_9.6"}, Stage.GREETING, "malformed reply"),
        ({"ehlo": b"250-ok\r\n550 changed\r\n"}, Stage.HELO, "malformed reply"),
        (
            {"rcpt": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\n"},
            Stage.RCPT,
            "malformed reply",
        ),
        ({"rcpt": b"2" * 5000}, Stage.RCPT, "malformed reply"),
    ],
)
async def test_broken_servers(script: dict[str, Any], stage: Stage, reason: str) -> None:
    async with FakeMX(smtp_script(**script)) as mx:
        t0 = time.monotonic()
        result = await run(mx, command_timeout=1.0)
        assert time.monotonic() - t0 < 0.5  # no waiting for a timeout
    assert (result.outcome, result.stage, result.reason) == (Outcome.FAILED, stage, reason)
    assert result.reply is None and result.detail
    assert "QUIT" not in mx.lines


async def test_addresses_are_tried_in_order() -> None:
    async with FakeMX(smtp_script()) as mx:
        result = await callout(
            "mx1.dialback.test",
            ["127.0.0.2", "127.0.0.1"],  # nobody listens on 127.0.0.2: refused
            rcpt="a@dialback.test",
            mail_from="",
            helo="h",
            port=mx.port,
        )
    assert result.outcome is Outcome.ACCEPTED
    assert result.address == "127.0.0.1"


async def test_connect_failures() -> None:
    port = free_port()
    result = await callout(
        "mx1.dialback.test", ["127.0.0.1"], rcpt="a@b.test", mail_from="", helo="h", port=port
    )
    assert (result.outcome, result.stage, result.reason) == (
        Outcome.FAILED,
        Stage.CONNECT,
        "connection refused",
    )
    assert result.address is None
    result = await callout("mx.test", [], rcpt="a@b.test", mail_from="", helo="h")
    assert (result.outcome, result.stage, result.reason) == (
        Outcome.FAILED,
        Stage.CONNECT,
        "no address",
    )


async def test_cancelling_closes_the_connection() -> None:
    async with FakeMX(smtp_script(rcpt=HANG)) as mx:
        task = asyncio.create_task(run(mx, command_timeout=10))
        for _ in range(100):
            await asyncio.sleep(0.01)
            if any(line.startswith("RCPT") for line in mx.lines):
                break
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await mx.wait_eof(timeout=1.0)
    assert mx.conns[0].eof


async def test_slow_quit_does_not_delay_the_verdict() -> None:
    async with FakeMX(smtp_script(quit=HANG)) as mx:
        t0 = time.monotonic()
        result = await run(mx, quit_timeout=0.2)
        elapsed = time.monotonic() - t0
    assert result.outcome is Outcome.ACCEPTED
    assert elapsed < 0.6
    assert mx.lines[-1] == "QUIT"


# -- the per-host limiter ----------------------------------------------------------------------


async def test_host_limiter() -> None:
    limiter = HostLimiter(2)
    release = asyncio.Event()
    inside = 0
    peak = 0

    async def user(host: str) -> None:
        nonlocal inside, peak
        async with limiter.slot(host, timeout=5):
            inside += 1
            peak = max(peak, inside)
            await release.wait()
            inside -= 1

    tasks = [asyncio.create_task(user("MX.example")) for _ in range(3)]
    other = asyncio.create_task(user("mx.other"))
    await asyncio.sleep(0.05)
    assert inside == 3  # two of mx.example, one of mx.other
    assert limiter.active("mx.example") == 3  # two inside, one waiting
    t0 = time.monotonic()
    with pytest.raises(SmtpTimeout, match="slots stayed busy"):
        async with limiter.slot("mx.EXAMPLE", timeout=0.1):
            pass
    assert 0.08 < time.monotonic() - t0 < 0.5
    with pytest.raises(SmtpTimeout):
        async with limiter.slot("mx.example", timeout=0):
            pass
    release.set()
    await asyncio.gather(*tasks, other)
    assert peak == 3
    assert limiter.active("mx.example") == 0
    assert limiter._slots == {}  # idle hosts take no memory
    with pytest.raises(ValueError):
        HostLimiter(0)
