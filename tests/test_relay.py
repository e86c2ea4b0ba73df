"""The launcher's relay and the systemd service, as two real ``pythonfilter`` processes.

The service is ``pythonfilter --service`` (stdin ``/dev/null``, as under systemd) listening
on the ``backend`` socket; the relay is ``pythonfilter`` as courierfilter starts it (stdin a
pipe held by the test, optionally a readiness pipe as file descriptor 3) owning the
``allfilters/pythonfilter`` socket.  Requests go to the relay's socket exactly as Courier's
``submit`` sends them.
"""

from __future__ import annotations

import asyncio
import os
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from courier_pyfilter.testing import make_message

pytestmark = pytest.mark.slow

UNAVAILABLE_REPLY = b"451 4.3.0 Mail filter service unavailable, try again later\n"

# The one filter of the service's chain, steered by the message's X-Act header.
ACT = """
import asyncio
from courier_pyfilter.decision import CONTINUE, Decision

async def check(message, ctx):
    how = (await message.headers()).get("X-Act", "")
    if how == "accept":
        return Decision.accept("Whitelisted by act", code="250")
    if how == "multi":
        return Decision.reject(("5.7.1 line one", "5.7.1 line two"), code="550")
    if how == "tempfail":
        return Decision.tempfail("4.7.1 later")
    if how == "skip-courier":
        return Decision.accept_skip_courier()
    if how == "slow":
        await asyncio.sleep(1.0)
        return Decision.reject("5.7.1 slow but sure", code="550")
    return CONTINUE
"""


def _pythonfilter() -> str | None:
    """The installed ``pythonfilter`` console script of the running interpreter's env."""
    beside = Path(sys.executable).parent / "pythonfilter"
    if beside.is_file() and os.access(beside, os.X_OK):
        return str(beside)
    return shutil.which("pythonfilter")


PYTHONFILTER = _pythonfilter()


def _require_script() -> str:
    if PYTHONFILTER is None:
        reason = "the pythonfilter console script is not installed (pip install -e .)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    return PYTHONFILTER


async def wait_until(predicate: object, timeout: float = 10.0, what: str = "") -> None:
    """Poll ``predicate()`` until true, failing after ``timeout`` seconds."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what or predicate}")
        await asyncio.sleep(0.02)


async def submit(socket_path: Path, data_path: str, *controls: str, timeout: float = 10) -> bytes:
    """One request the way Courier's submit sends it; the reply bytes up to EOF."""
    reader, writer = await asyncio.open_unix_connection(str(socket_path))
    try:
        text = "".join(f"{p}\n" for p in (data_path, *controls)) + "\n"
        writer.write(text.encode())
        await writer.drain()
        async with asyncio.timeout(timeout):
            return await reader.read()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except (ConnectionError, OSError):
            pass


