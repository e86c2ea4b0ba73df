"""``nosuccessdsn``: never send success notifications (DSN ``NOTIFY=SUCCESS``).

Some senders (spammers among them, with invalid return addresses) ask for a delivery
report on success; answering them fills the queue with undeliverable reports and tells
outsiders which addresses exist.  For each pending recipient whose DSN flags (``N``
record) contain ``S``, this filter calls
:meth:`~courier_pyfilter.edit.Editor.clear_dsn_success`: Courier's control records
cannot be changed, so a copy of the recipient without ``S`` is appended to the last
control file and the original is marked done.  Courier reports a success only for
deliveries it recorded as local or relayed, so the retired original never produces a
report.

Unlike the original, which gave the copy *empty* flags, the other flags are kept:
``NOTIFY=SUCCESS,FAILURE`` becomes ``FAILURE``; ``NOTIFY=SUCCESS`` alone becomes
Courier's default (failures are reported).  The data file is never touched; the filter
never decides anything and logs nothing (as the original) except at debug level.
"""

from __future__ import annotations

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision


class NoSuccessDsn(Filter):
    """Clears success-DSN requests; always continues."""

    async def check(self, message: Message, ctx: Context) -> Decision:
        for rcpt in message.recipients:
            if "S" not in rcpt.notify:
                continue
            new = await message.edit.clear_dsn_success(rcpt)
            if new is not None:
                ctx.log.debug(
                    "nosuccessdsn filter: success DSN of %s cleared (NOTIFY %r -> %r)",
                    rcpt.address,
                    rcpt.notify,
                    new.notify,
                )
        return CONTINUE
