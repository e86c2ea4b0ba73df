"""The clamd client: INSTREAM scans over clamd's UNIX socket or TCP.

The message is *streamed* to clamd (``INSTREAM``) instead of handing it the spool path
(``SCAN``, what the original did through pyclamd): clamd then needs no read permission
on Courier's spool, and it may run on another host.

Layers:

* **Protocol** (sans-I/O, pure functions tested with literal bytes): :func:`command`,
  :func:`chunk_frame`, :func:`split_reply`, :func:`parse_scan_reply`,
  :func:`parse_simple_reply`.  clamd's ``z`` commands are NUL-terminated and so are its
  replies; an ``INSTREAM`` body is a sequence of ``<4-byte big-endian length><bytes>``
  frames ended by a zero-length frame.
* **Transports**: our own asyncio implementation for the UNIX socket and TCP (the
  default), and for TCP optionally `aioclamd <https://pypi.org/project/aioclamd/>`_
  (``clamd_tcp_client = 'aioclamd'``; aioclamd only speaks TCP).  The built-in one is the
  default because it reads clamd's answer even when clamd hangs up in the middle of a
  stream (aioclamd then sees a bare connection reset), and because aioclamd waits for
  the peer when it closes a connection, so after a timeout against a clamd that stopped
  reading, its socket stays open until clamd reads or dies.
* **Client**: :class:`ClamdClient` owns the concurrency cap (``clamd_max_concurrency``), the
  timeouts and the error mapping.  Every failure — nothing listening, connection reset
  mid-scan, no answer, garbage, clamd's own ``ERROR`` — is raised as a
  :class:`ClamdError` whose :attr:`~ClamdError.reason` is a short text fit for an SMTP
  reply; a scan never hangs past its timeout and never reports "clean" by accident.
  A message larger than ``max_msg_size`` is not an error: it is not sent and the result's
  status is :attr:`ScanStatus.OVERSIZE` (also when clamd itself answers ``INSTREAM size
  limit exceeded``), so the caller applies its own policy.

Filters get the shared client with :func:`clamd_client`::

    client = await clamd_client(ctx)            # settings from ctx.settings
    result = await client.scan_file(message.data_path)
    if result.infected:
        ...
"""

from __future__ import annotations

import asyncio
import enum
import logging
import os
import re
import socket
import struct
import time
from collections.abc import AsyncIterable, AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, BinaryIO, Literal

if TYPE_CHECKING:
    from .api import Context

__all__ = [
    "DEFAULT_LOCAL_SOCKET",
    "DEFAULT_MAX_SIZE",
    "END_OF_STREAM",
    "MAX_REPLY",
    "ClamdAddress",
    "ClamdClient",
    "ClamdConfig",
    "ClamdConfigError",
    "ClamdError",
    "ClamdProtocolError",
    "ClamdScanError",
    "ClamdTimeoutError",
    "ClamdUnavailableError",
    "ScanResult",
    "ScanStatus",
    "chunk_frame",
    "clamd_client",
    "command",
    "parse_address",
    "parse_scan_reply",
    "parse_simple_reply",
    "split_reply",
]

log = logging.getLogger("courier_pyfilter.clamd")

DEFAULT_LOCAL_SOCKET = "/var/run/clamav/clamd.ctl"
"""Debian's clamd socket (``LocalSocket`` in /etc/clamav/clamd.conf)."""

DEFAULT_MAX_SIZE = 25 * 1024 * 1024
"""clamd's ``StreamMaxLength`` as Debian configures it (``25M``; upstream's default is
``100M``).  A stream of exactly this many bytes is scanned; one byte more is refused."""

DEFAULT_CHUNK_SIZE = 64 * 1024
"""Bytes per INSTREAM frame (and per read of the file in a worker thread)."""
DEFAULT_MAX_CONCURRENCY = 8
"""Scans in flight per clamd: below clamd's ``MaxThreads`` (10 upstream, 12 on Debian), so
clamd never queues our requests and its ``MaxQueue`` is left for other clients."""
DEFAULT_TIMEOUT = 30.0
DEFAULT_CONNECT_TIMEOUT = 5.0
MAX_REPLY = 16 * 1024
"""Longest reply accepted from clamd (a scan reply is one short line)."""

END_OF_STREAM = b"\0\0\0\0"
"""The zero-length frame that ends an ``INSTREAM`` body."""

