"""A real Courier authdaemond for the tests, isolated from the machine's own.

authdaemond has its paths compiled in: it reads ``/etc/courier/authdaemonrc``, the
userdb module reads ``/etc/courier/userdb.dat``, and the socket is
``/run/courier/authdaemon/socket``.  To leave the machine's Courier (and the e2e tests,
which start Debian's authdaemond on exactly those paths) alone, :class:`RealAuthdaemon`
starts the daemon binary in the foreground inside a private mount namespace
(``unshare --mount``) in which

* a private directory is bind-mounted on ``/etc/courier``, holding our ``authdaemonrc``
  (``authmodulelist="authuserdb"``, 2 daemons) and a ``userdb`` compiled with
  ``makeuserdb -f``;
* a private directory is bind-mounted on ``/run``, so the socket is created in it and
  is reachable from outside the namespace at :attr:`RealAuthdaemon.socket_path`.

Nothing outside the private directory is written; the mounts vanish with the process.

Accounts (``userdb``; homes under ``<dir>/home``):

==================== =============================== =================================
name                 ``MAILDIR``                      used for
==================== =============================== =================================
``alice``            ``<home>/Maildir`` (absolute)    local user
``bob``              (none: ``HOME/Maildir``)         local user without ``mail=``
``dave``             ``./Mail/box`` (relative)        relative MAILDIR
``carol@hosted.test`` ``./Maildir`` (relative)       hosted-domain account
==================== =============================== =================================

:func:`courier_sysconfdir` writes a Courier configuration directory in which
``courier.test`` is local and ``hosted.test`` is hosted.

Fixtures (bind them in a test module: ``real_authdaemon = authdaemon_fixture.real_authdaemon``):

``real_authdaemon``
    One daemon for the whole session, started on first use, stopped when pytest ends,
    shared by every module using the fixture.  When authdaemond, the userdb module,
    root rights or ``unshare`` are missing the tests skip with the reason; under
    ``CI=true`` they fail instead (CI must install ``courier-authdaemon`` and
    ``courier-authlib-userdb``).
``fake_authdaemon``
    For fault injection only: ``await fake_authdaemon(handler)`` starts a
    :class:`FakeAuthdaemon` on a UNIX socket in ``tmp_path`` that reads each request
    line and then runs ``handler(request, writer)`` (answer garbage, hang, hang up...).
    Helpers: :func:`answer` (a fixed answer, optionally late), :func:`hang`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "AUTHDAEMOND",
    "HOSTED_DOMAIN",
    "LOCAL_DOMAIN",
    "AuthdaemonUnavailable",
    "FakeAuthdaemon",
    "RealAuthdaemon",
    "answer",
    "courier_sysconfdir",
    "dead_socket",
    "fake_authdaemon",
    "hang",
    "real_authdaemon",
]

AUTHDAEMOND = "/usr/lib/courier/courier-authlib/authdaemond"
USERDB_MODULE = "/usr/lib/courier-authlib/libauthuserdb.so.0"
LOCAL_DOMAIN = "courier.test"
HOSTED_DOMAIN = "hosted.test"
START_TIMEOUT = 10.0


class AuthdaemonUnavailable(RuntimeError):
    """authdaemond cannot be run here (not installed, not root, no mount namespaces)."""


def courier_sysconfdir(directory: Path) -> str:
    """Write a Courier sysconfdir: ``courier.test`` local, ``hosted.test`` hosted."""
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "me").write_text("mx.courier.test\n")
    (directory / "locals").write_text(f"localhost\n{LOCAL_DOMAIN}\n")
    (directory / "hosteddomains").write_text(f"{HOSTED_DOMAIN}\n")
    return str(directory)


@dataclass
class RealAuthdaemon:
    """authdaemond (userdb only) in a private mount namespace; see the module docs."""

    directory: Path
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    startup_seconds: float = 0.0

    # account name -> (home directory name, userdb ``mail=`` value or None); ``{home}``
    # in the value is replaced by the home directory
    ACCOUNTS = {
        "alice": ("alice", "{home}/Maildir"),
        "bob": ("bob", None),
        "dave": ("dave", "./Mail/box"),
        f"carol@{HOSTED_DOMAIN}": ("carol", "./Maildir"),
    }

    @property
    def socket_path(self) -> str:
        """The daemon's socket as seen from outside the namespace."""
        return str(self.directory / "run" / "courier" / "authdaemon" / "socket")

    def home(self, account: str) -> Path:
        """The home directory of ``account``."""
        return self.directory / "home" / self.ACCOUNTS[account][0]

    def maildir(self, account: str) -> Path:
        """Where ``account``'s mail (and ``maildirsize``) lives."""
        home = self.home(account)
        mail = self.ACCOUNTS[account][1]
        return home / "Maildir" if mail is None else home / mail.format(home=home)

    def section(self, **extra: object) -> dict[str, object]:
        """An ``[authdaemon.py]`` section pointing at this daemon."""
        return {"socket_path": self.socket_path, **extra}

    # -- start / stop ------------------------------------------------------------------

    @staticmethod
    def check_prerequisites() -> None:
        """Raise :class:`AuthdaemonUnavailable` with the reason when it cannot run here."""
        if not os.access(AUTHDAEMOND, os.X_OK):
            raise AuthdaemonUnavailable(
                f"Courier authdaemond is not installed ({AUTHDAEMOND} missing; "
                "apt-get install courier-authdaemon courier-authlib-userdb)"
            )
        if shutil.which("makeuserdb") is None or not os.path.exists(USERDB_MODULE):
            raise AuthdaemonUnavailable(
                "Courier's userdb module is not installed (apt-get install courier-authlib-userdb)"
            )
        if os.geteuid() != 0:
            raise AuthdaemonUnavailable(
                "the real authdaemond tests need root (a private mount namespace hides "
                "authdaemond's fixed paths)"
            )
        unshare = shutil.which("unshare")
        if unshare is None:
            raise AuthdaemonUnavailable("unshare (util-linux) is not installed")
        probe = subprocess.run(
            [unshare, "--mount", "--propagation", "private", "true"],
            capture_output=True,
            timeout=10,
        )
        if probe.returncode != 0:
            raise AuthdaemonUnavailable(
                "cannot create a mount namespace: " + probe.stderr.decode(errors="replace")
            )

    def write_files(self) -> None:
        """authdaemonrc, the userdb (compiled), homes and the run directory."""
        etc = self.directory / "etc"
        etc.mkdir(parents=True, exist_ok=True)
        (self.directory / "run" / "courier" / "authdaemon").mkdir(parents=True, exist_ok=True)
        (etc / "authdaemonrc").write_text(
            'authmodulelist="authuserdb"\n'
            "daemons=2\n"
            "authdaemonvar=/run/courier/authdaemon\n"
            "DEBUG_LOGIN=0\n"
            'DEFAULTOPTIONS=""\n'
            'LOGGEROPTS=""\n'
        )
        lines = []
        for number, (name, (home_name, mail)) in enumerate(sorted(self.ACCOUNTS.items())):
            home = self.directory / "home" / home_name
            fields = [f"uid={5100 + number}", f"gid={5100 + number}", f"home={home}"]
            if mail is not None:
                fields.append(f"mail={mail.format(home=home)}")
            lines.append(f"{name}\t{'|'.join(fields)}\n")
            self.maildir(name).mkdir(parents=True, exist_ok=True)
        userdb = etc / "userdb"
        userdb.write_text("".join(lines))
        userdb.chmod(0o600)
        subprocess.run(
            ["makeuserdb", "-f", str(userdb)], check=True, capture_output=True, timeout=30
        )

    def start(self) -> RealAuthdaemon:
        """Write the files, start the daemon, wait until it answers a lookup."""
        self.check_prerequisites()
        if len(self.socket_path) > 100:
            raise AuthdaemonUnavailable(f"socket path too long for AF_UNIX: {self.socket_path}")
        t0 = time.monotonic()
        self.write_files()
        d = self.directory
        script = (
            f"mount --bind {d / 'etc'} /etc/courier && mount --bind {d / 'run'} /run "
            f"&& exec {AUTHDAEMOND}"
        )
        unshare = shutil.which("unshare")
        assert unshare is not None
        with open(d / "authdaemond.log", "ab") as out:
            self.process = subprocess.Popen(
                [unshare, "--mount", "--propagation", "private", "/bin/sh", "-c", script],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                cwd=d,
            )
        deadline = t0 + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise AuthdaemonUnavailable(
                    f"authdaemond exited with {self.process.returncode}: {self.tail()}"
                )
            if self.ask("alice").startswith(b"UID="):
                break
            time.sleep(0.02)
        else:
            self.stop()
            raise AuthdaemonUnavailable(f"authdaemond did not answer within {START_TIMEOUT} s")
        self.startup_seconds = time.monotonic() - t0
        return self

    def ask(self, name: str, timeout: float = 2.0) -> bytes:
        """The raw answer to ``PRE . smtp <name>`` (``b""`` when not reachable)."""
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
                s.settimeout(timeout)
                s.connect(self.socket_path)
                s.sendall(f"PRE . smtp {name}\n".encode())
                data = b""
                while chunk := s.recv(4096):
                    data += chunk
                return data
        except OSError:
            return b""

    def tail(self, lines: int = 15) -> str:
        """The end of the daemon's output (for error messages)."""
        with contextlib.suppress(OSError):
            text = (self.directory / "authdaemond.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    def alive(self) -> bool:
        """True while the daemon runs."""
        return self.process is not None and self.process.poll() is None

    def stop(self) -> None:
        """SIGTERM (authdaemond stops its children), SIGKILL to its group after 10 s."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)  # the group started for it
                proc.wait(10)

    def cleanup(self) -> None:
        """Stop the daemon and delete its directory."""
        self.stop()
        shutil.rmtree(self.directory, ignore_errors=True)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").strip().lower() == "true":
        pytest.fail(f"the real authdaemond is required under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


_SESSION: dict[str, RealAuthdaemon | str] = {}


@pytest.fixture(scope="session")
def real_authdaemon(pytestconfig: pytest.Config) -> Iterator[RealAuthdaemon]:
    """The session's authdaemond (see the module documentation)."""
    # Each importing module gets its own fixture definition: the daemon is kept here so
    # that it starts once per pytest process.
    found = _SESSION.get("daemon")
    if isinstance(found, str):
        _unavailable(found)
    if found is None:
        # A short path under /tmp: AF_UNIX paths are limited to 108 bytes.
        daemon = RealAuthdaemon(Path(tempfile.mkdtemp(prefix="cpf-authd-", dir="/tmp")))
        pytestconfig.add_cleanup(lambda: _SESSION.clear())
        pytestconfig.add_cleanup(daemon.cleanup)
        try:
            daemon.start()
        except (AuthdaemonUnavailable, subprocess.SubprocessError, OSError) as exc:
            _SESSION["daemon"] = str(exc)
            _unavailable(str(exc))
        _SESSION["daemon"] = daemon
        found = daemon
    assert isinstance(found, RealAuthdaemon)
    if not found.alive():
        pytest.fail(f"the session authdaemond died: {found.tail()}")
    yield found


# -- fault injection ----------------------------------------------------------------------

Handler = Callable[[bytes, asyncio.StreamWriter], Awaitable[None]]
"""``handler(request_line, writer)``; the connection is closed when it returns."""


class FakeAuthdaemon:
    """A stand-in authdaemond for fault injection; counts connections and records requests."""

    def __init__(self, path: Path, handler: Handler) -> None:
        self.path = str(path)
        self.handler = handler
        self.requests: list[bytes] = []
        self.connections = 0
        self.active = 0
        self.peak = 0
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[object]] = set()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.connections += 1
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            request = await reader.readline()
            self.requests.append(request)
            await self.handler(request, writer)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            self.active -= 1
            self.tasks.discard(task)
            writer.close()

    async def start(self) -> FakeAuthdaemon:
        """Listen on :attr:`path`."""
        self.server = await asyncio.start_unix_server(self._serve, self.path)
        return self

    async def stop(self) -> None:
        """Cancel hanging handlers, close the server."""
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()


