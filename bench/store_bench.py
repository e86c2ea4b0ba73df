"""Benchmark of the store: operations per second for get/set/increment.

Runs each operation on each backend with 1 and 100 concurrent tasks and prints one line
per combination::

    python bench/store_bench.py [--ops 2000] [--backend sqlite --backend postgres]
                                [--dsn postgresql://postgres@127.0.0.1:5432/test]

The PostgreSQL DSN defaults to ``COURIER_PYFILTER_TEST_PG_DSN`` or the local test server;
tables go to a throwaway schema that is dropped afterwards.  SQLite uses a temporary file.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable

from courier_pyfilter.store import Store, StoreConfig, StoreError, TtlDb

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
CONCURRENCY = (1, 100)


async def _measure(op: Callable[[int], Awaitable[object]], total: int, concurrency: int) -> float:
    """Run ``total`` calls of ``op`` spread over ``concurrency`` tasks; return ops/second."""
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            await op(i)

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return total / (time.perf_counter() - started)


def _operations(db: TtlDb) -> dict[str, Callable[[int], Awaitable[object]]]:
    """The measured operations: set/get over 1,000 keys, increment over 10 hot keys."""
    keys = [f"{i:032x}" for i in range(1000)]
    return {
        "set": lambda i: db.set(keys[i % 1000]),
        "get": lambda i: db.get(keys[i % 1000]),
        "increment": lambda i: db.increment(keys[i % 10], window=60),
    }


async def bench_backend(label: str, config: StoreConfig, total: int) -> list[str]:
    """All measurements for one backend, as printable lines."""
    lines = []
    for concurrency in CONCURRENCY:
        pool_max = max(config.pool_max, min(concurrency, 8))
        cfg = config.with_overrides(pool_max=pool_max) if config.backend == "postgres" else config
        async with await Store.open(cfg, background_purge=False) as store:
            db: TtlDb = await store.database(f"bench{concurrency}", ttl=3600, purge_interval=3600)
            ops = _operations(db)
            for name, op in ops.items():
                rate = await _measure(op, total, concurrency)
                lines.append(f"{label:<10} {name:<10} tasks={concurrency:<4} {rate:>10.0f} ops/s")
                print(lines[-1], flush=True)
    return lines


async def _drop_schema(dsn: str, schema: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()


async def main(argv: list[str] | None = None) -> int:
    """Command-line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--ops", type=int, default=2000, help="operations per measurement")
    parser.add_argument(
        "--backend", action="append", choices=["sqlite", "postgres"], help="default: both"
    )
    parser.add_argument(
        "--dsn", default=os.environ.get("COURIER_PYFILTER_TEST_PG_DSN", DEFAULT_DSN)
    )
    args = parser.parse_args(argv)
    backends = args.backend or ["sqlite", "postgres"]
    status = 0
    print(f"# {args.ops} operations per line, python {sys.version.split()[0]}")
    if "sqlite" in backends:
        with tempfile.TemporaryDirectory() as tmp:
            config = StoreConfig(path=os.path.join(tmp, "bench.sqlite3"))
            await bench_backend("sqlite", config, args.ops)
    if "postgres" in backends:
        schema = "cpf_bench_" + uuid.uuid4().hex[:8]
        config = StoreConfig(backend="postgres", dsn=args.dsn, schema=schema)
        try:
            await bench_backend("postgres", config, args.ops)
        except StoreError as exc:
            print(f"postgres: skipped: {exc}", file=sys.stderr)
            status = 1
        else:
            await _drop_schema(args.dsn, schema)
    return status


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
