"""The hot routes' unit of work (`app.store.connection.Work`): a connection of the plain
asyncpg pool, no ORM session. It must commit, roll back, run its after-commit hooks and read
JSON exactly as a session does, since the same statements run on both."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from app.commit_hooks import notify_after_commit, on_commit
from app.db import Database
from app.models import Account
from app.store.connection import (
    TransactionAborted,
    driver_connection,
    reading,
    savepoint,
)


def _db(app: FastAPI) -> Database:
    db: Database = app.state.xbus.db
    return db


async def _backend(conn: Any) -> int:
    pid: int = await conn.fetchval("SELECT pg_backend_pid()")
    return pid


async def test_a_statement_without_begin_commits_by_itself(app: FastAPI) -> None:
    db = _db(app)
    work = db.work()
    conn = await driver_connection(work, begin=False)
    assert not work.in_transaction
    assert await conn.fetchval("SELECT txid_current_if_assigned()") is None
    await work.commit()
    # The connection went back to the pool (others may be in use meanwhile: the NATS and
    # webhook dispatchers run their units on this pool too).
    with pytest.raises(asyncpg.InterfaceError, match="released back to the pool"):
        await conn.fetchval("SELECT 1")
    _, opened, _ = db.hot_pool()
    assert opened >= 1


async def test_commit_keeps_and_tells_rollback_forgets(
    app: FastAPI, db: asyncpg.Connection
) -> None:
    told: list[str] = []
    published: list[list[str]] = []
    database = _db(app)
    notifier = app.state.xbus.notifier
    original = notifier.publish

    def publish(keys: list[str]) -> None:
        published.append(keys)
        original(keys)

    notifier.publish = publish
    try:
        for outcome in ("commit", "rollback"):
            work = database.work()
            conn = await driver_connection(work)
            assert work.in_transaction
            name = f"work-{outcome}-{uuid.uuid4().hex[:8]}"
            await conn.execute(
                "INSERT INTO accounts (id, name, type, status, is_admin, created_at, updated_at)"
                " VALUES ($1, $2, 'gateway', 'enabled', false, now(), now())",
                uuid.uuid4(),
                name,
            )
            on_commit(work, lambda outcome=outcome: told.append(outcome))  # type: ignore[misc]
            notify_after_commit(work, f"key-{outcome}")
            # Nothing is visible, nor told, before the end of the unit.
            assert await db.fetchval("SELECT count(*) FROM accounts WHERE name = $1", name) == 0
            assert told == [] if outcome == "commit" else told == ["commit"]
            await (work.commit() if outcome == "commit" else work.rollback())
            stored = await db.fetchval("SELECT count(*) FROM accounts WHERE name = $1", name)
            assert stored == (1 if outcome == "commit" else 0)
    finally:
        notifier.publish = original
    assert told == ["commit"]
    assert ["key-commit"] in published
    assert ["key-rollback"] not in published


async def test_json_reads_as_on_a_session(app: FastAPI) -> None:
    """JSON and JSONB come out as Python values and go in as text on both kinds of unit."""
    database = _db(app)
    statement = "SELECT $1::jsonb, $2::json, '{\"a\": [1, 2]}'::jsonb"
    async with database.session() as session:
        on_session = await (await driver_connection(session)).fetchrow(
            statement, '{"x": 1}', "[true]"
        )
    async with database.working() as work:
        on_work = await (await driver_connection(work)).fetchrow(statement, '{"x": 1}', "[true]")
    assert tuple(on_work) == tuple(on_session) == ({"x": 1}, [True], {"a": [1, 2]})


async def test_reading_beside_a_work_sees_committed_data_only(app: FastAPI) -> None:
    """What a cache reads on a miss goes through a session of its own: committed data, on
    another connection than the unit's."""
    database = _db(app)
    async with database.working() as work:
        conn = await driver_connection(work)
        name = f"unseen-{uuid.uuid4().hex[:8]}"
        await conn.execute(
            "INSERT INTO accounts (id, name, type, status, is_admin, created_at, updated_at)"
            " VALUES ($1, $2, 'gateway', 'enabled', false, now(), now())",
            uuid.uuid4(),
            name,
        )
        async with reading(work) as orm:
            assert await orm.scalar(sa.select(Account.id).where(Account.name == name)) is None
            orm_pid = await orm.scalar(sa.text("SELECT pg_backend_pid()"))
        assert orm_pid != await _backend(conn)
        await conn.execute("DELETE FROM accounts WHERE name = $1", name)


async def test_a_lost_connection_is_closed_not_given_back(
    app: FastAPI, db: asyncpg.Connection
) -> None:
    database = _db(app)
    work = database.work()
    conn = await driver_connection(work)
    pid = await _backend(conn)
    # With a timeout, pg_terminate_backend returns once the backend is gone.
    assert await db.fetchval("SELECT pg_terminate_backend($1, 10000)", pid)
    with pytest.raises((asyncpg.PostgresError, asyncpg.InterfaceError, OSError)) as raised:
        await conn.fetchval("SELECT 1")
    await work.close(raised.value)
    # The next unit gets a live connection, another backend.
    async with database.working() as again:
        other = await driver_connection(again)
        assert await other.fetchval("SELECT 1") == 1
        assert await _backend(other) != pid


