"""Cheap timeouts for the hot path: a timer wheel instead of one loop timer per use.

Every message arms three timeouts (receiving the request, the whole chain, each filter),
and nearly all of them are disarmed a millisecond later.  ``asyncio.timeout`` or
``loop.call_later`` cost a loop timer (and on uvloop a libuv handle) each; here a
timeout is one small object in a set keyed by its expiry tick, and a single loop timer
per event loop wakes up for the earliest tick that still has members.  Timeouts fire at
most :data:`TICK` seconds late and never early.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from typing import Protocol

__all__ = ["TICK", "Deadline", "Expiring", "TimerWheel", "wheel_for"]

TICK = 0.05
"""Resolution of the wheel, in seconds."""

log = logging.getLogger("courier_pyfilter.deadline")


class Expiring(Protocol):
    """What the wheel holds: anything with an ``expire()`` method."""

    def expire(self) -> None:
        """Called once when the timeout passes (unless removed before)."""


class TimerWheel:
    """Timeouts of one event loop, bucketed by tick (see the module docstring)."""

    __slots__ = ("_armed", "_buckets", "_handle", "_heap", "_loop", "_scheduled")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._buckets: dict[int, set[Expiring]] = {}
        self._heap: list[int] = []  # ticks that have a bucket (or had one), earliest first
        self._scheduled: set[int] = set()  # the ticks in _heap, to keep it duplicate-free
        self._armed: int | None = None
        self._handle: asyncio.TimerHandle | None = None

    def add(self, item: Expiring, delay: float) -> int:
        """Call ``item.expire()`` after ``delay`` seconds; returns the key for :meth:`remove`."""
        tick = -int(-(self._loop.time() + delay) // TICK)  # rounded up: never early
        bucket = self._buckets.get(tick)
        if bucket is None:
            bucket = self._buckets[tick] = set()
            if tick not in self._scheduled:
                self._scheduled.add(tick)
                heapq.heappush(self._heap, tick)
            if self._armed is None or tick < self._armed:
                self._arm(tick)
        bucket.add(item)
        return tick

    def remove(self, item: Expiring, tick: int) -> None:
        """Forget ``item`` (added with key ``tick``); harmless if it already expired."""
        bucket = self._buckets.get(tick)
        if bucket is not None:
            bucket.discard(item)
            if not bucket:
                del self._buckets[tick]

    def __len__(self) -> int:
        return sum(len(b) for b in self._buckets.values())

    def _arm(self, tick: int) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed = tick
        self._handle = self._loop.call_at(tick * TICK, self._fire)

    def _fire(self) -> None:
        armed = self._armed if self._armed is not None else 0
        self._handle = None
        self._armed = None
        due = max(armed, int(self._loop.time() // TICK))
        heap, buckets, scheduled = self._heap, self._buckets, self._scheduled
        while heap and heap[0] <= due:
            tick = heapq.heappop(heap)
            scheduled.discard(tick)
            for item in buckets.pop(tick, ()):
                try:
                    item.expire()
                except Exception:  # one broken callback must not stop the others
                    log.exception("timeout callback failed")
        while heap and heap[0] not in buckets:  # emptied buckets: no need to wake for them
            scheduled.discard(heapq.heappop(heap))
        if heap and self._armed is None:
            self._arm(heap[0])


_last: tuple[asyncio.AbstractEventLoop, TimerWheel] | None = None
_wheels: dict[int, tuple[asyncio.AbstractEventLoop, TimerWheel]] = {}


def wheel_for(loop: asyncio.AbstractEventLoop) -> TimerWheel:
    """The timer wheel of ``loop`` (created on first use, dropped when the loop closes)."""
    global _last
    last = _last
    if last is not None and last[0] is loop:
        return last[1]
    entry = _wheels.get(id(loop))
    if entry is None or entry[0] is not loop:
        for key, (old, _w) in list(_wheels.items()):
            if old.is_closed():
                del _wheels[key]
        entry = (loop, TimerWheel(loop))
        _wheels[id(loop)] = entry
    _last = entry
    return entry[1]


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

    __slots__ = ("_fired", "_task", "_tick", "_wheel")

    def __init__(
        self, loop: asyncio.AbstractEventLoop, task: asyncio.Task[object], delay: float
    ) -> None:
        self._task: asyncio.Task[object] | None = task
        self._fired = False
        self._wheel = wheel = wheel_for(loop)
        self._tick = wheel.add(self, delay)

    def expire(self) -> None:
        """The wheel's callback: cancel the task."""
        task = self._task
        if task is not None:
            self._fired = True
            task.cancel()

    def cancel(self) -> None:
        """Disarm the timer (call in ``finally``)."""
        self._wheel.remove(self, self._tick)

    def expired(self) -> bool:
        """After a ``CancelledError``: True when this deadline caused it alone.

        Withdraws our cancellation request; if someone else also asked to cancel the
        task (shutdown, an outer deadline), the answer is False so the caller re-raises.
        """
        if not self._fired or self._task is None:
            return False
        return self._task.uncancel() == 0
