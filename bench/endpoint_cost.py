"""What one request of the emit -> poll -> success flow costs: SQL statements and CPU.

    uv run python -m bench.endpoint_cost [--repeat R] [--consumers K] [--show]

Runs the app in this process (httpx ASGI transport, no sockets) against embedded PostgreSQL
and nats-server in a temporary dir, sends the requests one at a time (no concurrency, so no
lock waits or queueing), and counts per endpoint the SQL statements SQLAlchemy sends for that
request (not those of the app's background duties) and the CPU time of the whole request.
The CPU includes the in-process client and whatever background duty ran meanwhile:
`GET /healthz` (no database) is measured as the floor. `--show` lists the statements of one
request of each kind.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Awaitable
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import event
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


async def scenario(settings: Any, repeat: int, consumers: int, rec: Recorder) -> None:
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.endpoint_cost", description=__doc__)
    p.add_argument("--repeat", type=int, default=200, help="flows to measure [200]")
    p.add_argument("--consumers", type=int, default=4, help="consumers sharing the role [4]")
    p.add_argument("--show", action="store_true", help="list the statements of each request")
    a = p.parse_args(argv)
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
        with EmbeddedRuntime(settings) as effective:
            asyncio.run(scenario(effective, a.repeat, a.consumers, rec))
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
    return 0


if __name__ == "__main__":
    sys.exit(main())
