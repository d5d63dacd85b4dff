"""A request whose actor never answers is delivered again after its lease; past the attempt
limit its node ends in error."""

from __future__ import annotations

import asyncio
from datetime import datetime
from typing import Any

import pytest

from tests.bus.conftest import ENVELOPE, Bus, chain


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"request_lease": 0.4, "request_max_attempts": 2}


async def _poll_until(bus_client: Any, actor: str, timeout: float = 10) -> dict[str, Any]:
    r = await bus_client.get(f"/api/v1/actors/{actor}/requests", params={"wait": timeout})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_lease_expiry_redelivers_then_fails(bus: Bus) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    emission = (await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)).json()

    first = await _poll_until(acct.http, co["name"])
    assert first["attempt"] == 1
    # Never answered: the supervisor hands it out again, same request, next attempt.
    second = await _poll_until(acct.http, co["name"])
    assert second["request_id"] == first["request_id"]
    assert second["attempt"] == 2

    # The limit (2) is reached: the node and the process end in error.
    r = await acct.http.get(f"/api/v1/processes/{emission['process_id']}", params={"wait": 10})
    process = r.json()
    assert process["status"] == "error"
    assert "did not answer" in process["status_reason"]
    assert process["postmortem"]["level"] == "error"
    node = next(n for n in process["nodes"] if n["node_id"] == "consumer0")
    assert node["status"] == "error"
    assert node["requests"][0]["attempts"] == 2
    logs = (await acct.http.get(f"/api/v1/processes/{emission['process_id']}/logs")).json()["items"]
    assert any("delivering again (attempt 2 of 2)" in e["text"] for e in logs)


async def test_running_state_extends_the_lease(bus: Bus) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    emission = (await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)).json()
    job = await _poll_until(acct.http, co["name"])
    for _ in range(5):
        await asyncio.sleep(0.2)
        r = await acct.http.post(
            f"/api/v1/requests/{job['request_id']}/state", json={"status": "running"}
        )
        assert r.status_code == 200
    # 1 s of work, lease 0.4 s: still the first attempt, nothing redelivered.
    r = await acct.http.get(f"/api/v1/actors/{co['name']}/requests")
    assert r.status_code == 204
    await acct.http.post(f"/api/v1/requests/{job['request_id']}/state", json={"status": "success"})
    process = (await acct.http.get(f"/api/v1/processes/{emission['process_id']}")).json()
    assert process["status"] == "done"
    # When it was taken is kept (not moved by the running reports): ~1 s before its answer.
    [request] = next(n for n in process["nodes"] if n["node_id"] == "consumer0")["requests"]
    leased, ended = (datetime.fromisoformat(request[k]) for k in ("leased_at", "ended_at"))
    assert datetime.fromisoformat(request["created_at"]) <= leased
    assert (ended - leased).total_seconds() >= 1.0


async def test_late_answer_after_redelivery_is_accepted_once(bus: Bus) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    emission = (await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)).json()
    first = await _poll_until(acct.http, co["name"])
    second = await _poll_until(acct.http, co["name"])  # redelivered
    url = f"/api/v1/requests/{first['request_id']}/state"
    assert second["request_id"] == first["request_id"]
    assert (await acct.http.post(url, json={"status": "success"})).status_code == 200
    assert (await acct.http.post(url, json={"status": "success"})).status_code == 409
    process = (await acct.http.get(f"/api/v1/processes/{emission['process_id']}")).json()
    assert process["status"] == "done"
