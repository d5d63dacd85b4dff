"""Postmortem list and updates; the process summary; storage statistics."""

from __future__ import annotations

import uuid

import asyncpg
import httpx

from app.config import Settings
from tests.conftest import assert_problem, row_counts
from tests.ops.conftest import Wired, emit, poll, report, seed_processes


async def _fail_one(w: Wired, text: str) -> str:
    pid: str = (await emit(w))["process_id"]
    job = await poll(w.acct.http, w.wk["name"])
    assert job is not None
    r = await report(
        w.acct.http, job["request_id"], status="error", messages=[{"level": "error", "text": text}]
    )
    assert r.status_code == 200
    return pid


async def _warn_one(w: Wired) -> str:
    pid: str = (await emit(w))["process_id"]
    job = await poll(w.acct.http, w.wk["name"])
    assert job is not None
    out = {"events": [{"type": "x", "items": ["y"]}]}
    msgs = [{"level": "warning", "text": "odd"}]
    await report(w.acct.http, job["request_id"], status="success", outputs={"default": out})
    job = await poll(w.acct.http, w.co["name"])
    assert job is not None
    await report(w.acct.http, job["request_id"], status="success", messages=msgs)
    return pid


async def test_postmortem_list_and_set(
    wired: Wired, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    w = wired
    failed = await _fail_one(w, "cannot parse order 2")
    warned = await _warn_one(w)
    fine = (await emit(w))["process_id"]

    r = await admin.get("/api/v1/postmortems")
    assert r.status_code == 200, r.text
    page = r.json()
    assert [i["process"]["id"] for i in page["items"]] == [warned, failed]
    entry = page["items"][1]
    assert entry["process"]["postmortem"]["level"] == "error"
    assert entry["process"]["postmortem"]["status"] == "new"
    assert "cannot parse order 2" in [e["text"] for e in entry["logs"]]
    assert entry["logs_truncated"] is False

    r = await admin.get("/api/v1/postmortems", params={"level": "error", "logs": 1})
    [only] = r.json()["items"]
    assert only["process"]["id"] == failed
    assert len(only["logs"]) == 1
    assert only["logs_truncated"] is True

    r = await admin.patch(
        f"/api/v1/processes/{failed}/postmortem", json={"status": "opened", "comment": "on it"}
    )
    assert r.status_code == 200, r.text
    assert r.json()["postmortem"]["status"] == "opened"
    assert r.json()["postmortem"]["comment"] == "on it"
    r = await admin.patch(f"/api/v1/processes/{warned}/postmortem", json={"status": "closed"})
    assert r.json()["postmortem"]["status"] == "closed"

    r = await admin.get("/api/v1/postmortems", params=[("status", "new"), ("status", "opened")])
    assert [i["process"]["id"] for i in r.json()["items"]] == [failed]
    r = await admin.get("/api/v1/postmortems", params={"status": "closed", "limit": 1})
    assert [i["process"]["id"] for i in r.json()["items"]] == [warned]
    # Pages, newest first.
    r = await admin.get("/api/v1/postmortems", params={"limit": 1})
    assert r.json()["next_cursor"]
    r2 = await admin.get(
        "/api/v1/postmortems", params={"limit": 1, "cursor": r.json()["next_cursor"]}
    )
    assert [i["process"]["id"] for i in r2.json()["items"]] == [failed]
    assert r2.json()["next_cursor"] is None

    before = await row_counts(db)
    assert_problem(
        await admin.patch(f"/api/v1/processes/{fine}/postmortem", json={"status": "closed"}),
        409,
        "no postmortem",
    )
    assert_problem(
        await admin.patch(f"/api/v1/processes/{uuid.uuid4()}/postmortem", json={"status": "new"}),
        404,
    )
    for body in ({}, {"status": "forgotten"}, {"comment": "a\x00b"}, {"comment": "x" * 10_001}):
        assert_problem(await admin.patch(f"/api/v1/processes/{failed}/postmortem", json=body), 422)
    for params in ({"level": "fatal"}, {"logs": -1}, {"logs": 1001}, {"limit": 0}):
        assert_problem(await admin.get("/api/v1/postmortems", params=params), 422)
    assert_problem(await admin.get("/api/v1/postmortems", params={"cursor": "zzz"}), 400)
    assert_problem(await w.acct.http.get("/api/v1/postmortems"), 403)
    assert await row_counts(db) == before
    pm = await db.fetchrow(
        "SELECT pm_status, pm_comment FROM processes WHERE id = $1", uuid.UUID(failed)
    )
    assert tuple(pm) == ("opened", "on it")


async def test_process_summary(wired: Wired, admin: httpx.AsyncClient) -> None:
    w = wired
    await _fail_one(w, "boom")
    for _ in range(2):
        await emit(w)
    r = await admin.get("/api/v1/stats/processes")
    assert r.status_code == 200, r.text
    summary = r.json()
    assert summary["total"] == 3
    assert summary["by_status"] == {"error": 1, "running": 2}
    assert summary["acked"] == 0
    assert summary["not_acked"] == 3
    [pipeline] = summary["by_pipeline"]
    assert pipeline["pipeline_id"] == w.pipeline["id"]
    assert pipeline["name"] == w.pipeline["name"]
    assert pipeline["total"] == 3
    [emitter] = summary["by_emitter"]
    assert emitter["name"] == w.em["name"]
    assert emitter["by_status"] == {"error": 1, "running": 2}
    assert summary["postmortem"] == {"error": {"new": 1}}
    r = await admin.get("/api/v1/stats/processes", params={"status": "running"})
    assert r.json()["total"] == 2
    r = await admin.get("/api/v1/stats/processes", params={"emitter": "nobody"})
    assert r.json()["total"] == 0
    assert_problem(await admin.get("/api/v1/stats/processes", params={"status": "x"}), 422)
    assert_problem(await w.acct.http.get("/api/v1/stats/processes"), 403)


async def test_storage_stats(
    wired: Wired, admin: httpx.AsyncClient, db: asyncpg.Connection, settings: Settings
) -> None:
    await emit(wired)
    await seed_processes(db, 250, logs_per_process=2)
    r = await admin.get("/api/v1/stats")
    assert r.status_code == 200, r.text
    stats = r.json()
    kinds = {k["kind"]: k for k in stats["kinds"]}
    assert kinds["processes"]["rows"] == 251
    assert kinds["processes"]["exact"] is True
    assert kinds["logs"]["rows"] == await db.fetchval("SELECT count(*) FROM log_entries")
    assert kinds["envelopes"]["rows"] == 1
    assert kinds["actors"]["rows"] == 3
    assert kinds["pipelines"]["rows"] == 1
    assert kinds["processes"]["bytes"] > 0
    assert {t["table"] for t in kinds["envelopes"]["tables"]} >= {"envelopes", "events", "items"}
    assert stats["database_bytes"] >= sum(k["bytes"] for k in stats["kinds"])
    assert_problem(await wired.acct.http.get("/api/v1/stats"), 403)

    # Large tables are estimated (PostgreSQL's statistics), not counted.
    settings.stats_exact_max_rows = 100
    await db.execute("ANALYZE processes")
    kinds = {k["kind"]: k for k in (await admin.get("/api/v1/stats")).json()["kinds"]}
    assert kinds["processes"]["exact"] is False
    assert 200 <= kinds["processes"]["rows"] <= 300
    assert kinds["actors"]["exact"] is True
