"""The asyncio sendmail client, run against small programs standing in for sendmail.

The stand-ins inject faults (exit status, signals, hangs, garbage output, early exit)
that Courier's own ``/usr/sbin/sendmail`` cannot be made to produce on demand; the
end-to-end run through a real Courier is tested separately.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from courier_pyfilter.mta import CourierPaths
from courier_pyfilter.sendmail import (
    Sendmail,
    SendmailError,
    find_sendmail,
    sendmail,
)

RECORDER = """\
import json, os, sys
out = {"argv": sys.argv[1:], "env": dict(os.environ)}
data = sys.stdin.buffer.read()
with open(os.path.join(%(dir)r, "stdin"), "wb") as fh:
    fh.write(data)
with open(os.path.join(%(dir)r, "call.json"), "w") as fh:
    json.dump(out, fh)
sys.exit(%(status)d)
"""


def script(tmp_path: Path, name: str, body: str, *, python: bool = False) -> str:
    """An executable stand-in for sendmail."""
    path = tmp_path / name
    interpreter = sys.executable if python else "/bin/sh"
    path.write_text(f"#!{interpreter}\n{body}")
    path.chmod(0o755)
    return str(path)


def recorder(tmp_path: Path, status: int = 0) -> str:
    return script(
        tmp_path, "sendmail", RECORDER % {"dir": str(tmp_path), "status": status}, python=True
    )


def read(path: str) -> bytes:
    return Path(path).read_bytes()


def recorded(tmp_path: Path) -> tuple[list[str], dict[str, str], bytes]:
    call = json.loads((tmp_path / "call.json").read_text())
    return call["argv"], call["env"], (tmp_path / "stdin").read_bytes()


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # a zombie still answers kill(0): look at its state
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


async def wait_dead(pid: int, limit: float = 5.0) -> bool:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if not pid_alive(pid):
            return True
        await asyncio.sleep(0.02)
    return False


# -- success ------------------------------------------------------------------------------


async def test_parts_are_sent_in_order_and_files_streamed(tmp_path: Path) -> None:
    big = tmp_path / "D1"
    payload = os.urandom(3 * 1024 * 1024 + 17)  # several chunks
    big.write_bytes(payload)
    client = Sendmail(recorder(tmp_path))
    await client.send("", ["alice@example.com"], [b"X-A: 1\n", big, b"", bytearray(b"tail\n")])
    argv, env, stdin = recorded(tmp_path)
    assert argv == ["-oi", "-f", "", "alice@example.com"]
    assert (
        hashlib.sha256(stdin).digest() == hashlib.sha256(b"X-A: 1\n" + payload + b"tail\n").digest()
    )
    assert set(env) <= {"PATH", "LC_CTYPE", "PWD", "SHLVL", "_"}  # what the shells add
    assert "PATH" in env


async def test_sender_none_and_several_recipients(tmp_path: Path) -> None:
    client = Sendmail(recorder(tmp_path), options=())
    await client.send(None, ["a@example.com", "b@example.net"], b"Subject: x\n\nbody\n")
    argv, _, stdin = recorded(tmp_path)
    assert argv == ["a@example.com", "b@example.net"]
    assert stdin == b"Subject: x\n\nbody\n"


async def test_single_recipient_string_and_sender(tmp_path: Path) -> None:
    await sendmail("bounce@example.com", "a@example.com", b"x\n", program=recorder(tmp_path))
    argv, _, _ = recorded(tmp_path)
    assert argv == ["-oi", "-f", "bounce@example.com", "a@example.com"]


async def test_environment_is_not_inherited(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Courier's sendmail would put NAME into the From: header of the message
    monkeypatch.setenv("NAME", "Leaked Name")
    monkeypatch.setenv("MAILNAME", "Leaked Too")
    await Sendmail(recorder(tmp_path)).send("", "a@example.com", b"x\n")
    _, env, _ = recorded(tmp_path)
    assert "NAME" not in env and "MAILNAME" not in env
    await Sendmail(recorder(tmp_path), env={"PATH": "/bin", "X": "1"}).send("", "a@b", b"x\n")
    _, env, _ = recorded(tmp_path)
    assert env["X"] == "1"


async def test_garbage_output_with_status_zero_is_success(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        "sendmail",
        "cat >/dev/null\nhead -c 200000 /dev/urandom\nhead -c 200000 /dev/urandom >&2\nexit 0\n",
    )
    await Sendmail(program).send("", "a@example.com", b"x\n" * 1000)


# -- failures -----------------------------------------------------------------------------


async def test_exit_status_is_checked(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        "sendmail",
        "cat >/dev/null\necho '517 User unknown' \necho 'sendmail: Unable to submit message.' >&2\n"
        "exit 67\n",
    )
    with pytest.raises(SendmailError) as info:
        await Sendmail(program).send("", "a@example.com", b"x\n")
    err = info.value
    assert err.returncode == 67
    assert not err.timed_out
    assert str(err).startswith(f"{program} exited with status 67: ")
    assert "517 User unknown" in str(err)
    assert "Unable to submit message." in str(err)


async def test_garbage_in_error_output_is_cleaned_and_shortened(tmp_path: Path) -> None:
    program = script(
        tmp_path,
        "sendmail",
        "cat >/dev/null\nprintf 'bad\\001\\033[31m\\377\\n'\n"
        "head -c 100000 /dev/zero | tr '\\0' x\nexit 75\n",
    )
    with pytest.raises(SendmailError) as info:
        await Sendmail(program).send("", "a@example.com", b"x\n")
    text = str(info.value)
    assert text.isprintable()
    assert "bad" in text
    assert len(text) < len(program) + 400
    assert text.endswith("...")
    assert len(info.value.output) == 64 * 1024  # the first 64 KiB are kept


async def test_killed_by_signal(tmp_path: Path) -> None:
    program = script(tmp_path, "sendmail", "cat >/dev/null\nkill -9 $$\n")
    with pytest.raises(SendmailError, match=r"was killed by signal 9$") as info:
        await Sendmail(program).send("", "a@example.com", b"x\n")
    assert info.value.returncode == -signal.SIGKILL


async def test_program_exits_without_reading(tmp_path: Path) -> None:
    program = script(tmp_path, "sendmail", "exec 0<&-\necho gone\nexit 0\n")
    with pytest.raises(SendmailError, match="exited before reading the whole message: gone"):
        await Sendmail(program).send("", "a@example.com", b"x" * (4 * 1024 * 1024))
    # with a failure status the status is what is reported
    program = script(tmp_path, "sendmail2", "exec 0<&-\nexit 75\n")
    with pytest.raises(SendmailError, match="exited with status 75"):
        await Sendmail(program).send("", "a@example.com", b"x" * (4 * 1024 * 1024))


class SlowPath(os.PathLike[str]):
    """A file name that takes a while to produce (blocking), so that the program has
    closed its input before anything was written to it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __fspath__(self) -> str:
        time.sleep(0.3)
        return str(self.path)


