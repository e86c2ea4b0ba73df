"""A real clamd for the tests: private configuration, a tiny signature database we write.

No freshclam and no network: the database is one ``.ndb`` file with two body signatures,

* ``Eicar-Test-Signature`` — the standard EICAR test string, anywhere in the data (so
  also inside a base64 MIME attachment, which clamd decodes itself);
* ``Test.Custom.CourierFilter`` — the ASCII string :data:`CUSTOM_SIGNATURE_TEXT`.

clamd reports them with a ``.UNOFFICIAL`` suffix (:data:`EICAR_NAME`, :data:`CUSTOM_NAME`).
EICAR is kept as hex here and built at run time, so no file of the project contains the
literal test string (a virus scanner on a developer's machine would quarantine it).

:class:`ClamdServer` starts ``clamd -c DIR/clamd.conf`` in the foreground (its own process
group) listening on the UNIX socket ``DIR/clamd.sock`` and on ``127.0.0.1:PORT``, and
waits for ``PONG``; with the tiny database that takes well under a second.

Fixtures (import them into a test module: ``from clamd_fixture import clamd_server``):

``clamd_server``
    One server for the whole session (started on first use, stopped when pytest ends,
    shared by every module that imports the fixture).  Tests must not stop it.
``clamd_factory``
    Starts extra private servers (for tests that kill clamd, or need other limits);
    they are stopped after the test.

When clamd is not installed the tests skip with the reason; under ``CI=true`` they fail
instead (the CI machine must have the ``clamav-daemon`` package).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

__all__ = [
    "CUSTOM_NAME",
    "CUSTOM_SIGNATURE_TEXT",
    "EICAR_NAME",
    "FAKE_BEHAVIOURS",
    "ClamdServer",
    "ClamdUnavailable",
    "FakeClamd",
    "clamd_factory",
    "clamd_server",
    "eicar",
    "find_clamd",
]

EICAR_HEX = (
    "58354f2150254041505b345c505a58353428505e2937434329377d2445494341522d5354414e44"
    "4152442d414e544956495255532d544553542d46494c452124482b482a"
)
CUSTOM_SIGNATURE_TEXT = b"COURIER-FILTER-TEST-SIGNATURE"
EICAR_NAME = "Eicar-Test-Signature.UNOFFICIAL"
CUSTOM_NAME = "Test.Custom.CourierFilter.UNOFFICIAL"
STREAM_MAX_LENGTH = 1024 * 1024
"""The session server's StreamMaxLength (``1M``): small, so oversize tests stay fast."""

START_TIMEOUT = 30.0


def eicar() -> bytes:
    """The 68-byte EICAR test file."""
    return bytes.fromhex(EICAR_HEX)


class ClamdUnavailable(RuntimeError):
    """clamd is not installed or did not start."""