SIZE_LIMIT_REPLY = "INSTREAM size limit exceeded. ERROR"
_MAX_FRAME = 0xFFFFFFFF
_SIGNATURE = re.compile(r"[\x21-\x7e]+(?: [\x21-\x7e]+)*")
_MAX_SIGNATURE = 200


# -- errors -----------------------------------------------------------------------------


class ClamdConfigError(ValueError):
    """Invalid clamd settings (raised when the client is created, i.e. at start)."""


class ClamdError(Exception):
    """A scan could not be done.  ``str()`` has the details (for the log), :attr:`reason`
    a short text without paths or addresses (for the SMTP reply)."""

    log_traceback = False  # the chain logs one line: the message says what failed

    reason = "clamd failed"


class ClamdUnavailableError(ClamdError):
    """Nothing answers on the socket, or the connection broke before a reply."""

    reason = "clamd is unavailable"


class ClamdTimeoutError(ClamdError):
    """clamd did not finish within the timeout (or no scan slot became free)."""

    reason = "clamd timed out"


class ClamdProtocolError(ClamdError):
    """clamd's reply could not be understood (garbage, truncated, too long)."""

    reason = "invalid reply from clamd"


class ClamdScanError(ClamdError):
    """clamd answered with an ``ERROR`` (other than the stream size limit)."""

    reason = "clamd could not scan the message"


# -- protocol (sans-I/O) ----------------------------------------------------------------


class ScanStatus(enum.Enum):
    """The outcome of a scan."""

    CLEAN = "clean"
    INFECTED = "infected"
    OVERSIZE = "oversize"
    """Not scanned: larger than the size limit, or refused by clamd's ``StreamMaxLength``."""


@dataclass(frozen=True, slots=True)
class ScanResult:
    """One scan's outcome.  ``signature`` is set for :attr:`ScanStatus.INFECTED`;
    ``size`` is the number of bytes scanned (or found too large), when known."""

    status: ScanStatus
    signature: str | None = None
    size: int | None = None
    by_clamd: bool = False
    """For OVERSIZE: True when clamd refused the stream, False when it was not sent."""

    @property
    def infected(self) -> bool:
        """True when clamd found a signature."""
        return self.status is ScanStatus.INFECTED

    @property
    def clean(self) -> bool:
        """True when clamd scanned the data and found nothing."""
        return self.status is ScanStatus.CLEAN


CLEAN = ScanResult(ScanStatus.CLEAN)


def command(name: str) -> bytes:
    """A ``z``-command: ``command("PING") == b"zPING\\0"``."""
    if not name or not name.isascii() or not name.isalpha() or not name.isupper():
        raise ValueError(f"not a clamd command: {name!r}")
    return b"z" + name.encode("ascii") + b"\0"


def chunk_frame(data: bytes) -> bytes:
    """One ``INSTREAM`` frame: the 4-byte big-endian length, then ``data``.

    An empty ``data`` gives :data:`END_OF_STREAM`.
    """
    if len(data) > _MAX_FRAME:
        raise ValueError("an INSTREAM frame holds at most 4 GiB - 1")
    return struct.pack(">I", len(data)) + data


def split_reply(buffer: bytes, max_length: int = MAX_REPLY) -> tuple[bytes | None, bytes]:
    """Cut the first NUL-terminated reply off ``buffer``: ``(reply, rest)``.

    ``reply`` is None while the terminator has not arrived.  Raises
    :class:`ClamdProtocolError` when more than ``max_length`` bytes came without one.
    """
    end = buffer.find(b"\0")
    if end < 0:
        if len(buffer) > max_length:
            raise ClamdProtocolError(f"reply longer than {max_length} bytes without a NUL")
        return None, buffer
    if end > max_length:
        raise ClamdProtocolError(f"reply longer than {max_length} bytes")
    return buffer[:end], buffer[end + 1 :]


def _text(reply: bytes) -> str:
    if reply.endswith(b"\0") or reply.endswith(b"\n"):
        reply = reply[:-1]
    try:
        text = reply.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ClamdProtocolError(f"reply is not UTF-8: {reply[:80]!r}") from exc
    if not text.isprintable():
        raise ClamdProtocolError(f"reply has control characters: {text[:80]!r}")
    return text


