"""``greylist``: classic greylisting on (sender, recipient, client network).

A triplet seen for the first time is refused with a temporary failure; when the client
retries at least ``greylist_time`` seconds after the first attempt the triplet passes,
and stays passed (refreshed on every message) for ``senders_passed_ttl`` seconds.  The
reply tells the client how long to wait::

    451 4.7.1 Greylisting in action, please come back in 00:05:00

State lives in the store (``[ttldb]``) in the original's two databases,
``greylist_NotPassed`` (first-seen time of pending triplets) and ``greylist_Passed``
(last-seen time of passed ones).  A triplet's key is the hex MD5 of the lower-cased
sender, the lower-cased recipient and the client's network text (``192.0.2`` for IPv4,
``2001:0db8:0001`` for IPv6), concatenated — exactly the original's keys, so imported
state keeps working.  Timestamps are stored in whole seconds like the original's.

Every step is one atomic store operation, so concurrent messages of one triplet (two
retries arriving together, or several servers sharing PostgreSQL) agree on one first-seen
time and a passed triplet is never greylisted again.

Optional improvements, all off by default (see ``docs/filters/greylist.md``):
``ipv4_prefix``/``ipv6_prefix`` (other network sizes), ``skip_spf_pass`` (skip senders
whose MAIL FROM passed Courier's own SPF check) and ``skip_dnswl`` (skip clients that
Courier found on a DNS whitelist).  The checks behind the last two are the overridable
coroutines :meth:`Greylist.spf_result` and :meth:`Greylist.dnswl_zones`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api import Context, Filter, Message
from ..courier_headers import authserv_ids, courier_dnswl_zones, courier_spf_results
from ..decision import CONTINUE, Decision
from ..store import TtlDb
from ._netkey import (
    DEFAULT_IPV4_PREFIX,
    DEFAULT_IPV6_PREFIX,
    format_wait,
    md5_key,
    network_text,
    setting_bool,
    setting_choice,
    setting_int,
    setting_seconds,
)

__all__ = [
    "NOT_PASSED_DB",
    "PASSED_DB",
    "Greylist",
    "courier_dnswl_zones",
    "courier_spf_results",
    "greylist_reply",
]

SECTION = "greylist.py"
NOT_PASSED_DB = "greylist_NotPassed"
"""Database of pending triplets: key -> first-seen time."""
PASSED_DB = "greylist_Passed"
"""Database of passed triplets: key -> last-seen time."""

NO_SENDER = "4.3.0 Internal failure: the control file has no sender record"
NO_CLIENT_IP = "4.3.0 Greylisting needs the client's IP address, which is unknown; try again later"


def greylist_reply(wait: float) -> Decision:
    """The original's reply for a greylisted message that should retry in ``wait`` s."""
    return Decision.tempfail(
        "4.7.1 Greylisting in action, please come back in " + format_wait(wait)
    )


# -- the filter ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Config:
    greylist_time: float
    passed_ttl: float
    not_passed_ttl: float
    purge_interval: float
    ipv4_prefix: int
    ipv6_prefix: int
    skip_spf_pass: bool
    skip_dnswl: bool
    spf_source: str
    dnswl_zone: tuple[str, ...]
    missing_ip: str


def _zones(value: Any) -> tuple[str, ...]:
    """``dnswl_zone``: a list of zone names (a single string is one zone)."""
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list | tuple) or not all(isinstance(z, str) and z for z in value):
        raise ValueError(f"[{SECTION}] dnswl_zone must be a list of zone names, got {value!r}")
    return tuple(z.strip(".") for z in value)


def _config(settings: Mapping[str, Any]) -> _Config:
    return _Config(
        greylist_time=setting_seconds(settings, "greylist_time", SECTION),
        passed_ttl=setting_seconds(settings, "senders_passed_ttl", SECTION),
        not_passed_ttl=setting_seconds(settings, "senders_not_passed_ttl", SECTION),
        purge_interval=setting_seconds(settings, "senders_purge_interval", SECTION),
        ipv4_prefix=setting_int(settings, "ipv4_prefix", SECTION, minimum=0, maximum=32),
        ipv6_prefix=setting_int(settings, "ipv6_prefix", SECTION, minimum=0, maximum=128),
        skip_spf_pass=setting_bool(settings, "skip_spf_pass", SECTION),
        skip_dnswl=setting_bool(settings, "skip_dnswl", SECTION),
        spf_source=setting_choice(settings, "spf_source", SECTION, ("courier", "evaluate")),
        dnswl_zone=_zones(settings.get("dnswl_zone", ())),
        missing_ip=setting_choice(settings, "missing_ip", SECTION, ("tempfail", "continue")),
    )


