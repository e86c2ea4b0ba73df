"""``dialback``: verify that the envelope sender can receive a bounce (SMTP call-back).

For a sender not seen recently the filter finds the mail servers of the sender's domain
(MX records, else the domain's own addresses) and asks them, one after the other in
order of preference, whether they accept mail for the sender::

    EHLO <esmtphelo>  /  MAIL FROM:<postmaster@me>  /  RCPT TO:<sender>  /  QUIT

A ``2xx`` to ``RCPT TO`` means the sender exists: the message continues.  A ``5xx``
means it does not: the message is refused with::

    517-MX server <host> said:
    517 Sender does not exist: <sender>

Both verdicts are remembered for ``senders_ttl`` seconds (7 days) in the original's store
databases ``goodsenders`` and ``badsenders`` (key: hex MD5 of the sender exactly as
written), and refreshed by every message that finds them there; a remembered bad sender
gets ``517 Sender does not exist: <sender>``.  Anything else - DNS failures, servers
that cannot be reached, time out, answer ``4xx`` or garbage - is *unverifiable*: by
default a temporary failure with the original's replies (``421 DNS failure resolving
<domain>``, ``421-Unable to validate sender address.`` / ``421 MX server <host> provided
unknown reply``, ...), see the ``unverifiable`` setting.

Safeguards the original lacked: a per-command timeout (``smtp_timeout``) and a deadline
for all the call-backs of one sender (``callout_timeout``); every session ends with
``QUIT`` and is closed; at most ``max_callouts_per_host`` sessions per destination host
at a time; concurrent messages from one sender share one verification; no call-back for
the null sender, for senders in local or hosted domains (``skip_local``) and for
authenticated or relaying clients (``skip_trusted``).  A store failure makes the filter
fail (the chain's failure action, ``451`` by default): mail is never accepted because
the store broke.

The exact replies and the settings are documented in ``docs/filters/dialback.md``.
"""

from __future__ import annotations

import asyncio
import enum
import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision
from ..dns import DnsError, Query, Resolver, dns_resolver
from ..message import MessageError
from ..smtp_callout import (
    CalloutResult,
    HostLimiter,
    Outcome,
    SmtpError,
    SmtpSession,
    Stage,
    callout,
    resolve_literal,
)
from ..store import TtlDb
from ._netkey import md5_key, setting_bool, setting_choice, setting_int, setting_seconds

__all__ = [
    "BAD_DB",
    "CONTROL_FAILURE",
    "GOOD_DB",
    "INVALID_SENDER",
    "NO_SERVERS",
    "Dialback",
    "DialbackError",
    "Status",
    "Verification",
    "callout_decision",
    "dns_failure",
    "no_mail_server",
    "null_mx",
    "sender_refused",
    "sender_unknown",
]

SECTION = "dialback.py"
GOOD_DB = "goodsenders"
"""Database of senders whose mail server accepted them: key -> time last seen."""
BAD_DB = "badsenders"
"""Database of senders whose mail server refused them: key -> time last seen."""

CONTROL_FAILURE = Decision.tempfail("Internal failure locating control files", code="451")
"""The original's reply when the control file cannot be read or names no sender."""
INVALID_SENDER = Decision.reject("Envelope sender is invalid", code="501")
"""The original's reply for a sender that is not ``local@domain``."""
NO_SERVERS = Decision.tempfail("No SMTP servers were available to authenticate sender", code="421")
"""The original's default reply: no server could be tried (e.g. the deadline passed
while waiting for a connection slot)."""


def sender_unknown(sender: str) -> Decision:
    """A sender remembered as bad: ``517 Sender does not exist: <sender>``."""
    return Decision.reject(f"Sender does not exist: {sender}", code="517")


def sender_refused(host: str, sender: str) -> Decision:
    """A sender the MX ``host`` refused just now (the original's two-line reply)."""
    return Decision.reject(
        (f"MX server {_printable(host)} said:", f"Sender does not exist: {sender}"), code="517"
    )


