"""What ``whitelist_relayclients`` and ``whitelist_block`` share: look the client up in
Courier's SMTP access table and accept when its entry says so."""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision

if TYPE_CHECKING:
    from ..mta import CourierConfig


class SmtpAccessWhitelist(Filter):
    """Accepts clients whose smtpaccess entry passes :meth:`listed`; else continues.

    A whitelist: a missing or invalid client address continues (an invalid one is
    logged), and a failure reading the table is the chain's whitelist failure.
    """

    whitelist = True
    log_name = "smtpaccess"
    """The filter's name at the start of its log lines."""

    def listed(self, courier: CourierConfig, ip: str) -> bool:
        """True when the client at ``ip`` is to be accepted."""
        raise NotImplementedError

    async def check(self, message: Message, ctx: Context) -> Decision:
        ip = message.client_ip
        if ip is None:
            if message.control.client_ip_invalid:
                ctx.log.warning(
                    "%s: ignoring invalid TCPREMOTEIP %r",
                    self.log_name,
                    message.control.client_ip_raw,
                )
            return CONTINUE
        if self.listed(ctx.services.courier, str(ip)):
            return Decision.accept()
        return CONTINUE
