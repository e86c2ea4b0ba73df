"""``whitelist_block``: accept mail from clients whitelisted with an empty ``BLOCK``.

In Courier's SMTP access table, ``BLOCK`` with a text makes couriertcpd refuse a client;
``BLOCK`` set to the empty string (``allow,BLOCK``) is the conventional way to mark a
client as exempt from DNS blacklists.  This filter looks the client's address
(``TCPREMOTEIP``) up in ``smtpaccess.dat`` (or the ``smtpaccess`` text sources when there
is no ``.dat``), using the most specific entry only, as couriertcpd does.  If that entry
sets ``BLOCK`` to the empty string the message is accepted with ``200 Ok``; anything
else (no entry, no ``BLOCK``, ``BLOCK`` with a text) continues.

No settings.  A whitelist: a missing or invalid client address continues, and a failure
reading the table continues too (the chain logs it), so it never blocks mail.  (The
original answered ``451 Internal failure locating control files`` when it could not get
the client address.)
"""

from __future__ import annotations

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision


class WhitelistBlock(Filter):
    """Whitelists clients whose smtpaccess entry sets an empty BLOCK."""

    whitelist = True

    async def check(self, message: Message, ctx: Context) -> Decision:
        """Accept when the client's smtpaccess entry sets ``BLOCK`` to ``''``."""
        ip = message.client_ip
        if ip is None:
            if message.control.client_ip_invalid:
                ctx.log.warning(
                    "whitelist_block: ignoring invalid TCPREMOTEIP %r",
                    message.control.client_ip_raw,
                )
            return CONTINUE
        if ctx.services.courier.is_whiteblocked(str(ip)):
            return Decision.accept()
        return CONTINUE
