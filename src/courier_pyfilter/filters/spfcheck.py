"""``spfcheck``: refuse mail whose sender's SPF policy says the client may not send it.

The envelope sender's domain is checked with SPF (RFC 7208) for the client address,
through the asynchronous evaluator :mod:`courier_pyfilter.spf` on the shared resolver
(``[dns]``).  As in the original:

* result ``fail`` -> ``517 SPF returns deny`` (the ``reply`` setting);
* any other result (``pass softfail neutral none permerror``) -> the chain continues;
* the null sender ``<>`` is not checked (the chain continues) unless
  ``check_null_sender = True``, which checks ``postmaster@<HELO name>`` (RFC 7208
  section 2.4);
* a control file without a sender record -> ``451 Internal failure locating control
  files``.

Different from the original: ``temperror`` (DNS timeout or failure, or no result within
``spf_timeout``) is a filter failure, so the chain applies the failure action - ``451``
by default, ``on_error`` in the section can change it (``'continue'`` gives the
original's behaviour).  A message without a client address is not checked.

Settings (section ``[spfcheck.py]``):

``reply``
    The reply to a ``fail``, default ``'517 SPF returns deny'``; ``{explanation}`` is
    replaced by the explanation the sender's domain publishes (``exp=``) or the default
    one (made printable ASCII, at most 200 characters).  Must be a 4xx or 5xx reply.
``check_null_sender``
    Check the HELO identity of null-sender messages (default ``False``: not checked).
``use_courier_verdict``
    Use the result of Courier's own SPF check (its ``Received-SPF:`` field, written with
    ``BOFHSPFMAILFROM`` / ``BOFHSPFHELO`` in ``bofh``) instead of checking again
    (default ``False``).
``courier_verdict_missing``
    With ``use_courier_verdict``, what a message without Courier's field gets:
    ``'evaluate'`` (default: check it here) or ``'continue'``.
``spf_timeout``
    Seconds one evaluation may take, all lookups included (default 20, RFC 7208's
    minimum); then the result is ``temperror``.

``whitelist_spf`` shares this code (and one evaluation per message when both run).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ..api import Context, Filter, Message
from ..courier_headers import courier_spf_result
from ..decision import CONTINUE, Decision, ReplyFormatError, Verdict
from ..dns import Query, dns_resolver
from ..spf import (
    DEFAULT_TIMEOUT,
    SpfResult,
    SpfVerdict,
    check_host,
    policy_domain,
    spf_identity,
)
from ._netkey import setting_bool, setting_choice, setting_seconds

__all__ = [
    "FILTER",
    "NO_SENDER",
    "SpfCheck",
    "SpfEvaluations",
    "SpfFilter",
    "SpfSettings",
    "SpfTemporaryError",
    "spf_evaluations",
]

NO_SENDER = "Internal failure locating control files"
"""The original's reply text (with code 451) when the control file has no sender."""
SERVICE_NAME = "spf"
"""The shared :class:`SpfEvaluations` in :class:`~courier_pyfilter.services.Services`."""

COMMON_DEFAULTS: Mapping[str, Any] = {
    "check_null_sender": False,
    "use_courier_verdict": False,
    "courier_verdict_missing": "evaluate",
    "spf_timeout": DEFAULT_TIMEOUT,
}


class SpfTemporaryError(Exception):
    """SPF gave ``temperror``: the chain applies the filter's failure action."""

    log_traceback = False  # the message says what failed


@dataclass(frozen=True, slots=True)
class SpfSettings:
    """The validated settings shared by ``spfcheck`` and ``whitelist_spf``."""

    check_null_sender: bool
    use_courier_verdict: bool
    courier_verdict_missing: str
    spf_timeout: float

    @classmethod
    def from_settings(cls, settings: Mapping[str, Any], section: str) -> SpfSettings:
        """Validate ``settings``; ValueError names the bad key."""
        return cls(
            check_null_sender=setting_bool(settings, "check_null_sender", section),
            use_courier_verdict=setting_bool(settings, "use_courier_verdict", section),
            courier_verdict_missing=setting_choice(
                settings, "courier_verdict_missing", section, ("evaluate", "continue")
            ),
            spf_timeout=setting_seconds(settings, "spf_timeout", section),
        )


# -- one evaluation per message for all SPF filters -------------------------------------------

_Key = tuple[str, str, str, float]


