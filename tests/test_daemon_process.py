"""The ``pythonfilter`` daemon as a real process, driven like courierfilter drives it.

Every test talks to a subprocess over its UNIX socket (see ``serverkit``).  Per-message
behaviour uses one daemon shared by the module (its chain reads what to do from the test
message's headers); life-cycle tests (stdin EOF, signals, readiness, reload, start-up
failures) each start their own.
"""

from __future__ import annotations

import asyncio
import os
import re
import select
import signal
import stat
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from serverkit import DEFAULT_DATA, DaemonKit, kit_dir, send_raw, wait_until

pytestmark = pytest.mark.slow

# -- test-only filters ------------------------------------------------------------------------

# A whitelist (class attribute whitelist=True) steered by the X-WL header.
WL = """
import asyncio
from courier_pyfilter.api import Filter
from courier_pyfilter.decision import CONTINUE, Decision

class Wl(Filter):
    whitelist = True

    async def check(self, message, ctx):
        how = (await message.headers()).get("X-WL", "")
        if how == "hang":
            await asyncio.sleep(3600)
        if how == "raise":
            raise RuntimeError("whitelist broke")
        if how == "accept":
            return Decision.accept("Whitelisted")
        return CONTINUE
"""

# Shadow mode: would reject on "X-SH: reject".
SH = """
from courier_pyfilter.decision import CONTINUE, Decision

async def check(message, ctx):
    if (await message.headers()).get("X-SH") == "reject":
        return Decision.reject("5.7.1 shadow says no", code="550")
    return CONTINUE
"""

# on_error = 'continue': raises on "X-OE: raise".
OE = """
from courier_pyfilter.decision import CONTINUE

async def check(message, ctx):
    if (await message.headers()).get("X-OE") == "raise":
        raise ValueError("oe failed")
    return CONTINUE
"""

# A whitelist line with "for act": accepts on "X-WLF: yes".
WLF = """
from courier_pyfilter.decision import CONTINUE, Decision

async def check(message, ctx):
    if (await message.headers()).get("X-WLF") == "yes":
        return Decision.accept("whitelisted for act", code="250")
    return CONTINUE
"""

# The blocking filter under test, steered by X-Act.
ACT = """
import asyncio
from courier_pyfilter.decision import CONTINUE, Decision

async def check(message, ctx):
    how = (await message.headers()).get("X-Act", "")
    if how == "reject":
        return Decision.reject("5.7.1 rejected by act", code="550")
    if how == "multi":
        return Decision.reject(("5.7.1 line one", "5.7.1 line two"), code="550")
    if how == "tempfail":
        return Decision.tempfail("4.7.1 later")
    if how == "skip-courier":
        return Decision.accept_skip_courier()
    if how.startswith("raise:"):
        raise RuntimeError("act exploded " + how[6:])
    if how == "garbage":
        return "550 a string, not a Decision"
    if how == "hang":
        await asyncio.sleep(3600)
    if how == "exit":
        raise SystemExit(3)
    if how == "sleep":
        await asyncio.sleep(0.3)
        return Decision.reject("5.7.1 slept", code="550")
    return CONTINUE
"""

# A filter written for the original: do_filter(body_path, control_paths) -> str.
LEG = """
import email
import sys

greeting = "unset"
initialised = False

def init_filter():
    global initialised
    initialised = True

def do_filter(body_path, control_paths):
    with open(body_path, "rb") as fh:
        how = email.message_from_binary_file(fh).get("X-Leg", "")
    if how == "no":
        return "550 no"
    if how == "multi":
        return "517-first line\\n517 second line"
    if how == "greet":
        return "550 %s %s %d" % (greeting, initialised, len(control_paths))
    if how == "none":
        return None
    if how == "exit":
        sys.exit(1)
    return ""
"""

SHARED_CHAIN = ("wl", "sh", "oe", "wlf for act", "act", "leg")
SHARED_SECTIONS: dict[str, dict[str, Any]] = {
    "wl.py": {"timeout": 0.5},
    "sh.py": {"mode": "shadow"},
    "oe.py": {"on_error": "continue"},
    "act.py": {"timeout": 0.5},
    "leg.py": {"greeting": "hello"},
}


def headers(**values: str) -> str:
    """DEFAULT_DATA with extra header fields (X_Act="reject" -> "X-Act: reject")."""
    extra = "".join(f"{k.replace('_', '-')}: {v}\n" for k, v in values.items())
    return extra + DEFAULT_DATA


