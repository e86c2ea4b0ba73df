"""SPF (RFC 7208): parsing of records and macros, and an asynchronous ``check_host()``.

Two layers:

* **Parsing, without I/O.**  :func:`parse_record` turns the text of a ``v=spf1`` record
  into a :class:`Record` of :class:`Mechanism` terms and modifiers;
  :func:`parse_macro_string` / :func:`parse_domain_spec` parse macro strings and
  :func:`expand` expands them with :class:`MacroValues`.  Any syntax error raises
  :class:`SpfError` (and nothing else, whatever the input).
* **Evaluation.**  :func:`check_host` evaluates the policy of a sender's domain for a
  client address through a resolver with the interface of
  :class:`courier_pyfilter.dns.Resolver` (only its ``query(name, qtype)`` coroutine is
  used), and returns an :class:`SpfVerdict`::

      from courier_pyfilter.dns import dns_resolver
      from courier_pyfilter.spf import check_host

      resolver = await dns_resolver(ctx)
      verdict = await check_host("192.0.2.1", "user@example.com", "mail.example.com", resolver)
      verdict.result        # SpfResult.PASS, FAIL, SOFTFAIL, NEUTRAL, NONE, PERMERROR, TEMPERROR
      verdict.explanation   # for FAIL: the domain's exp= text (or the default explanation)
      verdict.reason        # what decided, for the log

Everything of RFC 7208 is implemented: the mechanisms ``all include a mx ptr ip4 ip6
exists``, the modifiers ``redirect`` and ``exp`` (unknown modifiers are syntax-checked
and ignored), the limit of 10 DNS-querying terms and of 2 void lookups (section 4.6.4),
at most 10 MX names (more is a permerror) and 10 PTR names (the rest ignored), macro
expansion with transformers, delimiters and URL escaping (section 7), IPv4-mapped IPv6
clients evaluated as IPv4, the HELO identity for the null sender (``postmaster@<helo>``,
section 2.4), several SPF records giving permerror, and an overall deadline (RFC 7208
section 4.6.4 asks for at least 20 seconds; the default is 20).

Choices where the RFC leaves room:

* A target name that cannot exist (an empty label, a label over 63 bytes, as a macro can
  produce) is looked up as nothing: the term does not match (the resolver answers
  ``()`` without asking).  The RFC calls this case undefined.
* ``%{i}`` of an IPv6 address gives upper-case nibbles (``...E.B.A.B.E.F.A.C``), as the
  RFC 7208 test suite expects; DNS names are case-insensitive, so lookups are the same.
* The explanation (``exp=``) is fetched only for a final ``fail``, does not count
  against the lookup limits, and any problem with it gives the default explanation.
"""

from __future__ import annotations

import asyncio
import enum
import ipaddress
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, Protocol

from .dns import DnsError

__all__ = [
    "DEFAULT_EXPLANATION",
    "DEFAULT_TIMEOUT",
    "MAX_DNS_LOOKUPS",
    "MAX_NAMES",
    "MAX_VOID_LOOKUPS",
    "Macro",
    "MacroString",
    "MacroValues",
    "Mechanism",
    "Modifier",
    "Record",
    "SpfError",
    "SpfResolver",
    "SpfResult",
    "SpfVerdict",
    "check_host",
    "expand",
    "expand_domain",
    "is_spf_record",
    "parse_domain_spec",
    "parse_macro_string",
    "parse_record",
    "policy_domain",
    "spf_identity",
]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

MAX_DNS_LOOKUPS = 10
"""Terms that query DNS (include, a, mx, ptr, exists, redirect) allowed per check."""
MAX_VOID_LOOKUPS = 2
"""Lookups answering "no such name" or "no records" allowed per check."""
MAX_NAMES = 10
"""MX names looked up per ``mx`` term (more: permerror) and PTR names per ``ptr``."""
DEFAULT_TIMEOUT = 20.0
"""Seconds one :func:`check_host` may take (RFC 7208 section 4.6.4: at least 20)."""
DEFAULT_EXPLANATION = "%{o} does not designate %{c} as a permitted sender"
"""The explanation of a ``fail`` when the domain gives none (a macro string)."""


class SpfError(ValueError):
    """A syntax error in an SPF record, a macro string or a domain-spec.

    During an evaluation it becomes the result ``permerror``.
    """


class SpfResult(enum.StrEnum):
    """The results of RFC 7208 section 2.6."""

    PASS = "pass"
    FAIL = "fail"
    SOFTFAIL = "softfail"
    NEUTRAL = "neutral"
    NONE = "none"
    PERMERROR = "permerror"
    TEMPERROR = "temperror"


