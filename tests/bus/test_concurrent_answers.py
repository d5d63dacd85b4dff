"""Answers for one process that arrive together: each is decided on what the previous one
committed (the process lock is taken before anything of the process is read), so the last
branch to end ends the process, whichever it is."""

from __future__ import annotations

import asyncio
import uuid

import asyncpg

from tests.bus.conftest import ENVELOPE, Bus


async def test_parallel_branches_answered_at_once_end_the_process(bus: Bus) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    consumers = [await bus.actor(acct, "consumer") for _ in range(3)]
    graph = {
        "nodes": [
            {
                "id": "emit",
                "type": "emitter",
                "actors": [em["name"]],
                "sourcematch": {"eventtypes": ["order.created"]},
            },
            *(
                {"id": f"c{n}", "type": "consumer", "actors": [c["name"]]}
                for n, c in enumerate(consumers)
            ),
        ],
        "edges": [f"emit->c{n}" for n in range(len(consumers))],
    }
    await bus.pipeline(graph)
    for _ in range(10):
        r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
        process_id = r.json()["process_id"]
        jobs = []
        for consumer in consumers:
            r = await acct.http.get(f"/api/v1/actors/{consumer['name']}/requests")
            assert r.status_code == 200, r.text
            jobs.append(r.json()["request_id"])
        answers = await asyncio.gather(
            *(
                acct.http.post(f"/api/v1/requests/{job}/state", json={"status": "success"})
                for job in jobs
            )
        )
        assert [a.status_code for a in answers] == [200, 200, 200]
        r = await acct.http.get(f"/api/v1/processes/{process_id}")
        process = r.json()
        assert process["status"] == "done", process
        assert {n["status"] for n in process["nodes"]} == {"done"}


async def test_a_dispatch_that_fails_the_process_withdraws_the_others(
    bus: Bus, db: asyncpg.Connection
) -> None:
    """Two branches: one node still has its actor, the other's was disabled. The process
    ends in error, and no request of it is left pending (the one dispatched by the same
    decision is withdrawn with the others)."""
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    first = await bus.actor(acct, "consumer")
    second = await bus.actor(acct, "consumer")
    graph = {
        "nodes": [
            {
                "id": "emit",
                "type": "emitter",
                "actors": [em["name"]],
                "sourcematch": {"eventtypes": ["order.created"]},
            },
            {"id": "a", "type": "consumer", "actors": [first["name"]]},
            {"id": "b", "type": "consumer", "actors": [second["name"]]},
        ],
        "edges": ["emit->a", "emit->b"],
    }
    await bus.pipeline(graph)
    r = await bus.admin.patch(f"/api/v1/actors/{second['name']}", json={"status": "disabled"})
    assert r.status_code == 200, r.text
    r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
    assert r.status_code == 202, r.text
    process_id = r.json()["process_id"]
    r = await acct.http.get(f"/api/v1/processes/{process_id}")
    process = r.json()
    assert process["status"] == "error", process
    statuses = await db.fetch(
        "SELECT status FROM requests WHERE process_id = $1", uuid.UUID(process_id)
    )
    assert {s["status"] for s in statuses} <= {"canceled"}, statuses
    r = await acct.http.get(f"/api/v1/actors/{first['name']}/requests")
    assert r.status_code == 204, r.text