@pytest.fixture(scope="module")
def shared() -> Iterator[DaemonKit]:
    """One daemon for the per-message tests."""
    with kit_dir() as root:
        kit = DaemonKit(root)
        for name, source in (
            ("wl", WL),
            ("sh", SH),
            ("oe", OE),
            ("wlf", WLF),
            ("act", ACT),
            ("leg", LEG),
        ):
            kit.write_filter(name, source)
        kit.write_chain(*SHARED_CHAIN)
        kit.write_modules(SHARED_SECTIONS)
        kit.start_blocking()
        try:
            yield kit
        finally:
            kit.stop()


@pytest.fixture
async def kit() -> AsyncIterator[DaemonKit]:
    """A private tree for a daemon of the test's own."""
    with kit_dir() as root:
        k = DaemonKit(root)
        try:
            yield k
        finally:
            k.stop()


async def ask(
    kit: DaemonKit, *, recipients: tuple[str, ...] = ("rcpt@courier.test",), **hdrs: str
) -> tuple[bytes, str]:
    """Send a message with the given steering headers; ``(reply, msgid)``."""
    return await kit.ask(data=headers(**hdrs), recipients=recipients)


# -- replies, byte for byte -----------------------------------------------------------------


async def test_no_decision_is_200_ok(shared: DaemonKit) -> None:
    reply, _ = await ask(shared)
    assert reply == b"200 Ok\n"


async def test_reject_reply_and_log_lines(shared: DaemonKit) -> None:
    rcpts = ("a@courier.test", "b@courier.test")
    reply, msgid = await ask(shared, recipients=rcpts, X_Act="reject")
    assert reply == b"550 5.7.1 rejected by act\n"
    await shared.wait_log(f"CPU TIME ACCOUNTING: {msgid} processed with")
    log = shared.log()
    for rcpt in rcpts:
        assert (
            f"pythonfilter act reject,from=<sender@example.com>,addr=<{rcpt}>: "
            "550 5.7.1 rejected by act" in log
        )
    line = next(x for x in log.splitlines() if f"CPU TIME ACCOUNTING: {msgid}" in x)
    assert re.fullmatch(
        rf"CPU TIME ACCOUNTING: {re.escape(msgid)} processed with \d+\.\d{{6}} seconds: "
        r"\(wl\(\d+\.\d{6}\) sh\(\d+\.\d{6}\) oe\(\d+\.\d{6}\) "
        r"wlf\(\d+\.\d{6}\) act\(\d+\.\d{6}\)\)",
        line,
    ), line


async def test_multiline_reply(shared: DaemonKit) -> None:
    reply, _ = await ask(shared, X_Act="multi")
    assert reply == b"550-5.7.1 line one\n550 5.7.1 line two\n"


async def test_tempfail_and_050(shared: DaemonKit) -> None:
    assert (await ask(shared, X_Act="tempfail"))[0] == b"451 4.7.1 later\n"
    assert (await ask(shared, X_Act="skip-courier"))[0] == b"050 OK\n"


async def test_initialized_lines_logged(shared: DaemonKit) -> None:
    log = shared.log()
    for name in ("wl", "sh", "oe", "wlf", "act", "leg"):
        assert f'Initialized the "{name}" python filter' in log


# -- failing filters ---------------------------------------------------------------------


async def test_raising_filter_gives_451_and_traceback(shared: DaemonKit) -> None:
    reply, _ = await ask(shared, X_Act="raise:token-7f3a")
    assert reply.startswith(b"451 ")
    assert reply.endswith(b"\n") and reply.count(b"\n") == 1
    await shared.wait_log("act exploded token-7f3a")
    log = shared.log()
    assert "Traceback (most recent call last)" in log
    assert "RuntimeError: act exploded token-7f3a" in log
    # still alive
    assert (await ask(shared))[0] == b"200 Ok\n"


async def test_garbage_result_gives_451(shared: DaemonKit) -> None:
    reply, _ = await ask(shared, X_Act="garbage")
    assert reply.startswith(b"451 ")
    await shared.wait_log('"act" filter returned')


async def test_hanging_blocking_filter_times_out_451(shared: DaemonKit) -> None:
    t0 = time.monotonic()
    reply, _ = await ask(shared, X_Act="hang")
    elapsed = time.monotonic() - t0
    assert reply.startswith(b"451 ")
    assert 0.4 < elapsed < 3.0
    await shared.wait_log('The "act" filter did not finish within 0.5 s')


