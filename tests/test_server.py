"""The filter server in-process: socket creation, concurrency limit, drain, reload.

These tests run :class:`~courier_pyfilter.server.FilterServer` on the test's event loop with
fake filters, over a real UNIX socket.  The daemon as a process (stdin, signals, fd 3) is
tested in ``test_daemon_process.py``.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from courier_pyfilter.chain import TIMED_OUT, Chain, ChainEntry
from courier_pyfilter.decision import CONTINUE, Decision
from courier_pyfilter.server import (
    UNAVAILABLE,
    FilterServer,
    Generation,
    ServerError,
    _other_socket_dir,
    bind_filter_socket,
    readiness_fd,
)
from courier_pyfilter.services import Services
from courier_pyfilter.settings import Settings
from serverkit import control_text, kit_dir, send_raw, wait_until


@dataclass
class Probe:
    """A fake filter: records events, tracks concurrency, waits on a gate if told to."""

    reply: str = "550 5.7.1 probe says no"
    delay: float = 0.0
    gate: asyncio.Event | None = None
    whitelist: bool = False
    events: list[str] = field(default_factory=list)
    active: int = 0
    peak: int = 0
    label: str = "probe"

    async def check(self, message: Any) -> Decision:
        self.active += 1
        self.peak = max(self.peak, self.active)
        self.events.append(f"check {self.label}")
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.delay:
                await asyncio.sleep(self.delay)
        finally:
            self.active -= 1
        return Decision.from_reply(self.reply) if self.reply else CONTINUE

    async def start(self) -> None:
        self.events.append(f"start {self.label}")

    async def stop(self) -> None:
        self.events.append(f"stop {self.label}")


class Tree:
    """A spool with messages and a socket path, in a short temporary directory."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.spool = root / "spool"
        self.spool.mkdir()
        (root / "allfilters").mkdir()
        (root / "filters").mkdir()
        self.socket = root / "allfilters" / "pf"
        self.n = 0

    def settings(self, **kw: Any) -> Settings:
        base = Settings(
            socket_path=str(self.socket),
            tmp_dir=str(self.spool),
            request_timeout=5.0,
            drain_timeout=5.0,
            modules_configs=(),
        )
        return replace(base, **kw)

    def message(self, msgid: str | None = None) -> bytes:
        """Write a message; the request bytes for it."""
        self.n += 1
        data, ctl = self.spool / f"D{self.n}", self.spool / f"C{self.n}"
        data.write_text("Subject: hi\n\nbody\n")
        ctl.write_text(control_text(msgid or f"MSG{self.n}", recipients=("r@courier.test",)))
        return f"{data}\n{ctl}\n\n".encode()


@pytest.fixture
def tree() -> Iterator[Tree]:
    with kit_dir() as root:
        yield Tree(root)


def factory_for(*probes_per_generation: Probe, fail_from: int | None = None) -> Any:
    """A generation factory: generation N runs probes_per_generation[N-1]."""
    services = Services(Settings(), lambda name: {})

    async def factory(number: int) -> Generation:
        if fail_from is not None and number >= fail_from:
            raise ValueError(f"generation {number} is broken")
        probe = probes_per_generation[min(number, len(probes_per_generation)) - 1]
        chain = Chain([ChainEntry(name=probe.label, runner=probe, timeout=30)])
        await chain.start()
        return Generation(chain, services, number)

    return factory


@pytest.fixture
async def serve(tree: Tree) -> AsyncIterator[Callable[..., Any]]:
    servers: list[FilterServer] = []

    async def start(factory: Any, **settings: Any) -> FilterServer:
        server = FilterServer(tree.settings(**settings), factory)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        if server.generation is not None:
            await server.shutdown()


# -- the socket ------------------------------------------------------------------------------


def test_other_socket_dir() -> None:
    assert _other_socket_dir("/var/lib/courier/allfilters") == "/var/lib/courier/filters"
    assert _other_socket_dir("/var/lib/courier/filters/") == "/var/lib/courier/allfilters"
    assert _other_socket_dir("/run/pf") is None


