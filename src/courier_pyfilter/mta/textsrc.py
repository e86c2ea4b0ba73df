"""Courier's plain-text ``makedat`` sources (what ``makesmtpaccess`` & co. compile).

Format, as verified against Courier 1.0.16's ``makedatprog``:

* one record per line; the key runs up to the **first TAB**, the value is everything
  after it (kept verbatim, including further tabs and trailing blanks); a line without a
  TAB is a key with the value ``"1"``;
* empty lines, lines starting with ``#`` and lines with an empty key are ignored;
* a line consisting of a single ``.`` ends the input;
* a key that appears twice makes Courier refuse to build the ``.dat`` file; here the
  first occurrence wins and a warning is logged.

With ``cidr=True`` (``makesmtpaccess`` uses ``makedat -cidr``) a line that starts with an
address range in CIDR (``10.0.0.0/8``) or start-end (``1.2.3.4-1.2.3.9``) notation,
followed by blanks and a value, is expanded into the octet-aligned (IPv4) or 16-bit-group
aligned (IPv6, with the leading ``:``) prefixes Courier stores, like the Net::CIDR module
does for Courier.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import re
from collections.abc import Iterable, Iterator

from .cache import source_files

__all__ = [
    "MAX_CIDR_EXPANSION",
    "cidr_keys",
    "courier_ipv6_key",
    "iter_makedat_records",
    "parse_makedat",
    "read_source_text",
]

_log = logging.getLogger(__name__)

MAX_CIDR_EXPANSION = 65536
"""Most keys one CIDR/range line may expand to; larger lines are kept verbatim."""

_CIDR_LINE = re.compile(r"^([a-fA-F0-9:.]+[-/][a-fA-F0-9:.]+)\s+(.*)$")

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


def courier_ipv6_key(address: ipaddress.IPv6Address, groups: int = 8) -> str:
    """Return Courier's access-file key of the first *groups* 16-bit groups of *address*.

    Example: ``::1`` gives ``:0000:0000:0000:0000:0000:0000:0000:0001``.
    """
    return ":" + ":".join(address.exploded.split(":")[:groups])


def _network_keys(network: IPNetwork) -> Iterator[str]:
    step = 8 if isinstance(network, ipaddress.IPv4Network) else 16
    aligned = -(-network.prefixlen // step) * step  # round up to the boundary
    if aligned == 0:
        aligned = step
    for subnet in network.subnets(new_prefix=aligned):
        units = aligned // step
        if isinstance(subnet, ipaddress.IPv4Network):
            yield ".".join(str(subnet.network_address).split(".")[:units])
        else:
            yield courier_ipv6_key(subnet.network_address, units)


def cidr_keys(spec: str) -> list[str] | None:
    """Expand ``a.b.c.d/n`` or ``start-end`` into Courier access-file keys.

    Returns ``None`` when *spec* is not a valid network or range (Courier then keeps the
    line as it is), or when it would expand to more than :data:`MAX_CIDR_EXPANSION` keys.
    """
    try:
        if "/" in spec:
            networks: Iterable[IPNetwork] = [ipaddress.ip_network(spec, strict=False)]
        else:
            first_text, _, last_text = spec.partition("-")
            first = ipaddress.ip_address(first_text)
            last = ipaddress.ip_address(last_text)
            if first.version != last.version or first > last:  # type: ignore[operator,unused-ignore]
                return None
            networks = ipaddress.summarize_address_range(first, last)  # type: ignore[type-var,unused-ignore]
    except ValueError:
        return None
    keys: list[str] = []
    for network in networks:
        step = 8 if network.version == 4 else 16
        aligned = max(step, -(-network.prefixlen // step) * step)
        if len(keys) + (1 << (aligned - network.prefixlen)) > MAX_CIDR_EXPANSION:
            _log.warning("not expanding %r: more than %d keys", spec, MAX_CIDR_EXPANSION)
            return None
        keys.extend(_network_keys(network))
    return keys


def iter_makedat_records(text: str, *, cidr: bool = False) -> Iterator[tuple[str, str]]:
    """Yield ``(key, value)`` in file order, exactly as ``makedat`` would store them."""
    for line in text.split("\n"):
        if line == ".":
            return
        if not line or line.startswith("#"):
            continue
        if cidr:
            match = _CIDR_LINE.match(line)
            if match:
                keys = cidr_keys(match.group(1))
                if keys is not None:
                    for key in keys:
                        yield key, match.group(2)
                    continue
        key, tab, value = line.partition("\t")
        if not key:
            continue
        yield key, value if tab else "1"


def parse_makedat(text: str, *, cidr: bool = False, origin: str = "") -> dict[str, str]:
    """Parse a ``makedat`` source into a dictionary; the first of duplicate keys wins."""
    result: dict[str, str] = {}
    for key, value in iter_makedat_records(text, cidr=cidr):
        if key in result:
            _log.warning(
                "%sduplicate key %r ignored (Courier's makedat refuses duplicates)",
                f"{origin}: " if origin else "",
                key,
            )
            continue
        result[key] = value
    return result


def read_source_text(path: str | os.PathLike[str]) -> str | None:
    """Read a text source: a file, or the concatenation of a directory's files.

    Returns ``None`` when *path* does not exist or cannot be read.  Like Courier's
    wrapper, a directory's files are concatenated and each is read as text (UTF-8 with
    undecodable bytes replaced).  A missing final newline of one file does not merge
    its last line with the next file's first line.
    """
    try:
        if os.path.isdir(path):
            chunks = []
            for member in source_files(path):
                try:
                    with open(member, "rb") as handle:
                        chunk = handle.read().decode("utf-8", "replace")
                except OSError as exc:
                    _log.warning("cannot read %s: %s", member, exc)
                    continue
                if chunk and not chunk.endswith("\n"):
                    chunk += "\n"
                chunks.append(chunk)
            return "".join(chunks)
        with open(path, "rb") as handle:
            return handle.read().decode("utf-8", "replace")
    except OSError:
        return None
