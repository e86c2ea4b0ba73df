"""Two processes hammer one key: the atomic operations stay exact on both backends."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

from courier_pyfilter.store import Store, StoreConfig

WORKER = r"""
import asyncio, json, sys
from courier_pyfilter.store import Store, StoreConfig

async def main() -> None:
    config = StoreConfig(**json.loads(sys.argv[1]))
    n = int(sys.argv[2])
    store = await Store.open(config, background_purge=False)
    try:
        db = await store.database("ratelimit", ttl=3600, purge_interval=3600)
        print("ready", flush=True)
        sys.stdin.readline()  # wait until both processes are ready
        totals = await asyncio.gather(
            *(db.increment("198.51.100.7", window=3600, now=7200.0) for _ in range(n))
        )
        firsts = await asyncio.gather(*(db.set_if_absent(f"k{i}") for i in range(50)))
        print(json.dumps({"totals": totals, "firsts": firsts}), flush=True)
    finally:
        await store.close()

asyncio.run(main())
"""


def _run_two(config: StoreConfig, per_process: int) -> list[dict[str, list[int]]]:
    arg = json.dumps(dataclasses.asdict(config))
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WORKER, arg, str(per_process)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    try:
        for proc in procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        results = []
        for proc in procs:
            out, _ = proc.communicate(timeout=120)
            assert proc.returncode == 0
            results.append(json.loads(out.strip().splitlines()[-1]))
        return results
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


async def test_1000_increments_from_two_processes(store_config: StoreConfig) -> None:
    results = _run_two(store_config, 500)
    totals = results[0]["totals"] + results[1]["totals"]
    # every increment saw a distinct running total: none lost, none doubled
    assert sorted(totals) == list(range(1, 1001))
    # and set_if_absent had exactly one winner per key across the two processes
    wins = [a + b for a, b in zip(results[0]["firsts"], results[1]["firsts"], strict=True)]
    assert wins == [1] * 50
    async with await Store.open(store_config, background_purge=False) as store:
        db = await store.database("ratelimit", ttl=3600)
        assert await db.count("198.51.100.7", window=3600, now=7200.0) == 1000
