"""``reject_subject``: refuse messages whose Subject matches a configured pattern.

A class-based filter.  Settings (section ``[reject_subject.py]``):

``patterns``
    Regular expressions searched in the Subject header, case-insensitively.
``reply``
    Reply text of the rejection (the code is always 554).
"""

from __future__ import annotations

import re

from courier_pyfilter.api import Context, Decision, Filter, Message


class RejectSubject(Filter):
    """Rejects messages by Subject."""

    defaults = {
        "patterns": [r"\bviagra\b", r"^\s*\[SPAM\]"],
        "reply": "5.7.1 Message refused by content policy",
    }
    patterns: list[re.Pattern[str]]

    async def start(self) -> None:
        # Compile once per chain (the settings do not change until a reload builds a new one).
        self.patterns = [re.compile(p, re.IGNORECASE) for p in self.settings["patterns"]]

    async def check(self, message: Message, ctx: Context) -> Decision:
        subject = (await message.headers()).get("Subject", "")
        for pattern in self.patterns:
            if pattern.search(str(subject)):
                ctx.log.info("rejecting %s: subject matches %r", message.msgid, pattern.pattern)
                return Decision.reject(ctx.settings["reply"])
        return Decision.continue_()
