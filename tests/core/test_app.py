"""The app skeleton: health, readiness, version, errors, body limit."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI, Request

from app.config import Settings
from app.main import create_app
from tests.conftest import assert_problem


async def test_healthz(client: httpx.AsyncClient) -> None:
    r = await client.get("/healthz")
    assert r.status_code == 200
    assert r.json() == {"status": "ok"}


async def test_readyz_reports_each_check(client: httpx.AsyncClient, app: FastAPI) -> None:
    await app.state.xbus.nats.connected_event.wait()
    r = await client.get("/readyz")
    assert r.status_code == 200, r.text
    assert r.json() == {
        "status": "ready",
        "checks": {"database": "ok", "migrations": "ok", "nats": "ok"},
    }


async def test_readyz_503_when_nats_unreachable(settings: Settings, clean_db: None) -> None:
    broken = settings.model_copy(update={"nats_url": "nats://127.0.0.1:1"})
    app = create_app(broken)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        r = await c.get("/readyz")
    assert r.status_code == 503
    assert r.json()["checks"]["nats"] == "unavailable"
    assert r.json()["checks"]["database"] == "ok"


async def test_version(client: httpx.AsyncClient) -> None:
    r = await client.get("/version")
    assert r.status_code == 200
    body = r.json()
    assert body["version"]
    assert body["protocol"] == "3.0"


async def test_unknown_route_is_problem_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/api/v1/nothing-here"), 404, "no route")


async def test_wrong_method_is_problem_405(client: httpx.AsyncClient) -> None:
    assert_problem(await client.delete("/healthz"), 405, "not allowed")


async def test_body_limit_answers_413(settings: Settings, clean_db: None) -> None:
    small = settings.model_copy(update={"max_body_size": 2048})
    app = create_app(small)
    received: list[int] = []

    @app.post("/echo")
    async def echo(request: Request) -> dict[str, int]:
        received.append(len(await request.body()))
        return {"size": received[-1]}

    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        r = await c.post("/echo", content=b"x" * 5000)
        assert_problem(r, 413, "2048 bytes")
        assert (await c.post("/echo", content=b"x" * 2000)).json() == {"size": 2000}

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(10):
                yield b"y" * 1000

        r = await c.post("/echo", content=chunks())  # no Content-Length
        assert_problem(r, 413)
    assert received == [2000]


async def test_500_never_leaks_a_traceback(settings: Settings, clean_db: None) -> None:
    app = create_app(settings)

    @app.get("/boom")
    async def boom() -> None:
        raise RuntimeError("secret internal detail")

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as c:
            r = await c.get("/boom")
    body = assert_problem(r, 500)
    assert "secret" not in r.text
    assert "Traceback" not in r.text
    assert body["detail"].startswith("internal error")


async def test_metrics_exposed(client: httpx.AsyncClient) -> None:
    await client.get("/healthz")
    r = await client.get("/metrics")
    assert r.status_code == 200
    assert "http_requests_total" in r.text
