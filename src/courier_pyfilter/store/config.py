"""Store configuration: the original's ``[ttldb]`` section, plus SQLite and DSN forms.

The section holds already-evaluated Python values (the caller evaluates
``pythonfilter-modules.conf`` with its restricted evaluator).  Accepted forms::

    [ttldb]                     # no section at all: SQLite under the state directory
    type = 'sqlite'
    path = '/var/lib/pythonfilter/ttldb.sqlite3'

    [ttldb]                     # the original's dbm type: SQLite in ``dir`` plus a
    type = 'dbm'                # one-time import of the old dbm files found there
    dir = '/var/lib/pythonfilter'

    [ttldb]                     # 'pg' and 'psycopg2' both mean PostgreSQL via asyncpg
    type = 'pg'
    host = 'db.example.com'
    port = 5432
    db = 'pythonfilter'
    user = 'courier'
    password = 'secret'

    [ttldb]                     # DSN form (type may be omitted: taken from the scheme)
    dsn = 'postgresql://courier@db.example.com/pythonfilter'

Optional keys: ``schema`` (PostgreSQL schema for the store's tables), ``pool_min``,
``pool_max``, ``connect_timeout``, ``command_timeout`` (seconds), ``owner`` (user that
should own a SQLite file created by root; default: the owner of its directory).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from .errors import StoreConfigError

__all__ = [
    "DEFAULT_SQLITE_NAME",
    "DEFAULT_STATE_DIR",
    "SECTION_NAMES",
    "StoreConfig",
    "store_config_from_sections",
]

DEFAULT_STATE_DIR = "/var/lib/pythonfilter"
"""The original's state directory (its sample ``[ttldb] dir``)."""
DEFAULT_SQLITE_NAME = "ttldb.sqlite3"
"""File name of the SQLite store inside the state (or ``dir``) directory."""
SECTION_NAMES = ("ttldb", "TtlDb")
"""The original's code reads ``[ttldb]``, its README shows ``[TtlDb]``: both are accepted."""

_PG_TYPES = frozenset({"pg", "psycopg2", "postgres", "postgresql", "asyncpg"})
_SQLITE_TYPES = frozenset({"sqlite", "sqlite3"})
_KNOWN_KEYS = frozenset(
    {
        "type",
        "dir",
        "path",
        "dsn",
        "host",
        "port",
        "db",
        "user",
        "password",
        "schema",
        "pool_min",
        "pool_max",
        "connect_timeout",
        "command_timeout",
        "owner",
    }
)
_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,62}$")


@dataclass(frozen=True, slots=True)
class StoreConfig:
    """Where and how the store keeps its data; build it with :func:`store_config_from_sections`."""

    backend: Literal["sqlite", "postgres"] = "sqlite"
    """Which backend: the embedded SQLite file or a shared PostgreSQL server."""
    path: str = os.path.join(DEFAULT_STATE_DIR, DEFAULT_SQLITE_NAME)
    """SQLite: the database file."""
    legacy_dir: str | None = None
    """SQLite from ``type = 'dbm'``: directory of the original's dbm files to import once."""
    read_only: bool = False
    """SQLite: open the file read-only (admin inspection); every write raises StoreError."""
    owner: str | None = None
    """SQLite: user (name or uid) to own files created by root; None: the directory's owner."""
    dsn: str | None = None
    """PostgreSQL: a libpq-style DSN; the separate keys below override its parts."""
    host: str | None = None
    """PostgreSQL host name or socket directory."""
    port: int | None = None
    """PostgreSQL port."""
    database: str | None = None
    """PostgreSQL database name (the original's ``db`` key)."""
    user: str | None = None
    """PostgreSQL role."""
    password: str | None = None
    """PostgreSQL password (never shown in messages)."""
    schema: str | None = None
    """PostgreSQL schema holding the store's tables (created if missing); None: search_path."""
    pool_min: int = 1
    """PostgreSQL pool: connections kept open."""
    pool_max: int = 4
    """PostgreSQL pool: upper bound of connections."""
    connect_timeout: float = 5.0
    """Seconds to wait for a connection (SQLite: for the write lock)."""
    command_timeout: float = 10.0
    """PostgreSQL: seconds one statement may take."""

    def describe(self) -> str:
        """A one-line human description, without the password."""
        if self.backend == "sqlite":
            return f"SQLite {self.path}" + (" (read-only)" if self.read_only else "")
        where = _strip_password(self.dsn) if self.dsn else ""
        parts = []
        if self.host:
            parts.append(f"host={self.host}")
        if self.port:
            parts.append(f"port={self.port}")
        if self.database:
            parts.append(f"db={self.database}")
        if self.user:
            parts.append(f"user={self.user}")
        if self.schema:
            parts.append(f"schema={self.schema}")
        return "PostgreSQL " + " ".join(p for p in [where, *parts] if p)

    def with_overrides(self, **changes: Any) -> StoreConfig:
        """A copy with some fields changed (validated like a fresh config)."""
        new = replace(self, **changes)
        _validate(new)
        return new


