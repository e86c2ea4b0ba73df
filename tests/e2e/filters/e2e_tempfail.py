"""e2e test filter (module-level function): refuse every message temporarily."""

from __future__ import annotations

from courier_pyfilter.api import Context, Decision, Message


async def check(message: Message, ctx: Context) -> Decision:
    """Answer 451 to every message."""
    return Decision.tempfail("4.3.0 e2e_tempfail says try again later")
