"""A delivered attempt's row is written by the statement of the answer it brings, so the two
commit together (a request never ends without its successful attempt on record, nor the
reverse), in two round trips when nothing else is open."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.store.connection import connection_lost, driver_connection
from app.webhooks.client import HttpResponse
from app.webhooks.recorder import Recorder
from app.webhooks.service import AttemptResult, Job, Outcomes
from app.webhooks.settings import parse_webhook_settings
from tests.bus.conftest import ENVELOPE, Bus, chain, one_leased


async def _leased(bus: Bus, db: asyncpg.Connection) -> Job:
    """A request leased by a consumer, as the webhook dispatcher would have claimed it."""
    leased = await one_leased(bus)
    request_id = leased.request_id
    settings = parse_webhook_settings({"http.webhook.url": "http://127.0.0.1:9/hook"})
    assert settings is not None
    created_at = await db.fetchval("SELECT created_at FROM requests WHERE id = $1", request_id)
    return Job(
        request_id,
        uuid.UUID(leased.consumer["id"]),
        leased.consumer["name"],
        leased.process_id,
        "consumer0",
        leased.attempt,
        created_at,
        settings,
    )


OK = AttemptResult(datetime.now(UTC), 0.002, HttpResponse(200, "OK", [], b"", False))


async def test_a_delivered_attempt_is_written_with_its_answer(
    bus: Bus, db: asyncpg.Connection
) -> None:
    job = await _leased(bus, db)
    request_id, process_id = job.request_id, job.process_id
    state = bus.app.state.xbus
    outcomes = Outcomes(state.director, state.settings)
    sent: list[str] = []

    def log(record: Any) -> None:
        # Not asyncpg's own look at the types of a statement new to the connection.
        if "typeinfo_tree" not in record.query and "'jit'" not in record.query:
            sent.append(record.query)

    async with state.db.working() as work:
        conn = await driver_connection(work, begin=False)
        conn.add_query_logger(log)
        try:
            verdict = await outcomes.record(work, job, OK)
        finally:
            conn.remove_query_logger(log)
    assert verdict.outcome.value == "success"
    # The answer's read, then its write with the attempt's row: no BEGIN, no COMMIT.
    assert len(sent) == 2, "\n---\n".join(q[:120] for q in sent)
    assert "delivery_attempts" in sent[1]
    assert not any(q.lstrip().upper().startswith(("BEGIN", "COMMIT")) for q in sent)
    attempts = await db.fetch(
        "SELECT attempt, outcome FROM delivery_attempts WHERE request_id = $1", request_id
    )
    assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "success")]
    assert await db.fetchval("SELECT status FROM requests WHERE id = $1", request_id) == "success"
    assert await db.fetchval("SELECT status FROM processes WHERE id = $1", process_id) == "done"

    # The same attempt's answer again (a request ended meanwhile): the answer is refused,
    # the attempt still on record, nothing else changed.
    async with state.db.working() as work:
        await outcomes.record(work, job, OK)
    count = "SELECT count(*) FROM delivery_attempts WHERE request_id = $1"
    assert await db.fetchval(count, request_id) == 2
    assert await db.fetchval("SELECT status FROM requests WHERE id = $1", request_id) == "success"


async def test_an_answer_written_again_under_the_locks_writes_its_attempt_once(
    bus: Bus, db: asyncpg.Connection
) -> None:
    """The request changes between the answer's read and its write (another transaction
    holds it meanwhile): the write with the attempt's row is refused whole, and the answer
    written again under the locks, with the attempt's row once."""
    job = await _leased(bus, db)
    state = bus.app.state.xbus
    outcomes = Outcomes(state.director, state.settings)

    async def record() -> None:
        async with state.db.working() as work:
            await outcomes.record(work, job, OK)

    await db.execute("BEGIN")
    try:
        await db.execute("UPDATE requests SET updated_at = now() WHERE id = $1", job.request_id)
        recording = asyncio.create_task(record())
        await asyncio.sleep(0.5)
        assert not recording.done()  # read, decided, and its write waits for the request
    finally:
        await db.execute("COMMIT")
    await asyncio.wait_for(recording, 10)
    attempts = await db.fetch(
        "SELECT outcome FROM delivery_attempts WHERE request_id = $1", job.request_id
    )
    assert [a["outcome"] for a in attempts] == ["success"]
    status = await db.fetchval("SELECT status FROM requests WHERE id = $1", job.request_id)
    assert status == "success"


def _query_log(sent: list[str]) -> Any:
    def log(record: Any) -> None:
        # Not asyncpg's own look at the types of a statement new to the connection.
        if "typeinfo_tree" not in record.query and "'jit'" not in record.query:
            sent.append(record.query)

    return log


