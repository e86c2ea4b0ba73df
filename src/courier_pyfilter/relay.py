"""The launcher's relay: courierfilter starts it, a systemd service does the filtering.

courierfilter only keeps the socket of a filter it started itself (it deletes the others
at every ``filterctl``) and never restarts a crashed filter.  To run the server as a
systemd service instead, set ``backend`` in ``[courier-pyfilter]``: ``pythonfilter``
started by courierfilter then becomes this small relay.  It owns Courier's socket, passes
each connection through to the service's socket unchanged, and answers ``451`` itself
while the service is down or restarting, so no message is ever accepted unfiltered.
The service runs ``pythonfilter --service`` and listens on the ``backend`` socket.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os

from .decision import Decision
from .protocol import format_reply
from .server import bind_filter_socket

__all__ = ["UNAVAILABLE", "Relay"]

log = logging.getLogger("courier_pyfilter.relay")

UNAVAILABLE = Decision.tempfail("4.3.0 Mail filter service unavailable, try again later")

CONNECT_TIMEOUT = 5.0


async def _pump(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
    except (ConnectionError, OSError):
        pass


async def _consume_request(reader: asyncio.StreamReader) -> None:
    """Read the request up to its empty line, so closing does not reset the connection."""
    tail = b""
    with contextlib.suppress(ConnectionError, OSError, TimeoutError):
        async with asyncio.timeout(CONNECT_TIMEOUT):
            while chunk := await reader.read(65536):
                seen = tail + chunk
                if b"\n\n" in seen or b"\n\r\n" in seen:
                    return
                tail = seen[-2:]


class Relay:
    """Passes courierfilter connections on ``socket_path`` through to ``backend``."""

    def __init__(self, socket_path: str, backend: str, *, mode: int = 0o660, backlog: int = 4096):
        self.socket_path = socket_path
        self.backend = backend
        self.mode = mode
        self.backlog = backlog
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._ino: tuple[int, int] | None = None

    async def start(self) -> None:
        """Create Courier's socket and start relaying."""
        sock = bind_filter_socket(self.socket_path, mode=self.mode, backlog=self.backlog)
        st = os.stat(self.socket_path)
        self._ino = (st.st_dev, st.st_ino)
        self._server = await asyncio.start_unix_server(self._handle, sock=sock)
        log.info("pythonfilter relay on %s -> %s", self.socket_path, self.backend)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is not None:
            self._tasks.add(task)
        try:
            try:
                async with asyncio.timeout(CONNECT_TIMEOUT):
                    b_reader, b_writer = await asyncio.open_unix_connection(self.backend)
            except (OSError, TimeoutError) as exc:
                log.error("filter service at %s unavailable (%s); answering 451", self.backend, exc)
                await _consume_request(reader)
                writer.write(format_reply(UNAVAILABLE.reply()))
                with contextlib.suppress(ConnectionError, OSError):
                    await writer.drain()
                return
            try:
                await asyncio.gather(_pump(reader, b_writer), _pump(b_reader, writer))
            finally:
                b_writer.close()
        finally:
            writer.close()
            if task is not None:
                self._tasks.discard(task)

    async def stop(self, drain_timeout: float = 60.0) -> None:
        """Stop accepting, remove the socket, let open connections finish."""
        if self._server is not None:
            self._server.close()
        try:
            st = os.stat(self.socket_path)
            if (st.st_dev, st.st_ino) == self._ino:
                os.unlink(self.socket_path)
        except OSError:
            pass
        if self._tasks:
            await asyncio.wait(set(self._tasks), timeout=drain_timeout)
