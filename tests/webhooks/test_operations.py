"""The operator API: attempt logs (filters, cursors, access), retry now, disable/enable."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tests.bus.conftest import Bus
from tests.conftest import assert_problem, row_counts
from tests.webhooks.conftest import (
    FAST,
    Receiver,
    Reply,
    emit,
    eventually,
    finished,
    webhook_chain,
)


async def test_attempt_log_filters_and_cursor(bus: Bus, receiver: Receiver) -> None:
    receiver.script("/hook", [Reply(503), Reply(502), Reply(200)])
    acct = await bus.account()
    em, co = await webhook_chain(bus, acct, receiver.url("/hook"), backoff_initial="0.01")
    emission = await emit(acct, em["name"])
    await finished(acct.http, emission["process_id"])
    path = f"/api/v1/actors/{co['name']}/deliveries"

    seen, cursor = [], None
    while True:
        params: dict[str, Any] = {"limit": 1}
        if cursor:
            params["cursor"] = cursor
        page = (await acct.http.get(path, params=params)).json()
        seen += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert [(a["attempt"], a["status_code"]) for a in seen] == [(3, 200), (2, 502), (1, 503)]

    async def count(**params: Any) -> int:
        r = await acct.http.get(path, params=params)
        assert r.status_code == 200, r.text
        return len(r.json()["items"])

    assert await count(outcome="retry") == 2
    assert await count(outcome=["retry", "success"]) == 3
    assert await count(status_code=502) == 1
    assert await count(request_id=seen[0]["request_id"]) == 3
    future = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    assert await count(started_after=future) == 0
    assert await count(started_before=future) == 3
    # By id too, and the admin sees it.
    assert await count() == 3
    r = await bus.admin.get(f"/api/v1/actors/{co['id']}/deliveries")
    assert len(r.json()["items"]) == 3
    r = await acct.http.get(f"/api/v1/requests/{seen[0]['request_id']}/deliveries")
    assert [a["attempt"] for a in r.json()["items"]] == [1, 2, 3]  # oldest first


async def test_other_accounts_and_bad_input(
    bus: Bus, receiver: Receiver, db: asyncpg.Connection
) -> None:
    acct = await bus.account()
    other = await bus.account()
    em, co = await webhook_chain(bus, acct, receiver.url("/hook"))
    emission = await emit(acct, em["name"])
    [got] = await receiver.wait_for("/hook")
    await finished(acct.http, emission["process_id"])
    request_id = json.loads(got.body)["request_id"]
    before = await row_counts(db)

    name = co["name"]
    for method, path in [
        ("GET", f"/api/v1/actors/{name}/deliveries"),
        ("GET", f"/api/v1/actors/{name}/webhook"),
        ("POST", f"/api/v1/actors/{name}/webhook/disable"),
        ("POST", f"/api/v1/actors/{name}/webhook/enable"),
        ("GET", f"/api/v1/requests/{request_id}/deliveries"),
        ("POST", f"/api/v1/requests/{request_id}/retry"),
    ]:
        assert_problem(await other.http.request(method, path), 404)
    assert_problem(
        await bus.clients[0].get(
            f"/api/v1/actors/{name}/deliveries", headers={"Authorization": "Bearer nope"}
        ),
        401,
    )
    path = f"/api/v1/actors/{name}/deliveries"
    assert_problem(await acct.http.get(path, params={"cursor": "!!"}), 400, "cursor")
    assert_problem(await acct.http.get(path, params={"cursor": "WyJ4Il0"}), 400, "cursor")
    assert_problem(await acct.http.get(path, params={"outcome": "maybe"}), 422)
    assert_problem(await acct.http.get(path, params={"status_code": 99}), 422)
    assert_problem(await acct.http.get(path, params={"limit": 0}), 422)
    assert_problem(await acct.http.get("/api/v1/requests/nope/deliveries"), 422)
    assert_problem(await acct.http.post("/api/v1/requests/nope/retry"), 422)
    assert_problem(
        await acct.http.post(f"/api/v1/requests/{request_id}/retry"), 409, "replay its process"
    )
    assert_problem(await acct.http.get("/api/v1/actors/no-such-actor/deliveries"), 404)
    assert_problem(
        await acct.http.post(f"/api/v1/actors/{em['name']}/webhook/disable"), 409, "has no webhook"
    )
    assert await row_counts(db) == before


async def test_retry_now_skips_the_backoff(bus: Bus, receiver: Receiver) -> None:
    receiver.script("/hook", [Reply(503), Reply(200)])
    acct = await bus.account()
    em, _ = await webhook_chain(
        bus, acct, receiver.url("/hook"), backoff_initial="60", backoff_jitter="0"
    )
    emission = await emit(acct, em["name"])
    [first] = await receiver.wait_for("/hook")
    request_id = first.headers.get("webhook-id") or json.loads(first.body)["request_id"]

    async def pending() -> bool:
        r = await acct.http.get(f"/api/v1/requests/{request_id}/deliveries")
        return len(r.json()["items"]) == 1

    await eventually(pending)
    await asyncio.sleep(0.1)
    r = await acct.http.post(f"/api/v1/requests/{request_id}/retry")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["status"] == "pending"
    assert body["attempts"] == 1
    assert datetime.fromisoformat(body["available_at"]) <= datetime.now(UTC)
    await receiver.wait_for("/hook", 2, timeout=5)
    assert (await finished(acct.http, emission["process_id"]))["status"] == "done"


async def test_disable_holds_requests_and_enable_sends_them(bus: Bus, receiver: Receiver) -> None:
    acct = await bus.account()
    em, co = await webhook_chain(bus, acct, receiver.url("/hook"))
    r = await acct.http.post(f"/api/v1/actors/{co['name']}/webhook/disable")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "disabled"
    assert r.json()["next_probe_at"] is None
    assert acct.name in r.json()["reason"]
    emission = await emit(acct, em["name"])
    # Another webhook consumer, active, emitted to after: once its delivery arrives, the
    # dispatcher has had its chance at the disabled one's request, due before it.
    other_em, _ = await webhook_chain(bus, acct, receiver.url("/other"))
    await emit(acct, other_em["name"])
    await receiver.wait_for("/other")
    assert receiver.at("/hook") == []
    state = (await acct.http.get(f"/api/v1/actors/{co['name']}/webhook")).json()
    assert state["pending"] == 1
    process = (await acct.http.get(f"/api/v1/processes/{emission['process_id']}")).json()
    request_id = process["nodes"][1]["requests"][0]["id"]
    assert_problem(await acct.http.post(f"/api/v1/requests/{request_id}/retry"), 409, "enable")

    r = await acct.http.post(f"/api/v1/actors/{co['name']}/webhook/enable")
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "active"
    await receiver.wait_for("/hook")
    assert (await finished(acct.http, emission["process_id"]))["status"] == "done"
    # Both are idempotent.
    for verb, state_name in (
        ("enable", "active"),
        ("disable", "disabled"),
        ("disable", "disabled"),
    ):
        r = await bus.admin.post(f"/api/v1/actors/{co['name']}/webhook/{verb}")
        assert r.json()["state"] == state_name


@pytest.mark.parametrize("settings_overrides", [{**FAST, "webhook_poll_interval": 60}])
async def test_a_new_or_enabled_webhook_delivers_at_once_not_at_the_next_poll(
    bus: Bus, receiver: Receiver
) -> None:
    """The dispatcher keeps the webhook actors it read for a poll interval (60 s here): a
    change of actors reads them again at once, here and on the other replicas."""
    acct = await bus.account()
    # Made after the dispatcher's first read of the actors.
    em, co = await webhook_chain(bus, acct, receiver.url("/hook"))
    await emit(acct, em["name"])
    await receiver.wait_for("/hook", timeout=5)

    r = await acct.http.post(f"/api/v1/actors/{co['name']}/webhook/disable")
    assert r.status_code == 200, r.text
    emission = await emit(acct, em["name"])
    await asyncio.sleep(0.3)
    assert len(receiver.at("/hook")) == 1
    r = await acct.http.post(f"/api/v1/actors/{co['name']}/webhook/enable")
    assert r.status_code == 200, r.text
    await receiver.wait_for("/hook", 2, timeout=5)
    assert (await finished(acct.http, emission["process_id"]))["status"] == "done"