async def test_hanging_whitelist_continues(shared: DaemonKit) -> None:
    t0 = time.monotonic()
    reply, _ = await ask(shared, X_WL="hang")
    assert reply == b"200 Ok\n"
    assert time.monotonic() - t0 < 3.0
    # and the rest of the chain still ran after the whitelist timed out
    reply, _ = await ask(shared, X_WL="hang", X_Act="reject")
    assert reply == b"550 5.7.1 rejected by act\n"


async def test_raising_whitelist_continues(shared: DaemonKit) -> None:
    reply, _ = await ask(shared, X_WL="raise", X_Act="reject")
    assert reply == b"550 5.7.1 rejected by act\n"


async def test_whitelist_without_for_stops_chain(shared: DaemonKit) -> None:
    reply, _ = await ask(shared, X_WL="accept", X_Act="reject", X_Leg="no")
    assert reply == b"200 Whitelisted\n"


async def test_on_error_continue(shared: DaemonKit) -> None:
    reply, _ = await ask(shared, X_OE="raise")
    assert reply == b"200 Ok\n"
    await shared.wait_log("ValueError: oe failed")
    reply, _ = await ask(shared, X_OE="raise", X_Act="reject")
    assert reply == b"550 5.7.1 rejected by act\n"


@pytest.mark.parametrize(
    ("name", "source", "steer"),
    [("act", ACT, {"X_Act": "exit"}), ("leg", LEG, {"X_Leg": "exit"})],
    ids=["async-raise-SystemExit", "legacy-sys.exit"],
)
async def test_filter_exiting_does_not_kill_daemon(
    kit: DaemonKit, name: str, source: str, steer: dict[str, str]
) -> None:
    # own daemon: if this fails, the shared one must not die with it
    kit.write_filter(name, source)
    kit.write_chain(name)
    kit.write_modules()
    await kit.start()
    reply, _ = await kit.ask(data=headers(**steer))
    assert reply.startswith(b"451 "), kit.log()
    assert kit.proc is not None and kit.proc.poll() is None
    assert (await ask(kit))[0] == b"200 Ok\n"


# -- shadow mode and "for" bypass through the daemon ---------------------------------------


async def test_shadow_logs_would_have_and_continues(shared: DaemonKit) -> None:
    reply, _ = await ask(shared, X_SH="reject")
    assert reply == b"200 Ok\n"
    await shared.wait_log('shadow: "sh" would have answered 550 5.7.1 shadow says no')
    reply, _ = await ask(shared, X_SH="reject", X_Act="reject")
    assert reply == b"550 5.7.1 rejected by act\n"


async def test_for_bypass_skips_only_listed(shared: DaemonKit) -> None:
    # act is bypassed; leg, the last filter, ran and had no decision: "200 Ok"
    reply, _ = await ask(shared, X_WLF="yes", X_Act="reject")
    assert reply == b"200 Ok\n"
    # leg is not in the bypass set: its rejection wins
    reply, _ = await ask(shared, X_WLF="yes", X_Act="reject", X_Leg="no")
    assert reply == b"550 no\n"


# -- legacy filters ----------------------------------------------------------------------


async def test_legacy_reject(shared: DaemonKit) -> None:
    reply, _ = await ask(shared, X_Leg="no")
    assert reply == b"550 no\n"
    await shared.wait_log(
        "pythonfilter leg reject,from=<sender@example.com>,addr=<rcpt@courier.test>: 550 no"
    )


async def test_legacy_multiline(shared: DaemonKit) -> None:
    reply, _ = await ask(shared, X_Leg="multi")
    assert reply == b"517-first line\n517 second line\n"


async def test_legacy_globals_and_init(shared: DaemonKit) -> None:
    reply, _ = await ask(shared, X_Leg="greet")
    assert reply == b"550 hello True 1\n"


async def test_legacy_non_string_is_no_decision(shared: DaemonKit) -> None:
    reply, _ = await ask(shared, X_Leg="none")
    assert reply == b"200 Ok\n"
    await shared.wait_log('"leg" do_filter function returned non-string')


# -- the socket protocol ---------------------------------------------------------------------


