"""``whitelist_dnswl``: accept mail from clients listed in a DNS whitelist (DNSWL).

For each zone of ``dnswl_zone`` the client address is looked up as
``<reversed address>.<zone>`` (IPv4 octets reversed, as the original did; IPv6 in nibble
format, which the original did not do).  Any A answer means "listed": the message is
accepted with ``200 Ok`` and skips the rest of the chain (or, with ``for``, the listed
filters).  Otherwise, and for messages without a client address, the chain continues.

Settings (section ``[whitelist_dnswl.py]``):

``dnswl_zone``
    The DNSWL zones, default ``['list.dnswl.org']``.  A single string is one zone (the
    original iterated it character by character).
``ipv6``
    Look up IPv6 clients too (default ``True``; ``False`` behaves like the original).
``ignore_answers``
    Answers that do not count as "listed": addresses or networks, e.g.
    ``['127.0.0.255']``, dnswl.org's answer to resolvers that are blocked from
    querying it.  Default ``[]`` (any answer counts, as in the original).

All zones are asked at once.  A whitelist never blocks mail: when no zone lists the
client and a lookup failed (timeout, SERVFAIL), the filter fails and the chain continues
(set ``on_error`` to change that).  DNS servers and deadline come from ``[dns]`` (see
``docs/filters/dns.md``).
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Sequence
from typing import Any

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision
from ..dns import DnsError, Query, dns_resolver, list_name

__all__ = ["WhitelistDnswl", "parse_networks", "parse_zones"]

Network = ipaddress.IPv4Network | ipaddress.IPv6Network
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def parse_zones(value: Any, setting: str) -> tuple[str, ...]:
    """A zone setting as a tuple of zone names: a string is one zone, a list several."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple | set | frozenset):
        raise ValueError(f"{setting} must be a zone name or a list of them, not {value!r}")
    zones: list[str] = []
    for item in items:
        if not isinstance(item, str) or not item.strip(" ."):
            raise ValueError(f"{setting}: invalid zone {item!r}")
        zone = item.strip().strip(".").lower()
        if zone not in zones:
            zones.append(zone)
    return tuple(zones)


def parse_networks(value: Any, setting: str) -> tuple[Network, ...]:
    """Addresses and networks (``'127.0.0.255'``, ``'192.0.2.0/24'``) as networks."""
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list | tuple | set | frozenset):
        raise ValueError(f"{setting} must be a list of addresses or networks, not {value!r}")
    try:
        return tuple(ipaddress.ip_network(str(item), strict=False) for item in items)
    except ValueError as exc:
        raise ValueError(f"{setting}: {exc}") from None


def in_networks(address: str | IPAddress, networks: Sequence[Network]) -> bool:
    """True if ``address`` lies in one of ``networks``."""
    try:
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    except ValueError:
        return False
    return any(ip.version == net.version and ip in net for net in networks)


class WhitelistDnswl(Filter):
    """Whitelists clients listed in DNSWL zones."""

    whitelist = True
    defaults = {"dnswl_zone": ["list.dnswl.org"], "ipv6": True, "ignore_answers": []}

    zones: tuple[str, ...] = ()
    ignore: tuple[Network, ...] = ()
    ipv6: bool = True

    async def start(self) -> None:
        self.zones = parse_zones(self.settings["dnswl_zone"], "dnswl_zone")
        self.ignore = parse_networks(self.settings["ignore_answers"], "ignore_answers")
        self.ipv6 = bool(self.settings["ipv6"])
        # A missing aiodns or a bad [dns] section stops the configuration from loading.
        await dns_resolver(self.ctx)

    def _address(self, message: Message) -> IPAddress | None:
        ip = message.client_ip
        if ip is None or (ip.version == 6 and not self.ipv6):
            return None
        return ip

    def dns_queries(self, message: Message, ctx: Context) -> list[Query]:
        """The lookups :meth:`check` will make, for prefetching."""
        ip = self._address(message)
        return [] if ip is None else [(list_name(ip, zone), "A") for zone in self.zones]

    async def check(self, message: Message, ctx: Context) -> Decision:
        ip = self._address(message)
        if ip is None or not self.zones:
            return CONTINUE
        resolver = await dns_resolver(ctx)
        futures = [resolver.submit(list_name(ip, zone), "A") for zone in self.zones]
        results = await asyncio.gather(*futures, return_exceptions=True)
        failed: DnsError | None = None
        for zone, result in zip(self.zones, results, strict=True):
            if isinstance(result, DnsError):
                failed = failed or result
                continue
            if isinstance(result, BaseException):
                raise result
            listed = [a for a in result if not in_networks(a, self.ignore)]
            if listed:
                ctx.log.info("%s is listed in %s (%s)", ip, zone, ", ".join(listed))
                return Decision.accept()
            if result:
                ctx.log.debug("%s: answers %s from %s ignored", ip, result, zone)
        if failed is not None:
            raise failed
        return CONTINUE
