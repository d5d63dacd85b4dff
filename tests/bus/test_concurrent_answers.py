"""Answers for one process that arrive together: each is decided on what the previous one
committed (the process lock is taken before anything of the process is read), so the last
branch to end ends the process, whichever it is."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg

from tests.bus.conftest import ENVELOPE, Account, Bus, chain


async def three_branches(bus: Bus, acct: Account) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An emitter whose envelopes go to three consumers side by side: its actor and theirs."""
    em = await bus.actor(acct, "emitter")
    consumers = [await bus.actor(acct, "consumer") for _ in range(3)]
    graph = chain(em["name"])
    graph["nodes"] += [
        {"id": f"c{n}", "type": "consumer", "actors": [c["name"]]} for n, c in enumerate(consumers)
    ]
    graph["edges"] = [f"emit->c{n}" for n in range(len(consumers))]
    await bus.pipeline(graph)
    return em, consumers


async def test_parallel_branches_answered_at_once_end_the_process(bus: Bus) -> None:
    acct = await bus.account()
    em, consumers = await three_branches(bus, acct)
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


async def test_branches_answered_in_one_batch_and_beside_it(bus: Bus) -> None:
    """A batch of answers reads its requests once, after locking their processes; an answer
    that comes after another of the same process in the batch reads again (it must see the
    first's node and open requests), and a batch racing single answers of the same
    processes waits for their locks: each process ends once, every node done."""
    acct = await bus.account()
    em, consumers = await three_branches(bus, acct)
    processes = []
    for _ in range(6):
        r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
        processes.append(r.json()["process_id"])
    jobs: dict[str, list[str]] = {}  # consumer -> its requests, one per process
    for consumer in consumers:
        r = await acct.http.get(
            f"/api/v1/actors/{consumer['name']}/requests", params={"max": len(processes)}
        )
        assert r.status_code == 200, r.text
        jobs[consumer["name"]] = [x["request_id"] for x in r.json()["requests"]]
        assert len(jobs[consumer["name"]]) == len(processes)
    first, second, third = (jobs[c["name"]] for c in consumers)
    unknown = str(uuid.uuid4())
    # One batch answers the three branches of the first three processes (the last of the
    # three must end its process) and the first two of the others, with an unknown request
    # and a repeated one among them; the others' third branches are answered one by one
    # meanwhile.
    batch = [
        {"request_id": request_id, "status": "success"}
        for n, answers in enumerate(zip(first, second, third, strict=True))
        for request_id in (answers if n < 3 else answers[:2])
    ]
    batch.insert(3, {"request_id": unknown, "status": "success"})
    batch.append({"request_id": first[0], "status": "success"})
    single = [
        acct.http.post(f"/api/v1/requests/{job}/state", json={"status": "success"})
        for job in third[3:]
    ]
    answers = await asyncio.gather(
        acct.http.post("/api/v1/requests/states", json={"states": batch}), *single
    )
    assert [a.status_code for a in answers] == [200] * 4
    results = answers[0].json()["results"]
    assert [x["status"] for x in results] == [200] * 3 + [404] + [200] * 12 + [409]
    for process_id in processes:
        r = await acct.http.get(f"/api/v1/processes/{process_id}")
        process = r.json()
        assert process["status"] == "done", process
        assert {n["status"] for n in process["nodes"]} == {"done"}
