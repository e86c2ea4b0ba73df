"""Test kit: run the ``pythonfilter`` daemon as a real subprocess and talk to it like Courier.

:class:`DaemonKit` lays out a throw-away Courier-like tree under a temporary directory::

    root/spool/          tmp_dir: the data and control files of the requests
    root/allfilters/     the listening socket (``pf``)
    root/filters/        its sibling (a stale ``pf`` there must be removed at start)
    root/fp/             filter_path: test-only filter modules written at test time
    root/pythonfilter.conf, root/pythonfilter-modules.conf

and starts ``python -m courier_pyfilter.cli.daemon`` on it with stdin a pipe held open by
the test (closing it is courierfilter's "stop"), stderr in a file (the log), and optionally
a pipe as file descriptor 3 (courierfilter's readiness notification).

:func:`request` / :func:`send_raw` play Courier's ``submit``: connect to the socket, send
``DATA\\nCTL\\n\\n`` (all at once or in pieces), read the reply until the server closes.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = [
    "DaemonKit",
    "ReplyError",
    "control_text",
    "kit_dir",
    "request",
    "send_raw",
    "wait_until",
]

PYTHON = sys.executable

#: Launcher for the plain-asyncio variant: the daemon falls back to asyncio.run() when
#: ``import uvloop`` fails, which ``sys.modules['uvloop'] = None`` forces.
_ASYNCIO_LAUNCHER = (
    "import sys; sys.modules['uvloop'] = None; "
    "from courier_pyfilter.cli.daemon import main; sys.exit(main(sys.argv[1:]))"
)

DEFAULT_DATA = (
    "Received: from client.example ([192.0.2.7])\n"
    "  by mx.courier.test with ESMTP; Wed, 25 Nov 2026 11:20:27 +0000\n"
    "Date: Wed, 25 Nov 2026 11:20:27 +0000\n"
    "From: sender@example.com\n"
    "To: rcpt@courier.test\n"
    "Subject: test message\n"
    "Message-Id: <test@client.example>\n"
    "\n"
    "Hello.\n"
)


class ReplyError(AssertionError):
    """The server did not answer as a courierfilter must (no reply, never closed)."""


def control_text(
    msgid: str,
    sender: str = "sender@example.com",
    recipients: Sequence[str] = ("rcpt@courier.test",),
    *,
    client_ip: str = "::ffff:192.0.2.7",
) -> str:
    """A control file as Courier's ``submit`` writes it for an SMTP message."""
    lines = [
        f"s{sender}",
        f"fdns; client.example ([{client_ip}])",
        "e",
        "t",
        f"M{msgid}",
    ]
    for rcpt in recipients:
        lines += [f"r{rcpt}", "R", "N"]
    lines += [
        f"OTCPREMOTEIP={client_ip}",
        "usmtp",
        "E1796210427",
        "p1795634427",
        "W1795620027",
    ]
    return "\n".join(lines) + "\n"


async def send_raw(
    socket_path: str | os.PathLike[str],
    chunks: bytes | Iterable[bytes],
    *,
    delay: float = 0.0,
    timeout: float = 10.0,
    half_close: bool = False,
) -> bytes:
    """Connect, send ``chunks`` (pausing ``delay`` between them), read until EOF.

    Raises :class:`ReplyError` when the server does not close within ``timeout``.
    """
    reader, writer = await asyncio.open_unix_connection(os.fspath(socket_path))
    try:
        pieces = [chunks] if isinstance(chunks, bytes) else list(chunks)
        for i, piece in enumerate(pieces):
            if i and delay:
                await asyncio.sleep(delay)
            writer.write(piece)
            await writer.drain()
        if half_close and writer.can_write_eof():
            writer.write_eof()
        try:
            async with asyncio.timeout(timeout):
                return await reader.read()
        except TimeoutError:
            raise ReplyError(f"no complete reply within {timeout} s") from None
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


async def request(
    socket_path: str | os.PathLike[str],
    data_path: str | os.PathLike[str],
    *control_paths: str | os.PathLike[str],
    timeout: float = 10.0,
) -> bytes:
    """One courierfilter request: data path, control paths, empty line; the reply bytes."""
    text = "".join(f"{os.fspath(p)}\n" for p in (data_path, *control_paths)) + "\n"
    return await send_raw(socket_path, text.encode(), timeout=timeout)


