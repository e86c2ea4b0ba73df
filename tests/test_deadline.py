"""The timer wheel behind every per-request, per-message and per-filter timeout."""

from __future__ import annotations

import asyncio
import logging

import pytest

from courier_pyfilter.deadline import TICK, Deadline, TimerWheel, wheel_for


class Probe:
    """Records when the wheel expired it."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.fired_at: list[float] = []

    def expire(self) -> None:
        self.fired_at.append(self.loop.time())


async def test_fires_never_early_and_at_most_a_tick_late() -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    probes = []
    start = loop.time()
    for delay in (0.01, 0.07, 0.12, 0.2):
        probe = Probe(loop)
        wheel.add(probe, delay)
        probes.append((delay, probe))
    await asyncio.sleep(0.2 + 3 * TICK)
    for delay, probe in probes:
        assert len(probe.fired_at) == 1, delay
        late = probe.fired_at[0] - (start + delay)
        assert late >= -0.002, (delay, late)  # the loop clock has ms resolution on uvloop
        assert late <= TICK + 0.03, (delay, late)
    assert len(wheel) == 0


async def test_removed_items_do_not_fire() -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    kept, removed = Probe(loop), Probe(loop)
    wheel.add(kept, 0.05)
    key = wheel.add(removed, 0.05)
    wheel.remove(removed, key)
    wheel.remove(removed, key)  # twice is harmless
    await asyncio.sleep(0.05 + 2 * TICK)
    assert len(kept.fired_at) == 1
    assert removed.fired_at == []


async def test_a_later_item_does_not_delay_an_earlier_one() -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    late, early = Probe(loop), Probe(loop)
    wheel.add(late, 5.0)
    start = loop.time()
    wheel.add(early, 0.05)
    await asyncio.sleep(0.05 + 2 * TICK)
    assert early.fired_at and early.fired_at[0] - start < 0.05 + 2 * TICK
    assert late.fired_at == []
    assert len(wheel) == 1


async def test_emptied_buckets_cost_no_memory_under_steady_load() -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    for _ in range(20):
        for _ in range(500):  # add and remove at once, as a fast message does
            probe = Probe(loop)
            wheel.remove(probe, wheel.add(probe, 300.0))
        await asyncio.sleep(TICK)
    assert len(wheel) == 0
    assert len(wheel._buckets) == 0
    assert len(wheel._heap) <= 21  # one entry per tick used, never one per item


async def test_one_failing_callback_does_not_stop_the_others(
    caplog: pytest.LogCaptureFixture,
) -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)

    class Broken:
        def expire(self) -> None:
            raise RuntimeError("boom")

    good = Probe(loop)
    wheel.add(Broken(), 0.02)
    wheel.add(good, 0.02)
    with caplog.at_level(logging.ERROR, logger="courier_pyfilter.deadline"):
        await asyncio.sleep(0.02 + 2 * TICK)
    assert len(good.fired_at) == 1
    assert "timeout callback failed" in caplog.text


async def test_items_added_by_a_callback_are_scheduled() -> None:
    loop = asyncio.get_running_loop()
    wheel = TimerWheel(loop)
    second = Probe(loop)

    class Chained:
        def expire(self) -> None:
            wheel.add(second, 0.03)

    wheel.add(Chained(), 0.02)
    await asyncio.sleep(0.05 + 3 * TICK)
    assert len(second.fired_at) == 1


async def test_deadline_cancels_its_task_and_knows_it() -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    deadline = Deadline(loop, task, 0.03)
    with pytest.raises(asyncio.CancelledError):
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            assert deadline.expired()
            raise
        finally:
            deadline.cancel()


async def test_deadline_is_not_blamed_for_someone_elses_cancel() -> None:
    loop = asyncio.get_running_loop()
    outcome: list[bool] = []

    async def victim() -> None:
        deadline = Deadline(loop, asyncio.current_task(), 5.0)  # type: ignore[arg-type]
        try:
            await asyncio.sleep(5)
        except asyncio.CancelledError:
            outcome.append(deadline.expired())
            raise
        finally:
            deadline.cancel()

    task = loop.create_task(victim())
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert outcome == [False]


async def test_cancelled_deadline_never_fires() -> None:
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    deadline = Deadline(loop, task, 0.02)
    deadline.cancel()
    await asyncio.sleep(0.02 + 2 * TICK)  # would raise CancelledError if it fired
    assert not deadline.expired()


def test_each_loop_has_its_own_wheel() -> None:
    wheels = []

    async def grab() -> None:
        loop = asyncio.get_running_loop()
        wheels.append(wheel_for(loop))
        assert wheel_for(loop) is wheels[-1]
        probe = Probe(loop)
        wheel_for(loop).add(probe, 0.01)
        await asyncio.sleep(0.01 + 2 * TICK)
        assert len(probe.fired_at) == 1

    asyncio.run(grab())
    asyncio.run(grab())
    assert wheels[0] is not wheels[1]