async def test_300_concurrent_connections(shared: DaemonKit) -> None:
    jobs = []
    for i in range(300):
        how = "reject" if i % 3 == 0 else ""
        data, ctl, _ = shared.message(data=headers(X_Act=how) if how else DEFAULT_DATA)
        jobs.append((how, shared.request(data, ctl, timeout=30)))
    replies = await asyncio.gather(*(job for _, job in jobs))
    for (how, _), reply in zip(jobs, replies, strict=True):
        assert reply == (b"550 5.7.1 rejected by act\n" if how else b"200 Ok\n")


async def test_request_sent_byte_by_byte(shared: DaemonKit) -> None:
    data, ctl, _ = shared.message(data=headers(X_Act="reject"))
    raw = f"{data}\n{ctl}\n\n".encode()
    reply = await send_raw(
        shared.socket_path, [raw[i : i + 1] for i in range(len(raw))], delay=0.002
    )
    assert reply == b"550 5.7.1 rejected by act\n"


async def test_half_closed_client_still_answered(shared: DaemonKit) -> None:
    data, ctl, _ = shared.message()
    reply = await send_raw(shared.socket_path, f"{data}\n{ctl}\n\n".encode(), half_close=True)
    assert reply == b"200 Ok\n"


async def test_relative_paths_resolved_in_tmp_dir(shared: DaemonKit) -> None:
    data, ctl, _ = shared.message(data=headers(X_Act="reject"))
    reply = await send_raw(shared.socket_path, f"{data.name}\n{ctl.name}\n\n".encode())
    assert reply == b"550 5.7.1 rejected by act\n"


async def test_client_disconnecting_mid_request(shared: DaemonKit) -> None:
    data, ctl, _ = shared.message()
    _reader, writer = await asyncio.open_unix_connection(str(shared.socket_path))
    writer.write(f"{data}\n{ctl}".encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await shared.wait_log("connection closed before the end of the request")
    assert shared.proc is not None and shared.proc.poll() is None
    assert (await ask(shared))[0] == b"200 Ok\n"


async def test_client_disconnecting_while_filtered(shared: DaemonKit) -> None:
    data, ctl, _ = shared.message(data=headers(X_Act="sleep"))
    _reader, writer = await asyncio.open_unix_connection(str(shared.socket_path))
    writer.write(f"{data}\n{ctl}\n\n".encode())
    await writer.drain()
    writer.close()
    await writer.wait_closed()
    await asyncio.sleep(0.5)
    assert shared.proc is not None and shared.proc.poll() is None
    assert (await ask(shared))[0] == b"200 Ok\n"


@pytest.mark.parametrize(
    "raw",
    [
        pytest.param(b"\n", id="empty-first-line"),
        pytest.param(b"/etc/passwd\n/etc/group\n\n", id="outside-tmp-dir"),
        pytest.param(b"../../etc/passwd\nC1\n\n", id="relative-escape"),
        pytest.param(b"x" * 5000, id="overlong-line"),
        pytest.param(b"/tmp/" + b"y" * 5000 + b"\n\n", id="overlong-line-with-newline"),
        pytest.param(b"\xff\xfe\n\n", id="not-utf8"),
    ],
)
async def test_malformed_request_gets_4xx(shared: DaemonKit, raw: bytes) -> None:
    reply = await send_raw(shared.socket_path, raw)
    assert re.fullmatch(rb"4\d\d [^\n]*\n", reply), reply
    assert (await ask(shared))[0] == b"200 Ok\n"


# -- concurrency limit and request timeout ---------------------------------------------------

SLOW = """
import asyncio, os, time
from courier_pyfilter.decision import Decision

TRACE = os.path.join(os.path.dirname(__file__), "..", "trace")

def note(what):
    with open(TRACE, "a") as fh:
        fh.write(f"{what} {time.monotonic():.6f}\\n")

async def check(message, ctx):
    note("start")
    await asyncio.sleep(float(ctx.settings.get("delay", 0.6)))
    note("end")
    return Decision.reject("5.7.1 slow done", code="550")
"""


def _max_overlap(trace: str) -> int:
    depth = best = 0
    for line in trace.splitlines():
        depth += 1 if line.startswith("start") else -1
        best = max(best, depth)
    return best


async def test_max_concurrent_makes_extra_messages_wait(kit: DaemonKit) -> None:
    kit.write_filter("slow", SLOW)
    kit.write_chain("slow")
    kit.write_modules({"slow.py": {"delay": 0.6}}, max_concurrent=2)
    await kit.start()
    msgs = [kit.message() for _ in range(3)]
    t0 = time.monotonic()
    tasks = [asyncio.create_task(kit.request(d, c)) for d, c, _ in msgs]
    await asyncio.sleep(0.3)
    trace = (kit.root / "trace").read_text()
    assert trace.count("start") == 2, trace  # the third one waits...
    assert not any(t.done() for t in tasks)  # ...connected, not refused
    replies = await asyncio.gather(*tasks)
    assert replies == [b"550 5.7.1 slow done\n"] * 3
    assert time.monotonic() - t0 >= 1.1  # two rounds of 0.6 s
    assert _max_overlap((kit.root / "trace").read_text()) == 2


async def test_request_timeout_answers_451(kit: DaemonKit) -> None:
    kit.write_filter("act", ACT)
    kit.write_chain("act")
    kit.write_modules(request_timeout=0.5)
    await kit.start()
    data, _ctl, _ = kit.message()
    t0 = time.monotonic()
    reply = await send_raw(kit.socket_path, f"{data}\n".encode(), timeout=5)
    assert 0.4 < time.monotonic() - t0 < 3
    assert reply.startswith(b"451 ") and reply.endswith(b"\n")
    assert (await kit.ask())[0] == b"200 Ok\n"


# -- start, readiness, socket --------------------------------------------------------------


def _read_until_eof(fd: int, timeout: float) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError("no EOF on the readiness pipe")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 100)
            if not chunk:
                return data
            data += chunk


