"""``whitelist_relayclients``: accept mail from clients that Courier lets relay.

The client's address (``TCPREMOTEIP``) is looked up in Courier's SMTP access table
(``smtpaccess.dat``, or the ``smtpaccess`` text sources when there is no ``.dat``), the
way couriertcpd does: the most specific entry only (``1.2.3.4``, then ``1.2.3``,
``1.2``, ``1``; IPv6 in Courier's ``:xxxx:...`` form; an IPv4-mapped address as IPv4).
If that entry sets ``RELAYCLIENT`` (to any value, even empty) the message is accepted
with ``200 Ok``; anything else continues.

No settings.  A whitelist: a missing or invalid client address continues, and a failure
reading the table continues too (the chain logs it), so it never blocks mail.
"""

from __future__ import annotations

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision


class WhitelistRelayclients(Filter):
    """Whitelists clients whose smtpaccess entry sets RELAYCLIENT."""

    whitelist = True

    async def check(self, message: Message, ctx: Context) -> Decision:
        """Accept when the client's smtpaccess entry sets RELAYCLIENT."""
        ip = message.client_ip
        if ip is None:
            if message.control.client_ip_invalid:
                ctx.log.warning(
                    "whitelist_relayclients: ignoring invalid TCPREMOTEIP %r",
                    message.control.client_ip_raw,
                )
            return CONTINUE
        if ctx.services.courier.is_relayed(str(ip)):
            return Decision.accept()
        return CONTINUE
