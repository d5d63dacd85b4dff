"""The baseline of `bench.http_bus`: the least a durable HTTP ingest endpoint can do.

`POST /ingest` looks one row up (one SELECT, standing in for an API-key lookup) and stores
the JSON body (one INSERT), both through an asyncpg pool of 10, and answers 202. Served by
uvicorn with one worker, like xbusd. The database comes from `BENCH_BASELINE_DSN` (a plain
`postgresql://` DSN); the tables are created at start-up if missing.

Run by hand: `BENCH_BASELINE_DSN=postgresql://... uv run uvicorn bench.baseline_app:app`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator
from typing import Any

import asyncpg
from fastapi import FastAPI, Request, Response

DSN_ENV = "BENCH_BASELINE_DSN"
POOL_SIZE = 10
KEY = "bench"

SCHEMA = """
CREATE TABLE IF NOT EXISTS bench_keys (
    lookup text PRIMARY KEY,
    account text NOT NULL
);
CREATE TABLE IF NOT EXISTS bench_ingest (
    id bigserial PRIMARY KEY,
    account text NOT NULL,
    received_at timestamptz NOT NULL DEFAULT now(),
    body jsonb NOT NULL
);
INSERT INTO bench_keys (lookup, account) VALUES ('bench', 'bench-account')
ON CONFLICT (lookup) DO NOTHING;
"""

SELECT_KEY = "SELECT account FROM bench_keys WHERE lookup = $1"
INSERT_BODY = "INSERT INTO bench_ingest (account, body) VALUES ($1, $2::jsonb) RETURNING id"


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    dsn = os.environ[DSN_ENV]
    pool: Any = await asyncpg.create_pool(dsn, min_size=POOL_SIZE, max_size=POOL_SIZE)
    try:
        async with pool.acquire() as conn:
            await conn.execute(SCHEMA)
        app.state.pool = pool
        yield
    finally:
        await pool.close()


app = FastAPI(title="bench baseline", lifespan=lifespan)


@app.post("/ingest", status_code=202)
async def ingest(request: Request) -> Response:
    body = await request.body()
    pool: Any = request.app.state.pool
    async with pool.acquire() as conn:
        account = await conn.fetchval(SELECT_KEY, KEY)
        row_id = await conn.fetchval(INSERT_BODY, account, body.decode())
    return Response(content=b'{"id":%d}' % row_id, status_code=202, media_type="application/json")


@app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ok"}
