"""No ping before each use of a pooled connection: a connection the database dropped is
found broken when it is used. Such a request answers 503 with Retry-After (never 500), the
pool drops the connection, and the bus goes on without a restart."""

from __future__ import annotations

import asyncpg

from tests.bus.conftest import ENVELOPE, Bus, chain


async def test_connections_killed_then_the_bus_goes_on(bus: Bus, db: asyncpg.Connection) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    url = f"/api/v1/actors/{em['name']}/output"
    for _ in range(5):  # a pool with connections in it
        assert (await acct.http.post(url, json=ENVELOPE)).status_code == 202

    killed = await db.fetchval(
        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
        "WHERE application_name = 'xbusd' AND pid <> pg_backend_pid()"
    )
    assert killed > 0
    statuses = []
    for _ in range(30):
        r = await acct.http.post(url, json=ENVELOPE)
        statuses.append(r.status_code)
        if r.status_code == 503:
            assert r.headers["retry-after"] == "1"
            assert r.headers["content-type"].startswith("application/problem+json")
    assert set(statuses) <= {202, 503}, statuses
    assert statuses[-10:] == [202] * 10, statuses  # healed: no restart needed

    # Everything acknowledged is there and flows on.
    accepted = 5 + statuses.count(202)
    stored = await db.fetchval("SELECT count(*) FROM processes WHERE emitter_id = $1", em["id"])
    assert stored == accepted
    r = await acct.http.get(f"/api/v1/actors/{co['name']}/requests", params={"max": 100})
    assert len(r.json()["requests"]) == accepted
