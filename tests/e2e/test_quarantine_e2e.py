"""The quarantine under the real Courier MTA: notice, release by mail, refusal, purge.

The chain is ``clamav`` with ``action = 'quarantine'`` against the test suite's real
clamd (``tests/clamd_fixture.py``: EICAR and a signature of our own).  The release alias
is installed the way an admin does it: the file
``/etc/courier/aliasdir/.courier-quarantine-<siteid>-default`` pipes to the venv's
``pythonfilter-quarantine -release``, so Courier itself runs the command (as its mail
user, with ``DEFAULT``/``SENDER`` set) for mail to a release address.  Release requests
are mailed with Courier's ``sendmail`` as the local user: the release addresses are at
Courier's ``me`` (the host name here, which has no dot, and Courier's ESMTP server
refuses dotless domains).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from e2e_pyfilter import PyFilterDaemon
from e2e_smtp import Maildir, SmtpResult, new_token

from clamd_fixture import CUSTOM_SIGNATURE_TEXT, EICAR_NAME, clamd_server, eicar

__all__ = ["clamd_server"]  # the fixture, used by name below

pytestmark = pytest.mark.courier

Send = Callable[..., SmtpResult]
Boxes = Callable[[str], Maildir]

SITEID = "e2e"
ALIAS = Path("/etc/courier/aliasdir") / f".courier-quarantine-{SITEID}-default"
LOCAL = "mailtest@courier.test"
OTHER = "mailtest2@courier.test"
ADMIN = "mailtest3@courier.test"
MARKER = "QUARANTINE-ME"
RELEASE_RE = re.compile(rf"quarantine-{SITEID}-[a-z2-7]{{12}}-[a-z2-7]{{20}}@[A-Za-z0-9.-]+")
WAIT = 40.0


@dataclass
class Quarantine:
    """The session's quarantine: directory, release program, modules config file."""

    directory: Path
    program: Path
    modules_conf: Path
    pyfilter: PyFilterDaemon
    clamd_address: str

    def sections(self, days: float = 14) -> dict[str, dict[str, object]]:
        """The README's spelling on purpose: ``[Quarantine]`` with camelCase keys."""
        return {
            "Quarantine": {
                "siteid": SITEID,
                "dir": str(self.directory),
                "days": days,
                "notifyRecipient": True,
                "alsoNotify": ADMIN,
            },
            "clamav.py": {"clamd_address": self.clamd_address, "action": "quarantine"},
        }

    def configure(self, days: float = 14) -> None:
        self.pyfilter.configure(["clamav"], sections=self.sections(days))

    def rewrite_modules_conf(self, days: float) -> None:
        """Change the files only (the daemon keeps running with what it loaded)."""
        self.pyfilter.setup.write_config(["clamav"], self.sections(days))

    def items(self) -> set[str]:
        return {p.name[1:] for p in self.directory.iterdir() if p.name.startswith("D")}


def _courier_ids() -> tuple[int, int]:
    return pwd.getpwnam("courier").pw_uid, grp.getgrnam("courier").gr_gid


@pytest.fixture(scope="module")
def quarantine(pyfilter: PyFilterDaemon, clamd_server: Any) -> Iterator[Quarantine]:
    """A quarantine directory for the daemon and the release alias in Courier's aliasdir."""
    run_dir = pyfilter.setup.run_dir
    directory = run_dir / "quarantine"
    directory.mkdir(mode=0o750, exist_ok=True)
    os.chown(directory, *_courier_ids())
    program = pyfilter.setup.program.parent / "pythonfilter-quarantine"
    assert program.exists(), f"{program} missing: the console script is not installed"
    _install_alias(ALIAS, f"| {program} --modules-config {pyfilter.setup.modules_conf} -release")
    setup = Quarantine(
        directory, program, pyfilter.setup.modules_conf, pyfilter, clamd_server.tcp_address
    )
    try:
        yield setup
    finally:
        ALIAS.unlink(missing_ok=True)


E2E_MARK = "# installed by courier-pyfilter's e2e tests\n"


def _install_alias(path: Path, line: str) -> None:
    """Write an aliasdir file (replacing only one left behind by an earlier run)."""
    if path.exists() and not path.read_text().startswith(E2E_MARK):
        pytest.fail(f"{path} exists already; not overwriting someone's alias")
    path.write_text(f"{E2E_MARK}{line}\n")
    path.chmod(0o644)