def _accepts(path: Path) -> bool:
    """True when something listens on the UNIX socket ``path``."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        try:
            probe.connect(str(path))
        except OSError:
            return False
    return True


@dataclass
class Setup:
    """A Courier-like tree with a relay and a service that can be started and stopped."""

    root: Path
    script: str
    service: subprocess.Popen[bytes] | None = None
    relay: subprocess.Popen[bytes] | None = None
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def relay_socket(self) -> Path:
        return self.root / "allfilters" / "pythonfilter"

    @property
    def backend(self) -> Path:
        return self.root / "run" / "svc.sock"

    @property
    def chain(self) -> Path:
        return self.root / "pythonfilter.conf"

    @property
    def modules(self) -> Path:
        return self.root / "pythonfilter-modules.conf"

    def layout(self) -> None:
        for sub in ("spool", "allfilters", "filters", "run", "fp", "state"):
            (self.root / sub).mkdir()
        (self.root / "fp" / "act.py").write_text(ACT)
        self.chain.write_text("act\n")
        self.modules.write_text(
            "[courier-pyfilter]\n"
            f"backend = {str(self.backend)!r}\n"
            f"tmp_dir = {str(self.spool)!r}\n"
            f"filter_path = [{str(self.root / 'fp')!r}]\n"
            f"state_dir = {str(self.root / 'state')!r}\n"
            "drain_timeout = 10\n"
            "request_timeout = 5\n"
        )

    def _env(self) -> dict[str, str]:
        keep = ("PATH", "HOME", "LANG", "VIRTUAL_ENV", "PYTHONPATH")
        env = {k: v for k, v in os.environ.items() if k in keep}
        env["PYTHONUNBUFFERED"] = "1"
        return env

    def log(self, name: str) -> str:
        try:
            return (self.root / f"{name}.log").read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def _spawn(
        self, name: str, args: list[str], *, stdin: int, ready_write: int | None = None
    ) -> subprocess.Popen[bytes]:
        log = (self.root / f"{name}.log").open("ab")
        preexec = None
        if ready_write is not None:
            fd = ready_write

            def preexec() -> None:  # in the child: the pipe's write end becomes fd 3
                if fd == 3:
                    os.set_inheritable(3, True)
                else:
                    os.dup2(fd, 3)

        try:
            proc = subprocess.Popen(
                [self.script, *args],
                stdin=stdin,
                stdout=log,
                stderr=log,
                cwd="/",
                env=self._env(),
                close_fds=ready_write is None,
                preexec_fn=preexec,
            )
        finally:
            log.close()
        self._procs.append(proc)
        return proc

    async def start_service(self) -> subprocess.Popen[bytes]:
        """``pythonfilter --service`` as the systemd unit runs it; waits for its socket."""
        proc = self._spawn(
            "service",
            ["--service", "--config", str(self.chain), "--modules-config", str(self.modules)],
            stdin=subprocess.DEVNULL,
        )
        self.service = proc

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"service exited early:\n{self.log('service')}")
            return _accepts(self.backend)  # a crashed service's stale socket file may exist

        await wait_until(up, 15, f"service socket\n{self.log('service')}")
        return proc

    def spawn_relay(self, *, ready_pipe: bool = False) -> int | None:
        """``pythonfilter`` as courierfilter starts it; the readiness pipe's read end."""
        read_fd = write_fd = None
        if ready_pipe:
            read_fd, write_fd = os.pipe()
        try:
            self.relay = self._spawn(
                "relay",
                [
                    "--socket",
                    str(self.relay_socket),
                    "--config",
                    str(self.chain),
                    "--modules-config",
                    str(self.modules),
                ],
                stdin=subprocess.PIPE,
                ready_write=write_fd,
            )
        finally:
            if write_fd is not None:
                os.close(write_fd)
        return read_fd

    async def start_relay(self) -> subprocess.Popen[bytes]:
        self.spawn_relay()
        proc = self.relay
        assert proc is not None

        def up() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"relay exited early:\n{self.log('relay')}")
            return self.relay_socket.exists()

        await wait_until(up, 15, "relay socket")
        return proc

    async def stop_service(self, sig: signal.Signals = signal.SIGTERM) -> int:
        proc = self.service
        assert proc is not None
        proc.send_signal(sig)
        await wait_until(lambda: proc.poll() is not None, 15, "service exit")
        return proc.returncode

    async def ask(self, socket_path: Path | None = None, **headers: str) -> bytes:
        """A fresh message (X-Act etc. from ``headers``) through the relay's socket."""
        hdrs = [("From", "a@example.com"), ("To", "b@example.net"), ("Subject", "relay test")]
        hdrs += [(k.replace("_", "-"), v) for k, v in headers.items()]
        msg = make_message(self.spool, headers=hdrs)
        return await submit(socket_path or self.relay_socket, msg.data_path, *msg.control_paths)

    def cleanup(self) -> None:
        for proc in self._procs:
            if proc.poll() is not None:
                continue
            if proc.stdin is not None and not proc.stdin.closed:
                proc.stdin.close()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)


