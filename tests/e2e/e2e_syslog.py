"""A syslog sink for the end-to-end tests: binds ``/dev/log`` and keeps every message.

Courier and every filter it runs log only through syslog(3) (the filters' stderr goes
through ``courierlogger``), and test containers run no syslog daemon, so without a sink
the logs are lost.  :class:`SyslogSink` receives the datagrams in a background thread,
keeps them in memory for assertions (:meth:`SyslogSink.wait_for`) and appends them to a
log file for humans.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

__all__ = ["SyslogLine", "SyslogSink", "SyslogUnavailable", "parse_syslog"]

_LINE = re.compile(
    r"^<(?P<pri>\d{1,3})>"
    r"(?:[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d )?"
    r"(?P<ident>[^\s:\[]+)(?:\[(?P<pid>\d+)\])?: ?"
    r"(?P<text>.*)$",
    re.DOTALL,
)


class SyslogUnavailable(RuntimeError):
    """``/dev/log`` could not be taken over (another syslog daemon serves it)."""


@dataclass(frozen=True, slots=True)
class SyslogLine:
    """One received syslog message."""

    received: float
    ident: str
    pid: int | None
    text: str
    raw: str

    def __str__(self) -> str:
        pid = f"[{self.pid}]" if self.pid is not None else ""
        return f"{self.ident}{pid}: {self.text}"


def parse_syslog(raw: str, received: float = 0.0) -> SyslogLine:
    """Split a raw ``<PRI>Mmm dd hh:mm:ss ident[pid]: text`` datagram into its parts."""
    raw = raw.rstrip("\x00\n")
    match = _LINE.match(raw)
    if match is None:
        return SyslogLine(received, "", None, raw, raw)
    pid = match.group("pid")
    return SyslogLine(
        received, match.group("ident"), int(pid) if pid else None, match.group("text"), raw
    )


def _answers(path: str) -> bool:
    """True when something is listening on the datagram socket ``path``."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


class SyslogSink:
    """Receive syslog datagrams on ``path`` in a daemon thread (see the module docstring)."""

    def __init__(self, path: str = "/dev/log", logfile: Path | None = None) -> None:
        self.path = path
        self.logfile = logfile
        self._lines: list[SyslogLine] = []
        self._cond = threading.Condition()
        self._stop = threading.Event()
        self._sock: socket.socket | None = None
        self._inode: int | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Bind the socket and start the receiving thread.

        Raises :class:`SyslogUnavailable` when a live syslog daemon already owns ``path``.
        """
        try:
            st = os.lstat(self.path)
        except FileNotFoundError:
            pass
        else:
            if stat.S_ISSOCK(st.st_mode) and _answers(self.path):
                raise SyslogUnavailable(
                    f"{self.path} is served by another syslog daemon; the e2e tests need to "
                    "read Courier's log lines, stop it or run them in a container without one"
                )
            os.unlink(self.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(self.path)
        os.chmod(self.path, 0o666)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        sock.settimeout(0.2)
        self._sock = sock
        self._inode = os.lstat(self.path).st_ino
        self._thread = threading.Thread(target=self._run, name="e2e-syslog-sink", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        assert self._sock is not None
        out = open(self.logfile, "a", buffering=1) if self.logfile else None  # noqa: SIM115
        try:
            while not self._stop.is_set():
                try:
                    data = self._sock.recv(65536)
                except TimeoutError:
                    continue
                except OSError:
                    break
                now = time.time()
                line = parse_syslog(data.decode("utf-8", "replace"), now)
                with self._cond:
                    self._lines.append(line)
                    self._cond.notify_all()
                if out is not None:
                    stamp = time.strftime("%H:%M:%S", time.localtime(now))
                    out.write(f"{stamp}.{int(now % 1 * 1000):03d} {line}\n")
        finally:
            if out is not None:
                out.close()

    def stop(self) -> None:
        """Stop the thread and remove the socket if it is still the one we bound."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        if self._sock is not None:
            self._sock.close()
        with contextlib.suppress(OSError):
            if self._inode is not None and os.lstat(self.path).st_ino == self._inode:
                os.unlink(self.path)

    # -- queries ------------------------------------------------------------------------

    def mark(self) -> int:
        """A position in the log: pass it as ``since`` to only look at later lines."""
        with self._cond:
            return len(self._lines)

    def lines(self, since: int = 0, ident: str | None = None) -> list[SyslogLine]:
        """The lines received after ``since``, optionally only those of one ``ident``."""
        with self._cond:
            found = self._lines[since:]
        return [line for line in found if ident is None or line.ident == ident]

    def wait_for(
        self,
        pattern: str | re.Pattern[str],
        *,
        since: int = 0,
        ident: str | None = None,
        timeout: float = 10.0,
    ) -> SyslogLine:
        """Wait until a line matching ``pattern`` (``re.search``) arrives; return it.

        Raises ``AssertionError`` listing the recent lines when ``timeout`` expires.
        """
        regex = re.compile(pattern) if isinstance(pattern, str) else pattern

        def match(line: SyslogLine) -> bool:
            return (ident is None or line.ident == ident) and regex.search(line.text) is not None

        found = self._wait(match, since, timeout)
        if found is None:
            tail = "\n".join(f"  {line}" for line in self.lines(since)[-40:])
            raise AssertionError(
                f"no syslog line matching {regex.pattern!r}"
                f"{f' from {ident}' if ident else ''} within {timeout:g}s; lines since mark:\n"
                f"{tail or '  (none)'}"
            )
        return found

    def _wait(
        self, match: Callable[[SyslogLine], bool], since: int, timeout: float
    ) -> SyslogLine | None:
        deadline = time.monotonic() + timeout
        checked = since
        with self._cond:
            while True:
                for line in self._lines[checked:]:
                    if match(line):
                        return line
                checked = len(self._lines)
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return None
                self._cond.wait(remaining)

    def tail(self, count: int = 40, since: int = 0) -> str:
        """The last ``count`` lines after ``since`` as text (for failure messages)."""
        return "\n".join(str(line) for line in self.lines(since)[-count:])
