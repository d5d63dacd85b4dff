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

from app import heap
from app.accounts import router as accounts_router
from app.accounts.bootstrap import ensure_admin
from app.actors import router as actors_router
from app.bus.director import Director, Limits
from app.bus.notify import Notifier
from app.bus.routing import Targets
from app.certs.pki import CertificateAuthority
from app.config import Settings
from app.console.mount import install as install_console
from app.core.bodylimit import BodyLimitMiddleware
from app.core.deps import authenticate
from app.core.errors import PROBLEM_JSON, install_error_handlers
from app.core.spec_examples import add_examples
from app.core.spec_security import document_security
from app.db import Database, create_engine
from app.doorbell import doorbell
from app.duties import DUTIES, Duty
from app.envelopes import router as envelopes_router
from app.envelopes.group import EmissionGroups
from app.health import router as health_router
from app.metrics_collector import install_metrics
from app.migrations import upgrade_async
from app.nats import NatsConnection, tls_context
from app.ops import router as ops_router
from app.pipelines import router as pipelines_router
from app.processes import router as processes_router
from app.registrations import router as registrations_router
from app.requests import router as requests_router
from app.sentry import close_sentry, init_sentry
from app.state import AppState
from app.store.cache import Cache
from app.version import version
from app.webhooks import router as webhooks_router
from app.webhooks.spec import declare_webhooks

log = logging.getLogger(__name__)

# Every API router, in the order the OpenAPI document lists them.
ROUTERS = [
    health_router.router,
    accounts_router.router,
    registrations_router.router,
    actors_router.router,
    pipelines_router.router,
    envelopes_router.router,
    requests_router.router,
    webhooks_router.router,
    processes_router.router,
    ops_router.router,
]

# The order requests are matched in. FastAPI, then the metrics middleware to name the
# request, try the routes one by one (~2 µs each, ~70 routes: up to 0.25 ms a request), so
# the routers of the hot paths (lease and report, emit) come first. No two routes of one
# method match the same path (tests/core/test_routes.py): the order changes how many are
# tried, never which one answers.
MATCHED_FIRST = [requests_router.router, envelopes_router.router]
MATCH_ORDER = [*MATCHED_FIRST, *(router for router in ROUTERS if router not in MATCHED_FIRST)]

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


_DUTY_STOP_TIMEOUT = 30.0


async def _guarded(name: str, duty: Duty, state: AppState) -> None:
    """A duty that dies says so in the log (it would otherwise fail silently)."""
    try:
        await duty(state)
    except asyncio.CancelledError:
        raise
    except Exception:
        log.exception("background duty %s stopped with an error", name)