class SpfEvaluations:
    """Shares evaluations among the SPF filters of a configuration.

    The same question (client, sender, HELO name) asked while an evaluation runs, or
    within ``hold`` seconds after it ended, gets that evaluation's verdict, so
    ``whitelist_spf`` and ``spfcheck`` in one chain evaluate a message once.  A
    ``temperror`` is not kept.  An evaluation goes on when the filter that started it
    is cancelled (it is bounded by its own deadline).
    """

    def __init__(self, hold: float = 60.0, limit: int = 10_000) -> None:
        self.hold = hold
        self.limit = limit
        self.evaluations = 0
        """Evaluations started (the others were shared)."""
        self._entries: dict[_Key, tuple[float, asyncio.Task[SpfVerdict]]] = {}

    async def get(self, key: _Key, evaluate: Callable[[], Awaitable[SpfVerdict]]) -> SpfVerdict:
        """The verdict for ``key``, from a running or recent evaluation or a new one."""
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is None or (entry[1].done() and entry[0] <= now):
            self._prune(now)
            self.evaluations += 1
            task = asyncio.ensure_future(evaluate())
            task.add_done_callback(self._settled(key))
            entry = (now + self.hold, task)
            self._entries.pop(key, None)
            self._entries[key] = entry
        return await asyncio.shield(entry[1])

    def _settled(self, key: _Key) -> Callable[[asyncio.Task[SpfVerdict]], None]:
        def done(task: asyncio.Task[SpfVerdict]) -> None:
            failed = task.cancelled() or task.exception() is not None
            if failed or task.result().result is SpfResult.TEMPERROR:
                entry = self._entries.get(key)
                if entry is not None and entry[1] is task:
                    del self._entries[key]
            else:
                # re-inserted at the end: the dict stays ordered by expiry time
                self._entries.pop(key, None)
                self._entries[key] = (time.monotonic() + self.hold, task)

        return done

    def _prune(self, now: float) -> None:
        """Drop expired verdicts from the oldest end, then the oldest beyond ``limit``.

        Entries are kept in expiry order (every update re-inserts at the end), so this
        costs only the entries it removes: a scan of the whole table per message would
        make a busy server spend most of its time here.
        """
        entries = self._entries
        while entries:
            key = next(iter(entries))
            until, task = entries[key]
            if not task.done() or until > now:
                break
            del entries[key]
        while len(entries) >= self.limit:
            del entries[next(iter(entries))]

    async def close(self) -> None:
        """Cancel running evaluations."""
        for _, task in self._entries.values():
            task.cancel()
        self._entries.clear()


async def spf_evaluations(ctx: Context) -> SpfEvaluations:
    """The configuration's shared :class:`SpfEvaluations`."""

    async def factory() -> SpfEvaluations:
        return SpfEvaluations()

    async def close(evaluations: SpfEvaluations) -> None:
        await evaluations.close()

    return await ctx.services.get(SERVICE_NAME, factory, close)


async def evaluate_spf(
    ctx: Context,
    ip: Any,
    sender: str,
    helo: str,
    receiver: str,
    timeout: float = DEFAULT_TIMEOUT,
) -> SpfVerdict:
    """The RFC 7208 verdict for (client, sender, HELO), evaluated on the shared resolver
    and shared with every filter of the configuration that asks the same question
    (``spfcheck``, ``whitelist_spf``, ``greylist``'s exemption)."""
    resolver = await dns_resolver(ctx)
    evaluations = await spf_evaluations(ctx)

    def evaluate() -> Awaitable[SpfVerdict]:
        return check_host(ip, sender, helo, resolver, receiver=receiver, timeout=timeout)

    return await evaluations.get((str(ip), sender, helo, timeout), evaluate)


# -- the shared filter code -------------------------------------------------------------------


