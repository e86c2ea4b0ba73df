"""Greylisting and rate limits under the real Courier MTA (state in the SQLite store)."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from e2e_pyfilter import PyFilterDaemon
from e2e_smtp import Maildir, SmtpResult

pytestmark = pytest.mark.courier

Send = Callable[..., SmtpResult]
Boxes = Callable[[str], Maildir]

LOCAL = "mailtest@courier.test"


def test_greylisting_first_attempt_tempfails_retry_after_delay_passes(
    pyfilter: PyFilterDaemon, send: Send, maildir: Boxes
) -> None:
    delay = 2
    pyfilter.configure(["greylist"], sections={"greylist.py": {"greylist_time": delay}})
    sender = f"grey-{time.time_ns()}@example.net"  # a new triplet for every run
    first = send(sender=sender, recipients=[LOCAL])
    assert (first.stage, first.code) == ("data", 451), first
    assert first.lines[0].startswith("4.7.1 Greylisting in action, please come back in 00:00:0")
    early = send(sender=sender, recipients=[LOCAL])
    assert (early.stage, early.code) == ("data", 451), early
    time.sleep(delay + 0.5)
    retry = send(sender=sender, recipients=[LOCAL])
    assert (retry.stage, retry.code) == ("data", 250), retry
    maildir("mailtest").wait_for(retry.token)
    # a passed triplet stays passed; another sender is still greylisted
    again = send(sender=sender, recipients=[LOCAL])
    assert (again.stage, again.code) == ("data", 250), again
    other = send(sender=f"other-{time.time_ns()}@example.net", recipients=[LOCAL])
    assert (other.stage, other.code) == ("data", 451), other


def test_rate_limited_host_gets_a_temporary_failure(pyfilter: PyFilterDaemon, send: Send) -> None:
    pyfilter.configure(
        ["ratelimit"],
        sections={"ratelimit.py": {"max_connections": 2, "interval": 1}},
    )
    # stay inside one calendar minute (the original's fixed window)
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)
    results = [send(recipients=[LOCAL], source_ip="127.0.0.3") for _ in range(3)]
    assert [(r.stage, r.code) for r in results[:2]] == [("data", 250)] * 2, results
    limited = results[2]
    assert (limited.stage, limited.code) == ("data", 421), limited
    assert limited.lines == ("Too many messages from 127.0.0.3, slow down.",)