def parse_simple_reply(reply: bytes) -> str:
    """The text of a ``PING``/``VERSION`` reply (terminator removed).

    ``... ERROR`` raises :class:`ClamdScanError`, ``UNKNOWN COMMAND`` and non-text
    :class:`ClamdProtocolError`.
    """
    text = _text(reply)
    if text.endswith(" ERROR"):
        raise ClamdScanError(f"clamd answered {text!r}")
    if not text or text == "UNKNOWN COMMAND":
        raise ClamdProtocolError(f"clamd answered {text!r}")
    return text


def parse_scan_reply(reply: bytes) -> ScanResult:
    """Interpret clamd's answer to ``INSTREAM`` (with or without its terminator).

    ===============================================  ==========================================
    ``stream: OK``                                   :data:`CLEAN`
    ``stream: <signature> FOUND``                    ``INFECTED`` with ``signature``
    ``INSTREAM size limit exceeded. ERROR``          ``OVERSIZE`` (``by_clamd=True``)
    ``stream: <text> ERROR``, ``<text> ERROR``       :class:`ClamdScanError`
    anything else (empty, binary, truncated, ...)    :class:`ClamdProtocolError`
    ===============================================  ==========================================

    A ``FOUND`` whose signature name is empty, has control characters or is longer than
    200 characters is garbage, not a verdict.
    """
    text = _text(reply)
    if text == "stream: OK":
        return CLEAN
    if text == SIZE_LIMIT_REPLY:
        return ScanResult(ScanStatus.OVERSIZE, by_clamd=True)
    if text.endswith(" ERROR"):
        raise ClamdScanError(f"clamd answered {text!r}")
    if text.startswith("stream: ") and text.endswith(" FOUND"):
        signature = text[len("stream: ") : -len(" FOUND")]
        if len(signature) <= _MAX_SIGNATURE and _SIGNATURE.fullmatch(signature):
            return ScanResult(ScanStatus.INFECTED, signature)
    raise ClamdProtocolError(f"unexpected reply from clamd: {text[:120]!r}")


# -- configuration ----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class ClamdAddress:
    """Where clamd listens: a UNIX socket ``path``, or TCP ``host`` and ``port``."""

    path: str | None = None
    host: str | None = None
    port: int | None = None

    @property
    def is_unix(self) -> bool:
        """True for a UNIX socket."""
        return self.path is not None

    def __str__(self) -> str:
        if self.path is not None:
            return f"unix:{self.path}"
        host = f"[{self.host}]" if self.host and ":" in self.host else self.host
        return f"tcp:{host}:{self.port}"


DEFAULT_PORT = 3310
"""clamd's usual TCP port (``TCPSocket`` in clamd.conf)."""


def parse_address(local_socket: Any = None, clamd_address: Any = None) -> ClamdAddress:
    """The address from the ``local_socket`` and ``clamd_address`` settings.

    ``clamd_address`` wins when set: ``'host:port'``, ``'[ipv6]:port'``, ``'host'``
    (port 3310), or a UNIX socket path (``'/run/clamd.sock'`` or ``'unix:/run/...'``).
    Otherwise ``local_socket`` (``None`` means :data:`DEFAULT_LOCAL_SOCKET`, as pyclamd
    did).
    """
    if clamd_address is not None:
        if not isinstance(clamd_address, str) or not clamd_address:
            raise ClamdConfigError(f"clamd_address must be a string, not {clamd_address!r}")
        text = clamd_address.removeprefix("unix:")
        if text.startswith("/"):
            return ClamdAddress(path=text)
        if text.startswith("["):
            host, bracket, rest = text[1:].partition("]")
            if not bracket or (rest and not rest.startswith(":")):
                raise ClamdConfigError(f"bad clamd_address {clamd_address!r}")
            port_text = rest[1:] if rest else str(DEFAULT_PORT)
        elif text.count(":") > 1:
            raise ClamdConfigError(
                f"write an IPv6 clamd_address as '[addr]:port', not {clamd_address!r}"
            )
        else:
            host, _, port_text = text.partition(":")
            port_text = port_text if ":" in text else str(DEFAULT_PORT)
        if not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise ClamdConfigError(
                f"clamd_address must be 'host:port' or a socket path, not {clamd_address!r}"
            )
        return ClamdAddress(host=host, port=int(port_text))
    path = DEFAULT_LOCAL_SOCKET if local_socket is None else local_socket
    if not isinstance(path, str) or not path:
        raise ClamdConfigError(f"local_socket must be a path, not {local_socket!r}")
    return ClamdAddress(path=path)