@pytest.fixture
def setup() -> Iterator[Setup]:
    script = _require_script()
    # UNIX socket paths must stay under 108 bytes: a short directory under /tmp.
    root = Path(tempfile.mkdtemp(prefix="pfr", dir="/tmp"))
    s = Setup(root, script)
    s.layout()
    try:
        yield s
    finally:
        s.cleanup()
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def running(setup: Setup) -> AsyncIterator[Setup]:
    """Service and relay both up."""
    await setup.start_service()
    await setup.start_relay()
    yield setup


# -- pass-through -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("act", "expected"),
    [
        ("", b"200 Ok\n"),
        ("accept", b"250 Whitelisted by act\n"),
        ("multi", b"550-5.7.1 line one\n550 5.7.1 line two\n"),
        ("tempfail", b"451 4.7.1 later\n"),
        ("skip-courier", b"050 OK\n"),
    ],
)
async def test_replies_pass_through_byte_exact(running: Setup, act: str, expected: bytes) -> None:
    via_relay = await running.ask(X_Act=act)
    direct = await running.ask(running.backend, X_Act=act)
    assert via_relay == expected
    assert via_relay == direct


async def test_many_concurrent_connections_each_get_their_own_reply(running: Setup) -> None:
    acts = ["multi", "", "accept", "tempfail"] * 10
    replies = await asyncio.gather(*(running.ask(X_Act=a) for a in acts))
    expected = {
        "multi": b"550-5.7.1 line one\n550 5.7.1 line two\n",
        "": b"200 Ok\n",
        "accept": b"250 Whitelisted by act\n",
        "tempfail": b"451 4.7.1 later\n",
    }
    assert list(replies) == [expected[a] for a in acts]


# -- the service going away and coming back ----------------------------------------------------


async def test_451_while_service_down_then_passes_after_restart(setup: Setup) -> None:
    relay = await setup.start_relay()
    # Never started: no backend socket at all.
    assert not setup.backend.exists()
    assert await setup.ask(X_Act="multi") == UNAVAILABLE_REPLY

    await setup.start_service()
    assert await setup.ask(X_Act="multi") == b"550-5.7.1 line one\n550 5.7.1 line two\n"

    # Clean stop (systemctl stop / restart): the service removes its socket.
    assert await setup.stop_service(signal.SIGTERM) == 0
    assert not setup.backend.exists()
    assert await setup.ask(X_Act="multi") == UNAVAILABLE_REPLY

    # Back again, the same relay process passes mail through.
    await setup.start_service()
    assert await setup.ask(X_Act="accept") == b"250 Whitelisted by act\n"
    assert relay.poll() is None
    assert setup.relay is relay
    assert "unavailable" in setup.log("relay")


