"""The bus end to end over HTTP: emit, poll, report, processes, logs, postmortem."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import httpx

from tests.bus.conftest import ENVELOPE, Bus, chain
from tests.conftest import row_counts


async def poll(client: httpx.AsyncClient, actor: str, wait: float = 0) -> dict[str, Any] | None:
    r = await client.get(f"/api/v1/actors/{actor}/requests", params={"wait": wait})
    if r.status_code == 204:
        return None
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def state(client: httpx.AsyncClient, request_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/api/v1/requests/{request_id}/state", json=body)


async def test_emitter_worker_consumer_over_http(bus: Bus) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    wk = await bus.actor(acct, "worker")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("worker", wk["name"]), ("consumer", co["name"])))

    r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
    assert r.status_code == 202, r.text
    emission = r.json()
    assert emission["status"] == "running"

    # The consumer has nothing yet: the worker comes first.
    assert await poll(acct.http, co["name"]) is None
    job = await poll(acct.http, wk["name"])
    assert job is not None
    assert job["process_id"] == emission["process_id"]
    assert job["node_id"] == "worker0"
    assert job["attempt"] == 1
    [inp] = job["inputs"]
    assert inp["name"] == "default"
    assert inp["inline"] is True
    assert inp["envelope"]["id"] == emission["envelope_id"]
    assert inp["envelope"]["events"][0]["items"] == [{"id": 1}, {"id": 2}]
    assert inp["envelope"]["events"][0]["encoding"] == "json"

    r = await state(
        acct.http, job["request_id"], status="running", messages=[{"text": "working on it"}]
    )
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running"
    out = {"events": [{"type": "order.enriched", "items": ["enriched 1", "enriched 2"]}]}
    r = await state(
        acct.http,
        job["request_id"],
        status="success",
        outputs={"default": out},
        messages=[{"level": "notice", "text": "enriched 2 orders"}],
    )
    assert r.status_code == 200, r.text

    job2 = await poll(acct.http, co["name"])
    assert job2 is not None
    assert job2["inputs"][0]["envelope"]["events"][0]["items"] == ["enriched 1", "enriched 2"]
    assert job2["inputs"][0]["envelope"]["events"][0]["type"] == "order.enriched"
    r = await state(acct.http, job2["request_id"], status="success")
    assert r.status_code == 200

    r = await acct.http.get(f"/api/v1/processes/{emission['process_id']}")
    process = r.json()
    assert process["status"] == "done"
    assert process["emitter_name"] == em["name"]
    assert process["trigger_envelope_id"] == emission["envelope_id"]
    assert process["postmortem"] is None
    assert [(n["node_id"], n["status"]) for n in process["nodes"]] == [
        ("emit", "done"),
        ("worker0", "done"),
        ("consumer1", "done"),
    ]
    assert process["nodes"][1]["requests"][0]["actor_name"] == wk["name"]

    logs = (await acct.http.get(f"/api/v1/processes/{emission['process_id']}/logs")).json()["items"]
    texts = [entry["text"] for entry in logs]
    assert any("process started" in t for t in texts)
    assert "working on it" in texts
    assert "enriched 2 orders" in texts
    assert texts[-1] == "process done"

    # The emitter acknowledges the result.
    r = await acct.http.post(f"/api/v1/processes/{emission['process_id']}/ack")
    assert r.status_code == 200
    assert r.json()["result_acked"] is True


async def test_role_spreading_and_broadcast(bus: Bus) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    spread = [await bus.actor(acct, "consumer", roles=["printer"]) for _ in range(2)]
    everyone = [await bus.actor(acct, "consumer", roles=["archive"]) for _ in range(2)]
    graph = {
        "nodes": [
            {
                "id": "e",
                "type": "emitter",
                "actors": [em["name"]],
                "sourcematch": {"eventtypes": ["order.created"]},
            },
            {"id": "p", "type": "consumer", "roles": ["printer"]},
            {"id": "a", "type": "consumer", "roles": ["archive"], "rolebroadcast": True},
        ],
        "edges": ["e->p", "e->a"],
    }
    await bus.pipeline(graph)
    for _ in range(4):
        assert (
            await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
        ).status_code == 202

    async def drain(name: str) -> int:
        count = 0
        while (job := await poll(acct.http, name)) is not None:
            assert (await state(acct.http, job["request_id"], status="success")).status_code == 200
            count += 1
        return count

    assert [await drain(a["name"]) for a in spread] == [2, 2]
    assert [await drain(a["name"]) for a in everyone] == [4, 4]
    page = (await acct.http.get("/api/v1/processes", params={"status": "done"})).json()
    assert len(page["items"]) == 4


async def test_worker_error_ends_process_in_error_with_postmortem(bus: Bus) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    wk = await bus.actor(acct, "worker")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("worker", wk["name"]), ("consumer", co["name"])))
    emission = (await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)).json()
    job = await poll(acct.http, wk["name"])
    assert job is not None
    r = await state(
        acct.http,
        job["request_id"],
        status="error",
        messages=[
            {"level": "warning", "text": "odd input"},
            {"level": "error", "text": "cannot parse order 2"},
        ],
    )
    assert r.status_code == 200
    process = (await acct.http.get(f"/api/v1/processes/{emission['process_id']}")).json()
    assert process["status"] == "error"
    assert "cannot parse order 2" in process["status_reason"]
    assert process["postmortem"]["level"] == "error"
    assert process["postmortem"]["status"] == "new"
    nodes = {n["node_id"]: n["status"] for n in process["nodes"]}
    assert nodes == {"emit": "done", "worker0": "error", "consumer1": "skipped"}
    assert await poll(acct.http, co["name"]) is None
    # A second answer for the ended request is refused.
    assert (await state(acct.http, job["request_id"], status="success")).status_code == 409
    levels = [
        e["level"]
        for e in (await acct.http.get(f"/api/v1/processes/{emission['process_id']}/logs")).json()[
            "items"
        ]
    ]
    assert "error" in levels


async def test_warnings_land_in_postmortem_of_a_done_process(bus: Bus) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    emission = (await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)).json()
    job = await poll(acct.http, co["name"])
    assert job is not None
    await state(
        acct.http,
        job["request_id"],
        status="success",
        messages=[{"level": "warning", "text": "slow"}],
    )
    process = (await acct.http.get(f"/api/v1/processes/{emission['process_id']}")).json()
    assert process["status"] == "done"
    assert process["postmortem"] == {
        "level": "warning",
        "status": "new",
        "comment": None,
        "changed_at": process["postmortem"]["changed_at"],
    }


async def test_long_poll_answers_the_moment_work_arrives(bus: Bus) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))

    started = time.monotonic()
    assert await poll(acct.http, co["name"], wait=0.5) is None
    assert time.monotonic() - started >= 0.5

    waiting = asyncio.create_task(poll(acct.http, co["name"], wait=20))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    emission = (await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)).json()
    job = await waiting
    assert job is not None
    assert time.monotonic() - started < 5
    assert job["process_id"] == emission["process_id"]

    process_wait = asyncio.create_task(
        acct.http.get(f"/api/v1/processes/{emission['process_id']}", params={"wait": 20})
    )
    await asyncio.sleep(0.3)
    assert not process_wait.done()
    started = time.monotonic()
    await state(acct.http, job["request_id"], status="success")
    r = await process_wait
    assert r.json()["status"] == "done"
    assert time.monotonic() - started < 5


async def test_idempotency_key(bus: Bus, db: asyncpg.Connection) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    url = f"/api/v1/actors/{em['name']}/output"
    first = await acct.http.post(url, json=ENVELOPE, headers={"Idempotency-Key": "order-1"})
    again = await acct.http.post(url, json=ENVELOPE, headers={"Idempotency-Key": "order-1"})
    assert first.status_code == again.status_code == 202
    assert first.json() == again.json()
    assert again.headers.get("idempotency-replayed") == "true"
    assert await db.fetchval("SELECT count(*) FROM processes") == 1
    before = await row_counts(db)
    other = {"events": [{"type": "order.created", "items": ["different"]}]}
    r = await acct.http.post(url, json=other, headers={"Idempotency-Key": "order-1"})
    assert r.status_code == 409
    assert "different body" in r.json()["detail"]
    assert await row_counts(db) == before
    # Another key is another emission.
    assert (
        await acct.http.post(url, json=ENVELOPE, headers={"Idempotency-Key": "order-2"})
    ).status_code == 202
    assert await db.fetchval("SELECT count(*) FROM processes") == 2


async def test_emission_is_stored_before_the_answer(bus: Bus, db: asyncpg.Connection) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    emission = (await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)).json()
    # Read through another connection: committed, not just flushed.
    assert (
        await db.fetchval(
            "SELECT status FROM envelopes WHERE id = $1",
            __import__("uuid").UUID(emission["envelope_id"]),
        )
        == "complete"
    )
    assert await db.fetchval("SELECT count(*) FROM requests WHERE status = 'pending'") == 1
    assert await db.fetchval("SELECT count(*) FROM items") == 2
