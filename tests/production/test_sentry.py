"""Sentry: a process that ends in error is reported once, titled with its pipeline, emitter
and the failing actor's first error, its whole log attached; without a DSN nothing of Sentry
is initialised. The DSN points at a stand-in on 127.0.0.1."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import uuid
from collections.abc import Iterator
from typing import Any

import asyncpg
import pytest
import sentry_sdk
from fastapi import FastAPI

from app.config import Settings
from app.db import Database, create_engine
from app.sentry import report_pass
from tests.bus.conftest import ENVELOPE, Bus, chain
from tests.bus.test_flow import poll, state
from tests.production.fake_sentry import FakeSentry, fake_sentry

PROCESS_LOGGER = "xbus.process"


@pytest.fixture
def sentry() -> Iterator[FakeSentry]:
    with fake_sentry() as server:
        yield server


@pytest.fixture
def settings_overrides(sentry: FakeSentry) -> dict[str, Any]:
    return {"sentry_dsn": sentry.dsn, "sentry_environment": "staging"}


async def test_failed_process_reported_with_title_and_logs(
    bus: Bus, app: FastAPI, sentry: FakeSentry, db: asyncpg.Connection
) -> None:
    assert sentry_sdk.get_client().is_active()
    acct = await bus.account()
    em = await bus.actor(acct, "emitter", name=f"shop-{uuid.uuid4().hex[:6]}")
    wk = await bus.actor(acct, "worker", name=f"parser-{uuid.uuid4().hex[:6]}")
    co = await bus.actor(acct, "consumer")
    pipeline = await bus.pipeline(
        chain(em["name"], ("worker", wk["name"]), ("consumer", co["name"])),
        name=f"orders-{uuid.uuid4().hex[:6]}",
    )
    # One process that ends well: never reported.
    good = (await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)).json()
    job = await poll(acct.http, wk["name"])
    assert job is not None
    out = {"events": [{"type": "x", "items": ["y"]}]}
    await state(acct.http, job["request_id"], status="success", outputs={"default": out})
    job = await poll(acct.http, co["name"])
    assert job is not None
    await state(acct.http, job["request_id"], status="success")

    bad = (await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)).json()
    job = await poll(acct.http, wk["name"])
    assert job is not None
    r = await state(
        acct.http,
        job["request_id"],
        status="error",
        messages=[
            {"level": "notice", "text": "reading 2 orders"},
            {"level": "warning", "text": "order 1 has no customer"},
            {"level": "error", "text": "cannot parse order 2\nline 3: unexpected '}'"},
            {"level": "error", "text": "giving up"},
        ],
    )
    assert r.status_code == 200

    [(event, envelope)] = await sentry.await_for(lambda e: e.get("logger") == PROCESS_LOGGER)
    title = f"{pipeline['name']} / {em['name']}: cannot parse order 2"
    assert event["message"] == title
    assert event["level"] == "error"
    assert event["environment"] == "staging"
    assert event["tags"]["pipeline"] == pipeline["name"]
    assert event["tags"]["emitter"] == em["name"]
    assert event["tags"]["actor"] == wk["name"]
    assert event["tags"]["node"] == "worker0"
    assert event["tags"]["process_id"] == bad["process_id"]
    assert event["contexts"]["process"]["status"] == "error"
    [(name, log)] = envelope.attachments().items()
    assert name == f"process-{bad['process_id']}.log"
    text = log.decode()
    for line in [
        "process started by emitter",
        "reading 2 orders",
        "order 1 has no customer",
        "cannot parse order 2",
        "line 3: unexpected '}'",
        "giving up",
        f"actor {wk['name']} failed on node worker0",
    ]:
        assert line in text, (line, text)
    assert f"[worker0 {wk['name']}]" in text
    crumbs = [c["message"] for c in event["breadcrumbs"]["values"]]
    assert "order 1 has no customer" in crumbs

    for _ in range(100):  # the mark commits right after the event is handed over
        reported = await db.fetch("SELECT id, sentry_reported_at FROM processes")
        if any(r["sentry_reported_at"] for r in reported):
            break
        await asyncio.sleep(0.05)
    assert {str(r["id"]): r["sentry_reported_at"] is not None for r in reported} == {
        good["process_id"]: False,
        bad["process_id"]: True,
    }
    # Another pass reports nothing again.
    assert await report_pass(app.state.xbus.db, 3600) == 0
    assert len(sentry.events(PROCESS_LOGGER)) == 1


async def test_without_an_actor_message_the_reason_is_the_title(
    bus: Bus, sentry: FakeSentry
) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    pipeline = await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    # The consumer is disabled: the node cannot be dispatched.
    r = await bus.admin.patch(f"/api/v1/actors/{co['id']}", json={"status": "disabled"})
    assert r.status_code == 200, r.text
    emitted = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
    assert emitted.status_code == 202
    [(event, _)] = await sentry.await_for(lambda e: e.get("logger") == PROCESS_LOGGER)
    assert event["message"].startswith(f"{pipeline['name']} / {em['name']}: no enabled consumer")


async def test_old_failures_are_not_reported(
    settings: Settings, clean_db: None, sentry: FakeSentry, db: asyncpg.Connection
) -> None:
    """Processes that ended before the report window (e.g. before Sentry was configured)."""
    engine = create_engine(settings)
    try:
        await db.execute(
            "INSERT INTO processes (id, status, created_at, status_changed_at, ended_at)"
            " VALUES ($1, 'error', now() - interval '3 days', now(), now() - interval '2 days')",
            uuid.uuid4(),
        )
        assert await report_pass(Database(engine), 86_400) == 0
        assert await report_pass(Database(engine), 4 * 86_400) == 1
    finally:
        await engine.dispose()


def test_nothing_of_sentry_without_a_dsn() -> None:
    code = (
        "import sys, asyncio\n"
        "from app.config import Settings\n"
        "from app.main import create_app\n"
        "from app.sentry import init_sentry\n"
        "import app.cli.xbusd\n"
        "create_app(Settings(database_url='postgresql://unused/x'))\n"
        "assert init_sentry(Settings(database_url='postgresql://unused/x')) is False\n"
        "print('sentry_sdk' in sys.modules)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        env={"PATH": "/usr/bin:/bin"},
    )
    assert out.stdout.strip() == "False"