def _number(settings: Mapping[str, Any], key: str, default: float, *, integer: bool) -> Any:
    value = settings.get(key, default)
    if value is None:
        value = default
    numeric = isinstance(value, int) if integer else isinstance(value, int | float)
    if isinstance(value, bool) or not numeric or value <= 0:
        kind = "a positive integer" if integer else "a positive number"
        raise ClamdConfigError(f"{key} must be {kind}, not {value!r}")
    return value


@dataclass(frozen=True, slots=True)
class ClamdConfig:
    """Settings of one :class:`ClamdClient` (see :meth:`from_settings` for the keys)."""

    address: ClamdAddress
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY
    timeout: float = DEFAULT_TIMEOUT
    connect_timeout: float = DEFAULT_CONNECT_TIMEOUT
    max_size: int = DEFAULT_MAX_SIZE
    chunk_size: int = DEFAULT_CHUNK_SIZE
    tcp_client: Literal["aioclamd", "builtin"] = "builtin"

    @property
    def uses_aioclamd(self) -> bool:
        """True when scans go through aioclamd (TCP with ``clamd_tcp_client = 'aioclamd'``)."""
        return not self.address.is_unix and self.tcp_client == "aioclamd"

    @property
    def key(self) -> str:
        """Name of the shared client in :attr:`Context.services` (one per clamd)."""
        client = "" if self.address.is_unix else f"/{self.tcp_client}"
        return f"clamd:{self.address}{client}"

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any]) -> ClamdConfig:
        """Read a filter's settings:

        ``local_socket``, ``clamd_address``
            where clamd listens (:func:`parse_address`);
        ``clamd_tcp_client``
            ``'builtin'`` (default) or ``'aioclamd'`` for TCP;
        ``clamd_max_concurrency``, ``clamd_timeout``, ``clamd_connect_timeout``
            the client's cap and timeouts;
        ``max_msg_size``
            the default size limit of a scan (clamd's ``StreamMaxLength``);
        ``clamd_chunk_size``
            bytes per INSTREAM frame.

        Missing keys (or ``None``) take the defaults; wrong values raise
        :class:`ClamdConfigError`.
        """
        address = parse_address(settings.get("local_socket"), settings.get("clamd_address"))
        setting = settings.get("clamd_tcp_client") or "builtin"
        if setting not in ("aioclamd", "builtin"):
            raise ClamdConfigError(
                f"clamd_tcp_client must be 'aioclamd' or 'builtin', not {setting!r}"
            )
        tcp_client: Literal["aioclamd", "builtin"] = (
            "aioclamd" if setting == "aioclamd" else "builtin"
        )
        config = cls(
            address=address,
            max_concurrency=_number(
                settings, "clamd_max_concurrency", DEFAULT_MAX_CONCURRENCY, integer=True
            ),
            timeout=float(_number(settings, "clamd_timeout", DEFAULT_TIMEOUT, integer=False)),
            connect_timeout=float(
                _number(settings, "clamd_connect_timeout", DEFAULT_CONNECT_TIMEOUT, integer=False)
            ),
            max_size=_number(settings, "max_msg_size", DEFAULT_MAX_SIZE, integer=True),
            chunk_size=_number(settings, "clamd_chunk_size", DEFAULT_CHUNK_SIZE, integer=True),
            tcp_client=tcp_client,
        )
        if config.chunk_size > _MAX_FRAME:
            raise ClamdConfigError("clamd_chunk_size must be below 4 GiB")
        return config


# -- transports -------------------------------------------------------------------------

Source = bytes | str | os.PathLike[str] | AsyncIterable[bytes]
"""What can be scanned: bytes, a file path, or an async iterable of byte chunks."""

_Data = bytes | BinaryIO | AsyncIterable[bytes]
"""A source as the transports see it: files are opened by the client."""


class _Progress:
    """Where a request is, for timeout messages."""

    __slots__ = ("phase",)

    def __init__(self) -> None:
        self.phase = "waiting for a free scan slot"


class _SourceError(Exception):
    """Internal: reading the data to scan failed (not a clamd problem)."""

    def __init__(self, error: OSError) -> None:
        super().__init__(error)
        self.error = error


def _read_chunk(fh: BinaryIO, size: int) -> bytes:
    try:
        return fh.read(size)
    except OSError as exc:
        raise _SourceError(exc) from exc


