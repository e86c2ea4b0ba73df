"""e2e test filter: log how many control files and recipients a message has; continue.

Log line: ``e2e_rcptcount: <token> files=<n> recipients=<n> <addr>,<addr>...`` where
``<token>`` is the message's ``X-E2E-Token`` header.
"""

from __future__ import annotations

from courier_pyfilter.api import CONTINUE, Context, Decision, Filter, Message


class E2ERcptCount(Filter):
    """Logs the envelope's shape."""

    async def check(self, message: Message, ctx: Context) -> Decision:
        """Log and continue."""
        headers = await message.headers()
        addresses = sorted(r.address for r in message.recipients)
        ctx.log.info(
            "e2e_rcptcount: %s files=%d recipients=%d %s",
            headers.get("X-E2E-Token", "-"),
            len(message.control_paths),
            len(addresses),
            ",".join(addresses),
        )
        return CONTINUE
