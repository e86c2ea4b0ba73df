"""The ``courier`` library of courier-pythonfilter 3.0.6, for filters written for it.

Filters written for the original import ``courier.config``, ``courier.control``,
``courier.xfilter``, ``courier.authdaemon``, ``courier.sendmail`` and
``courier.quarantine``; these modules keep the original's synchronous API (snake_case and
camelCase names) on top of courier-pyfilter's own library.  Legacy filters run in worker
threads of the daemon, so blocking calls are fine there.

The daemon calls :func:`attach_daemon` once its services exist, so that these modules use
the daemon's configuration files and its store (see :mod:`pythonfilter.ttldb`).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from courier_pyfilter.services import Services

__all__ = ["attach_daemon", "detach_daemon"]


def attach_daemon(services: Services, loop: asyncio.AbstractEventLoop | None = None) -> None:
    """Point the compatibility layer at a running daemon (call from its event loop).

    ``courier.config`` then reads the daemon's ``sysconfdir`` and modules configuration
    files, and ``pythonfilter.ttldb`` keeps its data in the daemon's store
    (``services.store()``), called on ``loop`` (default: the running loop).
    """
    from pythonfilter import ttldb

    from . import config

    settings = services.settings
    config._configure(sysconfdir=settings.sysconfdir, modules_configs=settings.modules_configs)
    ttldb._set_loop(loop if loop is not None else asyncio.get_running_loop(), services.store)


def detach_daemon() -> None:
    """Undo :func:`attach_daemon`'s store binding (at daemon shutdown)."""
    from pythonfilter import ttldb

    ttldb._clear_loop()