async def wait_until(predicate: Any, timeout: float = 5.0, interval: float = 0.02) -> None:
    """Poll ``predicate()`` until true; AssertionError after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s: {predicate}")
        await asyncio.sleep(interval)


@contextlib.contextmanager
def kit_dir() -> Iterator[Path]:
    """A short temporary directory (UNIX socket paths must stay under 108 bytes)."""
    path = Path(tempfile.mkdtemp(prefix="pf", dir="/tmp"))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _literal(value: Any) -> str:
    """A value as pythonfilter-modules.conf writes it (a Python literal)."""
    if isinstance(value, float | int | bool | str | list | tuple | dict) or value is None:
        return repr(value)
    raise TypeError(f"cannot write {value!r} as a config literal")


@dataclass
class DaemonKit:
    """A temporary Courier-like tree and, once :meth:`start` ed, the daemon serving it."""

    root: Path
    loop: str = "default"
    """``default``: the daemon's own choice (uvloop when installed); ``asyncio``: plain."""
    settings: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, dict[str, Any]] = field(default_factory=dict)
    proc: subprocess.Popen[bytes] | None = None
    _messages: int = 0

    def __post_init__(self) -> None:
        for sub in ("spool", "allfilters", "filters", "fp"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)

    # -- layout ---------------------------------------------------------------------------

    @property
    def spool(self) -> Path:
        """The daemon's ``tmp_dir``."""
        return self.root / "spool"

    @property
    def filter_dir(self) -> Path:
        """The ``filter_path`` directory for test-only filters."""
        return self.root / "fp"

    @property
    def socket_path(self) -> Path:
        """Where the daemon listens."""
        return self.root / "allfilters" / "pf"

    @property
    def chain_path(self) -> Path:
        """The chain file (``pythonfilter.conf``)."""
        return self.root / "pythonfilter.conf"

    @property
    def modules_path(self) -> Path:
        """The modules file (``pythonfilter-modules.conf``)."""
        return self.root / "pythonfilter-modules.conf"

    @property
    def log_path(self) -> Path:
        """The daemon's stderr."""
        return self.root / "daemon.log"

    def write_filter(self, name: str, source: str) -> Path:
        """Write ``NAME.py`` into the filter directory."""
        path = self.filter_dir / f"{name}.py"
        path.write_text(source)
        return path

    def write_chain(self, *lines: str) -> None:
        """Write ``pythonfilter.conf`` (one filter line per argument)."""
        self.chain_path.write_text("".join(f"{line}\n" for line in lines))

    def write_modules(
        self,
        sections: Mapping[str, Mapping[str, Any]] | None = None,
        *,
        raw: str = "",
        **daemon: Any,
    ) -> None:
        """Write ``pythonfilter-modules.conf``: the daemon section (spool, filter path and
        short timeouts, overridden by ``daemon``), the given filter sections, then ``raw``."""
        if sections is not None:
            self.sections = {k: dict(v) for k, v in sections.items()}
        self.settings.update(daemon)
        base: dict[str, Any] = {
            "filter_path": [str(self.filter_dir)],
            "tmp_dir": str(self.spool),
            "request_timeout": 5.0,
            "drain_timeout": 10.0,
            "state_dir": str(self.root / "state"),
        }
        base.update(self.settings)
        out = ["[courier-pyfilter]"]
        out += [f"{k} = {_literal(v)}" for k, v in base.items()]
        for name, values in self.sections.items():
            out.append(f"\n[{name}]")
            out += [f"{k} = {_literal(v)}" for k, v in values.items()]
        text = "\n".join(out) + "\n"
        if raw:
            text += "\n" + raw
        self.modules_path.write_text(text)

    def message(
        self,
        data: str = DEFAULT_DATA,
        *,
        msgid: str | None = None,
        sender: str = "sender@example.com",
        recipients: Sequence[str] = ("rcpt@courier.test",),
    ) -> tuple[Path, Path, str]:
        """Write a data file and a control file into the spool: ``(data, control, msgid)``."""
        self._messages += 1
        n = self._messages
        msgid = msgid or f"00000000001620{n:02X}.000000006B06C47B.{os.getpid():08X}"
        data_path = self.spool / f"D{n}"
        ctl_path = self.spool / f"C{n}"
        data_path.write_text(data)
        ctl_path.write_text(control_text(msgid, sender, recipients))
        return data_path, ctl_path, msgid

    # -- process --------------------------------------------------------------------------

    def command(self, *extra: str) -> list[str]:
        """The daemon's command line."""
        args = [
            "--socket",
            str(self.socket_path),
            "--config",
            str(self.chain_path),
            "--modules-config",
            str(self.modules_path),
            *extra,
        ]
        if self.loop == "asyncio":
            return [PYTHON, "-c", _ASYNCIO_LAUNCHER, *args]
        return [PYTHON, "-m", "courier_pyfilter.cli.daemon", *args]

    def env(self) -> dict[str, str]:
        """A small environment, as courierfilter gives its filters."""
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG", "VIRTUAL_ENV")}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def spawn(self, *extra: str, ready_pipe: bool = False) -> int | None:
        """Start the daemon without waiting.  With ``ready_pipe`` its fd 3 is the write end
        of a pipe; the read end is returned (EOF on it = the daemon is ready)."""
        if not self.modules_path.exists():
            self.write_modules()
        read_fd: int | None = None
        preexec = None
        if ready_pipe:
            read_fd, write_fd = os.pipe()

            def preexec() -> None:  # runs in the child: the pipe becomes fd 3
                if write_fd == 3:
                    os.set_inheritable(3, True)
                else:
                    os.dup2(write_fd, 3)  # the copy is inheritable, the original is not

        log = self.log_path.open("ab")
        try:
            self.proc = subprocess.Popen(
                self.command(*extra),
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                cwd=self.root,
                env=self.env(),
                close_fds=not ready_pipe,
                preexec_fn=preexec,
            )
        finally:
            log.close()
            if ready_pipe:
                os.close(write_fd)
        return read_fd

    async def start(self, *extra: str, timeout: float = 15.0) -> None:
        """Start the daemon and wait until its socket accepts connections."""
        self.spawn(*extra)
        await self.wait_ready(timeout)

    def start_blocking(self, *extra: str, timeout: float = 15.0) -> None:
        """:meth:`start` for synchronous (module-scoped) fixtures."""
        self.spawn(*extra)
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not self.socket_path.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"daemon did not start:\n{self.log()}")
            time.sleep(0.02)

    async def wait_ready(self, timeout: float = 15.0) -> None:
        """Wait for the socket (fails early, with the log, if the daemon exits)."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while not self.socket_path.exists():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"daemon exited with {self.proc.returncode} before listening:\n{self.log()}"
                )
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon not listening after {timeout} s:\n{self.log()}")
            await asyncio.sleep(0.02)

    async def request(self, data_path: Path, *control_paths: Path, timeout: float = 10.0) -> bytes:
        """Send one request to this daemon."""
        return await request(self.socket_path, data_path, *control_paths, timeout=timeout)

    async def ask(self, **kwargs: Any) -> tuple[bytes, str]:
        """Write a fresh message, send it, return ``(reply, msgid)``."""
        data, ctl, msgid = self.message(**kwargs)
        return await self.request(data, ctl), msgid

    def log(self) -> str:
        """Everything the daemon wrote to stderr so far."""
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def json_log(self) -> list[dict[str, Any]]:
        """The log as JSON objects (fails on a line that is not one)."""
        return [json.loads(line) for line in self.log().splitlines() if line.strip()]

    async def wait_log(self, text: str, timeout: float = 5.0) -> None:
        """Wait until ``text`` appears in the log."""
        try:
            await wait_until(lambda: text in self.log(), timeout)
        except AssertionError:
            raise AssertionError(f"{text!r} not logged within {timeout} s:\n{self.log()}") from None

    def signal(self, sig: signal.Signals) -> None:
        """Send a signal to the daemon."""
        assert self.proc is not None
        self.proc.send_signal(sig)

    def close_stdin(self) -> None:
        """courierfilter's stop request: EOF on the daemon's stdin."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.close()

    async def wait_exit(self, timeout: float = 15.0) -> int:
        """Wait for the daemon to exit; its status."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                raise AssertionError(f"daemon still running after {timeout} s:\n{self.log()}")
            await asyncio.sleep(0.02)
        return self.proc.returncode

    def stop(self) -> None:
        """Make sure the daemon is gone (teardown): EOF, then SIGKILL after 5 s."""
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        try:
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def check_config(self, *extra: str) -> subprocess.CompletedProcess[str]:
        """Run ``pythonfilter --check-config`` on this tree."""
        if not self.modules_path.exists():
            self.write_modules()
        cmd = [arg for arg in self.command(*extra, "--check-config")]
        return subprocess.run(
            cmd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            cwd=self.root,
            env=self.env(),
            timeout=30,
            check=False,
        )
