"""``dnsbl``: refuse mail from clients or sender domains listed in DNS blocklists.

Not part of the original (Courier checks client addresses against DNSBLs itself, with
``BLACKLISTS`` in ``esmtpd``); this filter adds per-list scores, return-code mappings,
domain lists (RHSBL) and allow-lists.

* The client address is looked up in every zone of ``lists`` as
  ``<reversed address>.<zone>`` (IPv4 octets, IPv6 nibbles);
* the sender's domain (and, if configured, the HELO name) in every zone of
  ``domain_lists`` as ``<domain>.<zone>``.

Each list that lists the message adds its score; when the sum reaches ``threshold`` the
message is refused with ``554`` and a reply naming the lists.  All lookups run at once.

Settings (section ``[dnsbl.py]``):

``lists``, ``domain_lists``
    Zones and their scores: ``{'zen.spamhaus.org': 5, 'bl.spamcop.net': 3}``.  A score
    may be a map from answers (addresses or networks) to scores, for lists whose answer
    says why an entry is listed: ``{'zen.spamhaus.org': {'127.0.0.2': 5,
    '127.0.0.10/31': 2}}`` - answers not in the map do not count, and the list adds the
    highest score among its answers.  A plain list of zones (``['bl.spamcop.net']``)
    gives each zone the score ``threshold``: any listing refuses.  Negative scores are
    allowed (a whitelist zone subtracting points).
``threshold``
    Score at which the message is refused (default 1).
``domains``
    Which domains ``domain_lists`` check: ``'sender'`` (the envelope sender's domain)
    and/or ``'helo'``; default ``['sender']``.
``allow_ips``
    Addresses or networks whose clients are never checked (the filter continues).
``allow_domains``
    Domains (and their sub-domains) never looked up in ``domain_lists``.
``skip_trusted``
    Do not check authenticated clients and clients with ``RELAYCLIENT`` (default True).
``ipv6``
    Look up IPv6 clients (default True).
``ignore_answers``
    Answers that never count for lists with a plain score (default
    ``['127.255.255.0/24']``, the error codes of Spamhaus and others, e.g. "queried
    through a public resolver"); answers outside 127.0.0.0/8 never count either.
``reply``, ``code``
    Reply text (``{reasons}`` is replaced by the lists and answers, ``{score}`` by the
    score) and code (default ``'554'``; a ``4xx`` code tempfails instead).
``txt``
    Add the list's TXT record (usually a URL explaining the listing) to the reasons.
``dns_error``
    What a list that cannot be asked (timeout, SERVFAIL) means: ``'fail'`` (default) - if
    the other lists do not already reach the threshold, the filter fails and the chain
    uses its failure action (``451`` unless ``on_error`` says otherwise); ``'ignore'`` -
    the list counts as "not listed" (a warning is logged).

Messages without a client address (local submissions) are not checked.
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision
from ..dns import DnsError, Query, dns_resolver, list_name
from .whitelist_dnswl import IPAddress, Network, in_networks, parse_networks, parse_zones

__all__ = ["DnsList", "Dnsbl"]

_LOOPBACK = ipaddress.ip_network("127.0.0.0/8")


@dataclass(frozen=True, slots=True)
class DnsList:
    """One configured list: its zone and how its answers score."""

    zone: str
    score: float = 1.0
    codes: tuple[tuple[Network, float], ...] = ()

    def points(self, answers: tuple[str, ...], ignore: tuple[Network, ...]) -> float | None:
        """The score of ``answers`` (None: they do not count as a listing)."""
        if self.codes:
            found = [s for a in answers for net, s in self.codes if in_networks(a, (net,))]
            return max(found) if found else None
        counted = [
            a for a in answers if in_networks(a, (_LOOPBACK,)) and not in_networks(a, ignore)
        ]
        return self.score if counted else None

    @property
    def lowest(self) -> float:
        """The smallest score this list can add (0 when it cannot lower the sum)."""
        return min([0.0, self.score, *(s for _, s in self.codes)])


def _number(value: Any, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{what}: the score must be a number, not {value!r}")
    return float(value)


def parse_lists(value: Any, setting: str, default_score: float) -> tuple[DnsList, ...]:
    """A ``lists`` / ``domain_lists`` setting as :class:`DnsList` objects."""
    if not isinstance(value, Mapping):
        return tuple(DnsList(z, default_score) for z in parse_zones(value, setting))
    result: list[DnsList] = []
    for zone_value, spec in value.items():
        (zone,) = parse_zones(zone_value, setting)
        if isinstance(spec, Mapping):
            codes = tuple(
                (parse_networks([answer], f"{setting}[{zone!r}]")[0], _number(s, zone))
                for answer, s in spec.items()
            )
            if not codes:
                raise ValueError(f"{setting}[{zone!r}]: empty answer map")
            result.append(DnsList(zone, max(s for _, s in codes), codes))
        else:
            result.append(DnsList(zone, _number(spec, f"{setting}[{zone!r}]")))
    return tuple(result)


def _domain(value: str | None) -> str | None:
    if not value:
        return None
    domain = value.strip().strip(".").lower()
    if not domain or "." not in domain or domain.startswith("["):
        return None
    try:
        ipaddress.ip_address(domain)
        return None  # an address given as HELO name: not a domain
    except ValueError:
        pass
    try:
        return domain.encode("idna").decode("ascii")
    except UnicodeError:
        return None


def _printable(text: str, limit: int = 200) -> str:
    """DNS text made safe for a one-line SMTP reply: printable ASCII, bounded length."""
    clean = "".join(c if " " <= c <= "~" else "?" for c in text).strip()
    return clean if len(clean) <= limit else clean[: limit - 3] + "..."


@dataclass(frozen=True, slots=True)
class _Lookup:
    what: str  # "192.0.2.1" or "sender domain example.com"
    dnslist: DnsList
    name: str


class Dnsbl(Filter):
    """Scores the client address and sender domains against DNS blocklists."""

    defaults = {
        "lists": {},
        "domain_lists": {},
        "threshold": 1,
        "domains": ["sender"],
        "allow_ips": [],
        "allow_domains": [],
        "skip_trusted": True,
        "ipv6": True,
        "ignore_answers": ["127.255.255.0/24"],
        "reply": "5.7.1 Message refused: {reasons}",
        "code": "554",
        "txt": False,
        "dns_error": "fail",
    }

    async def start(self) -> None:
        s = self.settings
        self.threshold = _number(s["threshold"], "threshold")
        if self.threshold <= 0:
            raise ValueError(f"threshold must be positive, not {s['threshold']!r}")
        self.lists = parse_lists(s["lists"], "lists", self.threshold)
        self.domain_lists = parse_lists(s["domain_lists"], "domain_lists", self.threshold)
        domains = [s["domains"]] if isinstance(s["domains"], str) else list(s["domains"])
        if not set(domains) <= {"sender", "helo"}:
            raise ValueError(f"domains must name 'sender' and/or 'helo', not {s['domains']!r}")
        self.domain_sources = tuple(domains)
        self.allow_ips = parse_networks(s["allow_ips"], "allow_ips")
        self.allow_domains = parse_zones(s["allow_domains"], "allow_domains")
        self.ignore = parse_networks(s["ignore_answers"], "ignore_answers")
        if s["dns_error"] not in ("fail", "ignore"):
            raise ValueError(f"dns_error must be 'fail' or 'ignore', not {s['dns_error']!r}")
        self.ignore_errors = s["dns_error"] == "ignore"
        code = str(s["code"])
        # Checked now: a bad code or reply template stops the configuration from loading.
        try:
            self._decide(code, str(s["reply"]).format(reasons="x", score=0))
        except (KeyError, IndexError, ValueError) as exc:
            raise ValueError(f"reply/code: {type(exc).__name__}: {exc}") from None
        self.code, self.reply = code, str(s["reply"])
        await dns_resolver(self.ctx)

    @staticmethod
    def _decide(code: str, text: str) -> Decision:
        if code.startswith("4"):
            return Decision.tempfail(text, code=code)
        return Decision.reject(text, code=code)

    # -- what to look up --------------------------------------------------------------------

    def _allowed_domain(self, domain: str) -> bool:
        return any(domain == d or domain.endswith("." + d) for d in self.allow_domains)

    def _plan(self, message: Message) -> list[_Lookup]:
        ip: IPAddress | None = message.client_ip
        if ip is None or in_networks(ip, self.allow_ips):
            return []
        if self.settings["skip_trusted"] and (message.auth_user or message.control.relay_client):
            return []
        plan: list[_Lookup] = []
        if ip.version == 4 or self.settings["ipv6"]:
            plan += [_Lookup(str(ip), bl, list_name(ip, bl.zone)) for bl in self.lists]
        if self.domain_lists:
            seen: set[str] = set()
            for source in self.domain_sources:
                if source == "sender":
                    domain = _domain((message.sender or "").rpartition("@")[2])
                else:
                    domain = _domain(message.helo)
                if domain is None or domain in seen or self._allowed_domain(domain):
                    continue
                seen.add(domain)
                what = f"{source} domain {domain}"
                plan += [_Lookup(what, bl, f"{domain}.{bl.zone}") for bl in self.domain_lists]
        return plan

    def dns_queries(self, message: Message, ctx: Context) -> list[Query]:
        """The lookups :meth:`check` will make, for prefetching."""
        return [(lookup.name, "A") for lookup in self._plan(message)]

    # -- the check --------------------------------------------------------------------------

    async def check(self, message: Message, ctx: Context) -> Decision:
        plan = self._plan(message)
        if not plan:
            return CONTINUE
        resolver = await dns_resolver(ctx)
        results = await asyncio.gather(
            *(resolver.submit(lookup.name, "A") for lookup in plan), return_exceptions=True
        )
        score = 0.0
        hits: list[tuple[_Lookup, tuple[str, ...], float]] = []
        failed: list[tuple[_Lookup, DnsError]] = []
        for lookup, result in zip(plan, results, strict=True):
            if isinstance(result, DnsError):
                failed.append((lookup, result))
                continue
            if isinstance(result, BaseException):
                raise result
            points = lookup.dnslist.points(result, self.ignore)
            if points is None:
                if result:
                    ctx.log.debug(
                        "%s: answers %s from %s ignored", lookup.what, result, lookup.name
                    )
                continue
            score += points
            hits.append((lookup, result, points))
        for lookup, error in failed:
            ctx.log.warning(
                "%s: no usable answer from %s: %s", message.msgid or "-", lookup.dnslist.zone, error
            )
        can_lower = any(lookup.dnslist.lowest < 0 for lookup, _ in failed)
        if failed and not self.ignore_errors and (score < self.threshold or can_lower):
            raise failed[0][1]
        if score < self.threshold:
            if hits:
                ctx.log.info(
                    "%s: score %g below %g: %s",
                    message.msgid or "-",
                    score,
                    self.threshold,
                    self._reasons(hits, {}),
                )
            return CONTINUE
        txts: dict[str, str] = {}
        if self.settings["txt"]:
            txts = await self._txts(resolver, [lookup for lookup, _, _ in hits])
        reasons = self._reasons(hits, txts)
        ctx.log.info(
            "refusing %s: score %g >= %g: %s", message.msgid or "-", score, self.threshold, reasons
        )
        return self._decide(self.code, self.reply.format(reasons=reasons, score=f"{score:g}"))

    @staticmethod
    async def _txts(resolver: Any, lookups: list[_Lookup]) -> dict[str, str]:
        results = await asyncio.gather(
            *(resolver.submit(lookup.name, "TXT") for lookup in lookups), return_exceptions=True
        )
        return {
            lookup.name: _printable(result[0])
            for lookup, result in zip(lookups, results, strict=True)
            if isinstance(result, tuple) and result
        }

    @staticmethod
    def _reasons(
        hits: list[tuple[_Lookup, tuple[str, ...], float]], txts: Mapping[str, str]
    ) -> str:
        parts = []
        for lookup, answers, _ in hits:
            text = f"{lookup.what} is listed in {lookup.dnslist.zone} ({', '.join(answers)})"
            if lookup.name in txts:
                text += f": {txts[lookup.name]}"
            parts.append(text)
        return "; ".join(parts)
