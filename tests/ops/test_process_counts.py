"""The process summary from the counts kept beside the rows (migration 0008): always equal
to a COUNT of the processes table, after every kind of change, across folds of the deltas,
under concurrent writers, and filled by the migration for the rows already there."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from app import migrations
from app.ops import repository, supervision
from tests.conftest import _plain, _recreate_database, _with_database, new_name
from tests.ops.conftest import ENVELOPE, Wired, emit, poll, report, seed_processes

KEY = "pipeline_id, emitter_id, status, result_acked, pm_level, pm_status"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # The tests fold when they mean to (the duty could fold at any time too: it must not
    # matter, and the concurrent test folds all along).
    return {"process_counts_fold_interval": 3600.0}


def summary_of(rows: list[asyncpg.Record]) -> dict[str, Any]:
    """What /api/v1/stats/processes should answer for these (key..., n) groups, as plain
    dicts (pipelines and emitters by id, orders left out)."""
    by_status: Counter[str] = Counter()
    pipelines: dict[str | None, Counter[str]] = defaultdict(Counter)
    emitters: dict[str | None, Counter[str]] = defaultdict(Counter)
    postmortem: dict[str, Counter[str]] = defaultdict(Counter)
    acked = 0
    for r in rows:
        by_status[r["status"]] += r["n"]
        pipelines[str(r["pipeline_id"]) if r["pipeline_id"] else None][r["status"]] += r["n"]
        emitters[str(r["emitter_id"]) if r["emitter_id"] else None][r["status"]] += r["n"]
        acked += r["n"] if r["result_acked"] else 0
        if r["pm_level"] is not None:
            postmortem[r["pm_level"]][r["pm_status"] or "none"] += r["n"]
    total = sum(by_status.values())
    return {
        "total": total,
        "by_status": dict(by_status),
        "acked": acked,
        "not_acked": total - acked,
        "by_pipeline": {k: dict(v) for k, v in pipelines.items()},
        "by_emitter": {k: dict(v) for k, v in emitters.items()},
        "postmortem": {k: dict(v) for k, v in postmortem.items()},
    }


def plain(answer: dict[str, Any]) -> dict[str, Any]:
    """An answer of /api/v1/stats/processes in the shape of `summary_of`."""
    for group in ("by_pipeline", "by_emitter"):
        ids = [c["pipeline_id" if group == "by_pipeline" else "emitter_id"] for c in answer[group]]
        assert all(c["total"] == sum(c["by_status"].values()) for c in answer[group]), answer[group]
        assert len(set(ids)) == len(ids), answer[group]
    return {
        **{k: answer[k] for k in ("total", "by_status", "acked", "not_acked", "postmortem")},
        "by_pipeline": {c["pipeline_id"]: c["by_status"] for c in answer["by_pipeline"]},
        "by_emitter": {c["emitter_id"]: c["by_status"] for c in answer["by_emitter"]},
    }


async def counted(db: asyncpg.Connection, where: str = "true", *args: Any) -> dict[str, Any]:
    """The summary by a COUNT of the processes table itself."""
    rows = await db.fetch(
        f"SELECT {KEY}, count(*) AS n FROM processes WHERE {where} GROUP BY {KEY}", *args
    )
    return summary_of(rows)


async def check(
    admin: httpx.AsyncClient, db: asyncpg.Connection, params: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The endpoint's answer (from the kept counts) equals a COUNT; returns it."""
    where, args = "true", list[Any]()
    for name, value in (params or {}).items():
        if name == "status":
            args.append(value if isinstance(value, list) else [value])
            where += f" AND status = ANY(${len(args)}::text[])"
        elif name == "pipeline_id":
            args.append(uuid.UUID(value))
            where += f" AND pipeline_id = ${len(args)}"
        elif name == "emitter":
            args.append(value)
            where += (
                f" AND emitter_id IN (SELECT id FROM actors WHERE name = ${len(args)}"
                f" OR id::text = ${len(args)})"
            )
    r = await admin.get("/api/v1/stats/processes", params=params)
    assert r.status_code == 200, r.text
    answer = plain(r.json())
    assert answer == await counted(db, where, *args)
    return answer


async def _succeed(client: httpx.AsyncClient, actor: str, **body: Any) -> None:
    job = await poll(client, actor)
    assert job is not None
    r = await report(client, job["request_id"], status="success", **body)
    assert r.status_code == 200, r.text


