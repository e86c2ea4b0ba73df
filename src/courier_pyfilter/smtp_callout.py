"""SMTP call-back ("callout"): ask a domain's mail server whether it accepts an address.

This is the client the ``dialback`` filter uses to verify envelope senders.  It speaks
just enough SMTP to ask one question, and always ends the session politely::

    S: 220 mx.example.com ESMTP
    C: EHLO mx.example.org              (HELO when the server refuses EHLO)
    S: 250-mx.example.com ...
    C: MAIL FROM:<postmaster@example.org>
    S: 250 ok
    C: RCPT TO:<sender@example.com>
    S: 250 ok                           (or 550 no such user, or 451 try later)
    C: QUIT

Three layers, each usable alone:

* :class:`ReplyParser` - a sans-I/O parser turning bytes into :class:`SmtpReply` objects
  (multi-line replies, CRLF or bare LF, size limits, garbage detection).  It never does
  I/O, so it is tested with literal bytes.
* :class:`SmtpSession` - one connection over asyncio streams: :meth:`~SmtpSession.open`,
  :meth:`~SmtpSession.read_reply`, :meth:`~SmtpSession.command`, :meth:`~SmtpSession.quit`,
  :meth:`~SmtpSession.close`.  Every wait has a timeout; errors are :class:`SmtpError`
  subclasses.
* :func:`callout` - the whole conversation with one host (trying its addresses in order),
  bounded by a per-command timeout and an overall deadline, returning a
  :class:`CalloutResult` that says at which :class:`Stage` it ended and how
  (:class:`Outcome`).  It never raises for network trouble: that is an outcome too.

:class:`HostLimiter` caps the number of concurrent sessions per destination host, so a
burst of messages with forged senders of one domain cannot make this server hammer that
domain's mail servers.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import math
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

__all__ = [
    "DEFAULT_PORT",
    "MAX_LINES",
    "MAX_LINE_LENGTH",
    "QUIT_TIMEOUT",
    "CalloutResult",
    "HostLimiter",
    "Outcome",
    "ReplyParser",
    "SmtpClosed",
    "SmtpConnectError",
    "SmtpError",
    "SmtpProtocolError",
    "SmtpReply",
    "SmtpSession",
    "SmtpTimeout",
    "Stage",
    "callout",
    "ehlo_extensions",
    "resolve_literal",
]

DEFAULT_PORT = 25
MAX_LINE_LENGTH = 2048
"""Longest reply line accepted (RFC 5321 allows 512 octets; real servers stay below)."""
MAX_LINES = 100
"""Most lines accepted in one multi-line reply."""
QUIT_TIMEOUT = 5.0
"""Longest wait for the answer to ``QUIT`` (the verdict is known by then)."""
_READ_SIZE = 4096


# -- replies and the parser --------------------------------------------------------------------


class SmtpReply(NamedTuple):
    """One SMTP reply: its three-digit code and the text of each line (without codes)."""

    code: int
    lines: tuple[str, ...]

    @property
    def kind(self) -> int:
        """The first digit: 2 success, 3 intermediate, 4 temporary, 5 permanent failure."""
        return self.code // 100

    @property
    def text(self) -> str:
        """The lines joined by a space (for logs)."""
        return " ".join(self.lines)

    def __str__(self) -> str:
        last = len(self.lines) - 1
        return "\n".join(
            f"{self.code}{' ' if i == last else '-'}{line}" for i, line in enumerate(self.lines)
        )


class SmtpError(Exception):
    """The session failed: no usable reply (see the subclasses)."""

    log_traceback = False
    reason = "SMTP error"
    """A short, fixed description used in replies (``timed out``, ``malformed reply``...)."""


class SmtpTimeout(SmtpError):
    """No (complete) answer within the timeout or the deadline."""

    reason = "timed out"


class SmtpProtocolError(SmtpError):
    """The server sent something that is not an SMTP reply."""

    reason = "malformed reply"


class SmtpClosed(SmtpError):
    """The server closed or reset the connection."""

    reason = "connection closed"


class SmtpConnectError(SmtpError):
    """No connection could be made (refused, unreachable, no address)."""

    reason = "connection failed"

    def __init__(self, message: str, reason: str | None = None) -> None:
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class ReplyParser:
    """Sans-I/O parser of SMTP replies (RFC 5321 section 4.2).

    Feed it the bytes received; it returns the replies completed so far::

        >>> parser = ReplyParser()
        >>> parser.feed(b"250-mx.example.com\\r\\n250-SIZE 1000")
        []
        >>> parser.feed(b"\\r\\n250 HELP\\r\\n")
        [SmtpReply(code=250, lines=('mx.example.com', 'SIZE 1000', 'HELP'))]

    Lines end with CRLF or a bare LF.  A line is ``NNN``, ``NNN text`` or (not the last
    line of a reply) ``NNN-text``, with a first digit from 1 to 5; every line of one reply
    must carry the same code.  Anything else - a line without a code, a code that
    changes inside a reply, a line longer than ``max_line`` bytes, a reply of more than
    ``max_lines`` lines - raises :class:`SmtpProtocolError`, after which the parser is
    unusable (the session must be closed).  Text is decoded as UTF-8, invalid bytes
    replaced.
    """

    def __init__(self, max_line: int = MAX_LINE_LENGTH, max_lines: int = MAX_LINES) -> None:
        self.max_line = max_line
        self.max_lines = max_lines
        self._buffer = bytearray()
        self._code: int | None = None
        self._lines: list[str] = []
        self._broken: SmtpProtocolError | None = None

    @property
    def pending(self) -> bool:
        """True while a reply has started but is not complete (bytes or lines held)."""
        return bool(self._buffer) or bool(self._lines)

    def feed(self, data: bytes) -> list[SmtpReply]:
        """Add received bytes; return the replies they complete (possibly none)."""
        if self._broken is not None:
            raise self._broken
        self._buffer += data
        replies: list[SmtpReply] = []
        try:
            while True:
                end = self._buffer.find(b"\n")
                if end < 0:
                    if len(self._buffer) > self.max_line:
                        raise SmtpProtocolError(f"reply line longer than {self.max_line} bytes")
                    break
                raw = bytes(self._buffer[:end])
                del self._buffer[: end + 1]
                if raw.endswith(b"\r"):
                    raw = raw[:-1]
                reply = self._line(raw)
                if reply is not None:
                    replies.append(reply)
        except SmtpProtocolError as exc:
            self._broken = exc
            raise
        return replies

    def _line(self, raw: bytes) -> SmtpReply | None:
        if len(raw) > self.max_line:
            raise SmtpProtocolError(f"reply line longer than {self.max_line} bytes")
        code_text, sep = raw[:3], raw[3:4]
        if (
            len(code_text) != 3
            or not code_text.isdigit()
            or code_text[:1] not in b"12345"
            or sep not in (b"", b" ", b"-")
        ):
            raise SmtpProtocolError(f"not an SMTP reply line: {_show(raw)}")
        code = int(code_text)
        if self._code is not None and code != self._code:
            raise SmtpProtocolError(f"reply code changed from {self._code} to {code} mid-reply")
        self._lines.append(raw[4:].decode("utf-8", "replace"))
        if len(self._lines) > self.max_lines:
            raise SmtpProtocolError(f"reply longer than {self.max_lines} lines")
        if sep == b"-":
            self._code = code
            return None
        reply = SmtpReply(code, tuple(self._lines))
        self._code = None
        self._lines = []
        return reply


def _show(raw: bytes, limit: int = 60) -> str:
    text = repr(raw[:limit])
    return text + ("..." if len(raw) > limit else "")


def ehlo_extensions(reply: SmtpReply) -> frozenset[str]:
    """The ESMTP keywords an EHLO reply advertises, upper-cased (``{"SIZE", "SMTPUTF8"}``).

    The first line is the server's greeting name, not an extension.
    """
    return frozenset(
        line.split(None, 1)[0].upper() for line in reply.lines[1:] if line.split(None, 1)
    )


# -- one session ------------------------------------------------------------------------------


class SmtpSession:
    """One SMTP connection over asyncio streams.  Make it with :meth:`open`.

    Every method takes a ``timeout`` in seconds and raises :class:`SmtpTimeout` when it
    runs out, :class:`SmtpClosed` when the server closes or resets the connection and
    :class:`SmtpProtocolError` for garbage.  :meth:`close` never raises and may be called
    any number of times.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        parser: ReplyParser | None = None,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self._parser = parser or ReplyParser()
        self._replies: deque[SmtpReply] = deque()
        self.closed = False

    @classmethod
    async def open(cls, address: str, port: int, timeout: float) -> SmtpSession:
        """Connect to ``address`` (an IP address) and ``port`` within ``timeout`` seconds.

        Raises :class:`SmtpConnectError` (with ``reason`` ``connection refused``,
        ``timed out`` or the system's error text).
        """
        if timeout <= 0:
            raise SmtpConnectError(f"{address}: no time left to connect", "timed out")
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(
                    address, port, limit=MAX_LINE_LENGTH * 4
                )
        except TimeoutError:
            raise SmtpConnectError(f"{address}:{port}: connect timed out", "timed out") from None
        except ConnectionRefusedError:
            raise SmtpConnectError(
                f"{address}:{port}: connection refused", "connection refused"
            ) from None
        except OSError as exc:
            text = exc.strerror or type(exc).__name__
            raise SmtpConnectError(f"{address}:{port}: {text}", text.lower()) from None
        return cls(reader, writer)

    @property
    def local_address(self) -> str | None:
        """This side's IP address of the connection (for a HELO name from reverse DNS)."""
        sockname = self._writer.get_extra_info("sockname")
        if isinstance(sockname, tuple) and sockname:
            return str(sockname[0])
        return None

    @property
    def peer_address(self) -> str | None:
        """The server's IP address."""
        peer = self._writer.get_extra_info("peername")
        if isinstance(peer, tuple) and peer:
            return str(peer[0])
        return None

    async def read_reply(self, timeout: float) -> SmtpReply:
        """The next complete reply, waiting at most ``timeout`` seconds for it."""
        if self._replies:
            return self._replies.popleft()
        if self.closed:
            raise SmtpClosed("session is closed")
        if timeout <= 0:
            raise SmtpTimeout("no time left for a reply")
        try:
            async with asyncio.timeout(timeout):
                while not self._replies:
                    data = await self._reader.read(_READ_SIZE)
                    if not data:
                        raise SmtpClosed("connection closed by the server")
                    self._replies.extend(self._parser.feed(data))
        except TimeoutError:
            raise SmtpTimeout(f"no reply within {timeout:.3g} s") from None
        except (ConnectionError, OSError) as exc:
            raise SmtpClosed(f"connection lost: {exc}") from None
        return self._replies.popleft()

    async def send(self, line: str, timeout: float, *, utf8: bool = False) -> None:
        """Send one command line (CRLF is added).  ``utf8`` allows non-ASCII (SMTPUTF8)."""
        if "\r" in line or "\n" in line:
            raise ValueError(f"SMTP command must be one line: {line!r}")
        if self.closed:
            raise SmtpClosed("session is closed")
        if timeout <= 0:
            raise SmtpTimeout("no time left to send")
        data = line.encode("utf-8" if utf8 else "ascii") + b"\r\n"
        try:
            async with asyncio.timeout(timeout):
                self._writer.write(data)
                await self._writer.drain()
        except TimeoutError:
            raise SmtpTimeout("sending timed out") from None
        except (ConnectionError, OSError) as exc:
            raise SmtpClosed(f"connection lost: {exc}") from None

    async def command(self, line: str, timeout: float, *, utf8: bool = False) -> SmtpReply:
        """Send ``line`` and return the server's reply; both within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        end = loop.time() + timeout
        await self.send(line, timeout, utf8=utf8)
        return await self.read_reply(end - loop.time())

    async def quit(self, timeout: float) -> SmtpReply | None:
        """Send ``QUIT``, wait up to ``timeout`` for its reply, then close.  Never raises.

        With no time left the command is still written (without waiting for the answer).
        """
        reply: SmtpReply | None = None
        if not self.closed:
            try:
                if timeout > 0:
                    reply = await self.command("QUIT", timeout)
                else:
                    self._writer.write(b"QUIT\r\n")
            except (SmtpError, OSError):
                pass
        self.close()
        return reply

    def close(self) -> None:
        """Close the connection now (idempotent, never raises)."""
        if self.closed:
            return
        self.closed = True
        with contextlib.suppress(Exception):
            self._writer.close()


# -- one verification ------------------------------------------------------------------------


class Stage(enum.Enum):
    """Where a call-back ended; the value is the name used in replies."""

    CONNECT = "connect"
    GREETING = "greeting"
    HELO = "HELO"
    MAIL = "MAIL FROM"
    RCPT = "RCPT TO"


class Outcome(enum.Enum):
    """How a call-back ended."""

    ACCEPTED = "accepted"
    """``RCPT TO`` got a 2xx: the address exists."""
    REJECTED = "rejected"
    """``RCPT TO`` got a 5xx: the address does not exist."""
    UNKNOWN = "unknown"
    """``RCPT TO`` got anything else (a 4xx, 1xx, 3xx): no verdict."""
    REFUSED = "refused"
    """The greeting, ``EHLO``/``HELO`` or ``MAIL FROM`` did not get a 2xx."""
    FAILED = "failed"
    """No usable answer: no connection, a timeout, a reset, garbage."""


@dataclass(frozen=True, slots=True)
class CalloutResult:
    """The end of one call-back to one host."""

    host: str
    """The host name as given (the MX name)."""
    outcome: Outcome
    stage: Stage
    reply: SmtpReply | None = None
    """The server's reply that decided the outcome (None for FAILED)."""
    reason: str = ""
    """For FAILED: a short fixed text (``timed out``, ``connection refused``, ...)."""
    address: str | None = None
    """The address connected to (None when no connection was made)."""
    command: str = ""
    """The command the stage sent (``EHLO`` or ``HELO`` for :attr:`Stage.HELO`)."""
    detail: str = field(default="", compare=False)
    """A longer description of a failure, for logs."""


