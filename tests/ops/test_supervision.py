"""Supervision duties, once across replicas: stalled emissions canceled, unresponsive actors
marked and cleared, storage statistics refreshed; the advisory-lock helper itself."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.bus.singleton import once_across_replicas, run_periodically
from app.ops import supervision
from tests.ops.conftest import Wired, emit, poll


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {
        "supervision_interval": 0.2,
        "envelope_stall_timeout": 1.0,
        "actor_unresponsive_after": 1.0,
        "stats_interval": 0.3,
    }


async def _eventually(check: Callable[[], Awaitable[bool]], timeout: float = 10) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not met in time")
        await asyncio.sleep(0.1)


async def test_once_across_replicas(app: FastAPI) -> None:
    engine = app.state.xbus.db.engine
    async with once_across_replicas(engine, "t-lock") as first:
        assert first is True
        async with once_across_replicas(engine, "t-lock") as second:
            assert second is False  # another "replica" holds it
        async with once_across_replicas(engine, "t-other") as other:
            assert other is True  # locks are per duty

    async def failing_pass() -> None:
        async with once_across_replicas(engine, "t-lock") as again:
            assert again is True
            raise RuntimeError("a failed pass")

    with pytest.raises(RuntimeError):
        await failing_pass()
    async with once_across_replicas(engine, "t-lock") as after:
        assert after is True  # released even after a failure


async def test_periodic_duty_never_runs_twice_at_once(app: FastAPI) -> None:
    engine = app.state.xbus.db.engine
    running = 0
    most = 0
    passes = 0

    async def work() -> None:
        nonlocal running, most, passes
        running += 1
        most = max(most, running)
        await asyncio.sleep(0.15)
        running -= 1
        passes += 1

    replicas = [
        asyncio.create_task(run_periodically(engine, "t-duty", 0.05, work, first_delay=0))
        for _ in range(3)
    ]
    await asyncio.sleep(1.2)
    for task in replicas:
        task.cancel()
    await asyncio.gather(*replicas, return_exceptions=True)
    assert passes >= 3
    assert most == 1


async def test_stalled_emission_cancels_the_waiting_process(
    wired: Wired, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    pid = (await emit(wired))["process_id"]
    # A worker's output arriving in fragments (as over NATS) stops arriving.
    envelope_id = uuid.uuid4()
    await db.execute(
        "INSERT INTO envelopes (id, process_id, node_id, output, status, last_fragment_at) "
        "VALUES ($1, $2, 'worker0', 'default', 'receiving', $3)",
        envelope_id,
        uuid.UUID(pid),
        datetime.now(UTC) - timedelta(seconds=5),
    )

    async def canceled() -> bool:
        status = await db.fetchval("SELECT status FROM processes WHERE id = $1", uuid.UUID(pid))
        return bool(status == "error")

    await _eventually(canceled)
    process = (await admin.get(f"/api/v1/processes/{pid}")).json()
    assert process["status_reason"].startswith(
        f"canceled: the upload of envelope {envelope_id} (output of node worker0) stalled"
    )
    assert process["postmortem"]["level"] == "error"
    assert await db.fetchval("SELECT status FROM envelopes WHERE id = $1", envelope_id) == "stalled"
    assert await poll(wired.acct.http, wired.wk["name"]) is None  # its request was withdrawn
    logs = (await admin.get(f"/api/v1/processes/{pid}/logs")).json()["items"]
    assert any("1 open request withdrawn" in e["text"] for e in logs)


async def test_unresponsive_actor_is_marked_then_cleared(
    app: FastAPI, wired: Wired, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    w = wired
    notifier = app.state.xbus.notifier
    await emit(w)
    generation = notifier.generation
    worker_id = uuid.UUID(w.wk["id"])

    async def marked() -> bool:
        return bool(await db.fetchval("SELECT unresponsive FROM actors WHERE id = $1", worker_id))

    await _eventually(marked)
    await asyncio.sleep(0.1)  # the marking pass's after-commit hooks
    assert notifier.generation > generation  # the actors as cached are stale: dropped
    actor = (await admin.get(f"/api/v1/actors/{w.wk['name']}")).json()
    assert actor["unresponsive"] is True
    assert actor["last_seen"] is None
    error = await db.fetchval(
        "SELECT text FROM log_entries WHERE actor_id = $1 AND level = 'error'", worker_id
    )
    assert error.startswith(f"actor {w.wk['name']} is unresponsive")
    # The consumer has nothing waiting: it is not marked.
    assert not await db.fetchval(
        "SELECT unresponsive FROM actors WHERE id = $1", uuid.UUID(w.co["id"])
    )
    # Marked once, not at every pass.
    await asyncio.sleep(0.6)
    assert (
        await db.fetchval(
            "SELECT count(*) FROM log_entries WHERE actor_id = $1 AND level = 'error'", worker_id
        )
        == 1
    )

    # It polls again: cleared, and said so.
    assert await poll(w.acct.http, w.wk["name"]) is not None
    actor = (await admin.get(f"/api/v1/actors/{w.wk['name']}")).json()
    assert actor["unresponsive"] is False
    assert actor["last_seen"] is not None
    assert await db.fetchval(
        "SELECT count(*) FROM log_entries WHERE actor_id = $1 AND text LIKE '%polls again%'",
        worker_id,
    )


async def test_storage_statistics_refresh_analyzes_drifted_tables(
    app: FastAPI, db: asyncpg.Connection
) -> None:
    started = await db.fetchval("SELECT now()")
    await db.execute(
        "INSERT INTO processes (id, status) SELECT gen_random_uuid(), 'done' "
        "FROM generate_series(1, 3000)"
    )
    # The duty reads the tables' counts of changes, which a backend publishes when it goes
    # idle, but not twice within a second: one that published just before waits for its
    # idle timer (10 s) instead. Seen in CI on a slow machine: the insert's changes came too
    # late for the check below.
    await db.execute("SELECT pg_stat_force_next_flush()")

    async def analyzed() -> bool:
        # last_analyze is an explicit ANALYZE (autovacuum sets last_autoanalyze).
        last = await db.fetchval(
            "SELECT last_analyze FROM pg_stat_user_tables WHERE relname = 'processes'"
        )
        estimate = await db.fetchval("SELECT reltuples FROM pg_class WHERE relname = 'processes'")
        return last is not None and last > started and estimate >= 2500

    await _eventually(analyzed, timeout=30)
    await supervision.refresh_storage_stats(app.state.xbus.db)  # a pass with nothing to do


async def test_a_pass_that_marks_nobody_keeps_the_caches(app: FastAPI) -> None:
    """The unresponsive-actor duty runs every supervision interval: only a pass that marks an
    actor drops the caches (here, and on the other replicas by the doorbell)."""
    state = app.state.xbus
    before = state.notifier.generation
    assert await supervision.mark_unresponsive_actors(state.db, 1.0) == 0
    await asyncio.sleep(0.05)
    assert state.notifier.generation == before