async def _chunks(
    source: bytes | BinaryIO | AsyncIterable[bytes], size: int
) -> AsyncIterator[bytes]:
    """The data in chunks of at most ``size`` bytes; a file is read in worker threads."""
    if isinstance(source, bytes):
        data = memoryview(source)
        for i in range(0, len(data), size):
            yield bytes(data[i : i + size])
    elif isinstance(source, AsyncIterable):
        async for chunk in source:
            for i in range(0, len(chunk), size):
                yield chunk[i : i + size]
    else:
        while chunk := await asyncio.to_thread(_read_chunk, source, size):
            yield chunk


class _Oversize(Exception):
    """Internal: the source turned out larger than ``max_size`` while streaming."""

    def __init__(self, size: int) -> None:
        self.size = size


class _Builtin:
    """Our own INSTREAM client on a non-blocking socket (UNIX or TCP).

    Plain ``loop.sock_*`` calls rather than asyncio streams: when clamd hangs up in the
    middle of a stream (past its ``StreamMaxLength``) our write fails, but clamd's reason
    is still in the socket's receive queue; a stream reader would raise the stored
    connection error instead of returning it, a socket we own can still be read.
    """

    def __init__(self, config: ClamdConfig) -> None:
        self.config = config

    async def _connect(self, progress: _Progress) -> socket.socket:
        address = self.config.address
        loop = asyncio.get_running_loop()
        progress.phase = "connecting"
        sock: socket.socket | None = None
        try:
            async with asyncio.timeout(self.config.connect_timeout):
                if address.path is not None:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.setblocking(False)
                    await loop.sock_connect(sock, address.path)
                    return sock
                infos = await loop.getaddrinfo(address.host, address.port, type=socket.SOCK_STREAM)
                error: OSError = OSError(f"no address for {address.host}")
                for family, kind, proto, _, sockaddr in infos:
                    sock = socket.socket(family, kind, proto)
                    sock.setblocking(False)
                    try:
                        await loop.sock_connect(sock, sockaddr)
                        return sock
                    except OSError as exc:
                        error = exc
                        sock.close()
                        sock = None
                raise error
        except TimeoutError as exc:
            if sock is not None:
                sock.close()
            raise ClamdUnavailableError(
                f"cannot connect to clamd at {address}: no answer within "
                f"{self.config.connect_timeout:g} s"
            ) from exc
        except OSError as exc:
            if sock is not None:
                sock.close()
            raise ClamdUnavailableError(f"cannot connect to clamd at {address}: {exc}") from exc
        except BaseException:
            if sock is not None:
                sock.close()
            raise

    async def _reply(self, sock: socket.socket, progress: _Progress) -> bytes:
        """Read up to clamd's NUL terminator (which must be the last byte it sends)."""
        loop = asyncio.get_running_loop()
        progress.phase = "waiting for the reply"
        address = self.config.address
        buffer = b""
        while True:
            try:
                data = await loop.sock_recv(sock, 4096)
            except OSError as exc:
                if buffer:
                    raise ClamdProtocolError(
                        f"connection to clamd at {address} lost in the middle of its reply "
                        f"{buffer[:80]!r}: {exc!r}"
                    ) from exc
                raise ClamdUnavailableError(
                    f"connection to clamd at {address} lost while waiting for the reply: {exc!r}"
                ) from exc
            if not data:
                if buffer:
                    raise ClamdProtocolError(
                        f"clamd at {address} closed the connection in the middle of its "
                        f"reply: {buffer[:80]!r}"
                    )
                raise ClamdUnavailableError(
                    f"clamd at {address} closed the connection without a reply"
                )
            buffer += data
            reply, rest = split_reply(buffer)
            if reply is not None:
                if rest:
                    raise ClamdProtocolError(
                        f"clamd at {address} sent more than one reply: {buffer[:80]!r}"
                    )
                return reply

    async def _send(self, sock: socket.socket, data: bytes) -> None:
        await asyncio.get_running_loop().sock_sendall(sock, data)

    async def simple(self, name: str, progress: _Progress) -> str:
        sock = await self._connect(progress)
        try:
            progress.phase = "sending"
            try:
                await self._send(sock, command(name))
            except OSError as exc:
                raise ClamdUnavailableError(
                    f"connection to clamd at {self.config.address} lost: {exc!r}"
                ) from exc
            return parse_simple_reply(await self._reply(sock, progress))
        finally:
            sock.close()

    async def instream(self, source: _Data, max_size: int, progress: _Progress) -> ScanResult:
        config = self.config
        sock = await self._connect(progress)
        try:
            progress.phase = "sending"
            sent = 0
            write_error: OSError | None = None
            try:
                await self._send(sock, command("INSTREAM"))
                async for chunk in _chunks(source, config.chunk_size):
                    sent += len(chunk)
                    if sent > max_size:
                        raise _Oversize(sent)
                    await self._send(sock, chunk_frame(chunk))
                await self._send(sock, END_OF_STREAM)
            except OSError as exc:
                # clamd hangs up at once when the stream passes its StreamMaxLength, but
                # its error line is still in our receive queue: read it before deciding.
                write_error = exc
            try:
                reply = await self._reply(sock, progress)
            except ClamdError as exc:
                if write_error is not None:
                    raise ClamdUnavailableError(
                        f"connection to clamd at {config.address} lost after {sent} bytes: "
                        f"{write_error!r}"
                    ) from exc
                raise
            result = parse_scan_reply(reply)
            if write_error is not None and result.status is not ScanStatus.OVERSIZE:
                # A verdict on a stream clamd did not receive completely is no verdict.
                raise ClamdProtocolError(
                    f"clamd at {config.address} answered {reply[:80]!r} although the stream "
                    f"broke off after {sent} bytes ({write_error!r})"
                )
            return replace(result, size=sent)
        finally:
            sock.close()


