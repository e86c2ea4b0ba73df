"""``noduplicates``: deliver only once to a recipient listed several times.

Courier keeps two recipients with the same canonical address when their original
addresses differ (for instance ``postmaster@`` and ``root@`` both aliased to one
mailbox).  For each pending recipient whose address was already seen — compared
exactly, case included, in control-file order — this filter logs::

    noduplicates filter: Removing duplicate address "<address>" from control file.

and removes that later copy with :meth:`~courier_pyfilter.edit.Editor.remove_recipient`
(Courier records it as delivered; it never appears in a success DSN, because Courier
reports only local or relayed deliveries).  The first occurrence keeps its ``R`` and
DSN flags.  The data file is never touched.  It never decides anything.
"""

from __future__ import annotations

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision

REMOVE_REASON = "Duplicate address removed by noduplicates"
"""The text written in the ``I<n> R 250 Ok - ...`` record of a removed duplicate."""


class NoDuplicates(Filter):
    """Removes repeated recipients; always continues."""

    async def check(self, message: Message, ctx: Context) -> Decision:
        seen: set[str] = set()
        for rcpt in message.recipients:
            if rcpt.address in seen:
                ctx.log.info(
                    'noduplicates filter: Removing duplicate address "%s" from control file.',
                    rcpt.address,
                )
                await message.edit.remove_recipient(rcpt, REMOVE_REASON)
            seen.add(rcpt.address)
        return CONTINUE