def dns_failure(domain: str) -> Decision:
    """The sender domain's MX/A lookup failed: ``421 DNS failure resolving <domain>``."""
    return Decision.tempfail(f"DNS failure resolving {_printable(domain)}", code="421")


def no_mail_server(domain: str) -> Decision:
    """The sender domain has no MX and no address: nothing could receive a bounce."""
    return Decision.reject(f"5.1.8 Sender domain has no mail server: {_printable(domain)}", "550")


def null_mx(domain: str) -> Decision:
    """The sender domain publishes a null MX (RFC 7505): it receives no mail at all."""
    return Decision.reject(
        f"5.7.27 Sender domain does not accept mail (null MX): {_printable(domain)}", "550"
    )


def callout_decision(result: CalloutResult) -> Decision:
    """The temporary failure for a call-back that gave no verdict.

    ====================================  =================================================
    result                                reply
    ====================================  =================================================
    no connection                         ``451 Unable to connect to MX server H: REASON``
    timeout, reset, garbage after it      ``451 SMTP session with MX server H failed
                                          during STEP: REASON`` (STEP: ``greeting``,
                                          ``EHLO``, ``HELO``, ``MAIL FROM``, ``RCPT TO``)
    greeting not ``2xx``                  ``421 H rejected the connection``
    ``EHLO``/``HELO`` not ``2xx``         ``421 H rejected the HELO command`` (or EHLO)
    ``MAIL FROM`` not ``2xx``             ``421 H rejected the MAIL FROM command``
    ``RCPT TO`` neither 2xx nor 5xx       ``421-Unable to validate sender address.``
                                          ``421 MX server H provided unknown reply``
    ====================================  =================================================
    """
    host = _printable(result.host)
    if result.outcome is Outcome.UNKNOWN:
        return Decision.tempfail(
            ("Unable to validate sender address.", f"MX server {host} provided unknown reply"),
            code="421",
        )
    if result.outcome is Outcome.REFUSED:
        if result.stage is Stage.GREETING:
            return Decision.tempfail(f"{host} rejected the connection", code="421")
        command = result.command or result.stage.value
        return Decision.tempfail(f"{host} rejected the {command} command", code="421")
    if result.outcome is Outcome.FAILED:
        reason = result.reason or "failed"
        if result.stage is Stage.CONNECT:
            return Decision.tempfail(f"Unable to connect to MX server {host}: {reason}")
        step = result.command or result.stage.value
        return Decision.tempfail(
            f"SMTP session with MX server {host} failed during {step}: {reason}"
        )
    raise ValueError(f"{result.outcome} is a verdict, not a failure")


def _printable(text: str, limit: int = 255) -> str:
    clean = "".join(c if c.isprintable() else "?" for c in text[:limit])
    return clean + ("..." if len(text) > limit else "")


class DialbackError(Exception):
    """Raised for an unverifiable sender with ``unverifiable = 'fail'``."""

    log_traceback = False


class Status(enum.Enum):
    """The result of verifying one sender."""

    GOOD = "good"
    """A mail server accepted the sender (now stored in ``goodsenders``)."""
    BAD = "bad"
    """A mail server refused the sender (now stored in ``badsenders``)."""
    NO_MAIL = "no-mail"
    """The domain cannot receive mail (null MX, or no MX and no address)."""
    UNVERIFIABLE = "unverifiable"
    """No verdict: DNS failure, no server reachable, timeouts, 4xx, garbage."""


@dataclass(frozen=True, slots=True)
class Verification:
    """What :meth:`Dialback.verify` found out about a sender."""

    status: Status
    decision: Decision
    """``CONTINUE`` for GOOD, else the reply."""
    reason: str = ""
    """For logs."""