class Greylist(Filter):
    """Greylists (sender, recipient, client network) triplets in the store."""

    defaults = {
        "greylist_time": 300,
        "senders_passed_ttl": 60 * 60 * 24 * 36,
        "senders_not_passed_ttl": 60 * 60 * 24,
        "senders_purge_interval": 60 * 60 * 2,
        "ipv4_prefix": DEFAULT_IPV4_PREFIX,
        "ipv6_prefix": DEFAULT_IPV6_PREFIX,
        "skip_spf_pass": False,
        "skip_dnswl": False,
        "spf_source": "courier",
        "dnswl_zone": [],
        "missing_ip": "tempfail",
    }

    _cfg: _Config | None = None
    _dbs: tuple[TtlDb, TtlDb] | None = None

    @property
    def config(self) -> _Config:
        """The validated settings (ValueError names the bad key)."""
        if self._cfg is None:
            self._cfg = _config(self.settings)
        return self._cfg

    async def start(self) -> None:
        """Validate the settings, so that a bad value stops the start-up with a clear error."""
        cfg = self.config
        if cfg.greylist_time >= cfg.not_passed_ttl:
            self.ctx.log.warning(
                "greylist: greylist_time (%gs) is not shorter than senders_not_passed_ttl "
                "(%gs): pending triplets expire before they can pass",
                cfg.greylist_time,
                cfg.not_passed_ttl,
            )
        own_spf = cfg.skip_spf_pass and cfg.spf_source == "evaluate"
        if own_spf or (cfg.skip_dnswl and cfg.dnswl_zone):
            from ..dns import dns_resolver

            await dns_resolver(self.ctx)  # no aiodns or a bad [dns]: refuse to start

    async def databases(self) -> tuple[TtlDb, TtlDb]:
        """The ``(greylist_NotPassed, greylist_Passed)`` databases, opened on first use."""
        if self._dbs is None:
            cfg = self.config
            store = await self.ctx.services.store()
            not_passed = await store.database(
                NOT_PASSED_DB, ttl=cfg.not_passed_ttl, purge_interval=cfg.purge_interval
            )
            passed = await store.database(
                PASSED_DB, ttl=cfg.passed_ttl, purge_interval=cfg.purge_interval
            )
            self._dbs = (not_passed, passed)
        return self._dbs

    async def check(self, message: Message, ctx: Context) -> Decision:
        cfg = self.config
        sender = message.sender
        if sender is None:
            ctx.log.error("greylist: %s has no sender record; tempfailing", message.msgid)
            return Decision.tempfail(NO_SENDER)
        if sender == "":
            return CONTINUE  # the null sender (bounces) is never greylisted
        ip = message.client_ip
        if ip is None and message.source == "local":
            # Submitted on this host (sendmail): there is no client network to greylist.
            return CONTINUE
        if ip is None:
            if cfg.missing_ip == "continue":
                ctx.log.warning(
                    "greylist: %s has no valid client IP address; not greylisted "
                    "(missing_ip = 'continue')",
                    message.msgid,
                )
                return CONTINUE
            ctx.log.warning(
                "greylist: %s has no valid client IP address; tempfailing", message.msgid
            )
            return Decision.tempfail(NO_CLIENT_IP)
        reason = await self.exemption(message, ctx)
        if reason is not None:
            ctx.log.info("greylist: %s not greylisted: %s", message.msgid, reason)
            return CONTINUE

        network = network_text(ip, cfg.ipv4_prefix, cfg.ipv6_prefix)
        not_passed, passed = await self.databases()
        now = ctx.clock()
        lowered = sender.lower()
        longest = 0.0
        for address in message.addresses:
            key = md5_key(lowered, address.lower(), network)
            wait = await self._triplet(not_passed, passed, key, now, cfg.greylist_time)
            longest = max(longest, wait)
        if longest > 0:
            ctx.log.debug(
                "greylist: %s from %s via %s greylisted for %gs",
                message.msgid,
                sender,
                network,
                longest,
            )
            return greylist_reply(longest)
        return CONTINUE

    @staticmethod
    async def _triplet(
        not_passed: TtlDb, passed: TtlDb, key: str, now: float, greylist_time: float
    ) -> float:
        """Process one triplet; return 0 when it passes, else the seconds left to wait.

        Each step is one atomic store operation.  A promotion writes ``Passed`` before it
        removes the pending entry, so a concurrent message always finds the triplet in
        one of the two; and a message about to be refused checks ``Passed`` once more,
        so one that raced with a promotion passes too.
        """
        stamp = float(int(now))  # whole seconds, as the original stored them
        if await passed.get_and_touch(key, stamp) is not None:
            return 0.0
        first_seen, inserted = await not_passed.get_or_set(key, stamp)
        if inserted:
            wait = greylist_time
        else:
            wait = first_seen + greylist_time - now
            if wait <= 0:
                await passed.set(key, stamp)
                await not_passed.delete(key)
                return 0.0
        if await passed.contains(key):  # promoted by a concurrent message meanwhile
            await not_passed.delete(key)
            return 0.0
        return wait

    # -- exemptions (hooks) -----------------------------------------------------------------

    async def exemption(self, message: Message, ctx: Context) -> str | None:
        """Why ``message`` skips greylisting, or None.  Consulted before the store.

        Checks the enabled options: ``skip_spf_pass`` (through :meth:`spf_result`) and
        ``skip_dnswl`` (through :meth:`dnswl_zones`).  Override in a subclass to add
        other reasons.
        """
        cfg = self.config
        if cfg.skip_spf_pass and await self.spf_result(message, ctx) == "pass":
            return "the sender passed SPF"
        if cfg.skip_dnswl:
            zones = await self.dnswl_zones(message, ctx)
            if zones:
                return "the client is listed in " + ", ".join(zones)
        return None

    async def spf_result(self, message: Message, ctx: Context) -> str | None:
        """The SPF result for the envelope sender (``pass``, ``fail``, ...), None if unknown.

        First the ``Received-SPF: ... SPF=MAILFROM;`` field that Courier's esmtpd writes
        above its ``Received:`` field when ``BOFHSPFMAILFROM`` is enabled (see
        :func:`courier_spf_results`).  Without it, and with ``spf_source = 'evaluate'``,
        the server's own RFC 7208 evaluation (shared with ``spfcheck`` and
        ``whitelist_spf`` in the same chain); a DNS failure there means "unknown".
        """
        headers = await message.headers()
        result = courier_spf_results(headers.raw_items()).get("MAILFROM")
        if result is not None or self.config.spf_source != "evaluate":
            return result
        ip, sender = message.client_ip, message.sender
        if ip is None or not sender:
            return None
        from ..dns import DnsError
        from .spfcheck import evaluate_spf

        try:
            receiver = ctx.services.courier.me() or "unknown"
            verdict = await evaluate_spf(ctx, ip, sender, message.helo or "", receiver)
        except (DnsError, OSError) as exc:
            ctx.log.info("greylist: SPF of %s unknown: %s", sender, exc)
            return None
        return str(verdict.result)

    async def dnswl_zones(self, message: Message, ctx: Context) -> list[str]:
        """The DNS whitelists the client is listed in (empty if none or unknown).

        Courier's own ``Authentication-Results: <me>; dnswl=pass dns.zone=...`` field
        (see :func:`courier_dnswl_zones`), and the zones of ``dnswl_zone`` looked up by
        the server itself (any answer lists the client; a DNS failure does not).
        """
        try:
            me = ctx.services.courier.me()
        except OSError as exc:
            ctx.log.warning("greylist: cannot read Courier's me file: %s", exc)
            me = ""
        headers = await message.headers()
        listed = courier_dnswl_zones(headers.raw_items(), authserv_ids(me)) if me else []
        zones = self.config.dnswl_zone
        ip = message.client_ip
        if listed or not zones or ip is None:
            return listed
        from ..dns import DnsError, dns_resolver, list_name

        resolver = await dns_resolver(ctx)
        for zone in zones:
            try:
                if await resolver.a(list_name(ip, zone)):
                    listed.append(zone)
            except DnsError as exc:
                ctx.log.info("greylist: DNSWL %s unknown for %s: %s", zone, ip, exc)
        return listed

    def dns_queries(self, message: Message, ctx: Context) -> list[tuple[str, str]]:
        """The DNSWL lookups :meth:`dnswl_zones` may make, for the chain's prefetch."""
        cfg = self.config
        ip = message.client_ip
        if not cfg.skip_dnswl or not cfg.dnswl_zone or ip is None:
            return []
        from ..dns import list_name

        return [(list_name(ip, zone), "A") for zone in cfg.dnswl_zone]
