"""The console's process list on a large history: how long `GET /console/processes` takes.

    uv run python -m bench.console_list [--history N] [--repeat R] [--json FILE]

Starts its own PostgreSQL (embedded, under a temporary directory; or XBUS_BENCH_DATABASE_URL,
a server whose `xbus_console_bench` database it recreates), runs the app in this process
(no NATS: nothing here needs it) behind uvicorn on a free port of 127.0.0.1, builds an
emitter -> consumer pipeline over the API, lets one process end `done`, and copies it N
times by SQL (`bench.seed`, 1 s apart: N = 1,000,000 spans ~11.6 days). Then it signs in to
the console as the admin and, over real HTTP, times R requests of each page:

- the process list, newest first, unfiltered; filtered by status, by pipeline, by emitter,
  by a time range a week back; five pages deep by cursor;
- the same list for a gateway account (its own emitter's processes);
- the overview's live figures and chart (capped counts, the last hour).

The figure the issue asks for: the process list under 200 ms at N = 1,000,000. Prints
p50/p95/max per page (ms) and the rows of each table.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import socket
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import uvicorn

from app import migrations
from app.config import load_settings
from app.main import create_app
from app.runtime.postgres import EmbeddedPostgres
from bench import seed

DB = "xbus_console_bench"
ADMIN_KEY = "xbk_console-bench-admin-0123456789"
LIMIT_MS = 200.0


def say(text: str) -> None:
    print(text, flush=True)


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def _with_database(url: str, database: str) -> str:
    head, sep, query = url.partition("?")
    return f"{head.rsplit('/', 1)[0]}/{database}{sep}{query}"


async def _recreate(server_url: str) -> str:
    conn = await asyncpg.connect(_plain(_with_database(server_url, "postgres")))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{DB}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{DB}"')
    finally:
        await conn.close()
    return _with_database(server_url, DB)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def _setup(api: httpx.AsyncClient) -> dict[str, Any]:
    """Account, emitter, consumer, an active pipeline, and one process ended `done`."""

    async def ok(r: httpx.Response) -> Any:
        assert r.status_code < 300, r.text
        return r.json()

    account = await ok(await api.post("/api/v1/accounts", json={"name": "shop", "type": "gateway"}))
    for name, kind in (("shop.orders", "emitter"), ("shop.invoicing", "consumer")):
        await ok(
            await api.post(
                "/api/v1/actors", json={"name": name, "kind": kind, "account_id": account["id"]}
            )
        )
    graph = {
        "nodes": [
            {
                "id": "orders",
                "type": "emitter",
                "actors": ["shop.orders"],
                "sourcematch": {"eventtypes": ["order.created"]},
            },
            {"id": "invoicing", "type": "consumer", "actors": ["shop.invoicing"]},
        ],
        "edges": ["orders->invoicing"],
    }
    pipeline = await ok(
        await api.post("/api/v1/pipelines", json={"name": "orders", "version": "1", "graph": graph})
    )
    await ok(
        await api.post(f"/api/v1/pipelines/{pipeline['id']}/status", json={"status": "active"})
    )
    shop = {"Authorization": f"Bearer {account['api_key']}"}
    envelope = {"events": [{"type": "order.created", "encoding": "json", "items": [{"id": 1}]}]}
    emitted = await ok(
        await api.post("/api/v1/actors/shop.orders/output", json=envelope, headers=shop)
    )
    request = await ok(
        await api.get("/api/v1/actors/shop.invoicing/requests?wait=10", headers=shop)
    )
    await ok(
        await api.post(
            f"/api/v1/requests/{request['request_id']}/state",
            json={"status": "success"},
            headers=shop,
        )
    )
    done = await ok(await api.get(f"/api/v1/processes/{emitted['process_id']}?wait=10"))
    assert done["status"] == "done", done
    return {"process_id": done["id"], "pipeline_id": pipeline["id"], "key": account["api_key"]}


async def _console(base: str, key: str) -> httpx.AsyncClient:
    client = httpx.AsyncClient(base_url=base, timeout=60)
    r = await client.post("/console/login", data={"api_key": key}, headers={"Origin": base})
    assert r.status_code == 303, r.text
    return client


async def _time(client: httpx.AsyncClient, url: str, repeat: int) -> dict[str, Any]:
    r = await client.get(url)  # warm: plans, caches
    assert r.status_code == 200, (url, r.status_code, r.text[:300])
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        r = await client.get(url)
        times.append((time.perf_counter() - t0) * 1000)
        assert r.status_code == 200
    times.sort()
    rows = len(re.findall(r"<tr data-process-id=", r.text))
    return {
        "p50_ms": round(statistics.median(times), 1),
        "p95_ms": round(times[max(int(len(times) * 0.95) - 1, 0)], 1),
        "max_ms": round(times[-1], 1),
        "rows": rows,
    }


async def _deep_url(client: httpx.AsyncClient, pages: int) -> str:
    url = "/console/processes"
    for _ in range(pages):
        page = (await client.get(url)).text
        found = re.search(r'href="(/console/processes\?[^"]*cursor=[^"]+)" id="next-page"', page)
        assert found, "no next page"
        url = found.group(1).replace("&amp;", "&")
    return url


async def run(server_url: str, history: int, repeat: int) -> dict[str, Any]:
    url = await _recreate(server_url)
    await asyncio.to_thread(migrations.upgrade, url)
    with tempfile.TemporaryDirectory() as data:
        settings = load_settings(
            None,
            database_url=url,
            data_dir=Path(data),
            admin_api_key=ADMIN_KEY,
            migrate_on_start=False,
        )
        app = create_app(settings)
        port = _free_port()
        server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning")
        )
        task = asyncio.create_task(server.serve())
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.05)
        base = f"http://127.0.0.1:{port}"
        try:
            async with httpx.AsyncClient(
                base_url=base, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=60
            ) as api:
                made = await _setup(api)
            conn = await asyncpg.connect(_plain(url))
            try:
                say(f"seeding {history:,} done processes ...")
                seeded = await seed.seed(conn, made["process_id"], history, "history", say)
                counts = {
                    t: await conn.fetchval(
                        "SELECT reltuples::bigint FROM pg_class WHERE relname = $1", t
                    )
                    for t in ("processes", "requests", "log_entries", "envelopes", "items")
                }
            finally:
                await conn.close()
            admin = await _console(base, ADMIN_KEY)
            shop = await _console(base, made["key"])
            week_ago = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 7 * 86400))
            six_days = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() - 6 * 86400))
            pages = {
                "list": "/console/processes",
                "list status=done": "/console/processes?status=done",
                "list status=error (none)": "/console/processes?status=error",
                "list pipeline": f"/console/processes?pipeline={made['pipeline_id']}",
                "list emitter": "/console/processes?emitter=shop.orders",
                "list 7..6 days ago": f"/console/processes?after={week_ago}&before={six_days}",
                "list 5 pages deep": await _deep_url(admin, 5),
            }
            results: dict[str, Any] = {}
            for name, page in pages.items():
                results[name] = await _time(admin, page, repeat)
                say(f"  {name:28} {results[name]}")
            results["list (gateway account)"] = await _time(shop, "/console/processes", repeat)
            say(f"  {'list (gateway account)':28} {results['list (gateway account)']}")
            results["overview live"] = await _time(admin, "/console/overview/live", repeat)
            say(f"  {'overview live':28} {results['overview live']}")
            await admin.aclose()
            await shop.aclose()
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 30)
    worst = max(v["p95_ms"] for k, v in results.items() if k.startswith("list"))
    return {
        "history": history,
        "repeat": repeat,
        "rows": counts,
        "seeded": seeded,
        "pages": results,
        "list_worst_p95_ms": worst,
        "under_limit": worst < LIMIT_MS,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--history", type=int, default=1_000_000, help="done processes seeded [1e6]")
    p.add_argument("--repeat", type=int, default=20, help="timed requests per page [20]")
    p.add_argument("--json", type=Path, help="write the results here too")
    a = p.parse_args()
    external = os.environ.get("XBUS_BENCH_DATABASE_URL")
    postgres = None
    with tempfile.TemporaryDirectory(prefix="xbus-console-bench-") as work:
        if external:
            server_url = external
        else:
            postgres = EmbeddedPostgres(Path(work))
            server_url = postgres.start()
        try:
            result = asyncio.run(run(server_url, a.history, a.repeat))
        finally:
            if postgres is not None:
                postgres.stop()
    say(json.dumps(result, indent=2, default=str))
    say(
        f"process list on {a.history:,} processes: worst p95 {result['list_worst_p95_ms']} ms "
        f"({'under' if result['under_limit'] else 'OVER'} {LIMIT_MS:.0f} ms)"
    )
    if a.json:
        a.json.write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