class _BigReads:
    """A file-like object for aioclamd: it asks for 1 KiB per read (each in a worker
    thread); this one hands out up to ``chunk_size`` bytes instead, which aioclamd
    sends as one frame, so a 25 MB message takes 400 thread hops instead of 25,600."""

    def __init__(self, source: bytes | BinaryIO, chunk_size: int) -> None:
        self._fh = source if not isinstance(source, bytes) else None
        self._data = memoryview(source) if isinstance(source, bytes) else None
        self._pos = 0
        self._chunk_size = chunk_size
        self.sent = 0

    def read(self, size: int = -1) -> bytes:
        want = max(size, self._chunk_size)
        if self._data is not None:
            chunk = bytes(self._data[self._pos : self._pos + want])
            self._pos += len(chunk)
        else:
            assert self._fh is not None
            chunk = _read_chunk(self._fh, want)
        self.sent += len(chunk)
        return chunk


class _Aioclamd:
    """TCP scans through aioclamd, its exceptions mapped onto ours."""

    def __init__(self, config: ClamdConfig) -> None:
        try:
            import aioclamd
        except ImportError as exc:
            raise ClamdConfigError(
                "clamd_tcp_client 'aioclamd' needs the aioclamd package "
                "(pip install 'courier-pyfilter[clamav]'); or use clamd_tcp_client = 'builtin'"
            ) from exc
        self.config = config
        self._mod = aioclamd
        # No timeout here: ClamdClient applies its own around every call.
        self._client = aioclamd.ClamdAsyncClient(config.address.host, config.address.port)

    def _map(self, exc: BaseException, doing: str) -> ClamdError:
        mod = self._mod
        address = self.config.address
        if isinstance(exc, mod.ClamdConnectionError):
            cause = exc.__cause__
            if isinstance(cause, UnicodeDecodeError):
                return ClamdProtocolError(f"reply from clamd at {address} is not UTF-8")
            detail = f"{exc}: {cause!r}" if cause is not None else str(exc)
            return ClamdUnavailableError(f"clamd at {address} while {doing}: {detail}")
        if isinstance(exc, mod.ResponseError):
            return ClamdProtocolError(f"unexpected reply from clamd at {address}: {exc}")
        if isinstance(exc, OSError):
            return ClamdUnavailableError(f"connection to clamd at {address} lost: {exc!r}")
        if isinstance(exc, UnicodeError):
            return ClamdProtocolError(f"reply from clamd at {address} is not UTF-8")
        return ClamdError(f"aioclamd failed while {doing}: {exc!r}")

    async def simple(self, name: str, progress: _Progress) -> str:
        progress.phase = f"sending {name} (in aioclamd)"
        try:
            text = await _guarded(self._client.ping() if name == "PING" else self._client.version())
        except self._mod.ResponseError as exc:  # basic_command: the reply ends in ERROR
            raise ClamdScanError(f"clamd at {self.config.address} answered {exc} ERROR") from exc
        except Exception as exc:
            raise self._map(exc, name) from exc
        if not isinstance(text, str):
            raise ClamdProtocolError(f"unexpected reply from clamd at {self.config.address}")
        return parse_simple_reply(text.encode())

    async def instream(self, source: _Data, max_size: int, progress: _Progress) -> ScanResult:
        mod = self._mod
        config = self.config
        progress.phase = "scanning (in aioclamd)"
        if isinstance(source, AsyncIterable):
            # aioclamd reads a file-like object from a worker thread: collect the chunks.
            parts: list[bytes] = []
            total = 0
            async for chunk in source:
                total += len(chunk)
                if total > max_size:
                    raise _Oversize(total)
                parts.append(chunk)
            source = b"".join(parts)
        reader = _BigReads(source, config.chunk_size)
        try:
            result = await _guarded(self._client.instream(reader, max_size=max_size))
        except mod.BufferTooLongError as exc:
            by_clamd = "size limit exceeded" in str(exc)
            return ScanResult(ScanStatus.OVERSIZE, size=reader.sent, by_clamd=by_clamd)
        except _SourceError:
            raise
        except Exception as exc:
            raise self._map(exc, "scanning") from exc
        return replace(_from_aioclamd(result, config.address), size=reader.sent)


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()