def _blocking_submit(socket_path: Path, request: bytes) -> tuple[str, bytes]:
    """Like Courier's submit: send the whole request, then read; how it ended and the bytes."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(10)
        sock.connect(str(socket_path))
        try:
            sock.sendall(request)
        except OSError as exc:
            return f"send failed: {exc!r}", b""
        got = b""
        try:
            while chunk := sock.recv(4096):
                got += chunk
        except OSError as exc:
            return f"recv failed: {exc!r}", got
        return "eof", got


async def test_451_reaches_a_client_that_sends_its_request_first(setup: Setup) -> None:
    # The relay must read the request before answering and closing: closing a UNIX socket
    # with unread data resets the connection, and a client still writing gets EPIPE.
    await setup.start_relay()
    msg = make_message(setup.spool)
    request = "".join(f"{p}\n" for p in (msg.data_path, *msg.control_paths)) + "\n"
    for _ in range(50):
        outcome = await asyncio.to_thread(_blocking_submit, setup.relay_socket, request.encode())
        assert outcome == ("eof", UNAVAILABLE_REPLY)


async def test_451_after_a_long_request(setup: Setup) -> None:
    # Many control files (one per 100 recipients): more than a socket buffer holds, so
    # the relay has to read the whole request before its reply can arrive.
    await setup.start_relay()
    msg = make_message(setup.spool)
    controls = [f"{msg.control_paths[0]}.{i}" for i in range(4000)]
    request = "".join(f"{p}\n" for p in (msg.data_path, *controls)) + "\n"
    assert len(request) > 200_000
    outcome = await asyncio.to_thread(_blocking_submit, setup.relay_socket, request.encode())
    assert outcome == ("eof", UNAVAILABLE_REPLY)


async def test_451_when_service_crashed_leaving_its_socket(running: Setup) -> None:
    # A crash (SIGKILL) leaves a stale socket file: connect() is refused.
    await running.stop_service(signal.SIGKILL)
    assert running.backend.exists()
    assert await running.ask() == UNAVAILABLE_REPLY
    # systemd's Restart=on-failure: the new service replaces the stale socket.
    await running.start_service()
    assert await running.ask(X_Act="tempfail") == b"451 4.7.1 later\n"
    assert running.relay is not None and running.relay.poll() is None


# -- courierfilter's life cycle of the relay ---------------------------------------------------


async def test_relay_exits_on_stdin_eof_service_keeps_running(running: Setup) -> None:
    relay, service = running.relay, running.service
    assert relay is not None and relay.stdin is not None and service is not None
    relay.stdin.close()  # courierfilter's "stop"
    await wait_until(lambda: relay.poll() is not None, 15, "relay exit on EOF")
    assert relay.returncode == 0, running.log("relay")
    assert not running.relay_socket.exists()
    # The service is systemd's business, not courierfilter's: still up and answering.
    assert service.poll() is None
    assert running.backend.exists()
    assert await running.ask(running.backend, X_Act="accept") == b"250 Whitelisted by act\n"


async def test_relay_finishes_in_flight_message_after_stdin_eof(running: Setup) -> None:
    relay = running.relay
    assert relay is not None and relay.stdin is not None
    pending = asyncio.ensure_future(running.ask(X_Act="slow"))
    await asyncio.sleep(0.3)  # the request is in the service's filter now
    relay.stdin.close()
    assert await pending == b"550 5.7.1 slow but sure\n"
    await wait_until(lambda: relay.poll() is not None, 15, "relay exit")
    assert relay.returncode == 0


async def test_relay_stops_on_sigterm(running: Setup) -> None:
    relay = running.relay
    assert relay is not None
    relay.send_signal(signal.SIGTERM)
    await wait_until(lambda: relay.poll() is not None, 15, "relay exit on SIGTERM")
    assert relay.returncode == 0
    assert not running.relay_socket.exists()
    assert running.service is not None and running.service.poll() is None


def _read_until_eof(fd: int, timeout: float) -> bytes:
    """Everything written to the pipe until its last writer closes it."""
    deadline = time.monotonic() + timeout
    got = b""
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"no EOF on the readiness pipe within {timeout} s")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                return got
            got += chunk


async def test_relay_readiness_on_fd3_even_without_service(setup: Setup) -> None:
    # courierfilter start waits on fd 3; the relay must not wait for the service.
    read_fd = setup.spawn_relay(ready_pipe=True)
    assert read_fd is not None
    try:
        data = await asyncio.to_thread(_read_until_eof, read_fd, 15)
        # EOF means "ready": the socket must already be there, without any polling.
        assert setup.relay_socket.exists(), setup.log("relay")
        assert data == b""
    finally:
        os.close(read_fd)
    assert setup.relay is not None and setup.relay.poll() is None
    assert await setup.ask() == UNAVAILABLE_REPLY
    await setup.start_service()
    assert await setup.ask() == b"200 Ok\n"


async def test_relay_removes_stale_twin_in_filters_dir(setup: Setup) -> None:
    # courierfilter's rule: a filter's name lives in filters/ or allfilters/, not both.
    twin = setup.root / "filters" / "pythonfilter"
    twin.write_text("")
    await setup.start_relay()
    assert not twin.exists()
    assert oct(setup.relay_socket.stat().st_mode & 0o777) == oct(0o660)


async def test_relay_survives_sighup(running: Setup) -> None:
    relay = running.relay
    assert relay is not None
    relay.send_signal(signal.SIGHUP)  # an admin "reloading" the wrong process
    await asyncio.sleep(0.5)
    assert relay.poll() is None
    assert await running.ask(X_Act="accept") == b"250 Whitelisted by act\n"
