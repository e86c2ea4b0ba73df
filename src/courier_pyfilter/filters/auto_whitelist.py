"""``auto_whitelist``: accept replies from people that local users wrote to.

When an SMTP-authenticated user sends a message, every (sender, recipient) pair is
recorded in the store.  When an unauthenticated message later arrives whose sender is
one of those correspondents, and *every* pending recipient is a local user who wrote to
that sender within ``whitelist_ttl`` seconds, the message is accepted with ``200 Ok``.
Anything else continues down the chain.

List it **before** ``whitelist_auth``: authenticated mail is accepted there and would
never reach this filter to be recorded.

Settings (section ``[auto_whitelist.py]``):

``whitelist_ttl`` (2592000, 30 days)
    Seconds a recorded pair stays valid.  Looking a pair up does not refresh it; the
    authenticated user writing again does.
``whitelist_purge_interval`` (43200, 12 hours)
    Seconds between the store's background purges of expired pairs.

State: store database ``auto_whitelist``.  A key is the MD5 hex digest of the lower-cased
sender address followed directly by the lower-cased recipient address (the original's
key format, so state imported from courier-pythonfilter keeps working); the value is the
time it was recorded.

A whitelist: it never blocks mail.  When the store fails, recording is skipped and
checking does not whitelist; both are logged and the message continues.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision
from ..loader import FilterLoadError
from ..store.base import Entry
from ..store.errors import StoreConfigError, StoreError

if TYPE_CHECKING:
    from ..store import Store, TtlDb

__all__ = ["DATABASE", "AutoWhitelist", "pair_key"]

DATABASE = "auto_whitelist"
"""Name of the store database (the original's TtlDb name)."""


def pair_key(first: str, second: str) -> str:
    """The original's store key: MD5 hex of ``first.lower() + second.lower()``.

    Recording uses ``pair_key(sender, recipient)``; checking a reply uses
    ``pair_key(recipient, sender)``, i.e. the same pair seen from the other side.
    """
    text = first.lower() + second.lower()
    return hashlib.md5(text.encode("utf-8", "surrogateescape"), usedforsecurity=False).hexdigest()


def _seconds(name: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise FilterLoadError(f"[{DATABASE}.py] {name} must be a number of seconds, got {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise FilterLoadError(f"[{DATABASE}.py] {name} must be positive, got {value!r}")
    return float(value)


class AutoWhitelist(Filter):
    """Records the correspondents of authenticated users and whitelists their replies."""

    whitelist = True
    defaults = {"whitelist_ttl": 2592000, "whitelist_purge_interval": 43200}

    ttl: float
    purge_interval: float
    _store: Store | None = None
    _db: TtlDb | None = None

    async def start(self) -> None:
        """Check the settings and open the store database.

        A wrong ``[ttldb]`` configuration refuses the start; an unreachable store is only
        logged (the filter retries on the next message and never blocks mail meanwhile).
        """
        self.ttl = _seconds("whitelist_ttl", self.settings["whitelist_ttl"])
        self.purge_interval = _seconds(
            "whitelist_purge_interval", self.settings["whitelist_purge_interval"]
        )
        try:
            await self._database()
        except StoreConfigError as exc:
            raise FilterLoadError(f"auto_whitelist: [ttldb] {exc}") from exc
        except StoreError as exc:
            self.ctx.log.warning("auto_whitelist: store unavailable at start: %s", exc)

    async def _database(self) -> tuple[Store, TtlDb]:
        if self._store is None or self._db is None:
            store = await self.ctx.services.store()
            self._db = await store.database(
                DATABASE, ttl=self.ttl, purge_interval=self.purge_interval
            )
            self._store = store
        return self._store, self._db

    async def check(self, message: Message, ctx: Context) -> Decision:
        """Record an authenticated message's correspondents, or whitelist a reply."""
        sender = message.sender
        if sender is None:
            ctx.log.warning("auto_whitelist: %s has no envelope sender record", message.msgid)
            return CONTINUE
        addresses = message.addresses
        if message.auth_user:
            await self._record(sender, addresses, ctx)
            return CONTINUE
        if not addresses:
            # No pending recipient means no evidence: never whitelist vacuously.
            return CONTINUE
        if await self._all_known(sender, addresses, ctx):
            return Decision.accept()
        return CONTINUE

    async def _record(self, sender: str, recipients: Iterable[str], ctx: Context) -> None:
        own = sender.lower()
        keys = dict.fromkeys(pair_key(sender, r) for r in recipients if r.lower() != own)
        if not keys:
            return
        try:
            store, db = await self._database()
            now = store.clock()
            # One batched upsert for all recipients; a key keeps the newer timestamp.
            await db.import_entries([Entry(key, now) for key in keys])
        except StoreError as exc:
            ctx.log.warning(
                "auto_whitelist: not recording correspondents of %s: store error: %s",
                sender,
                exc,
            )

    async def _all_known(self, sender: str, recipients: Iterable[str], ctx: Context) -> bool:
        try:
            _, db = await self._database()
            for recipient in recipients:
                if not await db.contains(pair_key(recipient, sender)):
                    return False
        except StoreError as exc:
            ctx.log.warning("auto_whitelist: not whitelisting %s: store error: %s", sender, exc)
            return False
        return True
