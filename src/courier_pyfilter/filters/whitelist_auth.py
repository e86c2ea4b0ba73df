"""``whitelist_auth``: accept mail from SMTP-authenticated senders.

A message whose control file names a non-empty SMTP AUTH user (the ``i`` record) is
accepted with ``200 Ok`` and skips the rest of the chain (or, with ``for``, the listed
filters).  Anything else continues.  List it after ``auto_whitelist``, which must see
authenticated mail to learn correspondents.
"""

from __future__ import annotations

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision


class WhitelistAuth(Filter):
    """Whitelists authenticated senders."""

    whitelist = True

    async def check(self, message: Message, ctx: Context) -> Decision:
        if message.auth_user:
            return Decision.accept()
        return CONTINUE