async def test_summary_equals_a_count_after_every_kind_of_change(
    app: FastAPI, wired: Wired, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    w = wired
    state = app.state.xbus
    out = {"default": {"events": [{"type": "order.enriched", "items": ["e"]}]}}
    everything: list[dict[str, Any]] = [
        {},
        {"status": "done"},
        {"status": ["running", "error"]},
        {"pipeline_id": w.pipeline["id"]},
        {"emitter": w.em["name"]},
        {"emitter": w.em["id"], "status": "error"},
        {"emitter": "nobody"},
    ]

    async def check_all() -> None:
        for params in everything:
            await check(admin, db, params)

    await check_all()  # nothing yet
    for _ in range(8):
        await emit(w)
    await check_all()
    # done: worker then consumer; one done with a warning (a postmortem entry)
    for _ in range(3):
        await _succeed(w.acct.http, w.wk["name"], outputs=out)
    await _succeed(w.acct.http, w.co["name"])
    await _succeed(w.acct.http, w.co["name"])
    warning = [{"level": "warning", "text": "odd"}]
    await _succeed(w.acct.http, w.co["name"], messages=warning)
    # error at the worker
    job = await poll(w.acct.http, w.wk["name"])
    assert job is not None
    await report(w.acct.http, job["request_id"], status="error", messages=[{"text": "boom"}])
    await check_all()
    # acks of ended processes, by their emitter
    ended = [str(r["id"]) for r in await db.fetch("SELECT id FROM processes WHERE status = 'done'")]
    for pid in ended[:2]:
        assert (await w.acct.http.post(f"/api/v1/processes/{pid}/ack")).status_code == 200
    # postmortem status changes
    for row in await db.fetch("SELECT id FROM processes WHERE pm_level IS NOT NULL"):
        r = await admin.patch(
            f"/api/v1/processes/{row['id']}/postmortem", json={"status": "opened"}
        )
        assert r.status_code == 200, r.text
    await check_all()
    # pause, resume, cancel (alone and in a batch), replay
    running = [
        str(r["id"]) for r in await db.fetch("SELECT id FROM processes WHERE status = 'running'")
    ]
    assert (await admin.post(f"/api/v1/processes/{running[0]}/pause")).status_code == 200
    await check_all()
    assert (await admin.post(f"/api/v1/processes/{running[0]}/resume")).status_code == 200
    assert (await admin.post(f"/api/v1/processes/{running[0]}/cancel")).status_code == 200
    r = await admin.post("/api/v1/processes/cancel", json={"ids": running[1:3]})
    assert r.json()["changed"] == 2, r.json()
    await check_all()
    r = await admin.post("/api/v1/processes/replay", json={"ids": running[:2]})
    assert r.json()["changed"] == 2, r.json()
    await check_all()

    # A fold moves the deltas into the totals; the answers stay the same.
    before = await check(admin, db)
    assert await db.fetchval("SELECT count(*) FROM process_count_deltas") > 0
    assert await supervision.fold_process_counts(state.db) > 0
    assert await db.fetchval("SELECT count(*) FROM process_count_deltas") == 0
    assert await check(admin, db) == before
    await check_all()
    assert await supervision.fold_process_counts(state.db) == 0  # nothing left to fold

    # Purge (ended processes, batched deletes), then fold again.
    r = await admin.post("/api/v1/processes/purge", json={"status": ["done"]})
    assert r.status_code == 200, r.text
    assert r.json()["deleted"] > 0
    await check_all()
    await supervision.fold_process_counts(state.db)
    await check_all()

    # Rows written by SQL count too (statement triggers: any writer, not only the bus).
    await seed_processes(db, 300, status="error", pipeline_id=uuid.UUID(w.pipeline["id"]))
    await db.execute(
        "UPDATE processes SET pm_level = 'error', pm_status = 'new' "
        "WHERE status = 'error' AND pm_level IS NULL"
    )
    await check_all()
    # Changes rolled back leave no count behind.
    for change in (
        "DELETE FROM processes WHERE status = 'error'",
        "UPDATE processes SET result_acked = NOT result_acked",
    ):
        tx = db.transaction()
        await tx.start()
        await db.execute(change)
        await tx.rollback()
    await check_all()

    # The pipeline and the emitter deleted: their processes stay, unlinked, counted under
    # no pipeline and no emitter.
    r = await admin.post(
        f"/api/v1/pipelines/{w.pipeline['id']}/status", json={"status": "inactive"}
    )
    assert r.status_code == 200, r.text
    assert (await admin.delete(f"/api/v1/pipelines/{w.pipeline['id']}")).status_code == 204
    assert (await admin.delete(f"/api/v1/actors/{w.em['name']}")).status_code == 204
    answer = await check(admin, db)
    assert set(answer["by_pipeline"]) == {None}
    assert set(answer["by_emitter"]) == {None}
    await supervision.fold_process_counts(state.db)
    assert await check(admin, db) == answer

    # TRUNCATE (no DELETE trigger) takes the counts along.
    await db.execute("TRUNCATE processes CASCADE")
    assert (await check(admin, db))["total"] == 0
    assert await db.fetchval("SELECT count(*) FROM process_counts") == 0


async def test_a_created_range_is_counted_from_the_rows(
    wired: Wired, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    """With created_after/created_before the summary counts the rows of that range (the
    counts kept have no time): the same answer as a COUNT of the range."""
    await seed_processes(db, 50, status="done")  # a second apart, the newest now
    await emit(wired)
    newest = await db.fetchval("SELECT max(created_at) FROM processes WHERE status = 'done'")
    cutoff = newest - timedelta(seconds=9.5)
    r = await admin.get("/api/v1/stats/processes", params={"created_after": cutoff.isoformat()})
    assert r.status_code == 200, r.text
    assert plain(r.json()) == await counted(db, "created_at >= $1", cutoff)
    assert r.json()["total"] == 11  # the 10 newest seeded, and the emission
    r = await admin.get(
        "/api/v1/stats/processes",
        params={"created_before": cutoff.isoformat(), "status": "done"},
    )
    assert plain(r.json()) == await counted(db, "created_at < $1 AND status = 'done'", cutoff)
    assert r.json()["total"] == 40


async def test_summary_is_exact_under_concurrent_writers(
    app: FastAPI,
    wired: Wired,
    admin: httpx.AsyncClient,
    db: asyncpg.Connection,
    database_url: str,
) -> None:
    """Emitters, a worker and a consumer, acks, cancels, purges, raw SQL writers that commit
    or roll back, and folds, all at once; meanwhile, in one REPEATABLE READ snapshot, the
    kept counts read by the summary's own statement equal a COUNT of the rows."""
    w = wired
    state = app.state.xbus
    stop = asyncio.Event()
    errors: list[BaseException] = []
    snapshots = 0
    happened: Counter[str] = Counter()
    out = {"default": {"events": [{"type": "order.enriched", "items": ["e"]}]}}

    async def loop(body: Callable[[], Any]) -> None:
        try:
            while not stop.is_set():
                await body()
        except Exception as error:
            errors.append(error)
            stop.set()

    async def emitter() -> None:
        r = await w.acct.http.post(f"/api/v1/actors/{w.em['name']}/output", json=ENVELOPE)
        assert r.status_code == 202, r.text

    async def worker() -> None:
        job = await poll(w.acct.http, w.wk["name"])
        if job is None:
            await asyncio.sleep(0.01)
            return
        if random.random() < 0.3:
            r = await report(
                w.acct.http, job["request_id"], status="error", messages=[{"text": "no"}]
            )
            happened["error"] += r.status_code == 200
        else:
            await report(w.acct.http, job["request_id"], status="success", outputs=out)

    async def consumer() -> None:
        job = await poll(w.acct.http, w.co["name"])
        if job is None:
            await asyncio.sleep(0.01)
            return
        messages = [{"level": "warning", "text": "hm"}] if random.random() < 0.3 else []
        r = await report(w.acct.http, job["request_id"], status="success", messages=messages)
        happened["done"] += r.status_code == 200

    async def operator() -> None:
        ids = [
            str(r["id"])
            for r in await db.fetch(
                "SELECT id FROM processes WHERE status IN ('done', 'error') "
                "ORDER BY random() LIMIT 3"
            )
        ]
        for pid in ids[:1]:
            r = await w.acct.http.post(f"/api/v1/processes/{pid}/ack")
            happened["ack"] += r.status_code == 200
        for pid in ids[1:2]:
            r = await admin.patch(f"/api/v1/processes/{pid}/postmortem", json={"status": "closed"})
            happened["postmortem"] += r.status_code == 200
        running = await db.fetchval(
            "SELECT id FROM processes WHERE status = 'running' ORDER BY random() LIMIT 1"
        )
        if running is not None:
            r = await admin.post(f"/api/v1/processes/{running}/cancel")
            happened["cancel"] += r.status_code == 200
        if random.random() < 0.2:
            r = await admin.post("/api/v1/processes/purge", json={"status": ["done"]})
            happened["purge"] += r.json()["deleted"] > 0
        await asyncio.sleep(0.02)

    sql = await asyncpg.connect(_plain(database_url))

    async def raw_writer() -> None:
        """Any writer counts, not only the bus; half of its transactions roll back."""
        tx = sql.transaction()
        await tx.start()
        await sql.execute(
            "UPDATE processes SET result_acked = NOT result_acked WHERE id IN "
            "(SELECT id FROM processes WHERE status IN ('done', 'error') "
            "ORDER BY random() LIMIT 5)"
        )
        await sql.execute(
            "INSERT INTO processes (id, status, created_at, status_changed_at) "
            "SELECT gen_random_uuid(), 'done', now(), now() FROM generate_series(1, 3)"
        )
        await asyncio.sleep(0.01)  # others commit meanwhile
        rollback = random.random() < 0.5
        await (tx.rollback() if rollback else tx.commit())
        happened["rollback" if rollback else "commit"] += 1
        await asyncio.sleep(0.01)

    async def folder() -> None:
        happened["fold"] += await supervision.fold_process_counts(state.db) > 0
        await asyncio.sleep(0.03)

    async def snapshot() -> None:
        nonlocal snapshots
        async with state.db.sessionmaker() as session:
            await session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            kept = await repository.kept_process_counts(session, [], None, None)
            rows = await session.execute(
                sa.text(f"SELECT {KEY}, count(*) AS n FROM processes GROUP BY {KEY}")
            )
            direct = {tuple(r[:6]): r.n for r in rows}
            await session.rollback()
        got = {
            (
                r.pipeline_id,
                r.emitter_id,
                str(r.status),
                r.result_acked,
                r.pm_level,
                r.pm_status,
            ): r.n
            for r in kept
        }
        assert got == direct
        snapshots += 1
        await asyncio.sleep(0.01)

    tasks = [
        *(asyncio.create_task(loop(emitter)) for _ in range(4)),
        asyncio.create_task(loop(worker)),
        asyncio.create_task(loop(worker)),
        asyncio.create_task(loop(consumer)),
        asyncio.create_task(loop(operator)),
        asyncio.create_task(loop(raw_writer)),
        asyncio.create_task(loop(folder)),
        asyncio.create_task(loop(snapshot)),
    ]
    try:
        await asyncio.wait_for(stop.wait(), timeout=8)
    except TimeoutError:
        stop.set()
    await asyncio.gather(*tasks)
    await sql.close()
    if errors:
        raise errors[0]
    assert snapshots >= 10
    kinds = ("done", "error", "ack", "postmortem", "cancel", "purge", "commit", "rollback", "fold")
    assert all(happened[kind] for kind in kinds), happened
    print(f"\nconcurrent writers: {snapshots} snapshots checked; {dict(happened)}")
    await check(admin, db)
    await supervision.fold_process_counts(state.db)
    await check(admin, db)


async def test_the_migration_counts_the_rows_already_there(pg_server_url: str) -> None:
    database = "xbus_counts_migration"
    await _recreate_database(pg_server_url, database)
    url = _with_database(pg_server_url, database)
    await asyncio.to_thread(migrations.upgrade, url, "0007")
    conn = await asyncpg.connect(_plain(url))
    try:
        account = await conn.fetchval(
            "INSERT INTO accounts (id, name, type, status) "
            "VALUES (gen_random_uuid(), $1, 'gateway', 'enabled') RETURNING id",
            new_name("acct"),
        )
        emitter = await conn.fetchval(
            "INSERT INTO actors (id, account_id, name, kind, status) "
            "VALUES (gen_random_uuid(), $1, $2, 'emitter', 'enabled') RETURNING id",
            account,
            new_name("em"),
        )
        await conn.execute(
            """
            INSERT INTO processes (id, emitter_id, status, result_acked, pm_level, pm_status)
            SELECT gen_random_uuid(), CASE WHEN g % 5 = 0 THEN NULL ELSE $1::uuid END,
                   (ARRAY['running', 'done', 'error'])[g % 3 + 1], g % 2 = 0,
                   CASE WHEN g % 3 = 2 THEN 'error' WHEN g % 7 = 0 THEN 'warning' END,
                   CASE WHEN g % 3 = 2 THEN (ARRAY['new', 'opened', 'closed'])[g % 4 + 1]
                   END
            FROM generate_series(1, 5000) g
            """,
            emitter,
        )
        before = await counted(conn)
        await asyncio.to_thread(migrations.upgrade, url)
        kept = await conn.fetch(f"SELECT {KEY}, n FROM process_counts")
        assert summary_of(kept) == before
        assert await conn.fetchval("SELECT count(*) FROM process_count_deltas") == 0
        # and the triggers count from there on
        await conn.execute("DELETE FROM processes WHERE status = 'running'")
        both = await conn.fetch(
            f"SELECT {KEY}, sum(n)::bigint AS n FROM (SELECT * FROM process_counts "
            f"UNION ALL SELECT * FROM process_count_deltas) k GROUP BY {KEY} "
            "HAVING sum(n) <> 0"
        )
        assert summary_of(both) == await counted(conn)
        # down and up again: counted again from the rows
        await asyncio.to_thread(migrations.downgrade, url, "0007")
        assert await conn.fetchval("SELECT to_regclass('process_counts')") is None
        triggers = await conn.fetchval(
            "SELECT count(*) FROM pg_trigger WHERE tgrelid = 'processes'::regclass "
            "AND NOT tgisinternal"
        )
        assert triggers == 0
        await asyncio.to_thread(migrations.upgrade, url)
        kept = await conn.fetch(f"SELECT {KEY}, n FROM process_counts")
        assert summary_of(kept) == await counted(conn)
    finally:
        await conn.close()
