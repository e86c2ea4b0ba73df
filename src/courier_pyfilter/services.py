"""Shared service clients handed to filters through :attr:`Context.services`.

Each client is created on first use, once per server (not per message), and closed when
the server stops.  Filters never open sockets themselves: they ask for the client here.
Imports are lazy so a chain that needs no database or DNS loads none of their modules.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from .mta import CourierConfig
    from .settings import Settings
    from .store import Store

__all__ = ["ServiceError", "Services"]

log = logging.getLogger("courier_pyfilter.services")

T = TypeVar("T")

SectionGetter = Callable[[str], Mapping[str, Any]]


RETRY_FAILED_AFTER = 5.0
"""Seconds during which a client that failed to open is not tried again."""


class ServiceError(Exception):
    """A service could not be created (bad settings, unreachable server)."""


class Services:
    """The registry of shared clients for one server (or one ``check`` run).

    ``sections`` returns an evaluated section of ``pythonfilter-modules.conf`` by name.
    """

    def __init__(
        self,
        settings: Settings,
        sections: SectionGetter,
        *,
        dry_run: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings
        self.sections = sections
        self.dry_run = dry_run
        self.clock = clock
        self._courier: CourierConfig | None = None
        self._clients: dict[str, Any] = {}
        self._closers: list[Callable[[], Awaitable[None]]] = []
        self._locks: dict[str, asyncio.Lock] = {}
        self._failures: dict[str, tuple[float, BaseException]] = {}

    # -- the Courier configuration ------------------------------------------------------

    @property
    def courier(self) -> CourierConfig:
        """Courier's configuration files (``me``, ``locals``, smtpaccess, ...), cached."""
        if self._courier is None:
            from .mta import CourierConfig, CourierPaths

            self._courier = CourierConfig(CourierPaths(sysconfdir=self.settings.sysconfdir))
        return self._courier

    @courier.setter
    def courier(self, value: CourierConfig) -> None:
        self._courier = value

    # -- generic lazily created clients -------------------------------------------------

    async def get(
        self,
        name: str,
        factory: Callable[[], Awaitable[T]],
        close: Callable[[T], Awaitable[None]] | None = None,
    ) -> T:
        """The client called ``name``, created by ``factory`` on first use.

        Concurrent first calls create it once.  ``close`` is awaited at shutdown.  When
        ``factory`` fails, its error is raised again without a new attempt for
        :data:`RETRY_FAILED_AFTER` seconds, so that messages do not each wait for a
        connection timeout while a backend is down.
        """
        client = self._clients.get(name)
        if client is not None:
            return client  # type: ignore[no-any-return]
        lock = self._locks.setdefault(name, asyncio.Lock())
        async with lock:
            client = self._clients.get(name)
            if client is None:
                failed = self._failures.get(name)
                if failed is not None and time.monotonic() - failed[0] < RETRY_FAILED_AFTER:
                    raise failed[1].with_traceback(None)
                try:
                    client = await factory()
                except Exception as exc:
                    self._failures[name] = (time.monotonic(), exc)
                    raise
                self._failures.pop(name, None)
                self._clients[name] = client
                if close is not None:
                    bound = client

                    async def _close() -> None:
                        await close(bound)

                    self._closers.append(_close)
        return client  # type: ignore[no-any-return]

    def put(self, name: str, client: Any) -> None:
        """Install a ready-made client (tests, the replay tool)."""
        self._clients[name] = client

    async def store(self) -> Store:
        """The TtlDb store configured by ``[ttldb]`` (SQLite under the state dir by default)."""

        async def factory() -> Store:
            from .store import Store, store_config_from_sections

            sections = {name: self.sections(name) for name in ("ttldb", "TtlDb")}
            config = store_config_from_sections(sections, self.settings.state_dir)
            return await Store.open(config, clock=self.clock, dry_run=self.dry_run)

        async def close(store: Store) -> None:
            await store.close()

        return await self.get("store", factory, close)

    async def close(self) -> None:
        """Close every client created so far (in reverse order); errors are logged."""
        while self._closers:
            closer = self._closers.pop()
            try:
                await asyncio.wait_for(closer(), timeout=10)
            except Exception:
                log.exception("failed to close a service client")
        self._clients.clear()
