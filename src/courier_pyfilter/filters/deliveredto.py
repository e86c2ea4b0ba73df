"""``deliveredto``: refuse mail that already passed through a local delivery (a loop).

Courier's local delivery adds a ``Delivered-To:`` header naming the mailbox.  If the
**first** ``Delivered-To:`` header of an incoming message names an address in a local
domain (Courier's ``locals``) or a hosted domain (``hosteddomains``), the message has
been delivered here before and is coming back: it is refused with::

    501 Mail loop - already have my Delivered-To: header.

A header that is not exactly one ``local@domain`` address, a foreign domain, or no such
header at all continues.  Surrounding blanks and one pair of angle brackets are removed
first (``<user@example.com>`` counts; the original compared the raw value).  Only the
header block is read.  If the data file cannot be read the answer is
``451 Internal failure parsing message data file``, as in the original.

No settings.
"""

from __future__ import annotations

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision
from ..message import MessageError

LOOP_TEXT = "Mail loop - already have my Delivered-To: header."
"""Text of the refusal (code 501)."""
READ_FAILURE_TEXT = "Internal failure parsing message data file"
"""Text of the temporary failure (code 451) when the data file cannot be read."""


def delivered_to_domain(value: str) -> str | None:
    """The domain of a ``Delivered-To`` value, or None unless it is one ``local@domain``.

    Blanks around the value and one pair of surrounding angle brackets are ignored.
    """
    text = value.strip()
    if text.startswith("<") and text.endswith(">"):
        text = text[1:-1].strip()
    parts = text.split("@")
    if len(parts) != 2 or not parts[1]:
        return None
    return parts[1]


class DeliveredTo(Filter):
    """Refuses messages whose first Delivered-To header names a local or hosted domain."""

    async def check(self, message: Message, ctx: Context) -> Decision:
        """Refuse with 501 when the first Delivered-To address is ours."""
        try:
            headers = await message.headers()
        except MessageError as exc:
            ctx.log.error("deliveredto: %s", exc)
            return Decision.tempfail(READ_FAILURE_TEXT, code="451")
        value = headers.get("Delivered-To")
        if value is None:
            return CONTINUE
        domain = delivered_to_domain(str(value))
        if domain is None:
            return CONTINUE
        courier = ctx.services.courier
        if courier.is_local(domain) or courier.is_hosteddomain(domain):
            return Decision.reject(LOOP_TEXT, code="501")
        return CONTINUE