async def test_program_closes_input_before_the_first_write(tmp_path: Path) -> None:
    # asyncio reports this as a clean close and drops the writes without an error
    data = tmp_path / "D1"
    data.write_bytes(b"Subject: x\n\nshort\n")
    program = script(tmp_path, "sendmail", "exec 0<&-\nexit 0\n")
    with pytest.raises(SendmailError, match=r"exited before reading the whole message$"):
        await Sendmail(program).send("", "a@example.com", [SlowPath(data)])


class ClosedWriter:
    """A stdin whose transport asyncio already closed "cleanly" (the program closed its
    end while nothing was buffered): asyncio would drop writes without an error."""

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def is_closing(self) -> bool:
        return True

    def write(self, data: bytes) -> None:
        self.written.append(data)

    async def drain(self) -> None:
        return None


async def test_a_closed_input_is_never_taken_for_success() -> None:
    from courier_pyfilter.sendmail import _write

    writer = ClosedWriter()
    with pytest.raises(BrokenPipeError):
        await _write(writer, b"data")  # type: ignore[arg-type]
    assert writer.written == []


async def test_missing_program(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(SendmailError, match=f"^cannot run {missing}: ") as info:
        await Sendmail(missing).send("", "a@example.com", b"x\n")
    assert info.value.returncode is None


async def test_hang_times_out_and_kills_the_process_group(tmp_path: Path) -> None:
    # the stand-in starts a child (as sendmail starts submit) and both hang
    pidfile = tmp_path / "child.pid"
    program = script(
        tmp_path,
        "sendmail",
        f"sleep 60 &\necho $! > {pidfile}\ncat >/dev/null\nwait\n",
    )
    started = time.monotonic()
    with pytest.raises(SendmailError) as info:
        await Sendmail(program, timeout=0.5).send("", "a@example.com", b"x\n")
    assert time.monotonic() - started < 5
    assert info.value.timed_out
    assert str(info.value) == f"{program} did not finish within 0.5 s"
    assert await wait_dead(int(pidfile.read_text()))


async def test_hang_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    program = script(
        tmp_path, "sendmail", "trap '' TERM\ncat >/dev/null\nwhile :; do sleep 1; done\n"
    )
    started = time.monotonic()
    with pytest.raises(SendmailError, match=r"did not finish within 0\.3 s"):
        await Sendmail(program, timeout=0.3).send("", "a@example.com", b"x\n")
    assert time.monotonic() - started < 6


async def test_hang_while_not_reading_stdin(tmp_path: Path) -> None:
    program = script(tmp_path, "sendmail", "sleep 60\n")
    with pytest.raises(SendmailError, match="did not finish"):
        await Sendmail(program, timeout=0.5).send("", "a@example.com", b"x" * (2 * 1024 * 1024))


async def test_unreadable_file_stops_the_program_before_it_submits(tmp_path: Path) -> None:
    # the stand-in "submits" (writes the marker) at end of input, even when told to
    # terminate: its input must not end before it is dead
    marker = tmp_path / "submitted"
    program = script(tmp_path, "sendmail", f"trap '' TERM\ncat >/dev/null\necho yes > {marker}\n")
    missing = tmp_path / "D-missing"
    with pytest.raises(SendmailError, match=f"cannot read {missing}: No such file"):
        await Sendmail(program).send("", "a@example.com", [b"X-A: 1\n", missing])
    await asyncio.sleep(0.2)
    assert not marker.exists()


async def test_cancellation_kills_the_program(tmp_path: Path) -> None:
    pidfile = tmp_path / "pid"
    program = script(tmp_path, "sendmail", f"echo $$ > {pidfile}\ncat >/dev/null\nsleep 60\n")
    task = asyncio.ensure_future(Sendmail(program).send("", "a@example.com", b"x\n"))
    for _ in range(250):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        await asyncio.sleep(0.02)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert await wait_dead(int(pidfile.read_text()))


# -- arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("sender", "recipients"),
    [
        ("", []),
        ("", ["-oQ/tmp/x"]),
        ("", [""]),
        ("", ["a@example.com\nb@example.com"]),
        ("", ["a@exa\x00mple.com"]),
        ("-bs", ["a@example.com"]),
        ("x\r", ["a@example.com"]),
    ],
)
async def test_bad_addresses_are_refused_before_running(
    tmp_path: Path, sender: str, recipients: list[str]
) -> None:
    program = recorder(tmp_path)
    with pytest.raises(ValueError):
        await Sendmail(program).send(sender, recipients, b"x\n")
    assert not (tmp_path / "call.json").exists()