async def test_the_hot_routes_run_on_the_pool(
    app: FastAPI, admin: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hot routes, and only they, run their unit of work on the pool
    (`Database.working`, opened in the route: no generator dependency)."""
    db = _db(app)
    opened_by_request: list[bool] = []
    working = db.working
    test_task = asyncio.current_task()

    def spied() -> Any:
        # The duties open units of their own meanwhile: only the request's count (httpx's
        # ASGI transport runs the app in this task).
        opened_by_request.append(asyncio.current_task() is test_task)
        return working()

    monkeypatch.setattr(db, "working", spied)
    missing = uuid.uuid4()
    hot = [
        ("POST", "/api/v1/actors/nobody/output", {"events": []}),
        ("POST", "/api/v1/actors/nobody/outputs", []),
        ("GET", "/api/v1/actors/nobody/requests", None),
        ("POST", f"/api/v1/requests/{missing}/state", {"status": "success"}),
        ("POST", "/api/v1/requests/states", {"states": []}),
    ]
    for method, path, body in hot:
        opened_by_request.clear()
        r = await admin.request(method, path, json=body)
        assert r.status_code < 500, r.text
        assert any(opened_by_request), f"{method} {path} did not run on the pool"
    for method, path in [("GET", "/api/v1/actors"), ("GET", "/api/v1/processes")]:
        opened_by_request.clear()
        r = await admin.request(method, path)
        assert r.status_code == 200, r.text
        assert not any(opened_by_request), f"{method} {path} ran on the pool"


async def test_a_unit_never_ended_does_not_hold_the_shutdown(
    database_url: str, db: asyncpg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    """asyncpg's pool closes only once every connection is back: one a unit never gave back
    is closed after a grace instead of holding xbusd's shutdown forever."""
    from sqlalchemy.ext.asyncio import create_async_engine

    from app import db as db_module

    monkeypatch.setattr(db_module, "_POOL_CLOSE_GRACE", 0.5)
    database = Database(create_async_engine(db_module.async_url(database_url)), None, 2)
    forgotten = database.work()
    pid = await _backend(await driver_connection(forgotten))
    await asyncio.wait_for(database.close(), 5)
    for _ in range(50):  # the backend ends as soon as it sees its client gone
        if not await db.fetchval("SELECT count(*) FROM pg_stat_activity WHERE pid = $1", pid):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the connection of the unit never ended is still open")


@pytest.mark.parametrize("settings_overrides", [{"db_hot_pool_size": 1}])
async def test_a_busy_pool_answers_503_in_time(
    app: FastAPI, admin: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Every connection of the hot pool taken: a hot route waits a bounded time for one, then
    answers 503 with Retry-After (not a request left hanging)."""
    from app import db as db_module

    monkeypatch.setattr(db_module, "_ACQUIRE_TIMEOUT", 0.3)
    holder = _db(app).work()
    await driver_connection(holder)  # the pool's one connection
    report = f"/api/v1/requests/{uuid.uuid4()}/state"
    try:
        answer = await admin.post(report, json={"status": "success"})
        assert answer.status_code == 503, answer.text
        assert answer.headers["retry-after"] == "1"
        assert answer.headers["content-type"] == "application/problem+json"
    finally:
        await holder.commit()
    assert (await admin.post(report, json={"status": "success"})).status_code == 404


async def test_a_savepoint_undoes_its_block_alone(app: FastAPI, db: asyncpg.Connection) -> None:
    """What a batch of emissions relies on: one envelope's failure undoes that one only."""
    kept, undone = (f"savepoint-{n}-{uuid.uuid4().hex[:8]}" for n in ("kept", "undone"))
    insert = (
        "INSERT INTO accounts (id, name, type, status, is_admin, created_at, updated_at)"
        " VALUES ($1, $2, 'gateway', 'enabled', false, now(), now())"
    )
    async with _db(app).working() as work:
        conn = await driver_connection(work)
        await conn.execute(insert, uuid.uuid4(), kept)

        async def both() -> None:
            async with savepoint(work):
                await conn.execute(insert, uuid.uuid4(), undone)
                await conn.execute(insert, uuid.uuid4(), kept)  # taken: the block fails

        with pytest.raises(asyncpg.UniqueViolationError):
            await both()
    names = {r["name"] for r in await db.fetch("SELECT name FROM accounts")}
    assert kept in names
    assert undone not in names


async def test_a_commit_of_an_aborted_transaction_raises(
    app: FastAPI, db: asyncpg.Connection
) -> None:
    """PostgreSQL answers the COMMIT of a transaction an error aborted with ROLLBACK: the unit
    says so (`TransactionAborted`) instead of reporting a success, runs none of its
    after-commit hooks, and its connection goes back clean."""
    insert = (
        "INSERT INTO accounts (id, name, type, status, is_admin, created_at, updated_at)"
        " VALUES ($1, $2, 'gateway', 'enabled', false, now(), now())"
    )
    name = f"aborted-{uuid.uuid4().hex[:8]}"
    told: list[str] = []
    work = _db(app).work()
    conn = await driver_connection(work)
    account_id = uuid.uuid4()
    await conn.execute(insert, account_id, name)
    on_commit(work, lambda: told.append("committed"))
    with pytest.raises(asyncpg.UniqueViolationError):
        await conn.execute(insert, account_id, name + "-again")  # caught, and not raised again
    with pytest.raises(TransactionAborted):
        await work.commit()
    assert told == []
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE name = $1", name) == 0
    async with _db(app).working() as again:
        assert not again.in_transaction
        assert await (await driver_connection(again)).fetchval("SELECT 1") == 1
