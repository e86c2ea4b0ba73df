"""Shared service clients: created once, closed once, failed opens not retried per message."""

from __future__ import annotations

import asyncio

import pytest

from courier_pyfilter import services as services_module
from courier_pyfilter.services import Services
from courier_pyfilter.settings import Settings


def make_services() -> Services:
    return Services(Settings(), lambda name: {})


async def test_concurrent_first_calls_create_one_client() -> None:
    services = make_services()
    made: list[int] = []
    closed: list[int] = []

    async def factory() -> int:
        await asyncio.sleep(0.01)
        made.append(1)
        return len(made)

    async def close(client: int) -> None:
        closed.append(client)

    results = await asyncio.gather(*(services.get("x", factory, close) for _ in range(10)))
    assert results == [1] * 10
    assert made == [1]
    await services.close()
    assert closed == [1]


async def test_a_failed_open_is_not_retried_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    services = make_services()
    attempts: list[int] = []

    async def factory() -> str:
        attempts.append(1)
        if len(attempts) < 3:
            raise ConnectionRefusedError("backend down")
        return "client"

    with pytest.raises(ConnectionRefusedError):
        await services.get("db", factory)
    with pytest.raises(ConnectionRefusedError, match="backend down"):
        await services.get("db", factory)  # within the window: the same error, no attempt
    assert len(attempts) == 1
    monkeypatch.setattr(services_module, "RETRY_FAILED_AFTER", 0.0)
    with pytest.raises(ConnectionRefusedError):
        await services.get("db", factory)
    assert len(attempts) == 2
    assert await services.get("db", factory) == "client"
    assert await services.get("db", factory) == "client"
    assert len(attempts) == 3
