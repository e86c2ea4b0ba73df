"""Logging: plain lines (the original's formats, syslog adds the rest) or JSON objects.

Under courierfilter, stderr goes to syslog one line per record, so the text format writes
only the message.  The per-message lines keep the original's wording so existing log
parsers keep working:

* ``pythonfilter <filter> reject,from=<sender>,addr=<recipient>: <reply>`` per recipient of
  a refused message;
* ``CPU TIME ACCOUNTING: <msgid> processed with <s> seconds: (<filter>(<s>) ...)`` per
  message (the times are wall-clock seconds here: filters share one thread);

plus one summary line per message (``message id=... verdict=... filter=... time=...``).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterable
from typing import Any, TextIO

__all__ = [
    "JsonFormatter",
    "MessageLog",
    "accounting_line",
    "reject_lines",
    "setup_logging",
    "summary_line",
]

_STANDARD_ATTRS = frozenset(
    logging.LogRecord("", 0, "", 0, "", (), None).__dict__.keys() | {"message", "asctime"}
)


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time, level, logger, message and any ``extra`` fields."""

    def format(self, record: logging.LogRecord) -> str:
        import json

        data: dict[str, Any] = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                data[key] = value
        if record.exc_info:
            data["traceback"] = self.formatException(record.exc_info)
        return json.dumps(data, default=str, ensure_ascii=False)


class _TextFormatter(logging.Formatter):
    """The message; tracebacks follow on their own lines (each becomes a syslog line)."""

    def __init__(self) -> None:
        super().__init__("%(message)s")


def setup_logging(
    fmt: str = "text", *, stream: TextIO | None = None, level: int = logging.INFO
) -> None:
    """Send all ``courier_pyfilter`` (and legacy) logging to ``stream`` (stderr)."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else _TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(True)


def _quote(text: str) -> str:
    """Double-quoted, with backslashes and quotes escaped (as JSON would for ASCII)."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _oneline(text: str) -> str:
    return text.replace("\r", "").replace("\n", " ")


def reject_lines(
    filter_name: str, sender: str | None, recipients: Iterable[str], reply: str
) -> list[str]:
    """The original's per-recipient lines for a refused message."""
    reply1 = _oneline(reply)
    return [
        f"pythonfilter {filter_name} reject,from=<{sender or ''}>,addr=<{rcpt}>: {reply1}"
        for rcpt in recipients
    ]


def accounting_line(msgid: str, total: float, timings: Iterable[tuple[str, float]]) -> str:
    """The original's per-message accounting line."""
    parts = " ".join(f"{name}({seconds:f})" for name, seconds in timings)
    return f"CPU TIME ACCOUNTING: {msgid} processed with {total:f} seconds: ({parts})"


def summary_line(msgid: str, verdict: str, deciding: str | None, reply: str, total: float) -> str:
    """Our one-line summary of a message's fate."""
    return (
        f"message id={msgid} verdict={verdict} filter={deciding or '-'} "
        f"time={total:.6f} reply={_quote(_oneline(reply))}"
    )


FLUSH_LINES = 64
"""Flush at once when this many lines are queued."""

FLUSH_INTERVAL = 0.05
"""Seconds per-message lines may wait to be written together (one write per batch)."""


class MessageLog:
    """The per-message lines, written straight to stderr in batches.

    The per-message path is the hottest in the server, so these lines bypass
    :mod:`logging` (about 10 µs a record) and are joined and written once per event-loop
    iteration.  The format follows the ``log_format`` setting; JSON lines carry the
    ``fields`` given for the line.
    """

    __slots__ = ("_buffer", "_fd", "_json", "_loop", "_scheduled")

    def __init__(self, fmt: str = "text", *, fd: int = 2) -> None:
        self._json = fmt == "json"
        self._fd = fd
        self._buffer: list[str] = []
        self._scheduled = False
        self._loop: Any = None

    def emit(self, line: str, **fields: Any) -> None:
        """Queue one line (with its JSON fields) for the next flush."""
        if self._json:
            import json

            data = {
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                "level": "info",
                "logger": "courier_pyfilter.messages",
                "message": line,
            }
            data.update(fields)
            line = json.dumps(data, default=str, ensure_ascii=False)
        self._buffer.append(line)
        if len(self._buffer) >= FLUSH_LINES:
            self.flush()  # a burst of answers: keep the buffer (and the joined copy) small
        elif not self._scheduled:
            self._scheduled = True
            loop = self._loop
            if loop is None:
                import asyncio

                try:
                    loop = self._loop = asyncio.get_running_loop()
                except RuntimeError:
                    self.flush()
                    return
            loop.call_later(FLUSH_INTERVAL, self.flush)

    def flush(self) -> None:
        """Write every queued line now."""
        self._scheduled = False
        if not self._buffer:
            return
        data = ("\n".join(self._buffer) + "\n").encode("utf-8", "backslashreplace")
        self._buffer.clear()
        import os

        try:
            while data:
                written = os.write(self._fd, data)
                data = data[written:]
        except BlockingIOError:
            import select

            select.select([], [self._fd], [], 5.0)
            try:
                os.write(self._fd, data)
            except OSError:
                pass
        except OSError:
            pass
