"""``comeagain``: ask new correspondents to send their message a second time.

The first message from a sender to a recipient is refused with::

    421 Please send the message again to prove you are not spamware or virusware.

and the pair is remembered; from then on (for ``senders_ttl`` seconds after its last
message, 30 days by default) the pair passes.  There is no minimum delay: an immediate
retry passes.  Unlike ``greylist`` the client's address plays no part.

State lives in the store (``[ttldb]``) in the original's database ``correspondents``,
keyed by the hex MD5 of the sender and the recipient concatenated *as they are written
in the control file* (no lower-casing), exactly like the original's keys, so imported
state keeps working.  Every known pair of a message is refreshed; an unknown pair is
stored with the time of the message.  The null sender (bounces) is never asked.
"""

from __future__ import annotations

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision
from ..store import TtlDb
from ._netkey import md5_key, setting_seconds

__all__ = ["CORRESPONDENTS_DB", "ComeAgain", "comeagain_reply"]

SECTION = "comeagain.py"
CORRESPONDENTS_DB = "correspondents"
"""Database of known (sender, recipient) pairs: key -> time of the last message."""

NO_SENDER = "4.3.0 Internal failure: the control file has no sender record"


def comeagain_reply() -> Decision:
    """The original's reply for a message with at least one new correspondent."""
    return Decision.tempfail(
        "Please send the message again to prove you are not spamware or virusware.",
        code="421",
    )


class ComeAgain(Filter):
    """Refuses the first message of every (sender, recipient) pair once."""

    defaults = {
        "senders_ttl": 60 * 60 * 24 * 30,
        "senders_purge_interval": 60 * 60 * 12,
    }

    _db: TtlDb | None = None

    async def start(self) -> None:
        """Validate the settings, so that a bad value stops the start-up with a clear error."""
        setting_seconds(self.settings, "senders_ttl", SECTION)
        setting_seconds(self.settings, "senders_purge_interval", SECTION)

    async def database(self) -> TtlDb:
        """The ``correspondents`` database, opened on first use."""
        if self._db is None:
            store = await self.ctx.services.store()
            self._db = await store.database(
                CORRESPONDENTS_DB,
                ttl=setting_seconds(self.settings, "senders_ttl", SECTION),
                purge_interval=setting_seconds(self.settings, "senders_purge_interval", SECTION),
            )
        return self._db

    async def check(self, message: Message, ctx: Context) -> Decision:
        sender = message.sender
        if sender is None:
            ctx.log.error("comeagain: %s has no sender record; tempfailing", message.msgid)
            return Decision.tempfail(NO_SENDER)
        if sender == "":
            return CONTINUE
        db = await self.database()
        stamp = float(int(ctx.clock()))  # whole seconds, as the original stored them
        new_pair = False
        for address in message.addresses:
            key = md5_key(sender, address)
            # One atomic step refreshes a known pair; an unknown one is stored now.
            if await db.get_and_touch(key, stamp) is None:
                await db.set(key, stamp)
                new_pair = True
        if new_pair:
            return comeagain_reply()
        return CONTINUE
