"""Routes answered without FastAPI's per-request machinery.

For each request FastAPI solves the route's dependencies (walking their tree and inspecting
each callable again), validates the returned model against the response model and
serializes it: ~10% of xbusd's CPU under emissions (py-spy), more than the rest of the
route's own Python work. A hot route declares a *direct handler* (`@direct(handler)`), a
coroutine that reads the request's parameters itself and returns what the route function
returns (sent as FastAPI would, with the route's status code). A handler that meets
anything but plain, valid input (a missing or odd content type, JSON that does not parse
or validate, a query value it does not read as FastAPI would for sure) returns None before
doing anything, and FastAPI's own handler takes the request: bad input gets exactly
FastAPI's answer. The route keeps its signature, so the OpenAPI document, the routing, the
middlewares and the exception handlers (problem+json, 503 with Retry-After) are those of
any route. The router must use `DirectRoute` as its route class."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

from fastapi import Request, Response
from fastapi.routing import APIRoute
from pydantic import BaseModel, ValidationError

# What the route function returned, or None to leave the request to FastAPI's handler.
Handler = Callable[[Request], Awaitable[Any]]
F = TypeVar("F", bound=Callable[..., Any])
M = TypeVar("M", bound=BaseModel)

_ATTRIBUTE = "__xbus_direct__"
_JSON_TYPE = re.compile(r"application/(?:[\w.+-]+\+)?json\s*(?:;.*)?", re.IGNORECASE)
_UUID = re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}")
_NUMBER = re.compile(r"\d{1,9}(?:\.\d{1,9})?")
_INTEGER = re.compile(r"\d{1,9}")


def direct(handler: Handler) -> Callable[[F], F]:
    """Marks a route function as answered by `handler` (placed below the route decorator)."""

    def mark(endpoint: F) -> F:
        setattr(endpoint, _ATTRIBUTE, handler)
        return endpoint

    return mark


class DirectRoute(APIRoute):
    """An APIRoute that runs its endpoint's direct handler, when it has one, and FastAPI's
    own handler for what the direct one declines."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        standard = super().get_route_handler()
        handler: Handler | None = getattr(self.endpoint, _ATTRIBUTE, None)
        if handler is None:
            return standard

        status_code = self.status_code or 200  # as FastAPI answers the route's model

        async def run(request: Request) -> Response:
            result = await handler(request)
            if result is None:
                return await standard(request)
            return _response(result, status_code)

        return run


async def json_body(request: Request) -> Any:
    """The request's JSON body, or None when FastAPI should read it: a content type other
    than JSON, or a body that is empty or does not parse (its error is FastAPI's)."""
    if not _JSON_TYPE.fullmatch(request.headers.get("content-type", "")):
        return None
    body = await request.body()  # kept by the request for FastAPI's handler, if it reads it
    try:
        return json.loads(body) if body else None
    except (ValueError, RecursionError):
        return None


def validated(model: type[M], data: Any) -> M | None:
    """`data` as the body model, as FastAPI validates a body; None when it does not
    validate (FastAPI's handler then answers with its errors)."""
    if not isinstance(data, dict):
        return None
    try:
        return model.model_validate(data)
    except ValidationError:
        return None


def uuid_text(value: str) -> bool:
    """The canonical form of a UUID (other forms are left to FastAPI)."""
    return _UUID.fullmatch(value) is not None


def query_number(request: Request, name: str, *, integer: bool) -> tuple[bool, Any]:
    """A query parameter read as a plain non-negative number: (True, the number), (True,
    None) when absent, (False, None) in any other form (FastAPI's handler reads it then, and
    answers its errors)."""
    raw = request.query_params.get(name)
    if raw is None:
        return True, None
    if not (_INTEGER if integer else _NUMBER).fullmatch(raw):
        return False, None
    return True, int(raw) if integer else float(raw)


def _response(result: Any, status_code: int) -> Response:
    """A route's result as FastAPI would send it: a Response as it is, a model as JSON (by
    alias, as FastAPI's response model serialization) with the route's status."""
    if isinstance(result, Response):
        return result
    assert isinstance(result, BaseModel), type(result)
    return Response(
        result.model_dump_json(by_alias=True),
        status_code=status_code,
        media_type="application/json",
    )
