"""The Prometheus endpoint: a real server answers messages, a real HTTP client scrapes it.

Most tests run :class:`~courier_pyfilter.server.FilterServer` in-process on a chain of
fake filters (as ``test_server.py`` does) with ``metrics_listen = '127.0.0.1:0'``, send
messages over the UNIX socket like Courier, scrape ``/metrics`` with ``urllib`` and parse
the exposition with prometheus-client's parser.  One test runs the ``pythonfilter``
daemon as a process with the setting in its configuration file; another checks that with
the setting off neither prometheus-client nor the metrics module is imported.
"""

from __future__ import annotations

import asyncio
import re
import socket
import subprocess
import sys
import textwrap
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from courier_pyfilter import metrics as metrics_module
from courier_pyfilter.chain import Chain, ChainEntry
from courier_pyfilter.decision import CONTINUE, Decision
from courier_pyfilter.metrics import Metrics, set_backend_state
from courier_pyfilter.server import FilterServer, Generation
from courier_pyfilter.services import Services
from courier_pyfilter.settings import Settings, SettingsError, apply_section, parse_listen_address
from serverkit import DaemonKit, control_text, kit_dir, send_raw, wait_until


class BackendDown(Exception):
    """What a service client raises when its backend fails."""

    log_traceback = False


@dataclass
class Fake:
    """A fake filter reacting to the message's Subject (``reject``, ``later``, ``boom``,
    ``slow``, ``hold``); anything else continues."""

    label: str
    reacts: dict[str, Any] = field(default_factory=dict)
    gate: asyncio.Event = field(default_factory=asyncio.Event)
    whitelist: bool = False

    async def check(self, message: Any) -> Decision:
        subject = str((await message.headers()).get("Subject", ""))
        action = self.reacts.get(subject)
        if action == "raise":
            raise BackendDown("connection refused")
        if action == "sleep":
            await asyncio.sleep(5)
        if action == "wait":
            await self.gate.wait()
        if isinstance(action, Decision):
            return action
        return CONTINUE

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None


REJECT = Decision.reject("5.7.1 no")
LATER = Decision.tempfail("4.7.1 later")


def chain_of_fakes() -> tuple[list[ChainEntry], Fake]:
    """pass -> shadowed (shadow mode, always rejects) -> judge -> flaky -> sleepy."""
    judge = Fake("judge", {"reject": REJECT, "later": LATER, "hold": "wait"})
    entries = [
        ChainEntry(name="pass", runner=Fake("pass"), timeout=10),
        ChainEntry(
            name="shadowed",
            runner=Fake("shadowed", {s: REJECT for s in ("ok", "reject", "boom", "slow")}),
            timeout=10,
            shadow=True,
        ),
        ChainEntry(name="judge", runner=judge, timeout=10),
        ChainEntry(name="flaky", runner=Fake("flaky", {"boom": "raise"}), timeout=10),
        ChainEntry(name="sleepy", runner=Fake("sleepy", {"slow": "sleep"}), timeout=0.1),
    ]
    return entries, judge


class Tree:
    """A spool and a socket path in a short temporary directory."""

    def __init__(self, root: Path) -> None:
        self.spool = root / "spool"
        self.spool.mkdir()
        (root / "allfilters").mkdir()
        self.socket = root / "allfilters" / "pf"
        self.n = 0

    def settings(self, **kw: Any) -> Settings:
        base = Settings(
            socket_path=str(self.socket),
            tmp_dir=str(self.spool),
            request_timeout=5.0,
            drain_timeout=5.0,
            modules_configs=(),
            metrics_listen="127.0.0.1:0",
        )
        return replace(base, **kw)

    def message(self, subject: str) -> bytes:
        self.n += 1
        data, ctl = self.spool / f"D{self.n}", self.spool / f"C{self.n}"
        data.write_text(f"Subject: {subject}\n\nbody\n")
        ctl.write_text(control_text(f"MSG{self.n}", recipients=("r@courier.test",)))
        return f"{data}\n{ctl}\n\n".encode()

    async def send(self, subject: str) -> bytes:
        return await send_raw(self.socket, self.message(subject))


@pytest.fixture
def tree() -> Iterator[Tree]:
    with kit_dir() as root:
        yield Tree(root)


def factory(entries: list[ChainEntry] | None = None, *, broken: bool = False) -> Any:
    services = Services(Settings(), lambda name: {})

    async def make(number: int) -> Generation:
        if broken:
            raise ValueError("configuration is broken")
        chain = Chain(entries if entries is not None else [])
        await chain.start()
        return Generation(chain, services, number)

    return make


@pytest.fixture
async def serve(tree: Tree) -> AsyncIterator[Callable[..., Any]]:
    servers: list[FilterServer] = []

    async def start(make: Any, **settings: Any) -> FilterServer:
        server = FilterServer(tree.settings(**settings), make)
        await server.start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        await server.shutdown()


