"""A running process that nothing will move (no request open: a bug, or a hand edit of the
database) is found by the supervisor, logged with its id at ERROR, and counted in /metrics;
processes with work open, or changed a moment ago, are not."""

from __future__ import annotations

import logging
import uuid
from typing import Any

import asyncpg
import httpx
import pytest
from fastapi import FastAPI

from app.bus.supervisor import report_stranded, stranded
from tests.bus.conftest import ENVELOPE, Bus, chain
from tests.production.conftest import scrape


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"metrics_cache_seconds": 0}


async def test_stranded_processes_are_reported(
    bus: Bus,
    app: FastAPI,
    client: httpx.AsyncClient,
    db: asyncpg.Connection,
    caplog: pytest.LogCaptureFixture,
) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    url = f"/api/v1/actors/{em['name']}/output"
    stuck = (await acct.http.post(url, json=ENVELOPE)).json()["process_id"]
    fine = (await acct.http.post(url, json=ENVELOPE)).json()["process_id"]
    state = app.state.xbus
    assert await stranded(state.db, grace=0) == []  # both have a request pending

    # By hand: the request of one process ends, the process is left running.
    await db.execute("UPDATE requests SET status = 'canceled' WHERE process_id = $1::uuid", stuck)
    assert await stranded(state.db, grace=0) == [uuid.UUID(stuck)]
    assert await stranded(state.db, grace=3600) == []  # changed a moment ago: not yet
    assert (await scrape(client)).value("xbus_processes_stranded") == 0

    await db.execute(
        "UPDATE processes SET nodes_state_changed_at = now() - interval '1 hour', "
        "created_at = now() - interval '1 hour' WHERE id = $1::uuid",
        stuck,
    )
    with caplog.at_level(logging.ERROR, logger="app.bus.supervisor"):
        assert await report_stranded(state.db) == 1
    [record] = [r for r in caplog.records if r.name == "app.bus.supervisor"]
    assert stuck in record.getMessage()
    assert fine not in record.getMessage()
    assert (await scrape(client)).value("xbus_processes_stranded") == 1