async def test_bad_content_is_refused(tmp_path: Path) -> None:
    program = recorder(tmp_path)
    with pytest.raises(TypeError):
        await Sendmail(program).send("", "a@example.com", "text")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        await Sendmail(program).send("", "a@example.com", [b"x", 3])  # type: ignore[list-item]
    assert not (tmp_path / "call.json").exists()


def test_client_arguments() -> None:
    with pytest.raises(ValueError):
        Sendmail("")
    with pytest.raises(ValueError):
        Sendmail("/usr/sbin/sendmail", timeout=0)
    client = Sendmail("/usr/sbin/sendmail", timeout=5)
    assert client.argv("", ["a@example.com"]) == [
        "/usr/sbin/sendmail",
        "-oi",
        "-f",
        "",
        "a@example.com",
    ]
    assert repr(client) == "Sendmail('/usr/sbin/sendmail', timeout=5)"


# -- finding the program ------------------------------------------------------------------


def test_find_sendmail_order(tmp_path: Path) -> None:
    first = script(tmp_path, "first", "exit 0\n")
    second = script(tmp_path, "second", "exit 0\n")
    not_exec = tmp_path / "plain"
    not_exec.write_text("x")
    assert find_sendmail(candidates=[str(not_exec), first, second]) == first
    assert find_sendmail(candidates=[str(tmp_path / "missing"), second]) == second


def test_find_sendmail_in_courier_dirs(tmp_path: Path) -> None:
    sbin = tmp_path / "sbin"
    sbin.mkdir()
    bin_ = tmp_path / "bin"
    bin_.mkdir()
    script(bin_, "sendmail", "exit 0\n")
    paths = CourierPaths(sbindir=str(sbin), bindir=str(bin_))
    assert find_sendmail(paths, candidates=()) == str(bin_ / "sendmail")
    script(sbin, "sendmail", "exit 0\n")
    assert find_sendmail(paths, candidates=()) == str(sbin / "sendmail")


def test_find_sendmail_none(tmp_path: Path) -> None:
    paths = CourierPaths(sbindir=str(tmp_path), bindir=str(tmp_path))
    with pytest.raises(SendmailError, match="no sendmail program found"):
        find_sendmail(paths, candidates=[str(tmp_path / "x")])


def test_find_sendmail_default_is_courier_on_this_machine() -> None:
    if not os.access("/usr/sbin/sendmail", os.X_OK):
        pytest.skip("no /usr/sbin/sendmail here")
    assert find_sendmail() == "/usr/sbin/sendmail"


# -- the real Courier sendmail ------------------------------------------------------------


async def test_courier_sendmail_accepts_our_command_line(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Courier's sendmail with ``-n`` prints the message it would submit (nothing is
    queued): our options and ``-f ""`` parse, and the daemon's environment does not
    reach the ``From:`` header (with ``NAME`` set Courier's sendmail would put it there).
    """
    program = "/usr/sbin/sendmail"
    if not os.access(program, os.X_OK) or b"Unable to submit message." not in read(program):
        pytest.skip("Courier's sendmail is not installed")
    monkeypatch.setenv("NAME", "Leaked Name")
    client = Sendmail(program, options=("-n", "-oi"))
    message = (
        b"X-Deliver-To-Sent-Folder: site\n"
        b"Bcc: hidden@example.org\n"
        b'From: "Doe, Jane" <jane@example.com>\n'
        b"To: b@example.net\n"
        b"\n"
        b"body\n.\nmore\n"
    )
    assert await client.send("", ["alice@example.com"], message) == message
