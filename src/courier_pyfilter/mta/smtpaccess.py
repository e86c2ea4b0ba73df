"""Courier's SMTP access table (``smtpaccess``): lookup semantics, sans I/O.

The table maps address *prefixes* to a value such as ``allow,RELAYCLIENT`` or
``allow,BLOCK=550 Go away``.  Keys are written the way Courier's ``couriertcpd`` looks
them up:

* IPv4: ``1.2.3.4``, ``1.2.3``, ``1.2``, ``1`` (whole octets only);
* IPv6: a leading ``:`` and zero-padded lowercase groups,
  ``:2001:0db8:0000:0000:0000:0000:0000:0001`` down to ``:2001``;
* an IPv4-mapped IPv6 address (``::ffff:1.2.3.4``) is looked up in the IPv4 form.

Only the most specific key found is used (its value is *not* merged with shorter
prefixes).  With ``include_wildcard`` the key ``*`` is tried last, as couriertcpd does.
The functions here work on any :class:`~collections.abc.Mapping` from key to value;
:class:`~courier_pyfilter.mta.CourierConfig` supplies the mapping from
``smtpaccess.dat`` or the text files.

Differences from courier-pythonfilter, all deliberate: IPv4-mapped IPv6 addresses are
looked up as IPv4; an unparsable address raises :class:`InvalidAddressError` instead of
being logged and ignored; value items are split on commas outside double quotes and one
pair of surrounding double quotes is removed from a value (``BLOCK="550 No"`` gives
``550 No``), which is how couriertcpd reads them.
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Mapping

from .errors import InvalidAddressError
from .textsrc import courier_ipv6_key

__all__ = [
    "BLOCK",
    "RELAYCLIENT",
    "access_var",
    "lookup",
    "normalize_key",
    "smtpaccess_keys",
    "split_value",
    "value_block",
    "value_is_relayed",
    "value_is_whiteblocked",
]

_log = logging.getLogger(__name__)

RELAYCLIENT = "RELAYCLIENT"
"""The variable that lets a client relay."""

BLOCK = "BLOCK"
"""The variable whose non-empty value makes Courier reject all mail of a connection."""


def smtpaccess_keys(ip: str, *, include_wildcard: bool = False) -> list[str]:
    """Return the keys to try for *ip*, most specific first.

    ``"1.2.3.4"`` gives ``["1.2.3.4", "1.2.3", "1.2", "1"]``; an IPv6 address gives its
    eight expanded groups with a leading ``:``, then seven, ... down to one.  Surrounding
    brackets (``[::1]``) and a zone suffix (``%eth0``) are accepted.  Raises
    :class:`InvalidAddressError` when *ip* is not an IP address.
    """
    text = ip.strip()
    if text.startswith("[") and text.endswith("]"):
        text = text[1:-1]
    text = text.split("%", 1)[0]
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        raise InvalidAddressError(f"couldn't break {ip!r} into parts") from None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    keys: list[str]
    if isinstance(address, ipaddress.IPv4Address):
        octets = str(address).split(".")
        keys = [".".join(octets[:n]) for n in range(4, 0, -1)]
    else:
        keys = [courier_ipv6_key(address, n) for n in range(8, 0, -1)]
    if include_wildcard:
        keys.append("*")
    return keys


def lookup(table: Mapping[str, str], ip: str, *, include_wildcard: bool = False) -> str | None:
    """Return the value of the most specific entry of *table* for *ip*, or ``None``."""
    for key in smtpaccess_keys(ip, include_wildcard=include_wildcard):
        value = table.get(key)
        if value is not None:
            return value
    return None


def split_value(value: str) -> list[str]:
    """Split an access value on commas that are not inside double quotes."""
    items: list[str] = []
    current: list[str] = []
    quoted = False
    for char in value:
        if char == '"':
            quoted = not quoted
        if char == "," and not quoted:
            items.append("".join(current))
            current = []
        else:
            current.append(char)
    items.append("".join(current))
    return items


def _unquote(text: str) -> str:
    if len(text) >= 2 and text.startswith('"') and text.endswith('"'):
        return text[1:-1]
    return text


def access_var(key: str, value: str | None) -> str | None:
    """Return variable *key* of the access *value*: ``''`` if set bare, its text, or ``None``.

    The first item that is exactly *key* or starts with ``key=`` decides.  A ``None``
    *value* (address not listed) gives ``None``.
    """
    if value is None:
        return None
    prefix = key + "="
    for item in split_value(value):
        if item == key:
            return ""
        if item.startswith(prefix):
            return _unquote(item[len(prefix) :])
    return None


def value_is_relayed(value: str | None) -> bool:
    """Return whether the access *value* sets ``RELAYCLIENT`` (to anything, even empty)."""
    return access_var(RELAYCLIENT, value) is not None


def value_block(value: str | None) -> str | None:
    """Return the ``BLOCK`` text of the access *value*: ``None``, ``''`` or the message."""
    return access_var(BLOCK, value)


def value_is_whiteblocked(value: str | None) -> bool:
    """Return whether the access *value* sets ``BLOCK`` to the empty string (a whitelist)."""
    return value_block(value) == ""


def normalize_key(key: str) -> str:
    """Rewrite an IPv6 key written in ordinary notation into Courier's key form.

    ``::1`` and ``:::1`` become ``:0000:0000:0000:0000:0000:0000:0000:0001``, and a key
    with upper-case or unpadded groups (``:2001:DB8``) becomes ``:2001:0db8``.  Other
    keys are returned unchanged.  Courier itself does *not* do this: such keys never
    match in couriertcpd, so only use it when reading text sources deliberately.
    """
    if ":" not in key or key == "*":
        return key
    body = key[1:] if key.startswith(":") and not key.startswith("::") else key
    if body.startswith(":::"):
        body = body[1:]
    try:
        address = ipaddress.IPv6Address(body)
    except ValueError:
        pass
    else:
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return courier_ipv6_key(address)
    groups = body.split(":")
    if 0 < len(groups) < 8 and all(
        1 <= len(g) <= 4 and all(c in "0123456789abcdefABCDEF" for c in g) for g in groups
    ):
        return ":" + ":".join(g.lower().zfill(4) for g in groups)
    return key
