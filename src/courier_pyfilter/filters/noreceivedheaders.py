"""``noreceivedheaders``: hide an authenticated sender's address and login.

When a client authenticated (the control file has an ``i`` record), Courier's
``Received:`` header for the submission names the client's IP address, its HELO name
and the login::

    Received: from client.example ([::ffff:192.0.2.1])
      (AUTH: PLAIN alice)
      by mx.example.org with ESMTPA
      id 00000000001621...; Wed, 25 Nov 2026 11:22:51 +0000

By default only that header is removed: the **top-most** ``Received:`` field, and only
when it carries ``(AUTH: <method> <user>)`` for the message's authenticated user.  If
the top-most ``Received:`` does not look like that, nothing is removed and a warning is
logged.  Every other header stays byte-for-byte the same, so DKIM signatures survive.

Setting (section ``[noreceivedheaders.py]``):

``remove_all`` (default ``False``)
    ``True`` restores the original's behaviour: remove **every** ``Received:`` header of
    an authenticated message (also those the client's own mail software added).

As in the original, an empty ``i`` record counts as authenticated.  The filter never
decides anything.
"""

from __future__ import annotations

import re

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision
from ..edit import header_name, split_headers

_AUTH = re.compile(rb"\(AUTH:[ \t\r\n]+[^ \t\r\n()]+[ \t\r\n]+([^()]*?)[ \t\r\n]*\)")


def is_courier_auth_received(field: bytes, auth_user: str) -> bool:
    """Return whether a raw ``Received:`` field is Courier's header for ``auth_user``.

    That is: it has an ``(AUTH: <method> <user>)`` comment whose user is exactly the
    authenticated user (only ``(AUTH: <method>`` is required when the user is empty).
    """
    if header_name(field) != b"received":
        return False
    user = auth_user.encode("utf-8", "surrogateescape")
    for match in _AUTH.finditer(field):
        if not user or match.group(1) == user:
            return True
    return not user and b"(AUTH:" in field


class NoReceivedHeaders(Filter):
    """Removes Courier's Received header of authenticated submissions."""

    defaults = {"remove_all": False}

    async def start(self) -> None:
        if not isinstance(self.settings["remove_all"], bool):
            raise ValueError(
                f"[noreceivedheaders.py] remove_all must be True or False, "
                f"got {self.settings['remove_all']!r}"
            )

    async def check(self, message: Message, ctx: Context) -> Decision:
        user = message.auth_user
        if user is None:
            return CONTINUE
        if ctx.settings["remove_all"]:
            removed = await message.edit.remove_headers("Received")
            ctx.log.debug("noreceivedheaders filter: removed %d Received header(s)", removed)
            return CONTINUE
        fields, _ = split_headers(await message.raw())
        top = next((f for f in fields if header_name(f) == b"received"), None)
        if top is None:
            ctx.log.warning(
                "noreceivedheaders filter: message %s has no Received header; nothing removed",
                message.msgid,
            )
            return CONTINUE
        if not is_courier_auth_received(top, user):
            ctx.log.warning(
                "noreceivedheaders filter: the top Received header of message %s is not "
                "Courier's header for the authenticated user %r; nothing removed",
                message.msgid,
                user,
            )
            return CONTINUE
        await message.edit.remove_headers("Received", first_only=True)
        ctx.log.debug("noreceivedheaders filter: removed Courier's Received header")
        return CONTINUE
