"""The courierfilter request/reply protocol, free of I/O.

Courier's ``submit`` connects to the filter's UNIX socket and sends, each line ended by
``\\n``: the path of the message data file, the paths of one or more control files, then an
empty line.  It then reads the reply: SMTP-style lines (``NNN-text`` continuation lines and a
final ``NNN text`` line) and waits for the filter to close the connection.

:class:`RequestParser` is a small state machine: feed it the bytes as they arrive and it
returns a :class:`Request` once the empty line has been seen.  :func:`format_reply` turns a
reply text into the bytes to send.  Nothing here touches a socket or a file.
"""

from __future__ import annotations

import os.path
from dataclasses import dataclass

__all__ = [
    "MAX_LINE_LENGTH",
    "MAX_PATHS",
    "ProtocolError",
    "Request",
    "RequestParser",
    "format_reply",
    "resolve_path",
]

MAX_LINE_LENGTH = 4096
"""Longest accepted path line in bytes (Linux PATH_MAX); Courier's are under 100."""

MAX_PATHS = 10_000
"""Most paths in one request: the data file plus control files (one per ``batchsize``
recipients, 100 by default, so this allows about a million recipients)."""


class ProtocolError(ValueError):
    """The peer sent something that is not a courierfilter request."""


@dataclass(frozen=True, slots=True)
class Request:
    """One filtering request: the data file and the control files, as absolute paths."""

    data_path: str
    control_paths: tuple[str, ...]


def resolve_path(raw: str, tmp_dir: str, *, restrict: bool = True) -> str:
    """Make a request path absolute and check it.

    A relative path is taken under Courier's ``tmp`` directory, as the original does, and
    must stay inside it after normalisation (no ``..`` escape).  With ``restrict`` an
    absolute path must lie under ``tmp_dir`` too.  Raises :class:`ProtocolError`.
    """
    path = raw.strip()
    # Fast path for what Courier sends: an absolute, already normal path under tmp_dir.
    if (
        path.startswith(tmp_dir)
        and path[len(tmp_dir) : len(tmp_dir) + 1] == "/"
        and not tmp_dir.endswith("/")
        and "/." not in path
        and "//" not in path
        and "\x00" not in path
        and not path.endswith("/")
    ):
        return path
    if not path:
        raise ProtocolError("empty path")
    if "\x00" in path:
        raise ProtocolError("path contains a NUL byte")
    base = os.path.normpath(tmp_dir)
    if not os.path.isabs(path):
        path = os.path.join(base, path)
        restrict = True
    path = os.path.normpath(path)
    if restrict and os.path.commonpath((base, path)) != base:
        raise ProtocolError(f"path {raw!r} is outside {base}")
    if restrict and path == base:
        raise ProtocolError(f"path {raw!r} names the spool directory itself")
    return path


class RequestParser:
    """Incremental parser of one courierfilter request.

    >>> p = RequestParser("/var/lib/courier/tmp")
    >>> p.feed(b"/var/lib/courier/tmp/1/D12\\n/var/lib/courier/tmp/1/C12\\n")
    >>> p.feed(b"\\n")
    Request(data_path='/var/lib/courier/tmp/1/D12', control_paths=('/var/lib/courier/tmp/1/C12',))

    ``feed`` returns ``None`` until the request is complete, then the :class:`Request`.
    Bytes after the empty line are ignored (Courier sends none).  :meth:`eof` reports a
    connection closed early.  Every error raises :class:`ProtocolError`.
    """

    __slots__ = ("_buffer", "_done", "_lines", "_restrict", "_tmp_dir")

    def __init__(self, tmp_dir: str, *, restrict_paths: bool = True) -> None:
        self._tmp_dir = tmp_dir
        self._restrict = restrict_paths
        self._buffer = b""
        self._lines: list[str] = []
        self._done = False

    @property
    def done(self) -> bool:
        """True once a complete request has been returned."""
        return self._done

    def feed(self, data: bytes) -> Request | None:
        """Add received bytes; return the request when its empty line has arrived."""
        if self._done:
            return None
        buffer = self._buffer + data if self._buffer else data
        start = 0
        while True:
            end = buffer.find(b"\n", start)
            if end < 0:
                break
            line = buffer[start:end]
            start = end + 1
            if line.endswith(b"\r"):
                line = line[:-1]
            if len(line) > MAX_LINE_LENGTH:
                raise ProtocolError(f"line longer than {MAX_LINE_LENGTH} bytes")
            if not line.strip():
                if not self._lines:
                    raise ProtocolError("request starts with an empty line (no data file)")
                self._done = True
                self._buffer = b""
                return self._build()
            if len(self._lines) >= MAX_PATHS:
                raise ProtocolError(f"more than {MAX_PATHS} paths in one request")
            try:
                text = line.decode("utf-8")
            except UnicodeDecodeError as exc:
                raise ProtocolError("path is not valid UTF-8") from exc
            self._lines.append(text)
        rest = buffer[start:]
        if len(rest) > MAX_LINE_LENGTH:
            raise ProtocolError(f"line longer than {MAX_LINE_LENGTH} bytes")
        self._buffer = rest
        return None

    def eof(self) -> None:
        """The peer closed its side: an error unless the request was complete."""
        if not self._done:
            if self._lines or self._buffer:
                raise ProtocolError("connection closed before the end of the request")
            raise ProtocolError("connection closed without a request")

    def _build(self) -> Request:
        lines, self._lines = self._lines, []  # the parser lives as long as the connection
        paths = [resolve_path(p, self._tmp_dir, restrict=self._restrict) for p in lines]
        return Request(paths[0], tuple(paths[1:]))


def format_reply(reply: str) -> bytes:
    """Encode a reply for the socket: every line ended by ``\\n``, UTF-8.

    ``reply`` is the text a :class:`~courier_pyfilter.decision.Decision` renders (lines
    separated by ``\\n``, no trailing newline).  Carriage returns are dropped; Courier reads
    lines up to ``\\n``.
    """
    text = reply.replace("\r", "")
    if not text.endswith("\n"):
        text += "\n"
    return text.encode("utf-8", "surrogateescape")