def url_of(server: FilterServer) -> str:
    assert server.metrics is not None and server.metrics.endpoint is not None
    return server.metrics.endpoint.url


async def http_get(url: str, *, method: str = "GET") -> tuple[int, str, str]:
    """(status, content type, body) with a real HTTP client."""

    def fetch() -> tuple[int, str, str]:
        request = urllib.request.Request(url, method=method)
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return (
                    response.status,
                    response.headers["Content-Type"],
                    response.read().decode(),
                )
        except urllib.error.HTTPError as exc:
            return exc.code, exc.headers["Content-Type"], exc.read().decode()

    return await asyncio.to_thread(fetch)


async def scrape(server: FilterServer) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    """Every sample of ``/metrics``: (name, labels) -> value."""
    status, content_type, body = await http_get(url_of(server))
    assert status == 200
    assert content_type.startswith("text/plain")
    samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
    for family in text_string_to_metric_families(body):
        for sample in family.samples:
            samples[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[Any, float], name: str, **labels: str) -> float | None:
    return samples.get((name, frozenset(labels.items())))


# -- the counters and histograms --------------------------------------------------------------


async def test_scrape_counts_messages_latency_errors_and_shadow(tree: Tree, serve: Any) -> None:
    entries, _judge = chain_of_fakes()
    server = await serve(factory(entries))
    subjects = ["reject"] * 3 + ["ok"] * 2 + ["later", "boom", "slow"]
    replies = [await tree.send(s) for s in subjects]
    assert replies[0] == b"554 5.7.1 no\n" and replies[3] == b"200 Ok\n"
    assert replies[5] == b"451 4.7.1 later\n"
    assert replies[6].startswith(b"451 4.3.0 Temporary failure")
    assert replies[7].startswith(b"451 4.3.0 Mail filtering timed out")
    await wait_until(lambda: server.messages_handled == len(subjects))

    s = await scrape(server)
    m = "courier_pyfilter_messages_total"
    assert value(s, m, verdict="reject", filter="judge") == 3
    assert value(s, m, verdict="accept", filter="none") == 2
    assert value(s, m, verdict="tempfail", filter="judge") == 1
    assert value(s, m, verdict="tempfail", filter="flaky") == 1
    assert value(s, m, verdict="tempfail", filter="sleepy") == 1
    assert sum(v for (name, _), v in s.items() if name == m) == len(subjects)

    h = "courier_pyfilter_filter_duration_seconds"
    # every message meets pass, shadowed and judge; 4 reach flaky, 3 reach sleepy
    ran = {"pass": 8, "shadowed": 8, "judge": 8, "flaky": 4, "sleepy": 3}
    for name, count in ran.items():
        assert value(s, f"{h}_count", filter=name) == count, name
        assert value(s, f"{h}_bucket", filter=name, le="+Inf") == count
    # sleepy's slow message took its whole 0.1 s timeout: above the 0.05 s bucket
    assert value(s, f"{h}_bucket", filter="sleepy", le="0.05") == 2
    assert value(s, f"{h}_bucket", filter="sleepy", le="0.25") == 3
    assert value(s, f"{h}_sum", filter="sleepy") >= 0.1  # type: ignore[operator]
    buckets = [
        v for (n, labels), v in s.items() if n == f"{h}_bucket" and ("filter", "pass") in labels
    ]
    assert len(buckets) == len(metrics_module.FILTER_BUCKETS) + 1

    assert value(s, "courier_pyfilter_chain_duration_seconds_count") == len(subjects)
    e = "courier_pyfilter_filter_errors_total"
    assert value(s, e, filter="flaky", kind="BackendDown") == 1
    assert value(s, e, filter="sleepy", kind="timeout") == 1
    shadow = "courier_pyfilter_shadow_decisions_total"
    assert value(s, shadow, filter="shadowed", verdict="reject") == 7  # all but 'later'
    assert value(s, shadow, filter="shadowed", verdict="continue") == 1

    assert value(s, "courier_pyfilter_configuration_loaded") == 1
    assert value(s, "courier_pyfilter_configuration_generation") == 1
    assert value(s, "courier_pyfilter_messages_in_flight") == 0
    assert any(name == "courier_pyfilter_build_info" for name, _ in s)
    assert value(s, "process_resident_memory_bytes")  # the standard collectors are there