async def _guarded(call: Coroutine[Any, Any, Any]) -> Any:
    """Run an aioclamd call so that cancelling it (our timeout) really ends it.

    aioclamd closes its connection in ``__aexit__`` with ``await writer.wait_closed()``,
    which waits for the peer to read everything still buffered: a clamd that accepted
    the connection but reads nothing (hung, or saturated with a large message pending)
    would keep the call, and so the message, waiting after the timeout.  The call runs
    as its own task, which is cancelled again until it gives up.
    """
    task = asyncio.ensure_future(call)
    task.add_done_callback(_retrieve)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        for _ in range(20):
            task.cancel()
            done, _ = await asyncio.wait({task}, timeout=0.05)
            if done:
                break
        raise


def _from_aioclamd(result: Any, address: ClamdAddress) -> ScanResult:
    """aioclamd's ``{'stream': (status, signature)}`` as a :class:`ScanResult`."""
    if result is None:  # aioclamd's answer to an empty reply
        raise ClamdUnavailableError(f"clamd at {address} closed the connection without a reply")
    if not isinstance(result, dict) or set(result) != {"stream"}:
        raise ClamdProtocolError(f"unexpected reply from clamd at {address}: {result!r}")
    status, signature = result["stream"]
    if status == "OK" and signature is None:
        return CLEAN
    if status == "FOUND" and isinstance(signature, str):
        return parse_scan_reply(f"stream: {signature} FOUND".encode())
    if status == "ERROR":
        raise ClamdScanError(f"clamd at {address} answered {signature} ERROR")
    raise ClamdProtocolError(f"unexpected reply from clamd at {address}: {result!r}")


# -- the client -------------------------------------------------------------------------


