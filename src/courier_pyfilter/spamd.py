"""A small asyncio client for SpamAssassin's spamd (the SPAMC/SPAMD 1.5 protocol).

This is the service client behind the ``spamassassin`` filter; other filters may use it
too.  Get the shared client of a filter's configuration with :func:`spamd_client`::

    from courier_pyfilter.spamd import SpamdError, spamd_client

    client = await spamd_client(ctx)        # one client per address/timeout/cap
    result = await client.headers(await message.raw(), user="filter")
    result.verdict.is_spam, result.verdict.score, result.body   # body: new header block

Each request opens one connection (spamd answers one request per connection), sends the
request, reads the answer to the end and closes.  The client owns three safeguards:

* a **timeout** per request (``spamd_timeout``, default 30 s) covering everything — the
  wait for a free slot, connecting, sending and reading the answer;
* a **concurrency cap** (``spamd_max_concurrency``, default 5 like Debian's spamd
  ``--max-children``): further requests wait for a slot instead of piling up in spamd's
  listen queue;
* an **error model**: every failure is a :class:`SpamdError` —
  :class:`SpamdConnectionError` (nothing listening, connection reset or closed before an
  answer), :class:`SpamdTimeout`, :class:`SpamdProtocolError` (an answer that is not
  SPAMD/1.x, a truncated body, a missing ``Spam:`` header, an oversized answer) and
  :class:`SpamdServerError` (spamd answered with a non-zero ``EX_*`` status).  Filters
  turn them into their failure action; nothing here ever looks like "not spam".

Sockets are always closed, also when the caller is cancelled or the timeout expires
(connections that did not complete normally are aborted, so a hung spamd cannot keep
them open).  The answer is read with a size cap, so a babbling server cannot exhaust
memory.

Why not aiospamc (which the project considered first): its total timeout leaves the
socket open (a ``ResourceWarning`` per timeout, file descriptors held while spamd hangs),
it reads the answer without a size limit, and it has no concurrency cap; the protocol is
small enough that the parsing functions here (:func:`build_request`,
:func:`parse_response`, :func:`parse_spam_header`) are tested directly with literal bytes.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Context

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_MAX_CONCURRENCY",
    "DEFAULT_PORT",
    "DEFAULT_TIMEOUT",
    "PROTOCOL_VERSION",
    "ScanResult",
    "SpamVerdict",
    "SpamdAddress",
    "SpamdClient",
    "SpamdConfig",
    "SpamdConnectionError",
    "SpamdError",
    "SpamdProtocolError",
    "SpamdResponse",
    "SpamdServerError",
    "SpamdTimeout",
    "build_request",
    "parse_address",
    "parse_response",
    "parse_spam_header",
    "spamd_client",
]

DEFAULT_PORT = 783
"""spamd's registered port (what ``spamc`` uses when given no ``-p``)."""

DEFAULT_ADDRESS = "127.0.0.1:783"
"""Where Debian's spamd listens by default."""

DEFAULT_TIMEOUT = 30.0
"""Seconds per request, slot wait included (aiospamc's default would be 600)."""

DEFAULT_MAX_CONCURRENCY = 5
"""Requests in flight per client: Debian's spamd runs ``--max-children 5``."""

PROTOCOL_VERSION = "1.5"
"""The SPAMC protocol version sent (1.3 and later answer with a ``Spam:`` header)."""

VERBS = frozenset({"CHECK", "SYMBOLS", "REPORT", "REPORT_IFSPAM", "HEADERS", "PROCESS", "PING"})
"""Request verbs this client can send."""

_READ_CHUNK = 65536
_MIN_RESPONSE_CAP = 1 << 20


# -- errors ---------------------------------------------------------------------------------


class SpamdError(Exception):
    """A spamd request failed; the message was not scanned."""

    log_traceback = False  # the chain logs one line: the message says what failed


class SpamdConnectionError(SpamdError):
    """spamd could not be reached, or the connection broke before a complete answer."""


class SpamdTimeout(SpamdError):
    """No complete answer within the client's timeout (slot wait included)."""


