"""Send test mail over SMTP and look for it in local Maildirs.

:func:`send_mail` speaks SMTP with :mod:`smtplib` and reports the reply that decided the
transaction (the end-of-DATA reply when the message got that far), with every line of a
multi-line reply.  :class:`Maildir` waits (bounded) for a message carrying a token.
"""

from __future__ import annotations

import email.utils
import pwd
import smtplib
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Maildir", "SmtpResult", "make_message", "new_token", "send_mail"]


@dataclass(frozen=True, slots=True)
class SmtpResult:
    """The reply that ended an SMTP transaction.

    ``stage`` is where it came from: ``mail``, ``rcpt``, ``data-command`` or ``data``
    (the reply after the message body, i.e. the filters' verdict).  ``lines`` are the
    reply's text lines without the code (one per line of a multi-line reply).
    """

    code: int
    lines: tuple[str, ...]
    stage: str
    token: str = ""
    rcpt_replies: tuple[tuple[str, int, str], ...] = field(default=())

    @property
    def text(self) -> str:
        """All reply lines joined with newlines."""
        return "\n".join(self.lines)

    @property
    def delivered_to_queue(self) -> bool:
        """True when the server accepted the message body (a 2xx after DATA)."""
        return self.stage == "data" and 200 <= self.code < 300

    def __str__(self) -> str:
        return f"{self.stage}: " + " | ".join(f"{self.code} {line}" for line in self.lines)


def new_token() -> str:
    """A unique marker to find a message again (in a Maildir or in logs)."""
    return f"e2e-{uuid.uuid4().hex[:16]}"


def make_message(
    token: str,
    *,
    sender: str,
    recipients: Sequence[str],
    subject: str | None = None,
    body: str = "Hello from the courier-pyfilter e2e tests.\n",
    headers: Sequence[tuple[str, str]] = (),
) -> bytes:
    """A small RFC 5322 message carrying ``token`` in a header and in the body."""
    lines = [
        f"From: <{sender}>",
        f"To: {', '.join(f'<{r}>' for r in recipients)}",
        f"Subject: {subject if subject is not None else token}",
        f"Date: {email.utils.formatdate(localtime=True)}",
        f"Message-ID: <{token}@e2e.example>",
        f"X-E2E-Token: {token}",
        *(f"{name}: {value}" for name, value in headers),
        "",
        body.rstrip("\n"),
        f"token {token}",
        "",
    ]
    return "\r\n".join(lines).encode()


def send_mail(
    port: int,
    *,
    recipients: Sequence[str] = ("mailtest@courier.test",),
    sender: str = "sender@example.com",
    subject: str | None = None,
    body: str = "Hello from the courier-pyfilter e2e tests.\n",
    headers: Sequence[tuple[str, str]] = (),
    auth: tuple[str, str] | None = None,
    source_ip: str | None = None,
    helo: str = "e2e-client.example",
    token: str | None = None,
    timeout: float = 30.0,
    host: str = "127.0.0.1",
) -> SmtpResult:
    """Send one message and return the reply that ended the transaction.

    ``auth`` = (user, password) authenticates first (AUTH PLAIN/LOGIN); ``source_ip``
    binds the client side, e.g. ``127.0.0.2`` to come from an address without relay
    rights.  Recipients refused at RCPT are recorded in ``rcpt_replies``; if none is
    accepted the RCPT reply is the result.
    """
    token = token or new_token()
    data = make_message(
        token, sender=sender, recipients=recipients, subject=subject, body=body, headers=headers
    )
    source = (source_ip, 0) if source_ip else None
    with smtplib.SMTP(
        host, port, local_hostname=helo, timeout=timeout, source_address=source
    ) as smtp:
        smtp.ehlo()
        if auth is not None:
            smtp.login(*auth)
        code, msg = smtp.mail(sender)
        if code != 250:
            return SmtpResult(code, _lines(msg), "mail", token)
        replies = []
        accepted = 0
        last: tuple[int, bytes] = (0, b"")
        for rcpt in recipients:
            code, msg = smtp.rcpt(rcpt)
            replies.append((rcpt, code, msg.decode("utf-8", "replace")))
            last = (code, msg)
            if 200 <= code < 300:
                accepted += 1
        if accepted == 0:
            return SmtpResult(last[0], _lines(last[1]), "rcpt", token, tuple(replies))
        try:
            code, msg = smtp.data(data)
        except smtplib.SMTPDataError as exc:
            return SmtpResult(
                exc.smtp_code, _lines(exc.smtp_error), "data-command", token, tuple(replies)
            )
        return SmtpResult(code, _lines(msg), "data", token, tuple(replies))


def _lines(msg: bytes | str) -> tuple[str, ...]:
    text = msg.decode("utf-8", "replace") if isinstance(msg, bytes) else msg
    return tuple(text.split("\n"))


class Maildir:
    """A local user's ``~/Maildir``."""

    def __init__(self, user: str) -> None:
        self.user = user
        self.path = Path(pwd.getpwnam(user).pw_dir) / "Maildir"

    def messages(self) -> list[Path]:
        """All message files in new/ and cur/."""
        found: list[Path] = []
        for sub in ("new", "cur"):
            directory = self.path / sub
            if directory.is_dir():
                found.extend(p for p in directory.iterdir() if p.is_file())
        return found

    def find(self, token: str) -> list[bytes]:
        """The contents of the messages that contain ``token``."""
        needle = token.encode()
        found = []
        for path in self.messages():
            try:
                content = path.read_bytes()
            except FileNotFoundError:  # moved from new/ to cur/ meanwhile
                continue
            if needle in content:
                found.append(content)
        return found

    def wait_for(self, token: str, *, count: int = 1, timeout: float = 15.0) -> list[bytes]:
        """Wait until ``count`` messages with ``token`` arrived; return them.

        Raises ``AssertionError`` after ``timeout`` seconds.
        """
        deadline = time.monotonic() + timeout
        while True:
            found = self.find(token)
            if len(found) >= count:
                return found
            if time.monotonic() >= deadline:
                raise AssertionError(
                    f"{self.user}: {len(found)} of {count} message(s) with {token} delivered "
                    f"to {self.path} within {timeout:g}s"
                )
            time.sleep(0.05)

    def assert_absent(self, token: str, *, settle: float = 0.3) -> None:
        """Assert that no message with ``token`` shows up within ``settle`` seconds."""
        deadline = time.monotonic() + settle
        while True:
            found = self.find(token)
            if found:
                raise AssertionError(
                    f"{self.user}: a message with {token} was delivered but should not have "
                    f"been:\n{found[0][:2000].decode('utf-8', 'replace')}"
                )
            if time.monotonic() >= deadline:
                return
            time.sleep(0.05)
