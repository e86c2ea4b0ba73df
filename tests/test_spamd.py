"""The spamd client: protocol functions on literal bytes, faults from scripted servers,
and the real spamd (Debian's shipped rules, offline; see ``spamd_fixture``)."""

from __future__ import annotations

import asyncio
import gc
import os
import socket
import time
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest

from courier_pyfilter.spamd import (
    DEFAULT_ADDRESS,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_TIMEOUT,
    SpamdAddress,
    SpamdClient,
    SpamdConfig,
    SpamdConnectionError,
    SpamdError,
    SpamdProtocolError,
    SpamdServerError,
    SpamdTimeout,
    SpamVerdict,
    build_request,
    parse_address,
    parse_response,
    parse_spam_header,
    spamd_client,
)
from courier_pyfilter.testing import make_context
from spamd_fixture import (
    GTUBE,
    TEST_SPAM_TOKEN,
    SpamdFactory,
    SpamdServer,
    answer,
    close_at_once,
    drip,
    fake_spamd,
    flood,
    hang,
    raw_request,
    reset,
    spamd_factory,
    spamd_server,
)

__all__ = ["spamd_factory", "spamd_server"]  # fixtures used by this module

HAM = (
    b"From: Alice <alice@example.com>\n"
    b"To: bob@example.net\n"
    b"Subject: lunch\n"
    b"Date: Mon, 1 Jan 2024 12:00:00 +0000\n"
    b"Message-ID: <lunch.1@example.com>\n"
    b"\n"
    b"Shall we meet at noon?\n"
)
SPAM = HAM.replace(b"Shall we meet at noon?", GTUBE)

OK_CHECK = b"SPAMD/1.1 0 EX_OK\r\nSpam: False ; 0.5 / 5.0\r\n\r\n"
OK_HEADERS_BODY = b"X-Spam-Status: No, score=0.5 required=5.0\nFrom: a@b\n\n"
OK_HEADERS = (
    b"SPAMD/1.1 0 EX_OK\r\nContent-length: %d\r\nSpam: False ; 0.5 / 5.0\r\n\r\n"
    % len(OK_HEADERS_BODY)
) + OK_HEADERS_BODY


def open_fds() -> int:
    """How many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


@pytest.fixture
def no_resource_warnings() -> Iterator[None]:
    """Fail when a socket is left for the garbage collector (ResourceWarning)."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ResourceWarning)
        yield
        gc.collect()
    leaks = [w for w in caught if issubclass(w.category, ResourceWarning)]
    assert not leaks, [str(w.message) for w in leaks]


# -- requests -----------------------------------------------------------------------------


def test_build_request_check_with_user() -> None:
    assert build_request("CHECK", b"Subject: x\n\nhi\n", user="alice") == (
        b"CHECK SPAMC/1.5\r\nContent-length: 15\r\nUser: alice\r\n\r\nSubject: x\n\nhi\n"
    )


def test_build_request_ping_and_empty_body() -> None:
    assert build_request("PING") == b"PING SPAMC/1.5\r\n\r\n"
    assert build_request("HEADERS", b"") == b"HEADERS SPAMC/1.5\r\nContent-length: 0\r\n\r\n"


@pytest.mark.parametrize(
    ("verb", "user"),
    [("BOGUS", None), ("check", None), ("CHECK", "a\nb"), ("CHECK", ""), ("CHECK", "x\x00")],
)
def test_build_request_refuses(verb: str, user: str | None) -> None:
    with pytest.raises(ValueError):
        build_request(verb, b"x", user=user)


def test_build_request_matches_aiospamc() -> None:
    """Same bytes as aiospamc, the library the issue names (when it is installed)."""
    requests = pytest.importorskip("aiospamc.requests")
    req = requests.Request("HEADERS", body=b"Subject: x\n\nhi\n")
    req.headers.user = "alice"
    ours = build_request("HEADERS", b"Subject: x\n\nhi\n", user="alice")
    assert sorted(bytes(req).split(b"\r\n")) == sorted(ours.split(b"\r\n"))


# -- responses ----------------------------------------------------------------------------