async def test_fd3_closed_only_once_socket_exists(kit: DaemonKit) -> None:
    kit.write_filter("slowinit", SLOW_START)
    kit.write_chain("slowinit")
    kit.write_modules()
    read_fd = kit.spawn(ready_pipe=True)
    assert read_fd is not None
    try:
        await asyncio.sleep(0.1)
        assert not kit.socket_path.exists()
        data = await asyncio.to_thread(_read_until_eof, read_fd, 15)
    finally:
        os.close(read_fd)
    assert data == b""
    assert kit.socket_path.exists(), kit.log()
    assert stat.S_ISSOCK(os.stat(kit.socket_path).st_mode)
    assert (await kit.ask())[0] == b"200 Ok\n"


SLOW_START = """
import asyncio
from courier_pyfilter.decision import CONTINUE

async def start(ctx):
    await asyncio.sleep(0.5)

async def check(message, ctx):
    return CONTINUE
"""


async def test_broken_config_at_start_tempfails_until_reload(kit: DaemonKit) -> None:
    # Exiting would leave Courier without the socket, and Courier then skips the filter:
    # mail would pass unfiltered.  The daemon serves 451 instead until SIGHUP fixes it.
    kit.write_chain("no_such_filter_xyz")
    kit.write_modules()
    read_fd = kit.spawn(ready_pipe=True)
    assert read_fd is not None
    try:
        await asyncio.to_thread(_read_until_eof, read_fd, 15)
    finally:
        os.close(read_fd)
    await wait_until(kit.socket_path.exists)
    reply, _ = await kit.ask(data=headers(X_Act="reject"))
    assert reply == b"451 4.3.0 Mail filtering unavailable, try again later\n"
    assert 'Module "no_such_filter_xyz" indicated in pythonfilter.conf could not be loaded' in (
        kit.log()
    )
    kit.write_filter("act", ACT)
    kit.write_chain("act")
    kit.signal(signal.SIGHUP)
    await kit.wait_log("configuration reloaded")
    reply, _ = await kit.ask(data=headers(X_Act="reject"))
    assert reply == b"550 5.7.1 rejected by act\n"


async def test_socket_mode_and_sibling_removed(kit: DaemonKit) -> None:
    kit.write_filter("act", ACT)
    kit.write_chain("act")
    kit.write_modules()
    sibling = kit.root / "filters" / "pf"
    sibling.write_text("stale")
    old = os.umask(0o077)  # inherited by the daemon: the mode must not depend on it
    try:
        await kit.start()
    finally:
        os.umask(old)
    st = os.stat(kit.socket_path)
    assert stat.S_ISSOCK(st.st_mode)
    assert stat.S_IMODE(st.st_mode) == 0o660
    assert not sibling.exists()
    assert not (kit.root / "allfilters" / ".pf").exists()