def find_clamd() -> str | None:
    """Path of the clamd binary (``$PATH``, then ``/usr/sbin``), or None."""
    return shutil.which("clamd") or shutil.which("clamd", path="/usr/sbin:/usr/local/sbin")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _die_with_parent() -> None:
    """In the child: get SIGTERM when pytest dies, so a killed test run leaves no clamd."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG (Linux)


def _ping(family: int, address: str | tuple[str, int], timeout: float = 1.0) -> bool:
    try:
        with socket.socket(family, socket.SOCK_STREAM) as s:
            s.settimeout(timeout)
            s.connect(address)
            s.sendall(b"zPING\0")
            reply = b""
            while not reply.endswith(b"\0"):
                chunk = s.recv(64)
                if not chunk:
                    break
                reply += chunk
            return reply == b"PONG\0"
    except OSError:
        return False


@dataclass
class ClamdServer:
    """A private clamd in ``directory``; see the module documentation."""

    directory: Path
    stream_max_length: int = STREAM_MAX_LENGTH
    max_threads: int = 10
    extra_conf: str = ""
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    startup_seconds: float = 0.0

    @property
    def socket_path(self) -> str:
        """The UNIX socket clamd listens on."""
        return str(self.directory / "clamd.sock")

    @property
    def tcp_address(self) -> str:
        """``127.0.0.1:PORT``."""
        return f"127.0.0.1:{self.port}"

    @property
    def log_path(self) -> Path:
        """clamd's log file."""
        return self.directory / "clamd.log"

    @property
    def pid(self) -> int:
        """The clamd process id."""
        assert self.process is not None
        return self.process.pid

    def write_files(self) -> None:
        """The signature database and clamd.conf."""
        db = self.directory / "db"
        db.mkdir(parents=True, exist_ok=True)
        (self.directory / "tmp").mkdir(exist_ok=True)
        (db / "test.ndb").write_text(
            f"Eicar-Test-Signature:0:*:{EICAR_HEX}\n"
            f"Test.Custom.CourierFilter:0:*:{CUSTOM_SIGNATURE_TEXT.hex()}\n"
        )
        if not self.port:
            self.port = _free_port()
        d = self.directory
        (d / "clamd.conf").write_text(
            "\n".join(
                [
                    "# generated by tests/clamd_fixture.py",
                    "Foreground yes",
                    f"DatabaseDirectory {d / 'db'}",
                    f"LocalSocket {self.socket_path}",
                    "LocalSocketMode 666",
                    "FixStaleSocket yes",
                    f"TCPSocket {self.port}",
                    "TCPAddr 127.0.0.1",
                    f"PidFile {d / 'clamd.pid'}",
                    f"LogFile {self.log_path}",
                    "LogTime yes",
                    f"TemporaryDirectory {d / 'tmp'}",
                    "SelfCheck 0",
                    f"StreamMaxLength {self.stream_max_length}",
                    f"MaxThreads {self.max_threads}",
                    self.extra_conf,
                    "",
                ]
            )
        )

    def start(self) -> ClamdServer:
        """Write the files, start clamd, wait until both sockets answer PING."""
        clamd = find_clamd()
        if clamd is None:
            raise ClamdUnavailable("clamd is not installed (apt-get install clamav-daemon)")
        if len(self.socket_path) > 100:
            raise ClamdUnavailable(f"socket path too long for AF_UNIX: {self.socket_path}")
        self.write_files()
        t0 = time.monotonic()
        out = open(self.directory / "clamd.out", "ab")  # noqa: SIM115 - handed to the child
        try:
            self.process = subprocess.Popen(
                [clamd, "-c", str(self.directory / "clamd.conf")],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        finally:
            out.close()
        deadline = t0 + START_TIMEOUT
        while time.monotonic() < deadline:
            if _ping(socket.AF_UNIX, self.socket_path):
                break
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        else:
            self.stop()
            raise ClamdUnavailable(f"clamd did not answer PING within {START_TIMEOUT} s")
        if self.process.poll() is not None:
            raise ClamdUnavailable(f"clamd exited with {self.process.returncode}: {self.tail()}")
        if not _ping(socket.AF_INET, ("127.0.0.1", self.port)):
            self.stop()
            raise ClamdUnavailable(f"clamd does not answer on {self.tcp_address}: {self.tail()}")
        self.startup_seconds = time.monotonic() - t0
        return self

    def tail(self, lines: int = 15) -> str:
        """The last lines of clamd's log and output (for error messages)."""
        text = []
        for name in ("clamd.log", "clamd.out"):
            with contextlib.suppress(OSError):
                text += (self.directory / name).read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def alive(self) -> bool:
        """True while the clamd process runs."""
        return self.process is not None and self.process.poll() is None

    def kill(self) -> None:
        """SIGKILL clamd (no clean-up: the socket file stays, connections are reset)."""
        if self.alive():
            assert self.process is not None
            self.process.kill()
            self.process.wait(10)

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 10 s."""
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)


def _unavailable(reason: str) -> None:
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"clamd is required under CI=true: {reason}", pytrace=False)
    pytest.skip(reason)


_SESSION: dict[str, ClamdServer | str] = {}


@pytest.fixture(scope="session")
def clamd_server(
    tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> Iterator[ClamdServer]:
    """The session's clamd (UNIX socket and TCP, StreamMaxLength 1 MiB)."""
    # Several test modules import this fixture, which makes one fixture definition per
    # module: the server itself is kept here so that it is started only once.
    found = _SESSION.get("server")
    if isinstance(found, str):
        _unavailable(found)
    if found is None:
        server = ClamdServer(tmp_path_factory.mktemp("clamd"))
        try:
            server.start()
        except ClamdUnavailable as exc:
            _SESSION["server"] = str(exc)
            _unavailable(str(exc))
        _SESSION["server"] = server
        pytestconfig.add_cleanup(server.stop)
        pytestconfig.add_cleanup(lambda: _SESSION.clear())
        found = server
    assert isinstance(found, ClamdServer)
    if not found.alive():
        pytest.fail(f"the session clamd died: {found.tail()}")
    yield found


@pytest.fixture
def clamd_factory(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., ClamdServer]]:
    """Start private clamd servers: ``clamd_factory(**ClamdServer fields).start()``."""
    started: list[ClamdServer] = []

    class _Factory(ClamdServer):
        def __init__(self, **kwargs: object) -> None:
            super().__init__(tmp_path_factory.mktemp("clamd-private"), **kwargs)  # type: ignore[arg-type]
            started.append(self)

        def start(self) -> ClamdServer:
            try:
                return super().start()
            except ClamdUnavailable as exc:
                _unavailable(str(exc))
                raise

    try:
        yield _Factory
    finally:
        for server in started:
            server.stop()


# -- fake clamd servers for fault injection -------------------------------------------------

FakeBehaviour = str
"""One of :data:`FAKE_BEHAVIOURS`."""

