"""courier_pyfilter.authdaemon: protocol parser, client faults, and the real authdaemond."""

from __future__ import annotations

import asyncio
import logging
import socket
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from courier_pyfilter.authdaemon import (
    DEBIAN_SOCKET_PATH,
    DEFAULT_SOCKET_PATH,
    MAX_REPLY,
    SECTION,
    SERVICE_NAME,
    AuthdaemonClient,
    AuthdaemonConfig,
    AuthdaemonError,
    AuthdaemonProtocolError,
    AuthdaemonTimeoutError,
    ReplyParser,
    authdaemon_client,
    format_request,
    is_valid_name,
    parse_reply,
)
from courier_pyfilter.testing import make_context

sys.path.insert(0, str(Path(__file__).resolve().parent / "filters"))
import authdaemon_fixture
from authdaemon_fixture import FakeAuthdaemon, Handler, RealAuthdaemon, answer, dead_socket, hang

real_authdaemon = authdaemon_fixture.real_authdaemon  # the session fixture
fake_authdaemon = authdaemon_fixture.fake_authdaemon

ALICE = (
    b"UID=1234\nGID=1234\nHOME=/home/alice\nADDRESS=alice\n"
    b"MAILDIR=/home/alice/Maildir\nQUOTA=1000S\n.\n"
)
ALICE_INFO = {
    "UID": "1234",
    "GID": "1234",
    "HOME": "/home/alice",
    "ADDRESS": "alice",
    "MAILDIR": "/home/alice/Maildir",
    "QUOTA": "1000S",
}


# -- requests ---------------------------------------------------------------------------


def test_format_request_is_byte_exact() -> None:
    assert format_request("smtp", "alice") == b"PRE . smtp alice\n"
    assert format_request("smtp", "carol@hosted.test") == b"PRE . smtp carol@hosted.test\n"
    assert format_request("smtp", "jürgen") == b"PRE . smtp j\xc3\xbcrgen\n"


@pytest.mark.parametrize(
    "name",
    ["", "a b", "a\tb", "a\nb", "a\rb", "a\0b", "\x7f", "x" * 1025, "a\u00a0b", "\ud800"],
)
def test_names_that_cannot_be_sent(name: str) -> None:
    assert not is_valid_name(name)
    with pytest.raises(ValueError, match="invalid authdaemon uid"):
        format_request("smtp", name)
    with pytest.raises(ValueError, match="invalid authdaemon service"):
        format_request(name, "alice")


def test_longest_name_and_surrogate_escapes_are_sent() -> None:
    assert is_valid_name("x" * 1024)
    # a byte that was not UTF-8 in the control file travels back unchanged
    assert format_request("smtp", "a\udcffb") == b"PRE . smtp a\xffb\n"


# -- the parser -------------------------------------------------------------------------


def test_parse_account() -> None:
    assert parse_reply(ALICE) == ALICE_INFO


def test_parse_fail() -> None:
    assert parse_reply(b"FAIL\n") is None


def test_fail_after_fields_is_fail() -> None:
    assert parse_reply(b"UID=1\nFAIL\n") is None


def test_empty_account() -> None:
    assert parse_reply(b".\n") == {}


def test_split_at_first_equals_and_empty_values() -> None:
    info = parse_reply(b"OPTIONS=disableimap=1,group=x\nMAILDIR=\nNAME=A = B\n.\n")
    assert info == {"OPTIONS": "disableimap=1,group=x", "MAILDIR": "", "NAME": "A = B"}


def test_repeated_key_keeps_last_value() -> None:
    assert parse_reply(b"HOME=/a\nHOME=/b\n.\n") == {"HOME": "/b"}


def test_values_keep_undecodable_bytes() -> None:
    info = parse_reply(b"HOME=/home/j\xfcrgen\nNAME=J\xc3\xbcrgen\n.\n")
    assert info is not None
    assert info["NAME"] == "Jürgen"
    assert info["HOME"].encode("utf-8", "surrogateescape") == b"/home/j\xfcrgen"