async def test_in_flight_and_waiting_gauges(tree: Tree, serve: Any) -> None:
    entries, judge = chain_of_fakes()
    server = await serve(factory(entries), max_concurrent=1)
    held = asyncio.ensure_future(tree.send("hold"))
    await wait_until(lambda: server._active == 1)
    queued = asyncio.ensure_future(tree.send("ok"))
    await wait_until(lambda: len(server._slot_waiters) == 1)
    s = await scrape(server)
    assert value(s, "courier_pyfilter_messages_in_flight") == 1
    assert value(s, "courier_pyfilter_messages_waiting") == 1
    judge.gate.set()
    assert await held == b"200 Ok\n" and await queued == b"200 Ok\n"
    await wait_until(lambda: server.messages_handled == 2)
    s = await scrape(server)
    assert value(s, "courier_pyfilter_messages_in_flight") == 0
    assert value(s, "courier_pyfilter_messages_waiting") == 0
    assert value(s, "courier_pyfilter_messages_total", verdict="accept", filter="none") == 2


async def test_server_answers_are_counted(tree: Tree, serve: Any) -> None:
    server = await serve(factory(broken=True))
    assert (await tree.send("ok")).startswith(b"451 4.3.0 Mail filtering unavailable")
    await wait_until(lambda: server.messages_handled == 1)
    s = await scrape(server)
    assert value(s, "courier_pyfilter_messages_total", verdict="tempfail", filter="server") == 1
    assert value(s, "courier_pyfilter_configuration_loaded") == 0


async def test_backend_state_gauge(tree: Tree, serve: Any) -> None:
    server = await serve(factory())
    set_backend_state("clamd", "open")
    set_backend_state("spamd", "half_open")
    set_backend_state("store", 0)
    s = await scrape(server)
    g = "courier_pyfilter_backend_state"
    assert value(s, g, backend="clamd") == 2
    assert value(s, g, backend="spamd") == 1
    assert value(s, g, backend="store") == 0
    with pytest.raises(ValueError):
        set_backend_state("clamd", "broken")
    with pytest.raises(ValueError):
        set_backend_state("clamd", 7)
    set_backend_state("clamd", "closed")
    assert value(await scrape(server), g, backend="clamd") == 0
    await server.shutdown()
    set_backend_state("clamd", "open")  # no endpoint: a no-op, not an error
    assert server.metrics is not None and server.metrics.backends["clamd"] == 0


# -- the HTTP endpoint -------------------------------------------------------------------------


async def test_endpoint_paths_methods_and_shutdown(tree: Tree, serve: Any) -> None:
    server = await serve(factory())
    url = url_of(server)
    assert re.fullmatch(r"http://127\.0\.0\.1:\d+/metrics", url)
    status, _, body = await http_get(url.replace("/metrics", "/other"))
    assert status == 404 and "/metrics" in body
    status, _, _ = await http_get(url, method="POST")
    assert status == 405
    status, _, body = await http_get(url, method="HEAD")
    assert status == 200 and body == ""
    status, _, body = await http_get(url + "?name[]=x")
    assert status == 200
    assert re.search(r"^# TYPE courier_pyfilter_messages(_total)? counter$", body, re.M)
    assert not re.search(r"^courier_pyfilter_messages_total\{", body, re.M)  # none yet
    # garbage and silence do not hurt the endpoint
    host, port = server.metrics.endpoint.address  # type: ignore[union-attr]
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(b"NONSENSE\r\n\r\n")
    assert (await reader.read()).startswith(b"HTTP/1.1 400 ")
    writer.close()
    await server.shutdown()
    with pytest.raises(OSError):
        await asyncio.open_connection(host, port)


async def test_bind_failure_is_logged_not_fatal(
    tree: Tree, serve: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = await serve(factory(), metrics_listen=f"127.0.0.1:{port}")
        assert server.metrics is None
        assert "cannot serve metrics on 127.0.0.1:" in caplog.text
        assert await tree.send("ok") == b"200 Ok\n"  # mail still flows


async def test_missing_prometheus_client_is_logged_not_fatal(
    tree: Tree, serve: Any, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "prometheus_client", None)
    server = await serve(factory())
    assert server.metrics is None
    assert "courier-pyfilter[metrics]" in caplog.text
    assert await tree.send("ok") == b"200 Ok\n"


def test_metrics_without_a_server() -> None:
    """The collector on its own: a histogram's buckets are cumulative and end at +Inf."""
    from courier_pyfilter.chain import ChainResult, FilterOutcome

    metrics = Metrics()
    outcomes = [FilterOutcome("f", CONTINUE, 0.0004), FilterOutcome("g", REJECT, 3.0)]
    metrics.message(ChainResult(REJECT, "g", outcomes, 3.0), REJECT)
    metrics.message(ChainResult(REJECT, "g", outcomes[:1], 0.001), Decision.tempfail("x"))
    families = {f.name: f for f in metrics.collect()}
    buckets = {
        s.labels["le"]: s.value
        for s in families["courier_pyfilter_filter_duration_seconds"].samples
        if s.labels.get("filter") == "g" and "le" in s.labels
    }
    assert buckets["2.5"] == 0 and buckets["5.0"] == 1 and buckets["+Inf"] == 1
    counts = {
        tuple(s.labels.values()): s.value for s in families["courier_pyfilter_messages"].samples
    }
    # a reply the server changed (e.g. a failed edit) is the server's, not the filter's
    assert counts == {("reject", "g"): 1, ("tempfail", "server"): 1}


# -- the setting --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9464", ("127.0.0.1", 9464)),
        (":9464", ("", 9464)),
        ("[::1]:0", ("::1", 0)),
        ("metrics.example.org:80", ("metrics.example.org", 80)),
    ],
)
def test_listen_address(text: str, expected: tuple[str, int]) -> None:
    assert parse_listen_address(text) == expected
    assert apply_section(Settings(), {"metrics_listen": text}).metrics_listen == text


