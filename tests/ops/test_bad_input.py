"""Every operations endpoint answers bad input with a 4xx problem+json and changes nothing."""

from __future__ import annotations

import uuid
from typing import Any

import asyncpg
import httpx

from tests.conftest import assert_problem, row_counts
from tests.ops.conftest import Wired, emit

PID = str(uuid.uuid4())
ENDPOINTS = [
    ("POST", f"/api/v1/processes/{PID}/pause"),
    ("POST", f"/api/v1/processes/{PID}/resume"),
    ("POST", f"/api/v1/processes/{PID}/cancel"),
    ("POST", f"/api/v1/processes/{PID}/replay"),
    ("POST", "/api/v1/processes/pause"),
    ("POST", "/api/v1/processes/resume"),
    ("POST", "/api/v1/processes/cancel"),
    ("POST", "/api/v1/processes/replay"),
    ("POST", "/api/v1/processes/export"),
    ("POST", "/api/v1/processes/purge"),
    ("POST", "/api/v1/envelopes/purge"),
    ("POST", "/api/v1/logs/purge"),
    ("GET", "/api/v1/postmortems"),
    ("PATCH", f"/api/v1/processes/{PID}/postmortem"),
    ("GET", "/api/v1/stats"),
    ("GET", "/api/v1/stats/processes"),
]


async def test_no_key_or_not_admin(
    wired: Wired, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await emit(wired)
    before = await row_counts(db)
    for method, path in ENDPOINTS:
        body: dict[str, Any] | None = None if method == "GET" else {"all": True}
        assert_problem(await client.request(method, path, json=body), 401)
        wrong = {"Authorization": "Bearer xbk_wrong"}
        assert_problem(await client.request(method, path, json=body, headers=wrong), 401)
        assert_problem(await wired.acct.http.request(method, path, json=body), 403)
    assert await row_counts(db) == before


BAD_BATCHES: list[tuple[dict[str, Any], str | None]] = [
    ({}, "all: true"),
    ({"dry_run": True}, "all: true"),
    ({"ids": []}, "ids is empty"),
    ({"ids": ["not-a-uuid"]}, None),
    ({"ids": [PID] * 10_001}, None),
    ({"status": ["asleep"]}, None),
    ({"status": "running"}, None),
    ({"emitter": ""}, None),
    ({"emitter": "a\x00b"}, None),
    ({"created_after": "last week"}, None),
    ({"all": True, "pipeline": "same"}, None),  # only replay takes a pipeline
    ({"all": "yes please"}, None),
    ({"all": True, "surprise": 1}, None),
]


async def test_bad_batches_change_nothing(
    wired: Wired, admin: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    await emit(wired)
    before = await row_counts(db)
    for action in ("pause", "resume", "cancel", "replay"):
        path = f"/api/v1/processes/{action}"
        for body, text in BAD_BATCHES:
            if action == "replay" and "pipeline" in body:
                body = {**body, "pipeline": "latest"}
            assert_problem(await admin.post(path, json=body), 422, text)
        for raw in (b"", b"[]", b"{", b'"all"'):
            r = await admin.post(path, content=raw, headers={"content-type": "application/json"})
            assert_problem(r, 422)
    assert await row_counts(db) == before