async def test_delivered_attempts_are_recorded_together_in_two_round_trips(
    bus: Bus, db: asyncpg.Connection
) -> None:
    """A group of delivered attempts: the requests read, then every answer with its
    attempt's row (one round trip: `fetchmany`, a transaction of its own), whatever its
    size; no BEGIN, no COMMIT."""
    jobs = [await _leased(bus, db) for _ in range(3)]
    state = bus.app.state.xbus
    outcomes = Outcomes(state.director, state.settings)
    group = []
    for job in jobs:
        verdict = outcomes.judge(job, OK)
        assert outcomes.groupable(job, verdict)
        group.append((job, OK, verdict))
    sent: list[str] = []
    async with state.db.working() as work:
        conn = await driver_connection(work, begin=False)
        log = _query_log(sent)
        conn.add_query_logger(log)
        try:
            assert await outcomes.record_group(work, group) == [False, False, False]
        finally:
            conn.remove_query_logger(log)
    assert len(sent) == 2, "\n---\n".join(q[:120] for q in sent)
    assert "delivery_attempts" in sent[1]
    assert not any(q.lstrip().upper().startswith(("BEGIN", "COMMIT")) for q in sent)
    for job in jobs:
        attempts = await db.fetch(
            "SELECT attempt, outcome FROM delivery_attempts WHERE request_id = $1",
            job.request_id,
        )
        assert [(a["attempt"], a["outcome"]) for a in attempts] == [(1, "success")]
        status = await db.fetchval("SELECT status FROM processes WHERE id = $1", job.process_id)
        assert status == "done"


async def test_a_group_with_two_branches_of_one_process_ends_it_once(
    bus: Bus, db: asyncpg.Connection
) -> None:
    """Two requests of one process in a group: the second answer, decided on what the first
    changed, is not written (its guard refuses) and is recorded again alone, so the last
    branch ends the process; a request twice in the group is answered once, both attempts
    on record."""
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    consumers = [await bus.actor(acct, "consumer") for _ in range(2)]
    graph = chain(em["name"])
    graph["nodes"] += [
        {"id": f"c{n}", "type": "consumer", "actors": [c["name"]]} for n, c in enumerate(consumers)
    ]
    graph["edges"] = ["emit->c0", "emit->c1"]
    await bus.pipeline(graph)
    settings = parse_webhook_settings({"http.webhook.url": "http://127.0.0.1:9/hook"})
    assert settings is not None
    jobs: list[Job] = []
    for _ in range(2):
        r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
        process_id = uuid.UUID(r.json()["process_id"])
        for n, consumer in enumerate(consumers):
            r = await acct.http.get(f"/api/v1/actors/{consumer['name']}/requests")
            leased = r.json()
            request_id = uuid.UUID(leased["request_id"])
            created_at = await db.fetchval(
                "SELECT created_at FROM requests WHERE id = $1", request_id
            )
            jobs.append(
                Job(
                    request_id,
                    uuid.UUID(consumer["id"]),
                    consumer["name"],
                    process_id,
                    f"c{n}",
                    leased["attempt"],
                    created_at,
                    settings,
                )
            )
    state = bus.app.state.xbus
    outcomes = Outcomes(state.director, state.settings)
    # Both processes' first branches, then their second ones, then the first again.
    order = [jobs[0], jobs[2], jobs[1], jobs[3], jobs[0]]
    group = []
    for job in order:
        verdict = outcomes.judge(job, OK)
        assert outcomes.groupable(job, verdict)
        group.append((job, OK, verdict))
    async with state.db.working() as work:
        # One answer of each process written, the others refused by their guards.
        flags = await outcomes.record_group(work, group)
    assert flags == [False, False, None, None, None]
    # The refused ones, as the recorder records them: each alone.
    for job, _, _ in group[2:]:
        async with state.db.working() as work:
            await outcomes.record(work, job, OK)
    for process_id in {job.process_id for job in jobs}:
        r = await acct.http.get(f"/api/v1/processes/{process_id}")
        process = r.json()
        assert process["status"] == "done", process
        assert {n["status"] for n in process["nodes"]} == {"done"}
    rows = await db.fetch(
        "SELECT request_id, count(*) FROM delivery_attempts WHERE request_id = ANY($1::uuid[]) "
        "GROUP BY request_id",
        [job.request_id for job in jobs],
    )
    assert {row[0]: row[1] for row in rows} == {
        jobs[0].request_id: 2,
        jobs[1].request_id: 1,
        jobs[2].request_id: 1,
        jobs[3].request_id: 1,
    }