QUALIFIERS: dict[str, SpfResult] = {
    "+": SpfResult.PASS,
    "-": SpfResult.FAIL,
    "~": SpfResult.SOFTFAIL,
    "?": SpfResult.NEUTRAL,
}
MECHANISMS = frozenset({"all", "include", "a", "mx", "ptr", "ip4", "ip6", "exists"})

# -- macros (section 7) -------------------------------------------------------------------

_MACRO_LETTERS = frozenset("slodiphcrtv")
_EXPLANATION_ONLY = frozenset("crt")
_DELIMITERS = ".-+,/_="
_MACRO_BODY = re.compile(r"([A-Za-z])([0-9]*)([rR]?)([.\-+,/_=]*)")
_TOPLABEL = re.compile(r"[A-Za-z0-9]*[A-Za-z][A-Za-z0-9]*|[A-Za-z0-9]+-[A-Za-z0-9-]*[A-Za-z0-9]")


@dataclass(frozen=True, slots=True)
class Macro:
    """One ``%{...}`` macro: letter, transformers and delimiters."""

    letter: str
    """The macro letter, lower-case (``s l o d i p h c r t v``)."""
    digits: int | None = None
    """Keep this many right-hand parts (None: all)."""
    reverse: bool = False
    """Reverse the parts (the ``r`` transformer)."""
    delimiters: str = ""
    """Characters to split the value on (empty: ``.``)."""
    escape: bool = False
    """URL-escape the result (the letter was upper-case)."""

    def __str__(self) -> str:
        letter = self.letter.upper() if self.escape else self.letter
        digits = "" if self.digits is None else str(self.digits)
        return f"%{{{letter}{digits}{'r' if self.reverse else ''}{self.delimiters}}}"


@dataclass(frozen=True, slots=True)
class MacroString:
    """A parsed macro string: literal text and :class:`Macro` parts, in order."""

    parts: tuple[str | Macro, ...]
    text: str
    """The string as written."""

    @property
    def letters(self) -> frozenset[str]:
        """The macro letters used (lower-case)."""
        return frozenset(p.letter for p in self.parts if isinstance(p, Macro))

    def __str__(self) -> str:
        return self.text


def _macro(body: str, explanation: bool, text: str) -> Macro:
    match = _MACRO_BODY.fullmatch(body)
    if match is None:
        raise SpfError(f"invalid macro %{{{body}}} in {text!r}")
    letter, digits, reverse, delimiters = match.groups()
    lower = letter.lower()
    if lower not in _MACRO_LETTERS:
        raise SpfError(f"unknown macro letter {letter!r} in {text!r}")
    if lower in _EXPLANATION_ONLY and not explanation:
        raise SpfError(f"macro %{{{letter}}} is only allowed in explanations: {text!r}")
    count: int | None = None
    if digits:
        significant = digits.lstrip("0")
        if not significant:
            raise SpfError(f"macro %{{{body}}} keeps zero parts in {text!r}")
        # more parts than a name can have means "all of them"
        count = int(significant) if len(significant) <= 9 else 10**9
    return Macro(lower, count, bool(reverse), delimiters, letter.isupper())


def _tokens(text: str, explanation: bool) -> list[tuple[bool, str | Macro]]:
    """``(is_macro_expand, value)`` tokens; literal runs are merged."""
    tokens: list[tuple[bool, str | Macro]] = []
    literal: list[str] = []

    def flush() -> None:
        if literal:
            tokens.append((False, "".join(literal)))
            literal.clear()

    i, n = 0, len(text)
    while i < n:
        ch = text[i]
        if ch == "%":
            nxt = text[i + 1] if i + 1 < n else ""
            flush()
            if nxt in ("%", "_", "-"):
                tokens.append((True, {"%": "%", "_": " ", "-": "%20"}[nxt]))
                i += 2
                continue
            if nxt != "{":
                raise SpfError(f"'%' must be followed by '{{', '%', '_' or '-' in {text!r}")
            end = text.find("}", i + 2)
            if end < 0:
                raise SpfError(f"unterminated macro in {text!r}")
            tokens.append((True, _macro(text[i + 2 : end], explanation, text)))
            i = end + 1
            continue
        if not ("!" <= ch <= "~" or (explanation and ch == " ")):
            raise SpfError(f"invalid character {ch!r} in {text!r}")
        literal.append(ch)
        i += 1
    flush()
    return tokens


