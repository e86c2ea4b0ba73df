"""The clamd client: protocol functions on literal bytes, a real clamd, and faults.

The real clamd comes from ``clamd_fixture`` (a tiny signature database, StreamMaxLength
1 MiB); fault injection uses in-process fake servers and, for a killed clamd, a private
second clamd.  Every client test runs on the three transports: our own client on the
UNIX socket and on TCP, and aioclamd on TCP.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from clamd_fixture import (
    CUSTOM_NAME,
    CUSTOM_SIGNATURE_TEXT,
    EICAR_NAME,
    STREAM_MAX_LENGTH,
    ClamdServer,
    FakeClamd,
    clamd_factory,
    clamd_server,
    eicar,
)
from courier_pyfilter.clamd import (
    DEFAULT_LOCAL_SOCKET,
    DEFAULT_MAX_SIZE,
    END_OF_STREAM,
    ClamdAddress,
    ClamdClient,
    ClamdConfig,
    ClamdConfigError,
    ClamdError,
    ClamdProtocolError,
    ClamdScanError,
    ClamdTimeoutError,
    ClamdUnavailableError,
    ScanResult,
    ScanStatus,
    chunk_frame,
    clamd_client,
    command,
    parse_address,
    parse_scan_reply,
    parse_simple_reply,
    split_reply,
)
from courier_pyfilter.testing import make_context

__all__ = ["clamd_factory", "clamd_server"]  # fixtures used by the tests below

TRANSPORTS = ("unix", "tcp-builtin", "tcp-aioclamd")


def transport_settings(transport: str, server: ClamdServer | FakeClamd) -> dict[str, Any]:
    """Client settings for ``transport`` against a real or fake server."""
    if transport == "unix":
        path = server.socket_path if isinstance(server, ClamdServer) else server.path
        return {"local_socket": path}
    address = server.tcp_address if isinstance(server, ClamdServer) else f"127.0.0.1:{server.port}"
    return {"clamd_address": address, "clamd_tcp_client": transport.removeprefix("tcp-")}


def client_for(transport: str, server: ClamdServer | FakeClamd, **settings: Any) -> ClamdClient:
    """A client of ``server`` over ``transport``."""
    return ClamdClient(
        ClamdConfig.from_settings({**transport_settings(transport, server), **settings})
    )


def mime_with_attachment(content: bytes, filename: str = "file.bin") -> bytes:
    """A multipart message with ``content`` as a base64 attachment."""
    encoded = base64.encodebytes(content).decode()
    return (
        "From: a@example.com\nTo: b@example.net\nSubject: attachment\nMIME-Version: 1.0\n"
        'Content-Type: multipart/mixed; boundary="XYZ"\n\n'
        "--XYZ\nContent-Type: text/plain\n\nSee attachment.\n"
        f"--XYZ\nContent-Type: application/octet-stream\n"
        f'Content-Disposition: attachment; filename="{filename}"\n'
        f"Content-Transfer-Encoding: base64\n\n{encoded}--XYZ--\n"
    ).encode()


# -- protocol: literal bytes --------------------------------------------------------------


def test_command_is_z_prefixed_and_nul_terminated() -> None:
    assert command("PING") == b"zPING\0"
    assert command("INSTREAM") == b"zINSTREAM\0"
    for bad in ("", "ping", "SCAN /etc/passwd", "PI\nNG", "PÏNG"):
        with pytest.raises(ValueError):
            command(bad)


def test_chunk_frame_is_length_prefixed() -> None:
    assert chunk_frame(b"abc") == b"\x00\x00\x00\x03abc"
    assert chunk_frame(b"x" * 256)[:4] == b"\x00\x00\x01\x00"
    assert chunk_frame(b"") == END_OF_STREAM == b"\0\0\0\0"


def test_split_reply() -> None:
    assert split_reply(b"stream: OK\0") == (b"stream: OK", b"")
    assert split_reply(b"PONG\0rest") == (b"PONG", b"rest")
    assert split_reply(b"stream: O") == (None, b"stream: O")
    assert split_reply(b"") == (None, b"")
    assert split_reply(b"A" * 10, max_length=10) == (None, b"A" * 10)
    with pytest.raises(ClamdProtocolError):
        split_reply(b"A" * 11, max_length=10)
    with pytest.raises(ClamdProtocolError):
        split_reply(b"A" * 11 + b"\0", max_length=10)


@pytest.mark.parametrize(
    ("reply", "expected"),
    [
        (b"stream: OK\0", ScanResult(ScanStatus.CLEAN)),
        (b"stream: OK", ScanResult(ScanStatus.CLEAN)),
        (b"stream: OK\n", ScanResult(ScanStatus.CLEAN)),
        (
            b"stream: Eicar-Test-Signature.UNOFFICIAL FOUND\0",
            ScanResult(ScanStatus.INFECTED, "Eicar-Test-Signature.UNOFFICIAL"),
        ),
        (
            b"stream: Win.Test.EICAR_HDB-1 FOUND",
            ScanResult(ScanStatus.INFECTED, "Win.Test.EICAR_HDB-1"),
        ),
        (
            b"stream: Heuristics.Limits.Exceeded.MaxFileSize FOUND\0",
            ScanResult(ScanStatus.INFECTED, "Heuristics.Limits.Exceeded.MaxFileSize"),
        ),
        (
            b"INSTREAM size limit exceeded. ERROR\0",
            ScanResult(ScanStatus.OVERSIZE, by_clamd=True),
        ),
    ],
)
def test_parse_scan_reply_verdicts(reply: bytes, expected: ScanResult) -> None:
    assert parse_scan_reply(reply) == expected


@pytest.mark.parametrize(
    ("reply", "error"),
    [
        (b"stream: Can't allocate memory ERROR\0", ClamdScanError),
        (b"lstat() failed: No such file or directory. ERROR\0", ClamdScanError),
        (b"\0", ClamdProtocolError),
        (b"", ClamdProtocolError),
        (b"UNKNOWN COMMAND\0", ClamdProtocolError),
        (b"PONG\0", ClamdProtocolError),
        (b"stream: O\0", ClamdProtocolError),
        (b"stream: OKAY\0", ClamdProtocolError),
        (b"stream:  FOUND\0", ClamdProtocolError),  # no signature name
        (b"stream: Bad\x01Name FOUND\0", ClamdProtocolError),
        (b"stream: Bad\nName FOUND\0", ClamdProtocolError),
        (b"stream: " + b"A" * 201 + b" FOUND\0", ClamdProtocolError),
        (b"stream: OK\0\0", ClamdProtocolError),
        (b"\xff\xfe\xfd\0", ClamdProtocolError),
        (b"/var/spool/x: Eicar FOUND\0", ClamdProtocolError),  # a SCAN reply, not ours
        (b"stream: OK\0stream: OK\0", ClamdProtocolError),
    ],
)
def test_parse_scan_reply_failures(reply: bytes, error: type[ClamdError]) -> None:
    with pytest.raises(error):
        parse_scan_reply(reply)


def test_parse_simple_reply() -> None:
    assert parse_simple_reply(b"PONG\0") == "PONG"
    assert parse_simple_reply(b"ClamAV 1.4.6/27400/Tue Oct  1 08:00:00 2024\0").startswith(
        "ClamAV 1.4.6"
    )
    with pytest.raises(ClamdProtocolError):
        parse_simple_reply(b"UNKNOWN COMMAND\0")
    with pytest.raises(ClamdProtocolError):
        parse_simple_reply(b"\0")
    with pytest.raises(ClamdScanError):
        parse_simple_reply(b"Command not allowed ERROR\0")


def test_errors_have_short_reasons_without_details() -> None:
    assert ClamdUnavailableError("cannot connect to /secret/path").reason == "clamd is unavailable"
    assert ClamdTimeoutError("x").reason == "clamd timed out"
    assert ClamdProtocolError("x").reason == "invalid reply from clamd"
    assert ClamdScanError("x").reason == "clamd could not scan the message"


# -- configuration ------------------------------------------------------------------------


def test_parse_address() -> None:
    assert parse_address() == ClamdAddress(path=DEFAULT_LOCAL_SOCKET)
    assert parse_address(None) == ClamdAddress(path="/var/run/clamav/clamd.ctl")
    assert parse_address("/run/clamd.sock") == ClamdAddress(path="/run/clamd.sock")
    tcp = ClamdAddress(host="127.0.0.1", port=3310)
    assert parse_address("/run/clamd.sock", "127.0.0.1:3310") == tcp  # clamd_address wins
    assert parse_address(clamd_address="127.0.0.1") == tcp  # clamd's usual port
    assert parse_address(clamd_address="clamav.example:3311").host == "clamav.example"
    assert parse_address(clamd_address="[::1]:3311") == ClamdAddress(host="::1", port=3311)
    assert parse_address(clamd_address="[::1]") == ClamdAddress(host="::1", port=3310)
    assert parse_address(clamd_address="/run/c.sock") == ClamdAddress(path="/run/c.sock")
    assert parse_address(clamd_address="unix:/run/c.sock") == ClamdAddress(path="/run/c.sock")
    assert str(parse_address(clamd_address="[::1]:3310")) == "tcp:[::1]:3310"
    assert str(parse_address(clamd_address="localhost:3310")) == "tcp:localhost:3310"
    assert str(parse_address("/run/c.sock")) == "unix:/run/c.sock"
    for bad in ("", "host:", ":3310", "host:0", "host:65536", "host:x", "::1:3310", "[::1", 3310):
        with pytest.raises(ClamdConfigError):
            parse_address(clamd_address=bad)
    for bad_path in ("", 5, ["/run/c.sock"]):
        with pytest.raises(ClamdConfigError):
            parse_address(bad_path)


def test_config_defaults() -> None:
    config = ClamdConfig.from_settings({})
    assert config.address.path == DEFAULT_LOCAL_SOCKET
    assert config.max_size == DEFAULT_MAX_SIZE == 25 * 1024 * 1024
    assert config.max_concurrency == 8
    assert config.timeout == 30.0
    assert config.connect_timeout == 5.0
    assert config.tcp_client == "builtin"
    assert not config.uses_aioclamd
    assert config.key == f"clamd:unix:{DEFAULT_LOCAL_SOCKET}"
    # the original's conf says "local_socket = None" for pyclamd's default
    assert ClamdConfig.from_settings({"local_socket": None}).address.path == DEFAULT_LOCAL_SOCKET


def test_config_tcp_clients() -> None:
    builtin = ClamdConfig.from_settings({"clamd_address": "127.0.0.1:3310"})
    aio = ClamdConfig.from_settings(
        {"clamd_address": "127.0.0.1:3310", "clamd_tcp_client": "aioclamd"}
    )
    assert not builtin.uses_aioclamd
    assert aio.uses_aioclamd
    assert builtin.key != aio.key
    # the setting is ignored for a UNIX socket: aioclamd cannot use one
    assert not ClamdConfig.from_settings({"clamd_tcp_client": "aioclamd"}).uses_aioclamd


@pytest.mark.parametrize(
    "settings",
    [
        {"clamd_max_concurrency": 0},
        {"clamd_max_concurrency": 2.5},
        {"clamd_max_concurrency": True},
        {"clamd_timeout": -1},
        {"clamd_timeout": "30"},
        {"clamd_connect_timeout": 0},
        {"max_msg_size": 0},
        {"max_msg_size": 1.5e6},
        {"clamd_chunk_size": 2**32},
        {"clamd_tcp_client": "pyclamd"},
        {"clamd_address": "nowhere:x"},
    ],
)
def test_config_errors(settings: dict[str, Any]) -> None:
    with pytest.raises(ClamdConfigError):
        ClamdConfig.from_settings(settings)


def test_config_accepts_floats_for_timeouts() -> None:
    config = ClamdConfig.from_settings({"clamd_timeout": 2.5, "clamd_connect_timeout": 1})
    assert (config.timeout, config.connect_timeout) == (2.5, 1.0)


async def test_shared_client_per_clamd(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    ctx = make_context("clamav", {"local_socket": str(tmp_path / "a.sock")})
    other = make_context("clamav2", {"local_socket": str(tmp_path / "b.sock")})
    other.services = ctx.services
    same = make_context(
        "clamav3", {"local_socket": str(tmp_path / "a.sock"), "clamd_max_concurrency": 3}
    )
    same.services = ctx.services
    try:
        first = await clamd_client(ctx)
        assert await clamd_client(ctx) is first
        assert await clamd_client(other) is not first
        assert await clamd_client(same) is first  # same clamd: one cap, the first settings
        assert first.config.max_concurrency == 8
        assert "already used with clamd_max_concurrency 8" in caplog.text
    finally:
        await ctx.services.close()
    assert first.closed
    with pytest.raises(ClamdUnavailableError):
        await first.scan_bytes(b"x")


# -- a real clamd -------------------------------------------------------------------------


@pytest.fixture(params=TRANSPORTS)
def client(request: pytest.FixtureRequest, clamd_server: ClamdServer) -> ClamdClient:
    """A client of the session clamd; max_msg_size above clamd's StreamMaxLength (1 MiB)."""
    return client_for(request.param, clamd_server, max_msg_size=4 * STREAM_MAX_LENGTH)