def mail_as(user: str, sender: str, recipient: str, subject: str, body: str = "") -> None:
    """Submit a message with Courier's sendmail as local ``user`` (like a mail client)."""
    message = (
        f"From: <{sender}>\nTo: <{recipient}>\nSubject: {subject}\n\n{body or 'please'}\n"
    ).encode()
    proc = subprocess.run(
        ["/usr/sbin/sendmail", "-f", sender, recipient],
        input=message,
        user=user,
        cwd="/",
        env={"PATH": "/usr/bin:/bin:/usr/sbin"},
        capture_output=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


def wait_for_mail(
    box: Maildir, *needles: str, since: set[str] | None = None, timeout: float = WAIT
) -> bytes:
    """The first message in ``box`` containing every needle (bounded wait); with
    ``since`` (from :func:`seen`) only one that arrived after it."""
    deadline = time.monotonic() + timeout
    while True:
        for path in box.messages():
            if since is not None and path.name.split(":")[0] in since:
                continue
            try:
                content = path.read_bytes()
            except FileNotFoundError:
                continue
            if all(n.encode() in content for n in needles):
                return content
        if time.monotonic() > deadline:
            raise AssertionError(f"{box.user}: no message with {needles} within {timeout:g}s")
        time.sleep(0.1)


def seen(box: Maildir) -> set[str]:
    """The messages in ``box`` now (Maildir unique names)."""
    return {p.name.split(":")[0] for p in box.messages()}


def header(content: bytes, name: str) -> str:
    """The first header field ``name`` of a delivered message (unfolded)."""
    head = content.split(b"\n\n", 1)[0].decode("utf-8", "replace")
    match = re.search(rf"^{re.escape(name)}:[ \t]*(.*(?:\n[ \t].*)*)", head, re.M | re.I)
    assert match, f"no {name} header in:\n{head}"
    return " ".join(match.group(1).split())


def quarantine_one(send: Send, box: Maildir, *, with_eicar: bool) -> tuple[SmtpResult, bytes]:
    """Send an infected message to LOCAL (EICAR, or our own test signature); return the
    SMTP result and the notice it got."""
    body = (eicar() if with_eicar else CUSTOM_SIGNATURE_TEXT).decode() + "\n"
    token = new_token()
    result = send(recipients=[LOCAL], subject=f"{MARKER} invoice {token}", body=body, token=token)
    assert (result.stage, result.code) == ("data", 250), result
    notice = wait_for_mail(box, "Quarantine notice", result.token)
    return result, notice


def test_eicar_is_quarantined_notified_and_released_only_to_a_recipient(
    quarantine: Quarantine, send: Send, maildir: Boxes
) -> None:
    quarantine.configure()
    box, other, admin = maildir("mailtest"), maildir("mailtest2"), maildir("mailtest3")
    result, notice = quarantine_one(send, box, with_eicar=True)

    # accepted the way the original answers (050 OK -> the client sees 250 OK), not delivered
    assert result.lines == ("OK",), result
    original = f"X-E2E-Token: {result.token}"
    box.assert_absent(original, settle=1.0)

    # the notice: the original's form, null envelope sender, the message's From/Subject
    assert header(notice, "Return-Path") == "<>"
    assert re.fullmatch(r"Mail Quarantine System <postmaster@\S+>", header(notice, "From"))
    assert header(notice, "Subject") == "Quarantine notice"
    text = notice.decode("utf-8", "replace")
    assert f"The virus {EICAR_NAME} was found in the message" in text
    assert "From:     sender@example.com" in text
    assert f"Subject:  {MARKER} invoice {result.token}" in text
    assert re.search(r"kept until \w{3} \w+ \d\d, \d{4}", text)
    addresses = RELEASE_RE.findall(text)
    assert len(addresses) == 1, text
    release = addresses[0]
    item_id = release.split("-")[2]
    assert {f"D{item_id}", f"C{item_id}"} <= {p.name for p in quarantine.directory.iterdir()}

    # alsoNotify got the admin's notice, without the user's release address
    admin_notice = wait_for_mail(admin, "Quarantine notice", item_id)
    assert f"courier-pyfilter quarantine release {item_id}" in admin_notice.decode()
    assert release.encode() not in admin_notice

    # a forged release address (one character of the MAC changed) is refused
    local_part, domain = release.split("@")
    forged = f"{local_part[:-1]}{'a' if local_part[-1] != 'a' else 'b'}@{domain}"
    before = seen(box)
    mail_as("mailtest", LOCAL, forged, "release please")
    refusal = wait_for_mail(box, "Quarantine release failed", since=before)
    assert header(refusal, "Return-Path") == "<>"
    box.assert_absent(original, settle=1.0)

    # the genuine address used by someone who is not a recipient: refused too
    before = seen(other)
    mail_as("mailtest2", OTHER, release, "release please")
    wait_for_mail(other, "Quarantine release failed", since=before)
    other.assert_absent(original, settle=0.5)

    # the recipient mails its release address: the original message arrives, unchanged
    mail_as("mailtest", LOCAL, release, "release please")
    released = wait_for_mail(box, original)
    assert header(released, "Return-Path") == "<>"
    assert eicar() in released
    assert header(released, "Subject") == f"{MARKER} invoice {result.token}"
    other.assert_absent(original, settle=0.5)


def test_purge_removes_expired_items_which_can_no_longer_be_released(
    quarantine: Quarantine, send: Send, maildir: Boxes
) -> None:
    quarantine.configure()
    box = maildir("mailtest")
    result, notice = quarantine_one(send, box, with_eicar=False)
    release = RELEASE_RE.findall(notice.decode("utf-8", "replace"))[0]
    item_id = release.split("-")[2]
    assert item_id in quarantine.items()

    # -purge (the cron job, as the courier user) keeps items younger than `days`
    def purge() -> subprocess.CompletedProcess[bytes]:
        uid, gid = _courier_ids()
        return subprocess.run(
            [str(quarantine.program), "--modules-config", str(quarantine.modules_conf), "-purge"],
            user=uid,
            group=gid,
            extra_groups=[],
            cwd="/",
            env={"PATH": "/usr/bin:/bin"},
            capture_output=True,
            timeout=60,
        )

    kept = purge()
    assert kept.returncode == 0, kept.stderr
    assert item_id in quarantine.items()

    # with days = 1 s the item has expired: purged, and it can no longer be released
    quarantine.rewrite_modules_conf(days=1 / 86400)
    time.sleep(1.5)
    purged = purge()
    assert purged.returncode == 0, purged.stderr
    assert item_id not in quarantine.items()
    assert not [p for p in quarantine.directory.iterdir() if item_id in p.name]

    before = seen(box)
    mail_as("mailtest", LOCAL, release, "release please")
    wait_for_mail(box, "Quarantine release failed", since=before)
    box.assert_absent(f"X-E2E-Token: {result.token}", settle=1.0)


def _queued_with(needle: bytes) -> list[Path]:
    """Control files in Courier's queue that contain ``needle``."""
    found = []
    for path in Path("/var/lib/courier/msgs").rglob("C*"):
        try:
            if needle in path.read_bytes():
                found.append(path)
        except FileNotFoundError:
            continue
    return found


@pytest.fixture
def deferring_address() -> Iterator[str]:
    """A local address whose delivery always fails temporarily: mail to it stays queued."""
    alias = Path("/etc/courier/aliasdir/.courier-e2e-defer")
    _install_alias(alias, "| exit 75")
    try:
        yield "e2e-defer@courier.test"
    finally:
        alias.unlink(missing_ok=True)


def test_dropmsg_takes_a_queued_message_out_of_courier_queue(
    quarantine: Quarantine, send: Send, deferring_address: str
) -> None:
    quarantine.configure()
    dropmsg = quarantine.program.parent / "dropmsg"
    target = quarantine.pyfilter.setup.run_dir / "dropped"
    sender = f"spamrun-{time.time_ns()}@example.net"
    result = send(sender=sender, recipients=[deferring_address])
    assert (result.stage, result.code) == ("data", 250), result
    needle = f"s{sender}\n".encode()
    deadline = time.monotonic() + WAIT
    while not (queued := _queued_with(needle)):
        assert time.monotonic() < deadline, "the message never showed up in the queue"
        time.sleep(0.1)
    (control,) = queued
    data = control.with_name("D" + control.name[1:])

    listed = subprocess.run(
        [str(dropmsg), "-n", "-s", sender.upper(), "--dir", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listed.returncode == 0, listed.stderr
    assert f"would move {control}" in listed.stdout
    assert control.exists() and not target.exists()

    moved = subprocess.run(
        [str(dropmsg), "-s", sender, "--dir", str(target)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert moved.returncode == 0, moved.stderr
    assert "1 message(s) moved" in moved.stdout
    assert not control.exists() and not data.exists() and _queued_with(needle) == []
    assert {p.name for p in target.iterdir()} == {control.name, data.name}
    assert needle in (target / control.name).read_bytes()
    assert f"token {result.token}".encode() in (target / data.name).read_bytes()
