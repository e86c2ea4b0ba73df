"""``attachments``: refuse messages carrying files with forbidden names.

Every MIME part's ``filename`` (``Content-Disposition``) and ``name`` (``Content-Type``)
parameter is tested, RFC 2231 and RFC 2047 decoded, nested ``message/rfc822`` parts
included, and so are the member names of attached archives (zip, tar, tar.gz/bz2/xz,
the original name in a gzip header, archives nested in archives).  A name matching
``blocked_pattern`` (case-insensitive, ``re.match``) is answered with the original's
``554 The extension of the attached file is blacklisted``.  A message whose MIME
structure cannot be read is refused with ``554 <reason>``.

Settings (section ``[attachments.py]``), see ``docs/filters/attachments.md``:

``blocked_pattern``
    The original's regular expression (default: ``.scr``, ``.exe``, ``.com``, ... at the
    end of the name).
``max_size``
    Messages larger than this many bytes get only their part names tested; their
    archives are not opened (default 32 MiB).
``max_parts``
    More MIME parts than this make the message unparseable (default 10000).
``archive_max_depth``, ``archive_max_members``, ``archive_max_bytes``
    Nesting levels opened (default 4; 0 disables archive inspection), member names read
    and bytes decompressed per message (defaults 10000 and 64 MiB).
``reject_unreadable_archives``
    False (default): an archive that cannot be fully inspected (encrypted, damaged,
    unsupported format, over a limit) is logged and its readable names tested.  True:
    such a message is refused with ``554 An attached archive could not be inspected``.

The message is parsed once per chain (:meth:`Message.email`, in a worker thread for
large messages); the walk over its parts and the archive listing run in a worker thread
(:mod:`courier_pyfilter.mime_names` does the work), which stops at its next step when the
filter is cancelled (its timeout).
"""

from __future__ import annotations

import asyncio
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from email.message import Message as EmailPart
from typing import Any

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision
from ..message import MessageError
from ..mime_names import FoundName, Limits, Problem, UnparseableMessage, iter_message_names

__all__ = [
    "BLOCKED_REPLY",
    "DEFAULT_PATTERN",
    "UNREADABLE_REPLY",
    "Attachments",
    "unparseable_reply",
]

DEFAULT_PATTERN = r"^.*\.(scr|exe|com|bat|pif|lnk|sys|mid|vb|js|ws|shs|ceo|cmd|cpl|hta|vbs)$"
"""The original's ``blocked_pattern``."""

BLOCKED_REPLY = "The extension of the attached file is blacklisted"
"""Text of the ``554`` reply for a blocked name (the original's, unchanged)."""

UNREADABLE_REPLY = "An attached archive could not be inspected"
"""Text of the ``554`` reply with ``reject_unreadable_archives = True``."""

_REPLY_MAX = 200
_LOG_PROBLEMS = 10
"""At most this many archive problems are logged per message."""


def unparseable_reply(exc: BaseException) -> str:
    """The text of the ``554`` reply for a message that cannot be parsed.

    Like the original it is the exception's text, made safe for an SMTP reply: one line
    of printable ASCII (other characters become ``?``), at most 200 characters; the
    exception's class name when the text is empty.
    """
    text = " ".join(str(exc).split())
    text = "".join(ch if " " <= ch <= "~" else "?" for ch in text)
    if len(text) > _REPLY_MAX:
        text = text[: _REPLY_MAX - 3] + "..."
    return text or type(exc).__name__


@dataclass(slots=True)
class _Outcome:
    blocked: FoundName | None = None
    problems: list[Problem] = field(default_factory=list)


def _scan(
    msg: EmailPart,
    pattern: re.Pattern[str],
    limits: Limits,
    inspect_archives: bool,
    should_stop: Callable[[], bool],
) -> _Outcome:
    """Worker-thread body: test every name until one matches."""
    outcome = _Outcome()
    names = iter_message_names(
        msg,
        problems=outcome.problems,
        limits=limits,
        inspect_archives=inspect_archives,
        should_stop=should_stop,
    )
    for found in names:
        if pattern.match(found.name):
            outcome.blocked = found
            break
    return outcome


