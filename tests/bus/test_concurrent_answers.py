"""Answers for one process that arrive together: each is decided on what the previous one
committed (the process lock is taken before anything of the process is read), so the last
branch to end ends the process, whichever it is."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import pytest

from app.models.enums import RequestStatus
from app.store.connection import driver_connection
from tests.bus.conftest import ENVELOPE, Account, Bus, chain


async def three_branches(
    bus: Bus, acct: Account, branches: int = 3
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An emitter whose envelopes go to three consumers (or `branches`) side by side: its
    actor and theirs."""
    em = await bus.actor(acct, "emitter")
    consumers = [await bus.actor(acct, "consumer") for _ in range(branches)]
    graph = chain(em["name"])
    graph["nodes"] += [
        {"id": f"c{n}", "type": "consumer", "actors": [c["name"]]} for n, c in enumerate(consumers)
    ]
    graph["edges"] = [f"emit->c{n}" for n in range(len(consumers))]
    await bus.pipeline(graph)
    return em, consumers


async def all_done(acct: Account, process_id: str) -> None:
    """The process ended done, every node of it done."""
    r = await acct.http.get(f"/api/v1/processes/{process_id}")
    process = r.json()
    assert process["status"] == "done", process
    assert {n["status"] for n in process["nodes"]} == {"done"}


async def emit_and_lease(
    acct: Account, em: dict[str, Any], consumers: list[dict[str, Any]]
) -> tuple[str, list[str]]:
    """One envelope emitted: its process, and the request each consumer leased of it."""
    r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
    jobs = []
    for consumer in consumers:
        r2 = await acct.http.get(f"/api/v1/actors/{consumer['name']}/requests")
        assert r2.status_code == 200, r2.text
        jobs.append(r2.json()["request_id"])
    return r.json()["process_id"], jobs


async def test_parallel_branches_answered_at_once_end_the_process(bus: Bus) -> None:
    acct = await bus.account()
    em, consumers = await three_branches(bus, acct)
    for _ in range(10):
        process_id, jobs = await emit_and_lease(acct, em, consumers)
        answers = await asyncio.gather(
            *(
                acct.http.post(f"/api/v1/requests/{job}/state", json={"status": "success"})
                for job in jobs
            )
        )
        assert [a.status_code for a in answers] == [200, 200, 200]
        await all_done(acct, process_id)


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
        await all_done(acct, process_id)


async def broadcast(bus: Bus, acct: Account) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """An emitter whose envelopes go to one node, sent to both actors of its role."""
    em = await bus.actor(acct, "emitter")
    role = f"role-{uuid.uuid4().hex[:8]}"
    consumers = [await bus.actor(acct, "consumer", roles=[role]) for _ in range(2)]
    graph = chain(em["name"])
    graph["nodes"].append({"id": "all", "type": "consumer", "roles": [role], "rolebroadcast": True})
    graph["edges"] = ["emit->all"]
    await bus.pipeline(graph)
    return em, consumers


@pytest.mark.parametrize("shape", ["branches", "broadcast"])
async def test_an_answer_read_without_the_lock_is_decided_again_after_another_commits(
    bus: Bus, shape: str
) -> None:
    """A single answer is decided on a read without any lock and written only if neither its
    process nor its request changed meanwhile. Here the first answer holds the process (its
    transaction not committed yet) when the second's is read: the second sees the first's
    request still open, and its write waits for the process; once the first commits, the
    second is decided again on what it committed, and ends the process. Two shapes: two
    branches (the first answer ends its node, a change of the process's row), and one node
    sent to two actors (the first answer changes its request alone; the process's row is
    written all the same, which is what tells the second that it changed)."""
    acct = await bus.account()
    if shape == "branches":
        em, consumers = await three_branches(bus, acct, branches=2)
    else:
        em, consumers = await broadcast(bus, acct)
    process_id, leased = await emit_and_lease(acct, em, consumers)
    jobs = [uuid.UUID(job) for job in leased]
    state = bus.app.state.xbus
    async with state.db.working() as work:
        await driver_connection(work)  # a transaction: the answer takes the locks
        await state.director.report(work, jobs[0], RequestStatus.SUCCESS, [], {}, account_id=None)
        second = asyncio.create_task(
            acct.http.post(f"/api/v1/requests/{jobs[1]}/state", json={"status": "success"})
        )
        await asyncio.sleep(0.5)
        assert not second.done()  # read, decided, and its write waits for the process
    r = await asyncio.wait_for(second, 10)
    assert r.status_code == 200, r.text
    await all_done(acct, process_id)


async def test_an_answer_read_without_the_lock_sees_its_request_changed_meanwhile(
    bus: Bus, db: asyncpg.Connection
) -> None:
    """The request itself changed between the answer's read and its write (here its attempt
    count, as a new lease would): the write is refused and the answer decided again on the
    request as it now is, so nothing the other transaction wrote is overwritten."""
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    consumer = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", consumer["name"])))
    process_id, [leased] = await emit_and_lease(acct, em, [consumer])
    job = uuid.UUID(leased)
    await db.execute("BEGIN")
    try:
        await db.execute("UPDATE requests SET attempts = 5 WHERE id = $1", job)
        answer = asyncio.create_task(
            acct.http.post(f"/api/v1/requests/{job}/state", json={"status": "success"})
        )
        await asyncio.sleep(0.5)
        assert not answer.done()  # read, decided, and its write waits for the request
    finally:
        await db.execute("COMMIT")
    r = await asyncio.wait_for(answer, 10)
    assert r.status_code == 200, r.text
    row = await db.fetchrow("SELECT status, attempts FROM requests WHERE id = $1", job)
    assert (row["status"], row["attempts"]) == ("success", 5)
    r = await acct.http.get(f"/api/v1/processes/{process_id}")
    assert r.json()["status"] == "done", r.text
