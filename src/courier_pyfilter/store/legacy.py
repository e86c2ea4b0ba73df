"""Importing the original's TtlDb data, and copying between stores.

* dbm files (``[ttldb] type = 'dbm'``): one file per database in ``dir``, keys the hex
  digests, values the decimal whole-second timestamps.  On Debian they are GDBM files, which
  need Python's ``_gdbm`` extension: it is used when importable, else Debian's
  ``python3-gdbm`` extension is loaded from ``/usr/lib/python3.X/lib-dynload`` when it
  matches this interpreter, else a system ``python3`` that has it reads the file in a
  subprocess.  ``dbm.dumb`` files need nothing; ``dbm.ndbm`` needs the ``_dbm`` extension.
* PostgreSQL tables of the original (one per database, ``id CHAR(64), value BIGINT``):
  copied server-side by :func:`import_pg_legacy`.
* :func:`copy_store`: every database, entry and counter of one store into another (e.g.
  SQLite -> PostgreSQL when a server joins a cluster).  Existing keys keep the newer time.
"""

from __future__ import annotations

import dbm
import dbm.dumb
import glob
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from types import ModuleType
from typing import Any

from .base import Entry
from .errors import StoreError
from .store import Store, TtlDb

__all__ = [
    "KNOWN_DATABASES",
    "LegacyFormatError",
    "Progress",
    "copy_store",
    "database_name_for_table",
    "dbm_flavour",
    "find_dbm_file",
    "import_dbm_file",
    "import_pg_legacy",
    "load_gdbm",
    "read_dbm",
]

Progress = Callable[[int], None]
"""Called with the number of rows just processed (drives a progress bar)."""

KNOWN_DATABASES: dict[str, tuple[float, float]] = {
    "auto_whitelist": (2592000.0, 43200.0),
    "correspondents": (2592000.0, 43200.0),
    "goodsenders": (604800.0, 43200.0),
    "badsenders": (604800.0, 43200.0),
    "greylist_Passed": (3110400.0, 7200.0),
    "greylist_NotPassed": (86400.0, 7200.0),
}
"""The original's TtlDb names -> (default ttl, default purge interval) of its filters."""

_BATCH = 500
_GDBM_HINT = (
    "no GDBM module is available to read it: install Debian's python3-gdbm "
    "(apt-get install python3-gdbm) or use a Python built with the _gdbm extension"
)
_DUMP_SCRIPT = (
    "import dbm.gnu, json, sys\n"
    "db = dbm.gnu.open(sys.argv[1], 'r')\n"
    "k = db.firstkey()\n"
    "while k is not None:\n"
    "    sys.stdout.write(json.dumps([k.hex(), db[k].hex()]) + '\\n')\n"
    "    k = db.nextkey(k)\n"
    "db.close()\n"
)


class LegacyFormatError(StoreError):
    """An original TtlDb file cannot be read (unknown format, missing GDBM module...)."""


def find_dbm_file(directory: str, name: str) -> str | None:
    """The dbm base path of database ``name`` in ``directory``, or None if there is none."""
    base = os.path.join(directory, name)
    for suffix in ("", ".db", ".dat", ".pag"):
        if os.path.isfile(base + suffix):
            return base
    return None


def dbm_flavour(path: str) -> str:
    """``'dbm.gnu'``, ``'dbm.ndbm'`` or ``'dbm.dumb'``; LegacyFormatError otherwise."""
    flavour = dbm.whichdb(path)
    if flavour is None:
        raise LegacyFormatError(f"{path}: cannot be read or does not exist")
    if not flavour:
        raise LegacyFormatError(f"{path}: not a dbm file this tool knows")
    return flavour


def load_gdbm() -> ModuleType | None:
    """Python's ``_gdbm`` extension: importable, or Debian's python3-gdbm build for this ABI."""
    try:
        import _gdbm  # type: ignore[import-not-found,unused-ignore]

        return _gdbm  # type: ignore[no-any-return,unused-ignore]
    except ImportError:
        pass
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    for candidate in sorted(glob.glob(f"/usr/lib/python{version}/lib-dynload/_gdbm*")):
        if not any(candidate.endswith(s) for s in suffixes):
            continue
        spec = importlib.util.spec_from_file_location("_gdbm", candidate)
        if spec is None or spec.loader is None:
            continue
        module = importlib.util.module_from_spec(spec)
        try:
            spec.loader.exec_module(module)
        except ImportError:
            continue
        return module
    return None


def _system_pythons() -> list[str]:
    found = []
    for name in ("/usr/bin/python3", shutil.which("python3")):
        same = name and os.path.realpath(name) == os.path.realpath(sys.executable)
        if name and not same and name not in found:
            found.append(name)
    return found


