from __future__ import annotations

import time
from typing import Any

import sqlalchemy as sa
from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from app.core.deps import State
from app.migrations import head_revision
from app.runtime.watchdog import UP, read_status
from app.version import PROTOCOL_VERSION, full_version, version

router = APIRouter(tags=["health"])


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    checks: dict[str, str]


class VersionInfo(BaseModel):
    version: str
    protocol: str
    commit: str | None
    commit_date: str | None
    dirty: bool | None
    python: str
    platform: str
    dependencies: dict[str, str | None]


def _embedded_down(servers: dict[str, dict[str, Any]]) -> dict[str, tuple[str, float | None]]:
    """Of the embedded servers as the watchdog last wrote them (`read_status`), those not
    up: {name: (why, seconds down, None when unknown)}."""
    down = {}
    now = time.time()
    for name, server in servers.items():
        if server.get("state") == UP:
            continue
        since = server.get("down_since")
        seconds = now - since if isinstance(since, int | float) else None
        how_long = "down" if seconds is None else f"down for {seconds:.0f} s"
        why = f"{server.get('state')}, {how_long}, last exit code {server.get('last_exit')}"
        if server.get("last_error"):
            why += f", last error: {server['last_error']}"
        down[name] = (why, seconds)
    return down


@router.get(
    "/healthz",
    summary="Liveness: 200 while the process runs and its embedded servers are not down "
    "past their restart window",
    response_model=Health,
    responses={503: {"model": Health, "description": "An embedded server stays down"}},
)
async def healthz(state: State) -> Any:
    settings = state.settings
    for name, (why, seconds) in _embedded_down(read_status(settings.embedded_status_file)).items():
        if seconds is None or seconds > settings.embedded_down_grace:
            body = Health(status=f"the embedded {name} is down: {why}")
            return JSONResponse(body.model_dump(), status_code=503)
    return Health(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: database, NATS and migrations",
    response_model=Readiness,
    responses={503: {"model": Readiness, "description": "Not ready"}},
)
async def readyz(state: State) -> Any:
    checks: dict[str, str] = {}
    try:
        async with state.db.engine.connect() as conn:
            await conn.execute(sa.text("SELECT 1"))
        checks["database"] = "ok"
        async with state.db.engine.connect() as conn:
            revision = (
                await conn.execute(sa.text("SELECT version_num FROM alembic_version"))
            ).scalar()
        head = head_revision()
        checks["migrations"] = "ok" if revision == head else f"at {revision}, want {head}"
    except Exception as exc:
        checks["database"] = f"unavailable: {type(exc).__name__}"
        checks["migrations"] = "unknown"
    if state.nats is None:
        checks["nats"] = "disabled"
    else:
        checks["nats"] = "ok" if state.nats.is_connected else "unavailable"
    servers = read_status(state.settings.embedded_status_file)
    down = _embedded_down(servers)
    for name in servers:
        checks[f"embedded {name}"] = down[name][0] if name in down else "ok"
    ready = all(v in ("ok", "disabled") for v in checks.values())
    body = Readiness(status="ready" if ready else "not ready", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ready else 503)


class BusInfo(BaseModel):
    version: str
    protocol: str
    nats_url: str | None


@router.get(
    "/api/v1/info",
    summary="Where actors connect: version, protocol, NATS URL",
    response_model=BusInfo,
)
async def info(state: State) -> BusInfo:
    settings = state.settings
    return BusInfo(
        version=version(),
        protocol=PROTOCOL_VERSION,
        nats_url=settings.nats_public_url or settings.nats_url,
    )


@router.get("/version", summary="Version and build details", response_model=VersionInfo)
async def get_version() -> VersionInfo:
    return VersionInfo(**full_version())


__all__ = ["PROTOCOL_VERSION", "router", "version"]