def test_bind_creates_socket_with_mode_and_removes_sibling(tree: Tree) -> None:
    sibling = tree.root / "filters" / "pf"
    sibling.write_text("old")
    (tree.root / "allfilters" / ".pf").write_text("leftover")
    old = os.umask(0o077)
    try:
        sock = bind_filter_socket(str(tree.socket))
    finally:
        os.umask(old)
    try:
        st = os.stat(tree.socket)
        assert stat.S_ISSOCK(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o660
        assert not sibling.exists()
        assert not (tree.root / "allfilters" / ".pf").exists()
        probe = socket.socket(socket.AF_UNIX)
        probe.connect(str(tree.socket))  # listening
        probe.close()
    finally:
        sock.close()


def test_bind_custom_mode(tree: Tree) -> None:
    sock = bind_filter_socket(str(tree.socket), mode=0o600)
    try:
        assert stat.S_IMODE(os.stat(tree.socket).st_mode) == 0o600
    finally:
        sock.close()


def test_bind_replaces_stale_socket(tree: Tree) -> None:
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(tree.socket))
    stale.close()  # the file stays, nobody listens
    sock = bind_filter_socket(str(tree.socket))
    sock.close()
    assert stat.S_ISSOCK(os.stat(tree.socket).st_mode)


def test_bind_refuses_live_socket(tree: Tree) -> None:
    first = bind_filter_socket(str(tree.socket))
    try:
        with pytest.raises(ServerError, match="already listening"):
            bind_filter_socket(str(tree.socket))
    finally:
        first.close()


def test_bind_refuses_regular_file(tree: Tree) -> None:
    tree.socket.write_text("not a socket")
    with pytest.raises(ServerError, match="not a socket"):
        bind_filter_socket(str(tree.socket))
    assert tree.socket.read_text() == "not a socket"


def test_bind_missing_directory(tree: Tree) -> None:
    with pytest.raises(ServerError, match="failed to create socket"):
        bind_filter_socket(str(tree.root / "nowhere" / "pf"))


