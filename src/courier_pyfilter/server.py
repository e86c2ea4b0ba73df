"""The asyncio filter server: Courier's connections in, the chain's verdicts out.

Life cycle (as courierfilter expects it):

1. the listening socket is bound as ``.NAME``, given its mode, renamed to ``NAME`` (the
   same name in the other of ``filters/`` and ``allfilters/`` is removed);
2. the chain is loaded and started; then file descriptor 3 is closed (readiness);
3. connections are served concurrently; at most ``max_concurrent`` messages run through the
   chain at once, further connections wait their turn (they are never refused);
4. EOF on stdin or SIGTERM/SIGINT: stop accepting, remove the socket, give in-flight
   messages ``drain_timeout`` seconds, answer the rest ``451``, stop filters, exit;
5. SIGHUP: re-read both configuration files and swap in a new chain; a broken new
   configuration is logged and refused, the running chain stays.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import errno
import logging
import os
import signal
import socket
import stat
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from . import logs
from .chain import INTERNAL_ERROR, TIMED_OUT, Chain, ChainResult
from .deadline import Deadline, wheel_for
from .decision import Decision, Verdict
from .protocol import ProtocolError, Request, RequestParser, format_reply

if TYPE_CHECKING:
    from .message import Message
    from .metrics import Metrics
    from .services import Services
    from .settings import Settings

__all__ = ["FilterServer", "Generation", "ServerError", "bind_filter_socket"]

log = logging.getLogger("courier_pyfilter.server")
msglog = logging.getLogger("courier_pyfilter.messages")

MALFORMED = Decision.tempfail("4.3.0 Malformed request from the mail server, try again later")
REQUEST_TIMED_OUT = Decision.tempfail("4.3.0 Timed out reading the request, try again later")
SHUTTING_DOWN = Decision.tempfail("4.3.0 Mail filter is restarting, try again later")
UNAVAILABLE = Decision.tempfail("4.3.0 Mail filtering unavailable, try again later")
"""The reply while the configuration is broken (the server keeps its socket so that no
mail passes unfiltered; fix the files and send SIGHUP)."""


class ServerError(Exception):
    """The server cannot start (socket, configuration)."""


@dataclass(slots=True)
class Generation:
    """One loaded configuration: a chain and the service clients its filters use."""

    chain: Chain
    services: Services
    number: int = 0

    async def retire(self) -> None:
        """Wait for the messages still using this generation, then stop it."""
        await self.chain.wait_idle()
        await self.chain.stop()
        await self.services.close()


GenerationFactory = Callable[[int], Awaitable[Generation]]


def _other_socket_dir(directory: str) -> str | None:
    base = os.path.basename(directory.rstrip("/"))
    parent = os.path.dirname(directory.rstrip("/"))
    if base == "allfilters":
        return os.path.join(parent, "filters")
    if base == "filters":
        return os.path.join(parent, "allfilters")
    return None


def _unlink(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _socket_alive(path: str) -> bool:
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(path)
    except OSError:
        return False
    finally:
        probe.close()
    return True


def bind_filter_socket(path: str, *, mode: int = 0o660, backlog: int = 4096) -> socket.socket:
    """Create the listening socket the way courierfilter documents it.

    Removes ``NAME`` from the other socket directory, binds ``.NAME``, sets ``mode`` and
    renames it to ``NAME`` so Courier never sees a half-made socket.  Refuses to replace a
    socket that another running server answers on.
    """
    directory, name = os.path.split(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise ServerError(f"pythonfilter failed to create socket in {directory}: no such directory")
    if os.path.exists(path):
        st = os.lstat(path)
        if not stat.S_ISSOCK(st.st_mode):
            raise ServerError(f"{path} exists and is not a socket; refusing to replace it")
        if _socket_alive(path):
            raise ServerError(f"another filter server is already listening on {path}")
    other = _other_socket_dir(directory)
    if other is not None:
        _unlink(os.path.join(other, name))
    hidden = os.path.join(directory, "." + name)
    _unlink(hidden)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.bind(hidden)
        os.chmod(hidden, mode)
        os.rename(hidden, path)
        sock.listen(backlog)
        sock.setblocking(False)
    except OSError as exc:
        sock.close()
        _unlink(hidden)
        raise ServerError(f"pythonfilter failed to create socket in {directory}: {exc}") from exc
    return sock


class _Connection(asyncio.Protocol):
    """One courierfilter connection: read the request, run the chain, reply, close."""

    __slots__ = ("_parser", "_server", "_task", "_timer", "_transport")

    def __init__(self, server: FilterServer) -> None:
        self._server = server
        self._parser = RequestParser(
            server.settings.tmp_dir, restrict_paths=server.settings.restrict_paths
        )
        self._transport: asyncio.Transport | None = None
        self._timer: int | None = None  # the request timeout's key in the timer wheel
        self._task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's are not subclasses
        self._server._connections.add(self)
        self._timer = self._server.wheel.add(self, self._server.settings.request_timeout)

    def data_received(self, data: bytes) -> None:
        if self._parser.done:
            return
        try:
            request = self._parser.feed(data)
        except ProtocolError as exc:
            self._fail(MALFORMED, f"malformed request: {exc}")
            return
        if request is not None:
            self._cancel_timer()
            # (no pause_reading: it costs a system call; later data is simply ignored)
            self._task = self._server.loop.create_task(self._server.handle(request, self))

    def eof_received(self) -> bool:
        if self._parser.done:
            return True  # half-closed after a complete request: still answer
        try:
            self._parser.eof()
        except ProtocolError as exc:
            log.warning("courierfilter connection: %s", exc)
        self._cancel_timer()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timer()
        self._server._connections.discard(self)
        self._transport = None

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._server.wheel.remove(self, self._timer)
            self._timer = None

    def expire(self) -> None:
        """The request timeout (called by the timer wheel)."""
        self._timer = None
        if not self._parser.done:
            self._fail(REQUEST_TIMED_OUT, "request not received in time")

    def _fail(self, decision: Decision, why: str) -> None:
        log.warning("courierfilter connection: %s; answering %s", why, decision.reply())
        self._cancel_timer()
        self.reply(decision.reply())

    def reply(self, text: str) -> bool:
        """Send the reply and close; False when the peer has gone."""
        transport = self._transport
        if transport is None or transport.is_closing():
            return False
        transport.write(format_reply(text))
        transport.close()
        return True

    def abort_waiting(self) -> None:
        """Shutdown: a connection still sending its request gets a 451."""
        if not self._parser.done and self._transport is not None:
            self._fail(SHUTTING_DOWN, "shutting down")


class FilterServer:
    """Serves courierfilter requests on a UNIX socket with the current chain."""

    def __init__(
        self, settings: Settings, factory: GenerationFactory, *, restart_on_reload: bool = False
    ) -> None:
        self.settings = settings
        self.restart_on_reload = restart_on_reload
        self.message_log = logs.MessageLog(settings.log_format)
        self._factory = factory
        self.loop = asyncio.get_running_loop()
        self.wheel = wheel_for(self.loop)
        self.generation: Generation | None = None
        self._generation_number = 0
        self._active = 0
        self._limit = settings.max_concurrent
        self._slot_waiters: collections.deque[asyncio.Future[None]] = collections.deque()
        self._server: asyncio.AbstractServer | None = None
        self._sock_ino: tuple[int, int] | None = None
        self._connections: set[_Connection] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = asyncio.Event()
        self._reload_lock = asyncio.Lock()
        self._retiring: set[asyncio.Task[Any]] = set()
        self.messages_handled = 0
        self.metrics: Metrics | None = None
        """The Prometheus metrics, when ``metrics_listen`` is set (see ``metrics.py``)."""

    # -- start / stop -------------------------------------------------------------------

    async def start(self) -> None:
        """Load the chain, then create and publish the socket.

        A configuration that cannot be loaded does not stop the server: it publishes its
        socket anyway and answers every message 451 until a reload succeeds, so that
        Courier never passes mail unfiltered because of a typo.
        """
        try:
            self.generation = await self._new_generation()
        except Exception as exc:
            log.error(
                "pythonfilter: cannot load the configuration: %s; answering every message "
                "451 until it is fixed (send SIGHUP to reload)",
                exc,
                exc_info=not isinstance(exc, ServerError | ValueError),
            )
            self.generation = None
        try:
            sock = bind_filter_socket(
                self.settings.socket_path,
                mode=self.settings.socket_mode,
                backlog=self.settings.listen_backlog,
            )
        except BaseException:
            if self.generation is not None:
                generation, self.generation = self.generation, None
                await generation.retire()
            raise
        st = os.stat(self.settings.socket_path)
        self._sock_ino = (st.st_dev, st.st_ino)
        self._server = await self.loop.create_unix_server(
            lambda: _Connection(self), sock=sock, backlog=self.settings.listen_backlog
        )
        count = len(self.generation.chain.entries) if self.generation else 0
        log.info("pythonfilter listening on %s (%d filters)", self.settings.socket_path, count)
        if self.settings.metrics_listen:  # failures are logged, never fatal (mail first)
            from .metrics import start_metrics

            self.metrics = await start_metrics(self, self.settings.metrics_listen)

    async def _new_generation(self) -> Generation:
        self._generation_number += 1
        return await self._factory(self._generation_number)

    def request_stop(self) -> None:
        """Ask the server to shut down (stdin EOF, SIGTERM)."""
        self._stopping.set()

    async def wait_stopped(self) -> None:
        """Wait until :meth:`request_stop` is called."""
        await self._stopping.wait()

    async def shutdown(self) -> None:
        """Stop accepting, drain in-flight messages, stop the filters."""
        log.info("pythonfilter shutting down")
        if self._server is not None:
            self._server.close()
        self._remove_socket()
        for conn in list(self._connections):
            conn.abort_waiting()
        if self._tasks:
            _done, pending = await asyncio.wait(
                set(self._tasks), timeout=self.settings.drain_timeout
            )
            if pending:
                log.warning(
                    "%d messages still in flight after %.0f s; answering them 451",
                    len(pending),
                    self.settings.drain_timeout,
                )
                for task in pending:
                    task.cancel()
                await asyncio.wait(pending, timeout=5)
        if self._retiring:
            await asyncio.wait(set(self._retiring), timeout=self.settings.drain_timeout)
        if self.generation is not None:
            generation, self.generation = self.generation, None
            try:
                await asyncio.wait_for(generation.retire(), timeout=30)
            except TimeoutError:
                log.error("filters did not stop within 30 s")
        if self._server is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._server.wait_closed(), timeout=1)
        self.message_log.flush()
        if self.metrics is not None:
            await self.metrics.close()
        log.info("pythonfilter stopped")

    def _remove_socket(self) -> None:
        path = self.settings.socket_path
        try:
            st = os.stat(path)
        except OSError:
            return
        if self._sock_ino == (st.st_dev, st.st_ino):
            _unlink(path)

    # -- reload ---------------------------------------------------------------------------

    async def reload(self) -> bool:
        """Build a chain from the current files and swap it in; False if refused."""
        async with self._reload_lock:
            if self.restart_on_reload:
                self._restart_process()
            try:
                new = await self._new_generation()
            except Exception as exc:
                log.error("reload refused, keeping the running configuration: %s", exc)
                return False
            old, self.generation = self.generation, new
            log.info("configuration reloaded (%d filters)", len(new.chain.entries))
            if old is not None:
                task = self.loop.create_task(old.retire())
                self._retiring.add(task)
                task.add_done_callback(self._retiring.discard)
            return True

    def _restart_process(self) -> None:
        """Start over with ``exec`` (after a start-up error in the daemon settings)."""
        import sys

        log.info("pythonfilter restarting to read its settings again")
        self.message_log.flush()
        if self._server is not None:
            self._server.close()
        self._remove_socket()
        for stream in (sys.stdout, sys.stderr):
            stream.flush()
        os.execv(sys.executable, [sys.executable, *sys.orig_argv[1:]])

    # -- one message ------------------------------------------------------------------------

    async def handle(self, request: Request, conn: _Connection) -> None:
        """Run one request through the chain and answer it.

        One coroutine from the slot to the reply (no helper coroutines): each frame costs
        memory for every message in flight.
        """
        from .message import Message

        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        decision: Decision = INTERNAL_ERROR
        result: ChainResult | None = None
        message: Message | None = None
        envelope: tuple[str, str | None, list[str]] | None = None
        try:
            if self._active < self._limit and not self._slot_waiters:
                self._active += 1
            else:
                await self._wait_for_slot()  # returns with a slot reserved for us
            try:
                generation = self.generation
                if generation is None:
                    decision = SHUTTING_DOWN if self._stopping.is_set() else UNAVAILABLE
                else:
                    chain = generation.chain
                    chain.acquire()
                    try:
                        message = Message(request.data_path, request.control_paths)
                        deadline = Deadline(self.loop, task, self.settings.message_timeout)
                        try:
                            result = await chain.run(message)
                            decision = result.decision
                        except asyncio.CancelledError:
                            if not deadline.expired():
                                raise
                            log.error(
                                "message %s: the chain did not finish within %.0f s",
                                request.data_path,
                                self.settings.message_timeout,
                            )
                            decision = TIMED_OUT
                        except Exception:
                            log.exception("internal error while filtering %s", request.data_path)
                            decision = INTERNAL_ERROR
                        finally:
                            deadline.cancel()
                    finally:
                        chain.release()
            finally:
                self._active -= 1
                self._release_slot()
            if message is not None:
                # An edit cut off by a deadline is shielded and still running: a reply
                # must never go out before the files are complete.
                await message.drain_edits()
                if message.edit_failed and decision.verdict.delivers:
                    log.error(
                        "changing %s failed (%s); refusing to accept a damaged message",
                        request.data_path,
                        message.edit_failed,
                    )
                    decision = INTERNAL_ERROR
                if result is not None:
                    # Courier renames or removes the files once it has the reply.
                    envelope = _envelope(message, decision)
        except asyncio.CancelledError:
            conn.reply(SHUTTING_DOWN.reply())
            raise
        except Exception:
            log.exception("internal error while answering %s", request.data_path)
            decision, result = INTERNAL_ERROR, None
        finally:
            self._tasks.discard(task)
        if not conn.reply(decision.reply()):
            log.warning("Courier closed the connection before the reply for %s", request.data_path)
        self.messages_handled += 1
        if result is not None and envelope is not None:
            self._log_message(result, decision, envelope)
        if self.metrics is not None:  # metrics_listen set; off by default
            self.metrics.message(result, decision)

    async def _wait_for_slot(self) -> None:
        """Queue for a free slot (``max_concurrent`` messages already run)."""
        waiter: asyncio.Future[None] = self.loop.create_future()
        self._slot_waiters.append(waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():
                self._active -= 1  # the slot reserved for us goes to the next in line
                self._release_slot()
            raise
        finally:
            if not waiter.done():
                waiter.cancel()
            with contextlib.suppress(ValueError):
                self._slot_waiters.remove(waiter)

    def _release_slot(self) -> None:
        while self._slot_waiters and self._active < self._limit:
            waiter = self._slot_waiters.popleft()
            if not waiter.done():
                self._active += 1  # reserved for the woken task
                waiter.set_result(None)

    def _log_message(
        self,
        result: ChainResult,
        decision: Decision,
        envelope: tuple[str, str | None, list[str]],
    ) -> None:
        msgid, sender, recipients = envelope
        reply = decision.reply()
        out = self.message_log
        verdict = decision.verdict.value
        if not decision.verdict.delivers:
            for line in logs.reject_lines(result.deciding or "-", sender, recipients, reply):
                out.emit(line, msgid=msgid, verdict=verdict, filter=result.deciding)
        out.emit(
            logs.accounting_line(
                msgid, result.seconds, [(o.name, o.seconds) for o in result.outcomes]
            ),
            msgid=msgid,
        )
        if self.settings.log_summary:
            out.emit(
                logs.summary_line(msgid, verdict, result.deciding, reply, result.seconds),
                msgid=msgid,
                verdict=verdict,
                filter=result.deciding,
                seconds=round(result.seconds, 6),
            )


def _envelope(message: Message, decision: Decision) -> tuple[str, str | None, list[str]]:
    """Message id, and for a refused message sender and recipients, for the log lines."""
    try:
        control = message.control
    except Exception as exc:
        log.warning("could not read the control file for logging: %s", exc)
        return "-", None, []
    if decision.verdict.delivers:
        return control.msgid or "-", None, []
    return control.msgid or "-", control.sender, [r.address for r in control.recipients]


# -- process-level plumbing ------------------------------------------------------------------


def watch_stdin(loop: asyncio.AbstractEventLoop, on_eof: Callable[[], None]) -> bool:
    """Call ``on_eof`` when stdin (courierfilter's pipe) reaches EOF.

    Only pipes, sockets and terminals are watched; ``/dev/null`` or a file (systemd, tests)
    is ignored: then SIGTERM stops the server.  Data on stdin is read and ignored (the
    original treated any byte as a shutdown request).
    """
    try:
        st = os.fstat(0)
    except OSError:
        return False
    if not (stat.S_ISFIFO(st.st_mode) or stat.S_ISSOCK(st.st_mode) or os.isatty(0)):
        return False
    os.set_blocking(0, False)

    def readable() -> None:
        try:
            data = os.read(0, 4096)
        except BlockingIOError:
            return
        except OSError as exc:
            if exc.errno == errno.EINTR:
                return
            data = b""
        if not data:
            loop.remove_reader(0)
            on_eof()

    loop.add_reader(0, readable)
    return True


def install_signal_handlers(server: FilterServer) -> None:
    """SIGTERM/SIGINT stop the server, SIGHUP reloads the configuration."""
    loop = server.loop
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, server.request_stop)

    def on_hup() -> None:
        task = loop.create_task(server.reload())
        server._retiring.add(task)
        task.add_done_callback(server._retiring.discard)

    loop.add_signal_handler(signal.SIGHUP, on_hup)


def readiness_fd() -> int | None:
    """fd 3 if courierfilter passed its readiness pipe (call before opening anything)."""
    if os.environ.get("LISTEN_FDS"):
        return None  # systemd socket activation owns fd 3
    try:
        st = os.fstat(3)
    except OSError:
        return None
    return 3 if stat.S_ISFIFO(st.st_mode) else None


def signal_ready(fd: int | None) -> None:
    """Close the readiness pipe: courierfilter's ``start`` then returns."""
    if fd is not None:
        with contextlib.suppress(OSError):
            os.close(fd)


def chain_verdict_name(decision: Decision) -> str:
    """Short verdict name for messages and metrics."""
    return Verdict(decision.verdict).value
