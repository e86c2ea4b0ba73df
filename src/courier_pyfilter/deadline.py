"""A cheap per-task deadline (the hot path's replacement for ``asyncio.timeout``).

``asyncio.timeout`` costs a state machine and a rescheduling step per use; the server
arms two deadlines per message, so this keeps only what is needed: one timer handle
that cancels the task, and a check that tells our own cancellation from anyone else's.
"""

from __future__ import annotations

import asyncio

__all__ = ["Deadline"]


class Deadline:
    """Cancel ``task`` after ``delay`` seconds unless :meth:`cancel` is called first.

    Use::

        deadline = Deadline(loop, task, 5.0)
        try:
            await work()
        except asyncio.CancelledError:
            if deadline.expired():
                ...  # the deadline fired: treat as a timeout
            else:
                raise
        finally:
            deadline.cancel()
    """

    __slots__ = ("_fired", "_handle", "_task")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[object], delay: float
    ) -> None:
        self._task = task
        self._fired = False
        self._handle = loop.call_later(delay, self._fire)

    def _fire(self) -> None:
        self._fired = True
        self._task.cancel()

    def cancel(self) -> None:
        """Disarm the timer (call in ``finally``)."""
        self._handle.cancel()

    def expired(self) -> bool:
        """After a ``CancelledError``: True when this deadline caused it alone.

        Withdraws our cancellation request; if someone else also asked to cancel the
        task (shutdown, an outer deadline), the answer is False so the caller re-raises.
        """
        if not self._fired:
            return False
        return self._task.uncancel() == 0
