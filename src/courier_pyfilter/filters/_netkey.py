"""Pure helpers shared by the stateful filters: client network keys, digests, settings.

Nothing here touches the store or the message files, so everything is cheap to test.

Network text
    The original courier-pythonfilter names a client's network by plain text: for IPv4
    the first three octets (``192.0.2``), for IPv6 the first three groups of the
    *exploded* form, leading zeros kept (``2001:0db8:0001``).  :func:`network_text`
    returns exactly that for the default sizes (IPv4 /24, IPv6 /48), so keys computed
    from it match the ones the original stored.  Other sizes give CIDR notation
    (``192.0.0.0/22``), which can never collide with the original's form.

Digests
    The original keys its databases by the hex MD5 of concatenated strings
    (:func:`md5_key`).  MD5 is used only as a stable, compact identifier here, never for
    security.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "DEFAULT_IPV4_PREFIX",
    "DEFAULT_IPV6_PREFIX",
    "IPAddress",
    "format_wait",
    "md5_key",
    "network_text",
    "setting_bool",
    "setting_choice",
    "setting_int",
    "setting_seconds",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

DEFAULT_IPV4_PREFIX = 24
"""The original's IPv4 network size: the first three octets."""
DEFAULT_IPV6_PREFIX = 48
"""The original's IPv6 network size: the first three 16-bit groups."""


def network_text(
    ip: IPAddress,
    ipv4_prefix: int = DEFAULT_IPV4_PREFIX,
    ipv6_prefix: int = DEFAULT_IPV6_PREFIX,
) -> str:
    """The text naming ``ip``'s network, as used in greylist and ratelimit keys.

    With the default prefix lengths this is the original's form (``192.0.2``,
    ``2001:0db8:0001``); any other length gives the network in CIDR notation.

    >>> network_text(ipaddress.ip_address("192.0.2.77"))
    '192.0.2'
    >>> network_text(ipaddress.ip_address("2001:db8:1::25"))
    '2001:0db8:0001'
    >>> network_text(ipaddress.ip_address("192.0.2.77"), ipv4_prefix=22)
    '192.0.0.0/22'
    """
    if ip.version == 4:
        if ipv4_prefix == DEFAULT_IPV4_PREFIX:
            return ip.exploded.rsplit(".", 1)[0]
        return str(ipaddress.ip_network((ip, ipv4_prefix), strict=False))
    if ipv6_prefix == DEFAULT_IPV6_PREFIX:
        return ":".join(ip.exploded.split(":")[:3])
    return str(ipaddress.ip_network((ip, ipv6_prefix), strict=False))


def md5_key(*parts: str) -> str:
    """Hex MD5 of the concatenated ``parts`` (UTF-8), the original's key format.

    Undecodable bytes that the control-file reader kept as surrogate escapes are hashed
    as the original bytes, so this never raises.

    >>> md5_key("a@example.com", "b@example.net", "192.0.2")
    '0dea65a588950e1f11a7490267e6e637'
    """
    data = "".join(parts).encode("utf-8", "surrogateescape")
    return hashlib.md5(data, usedforsecurity=False).hexdigest()


def format_wait(seconds: float) -> str:
    """A wait as ``HH:MM:SS``, fractions of a second dropped (``300`` -> ``00:05:00``).

    The original formatted the wait as a UTC time of day, which wraps to ``00`` hours
    after a day; here the hours keep counting (``25:00:00``).  The two agree for every
    wait shorter than a day, i.e. for every setting under which a triplet can pass at
    all (a pending triplet expires after ``senders_not_passed_ttl``, one day).
    """
    total = max(0, math.floor(seconds))
    hours, rest = divmod(total, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}"


# -- settings ----------------------------------------------------------------------------


def setting_seconds(settings: Mapping[str, Any], name: str, section: str) -> float:
    """A positive, finite number of seconds from ``settings``; ValueError otherwise."""
    value = settings.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"[{section}] {name} must be a number of seconds, not {value!r}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"[{section}] {name} must be positive, not {value!r}")
    return float(value)


def setting_int(
    settings: Mapping[str, Any], name: str, section: str, *, minimum: int, maximum: int | None
) -> int:
    """An integer setting within ``minimum``..``maximum``; ValueError otherwise."""
    value = settings.get(name)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"[{section}] {name} must be a whole number, not {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        upper = "" if maximum is None else f" and at most {maximum}"
        raise ValueError(f"[{section}] {name} must be at least {minimum}{upper}, not {value}")
    return value


def setting_bool(settings: Mapping[str, Any], name: str, section: str) -> bool:
    """A ``True``/``False`` setting (``0``/``1`` accepted too); ValueError otherwise."""
    value = settings.get(name)
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    raise ValueError(f"[{section}] {name} must be True or False, not {value!r}")


def setting_choice(
    settings: Mapping[str, Any], name: str, section: str, choices: tuple[str, ...]
) -> str:
    """One of ``choices`` (a string setting); ValueError otherwise."""
    value = settings.get(name)
    if value not in choices:
        allowed = ", ".join(repr(c) for c in choices)
        raise ValueError(f"[{section}] {name} must be one of {allowed}, not {value!r}")
    return str(value)
