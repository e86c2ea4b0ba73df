"""The network filters under the real Courier MTA: clamd, spamd, DNS whitelists, SPF.

clamd, spamd and the DNS server are the test suite's own real servers (``tests/
clamd_fixture.py``, ``tests/spamd_fixture.py``, ``tests/dnsserver.py``); the daemon,
running as Courier's user, reaches them over TCP on 127.0.0.1.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from e2e_pyfilter import PyFilterDaemon
from e2e_smtp import Maildir, SmtpResult

from clamd_fixture import EICAR_NAME, clamd_server, eicar
from spamd_fixture import GTUBE, spamd_server

pytest_plugins = ["dns_fixture"]  # dns_server, dns
pytestmark = pytest.mark.courier
__all__ = ["clamd_server", "spamd_server"]  # fixtures used by name below

Send = Callable[..., SmtpResult]
Boxes = Callable[[str], Maildir]

LOCAL = "mailtest@courier.test"


def test_eicar_is_rejected(
    pyfilter: PyFilterDaemon, send: Send, maildir: Boxes, clamd_server: Any
) -> None:
    pyfilter.configure(
        ["clamav"], sections={"clamav.py": {"clamd_address": clamd_server.tcp_address}}
    )
    virus = send(recipients=[LOCAL], body="Here it is:\n" + eicar().decode() + "\n")
    assert (virus.stage, virus.code) == ("data", 554), virus
    assert virus.lines == (f"Virus found - Signature is {EICAR_NAME}",)
    clean = send(recipients=[LOCAL], body="Nothing to see here.\n")
    assert (clean.stage, clean.code) == ("data", 250), clean
    maildir("mailtest").wait_for(clean.token)


def test_gtube_is_rejected(
    pyfilter: PyFilterDaemon, send: Send, maildir: Boxes, spamd_server: Any
) -> None:
    pyfilter.configure(
        ["spamassassin"],
        sections={"spamassassin.py": {"spamd_address": spamd_server.tcp_address}},
    )
    spam = send(recipients=[LOCAL], body="Buy now!\n" + GTUBE.decode() + "\n")
    assert (spam.stage, spam.code) == ("data", 554), spam
    assert spam.lines[0].startswith("Mail rejected - spam detected: Yes, score="), spam
    assert "GTUBE" in spam.lines[0]
    ham = send(recipients=[LOCAL], body="Lunch tomorrow at noon?\n")
    assert (ham.stage, ham.code) == ("data", 250), ham
    delivered = maildir("mailtest").wait_for(ham.token)[0]
    assert b"X-Spam-Status: No" in delivered  # spamd's headers were added


def test_dnswl_listed_client_is_whitelisted(
    pyfilter: PyFilterDaemon, send: Send, maildir: Boxes, dns: Any
) -> None:
    dns.add("1.0.0.127.wl.test. 0 IN A 127.0.0.2")  # the client 127.0.0.1 is listed
    pyfilter.configure(
        ["whitelist_dnswl", "e2e_reject"],
        sections={
            "dns": {"nameservers": [dns.nameserver], "timeout": 2},
            "whitelist_dnswl.py": {"dnswl_zone": ["wl.test"]},
        },
    )
    listed = send(recipients=[LOCAL])
    assert (listed.stage, listed.code) == ("data", 250), listed
    maildir("mailtest").wait_for(listed.token)
    unlisted = send(recipients=[LOCAL], source_ip="127.0.0.3")
    assert (unlisted.stage, unlisted.code) == ("data", 550), unlisted


def test_spf_fail_is_rejected_when_configured(
    pyfilter: PyFilterDaemon, send: Send, maildir: Boxes, dns: Any
) -> None:
    pyfilter.configure(
        ["spfcheck"], sections={"dns": {"nameservers": [dns.nameserver], "timeout": 2}}
    )
    failing = send(sender="someone@fail.spf.test", recipients=[LOCAL])
    assert (failing.stage, failing.code) == ("data", 517), failing
    assert failing.lines == ("SPF returns deny",)
    neutral = send(sender="someone@neutral.spf.test", recipients=[LOCAL])
    assert (neutral.stage, neutral.code) == ("data", 250), neutral
    maildir("mailtest").wait_for(neutral.token)
