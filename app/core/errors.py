"""One error tree, one handler: every 4xx/5xx is RFC 9457 `application/problem+json`."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.core.exceptions import (
    BadRequest,
    Conflict,
    Forbidden,
    NotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    Unauthorized,
    Unprocessable,
    UnsupportedMediaType,
    XbusError,
)
from app.store.connection import CONNECTION_LOST, RETRY_LATER, connection_lost

log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
TYPE_BASE = "https://xbus.dev/problems/"


__all__ = [
    "BadRequest",
    "Conflict",
    "Forbidden",
    "NotFound",
    "PayloadTooLarge",
    "ServiceUnavailable",
    "Unauthorized",
    "Unprocessable",
    "UnsupportedMediaType",
    "XbusError",
]


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    code: str | None = None,
    instance: str | None = None,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    body = problem_body(status, detail, title=title, code=code, instance=instance, extra=extra)
    return JSONResponse(body, status_code=status, media_type=PROBLEM_JSON, headers=headers)


def error_body(exc: XbusError, instance: str | None = None) -> dict[str, Any]:
    """The problem document of an error, for one entry of a batch answer."""
    return problem_body(
        exc.status, exc.detail, title=exc.title, code=exc.code, instance=instance, extra=exc.extra
    )


def problem_body(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    code: str | None = None,
    instance: str | None = None,
    extra: dict[str, Any] | None = None,
) -> dict[str, Any]:
    phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
    body: dict[str, Any] = {
        "type": TYPE_BASE + (code or phrase.lower().replace(" ", "-")),
        "title": title or phrase,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if extra:
        body.update(extra)
    return body


def _validation_errors(errors: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for err in errors:
        loc = [str(part) for part in err.get("loc", ())]
        out.append({"loc": loc, "msg": err.get("msg", ""), "type": err.get("type", "")})
    return out


# SQLAlchemy's names for a database that cannot be reached (connect, lost, asked to retry).
SQLA_UNAVAILABLE: tuple[type[Exception], ...] = (sa_exc.OperationalError, sa_exc.InterfaceError)
DATABASE_UNAVAILABLE = (*CONNECTION_LOST, *SQLA_UNAVAILABLE)


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database is out of reach or asked to retry (answered 503 with
    Retry-After)."""
    return connection_lost(exc) or isinstance(exc, RETRY_LATER + SQLA_UNAVAILABLE)


def install_error_handlers(app: FastAPI) -> None:
    async def on_xbus_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, XbusError)
        return problem(
            exc.status,
            exc.detail,
            title=exc.title,
            code=exc.code,
            instance=request.url.path,
            extra=exc.extra,
            headers=exc.headers,
        )

    async def on_validation_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        errors = _validation_errors(exc.errors())
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(first["loc"])
        detail = f"{where}: {first['msg']}" if where else str(first["msg"])
        if len(errors) > 1:
            detail += f" (and {len(errors) - 1} more)"
        return problem(
            422,
            detail,
            title="Invalid request",
            code="validation-error",
            instance=request.url.path,
            extra={"errors": errors},
        )

    async def on_http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        detail = exc.detail if isinstance(exc.detail, str) else HTTPStatus(exc.status_code).phrase
        if exc.status_code == 404 and detail == "Not Found":
            detail = f"no route {request.method} {request.url.path}"
        elif exc.status_code == 405:
            detail = f"method {request.method} is not allowed on {request.url.path}"
        return problem(
            exc.status_code, detail, instance=request.url.path, headers=dict(exc.headers or {})
        )

    async def on_unexpected(request: Request, exc: Exception) -> JSONResponse:
        if connection_lost(exc):  # e.g. the driver's OSError: the database's socket is gone
            return await on_database_unavailable(request, exc)
        log.exception("unhandled error on %s %s", request.method, request.url.path)
        return problem(
            500, "internal error; the server log has the details", instance=request.url.path
        )

    async def on_database_unavailable(request: Request, exc: Exception) -> JSONResponse:
        if not unavailable(exc):
            return await on_unexpected(request, exc)
        log.warning("database unavailable on %s %s: %s", request.method, request.url.path, exc)
        return problem(
            503,
            "the database is not reachable or asked to retry; retry shortly",
            instance=request.url.path,
            headers={"Retry-After": "1"},
        )

    app.add_exception_handler(XbusError, on_xbus_error)
    # A lost connection (the database restarting, a connection killed) is met when it is
    # used: no ping before each checkout. The pool drops the broken connection.
    # OSError: the driver's own, when the database's socket cannot be opened (refused, no
    # Unix socket while the server restarts); any other OSError is still a 500.
    for error in (*DATABASE_UNAVAILABLE, *RETRY_LATER, sa_exc.DBAPIError, OSError):
        app.add_exception_handler(error, on_database_unavailable)
    app.add_exception_handler(RequestValidationError, on_validation_error)
    app.add_exception_handler(StarletteHTTPException, on_http_error)
    app.add_exception_handler(Exception, on_unexpected)


class Problem:
    """Response documentation for routes (`responses=Problem.of(401, 404)`)."""

    @staticmethod
    def of(*statuses: int) -> dict[int | str, dict[str, Any]]:
        return {
            status: {
                "description": HTTPStatus(status).phrase,
                "content": {PROBLEM_JSON: {"schema": {"$ref": "#/components/schemas/Problem"}}},
            }
            for status in statuses
        }