async def test_ping_and_version(client: ClamdClient) -> None:
    await client.ping()
    assert (await client.version()).startswith("ClamAV ")


async def test_clean_data(client: ClamdClient) -> None:
    result = await client.scan_bytes(b"Hello, this is a clean message.\n")
    assert result.clean and not result.infected
    assert result == ScanResult(ScanStatus.CLEAN, size=32)


async def test_empty_data_is_clean(client: ClamdClient) -> None:
    assert (await client.scan_bytes(b"")).status is ScanStatus.CLEAN


async def test_eicar(client: ClamdClient) -> None:
    result = await client.scan_bytes(b"some text before " + eicar() + b" and after")
    assert result.infected
    assert result.signature == EICAR_NAME


async def test_custom_signature(client: ClamdClient) -> None:
    result = await client.scan_bytes(b"xx " + CUSTOM_SIGNATURE_TEXT + b" yy")
    assert (result.status, result.signature) == (ScanStatus.INFECTED, CUSTOM_NAME)


async def test_file_with_base64_attachment(client: ClamdClient, tmp_path: Path) -> None:
    path = tmp_path / "message"
    path.write_bytes(mime_with_attachment(b"PK\3\4" + eicar()))
    result = await client.scan_file(path)
    assert result.signature == EICAR_NAME
    assert result.size == path.stat().st_size
    clean = tmp_path / "clean"
    clean.write_bytes(mime_with_attachment(b"just data " * 1000))
    assert (await client.scan_file(str(clean))).clean


