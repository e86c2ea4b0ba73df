"""``log_aliases``: log the address each recipient was originally sent to.

For every pending recipient whose control record carries an original address (the
``R`` record: the ORCPT the client gave, or the address before alias expansion), one
line is logged::

    Message delivered to <address> was originally addressed to <original>.

with a leading ``rfc822;`` removed from the original.  Recipients without an original
address are not logged.  Always continues; no settings.
"""

from __future__ import annotations

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision

_PREFIX = "rfc822;"


def original_without_prefix(original: str) -> str:
    """``original`` without a leading ``rfc822;`` (any case)."""
    if original[: len(_PREFIX)].lower() == _PREFIX:
        return original[len(_PREFIX) :]
    return original


class LogAliases(Filter):
    """Logs the original address of every recipient that has one."""

    async def check(self, message: Message, ctx: Context) -> Decision:
        """Log one line per recipient with an original address; always continue."""
        for recipient in message.recipients:
            if recipient.original:
                ctx.log.info(
                    "Message delivered to %s was originally addressed to %s.",
                    recipient.address,
                    original_without_prefix(recipient.original),
                )
        return CONTINUE