class SpamdProtocolError(SpamdError):
    """spamd's answer is not a valid SPAMD/1.x response (garbage, truncated, too big)."""


class SpamdServerError(SpamdError):
    """spamd answered with a non-zero status (``EX_PROTOCOL``, ``EX_UNAVAILABLE``, ...)."""

    def __init__(self, message: str, code: int, status_text: str) -> None:
        super().__init__(message)
        self.code = code
        """The ``EX_*`` status number spamd sent."""
        self.status_text = status_text
        """The text after the number on spamd's status line."""


# -- addresses ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpamdAddress:
    """Where spamd listens: a UNIX socket ``path``, or TCP ``host`` and ``port``."""

    host: str | None = None
    port: int = DEFAULT_PORT
    path: str | None = None

    def __str__(self) -> str:
        if self.path is not None:
            return self.path
        host = self.host or ""
        if ":" in host:
            return f"[{host}]:{self.port}"
        return f"{host}:{self.port}"


def parse_address(text: str) -> SpamdAddress:
    """Parse a ``spamd_address`` setting.

    Accepted forms: ``/path/to/socket`` (or ``unix:/path``) for a UNIX socket;
    ``host:port``, ``[v6-address]:port``, or a bare ``host`` / IPv6 address for TCP
    (port 783).  Raises :class:`ValueError` for anything else.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError(f"spamd address must be a non-empty string, got {text!r}")
    value = text.strip()
    if value.startswith("unix:"):
        value = value[5:]
        if not value.startswith("/"):
            raise ValueError(f"UNIX socket path must be absolute: {text!r}")
    if value.startswith("/"):
        if "\x00" in value:
            raise ValueError(f"invalid UNIX socket path: {text!r}")
        return SpamdAddress(path=value)
    host: str
    port_text: str | None
    if value.startswith("["):
        end = value.find("]")
        if end < 0:
            raise ValueError(f"unbalanced brackets in spamd address {text!r}")
        host, rest = value[1:end], value[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"invalid spamd address {text!r}")
        port_text = rest[1:] if rest else None
    elif value.count(":") == 1:
        host, port_text = value.split(":")
    else:  # a host name, an IPv4 address, or a bare IPv6 address (several colons)
        host, port_text = value, None
    if not host or any(c.isspace() for c in host):
        raise ValueError(f"invalid host in spamd address {text!r}")
    port = DEFAULT_PORT
    if port_text is not None:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ValueError(f"invalid port in spamd address {text!r}")
        port = int(port_text)
    return SpamdAddress(host=host, port=port)


# -- protocol (pure functions) --------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpamVerdict:
    """spamd's ``Spam:`` header: ``True ; 1000.0 / 5.0``."""

    is_spam: bool
    score: float
    threshold: float


@dataclass(frozen=True, slots=True)
class SpamdResponse:
    """One parsed spamd answer."""

    version: str
    """Protocol version on the status line (spamd 4.0 answers ``1.1`` or ``1.5``)."""
    code: int
    """0 (``EX_OK``) or an ``EX_*`` error number."""
    message: str
    """The status text: ``EX_OK``, ``PONG``, or an error description."""
    headers: Mapping[str, str]
    """Response headers by lower-cased name (``content-length``, ``spam``, ...)."""
    body: bytes
    """The body: empty for CHECK, the new header block for HEADERS, the new message for
    PROCESS, the report for REPORT, rule names for SYMBOLS."""

    @property
    def verdict(self) -> SpamVerdict | None:
        """The parsed ``Spam:`` header, or None when there is none.

        Raises :class:`SpamdProtocolError` when the header is present but malformed.
        """
        value = self.headers.get("spam")
        return None if value is None else parse_spam_header(value)


@dataclass(frozen=True, slots=True)
class ScanResult:
    """The outcome of a scanning request (CHECK, HEADERS, PROCESS, ...)."""

    verdict: SpamVerdict
    body: bytes
    response: SpamdResponse


_USER_BAD = re.compile(r"[\x00-\x1f\x7f]")


