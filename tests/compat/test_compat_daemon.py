"""Filters written for courier-pythonfilter 3.0.6 run unchanged under the real daemon.

The daemon runs as a subprocess (``pythonfilter --socket S --config C --modules-config M``)
and is spoken to like Courier's submit does.  ``legacy_filters/compat_camel.py`` (camelCase,
TtlDb counter) is found through ``filter_path``; ``legacy_filters/compat_snake.py``
(snake_case, XFilter) is imported as ``pythonfilter.compat_snake`` from a directory in
``PYTHONFILTER_LEGACY_PATH``.

Two variants: ``plain`` runs the daemon as shipped today (the compatibility layer finds the
modules configuration through ``PYTHONFILTER_MODULES_CONFIG``); ``wired`` runs it with
``courier.attach_daemon(services, loop)`` called when the daemon creates its services,
which is the wiring the daemon is meant to do itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FILTERS = HERE / "legacy_filters"

WIRED_LAUNCHER = """
import asyncio, sys
import courier
from courier_pyfilter import runtime

class WiredServices(runtime.Services):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        courier.attach_daemon(self, asyncio.get_running_loop())

runtime.Services = WiredServices
from courier_pyfilter.cli.daemon import main
sys.exit(main(sys.argv[1:]))
"""

DATA = (
    "Received: from client.example ([192.0.2.7])\n"
    "  by mx.courier.test with ESMTP; Wed, 25 Nov 2026 11:20:27 +0000\n"
    "From: sender@example.com\n"
    "To: rcpt@courier.test\n"
    "Subject: compat test\n"
    "\n"
    "Hello.\n"
)


def control(sender: str, n: int, recipients: tuple[str, ...]) -> str:
    lines = [f"s{sender}", "fdns; client.example ([::ffff:192.0.2.7])", "e", "t", f"M{n:016X}"]
    for rcpt in recipients:
        lines += [f"r{rcpt}", "R", "N"]
    lines += ["OTCPREMOTEIP=::ffff:192.0.2.7", "usmtp"]
    return "\n".join(lines) + "\n"


class Daemon:
    """A throw-away tree and the daemon serving it."""

    def __init__(self, root: Path, wired: bool) -> None:
        self.root = root
        self.wired = wired
        self.spool = root / "spool"
        self.fp = root / "fp"
        self.legacy = root / "legacy"
        self.etc = root / "etc"
        self.state = root / "state"
        for d in (self.spool, self.fp, self.legacy, self.etc, self.state, root / "af"):
            d.mkdir()
        self.socket = root / "af" / "pf"
        self.db = self.state / "compat.sqlite3"
        self.modules = root / "pythonfilter-modules.conf"
        self.chain = root / "pythonfilter.conf"
        self.log = root / "daemon.log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.count = 0
        shutil.copy(FILTERS / "compat_camel.py", self.fp)
        shutil.copy(FILTERS / "compat_snake.py", self.legacy)
        (self.etc / "me").write_text("wired.example\n")
        self.chain.write_text("compat_snake\ncompat_camel\n")
        self.modules.write_text(
            "[courier-pyfilter]\n"
            f"filter_path = [{str(self.fp)!r}]\n"
            f"tmp_dir = {str(self.spool)!r}\n"
            f"state_dir = {str(self.state)!r}\n"
            f"sysconfdir = {str(self.etc)!r}\n"
            "request_timeout = 5.0\n"
            "\n[ttldb]\ntype = 'sqlite'\n"
            f"path = {str(self.db)!r}\n"
            "\n[compat_camel.py]\nmaxMessages = 2\nrejectMessage = 'too many messages'\n"
            "\n[compat_snake.py]\n"
            "tag_value = 'from-config'\n"
            "blocked_senders = ['blocked@example.com']\n"
            "tag_header = 'X-Compat-Configured'\n"
        )

    def command(self) -> list[str]:
        args = [
            "--socket",
            str(self.socket),
            "--config",
            str(self.chain),
            "--modules-config",
            str(self.modules),
        ]
        if self.wired:
            return [sys.executable, "-c", WIRED_LAUNCHER, *args]
        script = Path(sys.executable).with_name("pythonfilter")
        if script.exists():
            return [str(script), *args]
        return [sys.executable, "-m", "courier_pyfilter.cli.daemon", *args]

    def start(self) -> None:
        env = {k: v for k, v in os.environ.items() if k in ("PATH", "HOME", "LANG")}
        env["PYTHONFILTER_LEGACY_PATH"] = str(self.legacy)
        if not self.wired:
            env["PYTHONFILTER_MODULES_CONFIG"] = str(self.modules)
        with self.log.open("ab") as log:
            self.proc = subprocess.Popen(
                self.command(),
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=log,
                cwd=self.root,
                env=env,
            )
        deadline = time.monotonic() + 20
        while not self.socket.exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"daemon did not start:\n{self.log.read_text()}")
            time.sleep(0.02)

    def stop(self) -> None:
        proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        assert proc.stdin is not None
        proc.stdin.close()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)

    def message(self, sender: str, recipients: tuple[str, ...]) -> tuple[Path, Path]:
        self.count += 1
        data, ctl = self.spool / f"D{self.count}", self.spool / f"C{self.count}"
        data.write_text(DATA)
        ctl.write_text(control(sender, self.count, recipients))
        return data, ctl

    async def ask(
        self, sender: str = "sender@example.com", recipients: tuple[str, ...] = ("a@courier.test",)
    ) -> tuple[bytes, Path]:
        data, ctl = self.message(sender, recipients)
        reader, writer = await asyncio.open_unix_connection(str(self.socket))
        try:
            writer.write(f"{data}\n{ctl}\n\n".encode())
            await writer.drain()
            async with asyncio.timeout(15):
                reply = await reader.read()
        finally:
            writer.close()
        return reply, data


@pytest.fixture(params=["plain", "wired"])
def daemon(request: pytest.FixtureRequest) -> Iterator[Daemon]:
    wired = request.param == "wired"
    root = Path(tempfile.mkdtemp(prefix="pfc", dir="/tmp"))
    d = Daemon(root, wired)
    try:
        d.start()
        yield d
    finally:
        d.stop()
        shutil.rmtree(root, ignore_errors=True)


def expected_me(d: Daemon) -> str:
    # The daemon attaches the compatibility layer itself when its chain has legacy
    # filters, so in both variants courier.config reads the daemon's sysconfdir.
    return "wired.example"


async def test_legacy_filters_unchanged(daemon: Daemon) -> None:
    me = expected_me(daemon)

    reply, data = await daemon.ask(recipients=("a@courier.test", "b@courier.test"))
    assert reply == b"200 Ok\n", daemon.log.read_text()
    # compat_snake rewrote the data file through XFilter: header added, rest untouched
    tag = f"X-Compat-Configured: from-config; rcpts=2; ip=192.0.2.7; me={me}\n"
    assert data.read_text() == DATA.replace("\n\n", f"\n{tag}\n", 1)

    reply, _ = await daemon.ask()
    assert reply == b"200 Ok\n"
    reply, _ = await daemon.ask()
    assert reply == b"421 too many messages (3 messages from sender@example.com)\n"

    # another sender has its own counter; a blocked one stops the chain at compat_snake
    reply, _ = await daemon.ask(sender="other@example.com")
    assert reply == b"200 Ok\n"
    reply, data = await daemon.ask(sender="blocked@example.com")
    assert reply == b"550 5.7.1 sender blocked@example.com is blocked\n"
    assert data.read_text() == DATA

    daemon.stop()
    log = daemon.log.read_text()
    assert 'Initialized the "compat_camel" python filter' in log
    assert "Initialized the compat_snake python filter" in log
    with sqlite3.connect(daemon.db) as conn:
        stored = dict(
            conn.execute("SELECT key, data FROM ttldb_entries WHERE db = 'compat_counter'")
        )
    digest = hashlib.md5(b"sender@example.com").hexdigest()
    other = hashlib.md5(b"other@example.com").hexdigest()
    assert stored == {digest: "3", other: "1"}