def _read_gdbm_subprocess(path: str) -> list[tuple[bytes, bytes]] | None:
    for python in _system_pythons():
        try:
            proc = subprocess.run(
                [python, "-c", _DUMP_SCRIPT, path],
                capture_output=True,
                text=True,
                timeout=600,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            continue
        if proc.returncode != 0:
            if "No module named" in proc.stderr:
                continue
            raise LegacyFormatError(f"{path}: {python} could not read it: {proc.stderr.strip()}")
        pairs = [json.loads(line) for line in proc.stdout.splitlines() if line]
        return [(bytes.fromhex(k), bytes.fromhex(v)) for k, v in pairs]
    return None


def _read_pairs(path: str) -> list[tuple[bytes, bytes]]:
    flavour = dbm_flavour(path)
    module: Any
    if flavour == "dbm.gnu":
        module = load_gdbm()
        if module is None:
            pairs = _read_gdbm_subprocess(path)
            if pairs is None:
                raise LegacyFormatError(f"{path} is a GDBM file but {_GDBM_HINT}")
            return pairs
    elif flavour == "dbm.dumb":
        module = dbm.dumb
    elif flavour == "dbm.ndbm":
        try:
            import _dbm  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            raise LegacyFormatError(
                f"{path} is an ndbm (Berkeley DB) file but this Python lacks the _dbm module"
            ) from None
        module = _dbm
    else:
        raise LegacyFormatError(f"{path}: unsupported dbm flavour {flavour}")
    try:
        db = module.open(path, "r")
    except Exception as exc:
        raise LegacyFormatError(f"{path}: cannot open ({flavour}): {exc}") from exc
    try:
        return [(bytes(k), bytes(db[k])) for k in db.keys()]  # noqa: SIM118 (gdbm: no __iter__)
    finally:
        db.close()


def read_dbm(path: str) -> tuple[list[Entry], int]:
    """Read an original TtlDb dbm file (blocking): its entries and the count of bad values."""
    entries: list[Entry] = []
    bad = 0
    for raw_key, raw_value in _read_pairs(path):
        try:
            key = raw_key.decode("ascii")
            ts = float(int(raw_value.decode("ascii").strip()))
        except (UnicodeDecodeError, ValueError):
            bad += 1
            continue
        entries.append(Entry(key, ts))
    return entries, bad


def _batches(rows: Sequence[Any], size: int = _BATCH) -> Iterable[Sequence[Any]]:
    for i in range(0, len(rows), size):
        yield rows[i : i + size]


async def import_dbm_file(db: TtlDb, path: str, progress: Progress | None = None) -> int:
    """Import one original dbm file into ``db``; returns the number of entries imported."""
    import asyncio

    entries, _bad = await asyncio.to_thread(read_dbm, path)
    for batch in _batches(entries):
        await db.import_entries(batch)
        if progress is not None:
            progress(len(batch))
    return len(entries)


def database_name_for_table(table: str) -> str:
    """The TtlDb name for an original SQL table.

    The original created its tables with unquoted names, which PostgreSQL folds to lower
    case (``greylist_Passed`` became ``greylist_passed``); known names get their spelling back.
    """
    for name in KNOWN_DATABASES:
        if name.lower() == table.lower():
            return name
    return table


async def import_pg_legacy(
    store: Store,
    tables: Sequence[str] | None = None,
    *,
    schema: str | None = None,
    progress: Progress | None = None,
) -> dict[str, int]:
    """Import the original's PostgreSQL TtlDb tables (in the store's own database).

    ``tables`` defaults to every table shaped like the original's.  Each table becomes
    the database named by :func:`database_name_for_table`; keys lose their CHAR padding.
    Returns rows imported per table.
    """
    from .postgres import PostgresBackend

    backend = store.backend
    if not isinstance(backend, PostgresBackend):
        raise StoreError("importing the original's PostgreSQL tables needs a PostgreSQL store")
    names = list(tables) if tables is not None else await backend.legacy_tables(schema)
    result: dict[str, int] = {}
    for table in names:
        db = database_name_for_table(table)
        ttl, purge = KNOWN_DATABASES.get(db, (None, None))
        if ttl is not None and purge is not None:
            await backend.register(db, ttl, purge)
        result[table] = await backend.import_legacy_table(table, db, schema)
        if progress is not None:
            progress(result[table])
    return result


async def copy_store(
    source: Store, target: Store, *, progress: Progress | None = None
) -> dict[str, int]:
    """Copy every database of ``source`` into ``target``; rows copied per database."""
    result: dict[str, int] = {}
    for info in await source.databases():
        if info.ttl is not None and info.purge_interval is not None:
            await target.backend.register(info.name, info.ttl, info.purge_interval)
        if info.legacy_imported:
            await target.backend.mark_legacy_imported(info.name)
        copied = 0
        async for entries in source.backend.entries(info.name):
            await target.backend.import_entries(info.name, entries)
            copied += len(entries)
            if progress is not None:
                progress(len(entries))
        async for counters in source.backend.counters(info.name):
            await target.backend.import_counters(info.name, counters)
            copied += len(counters)
            if progress is not None:
                progress(len(counters))
        result[info.name] = copied
    return result
