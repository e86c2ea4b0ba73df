"""The filter author's API: what a filter is and what it receives.

A filter is a subclass of :class:`Filter` with an ``async def check(message, ctx)`` that
returns a :class:`~courier_pyfilter.decision.Decision`::

    from courier_pyfilter.api import Context, Decision, Filter, Message

    class NoFridays(Filter):
        defaults = {"code": "451"}

        async def check(self, message: Message, ctx: Context) -> Decision:
            if ctx.clock_struct().tm_wday == 4:
                return Decision.tempfail("No mail on Fridays", code=ctx.settings["code"])
            return Decision.continue_()

A module may instead define a module-level ``async def check(message, ctx)`` (and optional
``async def start(ctx)`` / ``async def stop(ctx)``, and a ``DEFAULTS`` dict).  The loader
finds filters by the name written in ``pythonfilter.conf``: first the built-in modules in
``courier_pyfilter.filters``, then the ``courier_pyfilter.filters`` entry-point group, then
legacy modules written for the original (``pythonfilter.NAME``).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

from .decision import CONTINUE, Decision, Verdict

if TYPE_CHECKING:
    from .message import Message
    from .services import Services

__all__ = [
    "CONTINUE",
    "Context",
    "Decision",
    "Filter",
    "FilterFunction",
    "Message",
    "Verdict",
]


class FilterFunction(Protocol):
    """The shape of a module-level filter: ``async def check(message, ctx) -> Decision``."""

    def __call__(self, message: Message, ctx: Context, /) -> Awaitable[Decision]: ...


@dataclass(slots=True)
class Context:
    """What a filter instance gets besides the message.

    One context exists per chain entry (per line of ``pythonfilter.conf``); it lives as long
    as the chain, so a filter may keep state in its own attributes but must not keep
    per-message data here.
    """

    name: str
    """The filter's name exactly as written in ``pythonfilter.conf``."""
    settings: Mapping[str, Any]
    """The ``[NAME.py]`` section of ``pythonfilter-modules.conf`` over the filter's defaults."""
    services: Services
    """Shared service clients: the store, DNS, clamd, spamd, the Courier configuration."""
    log: logging.Logger
    """A logger named after the filter; its lines go to stderr (syslog under Courier)."""
    clock: Callable[[], float] = field(default=time.time)
    """Wall-clock time in seconds; tests replace it."""
    dry_run: bool = False
    """True under ``courier-pyfilter check``: no store writes, no message changes."""

    def clock_struct(self) -> time.struct_time:
        """The current local time as a ``struct_time`` (from :attr:`clock`)."""
        return time.localtime(self.clock())


class Filter:
    """Base class of class-based filters.

    Class attributes:

    ``defaults``
        setting name -> default value; the ``[NAME.py]`` section overrides them.
    ``whitelist``
        True for filters that only ever accept early.  When such a filter fails (raises or
        times out) the chain continues instead of tempfailing, so that a broken whitelist
        never blocks mail.  Admins can override with the ``on_error`` setting.
    """

    defaults: ClassVar[Mapping[str, Any]] = {}
    whitelist: ClassVar[bool] = False

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    async def start(self) -> None:
        """Called once before the first message (open connections, warm caches)."""

    async def stop(self) -> None:
        """Called once when the chain is retired (shutdown or reload)."""

    async def check(self, message: Message, ctx: Context) -> Decision:
        """Judge one message.  Must be overridden."""
        raise NotImplementedError

    @property
    def settings(self) -> Mapping[str, Any]:
        """Shortcut for ``self.ctx.settings``."""
        return self.ctx.settings


def __getattr__(name: str) -> Any:
    # Message and Services are imported on first use, keeping ``import api`` cheap.
    if name == "Message":
        from .message import Message

        return Message
    if name == "Services":
        from .services import Services

        return Services
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
