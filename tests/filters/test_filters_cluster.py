"""A two-server "cluster": greylist, comeagain and the rate limits in two processes, one store.

Each worker process runs the real filters with its own store connection and a clock the
test sets, and answers one command per line on stdin: ``FILTER NOW COUNT`` runs COUNT
messages of the same triplet/client concurrently at time NOW and prints their replies as
JSON.  The test sends every command to both processes at once, so the two really race on
the shared database.  Run against both backends; the PostgreSQL case is the cluster.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from collections.abc import Iterator

import pytest

from courier_pyfilter.filters._netkey import md5_key
from courier_pyfilter.store import Store, StoreConfig

WORKER = r"""
import asyncio, json, sys, tempfile

from courier_pyfilter.decision import CONTINUE
from courier_pyfilter.filters.comeagain import ComeAgain
from courier_pyfilter.filters.greylist import Greylist
from courier_pyfilter.filters.ratelimit import RateLimit
from courier_pyfilter.filters.ratelimitauth import RateLimitAuth
from courier_pyfilter.store import Store, StoreConfig
from courier_pyfilter.testing import MessageFactory, make_context

class Clock:
    now = 0.0
    def __call__(self):
        return self.now

async def main():
    config = StoreConfig(**json.loads(sys.argv[1]))
    clock = Clock()
    store = await Store.open(config, clock=clock, background_purge=False)
    filters = {}
    for cls, settings in ((Greylist, {}), (ComeAgain, {}), (RateLimit, {}),
                          (RateLimitAuth, {"max_connections": 30})):
        name = cls.__module__.rsplit(".", 1)[1]
        ctx = make_context(name, settings, defaults=cls.defaults, clock=clock)
        ctx.services.put("store", store)
        flt = cls(ctx)
        await flt.start()
        filters[name] = flt
    tmp = tempfile.mkdtemp(prefix="cluster-")
    messages = MessageFactory(tmp, sender="a@example.com", recipients=("b@example.net",),
                              client_ip="192.0.2.1", auth_user="alice")
    try:
        print("ready", flush=True)
        for line in sys.stdin:
            name, now, count = line.split()
            clock.now = float(now)
            flt = filters[name]
            batch = [messages() for _ in range(int(count))]
            results = await asyncio.gather(*(flt.check(m, flt.ctx) for m in batch))
            print(json.dumps(["" if r is CONTINUE else r.reply() for r in results]),
                  flush=True)
    finally:
        await store.close()

asyncio.run(main())
"""

T0 = 1_700_000_000.0
GREYLISTED = "451 4.7.1 Greylisting in action, please come back in {}"


class Cluster:
    """Two worker processes on one store; :meth:`run` sends a command to both at once."""

    def __init__(self, config: StoreConfig) -> None:
        arg = json.dumps(dataclasses.asdict(config))
        self.procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, arg],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(2)
        ]
        for proc in self.procs:
            assert proc.stdout is not None
            assert proc.stdout.readline().strip() == "ready"

    def run(self, name: str, now: float, count: int) -> list[str]:
        """Both processes handle ``count`` messages at ``now``; all replies ('' = continue)."""
        for proc in self.procs:
            assert proc.stdin is not None
            proc.stdin.write(f"{name} {now!r} {count}\n")
            proc.stdin.flush()
        replies: list[str] = []
        for proc in self.procs:
            assert proc.stdout is not None
            line = proc.stdout.readline()
            assert line, f"worker died (exit status {proc.poll()})"
            replies += json.loads(line)
        return replies

    def close(self) -> None:
        for proc in self.procs:
            if proc.stdin is not None:
                proc.stdin.close()
        for proc in self.procs:
            try:
                assert proc.wait(timeout=30) == 0
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()


@pytest.fixture
def cluster(store_config: StoreConfig) -> Iterator[Cluster]:
    started = Cluster(store_config)
    try:
        yield started
    finally:
        started.close()


async def _entries(config: StoreConfig, name: str) -> dict[str, float]:
    async with await Store.open(config, background_purge=False) as store:
        db = await store.database(name, ttl=86400 * 36)
        return {e.key: e.ts async for e in db.keys(include_expired=True)}


async def _count(config: StoreConfig, name: str, key: str, now: float, minutes: int) -> int:
    async with await Store.open(config, background_purge=False) as store:
        db = await store.database(name, ttl=minutes * 60 + 60)
        return await db.count(key, window=minutes * 60, buckets=minutes, now=now)


async def test_greylisting_in_two_processes(cluster: Cluster, store_config: StoreConfig) -> None:
    key = md5_key("a@example.com", "b@example.net", "192.0.2")
    # 2 x 25 simultaneous first attempts: one first-seen time for everybody
    assert cluster.run("greylist", T0, 25) == [GREYLISTED.format("00:05:00")] * 50
    assert await _entries(store_config, "greylist_NotPassed") == {key: T0}
    # early retries from both servers count from that first attempt
    assert cluster.run("greylist", T0 + 120, 10) == [GREYLISTED.format("00:03:00")] * 20
    # after the delay: every retry on both servers passes, the triplet is promoted once
    assert cluster.run("greylist", T0 + 300, 25) == [""] * 50
    assert await _entries(store_config, "greylist_NotPassed") == {}
    assert await _entries(store_config, "greylist_Passed") == {key: T0 + 300}
    assert cluster.run("greylist", T0 + 400, 5) == [""] * 10


async def test_comeagain_in_two_processes(cluster: Cluster, store_config: StoreConfig) -> None:
    come_again = "421 Please send the message again to prove you are not spamware or virusware."
    replies = cluster.run("comeagain", T0, 10)
    assert come_again in replies
    assert set(replies) <= {come_again, ""}
    assert len(await _entries(store_config, "correspondents")) == 1
    assert cluster.run("comeagain", T0 + 1, 10) == [""] * 20


async def test_rate_limits_are_shared(cluster: Cluster, store_config: StoreConfig) -> None:
    minute = 28_333_334 * 60.0
    # 2 x 40 messages from one client in one minute: exactly 60 pass, wherever they land
    replies = cluster.run("ratelimit", minute + 5, 40)
    assert replies.count("") == 60
    assert set(replies) - {""} == {"421 Too many messages from 192.0.2.1, slow down."}
    assert await _count(store_config, "ratelimit", "192.0.2.1", minute + 5, 1) == 80
    # the next minute starts from zero on both servers
    assert cluster.run("ratelimit", minute + 60, 30) == [""] * 60

    replies = cluster.run("ratelimitauth", minute, 20)
    assert replies.count("") == 30
    exceeded = "421 User alice has exceeded sending limits; wait awhile and try again."
    assert set(replies) - {""} == {exceeded}
    # an hour later the 120-minute window still holds them
    assert set(cluster.run("ratelimitauth", minute + 3600, 1)) == {exceeded}


def test_worker_module_names_match_filter_names() -> None:
    # the worker derives each filter's name from its module
    from courier_pyfilter.filters import comeagain, greylist, ratelimit, ratelimitauth

    names = [m.__name__.rsplit(".", 1)[1] for m in (greylist, comeagain, ratelimit, ratelimitauth)]
    assert names == ["greylist", "comeagain", "ratelimit", "ratelimitauth"]
