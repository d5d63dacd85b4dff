"""A restart of the bus loses nothing: a retry schedule, or an attempt cut short by the
stop, goes on in the next app on the same database, with the same webhook-id."""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from tests.bus.conftest import Bus
from tests.conftest import ADMIN_KEY
from tests.webhooks.conftest import Receiver, Reply, emit, finished, webhook_chain


@contextlib.asynccontextmanager
async def running_bus(settings: Settings) -> AsyncIterator[Bus]:
    """An app with its lifespan running, and a Bus driving it; stopping it is the restart."""
    app: FastAPI = create_app(settings)
    async with app.router.lifespan_context(app):
        admin = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app),
            base_url="http://xbus.test",
            headers={"Authorization": f"Bearer {ADMIN_KEY}"},
        )
        bus = Bus(app, admin)
        try:
            yield bus
        finally:
            await bus.close()
            await admin.aclose()


async def test_restart_in_the_middle_of_a_retry_schedule(
    settings: Settings, clean_db: None, receiver: Receiver
) -> None:
    receiver.script("/hook", [Reply(503), Reply(200)])
    async with running_bus(settings) as bus:
        acct = await bus.account()
        em, _ = await webhook_chain(
            bus,
            acct,
            receiver.url("/hook"),
            secret="whsec_" + "A" * 43 + "=",
            backoff_initial="1.5",
            backoff_jitter="0",
        )
        emission = await emit(acct, em["name"])
        [first] = await receiver.wait_for("/hook")
        key = acct.key
    # The bus is down while the retry is due; a new one takes over.
    async with running_bus(settings) as bus:
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=bus.app),
            base_url="http://xbus.test",
            headers={"Authorization": f"Bearer {key}"},
        )
        async with http:
            first, second = await receiver.wait_for("/hook", 2)
            process = await finished(http, emission["process_id"])
    assert process["status"] == "done"
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert json.loads(second.body)["attempt"] == 2
    assert second.at - first.at >= 1.4


async def test_attempt_cut_short_by_a_stop_is_sent_again(
    settings: Settings, clean_db: None, receiver: Receiver
) -> None:
    receiver.script("/hook", [Reply(hang=True), Reply(200)])
    async with running_bus(settings) as bus:
        acct = await bus.account()
        em, _ = await webhook_chain(
            bus, acct, receiver.url("/hook"), secret="whsec_" + "B" * 43 + "=", timeout="2"
        )
        emission = await emit(acct, em["name"])
        [first] = await receiver.wait_for("/hook")
        key = acct.key
    # Stopped mid-send (the attempt is cancelled after the shutdown grace): its lease (timeout
    # + margin) runs out, the supervisor hands the request back, the next app sends it again.
    async with running_bus(settings) as bus:
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=bus.app),
            base_url="http://xbus.test",
            headers={"Authorization": f"Bearer {key}"},
        )
        async with http:
            first, second = await receiver.wait_for("/hook", 2, timeout=15)
            process = await finished(http, emission["process_id"])
    assert process["status"] == "done"
    assert second.headers["webhook-id"] == first.headers["webhook-id"]
    assert json.loads(second.body)["attempt"] == 2
