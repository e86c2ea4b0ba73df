"""Asynchronous DNS for filters: one shared resolver with real deadlines, a cache and prefetch.

Filters get the server's resolver with :func:`dns_resolver` and ask it for records::

    from courier_pyfilter.dns import DnsError, dns_resolver

    resolver = await dns_resolver(ctx)
    addresses = await resolver.a("4.3.2.1.zen.spamhaus.org")   # () when not listed
    txt = await resolver.txt("example.org")                    # strings, joined per record
    mx = await resolver.mx("example.org")                      # MX(preference, exchange)...

Answers are tuples.  A name that does not exist (NXDOMAIN) or has no record of the type
(NODATA), and a name that cannot exist (malformed), give an empty tuple: that is the
normal "not listed" answer of a DNS list.  Anything that means "no answer" raises
:class:`DnsError`: :class:`DnsTimeout` when the deadline passed, :class:`DnsFailure` for
SERVFAIL, REFUSED, unreachable servers and the like.

What the resolver adds to aiodns (c-ares):

* **A real deadline.**  c-ares does not honour its configured timeout once it has seen a
  few fast answers (it switches to adaptive timeouts), so every lookup is bounded here by
  a timer of ``timeout`` seconds; when it fires, the waiting callers get
  :class:`DnsTimeout` and the c-ares future is cancelled (c-ares has no per-query
  cancellation: its query ends on its own after ``tries`` attempts, its late answer is
  dropped).
* **One lookup per question.**  Concurrent identical questions share one query, and a
  small TTL-respecting cache (``cache_size`` entries, TTL capped at ``max_ttl``; TTL 0 is
  never cached) answers repeated ones.
* **Prefetch.**  :meth:`Resolver.prefetch` starts lookups without waiting for them; a
  filter asking the same question later joins the running query or takes its result
  (kept ``prefetch_hold`` seconds even with TTL 0), so several DNS filters of one chain
  cost about one round trip.  Filters announce their questions with a
  ``dns_queries(message, ctx)`` method (see ``docs/filters/dns.md``).

Configuration comes from the ``[dns]`` section of ``pythonfilter-modules.conf``
(:class:`DnsConfig`); nameservers default to those of ``/etc/resolv.conf``.  aiodns is an
optional dependency (``pip install 'courier-pyfilter[dns]'``) imported on first use.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import math
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NamedTuple

from .services import ServiceError

if TYPE_CHECKING:
    from .api import Context
    from .services import Services

__all__ = [
    "DEFAULT_TIMEOUT",
    "DEFAULT_TRIES",
    "MX",
    "QUERY_TYPES",
    "RESOLV_CONF",
    "SECTION",
    "SERVICE_NAME",
    "DnsConfig",
    "DnsError",
    "DnsFailure",
    "DnsTimeout",
    "DnsUnavailable",
    "Query",
    "ResolvConf",
    "Resolver",
    "ResolverStats",
    "dns_resolver",
    "format_nameserver",
    "list_name",
    "parse_nameserver",
    "prefetch",
    "read_resolv_conf",
    "reverse_name",
]

log = logging.getLogger("courier_pyfilter.dns")

SECTION = "dns"
"""The section of ``pythonfilter-modules.conf`` read by :func:`dns_resolver`."""
SERVICE_NAME = "dns"
"""The name of the shared resolver in :class:`~courier_pyfilter.services.Services`."""
RESOLV_CONF = "/etc/resolv.conf"
DEFAULT_TIMEOUT = 5.0
DEFAULT_TRIES = 3
QUERY_TYPES = frozenset({"A", "AAAA", "TXT", "MX", "PTR", "CNAME", "NS"})
"""The record types :meth:`Resolver.query` understands."""

Query = tuple[str, str]
"""A question: ``(name, type)``, e.g. ``("2.0.0.127.zen.spamhaus.org", "A")``."""

Answer = tuple[Any, ...]
_Key = tuple[str, str]


class MX(NamedTuple):
    """One MX record."""

    preference: int
    exchange: str


# -- errors -----------------------------------------------------------------------------------


class DnsError(Exception):
    """A lookup got no usable answer (the name's status is unknown).

    ``name`` and ``qtype`` are the question; ``code`` the c-ares error code when there
    is one.
    """

    log_traceback = False  # the chain logs one line: the message says what failed

    def __init__(self, message: str, name: str = "", qtype: str = "", code: int | None = None):
        super().__init__(message)
        self.name = name
        self.qtype = qtype
        self.code = code


class DnsTimeout(DnsError):
    """No answer within the deadline (a server that does not answer, or a lost packet)."""


class DnsFailure(DnsError):
    """The servers answered with an error (SERVFAIL, REFUSED, ...) or could not be reached."""


class DnsUnavailable(ServiceError):
    """The resolver cannot be created: aiodns is missing or ``[dns]`` is invalid."""


# -- configuration ----------------------------------------------------------------------------


def parse_nameserver(text: str) -> tuple[str, int]:
    """Split a nameserver setting into ``(address, port)``; the port defaults to 53.

    Accepted: ``"192.0.2.1"``, ``"192.0.2.1:5353"``, ``"2001:db8::1"``, ``"[2001:db8::1]"``
    and ``"[2001:db8::1]:5353"``.  Host names are refused (the resolver needs addresses).

    >>> parse_nameserver("127.0.0.1:5353")
    ('127.0.0.1', 5353)
    >>> parse_nameserver("[::1]:5353")
    ('::1', 5353)
    >>> parse_nameserver("::1")
    ('::1', 53)
    """
    value = text.strip()
    port = 53
    if value.startswith("["):
        host, sep, rest = value[1:].partition("]")
        if not sep:
            raise ValueError(f"nameserver {text!r}: missing ']'")
        if rest:
            if not rest.startswith(":"):
                raise ValueError(f"nameserver {text!r}: expected ':PORT' after ']'")
            port = _port(rest[1:], text)
    elif value.count(":") == 1:
        host, _, port_text = value.partition(":")
        port = _port(port_text, text)
    else:
        host = value
    try:
        ipaddress.ip_address(host)
    except ValueError:
        raise ValueError(f"nameserver {text!r}: {host!r} is not an IP address") from None
    return host, port


def _port(text: str, whole: str) -> int:
    if not text.isdigit() or not 0 < int(text) < 65536:
        raise ValueError(f"nameserver {whole!r}: invalid port {text!r}")
    return int(text)


def format_nameserver(host: str, port: int = 53) -> str:
    """The c-ares form of a server: ``"192.0.2.1:53"``, ``"[2001:db8::1]:53"``."""
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@dataclass(frozen=True, slots=True)
class ResolvConf:
    """What :func:`read_resolv_conf` found."""

    nameservers: tuple[str, ...] = ()
    timeout: float | None = None
    attempts: int | None = None


def read_resolv_conf(path: str = RESOLV_CONF) -> ResolvConf:
    """Nameservers and the ``timeout:``/``attempts:`` options of a resolv.conf file.

    A missing or unreadable file gives an empty result.
    """
    servers: list[str] = []
    timeout: float | None = None
    attempts: int | None = None
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().splitlines()
    except OSError:
        return ResolvConf()
    for line in lines:
        words = line.split("#", 1)[0].split(";", 1)[0].split()
        if len(words) >= 2 and words[0] == "nameserver":
            try:
                host, port = parse_nameserver(words[1])
            except ValueError:
                continue
            servers.append(format_nameserver(host, port))
        elif words and words[0] == "options":
            for opt in words[1:]:
                name, _, value = opt.partition(":")
                try:
                    if name == "timeout":
                        timeout = float(value) if float(value) > 0 else timeout
                    elif name == "attempts":
                        attempts = int(value) if int(value) > 0 else attempts
                except ValueError:
                    continue
    return ResolvConf(tuple(servers), timeout, attempts)


@dataclass(frozen=True, slots=True)
class DnsConfig:
    """Settings of the shared resolver (the ``[dns]`` section).

    ``nameservers``
        Server addresses with optional port (``"127.0.0.1:5353"``, ``"[::1]:5353"``);
        empty: those of ``/etc/resolv.conf`` (127.0.0.1 if it names none).
    ``timeout``
        The deadline of one lookup, in seconds, all tries included.
    ``tries``
        Attempts c-ares makes within the deadline (its first timeout is
        ``timeout / tries``).  Keep at least 2: c-ares' adaptive timeouts make a single
        try fail on a merely slow answer.
    ``cache_size``
        Answers kept in memory (0: no cache; identical concurrent lookups are still
        shared).
    ``max_ttl``
        Upper bound of the time an answer is cached, whatever its TTL.
    ``negative_ttl``
        Seconds to cache "no such name / no such record" (default 0: not cached here;
        c-ares keeps its own cache of negative answers).
    ``prefetch_hold``
        Seconds a prefetched result is kept for the filters of the message, TTL 0
        included.
    """

    nameservers: tuple[str, ...] = ()
    timeout: float = DEFAULT_TIMEOUT
    tries: int = DEFAULT_TRIES
    cache_size: int = 10_000
    max_ttl: float = 3600.0
    negative_ttl: float = 0.0
    prefetch_hold: float = 60.0

    def __post_init__(self) -> None:
        servers = tuple(
            format_nameserver(*parse_nameserver(s))
            for s in _strings(self.nameservers, "nameservers")
        )
        object.__setattr__(self, "nameservers", servers)
        _number(self.timeout, "timeout", positive=True)
        if not isinstance(self.tries, int) or isinstance(self.tries, bool) or self.tries < 1:
            raise ValueError(f"tries must be a positive integer, not {self.tries!r}")
        if (
            not isinstance(self.cache_size, int)
            or isinstance(self.cache_size, bool)
            or self.cache_size < 0
        ):
            raise ValueError(f"cache_size must be an integer >= 0, not {self.cache_size!r}")
        for name in ("max_ttl", "negative_ttl", "prefetch_hold"):
            _number(getattr(self, name), name, positive=False)

    @classmethod
    def from_section(
        cls, section: Mapping[str, Any], *, resolv_conf: str = RESOLV_CONF
    ) -> DnsConfig:
        """The configuration from a ``[dns]`` section; missing keys from ``resolv_conf``.

        ``timeout`` defaults to resolv.conf's ``options timeout:`` (else 5 s) and
        ``tries`` to its ``attempts:`` (else 3).  Unknown keys are ignored (``[DEFAULT]``
        keys reach every section).  Raises :class:`ValueError` for invalid values.
        """
        system = read_resolv_conf(resolv_conf)
        servers = section.get("nameservers")
        if servers is None or servers == [] or servers == ():
            servers = system.nameservers or ("127.0.0.1",)
        elif isinstance(servers, str):
            servers = tuple(servers.replace(",", " ").split())
        values: dict[str, Any] = {
            "nameservers": tuple(_strings(servers, "nameservers")),
            "timeout": section.get("timeout", system.timeout or DEFAULT_TIMEOUT),
            "tries": section.get("tries", system.attempts or DEFAULT_TRIES),
        }
        for key in ("cache_size", "max_ttl", "negative_ttl", "prefetch_hold"):
            if key in section:
                values[key] = section[key]
        if isinstance(values["timeout"], int) and not isinstance(values["timeout"], bool):
            values["timeout"] = float(values["timeout"])
        return cls(**values)


def _strings(value: Any, name: str) -> list[str]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ValueError(f"{name} must be a list of strings, not {value!r}")
    items = list(value)
    if not all(isinstance(v, str) for v in items):
        raise ValueError(f"{name} must be a list of strings, not {value!r}")
    return items


def _number(value: Any, name: str, *, positive: bool) -> None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (positive and value == 0):
        kind = "a positive number" if positive else "a number >= 0"
        raise ValueError(f"{name} must be {kind}, not {value!r}")


# -- names ------------------------------------------------------------------------------------


def reverse_name(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """The reverse-DNS label sequence of an address, without the ``in-addr.arpa`` suffix.

    IPv4 octets in reverse order, IPv6 nibbles in reverse order (RFC 5782); an
    IPv4-mapped IPv6 address is treated as IPv4.

    >>> reverse_name("192.0.2.1")
    '1.2.0.192'
    >>> reverse_name("2001:db8::1")[:12]
    '1.0.0.0.0.0.'
    >>> reverse_name("::ffff:192.0.2.1")
    '1.2.0.192'
    """
    ip = ipaddress.ip_address(address) if isinstance(address, str) else address
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    pointer = ip.reverse_pointer
    return pointer.rsplit(".", 2)[0]


def list_name(address: str | ipaddress.IPv4Address | ipaddress.IPv6Address, zone: str) -> str:
    """The DNS-list name of an address in ``zone``: ``list_name("192.0.2.1", "bl.example")``
    is ``"1.2.0.192.bl.example"``."""
    return f"{reverse_name(address)}.{zone.strip('.')}"


def _key(name: str, qtype: str) -> _Key:
    return (name.rstrip(".").lower(), qtype.upper())


# -- the resolver -----------------------------------------------------------------------------


@dataclass(slots=True)
class ResolverStats:
    """Counters since the resolver was made (for tests, logs and metrics)."""

    queries: int = 0
    """Lookups sent to c-ares."""
    cache_hits: int = 0
    joined: int = 0
    """Lookups answered by a query already running, or by a held prefetch result."""
    prefetched: int = 0
    """Lookups started by :meth:`Resolver.prefetch`."""
    timeouts: int = 0
    failures: int = 0


@dataclass(slots=True)
class _Held:
    until: float
    future: asyncio.Future[Answer]


@dataclass(slots=True)
class _Pending:
    future: asyncio.Future[Answer]
    hold: float | None = None


def _import_aiodns() -> Any:
    try:
        import aiodns
    except ImportError as exc:
        raise DnsUnavailable(
            f"DNS lookups need the aiodns package: pip install 'courier-pyfilter[dns]' ({exc})"
        ) from exc
    return aiodns


class Resolver:
    """The shared DNS client.  Make one per server with :func:`dns_resolver`.

    ``clock`` (monotonic seconds) can be replaced in tests.  The aiodns channel is created
    on the first lookup, in the running event loop; the resolver must only be used from
    that loop.
    """

    def __init__(
        self, config: DnsConfig | None = None, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._aiodns = _import_aiodns()
        self.config = config if config is not None else DnsConfig.from_section({})
        self.stats = ResolverStats()
        self._clock = clock
        self._channel: Any = None
        self._cache: OrderedDict[_Key, tuple[float, Answer]] = OrderedDict()
        self._pending: dict[_Key, _Pending] = {}
        self._held: dict[_Key, _Held] = {}
        self._closed = False

    def __repr__(self) -> str:
        servers = ",".join(self.config.nameservers)
        return f"<Resolver {servers} timeout={self.config.timeout}>"

    # -- typed helpers ------------------------------------------------------------------------

    async def a(self, name: str) -> tuple[str, ...]:
        """IPv4 addresses of ``name`` (CNAMEs followed); ``()`` when there are none."""
        return await self.query(name, "A")

    async def aaaa(self, name: str) -> tuple[str, ...]:
        """IPv6 addresses of ``name``; ``()`` when there are none."""
        return await self.query(name, "AAAA")

    async def txt(self, name: str) -> tuple[str, ...]:
        """TXT records of ``name``, each one string (its strings joined, UTF-8 decoded)."""
        return await self.query(name, "TXT")

    async def mx(self, name: str) -> tuple[MX, ...]:
        """MX records of ``name``, sorted by preference (then exchange)."""
        return await self.query(name, "MX")

    async def ptr(
        self, address: str | ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> tuple[str, ...]:
        """Host names of an IP address (reverse DNS), e.g. ``ptr("192.0.2.1")``."""
        ip = ipaddress.ip_address(address) if isinstance(address, str) else address
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return await self.query(ip.reverse_pointer, "PTR")

    # -- generic lookup -----------------------------------------------------------------------

    async def query(self, name: str, qtype: str) -> tuple[Any, ...]:
        """The answer to one question: a tuple of values of type ``qtype``.

        Values: address strings (A, AAAA), strings (TXT, PTR, CNAME, NS), :class:`MX`.
        Raises :class:`DnsTimeout` / :class:`DnsFailure`.  Cancelling the caller never
        cancels the shared lookup.
        """
        return await self.submit(name, qtype)

    def submit(self, name: str, qtype: str) -> asyncio.Future[tuple[Any, ...]]:
        """Start (or join) a lookup and return a future of its answer, without waiting.

        The future is the caller's own: cancelling it leaves the lookup running for
        others.  Await or cancel it (an unawaited failed future is logged by asyncio).
        """
        loop = asyncio.get_running_loop()
        shared = self._shared(name, qtype, loop, prefetch=False)
        outer: asyncio.Future[Answer] = loop.create_future()
        if shared.done():
            _copy(shared, outer)
        else:
            shared.add_done_callback(functools.partial(_copy_to, outer))
        return outer

    def prefetch(self, queries: Iterable[Query]) -> int:
        """Start lookups for ``queries`` now, without waiting; returns how many were started.

        Their results (errors included) are kept for ``prefetch_hold`` seconds, so that
        the filters asking later share them, whatever the TTL.  Questions already cached
        or running are not repeated; a question whose earlier prefetch result is still
        kept is asked again (a new message gets a fresh answer).  Invalid questions are
        skipped and a closed resolver starts nothing: this never raises (it is meant to
        be called by the chain for every message).  Needs a running event loop.
        """
        loop = asyncio.get_running_loop()
        before = self.stats.queries
        if self._closed:
            return 0
        self._sweep_held()
        for name, qtype in queries:
            kind = qtype.upper() if isinstance(qtype, str) else ""
            if not isinstance(name, str) or not name or kind not in QUERY_TYPES:
                log.debug("prefetch: skipping invalid query %r %r", name, qtype)
                continue
            self._shared(name, kind, loop, prefetch=True)
        started = self.stats.queries - before
        self.stats.prefetched += started
        return started

    def cached(self, name: str, qtype: str) -> tuple[Any, ...] | None:
        """The cached answer, or None when not cached (no lookup is made)."""
        entry = self._cache.get(_key(name, qtype))
        if entry is None or entry[0] <= self._clock():
            return None
        return entry[1]

    def clear_cache(self) -> None:
        """Forget cached answers and held prefetch results (running lookups go on)."""
        self._cache.clear()
        self._held.clear()

    async def close(self) -> None:
        """Fail running lookups with :class:`DnsFailure` and close the channel."""
        self._closed = True
        for key, pending in list(self._pending.items()):
            if not pending.future.done():
                pending.future.set_exception(DnsFailure("resolver closed", *key))
        self._pending.clear()
        self._held.clear()
        self._cache.clear()
        channel, self._channel = self._channel, None
        if channel is not None:
            await channel.close()

    # -- internals ----------------------------------------------------------------------------

    def _get_channel(self, loop: asyncio.AbstractEventLoop) -> Any:
        if self._channel is None:
            cfg = self.config
            self._channel = self._aiodns.DNSResolver(
                nameservers=list(cfg.nameservers),
                timeout=max(cfg.timeout / cfg.tries, 0.05),
                tries=cfg.tries,
                loop=loop,
            )
        return self._channel

    def _shared(
        self, name: str, qtype: str, loop: asyncio.AbstractEventLoop, *, prefetch: bool
    ) -> asyncio.Future[Answer]:
        qtype = qtype.upper()
        if qtype not in QUERY_TYPES:
            raise ValueError(f"unsupported query type {qtype!r}")
        if self._closed:
            raise DnsFailure("resolver closed", name, qtype)
        key = _key(name, qtype)
        now = self._clock()
        cached = self._cache.get(key)
        if cached is not None:
            if cached[0] > now:
                self._cache.move_to_end(key)
                self.stats.cache_hits += 1
                return _done(loop, cached[1])
            del self._cache[key]
        pending = self._pending.get(key)
        if pending is not None:
            if prefetch:
                pending.hold = self.config.prefetch_hold
            else:
                self.stats.joined += 1
            return pending.future
        held = self._held.get(key)
        if held is not None:
            if held.until > now and not prefetch:
                self.stats.joined += 1
                return held.future
            # Expired, or a new message's prefetch: ask again.
            del self._held[key]
        return self._start(key, loop, hold=self.config.prefetch_hold if prefetch else None)

    def _start(
        self, key: _Key, loop: asyncio.AbstractEventLoop, *, hold: float | None
    ) -> asyncio.Future[Answer]:
        name, qtype = key
        result: asyncio.Future[Answer] = loop.create_future()
        self._pending[key] = _Pending(result, hold)
        result.add_done_callback(functools.partial(self._settled, key))
        self.stats.queries += 1
        if not _valid_name(name):
            result.set_result(())  # cannot exist: like NXDOMAIN, without asking
            return result
        try:
            query = self._get_channel(loop).query_dns(name, qtype)
        except Exception as exc:  # a broken channel: fail this lookup, not the caller
            result.set_exception(DnsFailure(f"{name}/{qtype}: {exc}", name, qtype))
            return result
        timer = loop.call_later(self.config.timeout, self._expire, key, query, result)
        query.add_done_callback(functools.partial(self._answered, key, timer, result))
        return result

    def _expire(
        self, key: _Key, query: asyncio.Future[Any], result: asyncio.Future[Answer]
    ) -> None:
        if not result.done():
            name, qtype = key
            self.stats.timeouts += 1
            result.set_exception(
                DnsTimeout(
                    f"{name}/{qtype}: no answer within {self.config.timeout:g} s",
                    name,
                    qtype,
                    self._aiodns.error.ARES_ETIMEOUT,
                )
            )
        query.cancel()  # aiodns then ignores c-ares' late callback

    def _answered(
        self,
        key: _Key,
        timer: asyncio.TimerHandle,
        result: asyncio.Future[Answer],
        query: asyncio.Future[Any],
    ) -> None:
        timer.cancel()
        if result.done():
            return
        name, qtype = key
        if query.cancelled():
            self.stats.failures += 1
            result.set_exception(DnsFailure(f"{name}/{qtype}: lookup cancelled", name, qtype))
            return
        exc = query.exception()
        if exc is not None:
            answer_or_error = self._map_error(key, exc)
            if isinstance(answer_or_error, DnsError):
                result.set_exception(answer_or_error)
            else:
                self._store(key, answer_or_error, self.config.negative_ttl)
                result.set_result(answer_or_error)
            return
        try:
            answer, ttl = _convert(query.result(), qtype)
        except Exception as err:  # malformed data in a record
            self.stats.failures += 1
            result.set_exception(DnsFailure(f"{name}/{qtype}: bad answer: {err}", name, qtype))
            return
        self._store(key, answer, ttl)
        result.set_result(answer)

    def _map_error(self, key: _Key, exc: BaseException) -> Answer | DnsError:
        name, qtype = key
        errors = self._aiodns.error
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else None
        text = exc.args[1] if len(exc.args) > 1 else str(exc)
        if code in (errors.ARES_ENOTFOUND, errors.ARES_ENODATA, errors.ARES_EBADNAME):
            return ()
        if code == errors.ARES_ETIMEOUT:
            self.stats.timeouts += 1
            return DnsTimeout(f"{name}/{qtype}: {text}", name, qtype, code)
        self.stats.failures += 1
        return DnsFailure(f"{name}/{qtype}: {text}", name, qtype, code)

    def _store(self, key: _Key, answer: Answer, ttl: float) -> None:
        limit = self.config.cache_size
        ttl = min(ttl, self.config.max_ttl)
        if limit <= 0 or ttl <= 0:
            return
        self._cache[key] = (self._clock() + ttl, answer)
        self._cache.move_to_end(key)
        while len(self._cache) > limit:
            self._cache.popitem(last=False)

    def _settled(self, key: _Key, result: asyncio.Future[Answer]) -> None:
        if not result.cancelled():
            result.exception()  # mark retrieved: nobody may be waiting (prefetch)
        pending = self._pending.get(key)
        if pending is None or pending.future is not result:
            return
        del self._pending[key]
        if pending.hold and not self._closed:
            self._held.pop(key, None)
            self._held[key] = _Held(self._clock() + pending.hold, result)
            limit = max(self.config.cache_size, 1000)
            while len(self._held) > limit:
                del self._held[next(iter(self._held))]

    def _sweep_held(self) -> None:
        now = self._clock()
        while self._held:
            key = next(iter(self._held))
            if self._held[key].until > now:
                break
            del self._held[key]


def _valid_name(name: str) -> bool:
    name = name.rstrip(".")
    if not name or len(name) > 253:
        return False
    return all(0 < len(label) <= 63 for label in name.split("."))


def _done(loop: asyncio.AbstractEventLoop, answer: Answer) -> asyncio.Future[Answer]:
    fut: asyncio.Future[Answer] = loop.create_future()
    fut.set_result(answer)
    return fut


def _copy(source: asyncio.Future[Answer], target: asyncio.Future[Answer]) -> None:
    if target.done():
        return
    if source.cancelled():
        target.cancel()
        return
    exc = source.exception()
    if exc is not None:
        target.set_exception(exc)
    else:
        target.set_result(source.result())


def _copy_to(target: asyncio.Future[Answer], source: asyncio.Future[Answer]) -> None:
    _copy(source, target)


def _text(data: bytes | str) -> str:
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


# DNS record type codes (RFC 1035, RFC 3596) of the values :func:`_convert` extracts.
_TYPE_CODES = {"A": 1, "NS": 2, "CNAME": 5, "PTR": 12, "MX": 15, "TXT": 16, "AAAA": 28}


def _convert(result: Any, qtype: str) -> tuple[Answer, float]:
    """Values of the asked type from a pycares ``DNSResult``, and the smallest TTL.

    A CNAME chain leading to the answer counts for the TTL but not as a value.
    """
    records = list(result.answer)
    ttl = min((float(rr.ttl) for rr in records), default=0.0)
    code = _TYPE_CODES[qtype]
    values: list[Any] = []
    for rr in records:
        if rr.type != code:
            continue
        data = rr.data
        if qtype in ("A", "AAAA"):
            values.append(str(data.addr))
        elif qtype == "TXT":
            values.append(_text(data.data))
        elif qtype == "MX":
            values.append(MX(int(data.priority), str(data.exchange).rstrip(".")))
        elif qtype == "PTR":
            values.append(str(data.dname).rstrip("."))
        elif qtype == "CNAME":
            values.append(str(data.cname).rstrip("."))
        else:  # NS
            values.append(str(data.nsdname).rstrip("."))
    if qtype == "MX":
        values.sort()
    return tuple(values), ttl


# -- the shared instance and prefetch -----------------------------------------------------------


def _services_of(target: Context | Services) -> Services:
    services = getattr(target, "services", None)
    return services if services is not None else target  # type: ignore[return-value]


async def dns_resolver(ctx: Context | Services) -> Resolver:
    """The server's shared resolver, created on first use from the ``[dns]`` section.

    ``ctx`` is a filter's context (or the services themselves).  Raises
    :class:`DnsUnavailable` when aiodns is not installed or ``[dns]`` is invalid; a filter
    that calls this in its ``start()`` makes such a problem stop the configuration from
    loading instead of failing every message.
    """
    services = _services_of(ctx)

    async def factory() -> Resolver:
        try:
            config = DnsConfig.from_section(services.sections(SECTION))
        except ValueError as exc:
            raise DnsUnavailable(f"[{SECTION}] {exc}") from exc
        resolver = Resolver(config)
        log.debug("DNS resolver: %r", resolver)
        return resolver

    async def close(resolver: Resolver) -> None:
        await resolver.close()

    return await services.get(SERVICE_NAME, factory, close)


async def prefetch(target: Context | Services | Resolver, queries: Iterable[Query]) -> int:
    """Start ``queries`` on the shared resolver (or on ``target`` if it is one), not waiting.

    Returns the number of lookups started.  See :meth:`Resolver.prefetch`.
    """
    resolver = target if isinstance(target, Resolver) else await dns_resolver(target)
    return resolver.prefetch(queries)