HeloName = str | Callable[[SmtpSession], Awaitable[str]]
"""The EHLO/HELO name, or a coroutine function computing it from the open session."""


async def callout(
    host: str,
    addresses: Sequence[str],
    *,
    rcpt: str,
    mail_from: str,
    helo: HeloName,
    port: int = DEFAULT_PORT,
    command_timeout: float = 30.0,
    deadline: float | None = None,
    ehlo: bool = True,
    quit_timeout: float = QUIT_TIMEOUT,
) -> CalloutResult:
    """Ask ``host`` whether it accepts mail for ``rcpt``; never raises for network errors.

    ``addresses`` are tried in order until one accepts the connection.  Each step
    (connect, each reply) may take ``command_timeout`` seconds, and nothing runs past
    ``deadline`` (a time of the running loop's clock, ``loop.time()``).  ``mail_from``
    ``""`` sends the null sender ``MAIL FROM:<>``.  With ``ehlo`` the client greets with
    ``EHLO`` and falls back to ``HELO`` when the server answers ``5xx``; without, it
    sends ``HELO`` only.  A non-ASCII ``rcpt`` or ``mail_from`` needs the server's
    ``SMTPUTF8`` extension (after ``EHLO``); without it the result is FAILED at
    :attr:`Stage.MAIL` with the reason ``no SMTPUTF8 support``.

    A session that got an answer to every command ends with ``QUIT`` (answer awaited at
    most ``quit_timeout`` seconds); after a timeout, reset or garbage the connection is
    simply closed.  Cancelling the call closes the connection too.
    """
    loop = asyncio.get_running_loop()
    end = math.inf if deadline is None else deadline

    def left() -> float:
        return min(command_timeout, end - loop.time())

    def failed(
        stage: Stage, exc: SmtpError, address: str | None, command: str = ""
    ) -> CalloutResult:
        return CalloutResult(
            host, Outcome.FAILED, stage, None, exc.reason, address, command, detail=str(exc)
        )

    if not addresses:
        return CalloutResult(host, Outcome.FAILED, Stage.CONNECT, reason="no address")
    session: SmtpSession | None = None
    last_error: SmtpConnectError | None = None
    for address in addresses:
        try:
            session = await SmtpSession.open(address, port, left())
            break
        except SmtpConnectError as exc:
            last_error = exc
            if end - loop.time() <= 0:
                break
    if session is None:
        assert last_error is not None
        return failed(Stage.CONNECT, last_error, None)

    address = session.peer_address or addresses[0]
    stage, command = Stage.GREETING, ""
    healthy = False
    try:
        greeting = await session.read_reply(left())
        if greeting.kind != 2:
            healthy = True
            return CalloutResult(host, Outcome.REFUSED, stage, greeting, address=address)
        stage = Stage.HELO
        name = helo if isinstance(helo, str) else await helo(session)
        command = "EHLO" if ehlo else "HELO"
        reply = await session.command(f"{command} {name}", left())
        extensions: frozenset[str] = frozenset()
        if reply.kind == 2 and ehlo:
            extensions = ehlo_extensions(reply)
        elif reply.kind == 5 and ehlo:
            command = "HELO"
            reply = await session.command(f"HELO {name}", left())
        if reply.kind != 2:
            healthy = True
            return CalloutResult(
                host, Outcome.REFUSED, stage, reply, address=address, command=command
            )
        stage, command = Stage.MAIL, "MAIL FROM"
        utf8 = not (rcpt.isascii() and mail_from.isascii())
        if utf8 and "SMTPUTF8" not in extensions:
            healthy = True
            return CalloutResult(
                host,
                Outcome.FAILED,
                stage,
                reason="no SMTPUTF8 support",
                address=address,
                command=command,
                detail="the address is not ASCII and the server does not offer SMTPUTF8",
            )
        params = " SMTPUTF8" if utf8 else ""
        reply = await session.command(f"MAIL FROM:<{mail_from}>{params}", left(), utf8=utf8)
        if reply.kind != 2:
            healthy = True
            return CalloutResult(
                host, Outcome.REFUSED, stage, reply, address=address, command=command
            )
        stage, command = Stage.RCPT, "RCPT TO"
        reply = await session.command(f"RCPT TO:<{rcpt}>", left(), utf8=utf8)
        healthy = True
        if reply.kind == 2:
            outcome = Outcome.ACCEPTED
        elif reply.kind == 5:
            outcome = Outcome.REJECTED
        else:
            outcome = Outcome.UNKNOWN
        return CalloutResult(host, outcome, stage, reply, address=address, command=command)
    except SmtpError as exc:
        return failed(stage, exc, address, command)
    finally:
        try:
            if healthy and not session.closed:
                await session.quit(min(quit_timeout, left()))
        finally:
            session.close()


