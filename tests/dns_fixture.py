"""pytest fixtures around the test DNS server of :mod:`dnsserver`.

A test module loads them as a plugin, so that every module shares one session server::

    pytest_plugins = ["dns_fixture"]

(test modules below ``tests/filters`` first put ``tests/`` on ``sys.path``, see
``tests/filters/test_filters_dnsbl.py``).

* ``dns_server`` (session): the one server of the test session, started on first use on
  127.0.0.1 at a free high port; ``dns_server.host``, ``.port``, ``.nameserver``
  (``"127.0.0.1:PORT"``), ``.add(zone_text)``, ``.remove(name)``, the failure knobs
  ``drop`` / ``servfail`` / ``refused`` / ``delay`` / ``delay_all`` and the query log
  (``.count(name, qtype)``).  It is shared by every module, so change it only through:
* ``dns``: the same server, with every change a test makes to records and knobs undone
  after the test;
* ``resolver``: a :class:`~courier_pyfilter.dns.Resolver` using that server (deadline 1 s);
* ``dns_context``: a factory of filter contexts whose ``[dns]`` section points at the
  server: ``ctx = dns_context("dnsbl", {"lists": {...}}, defaults=Dnsbl.defaults)``.

When the server cannot start (dnslib missing, no loopback) the tests using it are skipped
with the reason - except under ``CI=true``, where they fail.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from typing import Any

import pytest

from courier_pyfilter.dns import DnsConfig, Resolver

IN_CI = os.environ.get("CI", "").strip().lower() in ("true", "1", "yes")
TEST_TIMEOUT = 1.0
"""The resolver deadline used by the fixtures (seconds)."""

_server: Any = None
_error: str | None = None


def unavailable(reason: str) -> None:
    """Skip the test (or fail it under ``CI=true``) because the DNS server is missing."""
    if IN_CI:
        pytest.fail(f"CI=true, so not skipping: {reason}", pytrace=False)
    pytest.skip(reason)


def shared_server() -> Any:
    """The session's server, started on first call (stopped at interpreter exit)."""
    global _server, _error
    if _server is None and _error is None:
        try:
            from dnsserver import start_server

            _server = start_server()
        except Exception as exc:  # ImportError (no dnslib), OSError (bind)
            _error = f"test DNS server could not start: {type(exc).__name__}: {exc}"
        else:
            atexit.register(_server.stop)
    if _server is None:
        unavailable(_error or "test DNS server unavailable")
    return _server


def dns_sections(server: Any, **overrides: Any) -> dict[str, dict[str, Any]]:
    """``sections`` for :func:`~courier_pyfilter.testing.make_context`: a ``[dns]`` section
    pointing at ``server`` (deadline 1 s), with ``overrides``."""
    section: dict[str, Any] = {"nameservers": [server.nameserver], "timeout": TEST_TIMEOUT}
    section.update(overrides)
    return {"dns": section}


@pytest.fixture(scope="session")
def dns_server() -> Any:
    """The shared test DNS server (do not change it: use the ``dns`` fixture for that)."""
    return shared_server()


@pytest.fixture
def dns(dns_server: Any) -> Iterator[Any]:
    """The shared server with an empty query log; records and knobs changed by the test
    are restored afterwards."""
    state = dns_server.snapshot()
    dns_server.clear_log()
    try:
        yield dns_server
    finally:
        dns_server.restore(state)


@pytest.fixture
async def resolver(dns: Any) -> AsyncIterator[Resolver]:
    """A resolver of its own using the test server (deadline :data:`TEST_TIMEOUT`)."""
    r = Resolver(DnsConfig(nameservers=(dns.nameserver,), timeout=TEST_TIMEOUT))
    try:
        yield r
    finally:
        await r.close()


@pytest.fixture
async def dns_context(dns: Any) -> AsyncIterator[Callable[..., Any]]:
    """A factory ``(name, settings, defaults=..., dns_settings=...) -> Context``.

    The contexts' ``[dns]`` section points at the test server (``dns_settings`` overrides
    its keys); their services are closed after the test.
    """
    from courier_pyfilter.testing import make_context

    made: list[Any] = []

    def factory(
        name: str,
        settings: Mapping[str, Any] | None = None,
        *,
        defaults: Mapping[str, Any] | None = None,
        dns_settings: Mapping[str, Any] | None = None,
    ) -> Any:
        ctx = make_context(
            name,
            settings,
            defaults=defaults,
            sections=dns_sections(dns, **dict(dns_settings or {})),
        )
        made.append(ctx)
        return ctx

    try:
        yield factory
    finally:
        for ctx in made:
            await ctx.services.close()