@dataclass(frozen=True, slots=True)
class _Target:
    """A sender the filter will verify."""

    sender: str
    domain: str
    """The domain as written (used in replies)."""
    lookup: str
    """The domain for DNS: IDNA A-labels; the address itself for an address literal."""
    literal: str | None
    """The IP address of an address-literal domain (``user@[192.0.2.1]``)."""
    rcpt: str
    """The address for ``RCPT TO`` (the domain in A-labels when the local part is ASCII)."""


@dataclass(frozen=True, slots=True)
class _Config:
    senders_ttl: float
    purge_interval: float
    smtp_timeout: float
    callout_timeout: float
    postmaster_addr: str | None
    smtp_port: int
    ehlo: bool
    max_callouts_per_host: int
    skip_local: bool
    skip_trusted: bool
    unverifiable: str
    ipv6: bool


def _config(settings: Mapping[str, Any]) -> _Config:
    postmaster = settings.get("postmaster_addr")
    if postmaster is not None and (
        not isinstance(postmaster, str)
        or any(c in "<> " or not c.isprintable() for c in postmaster)
    ):
        raise ValueError(
            f"[{SECTION}] postmaster_addr must be an address, '' (the null sender) or None "
            f"(postmaster@ Courier's me), not {postmaster!r}"
        )
    return _Config(
        senders_ttl=setting_seconds(settings, "senders_ttl", SECTION),
        purge_interval=setting_seconds(settings, "senders_purge_interval", SECTION),
        smtp_timeout=setting_seconds(settings, "smtp_timeout", SECTION),
        callout_timeout=setting_seconds(settings, "callout_timeout", SECTION),
        postmaster_addr=postmaster,
        smtp_port=setting_int(settings, "smtp_port", SECTION, minimum=1, maximum=65535),
        ehlo=setting_bool(settings, "ehlo", SECTION),
        max_callouts_per_host=setting_int(
            settings, "max_callouts_per_host", SECTION, minimum=1, maximum=None
        ),
        skip_local=setting_bool(settings, "skip_local", SECTION),
        skip_trusted=setting_bool(settings, "skip_trusted", SECTION),
        unverifiable=setting_choice(
            settings, "unverifiable", SECTION, ("tempfail", "fail", "continue")
        ),
        ipv6=setting_bool(settings, "ipv6", SECTION),
    )


def _valid_domain(name: str) -> bool:
    if not name or len(name) > 253 or not name.isascii():
        return False
    return all(
        0 < len(label) <= 63 and all(c.isalnum() or c in "-_" for c in label)
        for label in name.split(".")
    )