def test_parse_check_answer() -> None:
    r = parse_response(b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1000.0 / 5.0\r\n\r\n")
    assert (r.version, r.code, r.message, r.body) == ("1.1", 0, "EX_OK", b"")
    assert r.headers == {"spam": "True ; 1000.0 / 5.0"}
    assert r.verdict == SpamVerdict(True, 1000.0, 5.0)


def test_parse_headers_answer_with_body() -> None:
    r = parse_response(OK_HEADERS)
    assert r.body == OK_HEADERS_BODY
    assert r.headers["content-length"] == str(len(OK_HEADERS_BODY))
    assert r.verdict == SpamVerdict(False, 0.5, 5.0)


def test_parse_pong_and_error_status_lines() -> None:
    pong = parse_response(b"SPAMD/1.5 0 PONG\r\n")
    assert (pong.code, pong.message, pong.headers, pong.verdict) == (0, "PONG", {}, None)
    err = parse_response(
        b"SPAMD/1.0 76 Bad header line: (Content-Length mismatch: Expected 10 bytes, got 3 "
        b"bytes)\r\n"
    )
    assert err.code == 76
    assert err.message.startswith("Bad header line: (Content-Length mismatch")


def test_parse_lf_line_ends_and_negative_zero() -> None:
    r = parse_response(b"SPAMD/1.1 0 EX_OK\nSpam: False ; -0.0 / 5.0\n\n")
    verdict = r.verdict
    assert verdict is not None
    assert verdict.score == 0.0 and not verdict.is_spam


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("True ; 1000.0 / 5.0", SpamVerdict(True, 1000.0, 5.0)),
        ("False ; -0.0 / 5.0", SpamVerdict(False, -0.0, 5.0)),
        ("Yes ; 7 / 5", SpamVerdict(True, 7.0, 5.0)),
        ("no;-2.5/10.0", SpamVerdict(False, -2.5, 10.0)),
    ],
)
def test_parse_spam_header(value: str, expected: SpamVerdict) -> None:
    assert parse_spam_header(value) == expected


@pytest.mark.parametrize(
    "value", ["", "True", "Maybe ; 1 / 5", "True ; x / 5", "True ; 1 / 5 extra", "True 1 / 5"]
)
def test_parse_spam_header_refuses(value: str) -> None:
    with pytest.raises(SpamdProtocolError):
        parse_spam_header(value)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhi",
        b"\x00\xff\xfe garbage",
        b"SPAMD/1.1 zero EX_OK\r\n\r\n",
        b"SPAMD/x 0 EX_OK\r\n\r\n",
        b"SPAMD/1.1 0 EX_OK\r\nSpam True ; 1 / 5\r\n\r\n",
        b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5\r\n",
        b"SPAMD/1.1 0 EX_OK\r\nSpam: True ; 1 / 5",
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 10\r\n\r\nshort",
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: 2\r\n\r\ntoo long",
        b"SPAMD/1.1 0 EX_OK\r\nContent-length: -1\r\n\r\n",
    ],
    ids=[
        "empty",
        "http",
        "binary",
        "code",
        "version",
        "header",
        "unterminated",
        "truncated-line",
        "short-body",
        "long-body",
        "bad-length",
    ],
)
def test_parse_response_refuses_garbage(data: bytes) -> None:
    with pytest.raises(SpamdProtocolError):
        parse_response(data)


# -- addresses and settings ---------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected", "shown"),
    [
        ("127.0.0.1:783", SpamdAddress("127.0.0.1", 783), "127.0.0.1:783"),
        ("localhost", SpamdAddress("localhost", 783), "localhost:783"),
        ("spam.example.org:10783", SpamdAddress("spam.example.org", 10783), None),
        ("[::1]:7830", SpamdAddress("::1", 7830), "[::1]:7830"),
        ("[::1]", SpamdAddress("::1", 783), "[::1]:783"),
        ("::1", SpamdAddress("::1", 783), "[::1]:783"),
        ("/run/spamd.sock", SpamdAddress(path="/run/spamd.sock"), "/run/spamd.sock"),
        ("unix:/run/spamd.sock", SpamdAddress(path="/run/spamd.sock"), "/run/spamd.sock"),
        (" 127.0.0.1:783 ", SpamdAddress("127.0.0.1", 783), None),
    ],
)
def test_parse_address(text: str, expected: SpamdAddress, shown: str | None) -> None:
    address = parse_address(text)
    assert address == expected
    assert str(address) == (shown or text.strip())


@pytest.mark.parametrize(
    "text",
    ["", "  ", "host:", "host:0", "host:65536", "host:http", "[::1", "[::1]x", "unix:rel", ":783"],
)
def test_parse_address_refuses(text: str) -> None:
    with pytest.raises(ValueError):
        parse_address(text)


