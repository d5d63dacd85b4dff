"""PostgreSQL stopped and started again under load: every request that needs it answers 503
problem+json with Retry-After while it is down (never 500), the bus heals by itself, nothing
is half-written, and every envelope answered 202 ends its process done."""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from typing import Any

import asyncpg
import httpx
import pytest

from app import migrations
from app.runtime.postgres import EmbeddedPostgres
from tests.bus.conftest import ENVELOPE, Bus, chain

pytestmark = pytest.mark.timeout(240)


@pytest.fixture(scope="module")
def own_postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedPostgres]:
    """A PostgreSQL of this module's own: the test stops it."""
    server = EmbeddedPostgres(tmp_path_factory.mktemp("outage-pg"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def database_url(own_postgres: EmbeddedPostgres) -> str:
    url = own_postgres.url()
    migrations.upgrade(url)
    return url


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    # Leases lost with the database come back soon; the pool has room for the load.
    return {"request_lease": 2.0, "db_pool_size": 10}


def check(r: httpx.Response, allowed: set[int], seen: Counter[int]) -> None:
    seen[r.status_code] += 1
    assert r.status_code in allowed, (r.request.url.path, r.status_code, r.text[:300])
    if r.status_code == 503:
        assert r.headers["retry-after"]
        assert r.headers["content-type"].startswith("application/problem+json")


async def test_outage_answers_503_and_every_202_ends_done(
    bus: Bus, own_postgres: EmbeddedPostgres, database_url: str
) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    output = f"/api/v1/actors/{em['name']}/output"
    poll = f"/api/v1/actors/{co['name']}/requests"
    emitted: Counter[int] = Counter()
    polled: Counter[int] = Counter()
    reported: Counter[int] = Counter()
    accepted: set[str] = set()
    stop = asyncio.Event()

    async def emitter() -> None:
        while not stop.is_set():
            r = await acct.http.post(output, json=ENVELOPE)
            check(r, {202, 503}, emitted)
            if r.status_code == 202:
                accepted.add(r.json()["process_id"])
            await asyncio.sleep(0.01)

    async def consumer() -> None:
        while not stop.is_set():
            r = await acct.http.get(poll, params={"max": 20, "wait": 0.2})
            check(r, {200, 204, 503}, polled)
            if r.status_code != 200:
                await asyncio.sleep(0.05)
                continue
            for request in r.json()["requests"]:
                state = await acct.http.post(
                    f"/api/v1/requests/{request['request_id']}/state", json={"status": "success"}
                )
                # 409: its lease ran out during the outage and it went to another poll.
                check(state, {200, 409, 503}, reported)

    tasks = [asyncio.create_task(emitter()) for _ in range(4)]
    tasks += [asyncio.create_task(consumer()) for _ in range(2)]
    try:
        await asyncio.sleep(1.0)
        assert emitted[202] > 0
        await asyncio.to_thread(own_postgres.stop)
        down = emitted[503]
        await asyncio.sleep(3.0)
        assert emitted[503] > down  # the outage was met, and answered 503
        await asyncio.to_thread(own_postgres.start)
        # Healed without a restart: emissions are accepted again.
        healed = emitted[202]
        deadline = time.monotonic() + 30
        while emitted[202] < healed + 50:
            assert time.monotonic() < deadline, emitted
            await asyncio.sleep(0.1)
    finally:
        stop.set()
        await asyncio.gather(*tasks)

    # Drain: every process acknowledged with 202 ends done, none twice.
    deadline = time.monotonic() + 60
    conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        while True:
            rows = await conn.fetch("SELECT id::text, status FROM processes")
            statuses = {r["id"]: r["status"] for r in rows}
            if all(statuses.get(pid) == "done" for pid in accepted):
                break
            assert time.monotonic() < deadline, Counter(statuses.get(p) for p in accepted)
            r = await acct.http.get(poll, params={"max": 100, "wait": 0.5})
            if r.status_code == 200:
                for request in r.json()["requests"]:
                    await acct.http.post(
                        f"/api/v1/requests/{request['request_id']}/state",
                        json={"status": "success"},
                    )
        assert set(statuses) >= accepted
        # Nothing half-written: each stored envelope has its process, each process its
        # requests.
        orphans = await conn.fetchval(
            "SELECT count(*) FROM envelopes e WHERE NOT EXISTS "
            "(SELECT 1 FROM processes p WHERE p.trigger_envelope_id = e.id)"
        )
        assert orphans == 0
        ended_twice = await conn.fetchval(
            "SELECT count(*) FROM (SELECT process_id, node_id FROM requests "
            "WHERE status = 'success' GROUP BY process_id, node_id HAVING count(*) > 1) t"
        )
        assert ended_twice == 0
    finally:
        await conn.close()