def build_request(
    verb: str,
    message: bytes | None = None,
    *,
    user: str | None = None,
    version: str = PROTOCOL_VERSION,
) -> bytes:
    """The bytes of one SPAMC request.

    ``message`` is sent as the body with a ``Content-length`` header (omit it for PING);
    ``user`` adds a ``User`` header (the user whose preferences spamd applies).  Raises
    :class:`ValueError` for an unknown verb or a user name with control characters.
    """
    if verb not in VERBS:
        raise ValueError(f"unknown spamd verb {verb!r}")
    head = [f"{verb} SPAMC/{version}\r\n".encode("ascii")]
    if message is not None:
        head.append(b"Content-length: %d\r\n" % len(message))
    if user is not None:
        if not user or _USER_BAD.search(user):
            raise ValueError(f"invalid spamd user name {user!r}")
        head.append(b"User: " + user.encode("utf-8") + b"\r\n")
    head.append(b"\r\n")
    return b"".join(head) + (message or b"")


_STATUS_LINE = re.compile(rb"SPAMD/(\d+\.\d+) +(\d+)(?: +(.*))?")
_HEADER_LINE = re.compile(rb"([!-9;-~]+): *(.*)")
_SPAM_VALUE = re.compile(
    r"\s*(true|false|yes|no)\s*;\s*(-?\d+(?:\.\d+)?)\s*/\s*(-?\d+(?:\.\d+)?)\s*", re.IGNORECASE
)


def _printable(data: bytes, limit: int = 80) -> str:
    text = data[:limit].decode("ascii", "backslashreplace")
    return repr(text + ("..." if len(data) > limit else ""))


def parse_spam_header(value: str) -> SpamVerdict:
    """Parse the value of spamd's ``Spam:`` header (``True ; 7.4 / 5.0``).

    ``True``/``Yes`` mean spam, ``False``/``No`` ham.  Scores are floats (``-0.0``
    happens).  Raises :class:`SpamdProtocolError` for anything else.
    """
    match = _SPAM_VALUE.fullmatch(value)
    if match is None:
        raise SpamdProtocolError(f"malformed Spam header: {value!r}")
    flag, score, threshold = match.groups()
    return SpamVerdict(flag.lower() in ("true", "yes"), float(score), float(threshold))


def parse_response(data: bytes) -> SpamdResponse:
    """Parse a complete spamd answer (everything read until the server closed).

    The status line is ``SPAMD/<version> <code> <text>``; header lines ``Name: value``
    follow up to an empty line, then the body.  An answer that is only a status line
    (``PONG``, error answers) is valid.  With ``Content-length`` the body must have
    exactly that length.  Line ends may be CRLF or LF.  Raises
    :class:`SpamdProtocolError` for anything malformed, including an empty answer.
    """
    if not data:
        raise SpamdProtocolError("empty answer")
    end = data.find(b"\n")
    status = data if end < 0 else data[:end]
    rest = b"" if end < 0 else data[end + 1 :]
    match = _STATUS_LINE.fullmatch(status.rstrip(b"\r"))
    if match is None:
        raise SpamdProtocolError(f"not a SPAMD status line: {_printable(status)}")
    version = match.group(1).decode("ascii")
    code = int(match.group(2))
    text = (match.group(3) or b"").decode("utf-8", "replace").strip()
    headers: dict[str, str] = {}
    body = b""
    pos = 0
    while pos < len(rest):
        nl = rest.find(b"\n", pos)
        if nl < 0:
            raise SpamdProtocolError(f"truncated header line: {_printable(rest[pos:])}")
        line = rest[pos:nl].rstrip(b"\r")
        pos = nl + 1
        if not line:
            body = rest[pos:]
            break
        header = _HEADER_LINE.fullmatch(line)
        if header is None:
            raise SpamdProtocolError(f"malformed header line: {_printable(line)}")
        name = header.group(1).decode("ascii").lower()
        headers[name] = header.group(2).decode("utf-8", "replace").strip()
    else:
        if headers:
            raise SpamdProtocolError("headers not terminated by an empty line")
    length = headers.get("content-length")
    if length is not None:
        if not length.isdigit():
            raise SpamdProtocolError(f"malformed Content-length: {length!r}")
        if int(length) != len(body):
            raise SpamdProtocolError(
                f"body has {len(body)} bytes, Content-length says {int(length)}"
            )
    return SpamdResponse(version, code, text, headers, body)