def _macro_string(tokens: Sequence[tuple[bool, str | Macro]], text: str) -> MacroString:
    parts: list[str | Macro] = []
    for _, value in tokens:
        if isinstance(value, str) and parts and isinstance(parts[-1], str):
            parts[-1] += value
        else:
            parts.append(value)
    return MacroString(tuple(parts), text)


def parse_macro_string(text: str, *, explanation: bool = False) -> MacroString:
    """Parse a macro string (RFC 7208 section 7.1).

    With ``explanation=True`` it is an explanation text: spaces and the macros ``c``,
    ``r`` and ``t`` are allowed.  Raises :class:`SpfError` on any syntax error (a bad
    ``%`` sequence, an unknown macro letter, a character outside printable ASCII).

    >>> parse_macro_string("%{ir}.%{v}._spf.%{d2}").letters == {"i", "v", "d"}
    True
    """
    return _macro_string(_tokens(text, explanation), text)


def parse_domain_spec(text: str) -> MacroString:
    """Parse a domain-spec: a macro string ending in a macro or in ``.<toplabel>[.]``.

    Raises :class:`SpfError` for an empty or malformed domain-spec (``foo``,
    ``example.123``, ``example.com:8080``, ...).
    """
    if not text:
        raise SpfError("empty domain-spec")
    tokens = _tokens(text, False)
    last_is_macro, last = tokens[-1]
    if not last_is_macro:
        assert isinstance(last, str)
        tail = last[:-1] if last.endswith(".") else last
        _, dot, toplabel = tail.rpartition(".")
        if not dot or _TOPLABEL.fullmatch(toplabel) is None:
            raise SpfError(f"invalid domain-spec {text!r}: it must end in a valid top label")
    return _macro_string(tokens, text)


@dataclass(frozen=True, slots=True)
class MacroValues:
    """The values macros expand to (RFC 7208 section 7.3)."""

    sender: str
    """``s``: the sender, ``local@domain``."""
    local: str
    """``l``: the sender's local part."""
    sender_domain: str
    """``o``: the sender's domain."""
    domain: str
    """``d``: the domain whose record is being evaluated."""
    ip: IPAddress
    """``i``, ``c``, ``v``: the client address (never IPv4-mapped)."""
    helo: str
    """``h``: the HELO/EHLO name."""
    validated: str = "unknown"
    """``p``: the client's validated host name."""
    receiver: str = "unknown"
    """``r``: the name of the checking host."""
    timestamp: int = 0
    """``t``: seconds since the epoch."""

    def value(self, letter: str) -> str:
        """The raw value of a (lower-case) macro letter."""
        ip = self.ip
        if letter == "s":
            return self.sender
        if letter == "l":
            return self.local
        if letter == "o":
            return self.sender_domain
        if letter == "d":
            return self.domain
        if letter == "i":
            if ip.version == 4:
                return str(ip)
            return ".".join(ip.exploded.replace(":", "").upper())
        if letter == "c":
            return str(ip)
        if letter == "v":
            return "in-addr" if ip.version == 4 else "ip6"
        if letter == "h":
            return self.helo
        if letter == "p":
            return self.validated
        if letter == "r":
            return self.receiver
        if letter == "t":
            return str(self.timestamp)
        raise SpfError(f"unknown macro letter {letter!r}")


def _transform(value: str, macro: Macro) -> str:
    delimiters = macro.delimiters or "."
    parts = re.split("[" + re.escape(delimiters) + "]", value)
    if macro.reverse:
        parts.reverse()
    if macro.digits is not None and macro.digits < len(parts):
        parts = parts[-macro.digits :]
    result = ".".join(parts)
    if macro.escape:
        result = urllib.parse.quote(result, safe="-._~")
    return result


def expand(macro_string: MacroString, values: MacroValues) -> str:
    """Expand a parsed macro string (transformers, delimiters, URL escaping).

    >>> v = MacroValues("a-b@x.example", "a-b", "x.example", "x.example",
    ...                 ipaddress.ip_address("192.0.2.3"), "mx.x.example")
    >>> expand(parse_macro_string("%{ir}.%{l1r-}.%{d2}"), v)
    '3.2.0.192.a.x.example'
    """
    out: list[str] = []
    for part in macro_string.parts:
        out.append(part if isinstance(part, str) else _transform(values.value(part.letter), part))
    return "".join(out)


def expand_domain(macro_string: MacroString, values: MacroValues) -> str:
    """Expand a domain-spec into a name to look up.

    A trailing dot is dropped, and a name longer than 253 characters loses labels on the
    left until it fits (RFC 7208 section 7.3).
    """
    name = expand(macro_string, values)
    if name.endswith("."):
        name = name[:-1]
    while len(name) > 253 and "." in name:
        name = name.split(".", 1)[1]
    return name