async def test_second_daemon_refuses_live_socket(kit: DaemonKit) -> None:
    kit.write_filter("act", ACT)
    kit.write_chain("act")
    kit.write_modules()
    await kit.start()
    first = kit.proc
    kit.log_path.rename(kit.root / "first.log")
    kit.spawn()
    assert await kit.wait_exit() == 1
    assert "already listening" in kit.log()
    kit.proc = first
    assert (await kit.ask())[0] == b"200 Ok\n"


# -- shutdown ----------------------------------------------------------------------------------


async def _in_flight(kit: DaemonKit, n: int) -> list[asyncio.Task[bytes]]:
    kit.write_filter("slow", SLOW)
    kit.write_chain("slow")
    kit.write_modules({"slow.py": {"delay": 0.8}})
    await kit.start()
    tasks = []
    for _ in range(n):
        data, ctl, _ = kit.message()
        tasks.append(asyncio.create_task(kit.request(data, ctl)))
    trace = kit.root / "trace"
    await wait_until(lambda: trace.exists() and trace.read_text().count("start") == n)
    return tasks


async def test_stdin_eof_drains_in_flight_then_exits_0(kit: DaemonKit) -> None:
    tasks = await _in_flight(kit, 3)
    kit.close_stdin()
    await wait_until(lambda: not kit.socket_path.exists(), 2)
    assert await asyncio.gather(*tasks) == [b"550 5.7.1 slow done\n"] * 3
    assert await kit.wait_exit() == 0
    assert not kit.socket_path.exists()


async def test_sigterm_drains_in_flight_then_exits_0(kit: DaemonKit) -> None:
    tasks = await _in_flight(kit, 2)
    kit.signal(signal.SIGTERM)
    assert await asyncio.gather(*tasks) == [b"550 5.7.1 slow done\n"] * 2
    assert await kit.wait_exit() == 0
    assert not kit.socket_path.exists()


async def test_drain_timeout_answers_451(kit: DaemonKit) -> None:
    kit.write_filter("slow", SLOW)
    kit.write_chain("slow")
    kit.write_modules({"slow.py": {"delay": 30, "timeout": 60}}, drain_timeout=0.5)
    await kit.start()
    data, ctl, _ = kit.message()
    task = asyncio.create_task(kit.request(data, ctl))
    await wait_until(lambda: (kit.root / "trace").exists())
    kit.close_stdin()
    reply = await task
    assert reply.startswith(b"451 ")
    assert await kit.wait_exit() == 0


# -- reload ----------------------------------------------------------------------------------

VERSIONED = """
import asyncio
from courier_pyfilter.decision import Decision

async def check(message, ctx):
    if (await message.headers()).get("X-Slow"):
        await asyncio.sleep(0.8)
    return Decision.reject("5.7.1 version %s" % ctx.settings.get("v", "?"), code="550")
"""


async def _versioned(kit: DaemonKit) -> None:
    kit.write_filter("v1", VERSIONED)
    kit.write_filter("v2", VERSIONED)
    kit.write_chain("v1")
    kit.write_modules({"v1.py": {"v": "one"}, "v2.py": {"v": "two"}})
    await kit.start()
    assert (await kit.ask())[0] == b"550 5.7.1 version one\n"


async def test_sighup_switches_chain_without_dropping_in_flight(kit: DaemonKit) -> None:
    await _versioned(kit)
    data, ctl, _ = kit.message(data=headers(X_Slow="1"))
    slow = asyncio.create_task(kit.request(data, ctl))
    await asyncio.sleep(0.2)
    kit.write_chain("v2")
    kit.signal(signal.SIGHUP)
    await kit.wait_log("configuration reloaded")
    assert (await kit.ask())[0] == b"550 5.7.1 version two\n"
    assert await slow == b"550 5.7.1 version one\n"
    assert kit.proc is not None and kit.proc.poll() is None


async def test_sighup_picks_up_changed_settings(kit: DaemonKit) -> None:
    await _versioned(kit)
    kit.write_modules({"v1.py": {"v": "uno"}})
    kit.signal(signal.SIGHUP)
    await kit.wait_log("configuration reloaded")
    assert (await kit.ask())[0] == b"550 5.7.1 version uno\n"


async def test_sighup_picks_up_edited_filter_file(kit: DaemonKit) -> None:
    await _versioned(kit)
    kit.write_filter("v1", VERSIONED.replace("version %s", "edited %s"))
    kit.signal(signal.SIGHUP)
    await kit.wait_log("configuration reloaded")
    assert (await kit.ask())[0] == b"550 5.7.1 edited one\n"


