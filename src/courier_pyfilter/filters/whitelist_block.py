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

from typing import TYPE_CHECKING

from ._smtpaccess import SmtpAccessWhitelist

if TYPE_CHECKING:
    from ..mta import CourierConfig


class WhitelistBlock(SmtpAccessWhitelist):
    """Whitelists clients whose smtpaccess entry sets an empty BLOCK."""

    log_name = "whitelist_block"

    def listed(self, courier: CourierConfig, ip: str) -> bool:
        return courier.is_whiteblocked(ip)
