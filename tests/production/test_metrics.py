"""/metrics: HTTP series, the bus's counters, scrape-time gauges read from PostgreSQL and the
nats-server, access by token, and the cache that keeps scrape storms off the database."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

import asyncpg
import httpx
import pytest
import sqlalchemy as sa
from fastapi import FastAPI

from app.config import Settings
from app.main import create_app
from app.runtime.nats import EmbeddedNats
from tests.bus.conftest import ENVELOPE, Bus, chain
from tests.bus.test_flow import poll, state
from tests.conftest import ADMIN_KEY
from tests.production.conftest import Scrape, scrape


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"metrics_cache_seconds": 0}


async def _shows_one_taken(
    client: httpx.AsyncClient, gauge: str, hold: Callable[[], AsyncIterator[None]]
) -> None:
    """`gauge` counts one more connection while `hold` holds one, and as many once it gave
    it back. The duties and the NATS dispatcher take connections of their own at any time
    (a process's end wakes the dispatcher): a reading they overlapped is taken again, a few
    times at most."""
    seen = []
    for _ in range(20):
        idle = (await scrape(client)).value(gauge)
        async with contextlib.asynccontextmanager(hold)():
            taken = (await scrape(client)).value(gauge)
        back = (await scrape(client)).value(gauge)
        if taken - idle == 1 and back == idle:
            return
        seen.append((idle, taken, back))
        await asyncio.sleep(0.1)
    raise AssertionError(f"{gauge} (idle, taken, given back): {seen}")


async def test_bus_series_follow_the_flow(
    bus: Bus, client: httpx.AsyncClient, app: FastAPI
) -> None:
    before = await scrape(client)
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    wk = await bus.actor(acct, "worker")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("worker", wk["name"]), ("consumer", co["name"])))

    emitted = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
    assert emitted.status_code == 202
    rejected = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json={"events": 1})
    assert rejected.status_code == 422
    await asyncio.sleep(0.05)

    mid = await scrape(client)
    assert mid.value("xbus_processes", status="running") == 1
    assert mid.value("xbus_processes", status="done") == 0
    assert mid.value("xbus_requests_pending", channel="poll") == 1
    assert mid.value("xbus_requests_pending", channel="webhook") == 0
    assert 0 <= mid.value("xbus_requests_oldest_due_age_seconds", channel="poll") < 60
    assert mid.value("xbus_requests_oldest_due_age_seconds", channel="nats") == 0
    for name, count in [("xbus_envelopes_received_total", 2), ("xbus_envelopes_accepted_total", 1)]:
        grew = mid.value(name, transport="http") - before.value(name, 0, transport="http")
        assert grew == count, name
    assert sum(v for labels, v in mid.samples["xbus_envelopes_rejected_total"]) >= 1
    assert mid.value("xbus_actors", kind="worker", status="enabled") == 1
    assert mid.value("xbus_actors_online", kind="consumer") == 0
    assert mid.value("xbus_actors_unresponsive", kind="emitter") == 0
    assert mid.value("xbus_metrics_source_up", source="database") == 1

    job = await poll(acct.http, wk["name"])
    assert job is not None
    inflight = await scrape(client)
    assert inflight.value("xbus_requests_in_flight", channel="poll") == 1
    assert inflight.value("xbus_requests_pending", channel="poll") == 0
    out = {"events": [{"type": "order.enriched", "items": ["x"]}]}
    assert (
        await state(acct.http, job["request_id"], status="success", outputs={"default": out})
    ).status_code == 200
    job = await poll(acct.http, co["name"])
    assert job is not None
    assert (await state(acct.http, job["request_id"], status="success")).status_code == 200

    after = await scrape(client)
    assert after.value("xbus_processes", status="running") == 0
    assert after.value("xbus_processes", status="done") == 1
    ended = after.value(
        "xbus_requests_ended_total", channel="poll", status="success"
    ) - before.value("xbus_requests_ended_total", 0, channel="poll", status="success")
    assert ended == 2
    done = after.value("xbus_processes_ended_total", status="done") - before.value(
        "xbus_processes_ended_total", 0, status="done"
    )
    assert done == 1
    assert after.value("xbus_process_duration_seconds_count") >= 1
    # HTTP metrics of the instrumentator, named by route template (ids not in the labels),
    # and the process-local figures.
    handlers = {labels["handler"] for labels in after.labels("http_requests_total")}
    assert "/api/v1/actors/{emitter}/output" in handlers
    assert "/api/v1/requests/{request_id}/state" in handlers
    assert "/api/v1/actors/{actor}/requests" in handlers
    assert not any(job["request_id"] in handler for handler in handlers)
    assert (
        after.value(
            "http_requests_total",
            handler="/api/v1/actors/{emitter}/output",
            method="POST",
            status="2xx",
        )
        - before.value(
            "http_requests_total",
            0,
            handler="/api/v1/actors/{emitter}/output",
            method="POST",
            status="2xx",
        )
        == 1
    )
    assert after.value("xbus_db_pool_size") == 5

    # A connection taken out of the pool shows, and going back too.
    async def held_session() -> AsyncIterator[None]:
        async with app.state.xbus.db.session() as held:
            await held.connection()
            yield

    await _shows_one_taken(client, "xbus_db_pool_checked_out", held_session)
    assert after.has("xbus_db_pool_overflow")
    # The hot routes' pool (the emission above ran on it) likewise.
    assert after.value("xbus_db_hot_pool_size") == app.state.xbus.settings.db_hot_pool_size
    assert after.value("xbus_db_hot_pool_open") >= 1

    async def held_work() -> AsyncIterator[None]:
        work = app.state.xbus.db.work()
        await work.connection()
        try:
            yield
        finally:
            await work.commit()

    await _shows_one_taken(client, "xbus_db_hot_pool_in_use", held_work)
    assert after.has("xbus_log_records_dropped_total")
    assert after.value("xbus_info") == 1


async def test_error_ends_and_cancels_count(bus: Bus, client: httpx.AsyncClient) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co1 = await bus.actor(acct, "consumer")
    co2 = await bus.actor(acct, "consumer")
    graph: dict[str, Any] = {
        "nodes": [
            {
                "id": "e",
                "type": "emitter",
                "actors": [em["name"]],
                "sourcematch": {"eventtypes": ["order.created"]},
            },
            {"id": "c1", "type": "consumer", "actors": [co1["name"]]},
            {"id": "c2", "type": "consumer", "actors": [co2["name"]]},
        ],
        "edges": ["e->c1", "e->c2"],
    }
    await bus.pipeline(graph)
    before = await scrape(client)
    await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
    job = await poll(acct.http, co1["name"])
    assert job is not None
    r = await state(acct.http, job["request_id"], status="error", messages=[{"text": "boom"}])
    assert r.status_code == 200
    after = await scrape(client)

    def grew(**labels: str) -> float:
        name = "xbus_requests_ended_total"
        return after.value(name, 0, **labels) - before.value(name, 0, **labels)

    assert grew(channel="poll", status="error") == 1
    assert grew(channel="poll", status="canceled") == 1  # c2's request, withdrawn
    assert after.value("xbus_processes", status="error") == 1
    assert after.value("xbus_postmortems_open", status="new", level="error") == 1


async def test_http_series_name_each_request_by_its_route(
    client: httpx.AsyncClient, admin: httpx.AsyncClient
) -> None:
    """Each request is counted under the template of the route that answered it (not its
    path), its status class and method; a static file under its mount; one that no route
    takes under "none"; /metrics not at all. Sizes and durations are observed beside."""

    def total(scrape: Scrape, handler: str, method: str, status: str) -> float:
        return scrape.value("http_requests_total", 0, handler=handler, method=method, status=status)

    before = await scrape(client)
    assert (await admin.get("/api/v1/actors/nobody-here")).status_code == 404
    assert (await admin.get("/api/v1/actors/nobody-here/requests")).status_code == 404
    assert (await client.get("/healthz")).status_code == 200
    assert (await client.get("/no/such/route/at/all")).status_code == 404
    assert (await client.get("/console/static/console.css")).status_code == 200
    after = await scrape(client)
    for handler, method, status in [
        ("/api/v1/actors/{id_or_name}", "GET", "4xx"),
        ("/api/v1/actors/{actor}/requests", "GET", "4xx"),
        ("/healthz", "GET", "2xx"),
        ("none", "GET", "4xx"),
        ("/console/static", "GET", "2xx"),
    ]:
        grew = total(after, handler, method, status) - total(before, handler, method, status)
        assert grew == 1, (handler, method, status)
    handlers = {labels["handler"] for labels in after.labels("http_requests_total")}
    assert not any("nobody-here" in handler for handler in handlers)
    assert "/metrics" not in handlers
    count = "http_request_duration_seconds_count"
    assert after.value(count, handler="/healthz", method="GET") > before.value(
        count, 0, handler="/healthz", method="GET"
    )
    size = "http_response_size_bytes_sum"
    assert after.value(size, handler="/healthz") > before.value(size, 0, handler="/healthz")


@pytest.mark.parametrize("settings_overrides", [{"metrics_token": "s3cret-scraper"}])
async def test_metrics_token(client: httpx.AsyncClient) -> None:
    r = await client.get("/metrics")
    assert r.status_code == 401
    assert r.headers["content-type"].startswith("application/problem+json")
    assert (
        await client.get("/metrics", headers={"Authorization": "Bearer nope"})
    ).status_code == 401
    assert (
        await client.get("/metrics", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    ).status_code == 401
    ok = await scrape(client, Authorization="Bearer s3cret-scraper")
    assert ok.has("xbus_processes")
    # Everything else is unchanged.
    assert (await client.get("/healthz")).status_code == 200


@pytest.mark.parametrize("settings_overrides", [{"metrics_enabled": False}])
async def test_metrics_disabled(client: httpx.AsyncClient) -> None:
    assert (await client.get("/metrics")).status_code == 404


@pytest.mark.parametrize("settings_overrides", [{"metrics_cache_seconds": 30}])
async def test_scrape_storm_reads_the_database_once(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    statements: list[str] = []
    engine = app.state.xbus.db.engine.sync_engine

    def seen(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", seen)
    try:
        answers = await asyncio.gather(*(client.get("/metrics") for _ in range(50)))
    finally:
        sa.event.remove(engine, "before_cursor_execute", seen)
    assert {r.status_code for r in answers} == {200}
    readings = [s for s in statements if "GROUP BY actors.kind" in s]
    assert len(readings) == 1, readings  # one reading served 50 scrapes
    # The cached reading is the same for every scrape.
    refresh = {Scrape(r.text).value("xbus_metrics_refresh_seconds") for r in answers}
    assert len(refresh) == 1


@pytest.mark.parametrize(
    "settings_overrides", [{"metrics_cache_seconds": 0, "metrics_query_timeout": 0.3}]
)
async def test_slow_query_loses_only_its_series(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    async with db.transaction():
        # The process gauges read the counts kept beside the processes (migration 0008).
        await db.execute("LOCK TABLE process_counts IN ACCESS EXCLUSIVE MODE")
        started = time.monotonic()
        blocked = await scrape(client)
        took = time.monotonic() - started
    assert took < 5
    assert not blocked.has("xbus_processes")
    assert blocked.value("xbus_metrics_errors_total", source="database:processes_active") >= 1
    assert blocked.has("xbus_actors_online")  # other tables are read as usual
    assert blocked.has("xbus_envelopes_receiving")
    assert blocked.value("xbus_metrics_source_up", source="database") == 1
    free = await scrape(client)
    assert free.value("xbus_processes", status="running") == 0


async def test_nats_varz_series(settings: Settings, clean_db: None, own_nats: EmbeddedNats) -> None:
    configured = settings.model_copy(
        update={
            "nats_url": own_nats.url(),
            "nats_monitor_url": own_nats.monitor_url,
            "metrics_cache_seconds": 0,
        }
    )
    app = create_app(configured)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        await asyncio.wait_for(app.state.xbus.nats.connected_event.wait(), 10)
        await asyncio.sleep(0.1)
        first = await scrape(c)
        await c.get("/healthz")
        second = await scrape(c)
    assert first.value("xbus_nats_up") == 1
    assert first.value("xbus_nats_connections") >= 1  # xbusd itself
    assert first.value("xbus_nats_connections_total") >= 1
    for name in (
        "xbus_nats_in_msgs_total",
        "xbus_nats_out_msgs_total",
        "xbus_nats_in_bytes_total",
        "xbus_nats_out_bytes_total",
        "xbus_nats_slow_consumers_total",
        "xbus_nats_subscriptions",
        "xbus_nats_cpu_percent",
    ):
        assert first.has(name), name
    assert first.value("xbus_nats_mem_bytes") > 1_000_000
    [info] = first.labels("xbus_nats_info")
    assert info["version"].count(".") >= 2
    assert second.value("xbus_nats_in_msgs_total") >= first.value("xbus_nats_in_msgs_total")


@pytest.mark.parametrize(
    "settings_overrides",
    [
        {
            "metrics_cache_seconds": 0,
            "nats_monitor_url": "http://127.0.0.1:1",
            "metrics_query_timeout": 1,
        }
    ],
)
async def test_nats_monitor_unreachable(client: httpx.AsyncClient) -> None:
    result = await scrape(client)
    assert result.value("xbus_nats_up") == 0
    assert result.value("xbus_metrics_errors_total", source="nats") >= 1
    assert result.has("xbus_processes")


def test_http_series_are_the_instrumentators_default() -> None:
    """`HttpSeries` records what prometheus-fastapi-instrumentator's default instrumentation
    records for the same requests: the same exposition, to the help texts and buckets."""
    from prometheus_client import CollectorRegistry, generate_latest
    from prometheus_fastapi_instrumentator import metrics
    from starlette.requests import Request as StarletteRequest
    from starlette.responses import Response as StarletteResponse

    from app.metrics_collector import HttpSeries

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    series, default = HttpSeries(ours), metrics.default(registry=theirs)
    assert default is not None
    requests = [
        ("GET", "2xx", "/healthz", None, b"ok", 0.003),
        ("POST", "2xx", "/api/v1/actors/{emitter}/output", b"312", b"x" * 120, 0.04),
        ("POST", "4xx", "/api/v1/actors/{emitter}/output", b"9", b"x" * 80, 0.7),
        ("GET", "4xx", "none", None, b"", 12.0),
        ("GET", "2xx", "/healthz", None, None, 0.2),  # streamed: no Content-Length
    ]
    for method, status, handler, received, body, duration in requests:
        raw = [(b"content-length", received)] if received is not None else []
        scope = {"type": "http", "method": method, "path": "/", "headers": raw}
        response = StarletteResponse(body) if body is not None else StarletteResponse()
        if body is None:
            del response.headers["content-length"]
        sent = response.raw_headers
        series.record(
            method,
            status,
            handler,
            int(received or 0),
            int(dict(sent).get(b"content-length", 0)),
            duration,
        )
        default(
            metrics.Info(
                request=StarletteRequest(scope),
                response=response,
                method=method,
                modified_handler=handler,
                modified_status=status,
                modified_duration=duration,
                modified_duration_without_streaming=0.0,
            )
        )

    def exposition(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return [line for line in text.splitlines() if "_created" not in line]

    assert exposition(ours) == exposition(theirs)
    assert 'http_request_size_bytes_sum{handler="/api/v1/actors/{emitter}/output"} 321.0' in (
        exposition(ours)
    )
