"""A delivered attempt's row is written by the statement of the answer it brings, so the two
commit together (a request never ends without its successful attempt on record, nor the
reverse), in two round trips when nothing else is open."""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg

from app.store.connection import driver_connection
from app.webhooks.client import HttpResponse
from app.webhooks.service import AttemptResult, Job, Outcomes
from app.webhooks.settings import parse_webhook_settings
from tests.bus.conftest import Bus, one_leased


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
