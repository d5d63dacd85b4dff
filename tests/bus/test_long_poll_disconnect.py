"""A long-poll whose client has gone away leases nothing: the request goes to the next poll
at once, as its first attempt, instead of waiting out a lease held by a closed connection."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from tests.bus.conftest import ENVELOPE, Bus, chain
from tests.bus.test_flow import poll
from tests.cli.conftest import server

__all__ = ["server"]


async def test_a_poll_whose_client_left_leases_nothing(bus: Bus, server: str) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))

    # A real HTTP client (uvicorn on 127.0.0.1) long-polls, then gives up and closes.
    headers = {"Authorization": f"Bearer {acct.key}"}
    async with httpx.AsyncClient(base_url=server, headers=headers) as gone:
        with pytest.raises(httpx.ReadTimeout):
            await gone.get(
                f"/api/v1/actors/{co['name']}/requests", params={"wait": 30}, timeout=0.5
            )
    await asyncio.sleep(0.2)

    emission = (await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)).json()
    # The abandoned poll wakes first, sees its client gone and leases nothing.
    job = await poll(acct.http, co["name"], wait=10)
    assert job is not None, "the request went to the poll whose client had left"
    assert job["process_id"] == emission["process_id"]
    assert job["attempt"] == 1
