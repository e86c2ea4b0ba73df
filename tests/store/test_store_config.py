"""``[ttldb]`` / ``[TtlDb]`` configuration: the original's types plus SQLite and DSNs."""

from __future__ import annotations

import pytest

from courier_pyfilter.store import StoreConfig, StoreConfigError, store_config_from_sections


def test_no_section_means_sqlite_under_the_state_dir() -> None:
    config = store_config_from_sections({}, "/srv/state")
    assert config == StoreConfig(backend="sqlite", path="/srv/state/ttldb.sqlite3")
    assert config.legacy_dir is None


def test_default_state_dir_is_the_originals() -> None:
    assert store_config_from_sections({}).path == "/var/lib/pythonfilter/ttldb.sqlite3"


def test_dbm_means_sqlite_in_dir_with_legacy_import() -> None:
    config = store_config_from_sections({"ttldb": {"type": "dbm", "dir": "/old"}}, "/state")
    assert (config.backend, config.path, config.legacy_dir) == (
        "sqlite",
        "/old/ttldb.sqlite3",
        "/old",
    )
    no_dir = store_config_from_sections({"ttldb": {"type": "dbm"}}, "/state")
    assert no_dir.legacy_dir == "/state"


def test_sqlite_with_path_and_dsn() -> None:
    assert store_config_from_sections(
        {"ttldb": {"type": "sqlite", "path": "/x/y.db"}}, "/s"
    ).path == ("/x/y.db")
    from_dsn = store_config_from_sections({"ttldb": {"dsn": "sqlite:////abs/t.db"}}, "/s")
    assert (from_dsn.backend, from_dsn.path) == ("sqlite", "/abs/t.db")


@pytest.mark.parametrize("kind", ["pg", "psycopg2", "PG", "postgresql"])
def test_original_postgres_types(kind: str) -> None:
    section = {
        "type": kind,
        "host": "db.example",
        "port": "5433",
        "db": "filters",
        "user": "courier",
        "password": "pw",
    }
    config = store_config_from_sections({"ttldb": section}, "/s")
    assert config.backend == "postgres"
    assert (config.host, config.port, config.database, config.user, config.password) == (
        "db.example",
        5433,
        "filters",
        "courier",
        "pw",
    )
    assert "pw" not in config.describe()


def test_dsn_form_infers_postgres_and_hides_password() -> None:
    config = store_config_from_sections(
        {"ttldb": {"dsn": "postgresql://u:hunter2@h/db", "schema": "filters", "pool_max": 2}},
        "/s",
    )
    assert (config.backend, config.schema, config.pool_max) == ("postgres", "filters", 2)
    assert "hunter2" not in config.describe()


def test_readme_spelling_is_accepted_and_code_spelling_wins() -> None:
    assert store_config_from_sections({"TtlDb": {"type": "pg", "host": "h"}}, "/s").backend == (
        "postgres"
    )
    both = store_config_from_sections(
        {"TtlDb": {"type": "pg", "host": "h"}, "ttldb": {"type": "sqlite"}}, "/s"
    )
    assert both.backend == "sqlite"


def test_mysql_gets_a_clear_error_naming_alternatives() -> None:
    with pytest.raises(StoreConfigError) as info:
        store_config_from_sections({"ttldb": {"type": "mysql", "host": "h"}}, "/s")
    message = str(info.value)
    assert "mysql" in message.lower() and "sqlite" in message and "'pg'" in message


@pytest.mark.parametrize(
    "section",
    [
        {"type": "redis"},
        {"type": 3},
        {"type": "pg"},  # nothing to connect to
        {"type": "pg", "host": "h", "port": "many"},
        {"type": "pg", "host": "h", "schema": "bad-name; drop"},
        {"type": "pg", "host": "h", "pool_min": 5, "pool_max": 2},
        {"type": "sqlite", "bogus": 1},
        {"dsn": "ftp://x"},
        {"type": "sqlite", "connect_timeout": 0},
    ],
)
def test_invalid_sections(section: dict[str, object]) -> None:
    with pytest.raises(StoreConfigError):
        store_config_from_sections({"ttldb": section}, "/s")


def test_overrides_are_validated() -> None:
    config = store_config_from_sections({}, "/s")
    assert config.with_overrides(read_only=True).read_only
    with pytest.raises(StoreConfigError):
        config.with_overrides(pool_min=0)