@pytest.mark.parametrize(
    "text", ["9464", "host:", "host:port", "::1:9464", "[]:1", "h:70000", "a b:1"]
)
def test_bad_listen_address(text: str) -> None:
    with pytest.raises(SettingsError):
        apply_section(Settings(), {"metrics_listen": text})


def test_off_by_default() -> None:
    assert Settings().metrics_listen == ""
    assert apply_section(Settings(), {"metrics_listen": ""}).metrics_listen == ""


OFF_SCRIPT = textwrap.dedent(
    """
    import asyncio, os, sys, tempfile
    from dataclasses import replace
    sys.path.insert(0, sys.argv[1])
    from courier_pyfilter.chain import Chain
    from courier_pyfilter.server import FilterServer, Generation
    from courier_pyfilter.services import Services
    from courier_pyfilter.settings import Settings
    from serverkit import control_text, send_raw

    async def main():
        root = tempfile.mkdtemp(prefix="pf", dir="/tmp")
        os.mkdir(f"{root}/allfilters")
        settings = Settings(socket_path=f"{root}/allfilters/pf", tmp_dir=root, modules_configs=())

        async def make(number):
            return Generation(Chain([]), Services(settings, lambda n: {}), number)

        server = FilterServer(settings, make)
        await server.start()
        with open(f"{root}/D1", "w") as fh:
            fh.write("Subject: x\\n\\nbody\\n")
        with open(f"{root}/C1", "w") as fh:
            fh.write(control_text("M1"))
        reply = await send_raw(settings.socket_path, f"{root}/D1\\n{root}/C1\\n\\n".encode())
        assert reply == b"200 Ok\\n", reply
        await server.shutdown()
        assert server.metrics is None
        loaded = [m for m in ("prometheus_client", "courier_pyfilter.metrics") if m in sys.modules]
        print("loaded:", loaded)

    asyncio.run(main())
    """
)


def test_off_imports_neither_prometheus_nor_the_metrics_module() -> None:
    proc = subprocess.run(
        [sys.executable, "-c", OFF_SCRIPT, str(Path(__file__).parent)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "loaded: []" in proc.stdout


# -- the daemon as a process ---------------------------------------------------------------------


FILTER = textwrap.dedent(
    """
    from courier_pyfilter.api import CONTINUE, Decision

    async def check(message, ctx):
        if "spam" in str((await message.headers()).get("Subject", "")):
            return Decision.reject("5.7.1 spam")
        return CONTINUE
    """
)


async def test_daemon_serves_metrics_from_its_configuration() -> None:
    with kit_dir() as root:
        kit = DaemonKit(root)
        try:
            kit.write_filter("spamcheck", FILTER)
            kit.write_chain("spamcheck")
            kit.write_modules(metrics_listen="127.0.0.1:0")
            await kit.start()
            await kit.wait_log("metrics endpoint listening on")
            match = re.search(r"metrics endpoint listening on (\S+)", kit.log())
            assert match, kit.log()
            url = match.group(1)
            for data in (DEFAULT_SPAM, DEFAULT_SPAM, None):
                data_path, ctl, _ = kit.message(data) if data else kit.message()
                await kit.request(data_path, ctl)
            # the server counts a message right after its reply, before it reads anything
            # else: a scrape that follows the replies sees them all
            status, _, body = await http_get(url)
            assert status == 200
            samples = {
                (s.name, frozenset(s.labels.items())): s.value
                for f in text_string_to_metric_families(body)
                for s in f.samples
            }
            m = "courier_pyfilter_messages_total"
            assert value(samples, m, verdict="reject", filter="spamcheck") == 2
            assert value(samples, m, verdict="accept", filter="none") == 1
            count = "courier_pyfilter_filter_duration_seconds_count"
            assert value(samples, count, filter="spamcheck") == 3
            kit.close_stdin()
            assert await kit.wait_exit() == 0
        finally:
            kit.stop()


DEFAULT_SPAM = (
    "Date: Wed, 25 Nov 2026 11:20:27 +0000\n"
    "From: sender@example.com\n"
    "Subject: buy spam now\n"
    "\n"
    "Hello.\n"
)
