"""``courier-pyfilter store ...`` admin subcommands."""

from __future__ import annotations

import argparse
import dbm.dumb
import os
import socket
import time

import pytest
from store_testlib import run_isolated

from courier_pyfilter.cli.store import add_store_parser
from courier_pyfilter.store import Entry, Store, StoreConfig

DAY = 86400.0
NOW = time.time()


def run(argv: list[str], **extra: object) -> int:
    parser = argparse.ArgumentParser(prog="courier-pyfilter")
    add_store_parser(parser.add_subparsers())
    args = parser.parse_args(["store", *argv])
    for name, value in extra.items():
        setattr(args, name, value)
    status: int = args.func(args)
    return status


async def _fill(config: StoreConfig) -> None:
    async with await Store.open(config, background_purge=False) as store:
        db = await store.database("greylist_Passed", ttl=DAY, purge_interval=7200)
        await db.import_entries([Entry("a" * 32, NOW), Entry("b" * 32, NOW - 2 * DAY)])
        rl = await store.database("ratelimit", ttl=60)
        await rl.increment("192.0.2.1", window=60)


@pytest.fixture
def filled(sqlite_config: StoreConfig) -> str:
    run_isolated(_fill(sqlite_config))
    return sqlite_config.path


def test_list(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--sqlite", filled, "list"]) == 0
    out = capsys.readouterr().out
    assert filled in out
    line = next(x for x in out.splitlines() if x.startswith("greylist_Passed"))
    assert line.split()[1:5] == ["86400", "7200", "2", "0"]


def test_show_and_delete(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--sqlite", filled, "show", "greylist_Passed"]) == 0
    out = capsys.readouterr().out
    assert "a" * 32 in out and "b" * 32 not in out  # expired entries hidden...
    assert run(["--sqlite", filled, "show", "--expired", "greylist_Passed"]) == 0
    assert "b" * 32 in capsys.readouterr().out  # ...unless asked for
    assert run(["--sqlite", filled, "show", "--counters", "ratelimit"]) == 0
    assert "count 1" in capsys.readouterr().out
    assert run(["--sqlite", filled, "delete", "greylist_Passed", "a" * 32, "z"]) == 1
    captured = capsys.readouterr()
    assert "deleted" in captured.out and "z: not found" in captured.err
    assert run(["--sqlite", filled, "show", "greylist_Passed", "a" * 32]) == 1
    assert "(absent)" in capsys.readouterr().out
    assert run(["--sqlite", filled, "show", "nosuch"]) == 1
    assert "no database named" in capsys.readouterr().err


def test_purge(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--sqlite", filled, "purge"]) == 0
    assert "greylist_Passed: 1 expired rows deleted" in capsys.readouterr().out
    assert run(["--sqlite", filled, "show", "--expired", "greylist_Passed"]) == 0
    assert "b" * 32 not in capsys.readouterr().out


def test_read_only_refuses_writes(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--sqlite", filled, "--read-only", "purge"]) == 1
    assert "read-only" in capsys.readouterr().err


def test_migrate_dbm(tmp_path: os.PathLike[str], capsys: pytest.CaptureFixture[str]) -> None:
    old = str(tmp_path)
    for name in ("greylist_NotPassed", "mystery"):
        with dbm.dumb.open(os.path.join(old, name), "c") as db:
            db[b"c" * 32] = str(int(NOW)).encode()
    target = os.path.join(old, "new.sqlite3")
    assert run(["--sqlite", target, "--no-progress", "migrate", "dbm", "--dir", old]) == 1
    captured = capsys.readouterr()
    assert "greylist_NotPassed: imported 1 entries" in captured.out
    assert "mystery: unknown database, give its TTL" in captured.err
    args = ["--sqlite", target, "migrate", "dbm", "--dir", old, "--name", "mystery"]
    assert run([*args, "--ttl", "3600"]) == 0
    assert run(["--sqlite", target, "list"]) == 0
    out = capsys.readouterr().out
    assert "mystery" in out and "greylist_NotPassed" in out


def test_migrate_sqlite_to_pg(
    filled: str, pg_config: StoreConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pg_config.dsn and pg_config.schema
    where = ["--dsn", pg_config.dsn, "--schema", pg_config.schema]
    assert run([*where, "--progress", "migrate", "sqlite-to-pg", "--from", filled]) == 0
    assert "greylist_Passed: copied 2 rows" in capsys.readouterr().out
    assert run([*where, "list"]) == 0
    assert "greylist_Passed" in capsys.readouterr().out
    # the target must be PostgreSQL
    assert run(["--sqlite", filled, "migrate", "sqlite-to-pg", "--from", filled]) == 1


def test_migrate_pg_legacy_without_tables(
    pg_config: StoreConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    assert pg_config.dsn and pg_config.schema
    where = ["--dsn", pg_config.dsn, "--schema", pg_config.schema]
    args = [*where, "migrate", "pg-legacy", "--legacy-schema", pg_config.schema]
    assert run(args) == 1
    assert "no tables of the original" in capsys.readouterr().err


def test_config_from_admin_cli_sections(filled: str, capsys: pytest.CaptureFixture[str]) -> None:
    sections = {"ttldb": {"type": "sqlite", "path": filled}}
    assert run(["list"], module_sections=sections) == 0
    assert filled in capsys.readouterr().out


def test_errors(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert run(["--dsn", f"postgresql://postgres@127.0.0.1:{port}/x", "list"]) == 1
    assert "cannot connect" in capsys.readouterr().err
    assert run([]) == 2
    sections = {"ttldb": {"type": "mysql"}}
    assert run(["list"], module_sections=sections) == 1
    assert "not supported" in capsys.readouterr().err