class SpfFilter(Filter):
    """What ``spfcheck`` and ``whitelist_spf`` share: which identity to check, Courier's
    verdict or an evaluation of our own, and the ``dns_queries`` prefetch hook."""

    section = "spf"
    _cfg: SpfSettings | None = None
    receiver = "unknown"

    @property
    def config(self) -> SpfSettings:
        """The validated settings."""
        if self._cfg is None:
            self._cfg = SpfSettings.from_settings(self.settings, self.section)
        return self._cfg

    async def start(self) -> None:
        """Validate the settings and get the resolver: a problem stops the loading."""
        cfg = self.config
        try:
            self.receiver = self.ctx.services.courier.me() or "unknown"
        except OSError:
            self.receiver = "unknown"
        if not cfg.use_courier_verdict or cfg.courier_verdict_missing == "evaluate":
            await dns_resolver(self.ctx)

    def _identity(self, message: Message) -> tuple[str, str] | None:
        """``(sender, helo)`` to check, or None when the message is not checked."""
        sender = message.sender
        if sender is None or message.client_ip is None:
            return None
        if sender == "" and not self.config.check_null_sender:
            return None
        return sender, message.helo or ""

    def dns_queries(self, message: Message, ctx: Context) -> list[Query]:
        """The SPF record lookup :meth:`verdict` will start with, for prefetching."""
        identity = self._identity(message)
        if identity is None or self.config.use_courier_verdict:
            return []
        domain = policy_domain(spf_identity(*identity)[3])
        return [] if domain is None else [(domain, "TXT")]

    async def verdict(self, message: Message, ctx: Context) -> SpfVerdict | None:
        """The SPF verdict for the message, or None when it is not checked."""
        identity = self._identity(message)
        if identity is None:
            if message.client_ip is None and message.sender is not None:
                ctx.log.debug("%s: %s has no client address, not checked", ctx.name, message.msgid)
            return None
        sender, helo = identity
        cfg = self.config
        if cfg.use_courier_verdict:
            courier = await self._courier_verdict(message, sender, helo)
            if courier is not None:
                return courier
            if cfg.courier_verdict_missing == "continue":
                ctx.log.debug("%s: %s has no Received-SPF from Courier", ctx.name, message.msgid)
                return None
        ip = message.client_ip
        assert ip is not None
        return await evaluate_spf(ctx, ip, sender, helo, self.receiver, cfg.spf_timeout)

    @staticmethod
    async def _courier_verdict(message: Message, sender: str, helo: str) -> SpfVerdict | None:
        name = "HELO" if sender == "" else "MAILFROM"
        headers = await message.headers()
        result = courier_spf_result(headers.raw_items(), name)
        if result is None:
            return None
        identity, checked, _, domain = spf_identity(sender, helo)
        return SpfVerdict(
            SpfResult(result),
            reason=f"Courier's Received-SPF (SPF={name})",
            domain=domain,
            sender=checked,
            identity=identity,
        )

    def log_verdict(self, message: Message, ctx: Context, verdict: SpfVerdict) -> None:
        """One log line: info for the results that decide, debug for the others."""
        ctx.log.log(
            logging.INFO if verdict.result in (SpfResult.FAIL, SpfResult.PASS) else logging.DEBUG,
            "%s: %s: SPF %s for %s from %s (%s)",
            ctx.name,
            message.msgid,
            verdict.result,
            verdict.sender,
            message.client_ip,
            verdict.reason,
        )

    @staticmethod
    def temporary_error(verdict: SpfVerdict) -> SpfTemporaryError:
        """The exception for a ``temperror`` verdict."""
        return SpfTemporaryError(f"SPF temperror for {verdict.sender}: {verdict.reason}")


# -- spfcheck ---------------------------------------------------------------------------------


def _printable(text: str, limit: int = 200) -> str:
    clean = "".join(c if " " <= c <= "~" else "?" for c in text).strip()
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


def fail_reply(template: str, explanation: str) -> Decision:
    """The decision for a ``fail``: ``template`` with ``{explanation}`` filled in.

    Raises :class:`ValueError` unless it is a 4xx or 5xx reply.
    """
    try:
        decision = Decision.from_reply(template.replace("{explanation}", _printable(explanation)))
    except ReplyFormatError as exc:
        raise ValueError(f"[spfcheck.py] reply: {exc}") from None
    if decision.verdict not in (Verdict.REJECT, Verdict.TEMPFAIL):
        raise ValueError(f"[spfcheck.py] reply must be a 4xx or 5xx reply, not {template!r}")
    return decision


class SpfCheck(SpfFilter):
    """Rejects messages whose sender's SPF policy fails the client."""

    section = "spfcheck.py"
    defaults = {**COMMON_DEFAULTS, "reply": "517 SPF returns deny"}

    async def start(self) -> None:
        reply = self.settings["reply"]
        if not isinstance(reply, str):
            raise ValueError(f"[spfcheck.py] reply must be a string, not {reply!r}")
        fail_reply(reply, "x")
        await super().start()

    async def check(self, message: Message, ctx: Context) -> Decision:
        if message.sender is None:
            ctx.log.error("%s: %s has no sender record; tempfailing", ctx.name, message.msgid)
            return Decision.tempfail(NO_SENDER)
        verdict = await self.verdict(message, ctx)
        if verdict is None:
            return CONTINUE
        self.log_verdict(message, ctx, verdict)
        if verdict.result is SpfResult.FAIL:
            return fail_reply(ctx.settings["reply"], verdict.explanation)
        if verdict.result is SpfResult.TEMPERROR:
            raise self.temporary_error(verdict)
        return CONTINUE


FILTER = SpfCheck
