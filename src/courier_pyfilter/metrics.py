"""The optional Prometheus endpoint: what the server did, scraped over HTTP.

Off by default; ``metrics_listen = '127.0.0.1:9464'`` in ``[courier-pyfilter]`` turns it on
(it needs the ``metrics`` extra, prometheus-client).  When it is off this module is not
imported by the server, prometheus-client is never loaded and the per-message path pays
one ``is not None`` test.

Cost when on.  The per-message numbers are plain Python integers and floats kept by
:class:`Metrics` on the event loop's thread (no locks, no prometheus-client objects per
message); they become metric families only when Prometheus scrapes, in
:meth:`Metrics.collect`.  The endpoint is a small asyncio HTTP handler on the server's own
loop, not prometheus-client's threaded server: scrapes and updates never run at the same
time, so nothing needs a lock, and the endpoint closes with the server.  Gauges of the
server's state (messages in flight, waiting for a slot, configuration loaded) are read at
scrape time and cost nothing per message.

Circuit breakers.  The project has none yet; :func:`set_backend_state` is the API a
service client with a breaker (clamd, spamd, DNS, the store ...) calls on every state
change.  It does nothing while the endpoint is off, so clients may call it freely.

See ``docs/operating.md`` for the metric names.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .chain import ChainResult
    from .decision import Decision
    from .server import FilterServer

__all__ = [
    "BACKEND_STATES",
    "CHAIN_BUCKETS",
    "DECIDED_BY_NONE",
    "DECIDED_BY_SERVER",
    "FILTER_BUCKETS",
    "Metrics",
    "MetricsEndpoint",
    "set_backend_state",
    "start_metrics",
]

log = logging.getLogger("courier_pyfilter.metrics")

PREFIX = "courier_pyfilter"

FILTER_BUCKETS: tuple[float, ...] = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
)
"""Upper bounds (seconds) of the per-filter latency histogram: from in-memory checks to
DNS, scanners and the default 60 s filter timeout."""

CHAIN_BUCKETS: tuple[float, ...] = (*FILTER_BUCKETS, 120.0, 300.0)
"""Upper bounds (seconds) of the whole-chain histogram (up to ``message_timeout``)."""

DECIDED_BY_NONE = "none"
"""``filter`` label of a message every filter let through (the server answered 200 Ok)."""
DECIDED_BY_SERVER = "server"
"""``filter`` label of a reply the server gave itself: no configuration loaded, shutting
down, the chain's deadline (``message_timeout``), an internal error, a failed edit."""

BACKEND_STATES: Mapping[str, int] = {"closed": 0, "half_open": 1, "open": 2}
"""Circuit-breaker states and the gauge values they are exported as (0 = healthy)."""

_current: Metrics | None = None
"""The metrics of the running server, for :func:`set_backend_state`."""


def set_backend_state(name: str, state: str | int) -> None:
    """Report the circuit-breaker state of the backend ``name`` (``'clamd'``, ``'store'`` ...).

    ``state`` is ``'closed'`` (healthy, requests flow), ``'half_open'`` (probing after a
    failure) or ``'open'`` (requests are failed fast), or the gauge value 0, 1 or 2.  A
    no-op when the metrics endpoint is off.  Call it from the event loop's thread.
    """
    metrics = _current
    if metrics is not None:
        metrics.set_backend_state(name, state)


class _Histogram:
    """Bucket counts (not cumulative; the last one is ``+Inf``) and the sum of one series."""

    __slots__ = ("counts", "sum")

    def __init__(self, buckets: int) -> None:
        self.counts = [0] * (buckets + 1)
        self.sum = 0.0


def _error_kind(error: str) -> str:
    """``FilterOutcome.error`` -> the ``kind`` label: ``timeout``, ``not_a_decision`` or the
    exception's class name (``StoreError``, ``DnsError``, ``ValueError`` ...)."""
    if error == "timeout":
        return "timeout"
    if error == "not a decision":
        return "not_a_decision"
    return error.partition(":")[0] or "error"


