"""``sentfolder``: send authenticated senders a copy of what they sent.

For a message whose sender authenticated (a non-empty ``i`` record), a copy is piped
to Courier's ``sendmail`` with the null envelope sender ``<>``, addressed to the auth
user (``@<me>`` is appended to a user name without ``@``).  The copy is the message as
it is at this point of the chain, preceded by::

    X-Deliver-To-Sent-Folder: <siteid>
    Bcc: <recipients not named in To, Cc, Resent-To or Resent-Cc>

(the ``Bcc:`` line only when there are such recipients; each is the original address
the client gave, ``R`` record, when known).  A delivery rule (maildrop, Sieve) files
messages with that header into the user's Sent folder.

Settings (section ``[sentfolder.py]``):

``siteid`` (default ``'69f7dc20-7aef-420b-a8d2-85ea229f97ba'``)
    The header's value; choose your own, and keep it secret: anyone who knows it can
    file mail into your users' Sent folders.
``sendmail`` (default ``None``)
    The sendmail program; ``None`` finds it (``/usr/sbin/sendmail``, ...).
``sendmail_timeout`` (default ``30``)
    Seconds sendmail may take; keep it below the filter's ``timeout``.

The message itself is never changed, and a failed copy never blocks it: the failure
is logged and the chain continues.  No copy is made of a message that already carries
``X-Deliver-To-Sent-Folder: <siteid>``, so a copy can never be copied again (a mail
loop if it came back through this filter authenticated).  In dry-run mode the copy is
only logged.  The filter never decides anything.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from email.utils import getaddresses
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision
from ..edit import EditError, format_header
from ..sendmail import DEFAULT_TIMEOUT, Sendmail, SendmailError, find_sendmail

if TYPE_CHECKING:
    from email.message import EmailMessage

HEADER = "X-Deliver-To-Sent-Folder"
"""The header that marks the copy."""

DEFAULT_SITEID = "69f7dc20-7aef-420b-a8d2-85ea229f97ba"
"""The original's default ``siteid``."""

ADDRESS_HEADERS = ("to", "cc", "resent-to", "resent-cc")
"""Recipients named in these headers are not repeated in the copy's ``Bcc:``."""


def listed_addresses(headers: EmailMessage) -> set[str]:
    """The lower-cased addresses in the To, Cc, Resent-To and Resent-Cc headers."""
    found: set[str] = set()
    for name in ADDRESS_HEADERS:
        for value in headers.get_all(name) or ():
            addresses = getattr(value, "addresses", None)
            if addresses is not None:
                found.update(str(a.addr_spec).lower() for a in addresses if a.addr_spec)
            else:
                found.update(addr.lower() for _, addr in getaddresses([str(value)]) if addr)
    return found


def bcc_addresses(recipient_addresses: Iterable[str], listed: set[str]) -> list[str]:
    """The recipients not in ``listed``, in order, without repeats (ignoring case)."""
    result: list[str] = []
    seen: set[str] = set()
    for address in recipient_addresses:
        key = address.lower()
        if key in listed or key in seen:
            continue
        seen.add(key)
        result.append(address)
    return result


def fold_address_list(addresses: Sequence[str], start: int, width: int = 78) -> str:
    """Join addresses with ``", "``, breaking lines before an address that would pass
    ``width`` (``start`` is the length of ``Name: `` on the first line)."""
    out = ""
    column = start
    for i, address in enumerate(addresses):
        piece = address if i == 0 else " " + address
        if i and column + len(piece) + 1 > width:
            out += ",\n"
            column = 0
        elif i:
            out += ","
            column += 1
        out += piece
        column += len(piece)
    return out


def copy_header(siteid: str, bcc: Sequence[str]) -> bytes:
    """The lines put before the message in the copy (LF line ends, as Courier's files)."""
    head = format_header(HEADER, siteid)
    if bcc:
        head += format_header("Bcc", fold_address_list(bcc, len("Bcc: ")))
    return head


def has_marker(headers: EmailMessage, siteid: str) -> bool:
    """Whether the message already carries ``X-Deliver-To-Sent-Folder: <siteid>``."""
    return any(str(value).strip() == siteid for value in headers.get_all(HEADER) or ())


def _check_settings(settings: Mapping[str, Any]) -> None:
    siteid = settings["siteid"]
    if (
        not isinstance(siteid, str)
        or not siteid.strip()
        or siteid != siteid.strip()
        or any(ord(c) < 32 or ord(c) == 127 for c in siteid)
    ):
        raise ValueError(
            "[sentfolder.py] siteid must be a non-empty string without control characters "
            f"or surrounding spaces, got {siteid!r}"
        )
    program = settings["sendmail"]
    if program is not None and (not isinstance(program, str) or not program):
        raise ValueError(f"[sentfolder.py] sendmail must be a file name or None, got {program!r}")
    timeout = settings["sendmail_timeout"]
    if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
        raise ValueError(
            f"[sentfolder.py] sendmail_timeout must be a positive number, got {timeout!r}"
        )


class SentFolder(Filter):
    """Sends a copy of authenticated mail back to its sender; always continues."""

    defaults = {"siteid": DEFAULT_SITEID, "sendmail": None, "sendmail_timeout": DEFAULT_TIMEOUT}

    async def start(self) -> None:
        _check_settings(self.settings)
        if self.settings["sendmail"] is None:
            try:
                find_sendmail(self.ctx.services.courier.paths)
            except SendmailError as exc:
                self.ctx.log.warning("sentfolder filter: %s; copies will fail", exc)

    def client(self) -> Sendmail:
        """The sendmail client for one copy (the program is looked up when not set)."""
        program = self.settings["sendmail"] or find_sendmail(self.ctx.services.courier.paths)
        return Sendmail(program, timeout=self.settings["sendmail_timeout"])

    async def check(self, message: Message, ctx: Context) -> Decision:
        user = message.auth_user
        if not user:
            return CONTINUE
        siteid: str = ctx.settings["siteid"]
        headers = await message.headers()
        if has_marker(headers, siteid):
            ctx.log.info(
                "sentfolder filter: message %s already carries %s for this site; no copy made",
                message.msgid,
                HEADER,
            )
            return CONTINUE
        address = user if "@" in user else f"{user}@{ctx.services.courier.me()}"
        bcc = bcc_addresses(
            (r.original_address for r in message.recipients), listed_addresses(headers)
        )
        try:
            head = copy_header(siteid, bcc)
        except EditError as exc:
            ctx.log.error("sentfolder filter: no copy of %s: %s", message.msgid, exc)
            return CONTINUE
        if ctx.dry_run or message.dry_run:
            ctx.log.info("sentfolder filter: dry run: would send a copy to %s", address)
            return CONTINUE
        try:
            await self.client().send("", [address], [head, Path(message.data_path)])
        except (SendmailError, ValueError) as exc:
            ctx.log.error(
                "sentfolder filter: cannot send a copy of %s to %s: %s",
                message.msgid,
                address,
                exc,
            )
            return CONTINUE
        ctx.log.debug("sentfolder filter: sent a copy of %s to %s", message.msgid, address)
        return CONTINUE
