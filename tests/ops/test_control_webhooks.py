"""Pause and cancel hold webhook delivery too: a paused process sends nothing, a resumed one
sends at once, a canceled one never sends."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import httpx
import pytest

from tests.bus.conftest import Bus, chain
from tests.ops.conftest import Wired, emit, poll, report
from tests.webhooks.conftest import FAST, Receiver, serve


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return dict(FAST)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    recv = Receiver()
    async with serve(recv) as base_url:
        recv.base_url = base_url
        try:
            yield recv
        finally:
            recv.release.set()


async def _polled_worker_then_webhook(bus: Bus, receiver: Receiver) -> Wired:
    """emitter -> worker (polled by the test) -> consumer (a webhook to the receiver)."""
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    wk = await bus.actor(acct, "worker")
    hook = await bus.actor(acct, "consumer", config={"http.webhook.url": receiver.url("/in")})
    graph = chain(em["name"], ("worker", wk["name"]), ("consumer", hook["name"]))
    return Wired(bus, acct, em, wk, hook, await bus.pipeline(graph))


async def _a_later_process_is_delivered(w: Wired, receiver: Receiver) -> str:
    """Another process through the same worker and webhook consumer, not paused: once its
    webhook arrives, the dispatcher has had its chance at every request due before it."""
    pid = (await emit(w))["process_id"]
    job = await poll(w.acct.http, w.wk["name"])
    assert job is not None
    assert job["process_id"] == pid
    out = {"events": [{"type": "x", "items": ["y"]}]}
    r = await report(w.acct.http, job["request_id"], status="success", outputs={"default": out})
    assert r.status_code == 200
    await receiver.wait_for("/in", 1, timeout=10)
    return str(pid)


def _delivered(receiver: Receiver) -> list[str]:
    return [json.loads(got.body)["process_id"] for got in receiver.at("/in")]


async def test_paused_process_sends_no_webhook_until_resumed(
    bus: Bus, admin: httpx.AsyncClient, receiver: Receiver, db: asyncpg.Connection
) -> None:
    w = await _polled_worker_then_webhook(bus, receiver)
    pid = (await emit(w))["process_id"]
    job = await poll(w.acct.http, w.wk["name"])
    assert job is not None
    assert (await admin.post(f"/api/v1/processes/{pid}/pause")).status_code == 200
    out = {"events": [{"type": "x", "items": ["y"]}]}
    r = await report(w.acct.http, job["request_id"], status="success", outputs={"default": out})
    assert r.status_code == 200

    later = await _a_later_process_is_delivered(w, receiver)
    assert _delivered(receiver) == [later]
    status = await db.fetchval(
        "SELECT status FROM requests WHERE channel = 'webhook' AND process_id = $1::uuid", pid
    )
    assert status == "pending"

    assert (await admin.post(f"/api/v1/processes/{pid}/resume")).status_code == 200
    await receiver.wait_for("/in", 2, timeout=10)
    assert _delivered(receiver) == [later, pid]
    r = await admin.get(f"/api/v1/processes/{pid}", params={"wait": 10})
    assert r.json()["status"] == "done"


async def test_canceled_process_never_sends(
    bus: Bus, admin: httpx.AsyncClient, receiver: Receiver, db: asyncpg.Connection
) -> None:
    w = await _polled_worker_then_webhook(bus, receiver)
    pid = (await emit(w))["process_id"]
    job = await poll(w.acct.http, w.wk["name"])
    assert job is not None
    assert (await admin.post(f"/api/v1/processes/{pid}/pause")).status_code == 200
    out = {"events": [{"type": "x", "items": ["y"]}]}
    await report(w.acct.http, job["request_id"], status="success", outputs={"default": out})
    assert (await admin.post(f"/api/v1/processes/{pid}/cancel")).status_code == 200
    later = await _a_later_process_is_delivered(w, receiver)
    assert _delivered(receiver) == [later]
    status = await db.fetchval(
        "SELECT status FROM requests WHERE channel = 'webhook' AND process_id = $1::uuid", pid
    )
    assert status == "canceled"