def _strip_password(dsn: str) -> str:
    """Hide the password of a URL-style DSN."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", dsn)


def _text(section: Mapping[str, Any], key: str) -> str | None:
    value = section.get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise StoreConfigError(f"[ttldb] {key} must be a string, got {value!r}")
    return value


def _number(section: Mapping[str, Any], key: str, default: float) -> float:
    value = section.get(key, default)
    try:
        return float(value)
    except (TypeError, ValueError):
        raise StoreConfigError(f"[ttldb] {key} must be a number, got {value!r}") from None


def _integer(section: Mapping[str, Any], key: str, default: int | None) -> int | None:
    value = section.get(key, default)
    if value is None:
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise StoreConfigError(f"[ttldb] {key} must be an integer, got {value!r}") from None


def _merged_section(sections: Mapping[str, Mapping[str, Any]]) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    # [TtlDb] first, so the spelling the original's code actually reads wins.
    for name in reversed(SECTION_NAMES):
        merged.update(sections.get(name, {}))
    return merged


def _type_from_dsn(dsn: str) -> str:
    scheme = dsn.split(":", 1)[0].lower()
    if scheme in ("postgresql", "postgres"):
        return "pg"
    if scheme in ("sqlite", "sqlite3"):
        return "sqlite"
    if scheme.startswith("mysql"):
        return "mysql"
    raise StoreConfigError(
        f"[ttldb] dsn {_strip_password(dsn)!r}: unknown scheme {scheme!r} "
        "(use postgresql://... or sqlite:///path)"
    )


def _sqlite_path_from_dsn(dsn: str) -> str:
    rest = dsn.split(":", 1)[1]
    if rest.startswith("///"):
        return "/" + rest[3:].lstrip("/")
    if rest.startswith("//"):
        raise StoreConfigError(
            f"[ttldb] dsn {dsn!r}: use sqlite:////absolute/path or sqlite:///rel"
        )
    return rest


def _validate(config: StoreConfig) -> None:
    if config.schema is not None and not _IDENT.match(config.schema):
        raise StoreConfigError(f"[ttldb] schema {config.schema!r} is not a plain SQL identifier")
    if config.pool_min < 1 or config.pool_max < config.pool_min:
        raise StoreConfigError(
            f"[ttldb] need 1 <= pool_min <= pool_max, got {config.pool_min}, {config.pool_max}"
        )
    if config.connect_timeout <= 0 or config.command_timeout <= 0:
        raise StoreConfigError("[ttldb] timeouts must be positive")
    if config.backend == "sqlite" and not config.path:
        raise StoreConfigError("[ttldb] sqlite needs a path")


def store_config_from_sections(
    sections: Mapping[str, Mapping[str, Any]], state_dir: str = DEFAULT_STATE_DIR
) -> StoreConfig:
    """Build the store configuration from evaluated ``pythonfilter-modules.conf`` sections.

    Reads ``[ttldb]`` (and ``[TtlDb]``; ``[ttldb]`` wins per key).  Without either section the
    store is SQLite at ``<state_dir>/ttldb.sqlite3``.  Raises :class:`StoreConfigError` for an
    unknown or unsupported type (MySQL) or malformed values.
    """
    section = _merged_section(sections)
    unknown = sorted(set(section) - _KNOWN_KEYS)
    if unknown:
        raise StoreConfigError(
            f"[ttldb] unknown key(s) {', '.join(unknown)}; known: {', '.join(sorted(_KNOWN_KEYS))}"
        )
    dsn = _text(section, "dsn")
    raw_type = section.get("type")
    if raw_type is not None and not isinstance(raw_type, str):
        raise StoreConfigError(f"[ttldb] type must be a string, got {raw_type!r}")
    kind = (raw_type or (_type_from_dsn(dsn) if dsn else "sqlite")).lower()
    common: dict[str, Any] = {
        "connect_timeout": _number(section, "connect_timeout", 5.0),
        "command_timeout": _number(section, "command_timeout", 10.0),
    }
    if kind == "mysql" or kind.startswith("mysql"):
        raise StoreConfigError(
            "[ttldb] type 'mysql' is not supported by courier-pyfilter: use type = 'sqlite' "
            "(one server, the default) or type = 'pg' (PostgreSQL, shared by a cluster); "
            "copy old data with `courier-pyfilter store migrate`"
        )
    if kind in _SQLITE_TYPES or kind == "dbm":
        directory = _text(section, "dir")
        path = _text(section, "path")
        if path is None and dsn is not None:
            path = _sqlite_path_from_dsn(dsn)
        base = directory if directory is not None else state_dir
        config = StoreConfig(
            backend="sqlite",
            path=path or os.path.join(base, DEFAULT_SQLITE_NAME),
            legacy_dir=base if kind == "dbm" else None,
            owner=None if section.get("owner") is None else str(section["owner"]),
            **common,
        )
    elif kind in _PG_TYPES:
        if dsn is None and not any(section.get(k) for k in ("host", "db", "user")):
            raise StoreConfigError(
                "[ttldb] type 'pg' needs host/port/db/user/password or a dsn = 'postgresql://...'"
            )
        config = StoreConfig(
            backend="postgres",
            dsn=dsn,
            host=_text(section, "host"),
            port=_integer(section, "port", None),
            database=_text(section, "db"),
            user=_text(section, "user"),
            password=_text(section, "password"),
            schema=_text(section, "schema"),
            pool_min=_integer(section, "pool_min", 1) or 1,
            pool_max=_integer(section, "pool_max", 4) or 4,
            **common,
        )
    else:
        raise StoreConfigError(
            f"[ttldb] unknown type {raw_type!r}: use 'sqlite' (default), 'dbm' (SQLite plus a "
            "one-time import of the old dbm files), or 'pg'/'psycopg2' (PostgreSQL)"
        )
    _validate(config)
    return config
