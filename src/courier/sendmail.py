"""``courier.sendmail`` for filters written for courier-pythonfilter 3.0.6 (synchronous API).

:func:`sendmail` hands a message to Courier's ``sendmail`` program.

Differences from the original, all deliberate: the program is the module global
``sendmail_path`` when set, else the first existing of ``/usr/sbin/sendmail`` and
``<bindir>/sendmail`` (the original only tried ``<bindir>/sendmail``, which does not exist on
Debian); a null sender ``''`` is passed as ``-f ''`` (the original dropped it and the
message went out from the invoking user); the exit status is checked and a failure or
a run longer than ``TIMEOUT`` seconds raises :class:`SendmailError`.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterable, Sequence

from . import config

__all__ = ["TIMEOUT", "SendmailError", "find_sendmail", "sendmail", "sendmail_path"]

sendmail_path: str | None = None
"""The program to run; ``None``: see :func:`find_sendmail`."""

TIMEOUT: float = 60.0
"""Seconds sendmail may take before it is killed."""

_CANDIDATES = ("/usr/sbin/sendmail",)


class SendmailError(OSError):
    """sendmail could not be run, failed, or took too long."""


def find_sendmail() -> str:
    """The sendmail program to run (see the module docstring)."""
    if sendmail_path:
        return sendmail_path
    candidates = (*_CANDIDATES, os.path.join(config.bindir, "sendmail"))
    for candidate in candidates:
        if os.access(candidate, os.X_OK):
            return candidate
    raise SendmailError(f"no sendmail program found (tried {', '.join(candidates)})")


def _as_bytes(line: bytes | str) -> bytes:
    return line.encode("utf-8") if isinstance(line, str) else bytes(line)


def sendmail(
    from_addr: str | None,
    to: Sequence[str] | str,
    lines: Iterable[bytes | str],
    *,
    timeout: float | None = None,
) -> None:
    """Send the message ``lines`` (bytes, or text encoded as UTF-8) to ``to``.

    ``from_addr`` is the envelope sender: ``None`` lets sendmail choose, ``''`` is the
    null sender.  Raises :class:`SendmailError` when sendmail fails or times out and
    ``ValueError`` for a recipient that would be read as an option.
    """
    recipients = [to] if isinstance(to, str) else list(to)
    if not recipients:
        raise ValueError("sendmail needs at least one recipient")
    for rcpt in recipients:
        if not rcpt or rcpt.startswith("-") or "\n" in rcpt:
            raise ValueError(f"invalid recipient {rcpt!r}")
    program = find_sendmail()
    argv = [program]
    if from_addr is not None:
        argv += ["-f", from_addr]
    argv += recipients
    data = b"".join(_as_bytes(line) for line in lines)
    limit = TIMEOUT if timeout is None else timeout
    try:
        result = subprocess.run(
            argv,
            input=data,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            timeout=limit,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise SendmailError(f"{program} did not finish within {limit:g} s") from exc
    except OSError as exc:
        raise SendmailError(f"cannot run {program}: {exc}") from exc
    if result.returncode != 0:
        detail = result.stderr.decode("utf-8", "replace").strip()
        raise SendmailError(
            f"{program} exited with status {result.returncode}" + (f": {detail}" if detail else "")
        )
