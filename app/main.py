"""The FastAPI application: `create_app(settings)` and the lifespan that owns every
connection and background task."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from prometheus_fastapi_instrumentator import Instrumentator

from app.accounts import router as accounts_router
from app.accounts.bootstrap import ensure_admin
from app.actors import router as actors_router
from app.bus.director import Director, Limits
from app.bus.doorbell import doorbell
from app.bus.notify import Notifier
from app.config import Settings
from app.core.bodylimit import BodyLimitMiddleware
from app.core.errors import PROBLEM_JSON, install_error_handlers
from app.db import Database, create_engine
from app.duties import DUTIES
from app.envelopes import router as envelopes_router
from app.health import router as health_router
from app.migrations import upgrade_async
from app.nats import NatsConnection
from app.pipelines import router as pipelines_router
from app.processes import router as processes_router
from app.requests import router as requests_router
from app.state import AppState
from app.version import version

log = logging.getLogger(__name__)

# Every API router, in the order the OpenAPI document lists them.
ROUTERS = [
    health_router.router,
    accounts_router.router,
    actors_router.router,
    pipelines_router.router,
    envelopes_router.router,
    requests_router.router,
    processes_router.router,
]

PROBLEM_SCHEMA = {
    "type": "object",
    "title": "Problem",
    "description": "RFC 9457 problem details",
    "required": ["type", "title", "status", "detail"],
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
        "instance": {"type": "string"},
        "errors": {"type": "array", "items": {"type": "object"}},
    },
}


def create_app(settings: Settings) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        notifier = Notifier()
        notifier.bind(asyncio.get_running_loop())
        director = Director(
            Limits(settings.request_max_attempts, timedelta(seconds=settings.request_lease))
        )
        state = AppState(
            settings=settings,
            db=Database(engine, notifier),
            nats=None,
            director=director,
            notifier=notifier,
        )
        app.state.xbus = state
        try:
            if settings.migrate_on_start:
                assert settings.database_url is not None
                await upgrade_async(settings.database_url)
            async with state.db.session() as session:
                await ensure_admin(session, settings)
            if settings.nats_url:
                state.nats = NatsConnection(settings.nats_url)
                state.nats.start()
                state.tasks.append(
                    asyncio.create_task(doorbell(state.nats, notifier), name="doorbell")
                )
            for name, duty in DUTIES:
                state.tasks.append(asyncio.create_task(duty(state), name=name))
            log.info("xbusd %s ready", version())
            yield
        finally:
            # Reverse order: background tasks, then NATS, then the database.
            for task in reversed(state.tasks):
                task.cancel()
            for task in reversed(state.tasks):
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            if state.nats is not None:
                await state.nats.close()
            await engine.dispose()

    app = FastAPI(
        title="Xbus",
        version=version(),
        summary="Application messaging bus: accounts, actors, pipelines, envelopes, processes.",
        lifespan=lifespan,
        # Operation ids are the route function names: stable, and readable in generated clients.
        generate_unique_id_function=lambda route: route.name,
    )
    install_error_handlers(app)
    for router in ROUTERS:
        app.include_router(router)
    if settings.metrics_enabled:
        Instrumentator(excluded_handlers=["/metrics"]).instrument(app).expose(
            app, include_in_schema=True, tags=["health"], summary="Prometheus metrics"
        )
    app.add_middleware(BodyLimitMiddleware, max_body_size=settings.max_body_size)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title, version=app.version, summary=app.summary, routes=app.routes
    )
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    # FastAPI documents its own validation error shape; ours is problem+json.
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            responses = operation.get("responses", {})
            if "422" in responses:
                responses["422"] = {
                    "description": "Unprocessable content",
                    "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
                }
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(name, None)
    app.openapi_schema = schema
    return schema
