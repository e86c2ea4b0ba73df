"""``whitelist_domains``: accept mail from trusted sender domains.

A whitelist: it only ever accepts or continues, and if it fails (an exception or a
timeout) the chain simply continues, so it can never block mail.  Settings (section
``[whitelist_domains.py]``):

``domains``
    Sender domains to trust (compared case-insensitively); a leading dot also
    trusts every sub-domain (``.example.org``).

Combine it with ``for`` in ``pythonfilter.conf`` to skip only some later filters::

    whitelist_domains for reject_subject
"""

from __future__ import annotations

from courier_pyfilter.api import CONTINUE, Context, Decision, Filter, Message


class WhitelistDomains(Filter):
    """Accepts senders from the configured domains."""

    whitelist = True
    defaults = {"domains": []}

    async def check(self, message: Message, ctx: Context) -> Decision:
        sender = message.sender or ""  # '' is the null sender <>; never trust it
        domain = sender.rpartition("@")[2].lower()
        if not domain:
            return CONTINUE
        for trusted in ctx.settings["domains"]:
            trusted = trusted.lower()
            if domain == trusted or (trusted.startswith(".") and domain.endswith(trusted)):
                return Decision.accept(f"Ok, {domain} is trusted")
        return CONTINUE