FAKE_BEHAVIOURS = (
    "ok",  # a well-behaved clamd: PONG, "ClamAV 0.0.0-fake", "stream: OK"
    "found",  # "stream: Fake.Virus FOUND"
    "hang_accept",  # accepts the connection, never reads, never answers
    "hang_reply",  # reads the whole stream, never answers
    "reset",  # reads the command and a little data, then aborts the connection
    "close_silently",  # reads the whole stream, closes without a reply
    "garbage_binary",  # answers bytes that are not UTF-8
    "garbage_text",  # answers a line that is not a clamd reply
    "flood",  # answers megabytes without a terminator
    "error",  # "stream: Can't allocate memory ERROR"
    "partial",  # "stream: O", then closes
    "unterminated",  # "stream: OK" without the terminator, then closes
    "slow",  # the reply one byte every 0.2 s
    "early_ok",  # "stream: OK" at once, without reading the stream, then closes
    "two_replies",  # "stream: OK" twice
    "slow_ok",  # reads the stream, waits 0.2 s, "stream: OK"
)


class FakeClamd:
    """A fake clamd on a UNIX socket (or TCP with ``tcp=True``) in the test's event loop.

    It understands both command styles (``zINSTREAM\\0`` as our client sends,
    ``nINSTREAM\\n`` as aioclamd does) and reads INSTREAM frames like clamd, then
    misbehaves as ``behaviour`` says.  :attr:`max_active` is the highest number of
    connections it served at once; :attr:`received` the stream sizes it read in full.
    """

    def __init__(self, directory: Path, behaviour: FakeBehaviour, *, tcp: bool = False) -> None:
        if behaviour not in FAKE_BEHAVIOURS:
            raise ValueError(behaviour)
        self.behaviour = behaviour
        self.tcp = tcp
        self.path = str(directory / f"fake-{behaviour}.sock")
        self.port = 0
        self.server: asyncio.AbstractServer | None = None
        self.tasks: set[asyncio.Task[None]] = set()
        self.active = 0
        self.max_active = 0
        self.connections = 0
        self.received: list[int] = []

    @property
    def settings(self) -> dict[str, object]:
        """Client settings pointing at this fake."""
        if self.tcp:
            return {"clamd_address": f"127.0.0.1:{self.port}"}
        return {"local_socket": self.path}

    async def __aenter__(self) -> FakeClamd:
        if self.tcp:
            self.server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
            self.port = self.server.sockets[0].getsockname()[1]
        else:
            self.server = await asyncio.start_unix_server(self._handle, self.path)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()
        for task in list(self.tasks):
            task.cancel()
        if self.tasks:
            await asyncio.wait(self.tasks, timeout=5)
        await self.server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self.tasks.add(task)
        self.connections += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            await self._behave(reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # cancelled by __aexit__: end quietly (asyncio logs a cancelled handler)
        finally:
            self.active -= 1
            self.tasks.discard(task)
            writer.transport.abort()

    async def _behave(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        b = self.behaviour
        if b == "hang_accept":
            await asyncio.Event().wait()
        first = await reader.readexactly(1)
        term = b"\0" if first == b"z" else b"\n"
        name = (await reader.readuntil(term))[:-1]
        if b == "early_ok":
            writer.write(b"stream: OK" + term)
            await writer.drain()
            return
        if name == b"INSTREAM":
            if b == "reset":
                await reader.read(1000)
                return
            total = 0
            while True:
                (length,) = struct.unpack(">I", await reader.readexactly(4))
                if length == 0:
                    break
                await reader.readexactly(length)
                total += length
            self.received.append(total)
        replies = {
            b"PING": b"PONG",
            b"VERSION": b"ClamAV 0.0.0-fake",
            b"INSTREAM": b"stream: OK",
        }
        reply = replies.get(name, b"UNKNOWN COMMAND")
        if b == "hang_reply":
            await asyncio.Event().wait()
        elif b == "close_silently":
            return
        elif b == "found":
            reply = b"stream: Fake.Virus FOUND" if name == b"INSTREAM" else reply
        elif b == "garbage_binary":
            reply = b"\xff\xfe\xfd\x80"
        elif b == "garbage_text":
            reply = b"hello, this is not clamd"
        elif b == "flood":
            for _ in range(64):
                writer.write(b"A" * 65536)
                await writer.drain()
            await asyncio.Event().wait()
        elif b == "error":
            reply = b"stream: Can't allocate memory ERROR" if name == b"INSTREAM" else reply
        elif b == "partial":
            writer.write(reply[:9])
            await writer.drain()
            return
        elif b == "unterminated":
            writer.write(reply)
            await writer.drain()
            return
        elif b == "slow":
            for byte in reply + term:
                writer.write(bytes([byte]))
                await writer.drain()
                await asyncio.sleep(0.2)
            return
        elif b == "two_replies":
            reply = reply + term + reply
        elif b == "slow_ok":
            await asyncio.sleep(0.2)
        writer.write(reply + term)
        await writer.drain()
        if term == b"\n":  # aioclamd reads until the connection closes
            writer.close()