# -- concurrency per destination -------------------------------------------------------------


class HostLimiter:
    """At most ``limit`` concurrent sessions per destination host.

    ::

        limiter = HostLimiter(4)
        async with limiter.slot("mx.example.com", timeout=10):
            ...

    Waiting for a slot is bounded by ``timeout`` (:class:`SmtpTimeout` when it runs
    out).  Hosts are compared case-insensitively; idle hosts take no memory.
    """

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, not {limit}")
        self.limit = limit
        self._slots: dict[str, tuple[asyncio.Semaphore, list[int]]] = {}

    def active(self, host: str) -> int:
        """Sessions holding or waiting for a slot of ``host``."""
        entry = self._slots.get(host.lower())
        return 0 if entry is None else entry[1][0]

    @contextlib.asynccontextmanager
    async def slot(self, host: str, timeout: float) -> AsyncIterator[None]:
        """Hold one of ``host``'s slots for the ``async with`` block."""
        key = host.lower()
        entry = self._slots.get(key)
        if entry is None:
            entry = (asyncio.Semaphore(self.limit), [0])
            self._slots[key] = entry
        semaphore, users = entry
        users[0] += 1
        try:
            try:
                if timeout <= 0:
                    raise TimeoutError
                async with asyncio.timeout(timeout):
                    await semaphore.acquire()
            except TimeoutError:
                raise SmtpTimeout(
                    f"{host}: all {self.limit} connection slots stayed busy"
                ) from None
            try:
                yield
            finally:
                semaphore.release()
        finally:
            users[0] -= 1
            if users[0] == 0:
                self._slots.pop(key, None)


def resolve_literal(domain: str) -> str | None:
    """The IP address of an address-literal domain (``[192.0.2.1]``, ``[IPv6:2001:db8::1]``),
    or None when ``domain`` is not an address literal or not a valid one."""
    if not (domain.startswith("[") and domain.endswith("]")):
        return None
    inner = domain[1:-1]
    family = socket.AF_INET
    if inner[:5].lower() == "ipv6:":
        inner, family = inner[5:], socket.AF_INET6
    try:
        socket.inet_pton(family, inner)
    except (OSError, ValueError):
        return None
    return inner