# -- the client -----------------------------------------------------------------------------


class SpamdClient:
    """Sends requests to one spamd, with a timeout and a cap on concurrent requests.

    ``address`` is a :class:`SpamdAddress` or a string for :func:`parse_address`.
    ``timeout`` (seconds) bounds each request as a whole, including the wait for one of
    the ``max_concurrency`` slots.  Create one per server and share it (see
    :func:`spamd_client`); it keeps no connection open between requests.
    """

    def __init__(
        self,
        address: SpamdAddress | str = DEFAULT_ADDRESS,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
    ) -> None:
        self.address = address if isinstance(address, SpamdAddress) else parse_address(address)
        """Where spamd listens."""
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"spamd timeout must be a positive number, got {timeout!r}")
        if (
            isinstance(max_concurrency, bool)
            or not isinstance(max_concurrency, int)
            or max_concurrency < 1
        ):
            raise ValueError(
                f"spamd max_concurrency must be a positive integer, got {max_concurrency!r}"
            )
        self.timeout = float(timeout)
        """Seconds per request, slot wait included."""
        self.max_concurrency = max_concurrency
        """Requests sent at the same time at most."""
        self._slots = asyncio.Semaphore(max_concurrency)
        self.in_flight = 0
        """Requests holding a slot right now."""
        self.waiting = 0
        """Requests waiting for a slot right now."""
        self.closed = False
        """True after :meth:`close`: new requests are refused."""

    def __repr__(self) -> str:
        return (
            f"SpamdClient({str(self.address)!r}, timeout={self.timeout:g}, "
            f"max_concurrency={self.max_concurrency})"
        )

    async def close(self) -> None:
        """Refuse further requests (requests in flight finish; nothing else to release)."""
        self.closed = True

    # -- requests -------------------------------------------------------------------------

    async def ping(self) -> None:
        """Check that spamd answers (``PING`` / ``PONG``); raise :class:`SpamdError` if not."""
        response = await self.request("PING")
        if response.message != "PONG":
            raise SpamdProtocolError(f"PING answered with {response.message!r}, not PONG")

    async def check(self, message: bytes, *, user: str | None = None) -> ScanResult:
        """``CHECK``: the verdict only (empty body)."""
        return await self.scan("CHECK", message, user=user)

    async def headers(self, message: bytes, *, user: str | None = None) -> ScanResult:
        """``HEADERS``: the verdict and the header block spamd would give the message
        (its ``X-Spam-*`` fields on top, old ``X-Spam-*`` fields removed)."""
        return await self.scan("HEADERS", message, user=user, need_body=True)

    async def process(self, message: bytes, *, user: str | None = None) -> ScanResult:
        """``PROCESS``: the verdict and the whole message as spamd rewrites it (what
        ``spamc`` prints)."""
        return await self.scan("PROCESS", message, user=user, need_body=True)

    async def scan(
        self, verb: str, message: bytes, *, user: str | None = None, need_body: bool = False
    ) -> ScanResult:
        """Send ``verb`` with ``message``; the answer must carry a ``Spam:`` header (and,
        with ``need_body``, a non-empty body) or :class:`SpamdProtocolError` is raised."""
        response = await self.request(verb, message, user=user)
        verdict = response.verdict
        if verdict is None:
            raise SpamdProtocolError(f"spamd at {self.address}: {verb} answer has no Spam header")
        if need_body and not response.body:
            raise SpamdProtocolError(f"spamd at {self.address}: {verb} answer has no body")
        return ScanResult(verdict, response.body, response)

    async def request(
        self, verb: str, message: bytes | None = None, *, user: str | None = None
    ) -> SpamdResponse:
        """Send one request and return spamd's parsed answer (status ``EX_OK`` only).

        Raises a :class:`SpamdError` subclass for every failure, within :attr:`timeout`.
        """
        if self.closed:
            raise SpamdConnectionError(f"spamd client for {self.address} is closed")
        data = build_request(verb, message, user=user)
        cap = max(_MIN_RESPONSE_CAP, 2 * len(message or b"") + _MIN_RESPONSE_CAP)
        got_slot = False
        try:
            async with asyncio.timeout(self.timeout):
                self.waiting += 1
                try:
                    await self._slots.acquire()
                finally:
                    self.waiting -= 1
                got_slot = True
                self.in_flight += 1
                try:
                    raw = await self._exchange(data, cap)
                finally:
                    self.in_flight -= 1
                    self._slots.release()
        except TimeoutError:
            what = "no answer" if got_slot else "no free slot (all busy)"
            raise SpamdTimeout(
                f"spamd at {self.address}: {what} within {self.timeout:g} s"
            ) from None
        try:
            response = parse_response(raw)
        except SpamdProtocolError as exc:
            raise SpamdProtocolError(f"spamd at {self.address}: {exc}") from None
        if response.code != 0:
            raise SpamdServerError(
                f"spamd at {self.address} answered {response.code} {response.message}",
                response.code,
                response.message,
            )
        return response

    async def _open(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        address = self.address
        try:
            if address.path is not None:
                return await asyncio.open_unix_connection(address.path)
            return await asyncio.open_connection(address.host, address.port)
        except OSError as exc:
            raise SpamdConnectionError(f"cannot connect to spamd at {address}: {exc}") from exc

    async def _exchange(self, data: bytes, cap: int) -> bytes:
        reader, writer = await self._open()
        complete = False
        try:
            try:
                writer.write(data)
                await writer.drain()
                if writer.can_write_eof():
                    writer.write_eof()
                chunks: list[bytes] = []
                total = 0
                while chunk := await reader.read(_READ_CHUNK):
                    total += len(chunk)
                    if total > cap:
                        raise SpamdProtocolError(
                            f"spamd at {self.address}: answer longer than {cap} bytes"
                        )
                    chunks.append(chunk)
            except OSError as exc:
                raise SpamdConnectionError(
                    f"connection to spamd at {self.address} failed: {exc!r}"
                ) from exc
            if not chunks:
                raise SpamdConnectionError(
                    f"spamd at {self.address} closed the connection without answering"
                )
            complete = True
            return b"".join(chunks)
        finally:
            if complete:
                writer.close()
            else:
                # Abort: close() would wait to flush what a hung peer never reads.
                writer.transport.abort()


# -- configuration --------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class SpamdConfig:
    """The spamd settings of a filter section."""

    address: SpamdAddress
    timeout: float = DEFAULT_TIMEOUT
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> SpamdConfig:
        """Read ``spamd_address``, ``spamd_timeout`` and ``spamd_max_concurrency``.

        Missing keys take the defaults; invalid values raise :class:`ValueError`.
        """
        address = parse_address(settings.get("spamd_address", DEFAULT_ADDRESS))
        timeout = settings.get("spamd_timeout", DEFAULT_TIMEOUT)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise ValueError(f"spamd_timeout must be a positive number, got {timeout!r}")
        cap = settings.get("spamd_max_concurrency", DEFAULT_MAX_CONCURRENCY)
        if isinstance(cap, bool) or not isinstance(cap, int) or cap < 1:
            raise ValueError(f"spamd_max_concurrency must be a positive integer, got {cap!r}")
        return cls(address, float(timeout), cap)

    @property
    def service_name(self) -> str:
        """The key of the shared client in ``ctx.services``."""
        return f"spamd {self.address} timeout={self.timeout:g} max={self.max_concurrency}"


async def spamd_client(ctx: Context) -> SpamdClient:
    """The shared :class:`SpamdClient` for the spamd settings in ``ctx.settings``.

    Filters with the same address, timeout and cap share one client (and so one cap);
    it is closed with the configuration's other services.  Raises :class:`ValueError`
    for invalid settings.
    """
    config = SpamdConfig.from_settings(ctx.settings)

    async def factory() -> SpamdClient:
        return SpamdClient(
            config.address, timeout=config.timeout, max_concurrency=config.max_concurrency
        )

    async def close(client: SpamdClient) -> None:
        await client.close()

    return await ctx.services.get(config.service_name, factory, close)