def test_config_defaults_and_validation() -> None:
    config = SpamdConfig.from_settings({})
    assert str(config.address) == DEFAULT_ADDRESS == "127.0.0.1:783"
    assert config.timeout == DEFAULT_TIMEOUT == 30.0
    assert config.max_concurrency == DEFAULT_MAX_CONCURRENCY == 5
    for bad in (
        {"spamd_timeout": 0},
        {"spamd_timeout": "10"},
        {"spamd_timeout": True},
        {"spamd_max_concurrency": 0},
        {"spamd_max_concurrency": 2.5},
        {"spamd_address": 783},
    ):
        with pytest.raises(ValueError):
            SpamdConfig.from_settings(bad)
    with pytest.raises(ValueError):
        SpamdClient("127.0.0.1:783", timeout=-1)
    with pytest.raises(ValueError):
        SpamdClient("127.0.0.1:783", max_concurrency=0)


async def test_spamd_client_is_shared_per_configuration() -> None:
    ctx = make_context("spamassassin", {"spamd_address": "127.0.0.1:10783"})
    other = make_context("other", {"spamd_address": "127.0.0.1:10783"})
    other.services = ctx.services
    different = make_context("third", {"spamd_address": "127.0.0.1:10783", "spamd_timeout": 5})
    different.services = ctx.services
    first = await spamd_client(ctx)
    assert await spamd_client(other) is first
    assert await spamd_client(different) is not first
    assert (first.timeout, first.max_concurrency, str(first.address)) == (
        30.0,
        5,
        "127.0.0.1:10783",
    )
    await ctx.services.close()
    assert first.closed
    with pytest.raises(SpamdConnectionError, match="closed"):
        await first.check(HAM)


# -- faults (scripted servers) --------------------------------------------------------------


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_connection_refused_is_fast() -> None:
    client = SpamdClient(f"127.0.0.1:{_closed_port()}", timeout=5)
    t0 = time.monotonic()
    with pytest.raises(SpamdConnectionError, match="cannot connect"):
        await client.check(HAM)
    assert time.monotonic() - t0 < 1.0


async def test_missing_unix_socket_is_fast(tmp_path: Path) -> None:
    client = SpamdClient(str(tmp_path / "nothing.sock"), timeout=5)
    t0 = time.monotonic()
    with pytest.raises(SpamdConnectionError, match="cannot connect"):
        await client.headers(HAM)
    assert time.monotonic() - t0 < 1.0


@pytest.mark.parametrize("unix", [False, True], ids=["tcp", "unix"])
async def test_hanging_server_times_out_and_closes_the_socket(
    unix: bool, tmp_path: Path, no_resource_warnings: None
) -> None:
    path = str(tmp_path / "hang.sock") if unix else None
    async with fake_spamd(hang(), unix_path=path) as fake:
        client = SpamdClient(fake.address, timeout=0.4)
        before = open_fds()
        t0 = time.monotonic()
        with pytest.raises(SpamdTimeout, match=r"no answer within 0\.4 s"):
            await client.headers(HAM)
        elapsed = time.monotonic() - t0
        assert 0.38 <= elapsed < 1.5
        await asyncio.sleep(0.05)  # connection_lost runs on the next loop iterations
        assert open_fds() <= before + 1  # + the fake server's side, still hanging
        assert fake.connections == 1
        assert (client.in_flight, client.waiting) == (0, 0)