def answer(data: bytes | Callable[[bytes], bytes], delay: float = 0.0) -> Handler:
    """A handler sending ``data`` (or ``data(request)``) after ``delay`` seconds."""

    async def handler(request: bytes, writer: asyncio.StreamWriter) -> None:
        if delay:
            await asyncio.sleep(delay)
        writer.write(data(request) if callable(data) else data)
        await writer.drain()

    return handler


async def hang(request: bytes, writer: asyncio.StreamWriter) -> None:
    """A handler that never answers."""
    await asyncio.sleep(3600)


def dead_socket(path: Path) -> str:
    """A socket file nobody listens on (connecting is refused; the path exists)."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(str(path))
    finally:
        sock.close()
    return str(path)


@pytest.fixture
async def fake_authdaemon(
    tmp_path: Path,
) -> AsyncIterator[Callable[[Handler], Awaitable[FakeAuthdaemon]]]:
    """Start fake daemons for fault injection; they are stopped after the test."""
    started: list[FakeAuthdaemon] = []

    async def make(handler: Handler) -> FakeAuthdaemon:
        daemon = await FakeAuthdaemon(tmp_path / f"fake{len(started)}.sock", handler).start()
        started.append(daemon)
        return daemon

    yield make
    for daemon in started:
        await daemon.stop()