# -- records (sections 4.5, 4.6, 5, 6) ------------------------------------------------------

_MODIFIER = re.compile(r"([A-Za-z][A-Za-z0-9_.\-]*)=(.*)", re.DOTALL)
_MECHANISM = re.compile(r"([+\-~?]?)([A-Za-z][A-Za-z0-9]*)(.*)", re.DOTALL)
_DUAL_CIDR = re.compile(r"(?:/([0-9]+))?(?://([0-9]+))?\Z")
_QNUM = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9][0-9]|[0-9])"
_IP4 = re.compile(rf"{_QNUM}(?:\.{_QNUM}){{3}}")
_IP6_CHARS = re.compile(r"[0-9A-Fa-f:.]+")


@dataclass(frozen=True, slots=True)
class Mechanism:
    """One mechanism of a record."""

    qualifier: str
    """``+``, ``-``, ``~`` or ``?``."""
    kind: str
    """``all include a mx ptr ip4 ip6 exists`` (lower-case)."""
    target: MacroString | None = None
    """The domain-spec (None: the current domain; always None for all/ip4/ip6)."""
    network: Network | None = None
    """The network of ``ip4``/``ip6``."""
    cidr4: int = 32
    """The IPv4 prefix length of ``a``/``mx``."""
    cidr6: int = 128
    """The IPv6 prefix length of ``a``/``mx``."""
    text: str = ""
    """The term as written."""

    @property
    def result(self) -> SpfResult:
        """The result when this mechanism matches."""
        return QUALIFIERS[self.qualifier]


@dataclass(frozen=True, slots=True)
class Modifier:
    """An unknown modifier (kept, syntax-checked, otherwise ignored)."""

    name: str
    value: MacroString
    text: str


@dataclass(frozen=True, slots=True)
class Record:
    """A parsed ``v=spf1`` record."""

    mechanisms: tuple[Mechanism, ...]
    redirect: MacroString | None
    explanation: MacroString | None
    modifiers: tuple[Modifier, ...]
    text: str


def is_spf_record(text: str) -> bool:
    """True if ``text`` is an SPF version 1 record: ``v=spf1`` (any case), then a space
    or the end (RFC 7208 section 4.5).

    >>> is_spf_record("v=spf1 -all"), is_spf_record("V=SPF1"), is_spf_record("v=spf10")
    (True, True, False)
    """
    prefix = text[:6]
    return prefix.isascii() and prefix.lower() == "v=spf1" and (len(text) == 6 or text[6] == " ")


def _cidr(text: str | None, maximum: int, term: str) -> int | None:
    if text is None:
        return None
    if (len(text) > 1 and text[0] == "0") or len(text) > 3 or int(text) > maximum:
        raise SpfError(f"invalid prefix length /{text} in {term!r}")
    return int(text)


def _parse_mechanism(term: str) -> Mechanism:
    match = _MECHANISM.fullmatch(term)
    if match is None:
        raise SpfError(f"unknown term {term!r}")
    qualifier, name, rest = match.groups()
    kind = name.lower()
    if kind not in MECHANISMS:
        raise SpfError(f"unknown mechanism {term!r}")
    qualifier = qualifier or "+"
    if kind == "all":
        if rest:
            raise SpfError(f"'all' takes no argument: {term!r}")
        return Mechanism(qualifier, kind, text=term)
    if kind in ("include", "exists"):
        if not rest.startswith(":"):
            raise SpfError(f"{kind!r} needs ':domain': {term!r}")
        return Mechanism(qualifier, kind, parse_domain_spec(rest[1:]), text=term)
    if kind == "ptr":
        if not rest:
            return Mechanism(qualifier, kind, text=term)
        if not rest.startswith(":"):
            raise SpfError(f"invalid 'ptr' term {term!r}")
        return Mechanism(qualifier, kind, parse_domain_spec(rest[1:]), text=term)
    if kind in ("a", "mx"):
        cidr = _DUAL_CIDR.search(rest)
        assert cidr is not None  # the pattern matches the empty end
        cidr4 = _cidr(cidr.group(1), 32, term)
        cidr6 = _cidr(cidr.group(2), 128, term)
        head = rest[: cidr.start()]
        target: MacroString | None = None
        if head:
            if not head.startswith(":"):
                raise SpfError(f"invalid {kind!r} term {term!r}")
            target = parse_domain_spec(head[1:])
        return Mechanism(
            qualifier,
            kind,
            target,
            cidr4=32 if cidr4 is None else cidr4,
            cidr6=128 if cidr6 is None else cidr6,
            text=term,
        )
    # ip4 / ip6
    if not rest.startswith(":"):
        raise SpfError(f"{kind!r} needs ':network': {term!r}")
    address, slash, length = rest[1:].partition("/")
    if slash and not length.isdigit():
        raise SpfError(f"invalid prefix length in {term!r}")
    network: Network
    if kind == "ip4":
        if _IP4.fullmatch(address) is None:
            raise SpfError(f"invalid IPv4 address in {term!r}")
        prefix = _cidr(length or None, 32, term)
        network = ipaddress.IPv4Network((address, 32 if prefix is None else prefix), strict=False)
    else:
        if _IP6_CHARS.fullmatch(address) is None:
            raise SpfError(f"invalid IPv6 address in {term!r}")
        try:
            ip6 = ipaddress.IPv6Address(address)
        except ValueError:
            raise SpfError(f"invalid IPv6 address in {term!r}") from None
        prefix = _cidr(length or None, 128, term)
        network = ipaddress.IPv6Network((ip6, 128 if prefix is None else prefix), strict=False)
    return Mechanism(qualifier, kind, network=network, text=term)