def test_readiness_fd_ignored_under_socket_activation(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LISTEN_FDS", "1")
    assert readiness_fd() is None


# -- serving ------------------------------------------------------------------------------


async def test_reply_and_log_lines(
    tree: Tree, serve: Any, capfd: pytest.CaptureFixture[str]
) -> None:
    # The per-message lines bypass logging: they are batched straight onto stderr.
    server = await serve(factory_for(Probe()))
    assert await send_raw(tree.socket, tree.message("ABC.123")) == b"550 5.7.1 probe says no\n"
    await wait_until(lambda: server.messages_handled == 1)
    server.message_log.flush()
    text = capfd.readouterr().err
    assert (
        "pythonfilter probe reject,from=<sender@example.com>,addr=<r@courier.test>: "
        "550 5.7.1 probe says no" in text
    )
    assert "CPU TIME ACCOUNTING: ABC.123 processed with" in text
    assert "message id=ABC.123 verdict=reject filter=probe" in text


async def test_unreadable_control_file_still_answered(
    tree: Tree, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    await serve(factory_for(Probe()))
    data = tree.spool / "Dx"
    data.write_text("x\n")
    reply = await send_raw(tree.socket, f"{data}\n{tree.spool / 'missing'}\n\n".encode())
    assert reply == b"550 5.7.1 probe says no\n"
    await wait_until(lambda: "could not read the control file" in caplog.text)


async def test_max_concurrent_bound(tree: Tree, serve: Any) -> None:
    probe = Probe(delay=0.1)
    await serve(factory_for(probe), max_concurrent=2)
    replies = await asyncio.gather(*(send_raw(tree.socket, tree.message()) for _ in range(7)))
    assert replies == [b"550 5.7.1 probe says no\n"] * 7
    assert probe.peak == 2


async def test_message_timeout(tree: Tree, serve: Any) -> None:
    await serve(factory_for(Probe(gate=asyncio.Event())), message_timeout=0.2)
    reply = await send_raw(tree.socket, tree.message())
    assert reply == f"{TIMED_OUT.reply()}\n".encode()


async def test_request_timeout(tree: Tree, serve: Any) -> None:
    await serve(factory_for(Probe()), request_timeout=0.2)
    reply = await send_raw(tree.socket, b"/partial/path")
    assert reply.startswith(b"451 ")


# -- shutdown -----------------------------------------------------------------------------


async def test_shutdown_drains_in_flight(tree: Tree, serve: Any) -> None:
    gate = asyncio.Event()
    probe = Probe(gate=gate)
    server = await serve(factory_for(probe))
    busy = asyncio.create_task(send_raw(tree.socket, tree.message()))
    await wait_until(lambda: probe.active == 1)
    reader, writer = await asyncio.open_unix_connection(str(tree.socket))
    writer.write(b"/half/a/request")  # still sending when the shutdown comes
    await writer.drain()
    await asyncio.sleep(0.05)
    stopping = asyncio.create_task(server.shutdown())
    await asyncio.sleep(0.1)
    assert not tree.socket.exists()  # removed first: Courier stops connecting
    assert (await asyncio.wait_for(reader.read(), 2)).startswith(b"451 ")
    writer.close()
    assert not busy.done() and not stopping.done()
    gate.set()
    assert await busy == b"550 5.7.1 probe says no\n"
    await stopping
    assert probe.events[-1] == "stop probe"


async def test_drain_timeout_answers_451(tree: Tree, serve: Any) -> None:
    probe = Probe(gate=asyncio.Event())
    server = await serve(factory_for(probe), drain_timeout=0.2)
    busy = asyncio.create_task(send_raw(tree.socket, tree.message()))
    await wait_until(lambda: probe.active == 1)
    await server.shutdown()
    reply = await busy
    assert reply.startswith(b"451 ") and b"restarting" in reply
    assert "stop probe" in probe.events


async def test_shutdown_keeps_a_socket_that_is_not_ours(tree: Tree, serve: Any) -> None:
    server = await serve(factory_for(Probe()))
    os.unlink(tree.socket)
    other = socket.socket(socket.AF_UNIX)
    other.bind(str(tree.socket))  # a new server took the name
    try:
        await server.shutdown()
        assert tree.socket.exists()
    finally:
        other.close()


# -- reload -------------------------------------------------------------------------------


async def test_reload_swaps_chain_and_retires_old_when_idle(tree: Tree, serve: Any) -> None:
    gate = asyncio.Event()
    old = Probe(reply="550 old", gate=gate, label="old")
    new = Probe(reply="550 new", label="new")
    server = await serve(factory_for(old, new))
    busy = asyncio.create_task(send_raw(tree.socket, tree.message()))
    await wait_until(lambda: old.active == 1)
    assert await server.reload() is True
    assert server.generation is not None and server.generation.number == 2
    assert await send_raw(tree.socket, tree.message()) == b"550 new\n"
    await asyncio.sleep(0.05)
    assert "stop old" not in old.events  # still in use
    gate.set()
    assert await busy == b"550 old\n"
    await wait_until(lambda: "stop old" in old.events)


async def test_failed_reload_keeps_running_chain(
    tree: Tree, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    probe = Probe(reply="550 first")
    server = await serve(factory_for(probe, fail_from=2))
    assert await server.reload() is False
    assert "reload refused" in caplog.text and "generation 2 is broken" in caplog.text
    assert server.generation is not None and server.generation.number == 1
    assert await send_raw(tree.socket, tree.message()) == b"550 first\n"
    assert "stop probe" not in probe.events


async def test_failed_start_still_serves_451(tree: Tree) -> None:
    # A configuration that cannot be loaded must not let mail pass unfiltered (no socket
    # means Courier skips the filter): the server keeps its socket and tempfails.
    server = FilterServer(tree.settings(), factory_for(Probe(), fail_from=1))
    await server.start()
    try:
        assert tree.socket.exists()
        assert await send_raw(tree.socket, tree.message()) == f"{UNAVAILABLE.reply()}\n".encode()
    finally:
        await server.shutdown()
    assert not tree.socket.exists()


async def test_start_failing_on_socket_stops_the_loaded_filters(tree: Tree) -> None:
    probe = Probe()
    live = bind_filter_socket(str(tree.socket))  # another server owns the name
    try:
        server = FilterServer(tree.settings(), factory_for(probe))
        with pytest.raises(ServerError):
            await server.start()
    finally:
        live.close()
    assert probe.events == ["start probe", "stop probe"]
