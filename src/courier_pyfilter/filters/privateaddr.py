"""``privateaddr``: only listed senders may write to certain addresses.

``private_rcpts`` maps a private recipient address to a list of regular expressions.  A
message to a private address is refused unless its envelope sender matches at least one
of that address's expressions::

    517 Sender is not allowed by privacy settings.

and the line ``Message to <recipient> from <sender> refused by privateaddr.py`` is
logged.  Expressions are matched with :func:`re.match`: anchored at the start only, and
case-sensitive (write ``(?i)`` for case-insensitive, ``$`` to anchor the end).  The null
sender is the empty string and is matched like any other sender.

Which address of a recipient is checked: its original address (the ``R`` record without
``rfc822;``, i.e. the address before alias expansion or the client's ORCPT) if it has
one, else the address Courier delivers to (``r``) -- as in the original.  With
``check_final_address`` (the default) the delivery address is checked as well, so a
client cannot slip past the rule by giving a different ORCPT, and mail reaching a
private address through an alias needs an allowed sender too.

Addresses are compared with the domain in lower case; when Courier's ``locallowercase``
file exists the whole address is lower-cased (keys too).

Settings (section ``[privateaddr.py]``):

``private_rcpts``
    dict: address -> list of sender regular expressions (a single string counts as a
    one-element list).  The default is the original's example: nine
    ``...@ee.washington.edu`` addresses, each with ``['[^@]*@.*washington.edu']``.
    Every expression is compiled at start; an invalid one refuses the configuration.
``check_final_address`` (True)
    Also check the delivery address when the original address differs.  ``False``
    checks only the original address, exactly like courier-pythonfilter.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision
from ..loader import FilterLoadError
from ..message import MessageError

__all__ = ["DEFAULT_PRIVATE_RCPTS", "REFUSAL_TEXT", "PrivateAddr"]

DEFAULT_PRIVATE_RCPTS: dict[str, list[str]] = {
    f"{name}@ee.washington.edu": [r"[^@]*@.*washington.edu"]
    for name in (
        "help",
        "webmaster",
        "msdn",
        "researchhelp",
        "desktophelp",
        "securityhelp",
        "gnlhelp",
        "memshelp",
        "compstudenthelp",
    )
}
"""The original's built-in ``private_rcpts`` (an example from the University of Washington)."""

REFUSAL_TEXT = "Sender is not allowed by privacy settings."
"""Text of the refusal (code 517)."""

_SECTION = "[privateaddr.py]"
_Rules = dict[str, list[re.Pattern[str]]]


def _domain_lower(address: str) -> str:
    local, at, domain = address.rpartition("@")
    return f"{local}@{domain.lower()}" if at else address


def _original(recipient_original: str, address: str) -> str:
    """The address the original checks: ``R`` without ``rfc822;`` if set, else ``r``."""
    if not recipient_original:
        return address
    if recipient_original[:7].lower() == "rfc822;":
        return recipient_original[7:]
    return recipient_original


def compile_rules(private_rcpts: Any) -> dict[str, list[re.Pattern[str]]]:
    """Check and compile ``private_rcpts``; raise FilterLoadError with a clear message."""
    if not isinstance(private_rcpts, Mapping):
        raise FilterLoadError(
            f"{_SECTION} private_rcpts must be a dict of address -> list of regular "
            f"expressions, got {type(private_rcpts).__name__}"
        )
    rules: dict[str, list[re.Pattern[str]]] = {}
    for address, patterns in private_rcpts.items():
        if not isinstance(address, str) or not address:
            raise FilterLoadError(f"{_SECTION} private_rcpts: bad address {address!r}")
        items: Sequence[Any] = [patterns] if isinstance(patterns, str) else patterns
        if not isinstance(items, list | tuple):
            raise FilterLoadError(
                f"{_SECTION} private_rcpts[{address!r}] must be a list of regular "
                f"expressions, got {patterns!r}"
            )
        compiled = []
        for pattern in items:
            if not isinstance(pattern, str):
                raise FilterLoadError(
                    f"{_SECTION} private_rcpts[{address!r}]: {pattern!r} is not a string"
                )
            try:
                compiled.append(re.compile(pattern))
            except re.error as exc:
                raise FilterLoadError(
                    f"{_SECTION} private_rcpts[{address!r}]: invalid regular expression "
                    f"{pattern!r}: {exc}"
                ) from exc
        rules[address] = compiled
    return rules


def _index(rules: _Rules, fold: bool) -> _Rules:
    """Rules keyed by the normalised address (keys that collide share their patterns)."""
    index: _Rules = {}
    for address, patterns in rules.items():
        key = address.lower() if fold else _domain_lower(address)
        index.setdefault(key, []).extend(patterns)
    return index


class PrivateAddr(Filter):
    """Refuses mail to private addresses from senders that are not allowed."""

    defaults = {"private_rcpts": DEFAULT_PRIVATE_RCPTS, "check_final_address": True}

    _by_address: _Rules
    _by_folded: _Rules
    check_final: bool

    async def start(self) -> None:
        """Compile every expression (an invalid one refuses the configuration)."""
        rules = compile_rules(self.settings["private_rcpts"])
        self._by_address = _index(rules, fold=False)
        self._by_folded = _index(rules, fold=True)
        check_final = self.settings["check_final_address"]
        if not isinstance(check_final, bool):
            raise FilterLoadError(
                f"{_SECTION} check_final_address must be True or False, got {check_final!r}"
            )
        self.check_final = check_final

    async def check(self, message: Message, ctx: Context) -> Decision:
        """Refuse with 517 when a private recipient's sender is not allowed."""
        if not self._by_address:
            return CONTINUE
        fold = ctx.services.courier.locallowercase()
        rules = self._by_folded if fold else self._by_address
        for recipient in message.recipients:
            candidates = [_original(recipient.original, recipient.address)]
            if self.check_final and recipient.address != candidates[0]:
                candidates.append(recipient.address)
            for address in candidates:
                if fold:
                    address = address.lower()
                patterns = rules.get(address if fold else _domain_lower(address))
                if patterns is None:
                    continue
                sender = message.sender
                if sender is None:
                    raise MessageError("the control file has no envelope sender record")
                if not any(p.match(sender) for p in patterns):
                    ctx.log.info("Message to %s from %s refused by privateaddr.py", address, sender)
                    return Decision.reject(REFUSAL_TEXT, code="517")
        return CONTINUE