def _int_setting(settings: Mapping[str, Any], key: str) -> int:
    value = settings[key]
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"[attachments.py] {key} must be a non-negative integer, got {value!r}")
    return value


class Attachments(Filter):
    """Refuses attachments (and archive members) whose names match ``blocked_pattern``."""

    defaults = {
        "blocked_pattern": DEFAULT_PATTERN,
        "max_size": 32 * 1024 * 1024,
        "max_parts": 10_000,
        "archive_max_depth": 4,
        "archive_max_members": 10_000,
        "archive_max_bytes": 64 * 1024 * 1024,
        "reject_unreadable_archives": False,
    }

    pattern: re.Pattern[str]
    limits: Limits
    max_size: int
    reject_unreadable: bool

    async def start(self) -> None:
        settings = self.settings
        source = settings["blocked_pattern"]
        if not isinstance(source, str):
            raise ValueError(f"[attachments.py] blocked_pattern must be a string, got {source!r}")
        try:
            self.pattern = re.compile(source, re.IGNORECASE)
        except re.error as exc:
            raise ValueError(f"[attachments.py] blocked_pattern is not valid: {exc}") from exc
        self.max_size = _int_setting(settings, "max_size")
        self.limits = Limits(
            max_depth=_int_setting(settings, "archive_max_depth"),
            max_members=_int_setting(settings, "archive_max_members"),
            max_bytes=_int_setting(settings, "archive_max_bytes"),
            max_parts=_int_setting(settings, "max_parts"),
        )
        reject = settings["reject_unreadable_archives"]
        if not isinstance(reject, bool):
            raise ValueError(
                f"[attachments.py] reject_unreadable_archives must be True or False, got {reject!r}"
            )
        self.reject_unreadable = reject

    async def check(self, message: Message, ctx: Context) -> Decision:
        msgid = message.msgid or "-"
        await message.raw()  # a read error is a failure (451), not a verdict on the mail
        try:
            parsed = await message.email()
        except MessageError as exc:  # the data was read: the email package failed
            cause = exc.__cause__ or exc
            ctx.log.info("message %s cannot be parsed: %s", msgid, cause)
            return Decision.reject(unparseable_reply(cause))
        inspect = message.size <= self.max_size
        if not inspect:
            ctx.log.info(
                "message %s is larger than max_size (%d bytes): archives are not opened",
                msgid,
                self.max_size,
            )
        stop = threading.Event()
        try:
            outcome = await asyncio.to_thread(
                _scan, parsed, self.pattern, self.limits, inspect, stop.is_set
            )
        except UnparseableMessage as exc:
            ctx.log.info("message %s cannot be parsed: %s", msgid, exc)
            return Decision.reject(unparseable_reply(exc))
        finally:
            stop.set()  # on cancellation the thread stops at its next step
        for problem in outcome.problems[:_LOG_PROBLEMS]:
            ctx.log.info("message %s: %s", msgid, problem.describe())
        if len(outcome.problems) > _LOG_PROBLEMS:
            ctx.log.info(
                "message %s: %d more archive problems not logged",
                msgid,
                len(outcome.problems) - _LOG_PROBLEMS,
            )
        if outcome.blocked is not None:
            ctx.log.info(
                "message %s: blocked attachment name %s (%s)",
                msgid,
                outcome.blocked.describe(),
                outcome.blocked.source,
            )
            return Decision.reject(BLOCKED_REPLY)
        if outcome.problems and self.reject_unreadable:
            ctx.log.info(
                "message %s refused: %d archive(s) could not be inspected",
                msgid,
                len(outcome.problems),
            )
            return Decision.reject(UNREADABLE_REPLY)
        return CONTINUE


FILTER = Attachments
