"""Asynchronous client for Courier's authentication daemon (``authdaemond``).

authdaemond answers account questions on a UNIX socket, one question per connection::

    -> PRE . smtp alice\\n
    <- UID=1001\\nGID=1001\\nHOME=/home/alice\\nADDRESS=alice\\nMAILDIR=/home/alice/Maildir\\n.\\n

or ``FAIL\\n`` when there is no such account.  This module has two layers:

* a sans-I/O part: :func:`format_request` builds the request line and
  :class:`ReplyParser` takes the answer in pieces of any size, finishes at the ``.``
  line (result: a dict of the ``KEY=value`` lines, split at the first ``=``) or at a
  ``FAIL`` line (result: ``None``), and raises :class:`AuthdaemonProtocolError` for
  anything else (a malformed line, data after the end, an answer over
  :data:`MAX_REPLY` bytes, a connection closed too early);
* :class:`AuthdaemonClient`: one connection per lookup (authdaemond closes it after each
  answer anyway), separate connect/write/read timeouts, and at most
  ``max_connections`` lookups at a time.  Every failure is an :class:`AuthdaemonError`.

Filters get the shared client of their configuration with :func:`authdaemon_client`::

    from courier_pyfilter.authdaemon import AuthdaemonError, authdaemon_client

    client = await authdaemon_client(ctx)          # e.g. in Filter.start()
    info = await client.user_info("smtp", "alice")  # None: no such account

Settings come from the ``[authdaemon.py]`` section of ``pythonfilter-modules.conf``
(:meth:`AuthdaemonConfig.from_section`): ``socket_path``, ``TIMEOUT_SOCK``,
``TIMEOUT_WRITE``, ``TIMEOUT_READ`` as in courier-pythonfilter, plus ``max_connections``.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .api import Context

__all__ = [
    "DEBIAN_SOCKET_PATH",
    "DEFAULT_SOCKET_PATH",
    "MAX_NAME_BYTES",
    "MAX_REPLY",
    "SECTION",
    "SERVICE_NAME",
    "AuthdaemonClient",
    "AuthdaemonConfig",
    "AuthdaemonError",
    "AuthdaemonProtocolError",
    "AuthdaemonTimeoutError",
    "ReplyParser",
    "UserInfo",
    "authdaemon_client",
    "format_request",
    "is_valid_name",
    "parse_reply",
]

log = logging.getLogger("courier_pyfilter.authdaemon")

DEFAULT_SOCKET_PATH = "/var/spool/authdaemon/socket"
"""courier-pythonfilter's default socket path (Courier's own default installation)."""
DEBIAN_SOCKET_PATH = "/run/courier/authdaemon/socket"
"""Where Debian's courier-authdaemon package puts the socket; tried when the configured
path does not exist."""
SECTION = "authdaemon.py"
"""The section of ``pythonfilter-modules.conf`` holding the client's settings."""
SERVICE_NAME = "authdaemon"
"""Name of the shared client in ``ctx.services``."""
MAX_REPLY = 64 * 1024
"""Largest answer accepted (bytes); real answers are a few hundred bytes."""
MAX_NAME_BYTES = 1024
"""Longest service or account name sent (bytes, UTF-8)."""

UserInfo = dict[str, str]
"""An account as authdaemond describes it: ``UID``, ``GID``, ``HOME``, ``ADDRESS``,
``MAILDIR``, ``QUOTA``, ``OPTIONS``, ... (only the keys the daemon sent)."""

_KEY = re.compile(rb"[A-Za-z0-9_]+")


class AuthdaemonError(Exception):
    """authdaemond could not be asked or gave an unusable answer (any client failure)."""

    log_traceback = False  # the chain logs one line: the message says what failed


class AuthdaemonTimeoutError(AuthdaemonError):
    """Connecting, writing or reading took longer than its timeout."""


class AuthdaemonProtocolError(AuthdaemonError):
    """The answer was not in authdaemond's format, too long, or cut short."""


# -- sans-I/O ---------------------------------------------------------------------------


def is_valid_name(name: str) -> bool:
    """Whether ``name`` can be sent as a service or account name.

    It must be non-empty, at most :data:`MAX_NAME_BYTES` bytes of UTF-8 and free of
    whitespace and control characters (authdaemond splits the request at spaces; such a
    name can never denote an account).
    """
    if not name or any(ch.isspace() or ord(ch) < 32 or ord(ch) == 127 for ch in name):
        return False
    try:
        encoded = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:
        return False
    return len(encoded) <= MAX_NAME_BYTES


def format_request(service: str, uid: str) -> bytes:
    """The request line ``PRE . <service> <uid>\\n`` as bytes.

    Raises ``ValueError`` when a name fails :func:`is_valid_name`.
    """
    for what, value in (("service", service), ("uid", uid)):
        if not is_valid_name(value):
            raise ValueError(f"invalid authdaemon {what} name: {value!r}")
    return b"PRE . %s %s\n" % (
        service.encode("utf-8", "surrogateescape"),
        uid.encode("utf-8", "surrogateescape"),
    )