def create_app(
    settings: Settings, *, bootstrap_admin: bool = True, serving: bool = False
) -> FastAPI:
    """`bootstrap_admin=False` skips ensuring the admin account at start: the workers of
    `xbusd serve --workers N` leave it to their supervisor, which does it once for all.
    `serving=True` says the process runs this app alone for its whole life (`xbusd serve`
    and its workers): once started, its heap is settled (`app.heap`)."""

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_engine(settings)
        notifier = Notifier()
        notifier.bind(asyncio.get_running_loop())
        cache = Cache(notifier)
        director = Director(
            Limits(settings.request_max_attempts, timedelta(seconds=settings.request_lease)),
            Targets(cache),
        )
        state = AppState(
            settings=settings,
            db=Database(engine, notifier, settings.db_hot_pool_size),
            nats=None,
            director=director,
            notifier=notifier,
            cache=cache,
        )
        if settings.emission_group_max:
            state.emissions = EmissionGroups(state.db, director, settings.emission_group_max)
        app.state.xbus = state
        sentry = init_sentry(settings)
        try:
            if settings.migrate_on_start:
                assert settings.database_url is not None
                await upgrade_async(settings.database_url)
            if bootstrap_admin:
                async with state.db.session() as session:
                    await ensure_admin(session, settings)
            state.ca = CertificateAuthority.load_or_create(settings.pki_path)
            if settings.nats_url:
                tls = tls_context(
                    settings.nats_tls_ca, settings.nats_tls_cert, settings.nats_tls_key
                )
                state.nats = NatsConnection(settings.nats_url, tls=tls)
                state.nats.start()
                state.tasks.append(
                    asyncio.create_task(doorbell(state.nats, notifier), name="doorbell")
                )
            for name, duty in DUTIES:
                state.tasks.append(asyncio.create_task(_guarded(name, duty, state), name=name))
            if serving:
                heap.settle()
            log.info("xbusd %s ready", version())
            yield
        finally:
            # Reverse order: background tasks, then NATS, then the database.
            if state.emissions is not None:
                await state.emissions.close()
            for task in reversed(state.tasks):
                task.cancel()
            if state.tasks:
                # Duties finish what is in flight within their own grace; none may hold the
                # shutdown hostage beyond it.
                _, stuck = await asyncio.wait(state.tasks, timeout=_DUTY_STOP_TIMEOUT)
                for task in stuck:
                    log.warning("background duty %s did not stop in time", task.get_name())
            if state.nats is not None:
                await state.nats.close()
            await state.db.close()
            if sentry:
                close_sentry()

    app = FastAPI(
        title="Xbus",
        version=version(),
        summary="Application messaging bus: accounts, actors, pipelines, envelopes, processes.",
        lifespan=lifespan,
        # Operation ids are the route function names: stable, and readable in generated clients.
        generate_unique_id_function=lambda route: route.name,
    )
    install_error_handlers(app)
    for router in MATCH_ORDER:
        app.include_router(router)
    if settings.console_enabled:
        install_console(app)
    install_metrics(app, settings)
    declare_webhooks(app)
    app.add_middleware(BodyLimitMiddleware, max_body_size=settings.max_body_size)
    app.openapi = lambda: _openapi(app)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI) -> dict[str, Any]:
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        summary=app.summary,
        routes=sorted(app.routes, key=_documented_rank),
        webhooks=app.webhooks.routes,
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
    for item in schema.get("webhooks", {}).values():
        for operation in item.values():
            operation["responses"].pop("422", None)  # a receiver's answers, not ours
    for name in ("HTTPValidationError", "ValidationError"):
        schema["components"]["schemas"].pop(name, None)
    routes = [*app.routes, *(route for router in ROUTERS for route in router.routes)]
    document_security(routes, schema, authenticate, accounts_router.optional_key, PROBLEM_JSON)
    _hoist_body_schemas(schema)
    _add_component(schema, envelopes_router.BATCH_ENVELOPE_SCHEMA)
    _document_body_errors(schema)
    add_examples(schema)
    app.openapi_schema = schema
    return schema


def _documented_rank(route: Any) -> int:
    """Where a route of `app.routes` comes in the document: its router's place in ROUTERS
    (an included router is one entry of `app.routes`), the app's own routes after them."""
    router = getattr(route, "original_router", None)
    return ROUTERS.index(router) if router in ROUTERS else len(ROUTERS)


def _hoist_body_schemas(schema: dict[str, Any]) -> None:
    """Request bodies documented by hand (`openapi_extra`, e.g. the envelope JSON) carry a
    pydantic schema whose `$defs` their `$ref`s point at as components: move the `$defs`
    and the body itself into components, so every reference resolves (generated clients and
    schemathesis need it)."""
    components = schema["components"]["schemas"]
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                body = media.get("schema", {})
                defs = body.pop("$defs", None)
                if defs is None:
                    continue
                for name, definition in defs.items():
                    components.setdefault(name, definition)
                title = body.get("title")
                if title and title not in components:
                    components[title] = body
                    media["schema"] = {"$ref": f"#/components/schemas/{title}"}


def _add_component(schema: dict[str, Any], model_schema: dict[str, Any]) -> None:
    """A pydantic schema that no route names (documented by hand) as a component, with its
    own `$defs` beside it."""
    components = schema["components"]["schemas"]
    body = dict(model_schema)
    for name, definition in body.pop("$defs", {}).items():
        components.setdefault(name, definition)
    components[body["title"]] = body


def _document_body_errors(schema: dict[str, Any]) -> None:
    """Every operation with a body answers 400 when the body cannot be parsed at all (not
    JSON): say so, as problem+json like every error."""
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            if "requestBody" in operation:
                operation.setdefault("responses", {}).setdefault(
                    "400",
                    {
                        "description": "Bad request (a body that cannot be parsed)",
                        "content": {
                            PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}
                        },
                    },
                )
