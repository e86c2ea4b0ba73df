"""``quota``: refuse mail for now while a local recipient's mailbox is over its quota.

For each pending recipient in order, the address is split at the first ``@``.  A local
domain (Courier's ``locals``) means the local part is looked up in authdaemond (service
``smtp``), a hosted domain (``hosteddomains``) the whole address; other recipients are
skipped.  The account's Maildir++ ``maildirsize`` file is read: its first line is the
quota (comma-separated items, ``<n>S`` bytes and ``<n>C`` messages, 0 or missing meaning
no limit), every further line a ``<bytes> <messages>`` pair that is summed.  The mailbox
is over quota when a non-zero limit is reached (used >= limit); the first such recipient
gives, as in courier-pythonfilter::

    421 User "<name>" is over quota

where ``<name>`` is the name looked up (the local part for a local domain, the whole
address for a hosted one).  The size of the incoming message is not considered.

Not over quota (the message continues): an account authdaemond does not know (logged as
``quota filter: authdaemon failed to look up "<name>"``), a missing, unreadable or
malformed ``maildirsize``, a file that is not a regular file or is a symbolic link, and
a recipient address without ``@``.

Where the file is: ``<MAILDIR>/maildirsize`` when authdaemond gives an absolute
``MAILDIR``; a relative ``MAILDIR`` counts from ``HOME`` (as Courier's deliveries do);
without ``MAILDIR`` (or with an empty one) ``<HOME>/Maildir/maildirsize``.  Nothing else
is ever opened.  The file is read in a worker thread.

Deliberate difference: when authdaemond cannot be asked (down, timeout, garbage) the
message is refused for now with :data:`AUTHDAEMON_FAILURE` (the original let it pass).

This filter has no settings of its own; the authdaemond client reads
``[authdaemon.py]``, see :mod:`courier_pyfilter.authdaemon`.
"""

from __future__ import annotations

import asyncio
import io
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass

from ..api import Context, Filter, Message
from ..authdaemon import AuthdaemonClient, AuthdaemonError, authdaemon_client, is_valid_name
from ..decision import CONTINUE, Decision

__all__ = [
    "AUTHDAEMON_FAILURE",
    "MAX_MAILDIRSIZE",
    "Quota",
    "QuotaUsage",
    "maildirsize_path",
    "parse_maildirsize",
    "read_maildirsize",
]

AUTHDAEMON_FAILURE = Decision.tempfail(
    "4.4.3 Cannot check the recipient's mailbox quota now, try again later", code="451"
)
"""The answer when authdaemond fails: ``451 4.4.3 Cannot check the recipient's mailbox
quota now, try again later``."""
MAX_MAILDIRSIZE = 1024 * 1024
"""A larger ``maildirsize`` is not read (Maildir++ rewrites it past 5120 bytes)."""


@dataclass(frozen=True, slots=True)
class QuotaUsage:
    """A parsed ``maildirsize``: the limits (0 = none) and the sums of the usage lines."""

    size_limit: int
    count_limit: int
    size: int
    count: int

    @property
    def over_quota(self) -> bool:
        """True when a non-zero limit is reached or exceeded."""
        return bool(
            (self.size_limit and self.size >= self.size_limit)
            or (self.count_limit and self.count >= self.count_limit)
        )


def parse_maildirsize(data: bytes) -> QuotaUsage:
    """Parse the bytes of a ``maildirsize`` file; ``ValueError`` when malformed.

    Mirrors the original: UTF-8 text with universal newlines; the first line's items
    are stripped and must end in ``S`` or ``C`` (a later item of a kind wins); every
    further line must be two integers.  An empty first line is malformed.
    """
    text = io.TextIOWrapper(io.BytesIO(data), encoding="utf-8", errors="strict", newline=None)
    try:
        size_limit = count_limit = 0
        for item in text.readline().split(","):
            item = item.strip()
            if item.endswith("S"):
                size_limit = int(item[:-1])
            elif item.endswith("C"):
                count_limit = int(item[:-1])
            else:
                raise ValueError(f"quota item {item!r} is neither <n>S nor <n>C")
        size = count = 0
        for line in iter(text.readline, ""):
            fields = line.split()
            if len(fields) != 2:
                raise ValueError(f"usage line {line!r} is not '<bytes> <messages>'")
            size += int(fields[0])
            count += int(fields[1])
    except UnicodeDecodeError as exc:
        raise ValueError(f"not UTF-8: {exc}") from None
    return QuotaUsage(size_limit, count_limit, size, count)