async def test_server_that_never_reads_a_big_message(no_resource_warnings: None) -> None:
    """The request cannot even be sent: the timeout still holds, and the socket with its
    unsent data is aborted rather than left waiting to flush."""

    async def deaf(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(3600)

    async with fake_spamd(deaf) as fake:
        client = SpamdClient(fake.address, timeout=0.4)
        before = open_fds()
        t0 = time.monotonic()
        with pytest.raises(SpamdTimeout, match="no answer"):
            await client.headers(HAM + b"x" * (16 << 20))
        assert 0.38 <= time.monotonic() - t0 < 1.5
        await asyncio.sleep(0.05)
        assert open_fds() <= before + 1  # + the fake server's side


async def test_slow_drip_is_bounded_by_the_total_timeout() -> None:
    async with fake_spamd(drip(OK_CHECK, 0.1)) as fake:
        client = SpamdClient(fake.address, timeout=0.5)
        t0 = time.monotonic()
        with pytest.raises(SpamdTimeout):
            await client.check(HAM)
        assert 0.48 <= time.monotonic() - t0 < 1.5


async def test_flood_is_cut_off_by_the_size_cap(no_resource_warnings: None) -> None:
    async with fake_spamd(flood()) as fake:
        client = SpamdClient(fake.address, timeout=10)
        t0 = time.monotonic()
        with pytest.raises(SpamdProtocolError, match="answer longer than"):
            await client.check(HAM)
        assert time.monotonic() - t0 < 5.0


@pytest.mark.parametrize(
    ("handler", "error", "match"),
    [
        (answer(b"HTTP/1.1 200 OK\r\n\r\n"), SpamdProtocolError, "not a SPAMD status line"),
        (answer(b"\x00\x01\x02\xff" * 100), SpamdProtocolError, "not a SPAMD status line"),
        (
            answer(b"SPAMD/1.1 0 EX_OK\r\nContent-length: 999\r\nSpam: False ; 0 / 5\r\n\r\nab"),
            SpamdProtocolError,
            "Content-length says 999",
        ),
        (answer(b"SPAMD/1.1 0 EX_OK\r\n\r\n"), SpamdProtocolError, "no Spam header"),
        (
            answer(b"SPAMD/1.1 0 EX_OK\r\nSpam: perhaps\r\n\r\n"),
            SpamdProtocolError,
            "malformed Spam header",
        ),
        (answer(b"SPAMD/1.0 69 Service Unavailable\r\n"), SpamdServerError, "69 Service"),
        (close_at_once(), SpamdConnectionError, "without answering"),
        (reset(), SpamdConnectionError, "spamd"),
    ],
    ids=["http", "binary", "truncated", "no-spam-header", "bad-spam", "ex-unavail", "eof", "rst"],
)
async def test_broken_answers(handler: object, error: type[SpamdError], match: str) -> None:
    async with fake_spamd(handler) as fake:  # type: ignore[arg-type]
        client = SpamdClient(fake.address, timeout=5)
        t0 = time.monotonic()
        with pytest.raises(error, match=match):
            await client.check(HAM)
        assert time.monotonic() - t0 < 1.0


async def test_server_error_carries_the_status() -> None:
    async with fake_spamd(answer(b"SPAMD/1.0 76 Bad header line: x\r\n")) as fake:
        with pytest.raises(SpamdServerError) as info:
            await SpamdClient(fake.address).check(HAM)
    assert (info.value.code, info.value.status_text) == (76, "Bad header line: x")


async def test_headers_needs_a_body() -> None:
    async with fake_spamd(answer(OK_CHECK)) as fake:
        client = SpamdClient(fake.address)
        assert (await client.check(HAM)).verdict == SpamVerdict(False, 0.5, 5.0)
        with pytest.raises(SpamdProtocolError, match="no body"):
            await client.headers(HAM)


async def test_request_bytes_on_the_wire() -> None:
    seen: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.read())
        writer.write(OK_HEADERS)

    async with fake_spamd(record) as fake:
        result = await SpamdClient(fake.address).headers(HAM, user="alice")
    assert seen == [build_request("HEADERS", HAM, user="alice")]
    assert result.body == OK_HEADERS_BODY


async def test_concurrency_cap() -> None:
    async with fake_spamd(answer(OK_CHECK, delay=0.1)) as fake:
        client = SpamdClient(fake.address, timeout=10, max_concurrency=3)
        t0 = time.monotonic()
        results = await asyncio.gather(*(client.check(HAM) for _ in range(12)))
        elapsed = time.monotonic() - t0
    assert len(results) == 12 and fake.connections == 12
    assert fake.max_active == 3
    assert elapsed >= 0.38  # 12 requests, 3 at a time, 0.1 s each
    assert (client.in_flight, client.waiting) == (0, 0)


async def test_timeout_includes_the_wait_for_a_slot() -> None:
    async with fake_spamd(hang()) as fake:
        client = SpamdClient(fake.address, timeout=5, max_concurrency=1)
        first = asyncio.create_task(client.check(HAM))  # holds the only slot for 5 s
        await asyncio.sleep(0.05)
        client.timeout = 0.3
        t0 = time.monotonic()
        with pytest.raises(SpamdTimeout, match=r"no free slot \(all busy\) within 0\.3 s"):
            await asyncio.wait_for(client.check(HAM), 5)
        assert 0.28 <= time.monotonic() - t0 < 1.0
        assert fake.connections == 1  # the second request never connected
        first.cancel()
        with pytest.raises(asyncio.CancelledError):
            await first


async def test_cancelled_request_releases_its_slot_and_socket(
    no_resource_warnings: None,
) -> None:
    async with fake_spamd(hang()) as fake:
        client = SpamdClient(fake.address, timeout=30, max_concurrency=1)
        before = open_fds()
        task = asyncio.create_task(client.check(HAM))
        await asyncio.sleep(0.1)
        assert client.in_flight == 1
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.05)
        assert (client.in_flight, client.waiting) == (0, 0)
        assert open_fds() <= before + 1  # + the fake server's side, still hanging
    async with fake_spamd(answer(OK_CHECK)) as fake2:
        client.address = parse_address(fake2.address)
        assert (await client.check(HAM)).verdict.score == 0.5


