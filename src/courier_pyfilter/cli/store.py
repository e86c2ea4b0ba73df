"""``courier-pyfilter store ...``: inspect, maintain and migrate the expiring key/value store.

Subcommands::

    list                          databases with TTL, purge interval and row counts
    show DB [KEY ...]             entries (all, or the given keys) and, with --counters, counters
    delete DB KEY ...             remove keys
    purge [DB ...]                delete expired rows now (all registered databases by default)
    migrate dbm [--dir D]         import the original's dbm TtlDb files
    migrate pg-legacy             import the original's PostgreSQL TtlDb tables in place
    migrate sqlite-to-pg          copy a SQLite store into the configured PostgreSQL store

The store is the one configured in ``[ttldb]`` (when the admin CLI passes the evaluated
configuration as ``args.store_config`` or ``args.module_sections``), else SQLite in the state
directory; ``--sqlite PATH`` or ``--dsn DSN`` select another one.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import math
import os
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from typing import Any

from ..store import (
    DEFAULT_STATE_DIR,
    Store,
    StoreConfig,
    StoreError,
    TtlDb,
    store_config_from_sections,
)
from ..store.config import DEFAULT_SQLITE_NAME
from ..store.legacy import (
    KNOWN_DATABASES,
    Progress,
    copy_store,
    find_dbm_file,
    import_dbm_file,
    import_pg_legacy,
)

__all__ = ["add_store_parser", "resolve_store_config", "run_store_command"]

PROG = "courier-pyfilter store"
_FOREVER = 100 * 365 * 86400.0


def _fmt_time(ts: float) -> str:
    stamp = datetime.datetime.fromtimestamp(ts, tz=datetime.UTC)
    return stamp.strftime("%Y-%m-%d %H:%M:%S UTC")


def _fmt_seconds(value: float | None) -> str:
    return "-" if value is None else f"{value:g}"


def resolve_store_config(args: argparse.Namespace) -> StoreConfig:
    """The store selected by the parsed arguments (see the module docstring)."""
    state_dir: str = getattr(args, "state_dir", None) or DEFAULT_STATE_DIR
    config: StoreConfig | None = getattr(args, "store_config", None)
    if config is None:
        sections = getattr(args, "module_sections", None) or {}
        config = store_config_from_sections(sections, state_dir)
    changes: dict[str, Any] = {"legacy_dir": None}
    if getattr(args, "sqlite", None):
        changes |= {"backend": "sqlite", "path": args.sqlite}
    elif getattr(args, "dsn", None):
        changes |= {"backend": "postgres", "dsn": args.dsn, "host": None, "port": None}
        changes |= {"database": None, "user": None, "password": None}
    if getattr(args, "schema", None):
        changes["schema"] = args.schema
    if getattr(args, "read_only", False):
        changes["read_only"] = True
    return config.with_overrides(**changes)


@contextmanager
def _progress(args: argparse.Namespace, total: int | None, desc: str) -> Iterator[Progress]:
    """A tqdm bar on a terminal (or with --progress), else a no-op callback."""
    wanted = args.progress if args.progress is not None else sys.stderr.isatty()
    if not wanted:
        yield lambda n: None
        return
    try:
        from tqdm import tqdm
    except ImportError:
        print(f"{desc}: (install tqdm for a progress bar)", file=sys.stderr)
        yield lambda n: None
        return
    bar = tqdm(total=total, desc=desc, unit="rows", file=sys.stderr)
    try:
        yield bar.update
    finally:
        bar.close()


async def _with_store(config: StoreConfig, body: Callable[[Store], Awaitable[int]]) -> int:
    store = await Store.open(config, background_purge=False)
    try:
        return await body(store)
    finally:
        await store.close()


# -- subcommands -----------------------------------------------------------------------------


async def _cmd_list(args: argparse.Namespace, store: Store) -> int:
    infos = await store.databases()
    print(f"# {store.backend.description}")
    print(f"{'database':<24} {'ttl':>10} {'purge':>8} {'entries':>9} {'counters':>9}  imported")
    for info in infos:
        print(
            f"{info.name:<24} {_fmt_seconds(info.ttl):>10} {_fmt_seconds(info.purge_interval):>8}"
            f" {info.entries:>9} {info.counters:>9}  {'yes' if info.legacy_imported else 'no'}"
        )
    return 0


async def _handle(store: Store, name: str) -> TtlDb:
    """A handle on an existing database, without registering or changing it."""
    for info in await store.databases():
        if info.name == name:
            ttl = info.ttl or KNOWN_DATABASES.get(name, (_FOREVER, _FOREVER))[0]
            return TtlDb(store, name, ttl, info.purge_interval or _FOREVER)
    raise StoreError(f"no database named {name!r} (see `{PROG} list`)")


async def _cmd_show(args: argparse.Namespace, store: Store) -> int:
    db = await _handle(store, args.database)
    shown = 0
    missing = 0
    if args.keys:
        for key in args.keys:
            entry = await db.get_entry(key, now=-math.inf if args.expired else None)
            if entry is None:
                print(f"{key}  (absent)")
                missing += 1
            else:
                print(f"{entry.key}  {entry.ts:.0f}  {_fmt_time(entry.ts)}  {entry.data or ''}")
    else:
        async for entry in db.keys(include_expired=args.expired):
            if args.limit and shown >= args.limit:
                break
            print(f"{entry.key}  {entry.ts:.0f}  {_fmt_time(entry.ts)}  {entry.data or ''}")
            shown += 1
    if args.counters:
        async for row in db.counters():
            print(f"{row.key}  bucket {row.bucket}  from {_fmt_time(row.start)}  count {row.count}")
    return 1 if missing else 0


async def _cmd_delete(args: argparse.Namespace, store: Store) -> int:
    db = await _handle(store, args.database)
    status = 0
    for key in args.keys:
        if await db.delete(key) is None:
            print(f"{key}: not found", file=sys.stderr)
            status = 1
        else:
            print(f"{key}: deleted")
    return status


async def _cmd_purge(args: argparse.Namespace, store: Store) -> int:
    removed = await store.purge_all()
    for name, count in sorted(removed.items()):
        if not args.databases or name in args.databases:
            print(f"{name}: {count} expired rows deleted")
    unknown = set(args.databases) - set(removed)
    for name in sorted(unknown):
        print(f"{name}: no such registered database", file=sys.stderr)
    return 1 if unknown else 0


def _dbm_names(directory: str) -> list[str]:
    import dbm

    names = set()
    for entry in os.listdir(directory):
        base = entry
        for suffix in (".db", ".dat", ".dir", ".bak", ".pag"):
            if base.endswith(suffix):
                base = base[: -len(suffix)]
        if dbm.whichdb(os.path.join(directory, base)):
            names.add(base)
    return sorted(names)


async def _cmd_migrate_dbm(args: argparse.Namespace, store: Store) -> int:
    directory = args.dir or getattr(args, "state_dir", None) or DEFAULT_STATE_DIR
    names = args.names or await asyncio.to_thread(_dbm_names, directory)
    if not names:
        print(f"no dbm files found in {directory}", file=sys.stderr)
        return 1
    status = 0
    for name in names:
        path = find_dbm_file(directory, name)
        if path is None:
            print(f"{name}: no dbm file in {directory}", file=sys.stderr)
            status = 1
            continue
        ttl, purge = KNOWN_DATABASES.get(name, (args.ttl, args.ttl))
        if ttl is None or purge is None:
            print(f"{name}: unknown database, give its TTL with --ttl SECONDS", file=sys.stderr)
            status = 1
            continue
        db = await store.database(name, ttl=args.ttl or ttl, purge_interval=purge)
        try:
            with _progress(args, None, name) as progress:
                count = await import_dbm_file(db, path, progress)
        except StoreError as exc:
            print(f"{name}: {exc}", file=sys.stderr)
            status = 1
            continue
        await store.backend.mark_legacy_imported(name)
        print(f"{name}: imported {count} entries from {path}")
    return status


async def _cmd_migrate_pg(args: argparse.Namespace, store: Store) -> int:
    with _progress(args, None, "tables") as progress:
        result = await import_pg_legacy(
            store, args.tables or None, schema=args.legacy_schema, progress=progress
        )
    if not result:
        print("no tables of the original (id CHAR(64), value BIGINT) found", file=sys.stderr)
        return 1
    for table, count in sorted(result.items()):
        print(f"{table}: imported {count} rows")
    return 0


async def _cmd_migrate_copy(args: argparse.Namespace, store: Store) -> int:
    if store.config is None or store.config.backend != "postgres":
        raise StoreError("the target must be PostgreSQL: give --dsn or configure [ttldb] type='pg'")
    state_dir = getattr(args, "state_dir", None) or DEFAULT_STATE_DIR
    path = args.source or os.path.join(state_dir, DEFAULT_SQLITE_NAME)
    source_config = StoreConfig(backend="sqlite", path=path, read_only=True)
    source = await Store.open(source_config, background_purge=False)
    try:
        total = sum(i.entries + i.counters for i in await source.databases())
        with _progress(args, total, "copy") as progress:
            result = await copy_store(source, store, progress=progress)
    finally:
        await source.close()
    for name, count in sorted(result.items()):
        print(f"{name}: copied {count} rows")
    return 0


_COMMANDS: dict[str, Callable[[argparse.Namespace, Store], Awaitable[int]]] = {
    "list": _cmd_list,
    "show": _cmd_show,
    "delete": _cmd_delete,
    "purge": _cmd_purge,
    "migrate-dbm": _cmd_migrate_dbm,
    "migrate-pg-legacy": _cmd_migrate_pg,
    "migrate-sqlite-to-pg": _cmd_migrate_copy,
}


def run_store_command(args: argparse.Namespace) -> int:
    """Handler of ``courier-pyfilter store``: run the chosen subcommand, return exit status."""
    command = getattr(args, "store_command", None)
    if command is None:
        print(f"{PROG}: choose a subcommand (see --help)", file=sys.stderr)
        return 2
    try:
        config = resolve_store_config(args)
        return asyncio.run(_with_store(config, lambda s: _COMMANDS[command](args, s)))
    except StoreError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return 1


def add_store_parser(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register the ``store`` subcommand (its handler is ``args.func(args) -> int``)."""
    parser = subparsers.add_parser(
        "store",
        help="inspect, purge and migrate the expiring key/value store",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(func=run_store_command, store_command=None)
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--sqlite", metavar="PATH", help="use this SQLite store file")
    where.add_argument("--dsn", metavar="DSN", help="use this PostgreSQL store (postgresql://...)")
    parser.add_argument("--schema", help="PostgreSQL schema of the store tables")
    parser.add_argument(
        "--state-dir",
        dest="state_dir",
        default=argparse.SUPPRESS,
        help=f"state directory (default {DEFAULT_STATE_DIR})",
    )
    parser.add_argument("--read-only", action="store_true", help="open the store read-only")
    bar = parser.add_mutually_exclusive_group()
    bar.add_argument("--progress", action="store_true", default=None, help="always show progress")
    bar.add_argument("--no-progress", dest="progress", action="store_false", help="never show it")

    sub = parser.add_subparsers(title="store commands", metavar="COMMAND")
    p = sub.add_parser("list", help="list databases")
    p.set_defaults(store_command="list")
    p = sub.add_parser("show", help="show the entries of a database")
    p.add_argument("database")
    p.add_argument("keys", nargs="*", help="only these keys")
    p.add_argument("--limit", type=int, default=0, help="show at most N entries")
    p.add_argument("--expired", action="store_true", help="include expired, unpurged entries")
    p.add_argument("--counters", action="store_true", help="also show counter buckets")
    p.set_defaults(store_command="show")
    p = sub.add_parser("delete", help="delete keys from a database")
    p.add_argument("database")
    p.add_argument("keys", nargs="+")
    p.set_defaults(store_command="delete")
    p = sub.add_parser("purge", help="delete expired entries now")
    p.add_argument("databases", nargs="*", help="only report these databases")
    p.set_defaults(store_command="purge")

    migrate = sub.add_parser("migrate", help="import the original's data or copy a store")
    msub = migrate.add_subparsers(title="migrations", metavar="SOURCE")
    p = msub.add_parser("dbm", help="import the original's dbm TtlDb files")
    p.add_argument("--dir", help="directory of the dbm files (default: the state directory)")
    p.add_argument("--name", dest="names", action="append", help="database name (repeatable)")
    p.add_argument("--ttl", type=float, help="TTL for databases the tool does not know")
    p.set_defaults(store_command="migrate-dbm")
    p = msub.add_parser("pg-legacy", help="import the original's PostgreSQL tables in place")
    p.add_argument("--table", dest="tables", action="append", help="table name (repeatable)")
    p.add_argument("--legacy-schema", help="schema of the original's tables (default: current)")
    p.set_defaults(store_command="migrate-pg-legacy")
    p = msub.add_parser("sqlite-to-pg", help="copy a SQLite store into the PostgreSQL store")
    p.add_argument("--from", dest="source", metavar="PATH", help="SQLite store file")
    p.set_defaults(store_command="migrate-sqlite-to-pg")
