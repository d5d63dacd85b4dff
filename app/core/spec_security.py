"""The OpenAPI document's security: the two ways to present an API key as security schemes,
required by default, and each operation's own requirement read from its dependencies.

Authentication is a plain dependency (`app.core.deps.authenticate`), not FastAPI's security
classes: those add two dependencies to every route, solved at every request. The document
says the same thing, derived from the routes, so it cannot drift from what they do:

- an operation that depends on `authenticate` needs a key (the global requirement), and
  documents 401 and 403;
- one that depends on `optional_key` takes a key or none (`security: [{}, ...]`);
- any other one is public (`security: []`): health, readiness, version, info, registration,
  /metrics (which has its own bearer token when `metrics_token` is set: documented there).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}
SCHEMES = {
    "bearerKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key (or a session token) as `Authorization: Bearer <key>`.",
    },
    "apiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "Xbus-Api-Key",
        "description": "An API key (or a session token) in the `Xbus-Api-Key` header.",
    },
}
REQUIRED: list[dict[str, list[str]]] = [{name: []} for name in SCHEMES]
OPTIONAL: list[dict[str, list[str]]] = [{}, *REQUIRED]


def _calls(dependant: Dependant) -> Iterator[Callable[..., Any]]:
    for sub in dependant.dependencies:
        if sub.call is not None:
            yield sub.call
        yield from _calls(sub)


def document_security(
    routes: Iterable[BaseRoute],
    schema: dict[str, Any],
    required: Callable[..., Any],
    optional: Callable[..., Any],
    problem_json: str,
) -> None:
    """Add the schemes, the global requirement, and each operation's own (see above).
    `routes`: every route of the app (operations are matched by their operation id, the
    route's name)."""
    schema.setdefault("components", {})["securitySchemes"] = SCHEMES
    schema["security"] = REQUIRED
    needs = {
        route.name: set(_calls(route.dependant)) for route in routes if isinstance(route, APIRoute)
    }
    for path in schema.get("paths", {}).values():
        for operation in path.values():
            calls = needs[operation["operationId"]]
            if required in calls:
                responses = operation.setdefault("responses", {})
                for status, phrase in (("401", "Unauthorized"), ("403", "Forbidden")):
                    responses.setdefault(
                        status,
                        {"description": phrase, "content": {problem_json: {"schema": PROBLEM_REF}}},
                    )
            elif optional in calls:
                operation["security"] = OPTIONAL
            else:
                operation["security"] = []
