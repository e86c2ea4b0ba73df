"""Per-message latency of a chain of three DNS filters, with and without prefetch.

The chain is ``whitelist_dnswl``, ``dnsbl`` and ``spfcheck`` (built from configuration
files exactly as the server builds it), against the project's test DNS server in a child
process that answers every query 20 ms late (``--delay``).  Messages come from an address
that no list names, from a sender whose SPF record (``include:``) needs two lookups and
ends in ``-all`` (so ``spfcheck`` answers 517 after both), so every filter runs and waits
for DNS.  Without prefetch each filter waits for its own
lookups in turn; with it, the chain starts every filter's first lookups when the message
arrives.

    python bench/dns_prefetch.py [--messages 200] [--concurrency 1,20] [--delay 0.02]

Prints p50/p99/mean latency per message for both modes.  Not a test: figures only.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # the test DNS server (dnsserver.py)

from courier_pyfilter.runtime import build_generation  # noqa: E402
from courier_pyfilter.settings import Settings  # noqa: E402
from courier_pyfilter.testing import make_message  # noqa: E402
from dnsserver import spawn_server  # noqa: E402

CHAIN = ["whitelist_dnswl", "dnsbl", "spfcheck"]


def _modules_conf(nameserver: str) -> str:
    return (
        "[dns]\n"
        f"nameservers = [{nameserver!r}]\n"
        "timeout = 5\n"
        "[whitelist_dnswl.py]\n"
        "dnswl_zone = ['wl.test', 'wl2.test']\n"
        "[dnsbl.py]\n"
        "lists = ['bl.test', 'bl2.test']\n"
        "domain_lists = ['dbl.test']\n"
    )


def _percentile(values: list[float], pct: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(pct / 100 * len(ordered)) - 1))
    return ordered[index]


async def _measure(
    top: Path, nameserver: str, messages: int, concurrency: int, prefetch: bool
) -> list[float]:
    chain_conf = top / "pythonfilter.conf"
    chain_conf.write_text("".join(f"{name}\n" for name in CHAIN))
    modules = top / "pythonfilter-modules.conf"
    modules.write_text(_modules_conf(nameserver))
    settings = replace(
        Settings(),
        chain_config=str(chain_conf),
        modules_configs=(str(modules),),
        state_dir=str(top / "state"),
    )
    generation = await build_generation(settings, 1)
    chain = generation.chain
    if not prefetch:
        chain.prefetch = None
    elif chain.prefetch is None:
        raise SystemExit("the chain has no prefetch step: are the DNS filters' hooks gone?")
    spool = top / "spool"
    spool.mkdir(exist_ok=True)
    # distinct client addresses (none listed) so no lookup is shared between messages
    batch = [
        make_message(
            spool,
            client_ip=f"192.0.2.{1 + i % 250}",
            sender=f"user{i}@include.spf.test",
        )
        for i in range(messages)
    ]
    latencies: list[float] = []
    gate = asyncio.Semaphore(concurrency)

    async def one(message: Any) -> None:
        async with gate:
            t0 = time.perf_counter()
            result = await chain.run(message)
            latencies.append(time.perf_counter() - t0)
            if result.decision.code[0] == "4":  # a DNS failure: the figures would mean nothing
                raise SystemExit(f"unexpected reply {result.decision.reply()!r}")

    try:
        await one(batch[0])  # warm-up: resolver created, modules imported
        latencies.clear()
        await asyncio.gather(*(one(m) for m in batch))
    finally:
        await generation.retire()
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--concurrency", default="1,20", help="comma-separated levels")
    parser.add_argument("--delay", type=float, default=0.02, help="DNS answer delay (s)")
    args = parser.parse_args()
    server = spawn_server(delay_all=args.delay)
    try:
        print(
            f"chain: {', '.join(CHAIN)}; DNS server {server.nameserver} answering "
            f"{args.delay * 1000:.0f} ms late; {args.messages} messages per run"
        )
        print(f"{'conns':>5} {'prefetch':>8} {'p50 ms':>8} {'p99 ms':>8} {'mean ms':>8}")
        for level in (int(x) for x in args.concurrency.split(",")):
            rows = {}
            for prefetch in (False, True):
                with tempfile.TemporaryDirectory(prefix="cpf-dnsbench-") as tmp:
                    lat = asyncio.run(
                        _measure(Path(tmp), server.nameserver, args.messages, level, prefetch)
                    )
                rows[prefetch] = lat
                print(
                    f"{level:>5} {'on' if prefetch else 'off':>8} "
                    f"{_percentile(lat, 50) * 1000:8.1f} {_percentile(lat, 99) * 1000:8.1f} "
                    f"{statistics.mean(lat) * 1000:8.1f}"
                )
            ratio = statistics.mean(rows[False]) / statistics.mean(rows[True])
            print(f"{'':>5} {'':>8} without/with prefetch (mean): {ratio:.2f}x")
    finally:
        server.stop()


if __name__ == "__main__":
    main()