def parse_record(text: str) -> Record:
    """Parse an SPF record (``v=spf1 ...``); raises :class:`SpfError` on any error.

    The whole record is checked, so a syntax error anywhere is found before anything is
    evaluated (RFC 7208 section 4.6).  Terms are separated by spaces only; every other
    character must be printable ASCII.  ``redirect`` and ``exp`` may appear once each.

    >>> record = parse_record("v=spf1 a mx/24 ip4:192.0.2.0/24 include:_spf.example.com -all")
    >>> [m.kind for m in record.mechanisms]
    ['a', 'mx', 'ip4', 'include', 'all']
    """
    if not is_spf_record(text):
        raise SpfError(f"not an SPF record: {text[:40]!r}")
    mechanisms: list[Mechanism] = []
    modifiers: list[Modifier] = []
    redirect: MacroString | None = None
    explanation: MacroString | None = None
    for term in text[6:].split(" "):
        if not term:
            continue
        bad = next((ch for ch in term if not "!" <= ch <= "~"), None)
        if bad is not None:
            raise SpfError(f"invalid character {bad!r} in term {term!r}")
        modifier = _MODIFIER.fullmatch(term)
        if modifier is None:
            mechanisms.append(_parse_mechanism(term))
            continue
        name, value = modifier.group(1).lower(), modifier.group(2)
        if name == "redirect":
            if redirect is not None:
                raise SpfError("more than one 'redirect' modifier")
            redirect = parse_domain_spec(value)
        elif name == "exp":
            if explanation is not None:
                raise SpfError("more than one 'exp' modifier")
            explanation = parse_domain_spec(value)
        else:
            modifiers.append(Modifier(name, parse_macro_string(value), term))
    return Record(tuple(mechanisms), redirect, explanation, tuple(modifiers), text)


# -- identities and domains (sections 2.3, 2.4, 4.3) ----------------------------------------


def spf_identity(sender: str, helo: str) -> tuple[str, str, str, str]:
    """``(identity, sender, local_part, domain)`` checked for an envelope sender.

    The null sender (``""``) checks the HELO identity: ``postmaster@<helo>``.  A sender
    without local part (``@example.com``) or without ``@`` gets ``postmaster``.

    >>> spf_identity("", "mx.example.org")
    ('helo', 'postmaster@mx.example.org', 'postmaster', 'mx.example.org')
    >>> spf_identity("user@Example.COM", "x")
    ('mailfrom', 'user@Example.COM', 'user', 'Example.COM')
    """
    if not sender:
        return "helo", f"postmaster@{helo}", "postmaster", helo
    local, at, domain = sender.rpartition("@")
    if not at:
        local, domain = "", sender
    local = local or "postmaster"
    return "mailfrom", f"{local}@{domain}", local, domain


def policy_domain(domain: str) -> str | None:
    """The domain as looked up, or None when it cannot have a policy (result ``none``).

    A trailing dot is dropped and an internationalized name is converted to A-labels;
    None for a domain literal (``[192.0.2.1]``), a single label, an empty label, a label
    over 63 characters, a name over 253, or one with spaces or control characters
    (RFC 7208 section 4.3).
    """
    name = domain[:-1] if domain.endswith(".") else domain
    if not name or name.startswith("["):
        return None
    if not name.isascii():
        try:
            name = name.encode("idna").decode("ascii")
        except UnicodeError:
            return None
    if len(name) > 253 or any(not "!" <= ch <= "~" for ch in name):
        return None
    labels = name.split(".")
    if len(labels) < 2 or any(not 0 < len(label) <= 63 for label in labels):
        return None
    return name