class Dialback(Filter):
    """Verifies envelope senders by asking their domain's mail servers (SMTP call-back)."""

    defaults = {
        "senders_ttl": 60 * 60 * 24 * 7,
        "senders_purge_interval": 60 * 60 * 12,
        "smtp_timeout": 20,
        "callout_timeout": 45,
        "postmaster_addr": None,
        "smtp_port": 25,
        "ehlo": True,
        "max_callouts_per_host": 4,
        "skip_local": True,
        "skip_trusted": True,
        "unverifiable": "tempfail",
        "ipv6": True,
    }

    _cfg: _Config | None = None
    _dbs: tuple[TtlDb, TtlDb] | None = None

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._inflight: dict[str, asyncio.Task[Verification]] = {}
        self._limiter: HostLimiter | None = None

    @property
    def config(self) -> _Config:
        """The validated settings (ValueError names the bad key)."""
        if self._cfg is None:
            self._cfg = _config(self.settings)
        return self._cfg

    @property
    def limiter(self) -> HostLimiter:
        """The per-destination limit of concurrent sessions (shared by all messages)."""
        if self._limiter is None:
            self._limiter = HostLimiter(self.config.max_callouts_per_host)
        return self._limiter

    async def start(self) -> None:
        """Validate the settings and make sure DNS works, so that problems stop the load."""
        cfg = self.config
        timeout = self.settings.get("timeout")
        if (
            isinstance(timeout, int | float)
            and not isinstance(timeout, bool)
            and cfg.callout_timeout >= timeout
        ):
            self.ctx.log.warning(
                "dialback: callout_timeout (%gs) is not shorter than the filter's timeout "
                "(%gs): slow mail servers end in the chain's timeout reply",
                cfg.callout_timeout,
                timeout,
            )
        await dns_resolver(self.ctx)

    async def stop(self) -> None:
        """Cancel verifications still running."""
        tasks = list(self._inflight.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.gather(*tasks, return_exceptions=True)
        self._inflight.clear()

    async def databases(self) -> tuple[TtlDb, TtlDb]:
        """The ``(goodsenders, badsenders)`` databases, opened on first use."""
        if self._dbs is None:
            cfg = self.config
            store = await self.ctx.services.store()
            good = await store.database(
                GOOD_DB, ttl=cfg.senders_ttl, purge_interval=cfg.purge_interval
            )
            bad = await store.database(
                BAD_DB, ttl=cfg.senders_ttl, purge_interval=cfg.purge_interval
            )
            self._dbs = (good, bad)
        return self._dbs

    # -- what to verify ---------------------------------------------------------------------

    def _target(self, message: Message, ctx: Context) -> _Target | Decision:
        """The sender to verify, or the decision that makes verification unnecessary."""
        try:
            sender = message.sender
        except MessageError as exc:
            ctx.log.error("dialback: cannot read the control file(s) of %s: %s", message.msgid, exc)
            return CONTROL_FAILURE
        if sender is None:
            ctx.log.error("dialback: %s has no sender record", message.msgid)
            return CONTROL_FAILURE
        if sender == "":
            return CONTINUE  # the null sender: bounces are never called back
        if self.config.skip_trusted and (
            message.auth_user is not None or message.control.relay_client
        ):
            return CONTINUE
        return self._parse_sender(sender, ctx)

    def _parse_sender(self, sender: str, ctx: Context) -> _Target | Decision:
        """Split and check a non-null sender; CONTINUE for a local or hosted domain."""
        parts = sender.split("@")
        if len(parts) != 2 or not parts[0] or not parts[1]:
            return INVALID_SENDER
        if any(c in "<>" or ord(c) < 32 or ord(c) == 127 for c in sender):
            return INVALID_SENDER
        local, domain = parts
        literal = resolve_literal(domain)
        if literal is not None:
            return _Target(sender, domain, literal, literal, sender)
        if domain.startswith("["):
            return INVALID_SENDER
        try:
            lookup = domain if domain.isascii() else domain.encode("idna").decode("ascii")
        except UnicodeError:
            return INVALID_SENDER
        lookup = lookup.rstrip(".")
        if not _valid_domain(lookup):
            return INVALID_SENDER
        if self.config.skip_local:
            courier = ctx.services.courier
            if courier.is_local(domain) or courier.is_hosteddomain(domain):
                return CONTINUE
        rcpt = f"{local}@{lookup}" if local.isascii() else sender
        return _Target(sender, domain, lookup, None, rcpt)

    def dns_queries(self, message: Message, ctx: Context) -> list[Query]:
        """The MX lookup :meth:`check` will make (for prefetching).

        Also returned for a sender that turns out to be cached: the lookup is cheap and
        knowing would need the store.
        """
        target = self._target(message, ctx)
        if isinstance(target, Decision) or target.literal is not None:
            return []
        return [(target.lookup, "MX")]

    # -- the check --------------------------------------------------------------------------

    async def check(self, message: Message, ctx: Context) -> Decision:
        """Continue for a verified (or exempt) sender; refuse or tempfail the others."""
        target = self._target(message, ctx)
        if isinstance(target, Decision):
            return target
        sender = target.sender
        good, bad = await self.databases()
        key = md5_key(sender)
        stamp = float(int(ctx.clock()))  # whole seconds, as the original stored them
        if await good.get_and_touch(key, stamp) is not None:
            return CONTINUE
        if await bad.get_and_touch(key, stamp) is not None:
            ctx.log.info("dialback: %s: sender %s is known not to exist", message.msgid, sender)
            return sender_unknown(sender)
        found = await self._verify_shared(target)
        if found.status is not Status.UNVERIFIABLE:
            return found.decision
        mode = self.config.unverifiable
        if mode == "continue":
            ctx.log.warning(
                "dialback: %s: sender %s not verified (%s); letting it through "
                "(unverifiable = 'continue')",
                message.msgid,
                sender,
                found.reason,
            )
            return CONTINUE
        if mode == "fail":
            raise DialbackError(f"cannot verify sender {sender}: {found.decision.text}")
        return found.decision

    async def verify(self, sender: str) -> Verification:
        """Verify ``sender`` now (no cache lookup; the verdict is stored).

        Concurrent calls for one sender share one verification.  Raises ValueError for
        an address :meth:`check` would refuse as invalid.
        """
        target = self._parse_sender(sender, self.ctx) if sender else INVALID_SENDER
        if isinstance(target, Decision):
            why = target.reply() or "a local or hosted domain"
            raise ValueError(f"not an address to verify: {sender!r} ({why})")
        return await self._verify_shared(target)

    async def _verify_shared(self, target: _Target) -> Verification:
        task = self._inflight.get(target.sender)
        if task is None:
            task = asyncio.create_task(self._verify(target), name=f"dialback {target.sender}")
            self._inflight[target.sender] = task
            task.add_done_callback(functools.partial(self._finished, target.sender))
        # Shielded: a message whose filter times out does not cancel the verification
        # other messages of the same sender wait for (it ends at its own deadline).
        return await asyncio.shield(task)

    def _finished(self, sender: str, task: asyncio.Task[Verification]) -> None:
        if self._inflight.get(sender) is task:
            del self._inflight[sender]
        if not task.cancelled():
            task.exception()  # retrieved: the waiters may all be gone

    async def _verify(self, target: _Target) -> Verification:
        ctx, cfg = self.ctx, self.config
        log = ctx.log
        resolver = await dns_resolver(ctx)
        plan: list[tuple[str, Sequence[str] | None]]
        if target.literal is not None:
            plan = [(target.domain, [target.literal])]
        else:
            try:
                mx = await resolver.mx(target.lookup)
            except DnsError as exc:
                log.warning("dialback: sender %s: MX lookup failed: %s", target.sender, exc)
                return Verification(Status.UNVERIFIABLE, dns_failure(target.domain), str(exc))
            if any(not record.exchange for record in mx):
                log.info("dialback: sender %s: %s has a null MX", target.sender, target.domain)
                return Verification(Status.NO_MAIL, null_mx(target.domain), "null MX")
            if mx:
                hosts = list(dict.fromkeys(record.exchange for record in mx))
                plan = [(host, None) for host in hosts]
            else:
                addresses, failure, detail = await self._addresses(resolver, target.lookup, None)
                if failure is not None and not addresses:
                    log.warning(
                        "dialback: sender %s: address lookup failed: %s", target.sender, detail
                    )
                    return Verification(Status.UNVERIFIABLE, dns_failure(target.domain), detail)
                if not addresses:
                    log.info(
                        "dialback: sender %s: %s has no MX and no address",
                        target.sender,
                        target.domain,
                    )
                    return Verification(
                        Status.NO_MAIL, no_mail_server(target.domain), "no mail server"
                    )
                plan = [(target.lookup, addresses)]

        loop = asyncio.get_running_loop()
        deadline = loop.time() + cfg.callout_timeout
        postmaster = cfg.postmaster_addr
        if postmaster is None:
            postmaster = "postmaster@" + ctx.services.courier.me()
        last: CalloutResult | None = None
        for host, known in plan:
            if loop.time() >= deadline:
                break
            result = await self._callout(resolver, host, known, target, postmaster, deadline)
            log.info(
                "dialback: sender %s: %s (%s) %s at %s%s",
                target.sender,
                host,
                result.address or "-",
                result.outcome.value,
                result.stage.value,
                f": {result.reply.code} {result.reply.text}"
                if result.reply
                else f": {result.detail or result.reason}",
            )
            if result.outcome is Outcome.ACCEPTED:
                good, _ = await self.databases()
                await good.set(md5_key(target.sender), float(int(ctx.clock())))
                return Verification(Status.GOOD, CONTINUE, f"accepted by {host}")
            if result.outcome is Outcome.REJECTED:
                _, bad = await self.databases()
                await bad.set(md5_key(target.sender), float(int(ctx.clock())))
                return Verification(
                    Status.BAD, sender_refused(host, target.sender), f"refused by {host}"
                )
            last = result
        if last is None:
            return Verification(Status.UNVERIFIABLE, NO_SERVERS, "no server could be tried")
        decision = callout_decision(last)
        return Verification(Status.UNVERIFIABLE, decision, decision.text)

    async def _callout(
        self,
        resolver: Resolver,
        host: str,
        known: Sequence[str] | None,
        target: _Target,
        postmaster: str,
        deadline: float,
    ) -> CalloutResult:
        cfg = self.config
        loop = asyncio.get_running_loop()
        try:
            async with self.limiter.slot(host, deadline - loop.time()):
                addresses: Sequence[str] | None = known
                if addresses is None:
                    addresses, reason, detail = await self._addresses(resolver, host, deadline)
                    if not addresses:
                        return CalloutResult(
                            host,
                            Outcome.FAILED,
                            Stage.CONNECT,
                            reason=reason or "no address",
                            detail=detail,
                        )
                return await callout(
                    host,
                    addresses,
                    rcpt=target.rcpt,
                    mail_from=postmaster,
                    helo=functools.partial(self._helo_name, resolver, deadline),
                    port=cfg.smtp_port,
                    command_timeout=cfg.smtp_timeout,
                    deadline=deadline,
                    ehlo=cfg.ehlo,
                )
        except SmtpError as exc:  # no slot in time
            return CalloutResult(
                host,
                Outcome.FAILED,
                Stage.CONNECT,
                reason="too many concurrent verifications",
                detail=str(exc),
            )

    async def _addresses(
        self, resolver: Resolver, name: str, deadline: float | None
    ) -> tuple[list[str], str | None, str]:
        """IPv4 then IPv6 addresses of ``name``, with a failure reason and detail.

        The reason is None when every lookup answered, ``DNS failure`` when one failed
        and ``timed out`` when ``deadline`` (loop time) passed first.
        """
        futures = [resolver.submit(name, "A")]
        if self.config.ipv6:
            futures.append(resolver.submit(name, "AAAA"))
        try:
            async with asyncio.timeout_at(deadline):
                results = await asyncio.gather(*futures, return_exceptions=True)
        except TimeoutError:
            for future in futures:
                future.cancel()
            return [], "timed out", f"{name}: address lookup passed the deadline"
        addresses: list[str] = []
        reason: str | None = None
        detail = ""
        for result in results:
            if isinstance(result, DnsError):
                reason, detail = "DNS failure", str(result)
            elif isinstance(result, BaseException):
                raise result
            else:
                addresses.extend(result)
        return addresses, reason, detail

    async def _helo_name(self, resolver: Resolver, deadline: float, session: SmtpSession) -> str:
        """Courier's ``esmtphelo`` (else ``me``); ``*`` means the local address's PTR name."""
        courier = self.ctx.services.courier
        if courier.read1line("esmtphelo") != "*":
            return courier.esmtphelo()
        local = session.local_address
        if local is not None:
            try:
                async with asyncio.timeout_at(deadline):
                    names = await resolver.ptr(local)
            except (DnsError, TimeoutError, ValueError):
                names = ()
            if names:
                return str(names[0])
        return courier.me()