@pytest.mark.parametrize(
    "data",
    [
        b"garbage\n",
        b"\n",
        b"=value\n.\n",
        b"SOME KEY=x\n.\n",
        b"K\xc3\xa9Y=x\n.\n",
        b"UID=1\n..\n",
        b"fail\n",
        b"FAIL \n",
        b"UID=1\nHOME=/a\0b\n.\n",
        b"HTTP/1.0 400 Bad Request\r\n",
    ],
)
def test_garbage_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(AuthdaemonProtocolError):
        parse_reply(data)


@pytest.mark.parametrize("data", [b"FAIL\nFAIL\n", b"UID=1\n.\nUID=2\n", b".\n.\n", b"FAIL\nx"])
def test_data_after_the_end_is_a_protocol_error(data: bytes) -> None:
    with pytest.raises(AuthdaemonProtocolError, match="after the end"):
        parse_reply(data)


def test_data_after_the_end_in_a_later_feed() -> None:
    parser = ReplyParser()
    assert parser.feed(b"FAIL\n")
    with pytest.raises(AuthdaemonProtocolError, match="after the end"):
        parser.feed(b"x")


@pytest.mark.parametrize("data", [b"", b"UID=1\n", b"UID=1\n.", b"FAI", b"FAIL", b"HOME=/x"])
def test_truncated_answer(data: bytes) -> None:
    parser = ReplyParser()
    assert parser.feed(data) is False
    assert not parser.done
    with pytest.raises(AuthdaemonProtocolError, match="not complete"):
        parser.result()
    with pytest.raises(AuthdaemonProtocolError, match="connection closed"):
        parser.eof()


def test_oversized_answer() -> None:
    parser = ReplyParser(max_size=100)
    parser.feed(b"A=" + b"x" * 90 + b"\n")
    with pytest.raises(AuthdaemonProtocolError, match="longer than 100 bytes"):
        parser.feed(b"B=" + b"y" * 20)
    line = b"K=" + b"v" * MAX_REPLY + b"\n.\n"
    with pytest.raises(AuthdaemonProtocolError, match="longer than"):
        parse_reply(line)


def test_answer_of_exactly_max_size_is_accepted() -> None:
    body = b"K=" + b"v" * (MAX_REPLY - 5) + b"\n.\n"
    assert len(body) == MAX_REPLY
    info = parse_reply(body)
    assert info is not None
    assert len(info["K"]) == MAX_REPLY - 5
    with pytest.raises(AuthdaemonProtocolError, match="longer than"):
        parse_reply(b"K=v" + body)


def test_byte_by_byte_feeding() -> None:
    parser = ReplyParser()
    done = [parser.feed(ALICE[i : i + 1]) for i in range(len(ALICE))]
    assert done == [False] * (len(ALICE) - 1) + [True]
    assert parser.result() == ALICE_INFO


def test_empty_feed_changes_nothing() -> None:
    parser = ReplyParser()
    assert parser.feed(b"") is False
    assert parser.feed(b"FAIL\n") is True
    assert parser.feed(b"") is True
    assert parser.result() is None


def _outcome(chunks: list[bytes]) -> tuple[str, object]:
    parser = ReplyParser(max_size=256)
    try:
        for chunk in chunks:
            parser.feed(chunk)
        if not parser.done:
            return ("incomplete", None)
        return ("done", parser.result())
    except AuthdaemonProtocolError:
        return ("error", None)