class ReplyParser:
    """Incremental parser of one authdaemond answer.

    Feed it the bytes as they arrive; :meth:`feed` returns True once the answer is
    complete, then :meth:`result` gives ``None`` (``FAIL``) or the ``KEY=value`` lines
    as a dict (split at the first ``=``; values decoded as UTF-8, undecodable bytes kept
    as surrogate escapes; a repeated key keeps its last value).  Call :meth:`eof` when the
    connection ends.  Every problem raises :class:`AuthdaemonProtocolError`.
    """

    __slots__ = ("_buffer", "_done", "_failed", "_fields", "_size", "max_size")

    def __init__(self, max_size: int = MAX_REPLY) -> None:
        self.max_size = max_size
        self._buffer = b""
        self._size = 0
        self._fields: UserInfo = {}
        self._failed = False
        self._done = False

    @property
    def done(self) -> bool:
        """True once the closing ``.`` or ``FAIL`` line has been read."""
        return self._done

    def feed(self, data: bytes) -> bool:
        """Take the next bytes of the answer; return :attr:`done`."""
        if not data:
            return self._done
        if self._done:
            raise AuthdaemonProtocolError("data after the end of the answer")
        self._size += len(data)
        if self._size > self.max_size:
            raise AuthdaemonProtocolError(f"answer longer than {self.max_size} bytes")
        if b"\0" in data:
            raise AuthdaemonProtocolError("NUL byte in the answer")
        self._buffer += data
        while not self._done:
            end = self._buffer.find(b"\n")
            if end < 0:
                break
            line = self._buffer[:end]
            self._buffer = self._buffer[end + 1 :]
            self._line(line)
        if self._done and self._buffer:
            raise AuthdaemonProtocolError("data after the end of the answer")
        return self._done

    def _line(self, line: bytes) -> None:
        if line == b".":
            self._done = True
        elif line == b"FAIL":
            self._failed = True
            self._done = True
        else:
            key, sep, value = line.partition(b"=")
            if not sep or not _KEY.fullmatch(key):
                shown = line[:60].decode("ascii", "backslashreplace")
                raise AuthdaemonProtocolError(f"malformed line in the answer: {shown!r}")
            self._fields[key.decode("ascii")] = value.decode("utf-8", "surrogateescape")

    def eof(self) -> None:
        """The connection was closed: raise unless the answer is complete."""
        if not self._done:
            raise AuthdaemonProtocolError(
                f"connection closed after {self._size} bytes, before the end of the answer"
            )

    def result(self) -> UserInfo | None:
        """``None`` for ``FAIL``, else the account's fields (a new dict)."""
        if not self._done:
            raise AuthdaemonProtocolError("the answer is not complete")
        return None if self._failed else dict(self._fields)


def parse_reply(data: bytes, max_size: int = MAX_REPLY) -> UserInfo | None:
    """Parse a complete answer (see :class:`ReplyParser`)."""
    parser = ReplyParser(max_size)
    parser.feed(data)
    parser.eof()
    return parser.result()


# -- configuration ----------------------------------------------------------------------


