"""courier-pyfilter under the real Courier MTA: verdicts as the SMTP client sees them.

Each test (re)starts the daemon through courierfilter with its own chain, sends mail over
ESMTP and checks the reply at the end of DATA, the local Maildirs and the syslog lines.
The test filters live in ``tests/e2e/filters`` (on the daemon's ``filter_path``).
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from contextlib import AbstractContextManager

import pytest
from e2e_courier import CourierMTA, alive
from e2e_pyfilter import PyFilterDaemon
from e2e_smtp import Maildir, SmtpResult
from e2e_syslog import SyslogSink

pytestmark = pytest.mark.courier

Send = Callable[..., SmtpResult]
Boxes = Callable[[str], Maildir]

QUEUE_ID_REPLY = re.compile(r"^Ok\. [0-9A-F]{16}\.[0-9A-F]{8,16}$")


def test_debug_chain_delivers_and_logs_to_syslog(
    pyfilter: PyFilterDaemon, send: Send, maildir: Boxes, syslog: SyslogSink
) -> None:
    pid = pyfilter.configure(["debug"])
    socket = pyfilter.socket()
    assert socket is not None
    assert oct(socket.stat().st_mode & 0o777) == oct(0o660)
    mark = syslog.mark()
    result = send()
    assert (result.stage, result.code) == ("data", 250), result
    assert QUEUE_ID_REPLY.match(result.lines[0]), result
    message = maildir("mailtest").wait_for(result.token)[0]
    assert f"X-E2E-Token: {result.token}".encode() in message
    # the daemon's stderr reaches syslog through courierfilter's courierlogger
    syslog.wait_for(rf"Debug filter: PID {pid}\b", ident="courierfilter", since=mark)
    syslog.wait_for(
        r"Debug filter: data file /var/lib/courier/tmp/", ident="courierfilter", since=mark
    )


def test_accepted_message_is_logged_with_its_queue_id(
    pyfilter: PyFilterDaemon, send: Send, syslog: SyslogSink
) -> None:
    # the original's accounting line names the message by its M record; the client's
    # "250 Ok. TIME.PID" shows the last two parts of it
    pyfilter.configure(["debug"])
    mark = syslog.mark()
    result = send()
    assert (result.stage, result.code) == ("data", 250), result
    queue_id = result.lines[0].removeprefix("Ok. ")
    syslog.wait_for(
        rf"^CPU TIME ACCOUNTING: [0-9A-F]{{16}}\.{re.escape(queue_id)} processed with "
        r"[0-9.]+ seconds: \(debug\([0-9.]+\)\)$",
        ident="courierfilter",
        since=mark,
    )
    problems = [
        line
        for line in syslog.lines(mark, ident="courierfilter")
        if "could not" in line.text or "Traceback" in line.text
    ]
    assert not problems, "\n".join(map(str, problems))


def test_reject_single_line(
    pyfilter: PyFilterDaemon, send: Send, maildir: Boxes, syslog: SyslogSink
) -> None:
    pyfilter.configure(["e2e_reject"])
    mark = syslog.mark()
    result = send(sender="bad.sender@example.com")
    assert (result.stage, result.code) == ("data", 550), result
    assert result.lines == ("5.7.1 rejected by e2e_reject",)
    maildir("mailtest").assert_absent(result.token)
    # the original's per-recipient reject line
    syslog.wait_for(
        r"^pythonfilter e2e_reject reject,from=<bad\.sender@example\.com>,"
        r"addr=<mailtest@courier\.test>: 550 5\.7\.1 rejected by e2e_reject$",
        ident="courierfilter",
        since=mark,
    )


def test_reject_multi_line_reaches_client_line_by_line(
    pyfilter: PyFilterDaemon, send: Send, maildir: Boxes
) -> None:
    lines = ["5.7.1 first line", "second line", "5.7.1 third and last line"]
    pyfilter.configure(["e2e_reject"], sections={"e2e_reject.py": {"code": "554", "lines": lines}})
    result = send()
    assert (result.stage, result.code) == ("data", 554), result
    assert result.lines == tuple(lines)
    maildir("mailtest").assert_absent(result.token)


def test_tempfail_gives_451(pyfilter: PyFilterDaemon, send: Send, maildir: Boxes) -> None:
    pyfilter.configure(["e2e_tempfail"])
    result = send()
    assert (result.stage, result.code) == ("data", 451), result
    assert result.lines == ("4.3.0 e2e_tempfail says try again later",)
    maildir("mailtest").assert_absent(result.token)


def test_crashing_filter_tempfails_and_daemon_survives(
    pyfilter: PyFilterDaemon, send: Send, maildir: Boxes, syslog: SyslogSink
) -> None:
    pid = pyfilter.configure(["e2e_crash", "debug"])
    mark = syslog.mark()
    crashed = send(subject="please crash-me now")
    assert crashed.stage == "data", crashed
    assert crashed.code == 451, crashed
    syslog.wait_for(
        r"e2e_crash.*(E2ECrashError|deliberate failure)|"
        r"(E2ECrashError|deliberate failure).*e2e_crash",
        ident="courierfilter",
        since=mark,
    )
    maildir("mailtest").assert_absent(crashed.token, settle=0.3)
    # same process, still serving: the next message goes through the rest of the chain
    assert alive(pid)
    assert pyfilter.pid() == pid
    ok = send(subject="an ordinary message")
    assert (ok.stage, ok.code) == ("data", 250), ok
    maildir("mailtest").wait_for(ok.token)
    assert pyfilter.pid() == pid


def test_legacy_do_filter_module(pyfilter: PyFilterDaemon, send: Send, maildir: Boxes) -> None:
    pyfilter.configure(["e2e_legacy"])
    result = send()
    assert (result.stage, result.code) == ("data", 550), result
    assert result.lines == ("legacy says no",)
    maildir("mailtest").assert_absent(result.token)


def test_050_accept_shows_filter_text_and_skips_rest_of_chain(
    pyfilter: PyFilterDaemon, send: Send, maildir: Boxes
) -> None:
    # e2e_reject after the whitelist must not run: the 050 ends the chain
    pyfilter.configure(["e2e_whitelist", "e2e_reject"])
    result = send()
    assert (result.stage, result.code) == ("data", 250), result
    assert result.lines == ("OK",)  # the filter's own text, not Courier's "Ok. <id>"
    maildir("mailtest").wait_for(result.token)


def test_filterctl_stop_ends_the_daemon(
    pyfilter: PyFilterDaemon, courier: CourierMTA, send: Send, maildir: Boxes
) -> None:
    pid = pyfilter.configure(["debug"])
    started = time.monotonic()
    pyfilter.stop(timeout=10)
    assert pyfilter.socket() is None
    deadline = started + 10
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert not alive(pid), f"daemon {pid} still running 10s after filterctl stop"
    assert not courier.filter_active("pythonfilter")
    # with the filter gone (socket removed) Courier delivers unfiltered, not 432
    result = send()
    assert (result.stage, result.code) == ("data", 250), result
    maildir("mailtest").wait_for(result.token)


def test_several_control_files_all_recipients_delivered(
    pyfilter: PyFilterDaemon,
    send: Send,
    maildir: Boxes,
    syslog: SyslogSink,
    batchsize: Callable[[int], AbstractContextManager[None]],
) -> None:
    pyfilter.configure(["e2e_rcptcount", "debug"])
    users = ["mailtest", "mailtest2", "mailtest3"]
    recipients = [f"{user}@courier.test" for user in users]
    mark = syslog.mark()
    with batchsize(2):
        result = send(recipients=recipients)
    assert (result.stage, result.code) == ("data", 250), result
    expected = ",".join(sorted(recipients))
    syslog.wait_for(
        rf"e2e_rcptcount: {result.token} files=2 recipients=3 {re.escape(expected)}",
        ident="courierfilter",
        since=mark,
    )
    for user in users:
        maildir(user).wait_for(result.token)
