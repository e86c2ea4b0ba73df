"""Fixtures for the store tests: both backends, a fake clock, a throwaway PostgreSQL.

PostgreSQL comes from ``COURIER_PYFILTER_TEST_PG_DSN`` (default
``postgresql://postgres@127.0.0.1:5432/test``).  When that variable is unset and the default
server does not answer, a throwaway cluster is started from the PostgreSQL binaries if they
exist.  Every test gets its own schema, so parallel runs do not collide.  Without any server
the PostgreSQL tests skip, except under ``CI=true`` where they fail.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
from store_testlib import (
    DEFAULT_DSN,
    FakeClock,
    PgCluster,
    _reachable,
    drop_schema,
    run_isolated,
    start_cluster,
    unavailable,
)

from courier_pyfilter.store import Store, StoreConfig


@pytest.fixture(scope="session")
def pg_dsn() -> Iterator[str]:
    """DSN of a PostgreSQL server for the shared suite."""
    given = os.environ.get("COURIER_PYFILTER_TEST_PG_DSN")
    error = run_isolated(_reachable(given or DEFAULT_DSN))
    if error is None:
        yield given or DEFAULT_DSN
        return
    if given:
        unavailable(f"COURIER_PYFILTER_TEST_PG_DSN={given} is not reachable: {error}")
    cluster = start_cluster()
    try:
        yield cluster.dsn
    finally:
        cluster.destroy()


@pytest.fixture
def pg_cluster() -> Iterator[PgCluster]:
    """A private throwaway cluster that a test may stop and restart."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        cluster.destroy()


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock injected into the store."""
    return FakeClock()


@pytest.fixture
def pg_config(pg_dsn: str) -> Iterator[StoreConfig]:
    """A PostgreSQL store configuration in a fresh schema, dropped afterwards."""
    schema = "cpf_test_" + uuid.uuid4().hex[:12]
    yield StoreConfig(backend="postgres", dsn=pg_dsn, schema=schema, command_timeout=10)
    run_isolated(drop_schema(pg_dsn, schema))


@pytest.fixture
def sqlite_config(tmp_path: os.PathLike[str]) -> StoreConfig:
    """A SQLite store configuration in a temporary directory."""
    return StoreConfig(backend="sqlite", path=os.path.join(tmp_path, "state", "ttldb.sqlite3"))


@pytest.fixture(params=["sqlite", "postgres"])
def store_config(request: pytest.FixtureRequest) -> StoreConfig:
    """Each backend in turn (the shared suite runs against both)."""
    name = "sqlite_config" if request.param == "sqlite" else "pg_config"
    config: StoreConfig = request.getfixturevalue(name)
    return config


@pytest.fixture
async def store(store_config: StoreConfig, clock: FakeClock) -> AsyncIterator[Store]:
    """An open store on each backend with the fake clock and no background purge."""
    opened = await Store.open(store_config, clock=clock, background_purge=False)
    try:
        yield opened
    finally:
        await opened.close()
