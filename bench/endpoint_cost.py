"""What one request of the emit -> poll -> success flow costs: SQL statements and CPU.

    uv run python -m bench.endpoint_cost [--repeat R] [--consumers K] [--show] [--no-pg]

Runs the app in this process (httpx ASGI transport, no sockets) against embedded PostgreSQL
and nats-server in a temporary dir, sends the requests one at a time (no concurrency, so no
lock waits or queueing), and measures two ways:

1. per endpoint, the SQL statements SQLAlchemy sends for that request (its own task only, not
   the app's background duties) and the CPU time of the whole request. The CPU includes the
   in-process client and whatever background duty ran meanwhile: `GET /healthz` (no
   database) is measured as the floor;
2. (unless --no-pg) every statement PostgreSQL itself executes for the bus database, from
   `pg_stat_statements` with `track_utility = on` (the embedded PostgreSQL is restarted
   with the extension preloaded): BEGIN, COMMIT, ROLLBACK (the pool's reset on return),
   pings, and the statements of the background duties the requests set going. Three phases,
   R emissions, then R leases, then R reports, each counted with everything the server ran
   meanwhile (and 0.5 s after), divided by R; an idle phase first gives the background
   duties' own rate, which the "-idle" column takes off. Statements prepared by asyncpg
   cost one more round trip the first time (Parse), not counted here: its statement cache
   makes that rare.

`--show` lists the statements of one request of each kind, and those of each phase.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import asyncpg
import httpx
from sqlalchemy import event, make_url
from sqlalchemy.engine import Engine

from app.config import load_settings
from app.main import create_app
from app.runtime import children
from app.runtime.embedded import EmbeddedRuntime
from bench.http_bus import EVENT_TYPE, ROLE, make_body

ADMIN_KEY = "xbk_bench-endpoint-cost-0123456789"


class Recorder:
    def __init__(self) -> None:
        self.statements: list[str] = []
        self.commits = 0
        self.task: asyncio.Task[Any] | None = None
        self.reset()

    def reset(self) -> None:
        self.cpu: dict[str, float] = defaultdict(float)
        self.count: dict[str, int] = defaultdict(int)
        self.sql: dict[str, int] = defaultdict(int)
        self.tx: dict[str, int] = defaultdict(int)
        self.last: dict[str, list[str]] = {}

    def install(self) -> None:
        # Only what the measured request's task runs: the app's background duties share the
        # engine. (SQLAlchemy's greenlets run inside the calling task.)
        def ours() -> bool:
            try:
                return asyncio.current_task() is self.task
            except RuntimeError:
                return False

        def on_execute(*args: Any) -> None:
            if ours():
                statement: str = args[2]
                self.statements.append(" ".join(statement.split())[:110])

        def on_commit(*args: Any) -> None:
            if ours():
                self.commits += 1

        event.listen(Engine, "before_cursor_execute", on_execute)
        event.listen(Engine, "commit", on_commit)

    async def measure(self, name: str, call: Awaitable[httpx.Response]) -> httpx.Response:
        before, commits = len(self.statements), self.commits
        self.task = asyncio.current_task()
        t0 = time.process_time()
        response = await call
        self.cpu[name] += time.process_time() - t0
        self.count[name] += 1
        self.sql[name] += len(self.statements) - before
        self.tx[name] += self.commits - commits
        self.last[name] = self.statements[before:]
        return response


def expect(response: httpx.Response, status: int) -> dict[str, Any]:
    if response.status_code != status:
        raise RuntimeError(f"{response.request.url}: {response.status_code} {response.text}")
    body: dict[str, Any] = response.json() if response.content else {}
    return body


async def scenario(
    settings: Any, repeat: int, consumers: int, rec: Recorder, pg: PgCounter | None
) -> None:
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        base = "http://xbus.bench"
        admin_headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
        async with httpx.AsyncClient(
            transport=transport, base_url=base, headers=admin_headers
        ) as admin:
            account = expect(
                await admin.post("/api/v1/accounts", json={"name": "cost", "type": "gateway"}),
                201,
            )
            expect(
                await admin.post(
                    "/api/v1/actors",
                    json={"name": "em", "kind": "emitter", "account_id": account["id"]},
                ),
                201,
            )
            names = [f"co{i}" for i in range(consumers)]
            for name in names:
                body = {"name": name, "kind": "consumer", "account_id": account["id"]}
                expect(await admin.post("/api/v1/actors", json={**body, "roles": [ROLE]}), 201)
            graph = {
                "nodes": [
                    {
                        "id": "emit",
                        "type": "emitter",
                        "actors": ["em"],
                        "sourcematch": {"eventtypes": [EVENT_TYPE]},
                    },
                    {"id": "sink", "type": "consumer", "roles": [ROLE]},
                ],
                "edges": ["emit->sink"],
            }
            pipeline = expect(
                await admin.post(
                    "/api/v1/pipelines", json={"name": "cost", "version": "1", "graph": graph}
                ),
                201,
            )
            expect(
                await admin.post(
                    f"/api/v1/pipelines/{pipeline['id']}/status", json={"status": "active"}
                ),
                200,
            )
        headers = {"Authorization": f"Bearer {account['api_key']}"}
        async with httpx.AsyncClient(transport=transport, base_url=base, headers=headers) as c:
            json_headers = {"content-type": "application/json"}
            for warm in (True, False):
                # The role node takes the consumers in turn: with a multiple of their count,
                # each has as many requests as it is polled for, wherever the round starts.
                n = -(-(20 if warm else repeat) // consumers) * consumers
                if not warm:
                    rec.reset()
                for i in range(n):
                    await rec.measure("GET /healthz (floor)", c.get("/healthz"))
                    await rec.measure("GET /api/v1/whoami", c.get("/api/v1/whoami"))
                    await rec.measure(
                        "POST /actors/{emitter}/output",
                        c.post(
                            "/api/v1/actors/em/output", content=make_body(i), headers=json_headers
                        ),
                    )
                for i in range(n):
                    job = expect(
                        await rec.measure(
                            "GET /actors/{actor}/requests",
                            c.get(f"/api/v1/actors/{names[i % consumers]}/requests"),
                        ),
                        200,
                    )
                    expect(
                        await rec.measure(
                            "POST /requests/{id}/state",
                            c.post(
                                f"/api/v1/requests/{job['request_id']}/state",
                                json={"status": "success"},
                            ),
                        ),
                        200,
                    )
            if pg is not None:
                await pg.connect()
                try:
                    await pg_phases(c, names, -(-repeat // consumers) * consumers, pg)
                finally:
                    await pg.close()


class PgCounter:
    """Every statement PostgreSQL executes for the bus database, from pg_stat_statements
    (top-level statements, utility ones included: BEGIN, COMMIT, ROLLBACK, SET, ...)."""

    def __init__(self, dsn: str) -> None:
        self.dsn = dsn
        self.conn: Any = None
        self.phases: dict[str, dict[str, Any]] = {}

    async def connect(self) -> None:
        self.conn = await asyncpg.connect(self.dsn)
        await self.conn.execute("CREATE EXTENSION IF NOT EXISTS pg_stat_statements")

    async def close(self) -> None:
        if self.conn is not None:
            await self.conn.close()

    async def reset(self) -> None:
        await self.conn.execute("SELECT pg_stat_statements_reset()")

    async def read(self) -> list[tuple[str, int]]:
        rows = await self.conn.fetch(
            "SELECT s.query, s.calls FROM pg_stat_statements s "
            "JOIN pg_database d ON d.oid = s.dbid "
            "WHERE d.datname = current_database() AND s.toplevel "
            "AND s.query NOT LIKE '%pg_stat_statements%' ORDER BY s.calls DESC"
        )
        return [(" ".join(r["query"].split()), r["calls"]) for r in rows]

    async def phase(self, name: str, n: int, run: Callable[[], Awaitable[None]]) -> None:
        await self.reset()
        t0 = time.perf_counter()
        await run()
        await asyncio.sleep(SETTLE_S)  # what the requests set going in the background
        wall = time.perf_counter() - t0
        self.phases[name] = {"n": n, "wall": wall, "statements": await self.read()}


SETTLE_S = 0.5
IDLE_S = 3.0


def kind(query: str) -> str:
    word = query.split(None, 1)[0].upper() if query else ""
    if word in ("BEGIN", "START", "COMMIT", "ROLLBACK", "END"):
        return "tx"
    return word.lower() if word in ("SELECT", "INSERT", "UPDATE", "DELETE", "WITH") else "other"


async def pg_phases(c: httpx.AsyncClient, names: list[str], n: int, pg: PgCounter) -> None:
    """Idle (the background duties alone), then n emissions, n leases, n reports, each phase
    counted apart with everything the server sent meanwhile."""
    jobs: list[dict[str, Any]] = []
    json_headers = {"content-type": "application/json"}

    async def idle() -> None:
        await asyncio.sleep(IDLE_S - SETTLE_S)

    async def emit() -> None:
        for i in range(n):
            r = await c.post("/api/v1/actors/em/output", content=make_body(i), headers=json_headers)
            expect(r, 202)

    async def lease() -> None:
        for i in range(n):
            r = await c.get(f"/api/v1/actors/{names[i % len(names)]}/requests")
            jobs.append(expect(r, 200))

    async def report() -> None:
        for job in jobs:
            r = await c.post(
                f"/api/v1/requests/{job['request_id']}/state", json={"status": "success"}
            )
            expect(r, 200)

    await pg.phase("idle (background duties)", 1, idle)
    await pg.phase("emit: POST /actors/{emitter}/output", n, emit)
    await pg.phase("lease: GET /actors/{actor}/requests", n, lease)
    await pg.phase("report: POST /requests/{id}/state", n, report)


def print_pg(pg: PgCounter, show: bool) -> None:
    idle = pg.phases.pop("idle (background duties)")
    idle_rate = sum(calls for _, calls in idle["statements"]) / idle["wall"]
    kinds = ("tx", "select", "insert", "update", "delete", "with", "other")
    print(
        "\nEvery statement PostgreSQL ran for the bus database (pg_stat_statements, "
        "track_utility on), per process:"
    )
    print(f"{'phase':<38} {'all':>6} {'-idle':>6} " + " ".join(f"{k:>6}" for k in kinds))
    totals = [0.0, 0.0]
    for name, phase in pg.phases.items():
        n = phase["n"]
        count = sum(calls for _, calls in phase["statements"])
        net = count - idle_rate * phase["wall"]
        by_kind: dict[str, int] = defaultdict(int)
        for query, calls in phase["statements"]:
            by_kind[kind(query)] += calls
        totals[0] += count / n
        totals[1] += net / n
        print(
            f"{name:<38} {count / n:>6.1f} {net / n:>6.1f} "
            + " ".join(f"{by_kind[k] / n:>6.1f}" for k in kinds)
        )
    print(f"{'total per process':<38} {totals[0]:>6.1f} {totals[1]:>6.1f}")
    print(
        f"(idle: {idle_rate:.1f} statements/s from the background duties alone; '-idle' takes "
        "that rate times the phase's length off; tx = BEGIN/COMMIT/ROLLBACK)"
    )
    if show:
        for name, phase in pg.phases.items():
            print(f"\n{name}: statements per process")
            for query, calls in phase["statements"]:
                print(f"  {calls / phase['n']:>6.2f}  {query[:110]}")


def enable_pg_stat_statements(runtime: EmbeddedRuntime, dsn: str) -> None:
    """shared_preload_libraries needs a restart: set it with ALTER SYSTEM, restart the
    embedded PostgreSQL (same data dir, same socket)."""

    async def configure() -> None:
        conn: Any = await asyncpg.connect(dsn)
        try:
            for name, value in (
                ("shared_preload_libraries", "pg_stat_statements"),
                ("pg_stat_statements.track", "top"),
                ("pg_stat_statements.track_utility", "on"),
                ("pg_stat_statements.max", "10000"),
            ):
                await conn.execute(f"ALTER SYSTEM SET {name} = '{value}'")
        finally:
            await conn.close()

    asyncio.run(configure())
    assert runtime.postgres is not None
    runtime.postgres.stop()
    runtime.postgres.start()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.endpoint_cost", description=__doc__)
    p.add_argument("--repeat", type=int, default=200, help="flows to measure [200]")
    p.add_argument("--consumers", type=int, default=4, help="consumers sharing the role [4]")
    p.add_argument("--show", action="store_true", help="list the statements of each request")
    p.add_argument(
        "--no-pg",
        action="store_true",
        help="skip the count of every statement PostgreSQL runs (pg_stat_statements)",
    )
    a = p.parse_args(argv)
    pg: PgCounter | None = None
    rec = Recorder()
    rec.install()
    tmp = Path(tempfile.mkdtemp(prefix="xbus-cost-"))
    try:
        settings = load_settings(
            None,
            data_dir=tmp,
            nats_port=0,
            port=children.free_port(),
            admin_api_key=ADMIN_KEY,
            log_level="warning",
        )
        runtime = EmbeddedRuntime(settings)
        with runtime as effective:
            assert effective.database_url is not None
            if not a.no_pg and runtime.postgres is not None:
                url = make_url(effective.database_url).set(drivername="postgresql")
                dsn = url.render_as_string(hide_password=False)
                enable_pg_stat_statements(runtime, dsn)
                pg = PgCounter(dsn)
            asyncio.run(scenario(effective, a.repeat, a.consumers, rec, pg))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    print(f"{'request':<32} {'SQL statements':>15} {'commits':>8} {'CPU ms':>8}")
    for name, n in rec.count.items():
        print(
            f"{name:<32} {rec.sql[name] / n:>15.1f} {rec.tx[name] / n:>8.1f} "
            f"{rec.cpu[name] * 1000 / n:>8.2f}"
        )
    print("(CPU: client and server in one process, sequential requests)")
    if a.show:
        for name, statements in rec.last.items():
            print(f"\n{name}: {len(statements)} statements")
            for statement in statements:
                print(f"  {statement}")
    if pg is not None:
        print_pg(pg, a.show)
    return 0


if __name__ == "__main__":
    sys.exit(main())
