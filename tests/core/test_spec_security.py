"""The OpenAPI document's security says what the routes do: an operation it says needs a
key answers 401 without one (never 2xx), one it says is public never asks for a key, and
the key works through both declared schemes."""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
from fastapi import FastAPI

from tests.conftest import ADMIN_KEY


def operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [
        (method.upper(), path, op)
        for path, item in spec["paths"].items()
        for method, op in item.items()
    ]


def concrete(path: str) -> str:
    """The path with each parameter filled in (an id nobody has)."""
    return re.sub(r"\{[^}]+\}", str(uuid.uuid4()), path)


async def test_the_spec_declares_the_key_schemes(app: FastAPI) -> None:
    spec = app.openapi()
    schemes = spec["components"]["securitySchemes"]
    assert schemes["bearerKey"] == {
        "type": "http",
        "scheme": "bearer",
        "description": schemes["bearerKey"]["description"],
    }
    assert schemes["apiKeyHeader"]["in"] == "header"
    assert schemes["apiKeyHeader"]["name"] == "Xbus-Api-Key"
    assert spec["security"] == [{"bearerKey": []}, {"apiKeyHeader": []}]
    public = {(m, p) for m, p, op in operations(spec) if op.get("security") == []}
    assert {
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/version"),
        ("GET", "/api/v1/info"),
        ("GET", "/metrics"),
        ("POST", "/api/v1/registrations"),
    } <= public
    for method, path, op in operations(spec):
        if "security" not in op:  # the global requirement: a key
            assert {"401", "403"} <= set(op["responses"]), (method, path)


async def test_every_operation_answers_as_its_security_says(
    app: FastAPI, client: httpx.AsyncClient
) -> None:
    spec = app.openapi()
    checked = 0
    for method, path, op in operations(spec):
        body: dict[str, Any] | None = {} if "requestBody" in op else None
        r = await client.request(method, concrete(path), json=body)  # no key at all
        if "security" not in op:
            assert r.status_code == 401, (method, path, r.status_code, r.text[:200])
            checked += 1
        elif op["security"] == []:
            assert r.status_code != 401, (method, path, "public, yet asks for a key")
        # A wrong key is refused by every protected operation, through either scheme.
        if "security" not in op:
            for headers in ({"Authorization": "Bearer xbk_nope"}, {"Xbus-Api-Key": "xbk_nope"}):
                r = await client.request(method, concrete(path), headers=headers, json=body)
                assert r.status_code == 401, (method, path, headers)
    assert checked > 50


async def test_the_key_works_through_both_schemes(client: httpx.AsyncClient) -> None:
    for headers in ({"Authorization": f"Bearer {ADMIN_KEY}"}, {"Xbus-Api-Key": ADMIN_KEY}):
        r = await client.get("/api/v1/whoami", headers=headers)
        assert r.status_code == 200, r.text
        assert r.json()["admin"] is True