class Metrics:
    """The server's counters and histograms, and a prometheus-client collector over them.

    :meth:`message` is the only per-message call.  ``gauges`` maps a gauge's name (without
    the prefix) to ``(help text, function)``; the functions are called at scrape time.
    """

    def __init__(self, gauges: Mapping[str, tuple[str, Callable[[], float]]] | None = None) -> None:
        self.messages: dict[tuple[str, str], int] = {}
        """(verdict, deciding filter) -> messages answered."""
        self.filter_seconds: dict[str, _Histogram] = {}
        """filter -> its latency histogram."""
        self.chain_seconds = _Histogram(len(CHAIN_BUCKETS))
        """Latency of the whole chain per message."""
        self.errors: dict[tuple[str, str], int] = {}
        """(filter, kind) -> failures (exceptions, timeouts, non-decisions)."""
        self.shadow: dict[tuple[str, str], int] = {}
        """(filter, verdict) -> what filters in shadow mode would have answered."""
        self.backends: dict[str, int] = {}
        """backend -> circuit-breaker state (see :data:`BACKEND_STATES`)."""
        self.gauges = dict(gauges or {})
        self.endpoint: MetricsEndpoint | None = None
        """The HTTP endpoint serving these metrics (set by :func:`start_metrics`)."""

    async def close(self) -> None:
        """Stop the endpoint; :func:`set_backend_state` no longer reaches these metrics."""
        global _current
        if _current is self:
            _current = None
        if self.endpoint is not None:
            await self.endpoint.close()

    # -- recording (event loop thread) --------------------------------------------------

    def message(self, result: ChainResult | None, decision: Decision) -> None:
        """Count one answered message: its verdict, who decided, how long each filter took.

        ``result`` is ``None`` when the chain gave no result (the server answered itself);
        ``decision`` is the reply actually sent.
        """
        if result is None:
            deciding = DECIDED_BY_SERVER
        else:
            deciding = (
                (result.deciding or DECIDED_BY_NONE)
                if result.decision is decision
                else DECIDED_BY_SERVER  # e.g. a failed edit turned an accept into 451
            )
            bounds = FILTER_BUCKETS
            histograms = self.filter_seconds
            for outcome in result.outcomes:
                histogram = histograms.get(outcome.name)
                if histogram is None:
                    histogram = histograms[outcome.name] = _Histogram(len(bounds))
                seconds = outcome.seconds
                histogram.counts[bisect_left(bounds, seconds)] += 1
                histogram.sum += seconds
                if outcome.error is not None:
                    key = (outcome.name, _error_kind(outcome.error))
                    self.errors[key] = self.errors.get(key, 0) + 1
                if outcome.shadow_decision is not None:
                    key = (outcome.name, outcome.shadow_decision.verdict.value)
                    self.shadow[key] = self.shadow.get(key, 0) + 1
            chain = self.chain_seconds
            chain.counts[bisect_left(CHAIN_BUCKETS, result.seconds)] += 1
            chain.sum += result.seconds
        key = (decision.verdict.value, deciding)
        self.messages[key] = self.messages.get(key, 0) + 1

    def set_backend_state(self, name: str, state: str | int) -> None:
        """See the module function :func:`set_backend_state`."""
        if isinstance(state, str):
            try:
                value = BACKEND_STATES[state]
            except KeyError:
                raise ValueError(
                    f"unknown circuit-breaker state {state!r} (known: {', '.join(BACKEND_STATES)})"
                ) from None
        elif state in BACKEND_STATES.values():
            value = int(state)
        else:
            raise ValueError(f"circuit-breaker state must be 0, 1 or 2, got {state!r}")
        self.backends[name] = value

    # -- scraping -----------------------------------------------------------------------

    def collect(self) -> Iterator[Any]:
        """The metric families (prometheus-client's collector protocol)."""
        from prometheus_client.core import (
            CounterMetricFamily,
            GaugeMetricFamily,
            HistogramMetricFamily,
        )

        messages = CounterMetricFamily(
            f"{PREFIX}_messages",
            "Messages answered, by verdict and by the filter that decided "
            f"('{DECIDED_BY_NONE}': every filter let it through; "
            f"'{DECIDED_BY_SERVER}': the server answered itself).",
            labels=("verdict", "filter"),
        )
        for (verdict, deciding), count in sorted(self.messages.items()):
            messages.add_metric((verdict, deciding), count)
        yield messages

        filters = HistogramMetricFamily(
            f"{PREFIX}_filter_duration_seconds",
            "Time each filter took per message (wall clock, failures included).",
            labels=("filter",),
        )
        for name, histogram in sorted(self.filter_seconds.items()):
            filters.add_metric((name,), *_buckets(histogram, FILTER_BUCKETS))
        yield filters

        chain = HistogramMetricFamily(
            f"{PREFIX}_chain_duration_seconds",
            "Time the whole chain took per message.",
        )
        chain.add_metric((), *_buckets(self.chain_seconds, CHAIN_BUCKETS))
        yield chain

        errors = CounterMetricFamily(
            f"{PREFIX}_filter_errors",
            "Filter failures that triggered the failure action, by kind: 'timeout', "
            "'not_a_decision' or the exception's class (StoreError, DnsError, ...).",
            labels=("filter", "kind"),
        )
        for (name, kind), count in sorted(self.errors.items()):
            errors.add_metric((name, kind), count)
        yield errors

        shadow = CounterMetricFamily(
            f"{PREFIX}_shadow_decisions",
            "What filters in mode = 'shadow' would have decided.",
            labels=("filter", "verdict"),
        )
        for (name, verdict), count in sorted(self.shadow.items()):
            shadow.add_metric((name, verdict), count)
        yield shadow

        backends = GaugeMetricFamily(
            f"{PREFIX}_backend_state",
            "Circuit-breaker state of a backend: 0 closed (healthy), 1 half-open, 2 open.",
            labels=("backend",),
        )
        for name, state in sorted(self.backends.items()):
            backends.add_metric((name,), state)
        yield backends

        for name, (text, read) in self.gauges.items():
            try:
                value = float(read())
            except Exception:  # a gauge must never break the scrape
                log.debug("metrics: gauge %s failed", name, exc_info=True)
                continue
            yield GaugeMetricFamily(f"{PREFIX}_{name}", text, value=value)

        from . import __version__

        info = GaugeMetricFamily(
            f"{PREFIX}_build_info", "The running version (always 1).", labels=("version",)
        )
        info.add_metric((__version__,), 1)
        yield info


