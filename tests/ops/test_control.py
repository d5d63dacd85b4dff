"""Process control on a live app with real data: pause, resume, cancel, replay, one by one
and in batches."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx

from tests.conftest import assert_problem, row_counts
from tests.ops.conftest import Wired, emit, poll, report


async def _process(admin: httpx.AsyncClient, process_id: str) -> dict[str, Any]:
    r = await admin.get(f"/api/v1/processes/{process_id}")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_pause_stops_dispatch_and_resume_restarts_it(
    wired: Wired, admin: httpx.AsyncClient
) -> None:
    w = wired
    emission = await emit(w)
    pid = emission["process_id"]

    r = await admin.post(f"/api/v1/processes/{pid}/pause")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "paused"
    # Paused: the worker's pending request is not handed out.
    assert await poll(w.acct.http, w.wk["name"]) is None

    r = await admin.post(f"/api/v1/processes/{pid}/resume")
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "running"
    job = await poll(w.acct.http, w.wk["name"])
    assert job is not None
    assert job["process_id"] == pid

    # Paused again while the worker holds its request: the answer is still taken, and its
    # output waits as a pending request that nobody gets until the resume.
    assert (await admin.post(f"/api/v1/processes/{pid}/pause")).status_code == 200
    out = {"events": [{"type": "order.enriched", "items": ["e1"]}]}
    r = await report(w.acct.http, job["request_id"], status="success", outputs={"default": out})
    assert r.status_code == 200, r.text
    assert (await _process(admin, pid))["status"] == "paused"
    assert await poll(w.acct.http, w.co["name"]) is None

    # A long-polling consumer is woken by the resume.
    waiting = asyncio.create_task(poll(w.acct.http, w.co["name"], wait=15))
    await asyncio.sleep(0.3)
    started = time.monotonic()
    assert (await admin.post(f"/api/v1/processes/{pid}/resume")).status_code == 200
    job2 = await waiting
    assert job2 is not None
    assert time.monotonic() - started < 5
    assert job2["inputs"][0]["envelope"]["events"][0]["items"] == ["e1"]
    assert (await report(w.acct.http, job2["request_id"], status="success")).status_code == 200
    process = await _process(admin, pid)
    assert process["status"] == "done"
    texts = [e["text"] for e in (await admin.get(f"/api/v1/processes/{pid}/logs")).json()["items"]]
    assert "process paused by admin" in texts
    assert "process resumed by admin" in texts


async def test_resume_ends_a_process_finished_while_paused(
    wired: Wired, admin: httpx.AsyncClient
) -> None:
    w = wired
    pid = (await emit(w))["process_id"]
    job = await poll(w.acct.http, w.wk["name"])
    assert job is not None
    assert (await admin.post(f"/api/v1/processes/{pid}/pause")).status_code == 200
    # The worker fails while the process is paused: an error ends it whatever its state.
    r = await report(
        w.acct.http, job["request_id"], status="error", messages=[{"level": "error", "text": "x"}]
    )
    assert r.status_code == 200
    assert (await _process(admin, pid))["status"] == "error"
    assert_problem(await admin.post(f"/api/v1/processes/{pid}/resume"), 409, "only a paused")


async def test_cancel_withdraws_pending_work(
    wired: Wired, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    w = wired
    # A second consumer reached by webhook: its request is withdrawn too.
    hook = await w.bus.actor(
        w.acct, "consumer", config={"http.webhook.url": "http://127.0.0.1:9/hook"}
    )
    graph = {
        "nodes": [
            {
                "id": "emit",
                "type": "emitter",
                "actors": [w.em["name"]],
                "sourcematch": {"eventtypes": ["other.type"]},
            },
            {"id": "polled", "type": "consumer", "actors": [w.co["name"]]},
            {"id": "hooked", "type": "consumer", "actors": [hook["name"]]},
        ],
        "edges": ["emit->polled", "emit->hooked"],
    }
    await w.bus.pipeline(graph)
    leased_pid = (await emit(w))["process_id"]
    job = await poll(w.acct.http, w.wk["name"])
    assert job is not None
    pending_pid = (await emit(w, {"events": [{"type": "other.type", "items": ["a"]}]}))[
        "process_id"
    ]

    for pid in (leased_pid, pending_pid):
        r = await admin.post(f"/api/v1/processes/{pid}/cancel")
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["status"] == "error"
        assert body["status_reason"] == "canceled"
        assert body["ended_at"] is not None
    statuses = await db.fetch(
        "SELECT channel, status FROM requests WHERE process_id = ANY($1::uuid[])",
        [uuid.UUID(leased_pid), uuid.UUID(pending_pid)],
    )
    assert sorted((r["channel"], r["status"]) for r in statuses) == [
        ("poll", "canceled"),
        ("poll", "canceled"),
        ("webhook", "canceled"),
    ]
    # Nothing is handed out any more, and a late answer to the withdrawn request is refused.
    assert await poll(w.acct.http, w.co["name"]) is None
    assert (await report(w.acct.http, job["request_id"], status="success")).status_code == 409
    process = await _process(admin, leased_pid)
    assert {n["node_id"]: n["status"] for n in process["nodes"]} == {
        "emit": "done",
        "worker0": "canceled",
        "consumer1": "skipped",
    }
    assert process["postmortem"]["level"] == "notice"
    logs = (await admin.get(f"/api/v1/processes/{leased_pid}/logs")).json()["items"]
    assert any(e["text"] == "process canceled by admin; 1 open request withdrawn" for e in logs)


async def test_replay_links_to_the_original(
    wired: Wired, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    w = wired
    emission = await emit(w)
    pid = emission["process_id"]
    # Only an ended process is replayed: one envelope never has two live processes.
    assert_problem(await admin.post(f"/api/v1/processes/{pid}/replay"), 409, "only an ended")
    assert (await admin.post(f"/api/v1/processes/{pid}/cancel")).status_code == 200

    r = await admin.post(f"/api/v1/processes/{pid}/replay")
    assert r.status_code == 201, r.text
    replay = r.json()
    assert replay["replay_of"] == pid
    assert replay["id"] != pid
    assert replay["status"] == "running"
    assert replay["trigger_envelope_id"] == emission["envelope_id"]
    assert replay["pipeline_id"] == w.pipeline["id"]
    job = await poll(w.acct.http, w.wk["name"])
    assert job is not None
    assert job["process_id"] == replay["id"]
    assert job["inputs"][0]["envelope_id"] == emission["envelope_id"]
    page = (await admin.get("/api/v1/processes", params={"replay_of": pid})).json()
    assert [p["id"] for p in page["items"]] == [replay["id"]]
    logs = (await admin.get(f"/api/v1/processes/{pid}/logs")).json()["items"]
    assert f"replayed as process {replay['id']} by admin" in [e["text"] for e in logs]
    # The envelope still belongs to the original process.
    owner = await db.fetchval(
        "SELECT process_id FROM envelopes WHERE id = $1", uuid.UUID(emission["envelope_id"])
    )
    assert str(owner) == pid


async def test_replay_on_the_same_or_the_current_pipeline(
    wired: Wired, admin: httpx.AsyncClient
) -> None:
    w = wired
    pid = (await emit(w))["process_id"]
    assert (await admin.post(f"/api/v1/processes/{pid}/cancel")).status_code == 200
    # A new version replaces the pipeline: the old one is inactive.
    old = w.pipeline["id"]
    r = await admin.post(f"/api/v1/pipelines/{old}/status", json={"status": "inactive"})
    assert r.status_code == 200
    other = await w.bus.actor(w.acct, "consumer")
    graph = {
        "nodes": [
            {
                "id": "emit",
                "type": "emitter",
                "actors": [w.em["name"]],
                "sourcematch": {"eventtypes": ["order.created"]},
            },
            {"id": "sink", "type": "consumer", "actors": [other["name"]]},
        ],
        "edges": ["emit->sink"],
    }
    new = await w.bus.pipeline(graph)

    same = await admin.post(f"/api/v1/processes/{pid}/replay", json={"pipeline": "same"})
    assert same.status_code == 201, same.text
    assert same.json()["pipeline_id"] == old
    current = await admin.post(f"/api/v1/processes/{pid}/replay", json={"pipeline": "current"})
    assert current.status_code == 201, current.text
    assert current.json()["pipeline_id"] == new["id"]
    job = await poll(w.acct.http, other["name"])
    assert job is not None
    assert job["process_id"] == current.json()["id"]
    assert_problem(
        await admin.post(f"/api/v1/processes/{pid}/replay", json={"pipeline": "newest"}), 422
    )


async def test_bad_transitions_conflict_and_change_nothing(
    wired: Wired, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    w = wired
    pid = (await emit(w))["process_id"]
    assert (await admin.post(f"/api/v1/processes/{pid}/cancel")).status_code == 200
    before = await row_counts(db)
    for action, text in [
        ("pause", "only a running"),
        ("resume", "only a paused"),
        ("cancel", "only a running or paused"),
    ]:
        body = assert_problem(await admin.post(f"/api/v1/processes/{pid}/{action}"), 409, text)
        assert body["process_status"] == "error"
    missing = uuid.uuid4()
    for action in ("pause", "resume", "cancel", "replay"):
        assert_problem(await admin.post(f"/api/v1/processes/{missing}/{action}"), 404)
        assert_problem(await admin.post(f"/api/v1/processes/not-a-uuid/{action}"), 422)
    assert_problem(await admin.post(f"/api/v1/processes/{pid}/replay", json={"x": 1}), 422)
    # Accounts other than the admin may not control processes, not even their own.
    assert_problem(await w.acct.http.post(f"/api/v1/processes/{pid}/replay"), 403)
    assert await row_counts(db) == before


async def test_batch_control_by_filter_and_ids(
    wired: Wired, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    w = wired
    pids = [(await emit(w))["process_id"] for _ in range(5)]
    flt = {"status": ["running"], "emitter": w.em["name"]}

    r = await admin.post("/api/v1/processes/pause", json={**flt, "dry_run": True})
    assert r.status_code == 200, r.text
    assert r.json()["matched"] == 5
    assert r.json()["changed"] == 0
    assert await db.fetchval("SELECT count(*) FROM processes WHERE status = 'paused'") == 0

    r = await admin.post("/api/v1/processes/pause", json=flt)
    assert r.json() == {
        "action": "pause",
        "dry_run": False,
        "matched": 5,
        "changed": 5,
        "skipped": 0,
        "failed": 0,
        "errors": [],
    }
    assert await poll(w.acct.http, w.wk["name"]) is None

    # With progress lines: start, one per batch, end with the result.
    r = await admin.post(
        "/api/v1/processes/resume",
        json={"status": ["paused"]},
        headers={"Accept": "application/x-ndjson"},
    )
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert lines[0] == {"event": "start", "total": 5, "done": 0}
    assert lines[-1]["event"] == "end"
    assert lines[-1]["result"]["changed"] == 5
    assert all(line["event"] == "progress" for line in lines[1:-1])

    # Ids: one already ended is skipped, not failed.
    assert (await admin.post(f"/api/v1/processes/{pids[0]}/cancel")).status_code == 200
    r = await admin.post("/api/v1/processes/cancel", json={"ids": pids[:3]})
    assert r.json()["matched"] == 3
    assert r.json()["changed"] == 2
    assert r.json()["skipped"] == 1
    # Replay them all: three new processes, each linked to its original.
    r = await admin.post("/api/v1/processes/replay", json={"ids": pids[:3]})
    assert r.json()["changed"] == 3, r.json()
    rows = await db.fetch("SELECT replay_of FROM processes WHERE replay_of IS NOT NULL")
    assert sorted(str(row["replay_of"]) for row in rows) == sorted(pids[:3])


async def test_batch_in_several_transactions(
    wired: Wired, admin: httpx.AsyncClient, settings: Any, db: asyncpg.Connection
) -> None:
    settings.ops_batch_size = 2
    w = wired
    for _ in range(5):
        await emit(w)
    r = await admin.post(
        "/api/v1/processes/cancel", json={"all": True}, headers={"Accept": "application/x-ndjson"}
    )
    lines = [json.loads(line) for line in r.text.splitlines()]
    assert [line["done"] for line in lines if line["event"] == "progress"] == [2, 4, 5]
    assert lines[-1]["result"]["changed"] == 5
    assert await db.fetchval("SELECT count(*) FROM processes WHERE status = 'error'") == 5


async def test_a_webhook_retry_and_a_cancel_of_its_process_do_not_deadlock(
    wired: Wired, db: asyncpg.Connection, database_url: str
) -> None:
    """A webhook attempt to retry later takes its process's lock before its request's (the
    order of every writer of a process): with the process locked by another transaction (an
    operator's cancel), the retry waits without holding the request, so that transaction can
    still update the request. It held the request first, then waited on the process for its
    log line's foreign key: a deadlock."""
    from app.webhooks.service import AttemptResult, Job, Outcomes
    from app.webhooks.settings import parse_webhook_settings
    from tests.conftest import _plain

    w = wired
    await emit(w)
    leased = await poll(w.acct.http, w.wk["name"])
    assert leased is not None
    request_id = uuid.UUID(leased["request_id"])
    row = await db.fetchrow(
        "SELECT process_id, node_id, created_at FROM requests WHERE id = $1", request_id
    )
    settings = parse_webhook_settings({"http.webhook.url": "http://127.0.0.1:9/hook"})
    assert settings is not None
    job = Job(
        request_id,
        uuid.UUID(w.wk["id"]),
        w.wk["name"],
        row["process_id"],
        row["node_id"],
        leased["attempt"],
        row["created_at"],
        settings,
    )
    state = w.bus.app.state.xbus
    outcomes = Outcomes(state.director, state.settings)
    cancel = await asyncpg.connect(_plain(database_url))
    try:
        await cancel.execute("BEGIN")
        await cancel.execute("SET LOCAL lock_timeout = '5s'")
        await cancel.execute("SELECT 1 FROM processes WHERE id = $1 FOR UPDATE", row["process_id"])

        async def retry() -> None:
            async with state.db.working() as work:
                failed = AttemptResult(datetime.now(UTC), 0.001, error="connection refused")
                await outcomes.record(work, job, failed)

        recording = asyncio.create_task(retry())
        await asyncio.sleep(0.5)  # the retry is waiting on the process now
        assert not recording.done()
        # The request is free: the cancel's update does not wait on the retry.
        await cancel.execute("UPDATE requests SET updated_at = now() WHERE id = $1", request_id)
        await cancel.execute("COMMIT")
        await asyncio.wait_for(recording, 10)
    finally:
        await cancel.close()
    status = await db.fetchval("SELECT status FROM requests WHERE id = $1", request_id)
    assert status == "pending"  # rescheduled by the retry, once the process was free