def _client_ip(ip: str | IPAddress) -> IPAddress:
    if isinstance(ip, str):
        try:
            address: IPAddress = ipaddress.ip_address(ip.strip().strip("[]"))
        except ValueError:
            raise SpfError(f"invalid client address {ip!r}") from None
    else:
        address = ip
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def _host_name(name: str) -> str:
    name = name.lower()
    return name[:-1] if name.endswith(".") else name


# -- evaluation ---------------------------------------------------------------------------


class SpfResolver(Protocol):
    """What :func:`check_host` needs of a resolver (:class:`~courier_pyfilter.dns.Resolver`
    has it): ``()`` for NXDOMAIN/NODATA and for names that cannot exist,
    :class:`~courier_pyfilter.dns.DnsError` when there is no answer."""

    async def query(self, name: str, qtype: str) -> tuple[Any, ...]:
        """Values of type ``qtype`` (A, AAAA, TXT, MX, PTR) at ``name``."""
        ...


@dataclass(frozen=True, slots=True)
class SpfVerdict:
    """The outcome of :func:`check_host`."""

    result: SpfResult
    explanation: str = ""
    """For ``fail``: the domain's explanation (``exp=``) or the default one."""
    reason: str = ""
    """What decided the result, for logs (``example.com: -all matched``, ...)."""
    domain: str = ""
    """The domain whose policy was checked (the sender's or HELO domain)."""
    sender: str = ""
    """The identity checked: the sender, or ``postmaster@<helo>`` for the null sender."""
    identity: str = "mailfrom"
    """``mailfrom`` or ``helo`` (the null sender)."""
    mechanism: str = ""
    """The term that matched (``-all``, ``ip4:192.0.2.0/24``), if any."""
    lookups: int = 0
    """DNS-querying terms evaluated."""
    void_lookups: int = 0
    """Lookups that found nothing."""


class _Stop(Exception):
    """Ends the evaluation with ``permerror`` or ``temperror``."""

    def __init__(self, result: SpfResult, reason: str) -> None:
        super().__init__(reason)
        self.result = result
        self.reason = reason


@dataclass(slots=True)
class _Outcome:
    result: SpfResult
    reason: str
    domain: str
    record: Record | None = None
    mechanism: str = ""


