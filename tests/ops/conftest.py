"""Operating the bus: a wired emitter -> worker -> consumer bus, helpers to drive it over
HTTP, and bulk rows made with generate_series for volume tests."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from tests.bus.conftest import ENVELOPE, Account, Bus, bus, chain

__all__ = ["ENVELOPE", "Wired", "bus", "emit", "poll", "report", "seed_processes"]


@dataclass
class Wired:
    bus: Bus
    acct: Account
    em: dict[str, Any]
    wk: dict[str, Any]
    co: dict[str, Any]
    pipeline: dict[str, Any]


@pytest.fixture
async def wired(bus: Bus) -> Wired:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    wk = await bus.actor(acct, "worker")
    co = await bus.actor(acct, "consumer")
    pipeline = await bus.pipeline(
        chain(em["name"], ("worker", wk["name"]), ("consumer", co["name"]))
    )
    return Wired(bus, acct, em, wk, co, pipeline)


async def emit(w: Wired, envelope: dict[str, Any] | None = None) -> dict[str, Any]:
    r = await w.acct.http.post(f"/api/v1/actors/{w.em['name']}/output", json=envelope or ENVELOPE)
    assert r.status_code == 202, r.text
    body: dict[str, Any] = r.json()
    return body


async def poll(client: httpx.AsyncClient, actor: str, wait: float = 0) -> dict[str, Any] | None:
    r = await client.get(f"/api/v1/actors/{actor}/requests", params={"wait": wait})
    if r.status_code == 204:
        return None
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def report(client: httpx.AsyncClient, request_id: str, **body: Any) -> httpx.Response:
    return await client.post(f"/api/v1/requests/{request_id}/state", json=body)


async def seed_processes(
    db: asyncpg.Connection,
    count: int,
    *,
    status: str = "done",
    pipeline_id: uuid.UUID | None = None,
    emitter_id: uuid.UUID | None = None,
    logs_per_process: int = 0,
    log_text_bytes: int = 100,
    with_envelopes: bool = False,
    item_bytes: int = 200,
) -> None:
    """`count` processes (created a second apart, newest now), fast: INSERT ... SELECT
    generate_series. Optionally each with log entries and a trigger envelope of one event and
    one text item."""
    await db.execute(
        """
        INSERT INTO processes (id, pipeline_id, emitter_id, trigger_envelope_id, status,
                               created_at, status_changed_at, ended_at, result_acked)
        SELECT gen_random_uuid(), $2, $3, CASE WHEN $4 THEN gen_random_uuid() END, $5,
               now() - make_interval(secs => g), now(), now(), g % 2 = 0
        FROM generate_series(1, $1) AS g
        """,
        count,
        pipeline_id,
        emitter_id,
        with_envelopes,
        status,
    )
    if logs_per_process:
        await db.execute(
            """
            INSERT INTO log_entries (time, level, text, process_id, node_id)
            SELECT p.created_at, 'notice', repeat('x', $2) || ' ' || n, p.id, 'emit'
            FROM processes p, generate_series(1, $1) AS n
            """,
            logs_per_process,
            log_text_bytes,
        )
    if with_envelopes:
        await db.execute(
            """
            INSERT INTO envelopes (id, emitter_id, process_id, node_id, status, event_count,
                                   item_count, size_bytes, created_at, last_fragment_at,
                                   completed_at)
            SELECT trigger_envelope_id, emitter_id, id, 'emit', 'complete', 1, 1, $1,
                   created_at, created_at, created_at
            FROM processes WHERE trigger_envelope_id IS NOT NULL
            """,
            item_bytes,
        )
        await db.execute(
            """
            INSERT INTO events (id, envelope_id, position, type, encoding, next_index,
                                items_received, item_count, complete, size_bytes)
            SELECT gen_random_uuid(), e.id, 0, 'order.created', 'text', 2, 1, 1, true, $1
            FROM envelopes e JOIN processes p ON p.trigger_envelope_id = e.id
            """,
            item_bytes,
        )
        await db.execute(
            """
            INSERT INTO items (event_id, position, data)
            SELECT ev.id, 0, convert_to(repeat('i', $1), 'UTF8')
            FROM events ev JOIN processes p ON p.trigger_envelope_id = ev.envelope_id
            """,
            item_bytes,
        )
