"""The policy filters under the real Courier MTA (whitelists, attachments, message edits).

Mail goes in over ESMTP from 127.0.0.1 (a relay client in Debian's default smtpaccess)
or 127.0.0.2 (not one); ``e2e_reject`` at the end of a chain shows whether a whitelist
skipped the rest of it.
"""

from __future__ import annotations

import base64
from collections.abc import Callable
from pathlib import Path

import pytest
from e2e_pyfilter import PyFilterDaemon
from e2e_smtp import Maildir, SmtpResult

pytestmark = pytest.mark.courier

Send = Callable[..., SmtpResult]
Boxes = Callable[[str], Maildir]

AUTH = ("mailtest", "test123")
LOCAL = "mailtest@courier.test"
OUTSIDE = "127.0.0.2"  # no RELAYCLIENT in smtpaccess


def test_relay_client_is_whitelisted(pyfilter: PyFilterDaemon, send: Send, maildir: Boxes) -> None:
    pyfilter.configure(["whitelist_relayclients", "e2e_reject"])
    relayed = send(recipients=[LOCAL])
    assert (relayed.stage, relayed.code) == ("data", 250), relayed
    maildir("mailtest").wait_for(relayed.token)
    outside = send(recipients=[LOCAL], source_ip=OUTSIDE)
    assert (outside.stage, outside.code) == ("data", 550), outside


def test_authenticated_sender_is_whitelisted(pyfilter: PyFilterDaemon, send: Send) -> None:
    pyfilter.configure(["whitelist_auth", "e2e_reject"])
    authenticated = send(recipients=[LOCAL], auth=AUTH, source_ip=OUTSIDE)
    assert (authenticated.stage, authenticated.code) == ("data", 250), authenticated
    anonymous = send(recipients=[LOCAL], source_ip=OUTSIDE)
    assert (anonymous.stage, anonymous.code) == ("data", 550), anonymous


def test_auto_whitelist_learns_from_authenticated_mail(
    pyfilter: PyFilterDaemon, send: Send, maildir: Boxes
) -> None:
    pyfilter.configure(["auto_whitelist", "whitelist_auth", "e2e_reject"])
    correspondent = "friend@example.org"
    # before: a stranger's mail reaches e2e_reject
    before = send(sender=correspondent, recipients=[LOCAL], source_ip=OUTSIDE)
    assert (before.stage, before.code) == ("data", 550), before
    # the local user writes to the correspondent (authenticated: recorded, then whitelisted)
    outgoing = send(sender=LOCAL, recipients=[correspondent], auth=AUTH)
    assert (outgoing.stage, outgoing.code) == ("data", 250), outgoing
    # the reply is whitelisted by auto_whitelist, not by whitelist_auth
    reply = send(sender=correspondent, recipients=[LOCAL], source_ip=OUTSIDE)
    assert (reply.stage, reply.code) == ("data", 250), reply
    maildir("mailtest").wait_for(reply.token)
    # somebody else is still refused
    other = send(sender="other@example.org", recipients=[LOCAL], source_ip=OUTSIDE)
    assert (other.stage, other.code) == ("data", 550), other


def _with_attachment(filename: str) -> tuple[list[tuple[str, str]], str]:
    boundary = "e2e-boundary-1"
    payload = base64.b64encode(b"MZ not really a program\n").decode()
    body = "\r\n".join(
        [
            "This is a multi-part message in MIME format.",
            f"--{boundary}",
            "Content-Type: text/plain; charset=us-ascii",
            "",
            "See the attachment.",
            f"--{boundary}",
            f'Content-Type: application/octet-stream; name="{filename}"',
            "Content-Transfer-Encoding: base64",
            f'Content-Disposition: attachment; filename="{filename}"',
            "",
            payload,
            f"--{boundary}--",
            "",
        ]
    )
    headers = [
        ("MIME-Version", "1.0"),
        ("Content-Type", f'multipart/mixed; boundary="{boundary}"'),
    ]
    return headers, body


def test_forbidden_attachment_is_rejected(
    pyfilter: PyFilterDaemon, send: Send, maildir: Boxes
) -> None:
    pyfilter.configure(["attachments"])
    headers, body = _with_attachment("invoice.exe")
    blocked = send(recipients=[LOCAL], headers=headers, body=body)
    assert (blocked.stage, blocked.code) == ("data", 554), blocked
    assert blocked.lines == ("The extension of the attached file is blacklisted",)
    headers, body = _with_attachment("invoice.pdf")
    allowed = send(recipients=[LOCAL], headers=headers, body=body)
    assert (allowed.stage, allowed.code) == ("data", 250), allowed
    maildir("mailtest").wait_for(allowed.token)


def test_noduplicates_delivers_once(pyfilter: PyFilterDaemon, send: Send, maildir: Boxes) -> None:
    pyfilter.configure(["noduplicates"])
    result = send(recipients=[LOCAL, LOCAL])
    assert (result.stage, result.code) == ("data", 250), result
    box = maildir("mailtest")
    box.wait_for(result.token)
    # give a second copy time to arrive if one were coming
    follow_up = send(recipients=[LOCAL])
    box.wait_for(follow_up.token)
    assert len(box.find(result.token)) == 1


def test_add_signature_is_in_the_delivered_message(
    pyfilter: PyFilterDaemon, send: Send, maildir: Boxes
) -> None:
    signature = Path(pyfilter.setup.run_dir) / "signature.txt"
    signature.write_text("-- \nSent through courier-pyfilter e2e\n")
    signature.chmod(0o644)
    # the AUTH user has no '@': the original looks it up under the key ''
    pyfilter.configure(
        ["add_signature", "whitelist_auth"],
        sections={"add_signature.py": {"domains": {"": str(signature)}}},
    )
    result = send(sender=LOCAL, recipients=["mailtest2@courier.test"], auth=AUTH)
    assert (result.stage, result.code) == ("data", 250), result
    delivered = maildir("mailtest2").wait_for(result.token)[0]
    assert b"Sent through courier-pyfilter e2e" in delivered
    assert b"multipart/mixed" in delivered
