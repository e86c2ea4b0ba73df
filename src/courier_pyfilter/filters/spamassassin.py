"""``spamassassin``: scan messages with SpamAssassin's spamd; reject spam, tag the rest.

The successor of the original's ``spamassassin`` module, which ran ``spamc``: this one
speaks spamd's protocol itself (see :mod:`courier_pyfilter.spamd`).  Per message:

1. A message larger than ``max_msg_size`` bytes is not scanned: the filter continues.
2. spamd scans the message (as user ``username`` when set).
3. **Reject** with ``554 Mail rejected - spam detected: <X-Spam-Status>`` when

   * ``reject_score`` is None (or spamd's ``X-Spam-Status`` header is missing): spamd
     says it is spam (its score reached its ``required_score``);
   * ``reject_score`` is set: the ``X-Spam-Status`` value starts with ``Yes,`` and its
     ``score=`` is at least ``reject_score``.

4. Otherwise the message gets spamd's headers and the filter continues.  With
   ``rewrite = 'headers'`` (the default) spamd's ``X-Spam-*`` fields are put on top and
   the message's own ``X-Spam-*`` fields removed (as spamd does); every other byte stays
   the same, so DKIM signatures survive.  ``rewrite = 'message'`` replaces the message
   with spamd's output, as the original did with spamc's (so SpamAssassin's
   ``rewrite_header`` and ``report_safe`` apply); ``rewrite = 'none'`` leaves it alone.

When spamd is down, hangs past ``spamd_timeout`` or answers garbage, the filter returns
its failure action (the ``on_error`` setting; by default ``451 4.3.0 Temporary failure
in mail filtering, try again later``, or ``451 4.3.0 Mail filtering timed out, try again
later`` after a timeout): mail is never let through unscanned by accident.

Settings (section ``[spamassassin.py]``), see ``docs/filters/spamassassin.md``:
``max_msg_size`` (512000), ``username`` (None), ``reject_score`` (None),
``spamd_address`` (``'127.0.0.1:783'``, or a UNIX socket path), ``spamd_timeout`` (30),
``spamd_max_concurrency`` (5), ``rewrite`` (``'headers'``), and the original's
``spamc_path``, accepted and ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from ..api import Context, Filter, Message
from ..chain import INTERNAL_ERROR, TIMED_OUT, failure_action
from ..decision import CONTINUE, Decision
from ..edit import header_name, split_headers
from ..spamd import (
    DEFAULT_ADDRESS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_TIMEOUT,
    SpamdConfig,
    SpamdError,
    SpamdProtocolError,
    SpamdTimeout,
    SpamVerdict,
    build_request,
    spamd_client,
)

__all__ = [
    "REJECT_PREFIX",
    "SpamAssassin",
    "merge_spam_headers",
    "rejection",
    "should_reject",
    "spam_status",
]

REJECT_PREFIX = "Mail rejected - spam detected: "
"""The rejection text before the ``X-Spam-Status`` value (code 554), as the original."""

REWRITE_MODES = ("headers", "message", "none")
_MAX_REPLY_LINE = 500
_SPAM_PREFIX = b"x-spam-"


def _is_spam_field(field: bytes) -> bool:
    name = header_name(field)
    return name is not None and name.startswith(_SPAM_PREFIX)


def spam_status(header_block: bytes) -> str | None:
    """The ``X-Spam-Status`` value of a header block with its line breaks removed.

    As the original: the folded value is joined by deleting CR and LF only (the tab that
    starts each continuation line stays).  None when there is no such header or it is
    empty.
    """
    fields, _ = split_headers(header_block)
    for field in fields:
        if header_name(field) == b"x-spam-status":
            value = field.split(b":", 1)[1]
            text = value.replace(b"\r", b"").replace(b"\n", b"").decode("utf-8", "replace")
            text = text.strip()
            return text or None
    return None


def _status_score(status: str) -> float | None:
    for word in status.split():
        if word.startswith("score="):
            try:
                return float(word[6:])
            except ValueError:
                return None
    return None


def should_reject(is_spam: bool, status: str | None, reject_score: float | None) -> bool:
    """The original's decision.

    Without ``reject_score``, or when spamd gave no ``X-Spam-Status``: reject when spamd
    says spam.  With it: reject when the status starts with ``Yes,`` and its ``score=``
    is at least ``reject_score`` (a status of ``No, ...`` is never rejected).
    """
    if reject_score is None or not status:
        return is_spam
    if not status.startswith("Yes,"):
        return False
    score = _status_score(status)
    return score is not None and score >= reject_score


def rejection(status: str) -> Decision:
    """``554 Mail rejected - spam detected: <status>``.

    A reply longer than an SMTP reply line allows (``X-Spam-Status`` lists every rule
    that hit) is split at white space into a multi-line reply (``554-...`` lines) of at
    most 500 characters each; nothing is dropped but the white space at the breaks.
    """
    text = REJECT_PREFIX + status
    if len(text) <= _MAX_REPLY_LINE:
        return Decision.reject(text, code="554")
    lines: list[str] = []
    current = ""
    parts = re.split(r"(\s+)", text)
    for i in range(0, len(parts), 2):
        word, space = parts[i], parts[i + 1] if i + 1 < len(parts) else ""
        while len(current) + len(word) > _MAX_REPLY_LINE:
            if current:
                if current.strip():
                    lines.append(current.rstrip())
                current = ""
            else:  # one word longer than a line: cut it
                lines.append(word[:_MAX_REPLY_LINE])
                word = word[_MAX_REPLY_LINE:]
        current += word
        if len(current) + len(space) > _MAX_REPLY_LINE:
            lines.append(current.rstrip())
            current = ""
        else:
            current += space
    if current.strip():
        lines.append(current.rstrip())
    return Decision.reject(tuple(lines), code="554")


def merge_spam_headers(original: bytes, spamd_headers: bytes) -> bytes:
    """``original`` with spamd's ``X-Spam-*`` fields on top and its own ones removed.

    ``spamd_headers`` is the header block spamd returned (HEADERS or PROCESS answer).
    The fields are copied byte for byte (CRLF made LF); all other header fields and the
    body of ``original`` keep their bytes and order.  Raises
    :class:`~courier_pyfilter.spamd.SpamdProtocolError` when a field spamd sent
    contains NUL or a bare CR.
    """
    added: list[bytes] = []
    for field in split_headers(spamd_headers)[0]:
        if not _is_spam_field(field):
            continue
        field = field.replace(b"\r\n", b"\n")
        if b"\r" in field or b"\x00" in field:
            raise SpamdProtocolError(f"spamd sent a malformed header field: {field[:80]!r}")
        if not field.endswith(b"\n"):
            field += b"\n"
        added.append(field)
    fields, rest = split_headers(original)
    kept = [f for f in fields if not _is_spam_field(f)]
    return b"".join(added) + b"".join(kept) + rest


def _number_or_none(settings: Mapping[str, Any], key: str) -> float | None:
    value = settings.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{key} must be a number or None, got {value!r}")
    return float(value)


class SpamAssassin(Filter):
    """Rejects spam found by spamd and adds spamd's headers to the rest."""

    defaults = {
        "spamc_path": "/usr/bin/spamc",  # the original's; accepted, not used
        "max_msg_size": 512000,
        "username": None,
        "reject_score": None,
        "spamd_address": DEFAULT_ADDRESS,
        "spamd_timeout": DEFAULT_TIMEOUT,
        "spamd_max_concurrency": DEFAULT_MAX_CONCURRENCY,
        "rewrite": "headers",
        "action": "reject",
    }

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._checked = False
        self.max_msg_size = 512000
        self.username: str | None = None
        self.reject_score: float | None = None
        self.rewrite = "headers"
        self.action = "reject"
        self.on_error: Decision = INTERNAL_ERROR
        self.on_timeout: Decision = TIMED_OUT

    def _configure(self) -> None:
        settings = self.settings
        size = settings.get("max_msg_size", 512000)
        if isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise ValueError(f"max_msg_size must be a non-negative integer, got {size!r}")
        user = settings.get("username")
        if user is not None and (not isinstance(user, str) or not user):
            raise ValueError(f"username must be a non-empty string or None, got {user!r}")
        if user is not None:
            build_request("CHECK", b"", user=user)  # no control characters
        rewrite = settings.get("rewrite", "headers")
        if rewrite not in REWRITE_MODES:
            raise ValueError(f"rewrite must be one of {', '.join(REWRITE_MODES)}: {rewrite!r}")
        SpamdConfig.from_settings(settings)  # validates the spamd_* settings
        action = settings.get("action", "reject")
        if action not in ("reject", "quarantine"):
            raise ValueError(f"action must be 'reject' or 'quarantine', got {action!r}")
        self.action = action
        self.max_msg_size = size
        self.username = user
        self.reject_score = _number_or_none(settings, "reject_score")
        # mode = 'shadow': the chain ignores the decision; do not change the message either
        self.rewrite = "none" if settings.get("mode") == "shadow" else rewrite
        on_error = settings.get("on_error")
        self.on_error = failure_action(on_error, False)
        self.on_timeout = failure_action(on_error, False, default=TIMED_OUT)
        self._checked = True

    async def start(self) -> None:
        """Check the settings (a bad value stops the configuration from loading); with
        ``action = 'quarantine'``, make sure the quarantine can be used."""
        self._configure()
        if self.action == "quarantine":
            from ..quarantine import quarantine_service

            await quarantine_service(self.ctx)

    async def check(self, message: Message, ctx: Context) -> Decision:
        if not self._checked:
            self._configure()
        if message.size > self.max_msg_size:
            ctx.log.debug("%s not scanned: %d bytes", message.msgid, message.size)
            return CONTINUE
        raw = await message.raw()
        if len(raw) > self.max_msg_size:
            return CONTINUE
        try:
            client = await spamd_client(ctx)
            if self.rewrite == "message":
                result = await client.process(raw, user=self.username)
            else:
                result = await client.headers(raw, user=self.username)
            status = spam_status(result.body)
            reject = should_reject(result.verdict.is_spam, status, self.reject_score)
            new: bytes | None = None
            if not reject and self.rewrite == "headers":
                new = merge_spam_headers(raw, result.body)
            elif not reject and self.rewrite == "message":
                new = result.body
        except SpamdError as exc:
            decision = self.on_timeout if isinstance(exc, SpamdTimeout) else self.on_error
            ctx.log.error(
                "spamd scan of %s failed: %s; using the failure action: %s",
                message.msgid,
                exc,
                decision,
            )
            return decision
        verdict = result.verdict
        ctx.log.debug(
            "%s: spam=%s score=%g required=%g",
            message.msgid,
            verdict.is_spam,
            verdict.score,
            verdict.threshold,
        )
        if reject:
            status = status or _synthetic_status(verdict)
            if self.action == "quarantine":
                from ..quarantine import quarantine_message

                # QuarantineError propagates: the failure action applies, never delivery
                return await quarantine_message(
                    message, ctx, f"SpamAssassin found spam in the message: {status}"
                )
            return rejection(status)
        if new is not None:
            await message.edit.replace_message(new)
        return CONTINUE


def _synthetic_status(verdict: SpamVerdict) -> str:
    """A stand-in for a missing ``X-Spam-Status``, built from spamd's ``Spam:`` header."""
    flag = "Yes" if verdict.is_spam else "No"
    return f"{flag}, score={verdict.score:.1f} required={verdict.threshold:.1f}"
