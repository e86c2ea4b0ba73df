"""``recipient_limit``: refuse messages addressed to too many recipients.

Spam sent through a stolen account or an open form often goes to hundreds of addresses
in one message, while real mail rarely does.  This filter counts the recipients Courier
still has to deliver to (over all control files of the message) and refuses the message
when there are more than allowed.  Authenticated users get a limit of their own, and
some envelope senders (mailing-list software, for example) can be exempted.

Settings, in the ``[recipient_limit.py]`` section of ``pythonfilter-modules.conf``:

``limit`` (default ``50``)
    Most recipients for mail from clients that did not authenticate.
``auth_limit`` (default ``500``)
    Most recipients for mail from an authenticated user; ``None`` for no limit.
``exempt_senders`` (default ``[]``)
    Envelope senders never limited (compared case-insensitively).
``action`` (default ``'reject'``)
    ``'reject'`` answers ``550 5.5.3``; ``'tempfail'`` answers ``452 4.5.3`` so that the
    client keeps the message and may retry, e.g. while the limit is being tuned.

Bad settings are reported when the chain starts, so the server refuses to start (or to
reload) with them instead of filtering wrongly.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any, ClassVar

from courier_pyfilter.api import Context, Filter, Message
from courier_pyfilter.decision import CONTINUE, Decision

__all__ = ["RecipientLimit", "RecipientLimitConfigError"]

ACTIONS = ("reject", "tempfail")


class RecipientLimitConfigError(ValueError):
    """A ``[recipient_limit.py]`` setting has a wrong type or value."""


def _positive(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise RecipientLimitConfigError(f"{name} must be a positive whole number, not {value!r}")
    return value


def _senders(value: Any) -> frozenset[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise RecipientLimitConfigError(f"exempt_senders must be a list of addresses: {value!r}")
    items = list(value)
    if not all(isinstance(item, str) for item in items):
        raise RecipientLimitConfigError(f"exempt_senders must hold strings only: {value!r}")
    return frozenset(item.lower() for item in items)


class RecipientLimit(Filter):
    """Refuses a message with more recipients than its sender may address at once."""

    defaults: ClassVar[dict[str, Any]] = {
        "limit": 50,
        "auth_limit": 500,
        "exempt_senders": (),
        "action": "reject",
    }

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self.limit = 50
        self.auth_limit: int | None = 500
        self.exempt: frozenset[str] = frozenset()
        self.action = "reject"

    async def start(self) -> None:
        """Check the settings once, before the first message."""
        settings = self.settings
        self.limit = _positive("limit", settings["limit"])
        auth_limit = settings["auth_limit"]
        self.auth_limit = None if auth_limit is None else _positive("auth_limit", auth_limit)
        self.exempt = _senders(settings["exempt_senders"])
        action = settings["action"]
        if action not in ACTIONS:
            raise RecipientLimitConfigError(f"action must be one of {ACTIONS}, not {action!r}")
        self.action = action

    def allowed(self, message: Message) -> int | None:
        """The most recipients ``message``'s sender may have; ``None`` for no limit."""
        if (message.sender or "").lower() in self.exempt:
            return None
        if message.auth_user is not None:
            return self.auth_limit
        return self.limit

    async def check(self, message: Message, ctx: Context) -> Decision:
        """Count the recipients still to be delivered and judge the message."""
        allowed = self.allowed(message)
        count = len(message.recipients)
        if allowed is None or count <= allowed:
            return CONTINUE
        who = f"user {message.auth_user}" if message.auth_user is not None else "client"
        ctx.log.info(
            "%s: %d recipients from %s <%s>, at most %d allowed",
            message.msgid or "-",
            count,
            who,
            message.sender,
            allowed,
        )
        text = f"Too many recipients ({count}, at most {allowed} allowed)"
        if self.action == "tempfail":
            return Decision.tempfail(f"4.5.3 {text}", code="452")
        return Decision.reject(f"5.5.3 {text}", code="550")
