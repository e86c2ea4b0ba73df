"""``debug``: log what the filter process sees of each message, then continue.

Logs the process identity (PID, working directory, user and group ids, supplementary
groups), the data file path and the ``stat`` of the data file and every control file, as
the original's ``debug`` module does.  Useful to check permissions under courierfilter.
Unlike the original, a missing file is logged instead of raising.
"""

from __future__ import annotations

import os

from ..api import Context, Filter, Message
from ..decision import CONTINUE, Decision


def _stat(path: str) -> str:
    try:
        return repr(os.stat(path))
    except OSError as exc:
        return f"cannot stat: {exc.strerror}"


class Debug(Filter):
    """Logs process and file details; always continues."""

    async def check(self, message: Message, ctx: Context) -> Decision:
        log = ctx.log
        log.info("Debug filter: PID %d, CWD %s", os.getpid(), os.getcwd())
        log.info(
            "Debug filter: EUID %d, EGID %d, UID %d, GID %d, groups %s",
            os.geteuid(),
            os.getegid(),
            os.getuid(),
            os.getgid(),
            os.getgroups(),
        )
        log.info("Debug filter: data file %s: %s", message.data_path, _stat(message.data_path))
        for path in message.control_paths:
            log.info("Debug filter: control file %s: %s", path, _stat(path))
        return CONTINUE
