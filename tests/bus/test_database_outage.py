"""PostgreSQL stopped and started again under load, or every connection of the bus killed at
once (a failover as the bus sees it): every request that needs it answers 503 problem+json
with Retry-After while it is down (never 500), or completes; the bus heals by itself,
nothing is half-written, and every envelope answered 202 ends its process done."""

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


class Load:
    """Emitters, and a polling consumer that reports success, on one pipeline; every answer
    checked against what an outage may answer."""

    def __init__(self, bus: Bus) -> None:
        self.bus = bus
        self.emitted: Counter[int] = Counter()
        self.polled: Counter[int] = Counter()
        self.reported: Counter[int] = Counter()
        self.accepted: set[str] = set()
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        bus = self.bus
        self.acct = await bus.account()
        em = await bus.actor(self.acct, "emitter")
        co = await bus.actor(self.acct, "consumer")
        await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
        self.output = f"/api/v1/actors/{em['name']}/output"
        self.poll = f"/api/v1/actors/{co['name']}/requests"
        self.tasks = [asyncio.create_task(self._emitter()) for _ in range(4)]
        self.tasks += [asyncio.create_task(self._consumer()) for _ in range(2)]

    async def _emitter(self) -> None:
        while not self.stop.is_set():
            r = await self.acct.http.post(self.output, json=ENVELOPE)
            check(r, {202, 503}, self.emitted)
            if r.status_code == 202:
                self.accepted.add(r.json()["process_id"])
            await asyncio.sleep(0.01)

    async def _consumer(self) -> None:
        while not self.stop.is_set():
            r = await self.acct.http.get(self.poll, params={"max": 20, "wait": 0.2})
            check(r, {200, 204, 503}, self.polled)
            if r.status_code != 200:
                await asyncio.sleep(0.05)
                continue
            for request in r.json()["requests"]:
                state = await self.acct.http.post(
                    f"/api/v1/requests/{request['request_id']}/state", json={"status": "success"}
                )
                # 409: its lease ran out during the outage and it went to another poll.
                check(state, {200, 409, 503}, self.reported)

    async def accepted_more(self, count: int, seconds: float = 30) -> None:
        """Until `count` more emissions were accepted: the bus took work again."""
        target = self.emitted[202] + count
        deadline = time.monotonic() + seconds
        while self.emitted[202] < target:
            assert time.monotonic() < deadline, self.emitted
            await asyncio.sleep(0.1)

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks)

    async def drained(self, database_url: str) -> None:
        """Every process acknowledged with 202 ends done, none twice, nothing half-written."""
        acct = self.acct
        deadline = time.monotonic() + 60
        conn = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
        try:
            while True:
                rows = await conn.fetch("SELECT id::text, status FROM processes")
                statuses = {r["id"]: r["status"] for r in rows}
                if all(statuses.get(pid) == "done" for pid in self.accepted):
                    break
                assert time.monotonic() < deadline, Counter(statuses.get(p) for p in self.accepted)
                r = await acct.http.get(self.poll, params={"max": 100, "wait": 0.5})
                if r.status_code == 200:
                    for request in r.json()["requests"]:
                        await acct.http.post(
                            f"/api/v1/requests/{request['request_id']}/state",
                            json={"status": "success"},
                        )
            assert set(statuses) >= self.accepted
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
            stranded = await conn.fetchval(
                "SELECT count(*) FROM processes p WHERE p.status = 'running' AND NOT EXISTS "
                "(SELECT 1 FROM requests r WHERE r.process_id = p.id "
                "AND r.status IN ('pending', 'leased', 'running'))"
            )
            assert stranded == 0  # no process left half-moved
        finally:
            await conn.close()


async def test_outage_answers_503_and_every_202_ends_done(
    bus: Bus, own_postgres: EmbeddedPostgres, database_url: str
) -> None:
    load = Load(bus)
    await load.start()
    try:
        await asyncio.sleep(1.0)
        assert load.emitted[202] > 0
        await asyncio.to_thread(own_postgres.stop)
        down = load.emitted[503]
        await asyncio.sleep(3.0)
        assert load.emitted[503] > down  # the outage was met, and answered 503
        await asyncio.to_thread(own_postgres.start)
        await load.accepted_more(50)  # healed without a restart
    finally:
        await load.finish()
    await load.drained(database_url)


async def test_every_connection_killed_at_once_answers_503_or_completes(
    bus: Bus, database_url: str
) -> None:
    """A failover as the bus sees it: every connection of xbusd terminated at once
    (`pg_terminate_backend`), five times, in the middle of emissions, lease handouts and
    state reports. Each request in flight answers 503 or completes; the pool heals without a
    restart; no process is left half-moved."""
    load = Load(bus)
    await load.start()
    admin = await asyncpg.connect(database_url.replace("postgresql+asyncpg", "postgresql"))
    try:
        await load.accepted_more(30)
        killed = 0
        for _ in range(5):
            killed += await admin.fetchval(
                "SELECT count(*) FROM (SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = current_database() AND pid <> pg_backend_pid() "
                "AND backend_type = 'client backend') t"
            )
            await load.accepted_more(20)  # healed: the next emissions are stored
        assert killed >= 5
        # Met: requests on a killed connection answered 503 (the pool keeps no ping).
        assert load.emitted[503] + load.polled[503] + load.reported[503] > 0
        polled_before = load.polled[200]
        deadline = time.monotonic() + 30
        while load.polled[200] <= polled_before:  # leases handed out again too
            assert time.monotonic() < deadline, load.polled
            await asyncio.sleep(0.05)
    finally:
        await admin.close()
        await load.finish()
    await load.drained(database_url)