def _buckets(
    histogram: _Histogram, bounds: tuple[float, ...]
) -> tuple[list[tuple[str, float]], float]:
    """Cumulative ``(le, count)`` pairs and the sum, as HistogramMetricFamily wants them."""
    total = 0
    pairs: list[tuple[str, float]] = []
    counts = list(histogram.counts)
    for bound, count in zip(bounds, counts, strict=False):
        total += count
        pairs.append((repr(float(bound)), total))  # '0.0005', '1.0': as prometheus-client
    pairs.append(("+Inf", total + counts[-1]))
    return pairs, histogram.sum


# -- the HTTP endpoint ----------------------------------------------------------------------

_MAX_HEADER_LINES = 100
_MAX_LINE = 8192
_READ_TIMEOUT = 10.0


class MetricsEndpoint:
    """``GET /metrics`` over HTTP/1.x on the event loop (one request per connection)."""

    def __init__(self, registry: Any) -> None:
        self.registry = registry
        self._server: asyncio.AbstractServer | None = None
        self.address: tuple[str, int] | None = None
        """The bound ``(host, port)`` (the real port when 0 was asked for)."""

    async def start(self, host: str, port: int) -> None:
        """Listen on ``host:port`` (``''``: every interface).  Raises ``OSError``."""
        self._server = await asyncio.start_server(
            self._serve, host or None, port, reuse_address=True, limit=_MAX_LINE
        )
        sockname = self._server.sockets[0].getsockname()
        self.address = (str(sockname[0]), int(sockname[1]))

    @property
    def url(self) -> str:
        """``http://host:port/metrics`` of the bound address."""
        assert self.address is not None
        host, port = self.address
        return f"http://{f'[{host}]' if ':' in host else host}:{port}/metrics"

    async def close(self) -> None:
        """Stop listening (scrapes in progress are cut off)."""
        if self._server is not None:
            server, self._server = self._server, None
            server.close()
            with contextlib.suppress(Exception):
                await asyncio.wait_for(server.wait_closed(), timeout=1)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            try:
                async with asyncio.timeout(_READ_TIMEOUT):
                    request_line = await reader.readline()
                    for _ in range(_MAX_HEADER_LINES):
                        line = await reader.readline()
                        if line in (b"\r\n", b"\n", b""):
                            break
                    else:
                        await self._send(writer, 431, b"too many header lines\n")
                        return
            except (TimeoutError, ValueError, ConnectionError):
                return  # ValueError: a line over the limit
            parts = request_line.decode("latin-1").split()
            if len(parts) != 3 or not parts[2].startswith("HTTP/"):
                await self._send(writer, 400, b"bad request\n")
                return
            method, target = parts[0], parts[1].partition("?")[0]
            if target != "/metrics":
                await self._send(writer, 404, b"not found; try /metrics\n")
            elif method not in ("GET", "HEAD"):
                await self._send(writer, 405, b"method not allowed\n", allow=True)
            else:
                from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

                body = generate_latest(self.registry)
                await self._send(
                    writer, 200, body, content_type=CONTENT_TYPE_LATEST, head=method == "HEAD"
                )
        except Exception:
            log.exception("metrics endpoint: cannot answer a scrape")
        finally:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    @staticmethod
    async def _send(
        writer: asyncio.StreamWriter,
        status: int,
        body: bytes,
        *,
        content_type: str = "text/plain; charset=utf-8",
        head: bool = False,
        allow: bool = False,
    ) -> None:
        reasons = {
            200: "OK",
            400: "Bad Request",
            404: "Not Found",
            405: "Method Not Allowed",
            431: "Request Header Fields Too Large",
        }
        lines = [
            f"HTTP/1.1 {status} {reasons.get(status, '')}",
            f"Content-Type: {content_type}",
            f"Content-Length: {len(body)}",
            "Connection: close",
        ]
        if allow:
            lines.append("Allow: GET, HEAD")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1"))
        if not head:
            writer.write(body)
        with contextlib.suppress(ConnectionError):
            await writer.drain()


