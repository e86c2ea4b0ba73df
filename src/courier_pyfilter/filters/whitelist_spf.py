"""``whitelist_spf``: accept mail whose sender's SPF policy authorizes the client.

The envelope sender's domain is checked with SPF (RFC 7208), exactly as ``spfcheck``
does (same settings, see :mod:`courier_pyfilter.filters.spfcheck`).  As in the original:

* result ``pass`` -> ``200 Ok``: the message skips the rest of the chain (or, with
  ``for``, the filters listed);
* any other result -> the chain continues;
* the null sender is not checked unless ``check_null_sender = True``.

It is a whitelist, so it never blocks mail: a ``temperror`` (DNS trouble, or no result
within ``spf_timeout``) is a filter failure that the chain logs and continues from, and
a control file without a sender record continues too (the original answered ``451``).

Settings (section ``[whitelist_spf.py]``): ``check_null_sender``,
``use_courier_verdict``, ``courier_verdict_missing`` and ``spf_timeout``, as for
``spfcheck``.

Note that SPF ``pass`` only says that the sender's domain authorizes the client; a
domain that publishes ``+all`` or a wide network authorizes everybody.
"""

from __future__ import annotations

from ..api import Context, Message
from ..decision import CONTINUE, Decision
from ..spf import SpfResult
from .spfcheck import COMMON_DEFAULTS, SpfFilter

__all__ = ["FILTER", "WhitelistSpf"]


class WhitelistSpf(SpfFilter):
    """Whitelists senders whose SPF policy passes the client."""

    whitelist = True
    section = "whitelist_spf.py"
    defaults = dict(COMMON_DEFAULTS)

    async def check(self, message: Message, ctx: Context) -> Decision:
        if message.sender is None:
            ctx.log.warning("%s: %s has no sender record; continuing", ctx.name, message.msgid)
            return CONTINUE
        verdict = await self.verdict(message, ctx)
        if verdict is None:
            return CONTINUE
        self.log_verdict(message, ctx, verdict)
        if verdict.result is SpfResult.PASS:
            return Decision.accept()
        if verdict.result is SpfResult.TEMPERROR:
            raise self.temporary_error(verdict)
        return CONTINUE


FILTER = WhitelistSpf