class _Evaluator:
    """One check: the counters shared by every record it visits, and the PTR cache."""

    def __init__(
        self,
        resolver: SpfResolver,
        values: MacroValues,
        *,
        max_lookups: int,
        max_void_lookups: int,
    ) -> None:
        self.resolver = resolver
        self.values = values
        self.ip = values.ip
        self.max_lookups = max_lookups
        self.max_void = max_void_lookups
        self.lookups = 0
        self.void = 0
        self._ptr: tuple[bool, list[str]] | None = None

    # -- DNS helpers ----------------------------------------------------------------------

    async def _query(self, name: str, qtype: str) -> tuple[Any, ...]:
        if not name.isascii():
            try:
                name = name.encode("idna").decode("ascii")
            except UnicodeError:
                return ()  # cannot be a DNS name: nothing there
        try:
            return await self.resolver.query(name, qtype)
        except DnsError as exc:
            raise _Stop(
                SpfResult.TEMPERROR, f"DNS {qtype} lookup of {name} failed: {exc}"
            ) from None

    def _count(self, term: str) -> None:
        self.lookups += 1
        if self.lookups > self.max_lookups:
            raise _Stop(
                SpfResult.PERMERROR, f"more than {self.max_lookups} DNS lookups (at {term!r})"
            )

    def _void_check(self, answer: Sequence[Any], term: str) -> None:
        if answer:
            return
        self.void += 1
        if self.void > self.max_void:
            raise _Stop(
                SpfResult.PERMERROR, f"more than {self.max_void} void lookups (at {term!r})"
            )

    async def _addresses_of(self, names: Sequence[str]) -> list[tuple[Any, ...] | BaseException]:
        qtype = "A" if self.ip.version == 4 else "AAAA"
        return await asyncio.gather(*(self._raw(n, qtype) for n in names), return_exceptions=True)

    async def _raw(self, name: str, qtype: str) -> tuple[Any, ...]:
        try:
            return await self._query(name, qtype)
        except _Stop as stop:
            raise DnsError(stop.reason) from None

    def _matches_any(self, answer: Sequence[Any], mech: Mechanism) -> bool:
        prefix = mech.cidr4 if self.ip.version == 4 else mech.cidr6
        for value in answer:
            try:
                address = ipaddress.ip_address(str(value))
            except ValueError:
                continue
            if address.version == self.ip.version and self.ip in ipaddress.ip_network(
                (address, prefix), strict=False
            ):
                return True
        return False

    async def _ptr_names(self) -> tuple[bool, list[str]]:
        """``(void, validated names)``: the client's PTR names whose addresses include it."""
        if self._ptr is None:
            try:
                answer = await self.resolver.query(self.ip.reverse_pointer, "PTR")
            except DnsError:
                self._ptr = (False, [])  # a failed PTR lookup: no match, not an error
                return self._ptr
            names = [_host_name(str(n)) for n in answer[:MAX_NAMES]]
            names = [n for n in names if n]
            results = await self._addresses_of(names)
            validated: list[str] = []
            for name, result in zip(names, results, strict=True):
                if isinstance(result, DnsError):
                    continue  # RFC 7208 section 5.5: skip the name
                if isinstance(result, BaseException):
                    raise result
                if any(self._same_address(a) for a in result):
                    validated.append(name)
            self._ptr = (not answer, validated)
        return self._ptr

    def _same_address(self, value: Any) -> bool:
        try:
            return ipaddress.ip_address(str(value)) == self.ip
        except ValueError:
            return False

    async def _validated_name(self, domain: str) -> str:
        _, names = await self._ptr_names()
        target = _host_name(domain)
        for name in names:
            if name == target:
                return name
        for name in names:
            if name.endswith("." + target):
                return name
        return names[0] if names else "unknown"

    async def _values_for(self, macro_string: MacroString, domain: str) -> MacroValues:
        values = replace(self.values, domain=domain)
        if "p" in macro_string.letters:
            values = replace(values, validated=await self._validated_name(domain))
        return values

    async def _target(self, macro_string: MacroString | None, domain: str) -> str:
        if macro_string is None:
            return domain
        return expand_domain(macro_string, await self._values_for(macro_string, domain))

    # -- check_host() -----------------------------------------------------------------------

    async def check_host(self, domain: str) -> _Outcome:
        """Evaluate the record of ``domain`` (sections 4.4 - 4.7)."""
        answer = await self._query(domain, "TXT")
        records = [str(r) for r in answer if is_spf_record(str(r))]
        if not records:
            return _Outcome(SpfResult.NONE, f"{domain} has no SPF record", domain)
        if len(records) > 1:
            raise _Stop(SpfResult.PERMERROR, f"{domain} has {len(records)} SPF records")
        try:
            record = parse_record(records[0])
        except SpfError as exc:
            raise _Stop(SpfResult.PERMERROR, f"{domain}: {exc}") from None
        for mech in record.mechanisms:
            if await self._matches(mech, domain):
                reason = f"{domain}: {mech.text} matched"
                return _Outcome(mech.result, reason, domain, record, mech.text)
        if record.redirect is not None:
            term = f"redirect={record.redirect}"
            self._count(term)
            target = await self._target(record.redirect, domain)
            outcome = await self.check_host(target)
            if outcome.result is SpfResult.NONE:
                raise _Stop(SpfResult.PERMERROR, f"{domain}: {term}: {outcome.reason}")
            return outcome
        return _Outcome(SpfResult.NEUTRAL, f"{domain}: no mechanism matched", domain, record)

    async def _matches(self, mech: Mechanism, domain: str) -> bool:
        kind = mech.kind
        if kind == "all":
            return True
        if kind in ("ip4", "ip6"):
            assert mech.network is not None
            return self.ip.version == mech.network.version and self.ip in mech.network
        self._count(mech.text)
        target = await self._target(mech.target, domain)
        if kind == "include":
            outcome = await self.check_host(target)
            if outcome.result is SpfResult.NONE:
                raise _Stop(SpfResult.PERMERROR, f"{domain}: {mech.text}: {outcome.reason}")
            return outcome.result is SpfResult.PASS
        if kind == "exists":
            answer = await self._query(target, "A")
            self._void_check(answer, mech.text)
            return bool(answer)
        if kind == "a":
            answer = await self._query(target, "A" if self.ip.version == 4 else "AAAA")
            self._void_check(answer, mech.text)
            return self._matches_any(answer, mech)
        if kind == "mx":
            return await self._matches_mx(mech, target)
        # ptr
        void, names = await self._ptr_names()
        if void:
            self._void_check((), mech.text)
        wanted = _host_name(target)
        return any(n == wanted or n.endswith("." + wanted) for n in names)

    async def _matches_mx(self, mech: Mechanism, target: str) -> bool:
        answer = await self._query(target, "MX")
        self._void_check(answer, mech.text)
        names = [_host_name(str(getattr(mx, "exchange", mx))) for mx in answer]
        names = [n for n in names if n]  # a null MX (".") has no hosts
        if len(names) > MAX_NAMES:
            raise _Stop(
                SpfResult.PERMERROR, f"{target} has {len(names)} MX names (limit {MAX_NAMES})"
            )
        for result in await self._addresses_of(names):
            if isinstance(result, BaseException):
                if isinstance(result, DnsError):
                    raise _Stop(SpfResult.TEMPERROR, f"{mech.text}: {result}")
                raise result
            if self._matches_any(result, mech):
                return True
        return False

    async def explanation(self, outcome: _Outcome, default: str) -> str:
        """The explanation of a ``fail`` (section 6.2): any problem gives ``default``."""
        record = outcome.record
        if record is None or record.explanation is None:
            return default
        try:
            target = await self._target(record.explanation, outcome.domain)
            answer = await self.resolver.query(target, "TXT")
            if len(answer) != 1:
                return default
            text = parse_macro_string(str(answer[0]), explanation=True)
            return expand(text, await self._values_for(text, outcome.domain))
        except (DnsError, SpfError, _Stop):
            return default


