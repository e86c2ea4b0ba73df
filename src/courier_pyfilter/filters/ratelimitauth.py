"""``ratelimitauth``: limit how many messages one SMTP AUTH user may send per interval.

The ``ratelimit`` algorithm keyed by the authenticated user name (the ``i`` record):
by default 50 messages per 120 minutes (per-minute buckets aligned to the clock).  Over
the limit the message is refused with::

    421 User alice has exceeded sending limits; wait awhile and try again.

Messages without an authenticated user are not counted and always continue.  Refused
messages count too, as in the original, unless ``count_rejected = False``.

The counters live in the store (``[ttldb]``, database ``ratelimitauth``, keyed by the user
name as Courier wrote it), not in the memory of one process as in the original: they
survive a restart and servers sharing PostgreSQL enforce one common limit.
"""

from __future__ import annotations

from ..api import Message
from ..decision import Decision
from .ratelimit import RateLimit

__all__ = ["FILTER", "RATELIMITAUTH_DB", "RateLimitAuth"]

RATELIMITAUTH_DB = "ratelimitauth"
"""Database of the per-user counters."""


class RateLimitAuth(RateLimit):
    """Counts messages per SMTP AUTH user in the store."""

    defaults = {
        "max_connections": 50,
        "interval": 120,
        "senders_purge_interval": 60 * 60 * 12,
        "count_rejected": True,
    }
    section = "ratelimitauth.py"
    database_name = RATELIMITAUTH_DB

    def counter_key(self, message: Message) -> tuple[str, str] | None:
        """The auth user (key and reply text); None for unauthenticated mail."""
        user = message.auth_user
        if not user:
            return None
        return user, user

    def reply(self, shown: str) -> Decision:
        """The original's refusal for a user over the limit."""
        return Decision.tempfail(
            f"User {shown} has exceeded sending limits; wait awhile and try again.", code="421"
        )


FILTER = RateLimitAuth
