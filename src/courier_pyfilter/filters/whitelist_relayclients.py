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

from typing import TYPE_CHECKING

from ._smtpaccess import SmtpAccessWhitelist

if TYPE_CHECKING:
    from ..mta import CourierConfig


class WhitelistRelayclients(SmtpAccessWhitelist):
    """Whitelists clients whose smtpaccess entry sets RELAYCLIENT."""

    log_name = "whitelist_relayclients"

    def listed(self, courier: CourierConfig, ip: str) -> bool:
        return courier.is_relayed(ip)
