"""e2e test filter (class-based): reject every message permanently.

Settings (``[e2e_reject.py]``): ``code`` (default ``"550"``) and ``lines``, the reply text
lines (several lines give a multi-line reply).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

from courier_pyfilter.api import Context, Decision, Filter, Message


class E2EReject(Filter):
    """Rejects with the configured code and lines."""

    defaults: ClassVar[Mapping[str, Any]] = {
        "code": "550",
        "lines": ["5.7.1 rejected by e2e_reject"],
    }

    async def check(self, message: Message, ctx: Context) -> Decision:
        """Reject, whatever the message."""
        return Decision.reject(tuple(ctx.settings["lines"]), code=ctx.settings["code"])