class ClamdClient:
    """A clamd client shared by every filter that uses one clamd.

    At most ``max_concurrency`` requests are in flight; others wait for a slot, and the wait
    counts against the request's timeout.  Each request uses a new connection (clamd
    serves one command per connection).
    """

    def __init__(self, config: ClamdConfig) -> None:
        self.config = config
        self._transport: _Builtin | _Aioclamd = (
            _Aioclamd(config) if config.uses_aioclamd else _Builtin(config)
        )
        self._slots = asyncio.Semaphore(config.max_concurrency)
        self.in_flight = 0
        """Requests holding a slot right now."""
        self.waiting = 0
        """Requests waiting for a slot."""
        self.closed = False

    def __repr__(self) -> str:
        return f"ClamdClient({self.config.address}, max_concurrency={self.config.max_concurrency})"

    async def _run(self, timeout: float | None, what: str, call: Any) -> Any:
        if self.closed:
            raise ClamdUnavailableError("the clamd client is closed")
        limit = self.config.timeout if timeout is None else timeout
        progress = _Progress()
        started = time.monotonic()
        try:
            async with asyncio.timeout(limit):
                self.waiting += 1
                try:
                    await self._slots.acquire()
                finally:
                    self.waiting -= 1
                self.in_flight += 1
                try:
                    return await call(progress)
                finally:
                    self.in_flight -= 1
                    self._slots.release()
        except TimeoutError as exc:
            raise ClamdTimeoutError(
                f"{what} at {self.config.address} did not finish within {limit:g} s "
                f"(stopped while {progress.phase}, after {time.monotonic() - started:.2f} s)"
            ) from exc

    async def ping(self, *, timeout: float | None = None) -> None:
        """Raise a :class:`ClamdError` unless clamd answers ``PONG``."""

        async def call(progress: _Progress) -> None:
            text = await self._transport.simple("PING", progress)
            if text != "PONG":
                raise ClamdProtocolError(f"clamd answered {text!r} to PING")

        await self._run(timeout, "PING", call)

    async def version(self, *, timeout: float | None = None) -> str:
        """clamd's ``VERSION`` text, e.g. ``'ClamAV 1.4.6/27000/Mon ...'``."""

        async def call(progress: _Progress) -> str:
            return await self._transport.simple("VERSION", progress)

        result: str = await self._run(timeout, "VERSION", call)
        return result

    async def scan(
        self,
        source: Source,
        *,
        size: int | None = None,
        max_size: int | None = None,
        timeout: float | None = None,
    ) -> ScanResult:
        """Stream ``source`` to clamd and return the verdict.

        ``source`` is bytes, a file path, or an async iterable of chunks.  ``size`` (or
        the length of bytes, or the size of the file) is checked against ``max_size``
        (default: the client's) first: a larger source is not sent and gives
        :attr:`ScanStatus.OVERSIZE`; so does a source of unknown size that turns out
        larger, and clamd's own refusal (``by_clamd``).  Raises :class:`ClamdError` (never
        anything else for clamd problems) when there is no verdict within ``timeout``
        (default: the client's).  Reading ``source`` may raise :class:`OSError`.
        """
        limit = self.config.max_size if max_size is None else max_size
        if isinstance(source, bytearray | memoryview):
            source = bytes(source)
        fh: BinaryIO | None = None
        if isinstance(source, str | os.PathLike):
            fh = await asyncio.to_thread(open, source, "rb")  # OSError: the caller's problem
        try:
            data: _Data = source if fh is None else fh  # type: ignore[assignment]
            if size is None:
                if isinstance(data, bytes):
                    size = len(data)
                elif fh is not None:
                    size = os.fstat(fh.fileno()).st_size
            if size is not None and size > limit:
                return ScanResult(ScanStatus.OVERSIZE, size=size)

            async def call(progress: _Progress) -> ScanResult:
                try:
                    return await self._transport.instream(data, limit, progress)
                except _Oversize as exc:
                    return ScanResult(ScanStatus.OVERSIZE, size=exc.size)

            try:
                result: ScanResult = await self._run(timeout, "scan", call)
            except _SourceError as exc:
                raise exc.error from None
            return result
        finally:
            if fh is not None:
                fh.close()

    async def scan_bytes(
        self, data: bytes, *, max_size: int | None = None, timeout: float | None = None
    ) -> ScanResult:
        """:meth:`scan` of bytes in memory."""
        return await self.scan(data, max_size=max_size, timeout=timeout)

    async def scan_file(
        self,
        path: str | os.PathLike[str],
        *,
        max_size: int | None = None,
        timeout: float | None = None,
    ) -> ScanResult:
        """:meth:`scan` of a file, read in chunks in worker threads (not by clamd, so
        clamd needs no permission on it).  An unreadable file raises :class:`OSError`."""
        return await self.scan(path, max_size=max_size, timeout=timeout)

    async def close(self) -> None:
        """Refuse further requests (connections are per request: nothing to close)."""
        self.closed = True


async def clamd_client(ctx: Context) -> ClamdClient:
    """The shared :class:`ClamdClient` for the clamd named in ``ctx.settings``.

    One client exists per clamd address (and TCP client kind) per configuration, created
    on first use and closed when the configuration is retired; its concurrency cap is
    therefore shared by every filter line using that clamd.  When two lines configure
    the same clamd with a different ``clamd_max_concurrency`` or
    ``clamd_connect_timeout``, the first one's apply (a warning is logged); size limits
    and scan timeouts are per call (:meth:`ClamdClient.scan`).  Raises
    :class:`ClamdConfigError` for invalid settings.
    """
    config = ClamdConfig.from_settings(ctx.settings)

    async def factory() -> ClamdClient:
        return ClamdClient(config)

    async def close(client: ClamdClient) -> None:
        await client.close()

    client = await ctx.services.get(config.key, factory, close)
    shared = (client.config.max_concurrency, client.config.connect_timeout)
    if shared != (config.max_concurrency, config.connect_timeout):
        ctx.log.warning(
            "clamd at %s is already used with clamd_max_concurrency %d and "
            "clamd_connect_timeout %g; those apply",
            config.address,
            *shared,
        )
    return client