def _timeout(section: Mapping[str, Any], key: str, default: float) -> float | None:
    value = section.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise ValueError(f"[{SECTION}] {key} must be a number >= 0 (0: no limit), got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"[{SECTION}] {key} must be finite, got {value!r}")
    return None if value == 0 else float(value)


@dataclass(frozen=True, slots=True)
class AuthdaemonConfig:
    """Where authdaemond listens and how long to wait for it (``None``: no limit)."""

    socket_path: str = DEFAULT_SOCKET_PATH
    connect_timeout: float | None = 10.0
    """``TIMEOUT_SOCK``: waiting for a free connection slot plus connecting."""
    write_timeout: float | None = 10.0
    """``TIMEOUT_WRITE``: sending the request."""
    read_timeout: float | None = 30.0
    """``TIMEOUT_READ``: receiving the whole answer."""
    max_connections: int = 4
    """Lookups running at the same time; further ones wait for a slot."""
    fallback_paths: tuple[str, ...] = (DEBIAN_SOCKET_PATH,)
    """Tried in order when :attr:`socket_path` does not exist."""

    @classmethod
    def from_section(cls, section: Mapping[str, Any]) -> AuthdaemonConfig:
        """The configuration from an evaluated ``[authdaemon.py]`` section.

        Keys: ``socket_path`` (default :data:`DEFAULT_SOCKET_PATH`), ``TIMEOUT_SOCK``
        (10), ``TIMEOUT_WRITE`` (10), ``TIMEOUT_READ`` (30) in seconds, 0 meaning no
        limit, and ``max_connections`` (4).  Other keys are ignored.  Raises
        ``ValueError`` for a value of the wrong type.
        """
        path = section.get("socket_path", DEFAULT_SOCKET_PATH)
        if not isinstance(path, str) or not path or "\0" in path:
            raise ValueError(f"[{SECTION}] socket_path must be a non-empty string, got {path!r}")
        slots = section.get("max_connections", 4)
        if isinstance(slots, bool) or not isinstance(slots, int) or slots < 1:
            raise ValueError(f"[{SECTION}] max_connections must be an integer >= 1, got {slots!r}")
        return cls(
            socket_path=path,
            connect_timeout=_timeout(section, "TIMEOUT_SOCK", 10),
            write_timeout=_timeout(section, "TIMEOUT_WRITE", 10),
            read_timeout=_timeout(section, "TIMEOUT_READ", 30),
            max_connections=slots,
        )


# -- the client -------------------------------------------------------------------------


def _seconds(value: float | None) -> str:
    return "no limit" if value is None else f"{value:g} s"


class AuthdaemonClient:
    """Asks authdaemond about accounts; safe to share between filters and messages.

    Each :meth:`user_info` call opens its own connection and closes it again.  At most
    ``config.max_connections`` calls talk to the daemon at once; waiting for a slot
    counts against the connect timeout.
    """

    def __init__(self, config: AuthdaemonConfig | None = None) -> None:
        self.config = config if config is not None else AuthdaemonConfig()
        self._slots = asyncio.Semaphore(self.config.max_connections)
        self._closed = False
        self._warned_fallback = False

    def __repr__(self) -> str:
        return f"AuthdaemonClient({self.config.socket_path!r})"

    def socket_path(self) -> str:
        """The socket to use now: the configured one, or the first fallback that exists.

        When none exists the configured path is returned (connecting then fails).
        """
        configured = self.config.socket_path
        if os.path.exists(configured):
            return configured
        for candidate in self.config.fallback_paths:
            if candidate != configured and os.path.exists(candidate):
                if configured != DEFAULT_SOCKET_PATH and not self._warned_fallback:
                    self._warned_fallback = True
                    log.warning(
                        "authdaemon socket %s does not exist, using %s", configured, candidate
                    )
                return candidate
        return configured

    async def user_info(self, service: str, uid: str) -> UserInfo | None:
        """The account ``uid`` as authdaemond reports it for ``service`` (e.g. ``smtp``).

        Returns ``None`` when authdaemond answers ``FAIL`` (no such account).  Raises
        ``ValueError`` for a name that fails :func:`is_valid_name` (check first when the
        name comes from a message) and :class:`AuthdaemonError` when the daemon cannot
        be reached, times out or answers garbage.
        """
        request = format_request(service, uid)
        if self._closed:
            raise AuthdaemonError("the authdaemon client is closed")
        path = self.socket_path()
        connect_timeout = self.config.connect_timeout
        try:
            async with asyncio.timeout(connect_timeout):
                await self._slots.acquire()
                try:
                    reader, writer = await asyncio.open_unix_connection(path)
                except BaseException:
                    self._slots.release()
                    raise
        except TimeoutError:
            raise AuthdaemonTimeoutError(
                f"no connection to authdaemond at {path} within {_seconds(connect_timeout)}"
            ) from None
        except OSError as exc:
            raise AuthdaemonError(f"cannot connect to authdaemond at {path}: {exc}") from exc
        try:
            return await self._exchange(reader, writer, request, path)
        finally:
            self._slots.release()
            writer.close()
            try:
                await writer.wait_closed()
            except OSError:
                pass

    async def _exchange(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        request: bytes,
        path: str,
    ) -> UserInfo | None:
        cfg = self.config
        stage = "sending the request"
        limit = cfg.write_timeout
        try:
            async with asyncio.timeout(cfg.write_timeout):
                writer.write(request)
                await writer.drain()
            stage, limit = "reading the answer", cfg.read_timeout
            parser = ReplyParser()
            async with asyncio.timeout(cfg.read_timeout):
                while True:
                    chunk = await reader.read(4096)
                    if not chunk:
                        parser.eof()
                    if parser.feed(chunk):
                        break
            return parser.result()
        except TimeoutError:
            raise AuthdaemonTimeoutError(
                f"authdaemond at {path}: {stage} took longer than {_seconds(limit)}"
            ) from None
        except AuthdaemonProtocolError as exc:
            raise AuthdaemonProtocolError(f"authdaemond at {path}: {exc}") from None
        except OSError as exc:
            raise AuthdaemonError(f"authdaemond at {path}: {stage} failed: {exc}") from exc

    async def close(self) -> None:
        """Refuse further lookups (connections of running ones close by themselves)."""
        self._closed = True


async def authdaemon_client(ctx: Context) -> AuthdaemonClient:
    """The client shared by all filters of ``ctx``'s configuration.

    Built on first use from the ``[authdaemon.py]`` section (``ValueError`` for bad
    settings) and registered in ``ctx.services`` as :data:`SERVICE_NAME`, so every filter
    of one configuration shares its connection limit; a reload builds a new one.
    """
    services = ctx.services

    async def factory() -> AuthdaemonClient:
        return AuthdaemonClient(AuthdaemonConfig.from_section(services.sections(SECTION)))

    async def close(client: AuthdaemonClient) -> None:
        await client.close()

    return await services.get(SERVICE_NAME, factory, close)
