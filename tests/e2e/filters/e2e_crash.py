"""e2e test filter: raises for messages whose Subject contains ``crash-me``.

Other messages pass (``CONTINUE``), so one daemon can show that it survives a crash.
"""

from __future__ import annotations

from courier_pyfilter.api import CONTINUE, Context, Decision, Filter, Message


class E2ECrashError(RuntimeError):
    """The deliberate failure."""


class E2ECrash(Filter):
    """Raises on ``crash-me``; continues otherwise."""

    async def check(self, message: Message, ctx: Context) -> Decision:
        """Raise or continue, depending on the Subject."""
        headers = await message.headers()
        if "crash-me" in str(headers.get("Subject", "")):
            raise E2ECrashError("e2e_crash: deliberate failure")
        return CONTINUE
