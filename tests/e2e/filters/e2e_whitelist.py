"""e2e test filter: accept and tell Courier to skip its other filters (``050 OK``)."""

from __future__ import annotations

from courier_pyfilter.api import Context, Decision, Filter, Message


class E2EWhitelist(Filter):
    """Always answers ``050 OK``."""

    whitelist = True

    async def check(self, message: Message, ctx: Context) -> Decision:
        """Accept, skipping the rest."""
        return Decision.accept_skip_courier("OK")