# -- the real spamd ---------------------------------------------------------------------------


@pytest.mark.parametrize("transport", ["tcp", "unix"])
async def test_real_spamd_ping_gtube_and_ham(spamd_server: SpamdServer, transport: str) -> None:
    address = spamd_server.tcp_address if transport == "tcp" else spamd_server.socket_path
    client = SpamdClient(address, timeout=30)
    await client.ping()
    spam = await client.check(SPAM)
    assert spam.verdict.is_spam and spam.verdict.score >= 1000
    assert spam.verdict.threshold == 5.0
    ham = await client.check(HAM)
    assert not ham.verdict.is_spam and ham.verdict.score < 5.0


async def test_real_spamd_headers_and_process(spamd_server: SpamdServer) -> None:
    client = SpamdClient(spamd_server.tcp_address)
    headers = await client.headers(SPAM)
    block = headers.body.decode()
    assert block.startswith("X-Spam-Checker-Version: SpamAssassin ")
    assert "\nX-Spam-Flag: YES\n" in block
    assert "\nX-Spam-Status: Yes, score=1" in block and "tests=GTUBE" in block
    assert block.endswith("Message-ID: <lunch.1@example.com>\n\n")
    processed = await client.process(HAM)
    assert processed.body.startswith(b"X-Spam-Checker-Version: ")
    assert processed.body.endswith(HAM)  # headers on top, the original kept
    # what spamd says without our client
    direct = raw_request(spamd_server.tcp, "PROCESS", HAM)
    assert direct.split(b"\r\n\r\n", 1)[1] == processed.body


async def test_real_spamd_custom_rule_and_user(spamd_server: SpamdServer) -> None:
    client = SpamdClient(spamd_server.socket_path)
    msg = HAM.replace(b"Subject: lunch", b"Subject: " + TEST_SPAM_TOKEN.encode() + b" lunch")
    offset = spamd_server.log_size()
    result = await client.check(msg, user="carol")
    assert result.verdict.is_spam and 10.0 <= result.verdict.score < 100
    spamd_server.wait_log(r"checking message .* for carol:", after=offset, timeout=5)


async def test_real_spamd_under_concurrency(spamd_server: SpamdServer) -> None:
    client = SpamdClient(spamd_server.tcp_address, timeout=60, max_concurrency=2)
    messages = [SPAM if i % 4 == 0 else HAM + b"%d\n" % i for i in range(12)]
    t0 = time.monotonic()
    results = await asyncio.gather(*(client.check(m) for m in messages))
    elapsed = time.monotonic() - t0
    assert [r.verdict.is_spam for r in results] == [i % 4 == 0 for i in range(12)]
    assert elapsed < 30


async def test_real_spamd_killed_mid_scan(spamd_factory: SpamdFactory) -> None:
    server = spamd_factory(children=1).start()
    [child] = server.wait_children()
    client = SpamdClient(server.tcp_address, timeout=20)
    big = HAM + b"".join(b"line %d of a long and boring message body\n" % i for i in range(9000))
    offset = server.log_size()
    t0 = time.monotonic()
    task = asyncio.create_task(client.headers(big))
    await asyncio.to_thread(server.wait_log, r"(checking|processing) message", after=offset)
    os.kill(child, 9)
    with pytest.raises(SpamdConnectionError):
        await task
    assert time.monotonic() - t0 < 5.0  # far below the 20 s timeout
    # spamd's parent starts a new child; the client works again
    deadline = time.monotonic() + 10
    while child in server.child_pids() or not server.child_pids():
        assert time.monotonic() < deadline, "spamd did not replace its killed child"
        await asyncio.sleep(0.02)
    assert not (await client.check(HAM)).verdict.is_spam


async def test_real_spamd_frozen_then_stopped(spamd_factory: SpamdFactory) -> None:
    server = spamd_factory(children=1).start()
    client = SpamdClient(server.socket_path, timeout=0.5)
    server.pause()
    try:
        t0 = time.monotonic()
        with pytest.raises(SpamdTimeout):
            await client.check(HAM)
        assert 0.48 <= time.monotonic() - t0 < 2.0
    finally:
        server.resume()
    server.stop()
    tcp = SpamdClient(server.tcp_address, timeout=5)
    t0 = time.monotonic()
    with pytest.raises(SpamdConnectionError):
        await tcp.check(HAM)
    with pytest.raises(SpamdConnectionError):
        await client.check(HAM)
    assert time.monotonic() - t0 < 1.0