async def test_file_larger_than_one_chunk(client: ClamdClient, tmp_path: Path) -> None:
    path = tmp_path / "big"
    path.write_bytes(os.urandom(300_000) + eicar())  # five 64 KiB frames, EICAR in the last
    assert (await client.scan_file(path)).signature == EICAR_NAME


async def test_async_iterable_source(client: ClamdClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b"first chunk "
        yield CUSTOM_SIGNATURE_TEXT[:10]
        yield CUSTOM_SIGNATURE_TEXT[10:]  # split across chunks: clamd still sees it

    assert (await client.scan(chunks())).signature == CUSTOM_NAME


async def test_exactly_stream_max_length_is_scanned(client: ClamdClient) -> None:
    data = b"a" * (STREAM_MAX_LENGTH - len(eicar())) + eicar()
    assert (await client.scan_bytes(data)).signature == EICAR_NAME


async def test_clamd_refuses_a_stream_past_its_limit(client: ClamdClient) -> None:
    """max_msg_size (4 MiB) above clamd's StreamMaxLength (1 MiB): clamd's refusal is an
    OVERSIZE result, not an error, even though clamd hangs up in the middle of the stream.
    EICAR at the start is not reported: clamd scans nothing of a refused stream."""
    for extra in (1, 2 * STREAM_MAX_LENGTH):
        data = eicar() + b"a" * (STREAM_MAX_LENGTH + extra - len(eicar()))
        try:
            result = await client.scan_bytes(data)
        except ClamdUnavailableError:
            # aioclamd only: when clamd hangs up while it still writes, it raises a bare
            # ConnectionResetError and clamd's reason is lost (see docs/filters/clamav.md)
            assert client.config.uses_aioclamd and extra > 1
            continue
        assert result.status is ScanStatus.OVERSIZE
        assert result.by_clamd


async def test_max_size_is_checked_before_contacting_clamd(tmp_path: Path) -> None:
    client = ClamdClient(
        ClamdConfig.from_settings({"local_socket": str(tmp_path / "none"), "max_msg_size": 100})
    )
    assert await client.scan_bytes(b"x" * 101) == ScanResult(ScanStatus.OVERSIZE, size=101)
    path = tmp_path / "big"
    path.write_bytes(b"x" * 200)
    assert await client.scan_file(path) == ScanResult(ScanStatus.OVERSIZE, size=200)
    assert (await client.scan(b"x", size=500)).status is ScanStatus.OVERSIZE
    assert (await client.scan(b"x" * 50, max_size=10)).status is ScanStatus.OVERSIZE
    with pytest.raises(ClamdUnavailableError):  # 100 bytes are sent: nothing listens
        await client.scan_bytes(b"x" * 100)


async def test_async_source_turning_out_too_large(client: ClamdClient) -> None:
    """A source of unknown size is cut off once it passes the limit (below clamd's)."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(5):
            yield b"z" * 200_000

    result = await client.scan(chunks(), max_size=500_000)
    assert result.status is ScanStatus.OVERSIZE
    assert not result.by_clamd
    assert result.size is not None and 500_000 < result.size <= 600_000


async def test_missing_file_raises_oserror_not_clamd_error(client: ClamdClient) -> None:
    with pytest.raises(FileNotFoundError):
        await client.scan_file("/nonexistent/D12345")


async def test_many_concurrent_scans(client: ClamdClient) -> None:
    data = [os.urandom(20_000) + (eicar() if i % 5 == 0 else b"") for i in range(60)]
    results = await asyncio.gather(*(client.scan_bytes(d) for d in data))
    assert [r.infected for r in results] == [i % 5 == 0 for i in range(60)]
    assert client.in_flight == client.waiting == 0


# -- concurrency cap ----------------------------------------------------------------------


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_max_concurrency_caps_connections(tmp_path: Path, transport: str) -> None:
    async with FakeClamd(tmp_path, "slow_ok", tcp=transport != "unix") as fake:
        client = client_for(transport, fake, clamd_max_concurrency=4)
        tasks = [asyncio.create_task(client.scan_bytes(b"data")) for _ in range(10)]
        await asyncio.sleep(0.1)
        assert client.in_flight == 4
        assert client.waiting == 6
        results = await asyncio.gather(*tasks)
    assert all(r.clean for r in results)
    assert fake.max_active == 4
    assert fake.connections == 10
    assert (client.in_flight, client.waiting) == (0, 0)


async def test_waiting_for_a_slot_counts_against_the_timeout(tmp_path: Path) -> None:
    async with FakeClamd(tmp_path, "hang_reply") as fake:
        client = client_for("unix", fake, clamd_max_concurrency=1, clamd_timeout=0.3)
        started = time.monotonic()
        results = await asyncio.gather(
            client.scan_bytes(b"a"), client.scan_bytes(b"b"), return_exceptions=True
        )
        elapsed = time.monotonic() - started
    assert all(isinstance(r, ClamdTimeoutError) for r in results)
    assert "waiting for a free scan slot" in str(results[1])
    assert elapsed < 1.0
    assert client.in_flight == client.waiting == 0


# -- faults: fake servers -----------------------------------------------------------------

SMALL = b"small message\n"
LARGE = os.urandom(8 * 1024 * 1024)  # larger than the socket buffers


@pytest.mark.parametrize("transport", TRANSPORTS)
@pytest.mark.parametrize(
    ("behaviour", "error"),
    [
        ("hang_accept", ClamdTimeoutError),
        ("hang_reply", ClamdTimeoutError),
        ("slow", ClamdTimeoutError),
        ("reset", ClamdUnavailableError),
        ("close_silently", (ClamdUnavailableError, ClamdProtocolError)),
        ("garbage_binary", ClamdProtocolError),
        ("garbage_text", ClamdProtocolError),
        ("flood", ClamdProtocolError),
        ("partial", ClamdProtocolError),
        ("two_replies", ClamdProtocolError),
        ("error", ClamdScanError),
    ],
)
@pytest.mark.parametrize("data", [SMALL, LARGE], ids=["small", "8MiB"])
async def test_fault_gives_a_clamd_error_within_the_timeout(
    tmp_path: Path,
    transport: str,
    behaviour: str,
    error: type[ClamdError] | tuple[type[ClamdError], ...],
    data: bytes,
) -> None:
    async with FakeClamd(tmp_path, behaviour, tcp=transport != "unix") as fake:
        client = client_for(transport, fake, clamd_timeout=0.15, max_msg_size=16 * 1024 * 1024)
        started = time.monotonic()
        with pytest.raises(error) as info:
            async with asyncio.timeout(5):  # a regression fails here instead of hanging
                await client.scan_bytes(data)
        elapsed = time.monotonic() - started
    assert elapsed < 1.25, f"{behaviour}: {elapsed:.2f} s"
    assert isinstance(info.value, ClamdError)
    assert (client.in_flight, client.waiting) == (0, 0)


@pytest.mark.parametrize("transport", ["unix", "tcp-builtin"])
async def test_reply_without_terminator_is_not_a_verdict(tmp_path: Path, transport: str) -> None:
    async with FakeClamd(tmp_path, "unterminated", tcp=transport != "unix") as fake:
        with pytest.raises(ClamdProtocolError):
            await client_for(transport, fake).scan_bytes(SMALL)


@pytest.mark.parametrize("transport", ["unix", "tcp-builtin"])
async def test_ok_before_the_stream_was_read_is_not_clean(tmp_path: Path, transport: str) -> None:
    """A server answering "stream: OK" without reading an 8 MiB stream: our write fails,
    and a verdict on a stream clamd did not receive is not taken."""
    async with FakeClamd(tmp_path, "early_ok", tcp=transport != "unix") as fake:
        client = client_for(transport, fake, max_msg_size=16 * 1024 * 1024)
        with pytest.raises(ClamdError):
            await client.scan_bytes(LARGE)


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_fake_verdicts_pass_through(tmp_path: Path, transport: str) -> None:
    async with FakeClamd(tmp_path, "found", tcp=transport != "unix") as fake:
        client = client_for(transport, fake)
        assert (await client.scan_bytes(SMALL)).signature == "Fake.Virus"
        await client.ping()
        assert await client.version() == "ClamAV 0.0.0-fake"
    assert fake.received == [len(SMALL)]


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_nothing_listening(tmp_path: Path, transport: str) -> None:
    async with FakeClamd(tmp_path, "ok", tcp=transport != "unix") as fake:
        settings = transport_settings(transport, fake)
    client = ClamdClient(ClamdConfig.from_settings({**settings, "clamd_timeout": 2}))
    started = time.monotonic()
    with pytest.raises(ClamdUnavailableError):
        await client.scan_bytes(SMALL)
    with pytest.raises(ClamdUnavailableError):
        await client.ping()
    assert time.monotonic() - started < 1.0


async def test_connect_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    """A TCP connect that gets no answer (a dropped SYN) fails after clamd_connect_timeout."""
    loop = asyncio.get_running_loop()

    async def never(*args: Any) -> None:
        await asyncio.Event().wait()

    monkeypatch.setattr(loop, "sock_connect", never)
    client = ClamdClient(
        ClamdConfig.from_settings({"clamd_address": "192.0.2.1:3310", "clamd_connect_timeout": 0.2})
    )
    started = time.monotonic()
    with pytest.raises(ClamdUnavailableError, match=r"no answer within 0\.2 s"):
        await client.scan_bytes(SMALL)
    assert time.monotonic() - started < 1.0


async def test_aioclamd_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "aioclamd", None)
    config = ClamdConfig.from_settings(
        {"clamd_address": "127.0.0.1:1", "clamd_tcp_client": "aioclamd"}
    )
    with pytest.raises(ClamdConfigError, match="needs the aioclamd package"):
        ClamdClient(config)


async def test_external_cancellation_propagates(tmp_path: Path) -> None:
    async with FakeClamd(tmp_path, "hang_reply") as fake:
        client = client_for("unix", fake)
        task = asyncio.create_task(client.scan_bytes(SMALL))
        await asyncio.sleep(0.1)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
    assert (client.in_flight, client.waiting) == (0, 0)


# -- faults: a real clamd killed ----------------------------------------------------------


@pytest.fixture
def private_clamd(clamd_factory: Callable[..., ClamdServer]) -> Iterator[ClamdServer]:
    """A second clamd this test may kill (the session one stays up)."""
    server = clamd_factory().start()
    yield server
    server.stop()


@pytest.mark.parametrize("transport", TRANSPORTS)
async def test_clamd_killed_mid_scan(private_clamd: ClamdServer, transport: str) -> None:
    client = client_for(transport, private_clamd, clamd_timeout=5)
    assert (await client.scan_bytes(eicar())).infected  # it works before

    async def chunks() -> AsyncIterator[bytes]:
        yield b"a" * 65536
        await asyncio.to_thread(private_clamd.kill)
        for _ in range(8):
            await asyncio.sleep(0.01)
            yield b"b" * 65536

    started = time.monotonic()
    with pytest.raises((ClamdUnavailableError, ClamdProtocolError)):
        await client.scan(chunks())
    assert time.monotonic() - started < 2.0
    assert not private_clamd.alive()
    # and afterwards: the socket file is still there, but nobody listens
    with pytest.raises(ClamdUnavailableError):
        await client.scan_bytes(eicar())
    assert (client.in_flight, client.waiting) == (0, 0)
