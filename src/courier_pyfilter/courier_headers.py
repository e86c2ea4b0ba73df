"""Verdicts Courier's own SMTP server wrote into a message's header (pure parsing).

Courier's ``submit`` (run by esmtpd for every message it receives) records some of its
checks as header fields at the top of the data file, where the client cannot write:

* ``Received-SPF:`` fields **above** its ``Received:`` field, one per SPF check enabled in
  ``bofh`` (``BOFHSPFHELO``, ``BOFHSPFMAILFROM``), in this form (Courier 1.x,
  ``courier/submit.C``)::

      Received-SPF: pass (Address passes the Sender Policy Framework)
        SPF=MAILFROM;
        sender=user@example.com;
        remoteip=::ffff:192.0.2.1;
        remotehost=mail.example.com;
        helo=mail.example.com;
        receiver=mx.example.org;

  The result word is one of ``pass fail softfail neutral none error unknown``
  (``error`` is RFC 7208's ``temperror``, ``unknown`` its ``permerror``).  The comment
  in parentheses can hold text of the checked domain's choosing (its ``exp=``
  explanation), so the identity is read only from the continuation line that starts
  with ``SPF=``, never from the comment.  The ``SPF=FROM`` check (``BOFHSPFFROM``) is
  written below the client's own fields and cannot be told apart from a forged one: it
  is ignored.
* ``Authentication-Results: <me>; dnswl=pass dns.zone=<zone> ...`` directly **below**
  its ``Received:`` field when a ``BLACKLISTS`` ``allow`` entry matched.

These functions take the header fields in order, as ``(name, raw value)`` pairs
(``(await message.headers()).raw_items()``), raw values keeping their line folding.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = [
    "COURIER_SPF_RESULTS",
    "authserv_ids",
    "courier_dnswl_zones",
    "courier_spf_result",
    "courier_spf_results",
]

COURIER_SPF_RESULTS = {
    "pass": "pass",
    "fail": "fail",
    "softfail": "softfail",
    "neutral": "neutral",
    "none": "none",
    "error": "temperror",
    "unknown": "permerror",
}
"""Courier's SPF result words and the RFC 7208 result each one means."""

_SPF_RESULT = re.compile(r"\s*([A-Za-z]+)")
_SPF_IDENTITY = re.compile(r"SPF=([A-Za-z]+)\s*;")
_DNSWL_PASS = re.compile(r"\bdnswl\s*=\s*pass\b[^;]*?\bdns\.zone\s*=\s*([^\s;]+)", re.IGNORECASE)


def courier_spf_results(fields: Iterable[tuple[str, str]]) -> dict[str, str]:
    """SPF results Courier's esmtpd recorded for this message: identity -> result.

    ``fields`` are the header fields in order.  Only ``Received-SPF:`` fields above the
    first ``Received:`` field are read (identities upper-cased, Courier's result words
    lower-cased, e.g. ``{"MAILFROM": "pass", "HELO": "none"}``); the identity comes from
    the ``SPF=...;`` line that follows Courier's comment.  Without a ``Received:`` field
    nothing is trusted: ``{}``.
    """
    found: dict[str, str] = {}
    for name, value in fields:
        lname = name.strip().lower()
        if lname == "received":
            return found
        if lname != "received-spf":
            continue
        first, *rest = value.splitlines()
        result = _SPF_RESULT.match(first)
        identity = next(
            (m for m in (_SPF_IDENTITY.match(line.strip()) for line in rest) if m), None
        )
        if result and identity:
            found.setdefault(identity.group(1).upper(), result.group(1).lower())
    return {}


def courier_spf_result(fields: Iterable[tuple[str, str]], identity: str) -> str | None:
    """The RFC 7208 result of Courier's SPF check of ``identity`` (``MAILFROM`` or
    ``HELO``): ``pass``, ``fail``, ..., ``temperror``, ``permerror``; None when Courier
    recorded none (or a word it does not write)."""
    word = courier_spf_results(fields).get(identity.upper())
    return None if word is None else COURIER_SPF_RESULTS.get(word)


def courier_dnswl_zones(
    fields: Iterable[tuple[str, str]], authserv_ids: Iterable[str]
) -> list[str]:
    """DNS whitelist zones Courier's esmtpd found the client in, from its header.

    When a ``BLACKLISTS`` entry of type ``allow`` matches, Courier adds
    ``Authentication-Results: <me>; dnswl=pass dns.zone=<zone> ...`` directly below its
    own ``Received:`` field.  Only that field is read, and only when its authserv-id is
    one of ``authserv_ids`` (this server's names).  A client can forge such a field unless
    esmtpd runs with ``ALLOW_EXCLUSIVE=1`` (which renames client-supplied ones).
    """
    ids = {i.strip().lower() for i in authserv_ids if i.strip()}
    after_received = False
    for name, value in fields:
        lname = name.strip().lower()
        if not after_received:
            after_received = lname == "received"
            continue
        if lname != "authentication-results":
            return []
        authserv, sep, rest = " ".join(value.split()).partition(";")
        words = authserv.split()
        if not sep or not words or words[0].lower() not in ids:
            return []
        return _DNSWL_PASS.findall(rest)
    return []


def authserv_ids(me: str) -> list[str]:
    """The authserv-ids Courier may write for a server called ``me`` (its ``me`` file):
    the name as written and its A-label (IDNA) form."""
    ids = [me]
    try:
        ids.append(me.encode("idna").decode("ascii"))
    except UnicodeError:
        pass
    return ids
