"""An answer written with no transaction open commits on its own: what it tells (wake-ups,
metrics, end listeners) goes out then, whatever the rest of its unit of work does."""

from __future__ import annotations

import asyncio

import pytest

from app.bus.notify import process_key
from app.models.enums import RequestStatus
from tests.bus.conftest import Bus, one_leased


async def test_an_answer_that_committed_tells_even_if_its_unit_fails_later(bus: Bus) -> None:
    leased = await one_leased(bus)
    process_id, request_id = leased.process_id, leased.request_id
    state = bus.app.state.xbus
    woken = asyncio.create_task(state.notifier.wait(process_key(process_id), 3))
    await asyncio.sleep(0.1)  # the waiter is registered

    async def answer_then_fail() -> None:
        async with state.db.working() as work:
            await state.director.report(
                work, request_id, RequestStatus.SUCCESS, [], {}, account_id=None
            )
            raise RuntimeError("what the unit did next failed")

    with pytest.raises(RuntimeError):
        await answer_then_fail()
    assert await asyncio.wait_for(woken, 5)  # woken by the answer, not timed out
    r = await leased.account.http.get(f"/api/v1/processes/{process_id}")
    assert r.json()["status"] == "done"
