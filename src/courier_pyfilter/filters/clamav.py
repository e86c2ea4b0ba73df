"""``clamav``: scan messages for viruses with clamd.

The whole message (or, with ``scan_parts = True``, each MIME part's decoded content) is
streamed to clamd with ``INSTREAM`` through the shared client of
:mod:`courier_pyfilter.clamd`; clamd needs no access to Courier's spool.

Replies, as in courier-pythonfilter:

* a virus, ``action = 'reject'`` (default): ``554 Virus found - Signature is <name>``;
* a virus, any other ``action``: the message is quarantined with the explanation
  ``The virus <name> was found in the message`` and the reply is ``050 OK``;
* clamd failed (down, reset, timed out, garbage, ``ERROR``): the filter's failure
  action; by default ``451 4.3.0 Virus scanner error: <reason>`` (the original answered
  the non-standard ``430``; ``on_error = '430 Virus scanner error'`` restores that);
* larger than ``max_msg_size``: the ``oversize`` policy (default: pass unscanned, logged).

Settings (section ``[clamav.py]``), see ``docs/filters/clamav.md``: ``local_socket``,
``action`` (the original's), ``clamd_address``, ``scan_parts``, ``max_msg_size``,
``oversize``, ``clamd_timeout``, ``clamd_max_concurrency``, ``clamd_connect_timeout``,
``clamd_tcp_client``.
"""

from __future__ import annotations

import asyncio
import importlib
import time
from typing import TYPE_CHECKING, Any, Protocol

from ..api import Context, Filter, Message
from ..chain import failure_action
from ..clamd import (
    DEFAULT_CONNECT_TIMEOUT,
    DEFAULT_LOCAL_SOCKET,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_SIZE,
    DEFAULT_TIMEOUT,
    ClamdClient,
    ClamdConfig,
    ClamdConfigError,
    ClamdError,
    ClamdTimeoutError,
    ScanResult,
    ScanStatus,
    clamd_client,
)
from ..decision import CONTINUE, Decision

if TYPE_CHECKING:
    from email.message import EmailMessage

__all__ = [
    "QUARANTINE_MODULE",
    "ClamAV",
    "Quarantine",
    "QuarantineUnavailableError",
    "find_quarantine",
    "leaf_parts",
]

QUARANTINE_MODULE = "courier_pyfilter.quarantine"
"""The module that provides ``async def quarantine_service(ctx) -> Quarantine``."""

OVERSIZE_POLICIES = ("continue", "accept", "tempfail", "reject")

TIMEOUT_SHARE = 0.9
"""A scan gives up at this share of the filter's ``timeout`` at the latest, so that the
answer is the scanner-error reply (and a log line saying why), not the chain's generic
timeout."""


class Quarantine(Protocol):
    """What the filter needs from the quarantine subsystem."""

    async def quarantine(self, message: Message, explanation: str) -> object:
        """Store the message, deliver it to nobody, notify as configured.

        Must raise when the message could not be quarantined.
        """
        ...


class QuarantineUnavailableError(RuntimeError):
    """``action`` asks for quarantine, but no quarantine subsystem is available."""


async def find_quarantine(ctx: Context) -> Quarantine:
    """The quarantine service: ``quarantine_service(ctx)`` of :data:`QUARANTINE_MODULE`,
    else a client installed as ``"quarantine"`` in ``ctx.services`` (tests, plugins).

    Raises :class:`QuarantineUnavailableError` when there is neither.
    """
    try:
        module: Any = importlib.import_module(QUARANTINE_MODULE)
    except ModuleNotFoundError as exc:
        if exc.name != QUARANTINE_MODULE:
            raise
        module = None
    provider = getattr(module, "quarantine_service", None)
    if provider is not None:
        service = await provider(ctx)
    else:

        async def missing() -> Quarantine:
            raise QuarantineUnavailableError(
                f"[{ctx.name}.py] action {ctx.settings.get('action')!r} quarantines infected "
                f"messages, which needs the quarantine module ({QUARANTINE_MODULE}); this "
                "installation has none: set action = 'reject'"
            )

        service = await ctx.services.get("quarantine", missing)
    if not callable(getattr(service, "quarantine", None)):
        raise QuarantineUnavailableError(f"{service!r} has no quarantine() method")
    return service  # type: ignore[no-any-return]