@pytest.mark.parametrize(
    "breakage",
    ["unknown-module", "bad-filter-value", "bad-daemon-value", "syntax-error", "bad-chain-line"],
)
async def test_sighup_with_broken_config_is_refused(kit: DaemonKit, breakage: str) -> None:
    await _versioned(kit)
    if breakage == "unknown-module":
        kit.write_chain("v2", "no_such_filter_xyz")
    elif breakage == "bad-filter-value":
        kit.write_chain("v2")
        kit.write_modules({"v1.py": {"v": "one"}, "v2.py": {"v": "two", "timeout": -1}})
    elif breakage == "bad-daemon-value":
        kit.write_chain("v2")
        kit.write_modules(max_concurrent="many")
    elif breakage == "syntax-error":
        kit.write_chain("v2")
        kit.modules_path.write_text(kit.modules_path.read_text() + "\n[v2.py]\nv = 'unclosed\n")
    else:
        kit.write_chain("v2", "9bad-name")
    kit.signal(signal.SIGHUP)
    await kit.wait_log("reload refused")
    assert (await kit.ask())[0] == b"550 5.7.1 version one\n"
    assert kit.proc is not None and kit.proc.poll() is None


# -- logging and --check-config ----------------------------------------------------------


async def test_json_log_format(kit: DaemonKit) -> None:
    kit.write_filter("act", ACT)
    kit.write_chain("act")
    kit.write_modules()
    await kit.start("--log-format", "json")
    reply, msgid = await kit.ask(data=headers(X_Act="reject"))
    assert reply == b"550 5.7.1 rejected by act\n"
    await kit.wait_log(f"CPU TIME ACCOUNTING: {msgid}")
    records = kit.json_log()  # every line must parse
    assert all({"time", "level", "logger", "message"} <= r.keys() for r in records)
    messages = [r["message"] for r in records]
    assert 'Initialized the "act" python filter' in messages
    summary = [r for r in records if r.get("msgid") == msgid and "verdict" in r]
    assert summary and summary[0]["verdict"] == "reject" and summary[0]["filter"] == "act"


async def test_json_log_traceback_is_one_line(kit: DaemonKit) -> None:
    kit.write_filter("act", ACT)
    kit.write_chain("act")
    kit.write_modules()
    await kit.start("--log-format", "json")
    reply, _ = await kit.ask(data=headers(X_Act="raise:jsontb"))
    assert reply.startswith(b"451 ")
    await kit.wait_log("jsontb")
    records = kit.json_log()
    tb = [r for r in records if "traceback" in r]
    assert tb and "RuntimeError: act exploded jsontb" in tb[0]["traceback"]


def test_check_config_ok() -> None:
    with kit_dir() as root:
        kit = DaemonKit(root)
        kit.write_filter("act", ACT)
        kit.write_chain("act", "debug")
        kit.write_modules()
        result = kit.check_config()
        assert result.returncode == 0, result.stderr
        assert "act, debug" in result.stdout
        assert not kit.socket_path.exists()


@pytest.mark.parametrize("breakage", ["unknown-module", "bad-daemon-value", "bad-filter-value"])
def test_check_config_errors_exit_1(breakage: str) -> None:
    with kit_dir() as root:
        kit = DaemonKit(root)
        kit.write_filter("act", ACT)
        kit.write_chain("act")
        if breakage == "unknown-module":
            kit.write_chain("act", "no_such_filter_xyz")
            kit.write_modules()
        elif breakage == "bad-daemon-value":
            kit.write_modules(request_timeout=-3)
        else:
            kit.write_modules({"act.py": {"mode": "maybe"}})
        result = kit.check_config()
        assert result.returncode == 1, (result.stdout, result.stderr)
        assert result.stderr.strip()


# -- the event loop ---------------------------------------------------------------------------


async def test_plain_asyncio_loop_also_serves() -> None:
    with kit_dir() as root:
        kit = DaemonKit(root, loop="asyncio")
        try:
            kit.write_filter("act", ACT)
            kit.write_chain("act")
            kit.write_modules()
            await kit.start()
            assert (await kit.ask(data=headers(X_Act="multi")))[0] == (
                b"550-5.7.1 line one\n550 5.7.1 line two\n"
            )
            kit.close_stdin()
            assert await kit.wait_exit() == 0
        finally:
            kit.stop()
