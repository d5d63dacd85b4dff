"""Purges: processes by filter or age, envelopes, logs; batched, parallel, never blocked by
what refers to the purged rows, counts returned."""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg
import httpx

from tests.conftest import assert_problem, row_counts
from tests.ops.conftest import Wired, emit, poll, report, seed_processes


async def test_purge_of_100000_processes(admin: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    await seed_processes(db, 100_000, logs_per_process=1)
    await seed_processes(db, 10, status="running")
    await db.execute("ANALYZE")
    started = time.monotonic()
    r = await admin.post(
        "/api/v1/processes/purge",
        json={"status": ["done"]},
        headers={"Accept": "application/x-ndjson"},
    )
    elapsed = time.monotonic() - started
    assert r.status_code == 200, r.text
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[0] == {"event": "start", "total": 100_000, "done": 0}
    progress = [line["done"] for line in lines if line["event"] == "progress"]
    assert progress == sorted(progress)
    assert len(progress) == 100  # batches of 1000
    result = lines[-1]["result"]
    assert result["kind"] == "processes"
    assert result["matched"] == result["deleted"] == 100_000
    assert result["jobs"] >= 2
    print(f"\npurge: 100,000 processes (+ their logs) in {elapsed:.1f} s, {result['jobs']} jobs")
    assert await db.fetchval("SELECT count(*) FROM processes") == 10
    assert await db.fetchval("SELECT count(*) FROM log_entries") == 0
    assert elapsed < 30


async def test_purge_is_never_blocked_by_what_refers_to_it(
    wired: Wired, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    w = wired
    emission = await emit(w)
    pid = emission["process_id"]
    job = await poll(w.acct.http, w.wk["name"])
    assert job is not None
    out = {"events": [{"type": "order.enriched", "items": ["e"]}]}
    await report(w.acct.http, job["request_id"], status="success", outputs={"default": out})
    assert (await admin.post(f"/api/v1/processes/{pid}/cancel")).status_code == 200
    replay = (await admin.post(f"/api/v1/processes/{pid}/replay")).json()
    # The replay is running: its trigger envelope is needed and stays whatever the purge.
    await db.execute(
        "INSERT INTO delivery_attempts (request_id, attempt, outcome) "
        "SELECT id, 1, 'retry' FROM requests WHERE process_id = $1",
        uuid.UUID(pid),
    )

    r = await admin.post("/api/v1/processes/purge", json={"ids": [pid, replay["id"]]})
    assert r.status_code == 200, r.text
    assert r.json()["matched"] == 1  # only the ended one
    assert r.json()["deleted"] == 1
    assert await db.fetchval("SELECT count(*) FROM processes WHERE id = $1", uuid.UUID(pid)) == 0
    for table in ("requests", "process_nodes", "log_entries"):
        count = await db.fetchval(
            f"SELECT count(*) FROM {table} WHERE process_id = $1", uuid.UUID(pid)
        )
        assert count == 0, table
    assert await db.fetchval("SELECT count(*) FROM delivery_attempts") == 0
    replayed = await admin.get(f"/api/v1/processes/{replay['id']}")
    assert replayed.json()["replay_of"] is None  # SET NULL, not blocked

    # Envelopes: the worker's output is unreferenced now; the trigger serves the replay.
    r = await admin.post("/api/v1/envelopes/purge", json={"unreferenced": True})
    assert r.json()["deleted"] == 1, r.json()
    assert await db.fetchval(
        "SELECT count(*) FROM envelopes WHERE id = $1", uuid.UUID(emission["envelope_id"])
    )
    future = (datetime.now(UTC) + timedelta(days=1)).isoformat()
    r = await admin.post("/api/v1/envelopes/purge", json={"before": future})
    assert r.json()["deleted"] == 0  # the running replay needs it
    assert (await admin.post(f"/api/v1/processes/{replay['id']}/cancel")).status_code == 200
    r = await admin.post("/api/v1/envelopes/purge", json={"before": future})
    assert r.json()["deleted"] == 1
    assert await db.fetchval("SELECT count(*) FROM envelopes") == 0
    assert await db.fetchval("SELECT count(*) FROM items") == 0
    # The process that pointed at it is still readable (its envelope is gone).
    assert (await admin.get(f"/api/v1/processes/{replay['id']}")).status_code == 200
    # A replay of it is refused with a clear reason.
    assert_problem(await admin.post(f"/api/v1/processes/{replay['id']}/replay"), 409, "purged")


async def test_purge_by_age_and_logs_before_a_date(
    admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await seed_processes(db, 100, status="error", logs_per_process=2)
    # Ages 100, 200 ... 10,000 s, fixed in one statement (its own now()), and each log line
    # as old as its process: a machine taking up to 50 s between that statement and a purge
    # moves nothing across the line. Older than 6,050 s are 40 processes.
    await db.execute(
        """
        WITH aged AS (
            SELECT id, now() - make_interval(secs => 100 * row_number() OVER (ORDER BY id)) AS t
            FROM processes
        ), p AS (UPDATE processes SET created_at = aged.t FROM aged WHERE processes.id = aged.id)
        UPDATE log_entries SET time = aged.t FROM aged WHERE log_entries.process_id = aged.id
        """
    )
    r = await admin.post("/api/v1/processes/purge", json={"older_than": 6050, "dry_run": True})
    assert r.json()["matched"] == 40
    assert r.json()["deleted"] == 0
    assert await db.fetchval("SELECT count(*) FROM processes") == 100
    r = await admin.post("/api/v1/processes/purge", json={"older_than": "PT6050S"})
    assert r.json()["deleted"] == 40
    assert await db.fetchval("SELECT count(*) FROM processes") == 60

    # The 60 left are 100 to 6,000 s old, their logs too: 30 of them (60 lines) are older
    # than 3,050 s.
    cutoff = (datetime.now(UTC) - timedelta(seconds=3050)).isoformat()
    r = await admin.post("/api/v1/logs/purge", json={"before": cutoff, "level": ["warning"]})
    assert r.json()["deleted"] == 0
    r = await admin.post("/api/v1/logs/purge", json={"before": cutoff})
    assert r.json()["kind"] == "logs"
    assert r.json()["deleted"] == 60
    assert await db.fetchval("SELECT count(*) FROM log_entries") == 60


async def test_bad_purges_change_nothing(
    wired: Wired, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await emit(wired)
    await seed_processes(db, 5)
    before = await row_counts(db)
    cases = [
        ("/api/v1/processes/purge", {}, "all: true"),
        ("/api/v1/processes/purge", {"ids": []}, "ids is empty"),
        ("/api/v1/processes/purge", {"status": ["running"]}, "cancel them first"),
        ("/api/v1/processes/purge", {"older_than": -5}, "negative"),
        ("/api/v1/processes/purge", {"older_than": "a while"}, None),
        ("/api/v1/processes/purge", {"ids": ["nope"]}, None),
        ("/api/v1/processes/purge", {"all": True, "extra": 1}, None),
        ("/api/v1/envelopes/purge", {}, "unreferenced"),
        ("/api/v1/envelopes/purge", {"before": "2020-01-01"}, None),
        ("/api/v1/logs/purge", {}, None),
        ("/api/v1/logs/purge", {"before": "2020-01-01T00:00:00Z", "level": ["loud"]}, None),
    ]
    for path, body, text in cases:
        assert_problem(await admin.post(path, json=body), 422, text)
    assert_problem(
        await admin.post(
            "/api/v1/processes/purge", content=b"{", headers={"content-type": "application/json"}
        ),
        422,
    )
    assert_problem(await wired.acct.http.post("/api/v1/processes/purge", json={"all": True}), 403)
    assert await row_counts(db) == before
