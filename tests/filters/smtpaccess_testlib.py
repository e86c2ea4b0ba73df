"""What the smtpaccess whitelist tests share: a temporary Courier sysconfdir with the
access table as text sources, compiled by Courier's own ``makedat -cidr`` when asked.

Fixtures (import them into the test module): ``etc`` (the sysconfdir, with ``me``) and
``messages`` (a :class:`~courier_pyfilter.testing.MessageFactory`).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from courier_pyfilter.api import Filter
from courier_pyfilter.decision import CONTINUE, Verdict
from courier_pyfilter.testing import MessageFactory, make_context

MAKEDAT = Path("/usr/lib/courier/makedat")


def write_sources(etc: Path, text: str) -> None:
    """The access table as ``etc/smtpaccess/default``."""
    (etc / "smtpaccess").mkdir(exist_ok=True)
    (etc / "smtpaccess" / "default").write_text(text)


def makesmtpaccess(etc: Path) -> Path:
    """Compile ``etc/smtpaccess`` into ``etc/smtpaccess.dat`` as makesmtpaccess does."""
    if not os.access(MAKEDAT, os.X_OK):
        reason = f"Courier's makedat ({MAKEDAT}) is not installed (apt-get install courier-mta)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason)
        pytest.skip(reason)
    dat = etc / "smtpaccess.dat"
    subprocess.run(
        [str(MAKEDAT), f"-src={etc / 'smtpaccess'}", f"-file={dat}", f"-tmp={dat}.tmp", "-cidr"],
        check=True,
        timeout=30,
    )
    return dat


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    """A Courier sysconfdir (``me`` only; the test writes its access table)."""
    path = tmp_path / "etc"
    path.mkdir()
    (path / "me").write_text("mx.example.org\n")
    return path


@pytest.fixture
def messages(tmp_path: Path) -> MessageFactory:
    """Messages from someone@example.net to user@example.org."""
    path = tmp_path / "msgs"
    path.mkdir()
    return MessageFactory(path, sender="someone@example.net", recipients=["user@example.org"])


async def decide(
    filter_class: type[Filter], name: str, etc: Path, messages: MessageFactory, **kwargs: object
) -> str | None:
    """The filter's reply for one message (None: it continued; anything else must accept)."""
    ctx = make_context(name, sysconfdir=str(etc))
    decision = await filter_class(ctx).check(messages(**kwargs), ctx)
    if decision is CONTINUE:
        return None
    assert decision.verdict is Verdict.ACCEPT
    return decision.reply()