def maildirsize_path(info: Mapping[str, str]) -> str | None:
    """Where the account's ``maildirsize`` is, from authdaemond's fields; None if unknown.

    ``MAILDIR`` when absolute, ``HOME/MAILDIR`` when relative, ``HOME/Maildir`` when
    absent or empty.  Only absolute results without NUL characters are returned.
    """
    home = info.get("HOME", "")
    maildir = info.get("MAILDIR", "")
    if not maildir:
        maildir = os.path.join(home, "Maildir") if home else ""
    elif not os.path.isabs(maildir):
        maildir = os.path.join(home, maildir) if home else ""
    if not maildir or not os.path.isabs(maildir) or "\0" in maildir:
        return None
    return os.path.join(maildir, "maildirsize")


def read_maildirsize(path: str) -> bytes:
    """The content of ``path`` (blocking; ``OSError`` when it cannot be used).

    Refuses symbolic links, anything but a regular file (a FIFO would block) and files
    over :data:`MAX_MAILDIRSIZE` bytes.
    """
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
    fd = os.open(path, flags)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise OSError(f"{path} is not a regular file")
        chunks = []
        total = 0
        while True:
            chunk = os.read(fd, 65536)
            if not chunk:
                break
            total += len(chunk)
            if total > MAX_MAILDIRSIZE:
                raise OSError(f"{path} is larger than {MAX_MAILDIRSIZE} bytes")
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _usage(path: str) -> QuotaUsage | str:
    """Usage of the ``maildirsize`` at ``path``, or why it cannot be used (blocking)."""
    try:
        return parse_maildirsize(read_maildirsize(path))
    except (OSError, ValueError) as exc:
        return str(exc)


class Quota(Filter):
    """Temporarily refuses mail for local recipients whose mailbox is full."""

    client: AuthdaemonClient

    async def start(self) -> None:
        # Bad [authdaemon.py] settings stop the configuration from loading.
        self.client = await authdaemon_client(self.ctx)

    async def check(self, message: Message, ctx: Context) -> Decision:
        courier = ctx.services.courier
        names: list[str] = []
        for address in message.addresses:
            local, at, domain = address.partition("@")
            if not at:
                continue
            if courier.is_local(domain):
                names.append(local)
            elif courier.is_hosteddomain(domain):
                names.append(address)
        # Look the distinct names up concurrently (the client limits the connections),
        # then answer for the first recipient in order, as the original did.
        unique = list(dict.fromkeys(names))
        results = await asyncio.gather(
            *(self._over_quota(name, ctx) for name in unique), return_exceptions=True
        )
        outcome = dict(zip(unique, results, strict=True))
        for name in names:
            result = outcome[name]
            if isinstance(result, AuthdaemonError):
                ctx.log.error("cannot look up recipient %s: %s", name, result)
                return AUTHDAEMON_FAILURE
            if isinstance(result, BaseException):
                raise result
            if result:
                return Decision.tempfail(f'User "{name}" is over quota', code="421")
        return CONTINUE

    async def _over_quota(self, name: str, ctx: Context) -> bool:
        info = await self.client.user_info("smtp", name) if is_valid_name(name) else None
        if info is None:
            ctx.log.warning('quota filter: authdaemon failed to look up "%s"', name)
            return False
        path = maildirsize_path(info)
        if path is None:
            ctx.log.warning("quota filter: no usable HOME or MAILDIR for %s", name)
            return False
        usage = await asyncio.to_thread(_usage, path)
        if isinstance(usage, str):
            ctx.log.debug("quota filter: %s not checked: %s", name, usage)
            return False
        return usage.over_quota