def _split(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces, start = [], 0
    for point in [*points, len(data)]:
        pieces.append(data[start:point])
        start = point
    return pieces


@settings(max_examples=300, deadline=None)
@given(data=st.binary(max_size=400), cuts=st.lists(st.integers(0, 400), max_size=8))
def test_random_input_only_raises_protocol_errors(data: bytes, cuts: list[int]) -> None:
    # Any exception but AuthdaemonProtocolError fails the test; so does a result that
    # depends on how the bytes were split.
    whole = _outcome([data])
    assert _outcome(_split(data, cuts)) == whole
    parser = ReplyParser(max_size=256)
    try:
        parser.feed(data)
        parser.eof()
    except AuthdaemonProtocolError:
        return
    result = parser.result()
    assert result is None or isinstance(result, dict)


_keys = st.from_regex(r"[A-Za-z0-9_]{1,12}", fullmatch=True)
_values = st.binary(max_size=40).filter(lambda b: b"\n" not in b and b"\0" not in b)


@settings(max_examples=200, deadline=None)
@given(
    fields=st.lists(st.tuples(_keys, _values), max_size=10),
    cuts=st.lists(st.integers(0, 1000), max_size=6),
)
def test_valid_answers_round_trip_in_any_pieces(
    fields: list[tuple[str, bytes]], cuts: list[int]
) -> None:
    data = b"".join(k.encode() + b"=" + v + b"\n" for k, v in fields) + b".\n"
    expected = {k: v.decode("utf-8", "surrogateescape") for k, v in fields}
    parser = ReplyParser()
    for piece in _split(data, cuts):
        parser.feed(piece)
    assert parser.done
    assert parser.result() == expected


@settings(max_examples=200, deadline=None)
@given(fields=st.lists(st.tuples(_keys, _values), max_size=6), data=st.data())
def test_every_truncation_is_incomplete(
    fields: list[tuple[str, bytes]], data: st.DataObject
) -> None:
    answer = b"".join(k.encode() + b"=" + v + b"\n" for k, v in fields) + b".\n"
    cut = data.draw(st.integers(0, len(answer) - 1))
    parser = ReplyParser()
    assert parser.feed(answer[:cut]) is False
    with pytest.raises(AuthdaemonProtocolError):
        parser.eof()


@settings(max_examples=100, deadline=None)
@given(tail=st.binary(min_size=1, max_size=50), fail=st.booleans())
def test_anything_after_the_end_is_refused(tail: bytes, fail: bool) -> None:
    answer = b"FAIL\n" if fail else ALICE
    with pytest.raises(AuthdaemonProtocolError):
        parse_reply(answer + tail)


# -- configuration ----------------------------------------------------------------------


def test_config_defaults_are_the_originals() -> None:
    config = AuthdaemonConfig.from_section({})
    assert config == AuthdaemonConfig()
    assert config.socket_path == DEFAULT_SOCKET_PATH == "/var/spool/authdaemon/socket"
    assert (config.connect_timeout, config.write_timeout, config.read_timeout) == (10, 10, 30)
    assert config.max_connections == 4
    assert config.fallback_paths == (DEBIAN_SOCKET_PATH,)


def test_config_from_section() -> None:
    config = AuthdaemonConfig.from_section(
        {
            "socket_path": "/x/socket",
            "TIMEOUT_SOCK": 0,
            "TIMEOUT_WRITE": 2.5,
            "TIMEOUT_READ": 7,
            "max_connections": 2,
            "unrelated": "ignored",
        }
    )
    assert config.socket_path == "/x/socket"
    assert config.connect_timeout is None  # 0: no limit, as in the original
    assert config.write_timeout == 2.5
    assert config.read_timeout == 7.0
    assert config.max_connections == 2


@pytest.mark.parametrize(
    "section",
    [
        {"socket_path": ""},
        {"socket_path": 5},
        {"TIMEOUT_SOCK": "10"},
        {"TIMEOUT_READ": -1},
        {"TIMEOUT_WRITE": True},
        {"TIMEOUT_READ": float("inf")},
        {"max_connections": 0},
        {"max_connections": 2.0},
    ],
)
def test_bad_config_values(section: dict[str, object]) -> None:
    with pytest.raises(ValueError, match=r"\[authdaemon.py\]"):
        AuthdaemonConfig.from_section(section)


def test_socket_path_fallback(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    real = tmp_path / "real"
    real.touch()
    missing = str(tmp_path / "missing")
    client = AuthdaemonClient(AuthdaemonConfig(socket_path=str(real), fallback_paths=()))
    assert client.socket_path() == str(real)
    client = AuthdaemonClient(AuthdaemonConfig(socket_path=missing, fallback_paths=()))
    assert client.socket_path() == missing
    client = AuthdaemonClient(
        AuthdaemonConfig(socket_path=missing, fallback_paths=(str(tmp_path / "no"), str(real)))
    )
    with caplog.at_level(logging.WARNING, "courier_pyfilter.authdaemon"):
        assert client.socket_path() == str(real)
        assert client.socket_path() == str(real)
    assert [r.getMessage() for r in caplog.records] == [
        f"authdaemon socket {missing} does not exist, using {real}"
    ]


def test_default_path_falls_back_silently(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    debian = tmp_path / "debian"
    debian.touch()
    client = AuthdaemonClient(AuthdaemonConfig(fallback_paths=(str(debian),)))
    with caplog.at_level(logging.WARNING, "courier_pyfilter.authdaemon"):
        assert client.socket_path() == str(debian)
    assert caplog.records == []


# -- faults, with a fake authdaemond ----------------------------------------------------

Fake = Callable[[Handler], Awaitable[FakeAuthdaemon]]


def client_for(path: str, **options: Any) -> AuthdaemonClient:
    return AuthdaemonClient(AuthdaemonConfig(socket_path=path, fallback_paths=(), **options))


async def test_lookup_sends_one_request_per_connection(
    fake_authdaemon: Fake,
) -> None:
    daemon = await fake_authdaemon(answer(ALICE))
    client = client_for(daemon.path)
    assert await client.user_info("smtp", "alice") == ALICE_INFO
    assert await client.user_info("esmtp", "bob") == ALICE_INFO
    assert daemon.requests == [b"PRE . smtp alice\n", b"PRE . esmtp bob\n"]
    assert daemon.connections == 2


async def test_fail_is_none(fake_authdaemon: Fake) -> None:
    daemon = await fake_authdaemon(answer(b"FAIL\n"))
    assert await client_for(daemon.path).user_info("smtp", "nobody") is None


async def test_garbage_answer(fake_authdaemon: Fake) -> None:
    daemon = await fake_authdaemon(answer(b"220 mx ESMTP\r\n"))
    with pytest.raises(AuthdaemonProtocolError, match=f"authdaemond at {daemon.path}: malformed"):
        await client_for(daemon.path).user_info("smtp", "alice")


async def test_endless_answer(fake_authdaemon: Fake) -> None:
    async def flood(request: bytes, writer: asyncio.StreamWriter) -> None:
        for _ in range(1000):
            writer.write(b"X=" + b"y" * 1000 + b"\n")
            await writer.drain()

    daemon = await fake_authdaemon(flood)
    with pytest.raises(AuthdaemonProtocolError, match="longer than"):
        await client_for(daemon.path).user_info("smtp", "alice")


async def test_close_without_answer(fake_authdaemon: Fake) -> None:
    async def hang_up(request: bytes, writer: asyncio.StreamWriter) -> None:
        return  # the connection is closed without an answer

    daemon = await fake_authdaemon(hang_up)
    with pytest.raises(AuthdaemonProtocolError, match="connection closed after 0 bytes"):
        await client_for(daemon.path).user_info("smtp", "alice")


async def test_truncated_answer_then_close(fake_authdaemon: Fake) -> None:
    daemon = await fake_authdaemon(answer(ALICE[:-2]))
    with pytest.raises(AuthdaemonProtocolError, match="before the end of the answer"):
        await client_for(daemon.path).user_info("smtp", "alice")


async def test_connection_reset(tmp_path: Path) -> None:
    # Closing a UNIX socket with unread data makes the peer's read fail with ECONNRESET.
    path = str(tmp_path / "reset.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(1)
    listener.setblocking(False)
    loop = asyncio.get_running_loop()

    async def server() -> None:
        conn, _ = await loop.sock_accept(listener)
        await asyncio.sleep(0.1)  # the request is in conn's buffer, unread
        conn.close()

    task = asyncio.create_task(server())
    try:
        with pytest.raises(AuthdaemonError) as info:
            await client_for(path, read_timeout=5.0).user_info("smtp", "alice")
        assert not isinstance(info.value, AuthdaemonTimeoutError)
        assert "reset" in str(info.value).lower() or "closed" in str(info.value)
    finally:
        await task
        listener.close()


async def test_hanging_daemon_times_out(fake_authdaemon: Fake) -> None:
    daemon = await fake_authdaemon(hang)
    started = time.monotonic()
    with pytest.raises(AuthdaemonTimeoutError, match=r"reading the answer took longer than 0\.2 s"):
        await client_for(daemon.path, read_timeout=0.2).user_info("smtp", "alice")
    assert time.monotonic() - started < 2


async def test_read_timeout_covers_the_whole_answer(
    fake_authdaemon: Fake,
) -> None:
    # A daemon that trickles its answer cannot keep a lookup going for ever.
    async def trickle(request: bytes, writer: asyncio.StreamWriter) -> None:
        for byte in ALICE:
            writer.write(bytes([byte]))
            await writer.drain()
            await asyncio.sleep(0.02)

    daemon = await fake_authdaemon(trickle)
    with pytest.raises(AuthdaemonTimeoutError):
        await client_for(daemon.path, read_timeout=0.3).user_info("smtp", "alice")


async def test_connection_refused(tmp_path: Path) -> None:
    path = dead_socket(tmp_path / "dead.sock")
    with pytest.raises(AuthdaemonError, match=f"cannot connect to authdaemond at {path}"):
        await client_for(path).user_info("smtp", "alice")


async def test_missing_socket(tmp_path: Path) -> None:
    path = str(tmp_path / "absent")
    with pytest.raises(AuthdaemonError, match=r"cannot connect.*No such file"):
        await client_for(path).user_info("smtp", "alice")


async def test_concurrency_is_limited(fake_authdaemon: Fake) -> None:
    daemon = await fake_authdaemon(answer(ALICE, delay=0.05))
    client = client_for(daemon.path, max_connections=3)
    results = await asyncio.gather(*(client.user_info("smtp", f"u{i}") for i in range(12)))
    assert results == [ALICE_INFO] * 12
    assert daemon.peak == 3
    assert daemon.connections == 12


async def test_waiting_for_a_slot_counts_against_the_connect_timeout(
    fake_authdaemon: Fake,
) -> None:
    daemon = await fake_authdaemon(answer(ALICE, delay=0.6))
    client = client_for(daemon.path, max_connections=1, connect_timeout=0.2)
    first = asyncio.create_task(client.user_info("smtp", "slow"))
    await asyncio.sleep(0.05)
    with pytest.raises(AuthdaemonTimeoutError, match="no connection to authdaemond"):
        await client.user_info("smtp", "waiting")
    assert await first == ALICE_INFO
    assert daemon.connections == 1


async def test_slots_are_released_after_errors_and_cancellation(
    fake_authdaemon: Fake,
) -> None:
    mode = {"hang": True}

    async def handler(request: bytes, writer: asyncio.StreamWriter) -> None:
        if mode["hang"]:
            await asyncio.sleep(30)
        writer.write(b"FAIL\n")

    daemon = await fake_authdaemon(handler)
    client = client_for(daemon.path, max_connections=1, read_timeout=0.1, connect_timeout=0.5)
    with pytest.raises(AuthdaemonTimeoutError):
        await client.user_info("smtp", "a")
    task = asyncio.create_task(client.user_info("smtp", "b"))
    await asyncio.sleep(0.05)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    mode["hang"] = False
    assert await client.user_info("smtp", "c") is None


async def test_invalid_name_does_not_connect(fake_authdaemon: Fake) -> None:
    daemon = await fake_authdaemon(answer(ALICE))
    with pytest.raises(ValueError):
        await client_for(daemon.path).user_info("smtp", "two words")
    assert daemon.connections == 0


async def test_closed_client_refuses(fake_authdaemon: Fake) -> None:
    daemon = await fake_authdaemon(answer(ALICE))
    client = client_for(daemon.path)
    await client.close()
    with pytest.raises(AuthdaemonError, match="closed"):
        await client.user_info("smtp", "alice")
    assert daemon.connections == 0


# -- the shared client ------------------------------------------------------------------


async def test_authdaemon_client_is_shared_and_configured() -> None:
    ctx = make_context(
        "a",
        sections={SECTION: {"socket_path": "/x/sock", "TIMEOUT_READ": 3, "max_connections": 2}},
    )
    other = make_context("b")
    other.services = ctx.services  # two filters of one configuration
    client = await authdaemon_client(ctx)
    assert await authdaemon_client(other) is client
    assert client.config.socket_path == "/x/sock"
    assert client.config.read_timeout == 3
    assert client.config.max_connections == 2
    await ctx.services.close()
    with pytest.raises(AuthdaemonError, match="closed"):
        await client.user_info("smtp", "alice")


async def test_authdaemon_client_bad_section() -> None:
    ctx = make_context(sections={SECTION: {"TIMEOUT_READ": "30"}})
    with pytest.raises(ValueError, match="TIMEOUT_READ"):
        await authdaemon_client(ctx)


async def test_installed_client_is_used() -> None:
    ctx = make_context()
    mine = client_for("/nowhere")
    ctx.services.put(SERVICE_NAME, mine)
    assert await authdaemon_client(ctx) is mine


# -- the real authdaemond ---------------------------------------------------------------


async def test_real_daemon_account(real_authdaemon: RealAuthdaemon) -> None:
    client = client_for(real_authdaemon.socket_path)
    info = await client.user_info("smtp", "alice")
    home = real_authdaemon.home("alice")
    assert info == {
        "UID": "5100",
        "GID": "5100",
        "HOME": str(home),
        "ADDRESS": "alice",
        "MAILDIR": f"{home}/Maildir",
    }
    bob = await client.user_info("smtp", "bob")
    assert bob is not None
    assert bob["HOME"] == str(real_authdaemon.home("bob"))
    assert "MAILDIR" not in bob
    carol = await client.user_info("smtp", "carol@hosted.test")
    assert carol is not None
    assert carol["MAILDIR"] == "./Maildir"
    assert carol["ADDRESS"] == "carol@hosted.test"


async def test_real_daemon_unknown_account(real_authdaemon: RealAuthdaemon) -> None:
    client = client_for(real_authdaemon.socket_path)
    assert await client.user_info("smtp", "nobody") is None
    assert await client.user_info("smtp", "ALICE") is None  # userdb names are exact
    assert await client.user_info("smtp", "carol") is None


async def test_real_daemon_many_concurrent_lookups(real_authdaemon: RealAuthdaemon) -> None:
    # More lookups than authdaemond has processes (2) and than the client's slots.
    client = client_for(real_authdaemon.socket_path, max_connections=4)
    names = ["alice", "bob", "nobody", "dave"] * 10
    results = await asyncio.gather(*(client.user_info("smtp", n) for n in names))
    for name, info in zip(names, results, strict=True):
        if name == "nobody":
            assert info is None
        else:
            assert info is not None
            assert info["ADDRESS"] == name


async def test_real_daemon_through_services(real_authdaemon: RealAuthdaemon) -> None:
    ctx = make_context(sections={SECTION: real_authdaemon.section()})
    try:
        client = await authdaemon_client(ctx)
        info = await client.user_info("smtp", "dave")
        assert info is not None
        assert info["MAILDIR"] == "./Mail/box"
    finally:
        await ctx.services.close()


def test_real_daemon_through_the_compat_module(
    real_authdaemon: RealAuthdaemon, monkeypatch: pytest.MonkeyPatch
) -> None:
    import courier.authdaemon as compat

    monkeypatch.setattr(compat, "_config_loaded", True)
    monkeypatch.setattr(compat, "socket_path", real_authdaemon.socket_path)
    info = compat.get_user_info("smtp", "alice")
    assert info is not None
    assert info["HOME"] == str(real_authdaemon.home("alice"))
    assert compat.getUserInfo("smtp", "nobody") is None