async def test_an_attempt_that_fails_its_group_does_not_sink_the_others(
    bus: Bus, db: asyncpg.Connection
) -> None:
    """One request of the group deleted meanwhile (its process purged): its attempt's row
    cannot be written, which aborts the group's transaction; the others are recorded each
    on its own, and only that attempt reports the failure."""
    jobs = [await _leased(bus, db) for _ in range(3)]
    await db.execute("DELETE FROM processes WHERE id = $1", jobs[1].process_id)
    state = bus.app.state.xbus
    recorder = Recorder(state.db, Outcomes(state.director, state.settings), units=2, group_max=64)
    try:
        results = await asyncio.gather(
            *(recorder.record(job, OK) for job in jobs), return_exceptions=True
        )
    finally:
        await recorder.close()
    assert isinstance(results[1], asyncpg.ForeignKeyViolationError), results
    for n in (0, 2):
        verdict = results[n]
        assert not isinstance(verdict, BaseException), verdict
        assert verdict.outcome.value == "success"
        status = await db.fetchval("SELECT status FROM requests WHERE id = $1", jobs[n].request_id)
        assert status == "success"
        count = "SELECT count(*) FROM delivery_attempts WHERE request_id = $1"
        assert await db.fetchval(count, jobs[n].request_id) == 1


async def test_a_group_whose_connection_is_lost_is_not_recorded_again(
    bus: Bus, db: asyncpg.Connection
) -> None:
    """The group's connection goes while its writes wait (for the attempts' table, locked
    elsewhere): whether they committed is not known, so the attempts fail as lone ones would
    (their leases bring the requests back) rather than be recorded again alone, which would
    write an attempt's row twice had the group committed."""
    jobs = [await _leased(bus, db) for _ in range(3)]
    state = bus.app.state.xbus
    recorder = Recorder(state.db, Outcomes(state.director, state.settings), units=2, group_max=64)
    await db.execute("BEGIN")
    try:
        await db.execute("LOCK TABLE delivery_attempts IN SHARE MODE")
        recording = asyncio.gather(
            *(recorder.record(job, OK) for job in jobs), return_exceptions=True
        )
        for _ in range(100):
            waiting = await db.fetchval(
                "SELECT pid FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND pid <> pg_backend_pid()"
            )
            if waiting is not None:
                break
            await asyncio.sleep(0.05)
        assert waiting is not None, "the group's writes never waited for the lock"
        await db.fetchval("SELECT pg_terminate_backend($1)", waiting)
        results = await asyncio.wait_for(recording, 10)
    finally:
        await db.execute("ROLLBACK")
        await recorder.close()
    assert all(connection_lost(r) for r in results if isinstance(r, BaseException)), results
    assert all(isinstance(r, BaseException) for r in results), results
    ids = [job.request_id for job in jobs]
    count = "SELECT count(*) FROM delivery_attempts WHERE request_id = ANY($1::uuid[])"
    assert await db.fetchval(count, ids) == 0
    statuses = await db.fetch("SELECT status FROM requests WHERE id = ANY($1::uuid[])", ids)
    assert [row[0] for row in statuses] == ["leased"] * 3


async def test_a_group_does_not_wait_for_a_process_another_transaction_holds(
    bus: Bus, db: asyncpg.Connection
) -> None:
    """One process of the group held by another transaction: the group writes the others at
    once and leaves that one to be recorded alone, which waits for the lock; the writer is
    not held up behind it (the next delivery is recorded meanwhile)."""
    jobs = [await _leased(bus, db) for _ in range(4)]
    later = jobs.pop()
    state = bus.app.state.xbus
    recorder = Recorder(state.db, Outcomes(state.director, state.settings), units=2, group_max=64)
    status = "SELECT status FROM requests WHERE id = $1"
    await db.execute("BEGIN")
    try:
        await db.execute("SELECT id FROM processes WHERE id = $1 FOR UPDATE", jobs[0].process_id)
        recording = asyncio.gather(*(recorder.record(job, OK) for job in jobs))
        for _ in range(100):
            if [await db.fetchval(status, job.request_id) for job in jobs[1:]] == ["success"] * 2:
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError("the group waited for the process held elsewhere")
        assert await db.fetchval(status, jobs[0].request_id) == "leased"
        alone = await asyncio.wait_for(recorder.record(later, OK), 10)
        assert alone.outcome.value == "success"
        assert await db.fetchval(status, jobs[0].request_id) == "leased"
    finally:
        await db.execute("COMMIT")
    try:
        verdicts = await asyncio.wait_for(recording, 10)
    finally:
        await recorder.close()
    assert [v.outcome.value for v in verdicts] == ["success"] * 3
    for job in [*jobs, later]:
        assert await db.fetchval(status, job.request_id) == "success"
        count = "SELECT count(*) FROM delivery_attempts WHERE request_id = $1"
        assert await db.fetchval(count, job.request_id) == 1
