"""Any body answers 4xx problem+json, never 500: JSON nested deeper than the parser's
recursion limit, on every route that parses JSON itself and on those FastAPI parses."""

from __future__ import annotations

import base64

import asyncpg
import httpx
import pytest

from app.webhooks.payload import read_json_state
from tests.bus.conftest import ENVELOPE, Bus, chain
from tests.conftest import row_counts

DEEP = b"[" * 100_000 + b"]" * 100_000
DEEP_OBJECT = b'{"a":' * 50_000 + b"1" + b"}" * 50_000


@pytest.mark.parametrize("body", [DEEP, DEEP_OBJECT], ids=["array", "object"])
async def test_deep_json_is_refused_everywhere(
    bus: Bus, admin: httpx.AsyncClient, db: asyncpg.Connection, body: bytes
) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    emitted = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
    job = (await acct.http.get(f"/api/v1/actors/{co['name']}/requests")).json()
    before = await row_counts(db)
    json_type = {"content-type": "application/json"}
    targets = [
        (acct.http, f"/api/v1/actors/{em['name']}/output", json_type),
        (acct.http, f"/api/v1/actors/{em['name']}/outputs", json_type),
        (acct.http, f"/api/v1/requests/{job['request_id']}/state", json_type),
        (acct.http, "/api/v1/requests/states", json_type),
        (admin, "/api/v1/pipelines", json_type),
        (admin, "/api/v1/accounts", json_type),
        (admin, "/api/v1/actors", json_type),
    ]
    for http, url, headers in targets:
        r = await http.post(url, content=body, headers=headers)
        assert 400 <= r.status_code < 500, (url, r.status_code, r.text[:200])
        assert r.headers["content-type"].startswith("application/problem+json"), url
    # NDJSON: the line is refused in its place.
    r = await acct.http.post(
        f"/api/v1/actors/{em['name']}/outputs",
        content=body + b"\n",
        headers={"content-type": "application/x-ndjson"},
    )
    assert r.status_code == 200
    [result] = r.json()["results"]
    assert result["status"] == 422
    assert "not valid JSON" in result["problem"]["detail"]
    # A paging cursor that decodes to deep JSON.
    cursor = base64.urlsafe_b64encode(b"[" * 5000).decode().rstrip("=")
    r = await admin.get("/api/v1/processes", params={"cursor": cursor})
    assert r.status_code == 400, r.text
    # Nothing changed, and the bus goes on.
    assert await row_counts(db) == before
    assert emitted.status_code == 202
    r = await acct.http.post(
        f"/api/v1/requests/{job['request_id']}/state", json={"status": "success"}
    )
    assert r.status_code == 200


def test_a_webhook_answer_nested_too_deep_is_not_a_state() -> None:
    """A consumer's 2xx answer is read for a state; one nested deeper than the parser's
    recursion limit is a plain success, not a crash of the delivery."""
    assert read_json_state(DEEP, max_items=10, max_bytes=1000) is None
    assert read_json_state(DEEP_OBJECT, max_items=10, max_bytes=1000) is None
