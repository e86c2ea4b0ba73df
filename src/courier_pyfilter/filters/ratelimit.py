"""``ratelimit``: limit how many messages one client (or network) may send per interval.

Every message is counted for its client IP address — or, with ``limit_network``, for the
client's network (IPv4 /24, IPv6 first three groups).  When the count in the current
window exceeds ``max_connections`` the message is refused with::

    421 Too many messages from 192.0.2.1, slow down.

The window is the original's: ``interval`` minutes made of per-minute buckets aligned to
the clock (with the default ``interval = 1``, the current calendar minute), so a count
drops back at minute boundaries.  Refused messages count too, as in the original, unless
``count_rejected = False``.

Unlike the original, which kept the counters in the memory of one process, the counters
live in the store (``[ttldb]``, database ``ratelimit``, keyed by the IP address or the
network text): they survive a restart, and servers sharing PostgreSQL enforce one common
limit.  Each count is one atomic store operation, so concurrent messages are never lost
or counted twice.  A message without a client address is counted under the shared key
``unknown`` (the original counted them all together too).
"""

from __future__ import annotations

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision
from ..store import TtlDb
from ._netkey import network_text, setting_bool, setting_int, setting_seconds

__all__ = ["RATELIMIT_DB", "UNKNOWN_CLIENT", "RateLimit"]

RATELIMIT_DB = "ratelimit"
"""Database of the per-client counters."""
UNKNOWN_CLIENT = "unknown"
"""Counter key (and reply text) for messages without a client IP address."""


class RateLimit(Filter):
    """Counts messages per client IP address (or network) in the store."""

    defaults = {
        "max_connections": 60,
        "interval": 1,
        "senders_purge_interval": 60 * 60 * 12,
        "limit_network": False,
        "count_rejected": True,
    }
    section = "ratelimit.py"
    """The filter's section of ``pythonfilter-modules.conf`` (for error messages)."""
    database_name = RATELIMIT_DB
    """The store database holding the counters."""

    _db: TtlDb | None = None

    # -- what is counted (overridden by ratelimitauth) --------------------------------------

    def counter_key(self, message: Message) -> tuple[str, str] | None:
        """``(counter key, name shown in the reply)`` for ``message``; None: not counted."""
        ip = message.client_ip
        if ip is None:
            return UNKNOWN_CLIENT, UNKNOWN_CLIENT
        if setting_bool(self.settings, "limit_network", self.section):
            return network_text(ip), str(ip)
        return str(ip), str(ip)

    def reply(self, shown: str) -> Decision:
        """The refusal for a client over its limit."""
        return Decision.tempfail(f"Too many messages from {shown}, slow down.", code="421")

    # -- machinery ---------------------------------------------------------------------------

    @property
    def max_count(self) -> int:
        """``max_connections``: messages allowed per window."""
        return setting_int(self.settings, "max_connections", self.section, minimum=0, maximum=None)

    @property
    def interval_minutes(self) -> int:
        """``interval``: the window length in minutes."""
        return setting_int(self.settings, "interval", self.section, minimum=1, maximum=None)

    async def start(self) -> None:
        """Validate the settings, so that a bad value stops the start-up with a clear error."""
        _ = self.max_count, self.interval_minutes
        setting_seconds(self.settings, "senders_purge_interval", self.section)
        setting_bool(self.settings, "count_rejected", self.section)
        if "limit_network" in self.settings:
            setting_bool(self.settings, "limit_network", self.section)

    async def database(self) -> TtlDb:
        """The counters' database, opened on first use (TTL: one window plus a minute)."""
        if self._db is None:
            store = await self.ctx.services.store()
            self._db = await store.database(
                self.database_name,
                ttl=self.interval_minutes * 60 + 60,
                purge_interval=setting_seconds(
                    self.settings, "senders_purge_interval", self.section
                ),
            )
        return self._db

    async def check(self, message: Message, ctx: Context) -> Decision:
        counted = self.counter_key(message)
        if counted is None:
            return CONTINUE
        key, shown = counted
        minutes = self.interval_minutes
        db = await self.database()
        now = ctx.clock()  # one instant for both calls: the same bucket
        total = await db.increment(key, window=minutes * 60, buckets=minutes, now=now)
        if total <= self.max_count:
            return CONTINUE
        if not setting_bool(self.settings, "count_rejected", self.section):
            await db.increment(key, window=minutes * 60, buckets=minutes, amount=-1, now=now)
        ctx.log.debug(
            "%s: %s over the limit: %d messages in %d minute(s), %d allowed",
            ctx.name,
            shown,
            total,
            minutes,
            self.max_count,
        )
        return self.reply(shown)
