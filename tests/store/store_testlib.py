"""Helpers for the store tests (a fake clock, a throwaway PostgreSQL cluster, skips).

A uniquely named module rather than ``conftest`` so test files can import it without
colliding with other directories' conftest modules.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

import asyncpg
import pytest

T = TypeVar("T")
DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/test"
IN_CI = os.environ.get("CI", "").lower() == "true"


def unavailable(reason: str) -> None:
    """Skip (or fail under CI=true) because a needed service is missing."""
    if IN_CI:
        pytest.fail(f"required in CI: {reason}")
    pytest.skip(reason)


@dataclass
class FakeClock:
    """An injectable clock: call it for the time, move it with :meth:`advance`."""

    now: float = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pg_bindir() -> str | None:
    """Directory of initdb/pg_ctl, or None when PostgreSQL is not installed."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if os.path.exists(os.path.join(candidate, "pg_ctl")):
            return candidate
    found = shutil.which("pg_ctl")
    return os.path.dirname(found) if found else None


@dataclass
class PgCluster:
    """A throwaway PostgreSQL cluster (initdb + pg_ctl, run as user postgres when root)."""

    bindir: str
    base: str = field(default_factory=lambda: tempfile.mkdtemp(prefix="pgt", dir="/tmp"))
    port: int = field(default_factory=_free_port)

    @property
    def dsn(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *argv: str) -> None:
        cmd = [os.path.join(self.bindir, argv[0]), *argv[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        subprocess.run(cmd, check=True, capture_output=True, cwd=self.base, timeout=120)

    def init(self) -> None:
        os.chmod(self.base, 0o755)
        if os.geteuid() == 0:
            shutil.chown(self.base, "postgres")
        self._run("initdb", "-D", f"{self.base}/data", "-A", "trust", "-U", "postgres",
                  "--no-sync")  # fmt: skip
        self.start()

    def start(self) -> None:
        opts = (
            f"-p {self.port} -k {self.base} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off"
        )
        self._run("pg_ctl", "-D", f"{self.base}/data", "-l", f"{self.base}/log", "-w",
                  "-t", "60", "-o", opts, "start")  # fmt: skip

    def stop(self) -> None:
        self._run("pg_ctl", "-D", f"{self.base}/data", "-m", "fast", "-w", "stop")

    def destroy(self) -> None:
        try:
            self.stop()
        except subprocess.CalledProcessError:
            pass
        shutil.rmtree(self.base, ignore_errors=True)


def run_isolated(coro: Coroutine[Any, Any, T]) -> T:
    """Run a coroutine to completion on its own loop in a worker thread (from sync code)."""
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, coro).result()


async def _reachable(dsn: str) -> str | None:
    try:
        conn = await asyncpg.connect(dsn, timeout=3)
    except Exception as exc:
        return f"{type(exc).__name__}: {exc}"
    await conn.close()
    return None


def start_cluster() -> PgCluster:
    """Start a throwaway cluster, or skip/fail when the binaries are missing."""
    bindir = pg_bindir()
    if bindir is None:
        unavailable("no PostgreSQL binaries (initdb/pg_ctl) for a throwaway cluster")
        raise AssertionError  # unreachable
    cluster = PgCluster(bindir)
    try:
        cluster.init()
    except (subprocess.CalledProcessError, OSError) as exc:
        cluster.destroy()
        unavailable(f"could not start a throwaway PostgreSQL cluster: {exc}")
    return cluster


async def drop_schema(dsn: str, schema: str) -> None:
    """Remove a test schema and everything in it."""
    conn = await asyncpg.connect(dsn, timeout=5)
    try:
        await conn.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
    finally:
        await conn.close()