def leaf_parts(msg: EmailMessage) -> list[tuple[str, bytes]]:
    """``(label, decoded content)`` of every non-empty leaf MIME part, in order.

    Parts of attached messages (``message/rfc822``) are included; containers are not.
    The label (``part 3 (invoice.zip)`` or ``part 1 (text/plain)``) is for log lines.
    """
    parts: list[tuple[str, bytes]] = []
    for index, part in enumerate(msg.walk()):
        if part.is_multipart():
            continue
        payload = part.get_payload(decode=True)
        if not isinstance(payload, bytes) or not payload:
            continue
        try:
            name = part.get_filename() or part.get_content_type()
        except Exception:  # a header too broken even for the tolerant policy
            name = "unnamed"
        parts.append((f"part {index} ({name})", payload))
    return parts


def _signature_text(signature: str | None) -> str:
    return signature or "unknown"


class ClamAV(Filter):
    """Scans messages with clamd; rejects or quarantines infected ones."""

    defaults = {
        "local_socket": DEFAULT_LOCAL_SOCKET,
        "action": "reject",
        "clamd_address": None,
        "scan_parts": False,
        "max_msg_size": DEFAULT_MAX_SIZE,
        "oversize": "continue",
        "clamd_timeout": DEFAULT_TIMEOUT,
        "clamd_max_concurrency": DEFAULT_MAX_CONCURRENCY,
        "clamd_connect_timeout": DEFAULT_CONNECT_TIMEOUT,
        "clamd_tcp_client": "builtin",
    }

    config: ClamdConfig
    """This entry's clamd settings (the shared client may have been made by another)."""
    client: ClamdClient
    quarantine: Quarantine | None = None
    timeout: float
    on_failure: Decision | None = None

    async def start(self) -> None:
        """Check the settings, get the shared clamd client and (for quarantine) the
        quarantine service; warn when clamd does not answer yet."""
        ctx = self.ctx
        settings = ctx.settings
        prefix = f"[{ctx.name}.py]"
        action = settings.get("action", "reject")
        if not isinstance(action, str):
            raise ClamdConfigError(f"{prefix} action must be 'reject' or 'quarantine'")
        oversize = settings.get("oversize", "continue")
        if oversize not in OVERSIZE_POLICIES:
            raise ClamdConfigError(
                f"{prefix} oversize must be 'continue', 'tempfail' or 'reject', not {oversize!r}"
            )
        if not isinstance(settings.get("scan_parts", False), bool):
            raise ClamdConfigError(f"{prefix} scan_parts must be True or False")
        try:
            self.config = ClamdConfig.from_settings(settings)
            self.client = await clamd_client(ctx)
        except ClamdConfigError as exc:
            raise ClamdConfigError(f"{prefix} {exc}") from exc

        chain_timeout = settings.get("timeout") or ctx.services.settings.filter_timeout
        self.timeout = min(self.config.timeout, TIMEOUT_SHARE * chain_timeout)
        on_error = settings.get("on_error")
        if on_error is not None and on_error != "tempfail":
            self.on_failure = failure_action(on_error, False)

        if action != "reject":
            if action != "quarantine":
                ctx.log.warning(
                    "%s action %r is not 'reject': infected messages are quarantined",
                    prefix,
                    action,
                )
            self.quarantine = await find_quarantine(ctx)
        try:
            await self.client.ping(timeout=self.config.connect_timeout)
        except ClamdError as exc:
            ctx.log.warning(
                "clamd does not answer yet (%s); until it does, messages get the failure action %s",
                exc,
                self._failure(exc),  # "(continue)" with on_error = 'continue'
            )

    async def check(self, message: Message, ctx: Context) -> Decision:
        """Scan ``message``; see the module documentation for the replies."""
        try:
            if ctx.settings.get("scan_parts", False):
                result, where = await self._scan_parts(message)
            else:
                result, where = await self._scan_whole(message), "message"
        except ClamdError as exc:
            ctx.log.warning("cannot scan %s: %s", message.msgid or message.data_path, exc)
            return self._failure(exc)
        if result.status is ScanStatus.INFECTED:
            return await self._infected(message, ctx, _signature_text(result.signature), where)
        if result.status is ScanStatus.OVERSIZE:
            return self._oversize(message, ctx, result, where)
        return CONTINUE

    # -- scanning -----------------------------------------------------------------------

    async def _scan_whole(self, message: Message) -> ScanResult:
        limit = self.config.max_size
        if message.dry_run:
            # edits of earlier filters live in memory only: scan what they see
            raw = await message.raw()
            return await self.client.scan(raw, max_size=limit, timeout=self.timeout)
        return await self.client.scan(
            message.data_path, size=message.size, max_size=limit, timeout=self.timeout
        )

    async def _scan_parts(self, message: Message) -> tuple[ScanResult, str]:
        deadline = time.monotonic() + self.timeout
        msg = await message.email()
        parts = await asyncio.to_thread(leaf_parts, msg)
        oversize: tuple[ScanResult, str] | None = None
        for label, content in parts:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ClamdTimeoutError(
                    f"scanning the parts did not finish within {self.timeout:g} s "
                    f"(stopped before {label})"
                )
            result = await self.client.scan(
                content, max_size=self.config.max_size, timeout=remaining
            )
            if result.status is ScanStatus.INFECTED:
                return result, label
            if result.status is ScanStatus.OVERSIZE and oversize is None:
                oversize = (result, label)
        return oversize or (ScanResult(ScanStatus.CLEAN), "message")

    # -- outcomes -----------------------------------------------------------------------

    def _failure(self, exc: ClamdError) -> Decision:
        if self.on_failure is not None:
            return self.on_failure
        return Decision.tempfail(f"4.3.0 Virus scanner error: {exc.reason}")

    async def _infected(
        self, message: Message, ctx: Context, signature: str, where: str
    ) -> Decision:
        msgid = message.msgid or message.data_path
        if self.quarantine is None:
            ctx.log.info("virus %s found in %s of %s: rejected", signature, where, msgid)
            return Decision.reject(f"Virus found - Signature is {signature}", code="554")
        if ctx.dry_run:
            ctx.log.info("virus %s found in %s of %s: would quarantine", signature, where, msgid)
            return Decision.accept_skip_courier()
        try:
            await self.quarantine.quarantine(
                message, f"The virus {signature} was found in the message"
            )
        except Exception as exc:
            # Never let the virus through, whatever on_error says about scanner failures.
            ctx.log.error(
                "virus %s found in %s, but quarantining it failed: %r", signature, msgid, exc
            )
            return Decision.tempfail("4.3.0 Virus quarantine failed, try again later")
        ctx.log.info("virus %s found in %s of %s: quarantined", signature, where, msgid)
        return Decision.accept_skip_courier()

    def _oversize(self, message: Message, ctx: Context, result: ScanResult, where: str) -> Decision:
        policy = ctx.settings.get("oversize", "continue")
        limit = self.config.max_size
        msgid = message.msgid or message.data_path
        if result.by_clamd:
            ctx.log.warning(
                "clamd refused %s of %s: larger than its StreamMaxLength, which is below "
                "max_msg_size (%d); lower max_msg_size to clamd's StreamMaxLength",
                where,
                msgid,
                limit,
            )
        size = result.size if where != "message" else message.size
        if policy == "reject":
            ctx.log.info("%s of %s (%s bytes) is too large to scan: rejected", where, msgid, size)
            return Decision.reject("5.3.4 Message too large for the virus scanner", code="552")
        if policy == "tempfail":
            ctx.log.info("%s of %s (%s bytes) is too large to scan: tempfail", where, msgid, size)
            return Decision.tempfail("4.3.4 Message too large for the virus scanner")
        ctx.log.info(
            "%s of %s (%s bytes) is larger than max_msg_size (%d): passed unscanned",
            where,
            msgid,
            size,
            limit,
        )
        return CONTINUE