async def check_host(
    ip: str | IPAddress,
    sender: str,
    helo: str,
    resolver: SpfResolver,
    *,
    receiver: str = "unknown",
    timeout: float = DEFAULT_TIMEOUT,
    max_lookups: int = MAX_DNS_LOOKUPS,
    max_void_lookups: int = MAX_VOID_LOOKUPS,
    default_explanation: str = DEFAULT_EXPLANATION,
    clock: Callable[[], float] = time.time,
) -> SpfVerdict:
    """Evaluate SPF for a client address, envelope sender and HELO name (RFC 7208).

    ``sender`` is the envelope sender, ``""`` for the null sender (then
    ``postmaster@<helo>`` is checked).  ``ip`` may be IPv4-mapped IPv6; it is evaluated
    as IPv4.  ``receiver`` is the ``%{r}`` macro; ``default_explanation`` (a macro
    string) the explanation of a ``fail`` whose domain gives none.  The whole evaluation
    gets ``timeout`` seconds, after which the result is ``temperror``.

    DNS failures give ``temperror`` and syntax errors ``permerror``: this returns a
    result for every input, except an invalid ``ip`` (:class:`SpfError`).
    """
    address = _client_ip(ip)
    identity, checked, local, raw_domain = spf_identity(sender, helo)
    domain = policy_domain(raw_domain)
    base = SpfVerdict(
        SpfResult.NONE, domain=domain or raw_domain, sender=checked, identity=identity
    )
    if domain is None:
        return replace(base, reason=f"{raw_domain!r} is not a domain name that can have SPF")
    values = MacroValues(
        sender=checked,
        local=local,
        sender_domain=domain,
        domain=domain,
        ip=address,
        helo=helo,
        receiver=receiver,
        timestamp=int(clock()),
    )
    evaluator = _Evaluator(
        resolver, values, max_lookups=max_lookups, max_void_lookups=max_void_lookups
    )
    explanation = ""
    try:
        async with asyncio.timeout(timeout):
            outcome = await evaluator.check_host(domain)
            if outcome.result is SpfResult.FAIL:
                explanation = await evaluator.explanation(
                    outcome, _default_explanation(default_explanation, values)
                )
    except _Stop as stop:
        return replace(
            base,
            result=stop.result,
            reason=stop.reason,
            lookups=evaluator.lookups,
            void_lookups=evaluator.void,
        )
    except TimeoutError:
        return replace(
            base,
            result=SpfResult.TEMPERROR,
            reason=f"no SPF result for {domain} within {timeout:g} s",
            lookups=evaluator.lookups,
            void_lookups=evaluator.void,
        )
    return replace(
        base,
        result=outcome.result,
        explanation=explanation,
        reason=outcome.reason,
        mechanism=outcome.mechanism,
        lookups=evaluator.lookups,
        void_lookups=evaluator.void,
    )


def _default_explanation(text: str, values: MacroValues) -> str:
    try:
        return expand(parse_macro_string(text, explanation=True), values)
    except SpfError:
        return text