async def start_metrics(server: FilterServer, listen: str) -> Metrics | None:
    """Create the metrics of ``server`` and serve them on ``listen`` (``'host:port'``).

    Returns ``None``, after logging why, when prometheus-client is missing or the
    address cannot be bound: the server then runs without metrics (never refusing mail
    over them).  The server calls :meth:`Metrics.message` per message and
    :meth:`Metrics.close` at shutdown.
    """
    global _current
    try:
        from prometheus_client import CollectorRegistry
        from prometheus_client.gc_collector import GCCollector
        from prometheus_client.platform_collector import PlatformCollector
        from prometheus_client.process_collector import ProcessCollector
    except ImportError as exc:
        log.error(
            "metrics_listen is set but prometheus-client is missing (%s): "
            "pip install 'courier-pyfilter[metrics]'; serving without metrics",
            exc,
        )
        return None
    from .settings import parse_listen_address

    host, port = parse_listen_address(listen)

    def configuration_loaded() -> float:
        return 0.0 if server.generation is None else 1.0

    def configuration_generation() -> float:
        generation = server.generation
        return 0.0 if generation is None else float(generation.number)

    metrics = Metrics(
        {
            "messages_in_flight": (
                "Messages being run through the chain now.",
                lambda: server._active,
            ),
            "messages_waiting": (
                "Messages waiting for a free slot (max_concurrent reached).",
                lambda: len(server._slot_waiters),
            ),
            "configuration_loaded": (
                "1 when a configuration is loaded; 0 while every message is answered 451 "
                "because the configuration could not be loaded.",
                configuration_loaded,
            ),
            "configuration_generation": (
                "Number of the configuration in use (1 at start, higher after reloads).",
                configuration_generation,
            ),
        }
    )
    registry = CollectorRegistry(auto_describe=False)
    registry.register(metrics)
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    endpoint = MetricsEndpoint(registry)
    try:
        await endpoint.start(host, port)
    except OSError as exc:
        log.error("cannot serve metrics on %s: %s; serving without metrics", listen, exc)
        return None
    metrics.endpoint = endpoint
    _current = metrics
    log.info("metrics endpoint listening on %s", endpoint.url)
    return metrics
