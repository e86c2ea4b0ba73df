"""Self-test of the e2e harness with a tiny stdlib courierfilter (no courier-pyfilter code).

When these pass but the daemon's e2e tests fail, the problem is in the daemon, not in
Courier, the harness or the machine.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_courier import CourierMTA
from e2e_pyfilter import FILTER_NAME
from e2e_smtp import Maildir, SmtpResult
from e2e_syslog import SyslogSink

pytestmark = pytest.mark.courier

PROBE_NAME = "e2eprobe"

# A complete courierfilter in the standard library only.  The reply for each message is
# re-read from REPLY_FILE, so one running instance serves all tests of this module.
PROBE_SOURCE = r"""#!/usr/bin/python3
import os, selectors, socket, sys

NAME = "e2eprobe"
REPLY_FILE = @REPLY_FILE@
SOCK_DIR = "/var/lib/courier/allfilters"
path = os.path.join(SOCK_DIR, NAME)
hidden = os.path.join(SOCK_DIR, "." + NAME)
for stale in (path, hidden):
    try:
        os.unlink(stale)
    except FileNotFoundError:
        pass
server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
server.bind(hidden)
os.rename(hidden, path)
os.chmod(path, 0o660)
server.listen(16)
os.close(3)
print(NAME, "ready", flush=True)
sel = selectors.DefaultSelector()
sel.register(0, selectors.EVENT_READ, "stdin")
sel.register(server, selectors.EVENT_READ, "server")
while True:
    for key, _ in sel.select():
        if key.data == "stdin":
            if not os.read(0, 4096):
                os.unlink(path)
                print(NAME, "exiting on stdin EOF", flush=True)
                sys.exit(0)
            continue
        conn, _ = server.accept()
        with conn, conn.makefile("rb") as request:
            paths = []
            while True:
                line = request.readline()
                if not line or line == b"\n":
                    break
                paths.append(line.decode().strip())
            with open(REPLY_FILE) as fh:
                reply = fh.read().strip("\n")
            print(NAME, "request", "controls=%d" % (len(paths) - 1), "reply=%r" % reply,
                  flush=True)
            conn.sendall(reply.encode() + b"\n")
"""


@pytest.fixture(scope="module")
def probe(courier: CourierMTA, e2e_lock: Path) -> Iterator[Path]:
    """Install the probe filter (and deactivate pythonfilter meanwhile); yield its reply file."""
    workdir = e2e_lock / "probe"
    workdir.mkdir(exist_ok=True)
    workdir.chmod(0o755)
    reply_file = workdir / "reply"
    reply_file.write_text("200 Ok\n")
    reply_file.chmod(0o644)
    program = workdir / PROBE_NAME
    program.write_text(PROBE_SOURCE.replace("@REPLY_FILE@", repr(str(reply_file))))
    program.chmod(0o755)
    courier.stop_filter(FILTER_NAME)
    courier.install_filter(PROBE_NAME, program)
    yield reply_file
    courier.stop_filter(PROBE_NAME, remove=True)


def test_probe_reject_reaches_client_verbatim(
    probe: Path, send: Callable[..., SmtpResult], maildir: Callable[[str], Maildir]
) -> None:
    probe.write_text("550-5.7.1 first line\n550 5.7.1 probe says no\n")
    result = send()
    assert (result.stage, result.code) == ("data", 550)
    assert result.lines == ("5.7.1 first line", "5.7.1 probe says no")
    maildir("mailtest").assert_absent(result.token, settle=0.3)


def test_probe_accept_delivers_and_logs(
    probe: Path,
    send: Callable[..., SmtpResult],
    maildir: Callable[[str], Maildir],
    syslog: SyslogSink,
) -> None:
    probe.write_text("200 Ok\n")
    mark = syslog.mark()
    result = send()
    assert result.delivered_to_queue, result
    assert result.lines[0].startswith("Ok.")
    maildir("mailtest").wait_for(result.token)
    syslog.wait_for(
        r"e2eprobe request controls=1 reply='200 Ok'", ident="courierfilter", since=mark
    )
    syslog.wait_for(r"success: Message delivered", ident="courierlocal", since=mark)


def test_send_helper_auth_and_non_relay_client(
    probe: Path, send: Callable[..., SmtpResult], maildir: Callable[[str], Maildir]
) -> None:
    probe.write_text("200 Ok\n")
    authed = send(auth=("mailtest", "test123"))
    assert authed.delivered_to_queue, authed
    # 127.0.0.2 has no RELAYCLIENT: local domains are accepted, others refused at RCPT
    inbound = send(source_ip="127.0.0.2")
    assert inbound.delivered_to_queue, inbound
    relay = send(source_ip="127.0.0.2", recipients=("someone@elsewhere.example",))
    assert (relay.stage, relay.code) == ("rcpt", 513), relay
    box = maildir("mailtest")
    box.wait_for(authed.token)
    box.wait_for(inbound.token)
