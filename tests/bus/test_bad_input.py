"""Every bad emission, upload or state answers 4xx problem+json and stores nothing."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from tests.bus.conftest import ENVELOPE, Bus, chain
from tests.conftest import assert_problem, row_counts


@pytest.fixture
async def wired(bus: Bus) -> dict[str, Any]:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    wk = await bus.actor(acct, "worker")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("worker", wk["name"]), ("consumer", co["name"])))
    return {"acct": acct, "em": em, "wk": wk, "co": co}


BAD_BODIES = [
    (b"{not json", "application/json", 422, "not valid json"),
    (b'{"events": []}', "application/json", 422, None),
    (b'{"events": [{"type": "x", "items": [1]}]}', "application/json", 422, "string"),
    (
        b'{"events": [{"type": "x", "encoding": "base64", "items": ["***"]}]}',
        "application/json",
        422,
        "base64",
    ),
    (
        b'{"events": [{"type": "x", "encoding": "rot13", "items": []}]}',
        "application/json",
        422,
        "encoding",
    ),
    (b'{"events": [{"type": "", "items": []}]}', "application/json", 422, None),
    (b'{"events": [{"type": "x", "items": []}], "extra": 1}', "application/json", 422, "extra"),
    (b"[1, 2]", "application/json", 422, None),
    (b"hello", "text/plain", 415, "application/json"),
    (b"\x01\x02garbage", "application/x-protobuf", 422, None),
]


@pytest.mark.parametrize(("body", "media", "status", "contains"), BAD_BODIES)
async def test_bad_envelope_bodies(
    wired: dict[str, Any],
    db: asyncpg.Connection,
    body: bytes,
    media: str,
    status: int,
    contains: str | None,
) -> None:
    before = await row_counts(db)
    r = await wired["acct"].http.post(
        f"/api/v1/actors/{wired['em']['name']}/output",
        content=body,
        headers={"Content-Type": media},
    )
    assert_problem(r, status, contains)
    assert await row_counts(db) == before


async def test_pointer_names_the_bad_item(wired: dict[str, Any]) -> None:
    body = {
        "events": [
            {"type": "x", "items": ["ok"]},
            {"type": "y", "encoding": "base64", "items": ["Zm9v", "!"]},
        ]
    }
    r = await wired["acct"].http.post(f"/api/v1/actors/{wired['em']['name']}/output", json=body)
    problem = assert_problem(r, 422)
    assert problem["pointer"] == "/events/1/items/1"


async def test_no_matching_pipeline_is_422_and_stores_nothing(
    wired: dict[str, Any], db: asyncpg.Connection
) -> None:
    before = await row_counts(db)
    body = {"events": [{"type": "invoice.paid", "items": ["x"]}]}
    r = await wired["acct"].http.post(f"/api/v1/actors/{wired['em']['name']}/output", json=body)
    problem = assert_problem(r, 422, "invoice.paid")
    assert "order.created" in problem["detail"]
    assert await row_counts(db) == before


async def test_two_matching_pipelines_is_422(
    bus: Bus, wired: dict[str, Any], db: asyncpg.Connection
) -> None:
    await bus.pipeline(chain(wired["em"]["name"], ("consumer", wired["co"]["name"])))
    before = await row_counts(db)
    r = await wired["acct"].http.post(f"/api/v1/actors/{wired['em']['name']}/output", json=ENVELOPE)
    assert_problem(r, 422, "more than one active pipeline")
    assert await row_counts(db) == before


async def test_emitter_without_pipeline_is_422(bus: Bus, db: asyncpg.Connection) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    before = await row_counts(db)
    assert_problem(
        await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE),
        422,
        "no active pipeline",
    )
    assert await row_counts(db) == before


async def test_only_emitters_emit(wired: dict[str, Any], db: asyncpg.Connection) -> None:
    before = await row_counts(db)
    r = await wired["acct"].http.post(f"/api/v1/actors/{wired['wk']['name']}/output", json=ENVELOPE)
    assert_problem(r, 422, "only emitters")
    assert_problem(
        await wired["acct"].http.post("/api/v1/actors/nobody/output", json=ENVELOPE), 404
    )
    assert await row_counts(db) == before


async def test_disabled_emitter_is_403(
    bus: Bus, wired: dict[str, Any], db: asyncpg.Connection
) -> None:
    r = await bus.admin.patch(f"/api/v1/actors/{wired['em']['id']}", json={"status": "disabled"})
    assert r.status_code == 200, r.text
    before = await row_counts(db)
    assert_problem(
        await wired["acct"].http.post(
            f"/api/v1/actors/{wired['em']['name']}/output", json=ENVELOPE
        ),
        403,
    )
    assert await row_counts(db) == before


async def test_limits_answer_413(
    wired: dict[str, Any], db: asyncpg.Connection, settings: Any
) -> None:
    before = await row_counts(db)
    too_many = {
        "events": [{"type": "order.created", "items": ["x"] * (settings.envelope_max_items + 1)}]
    }
    r = await wired["acct"].http.post(f"/api/v1/actors/{wired['em']['name']}/output", json=too_many)
    assert_problem(r, 413)
    assert await row_counts(db) == before


async def test_bad_states(wired: dict[str, Any], db: asyncpg.Connection) -> None:
    acct = wired["acct"]
    await acct.http.post(f"/api/v1/actors/{wired['em']['name']}/output", json=ENVELOPE)
    job = (await acct.http.get(f"/api/v1/actors/{wired['wk']['name']}/requests")).json()
    url = f"/api/v1/requests/{job['request_id']}/state"
    before = await row_counts(db)
    cases: list[tuple[Any, int, str | None]] = [
        ({"status": "finished"}, 422, None),
        ({"status": "success", "outputs": {"nope": ENVELOPE}}, 422, "no output nope"),
        (
            {"status": "error", "outputs": {"default": ENVELOPE}},
            422,
            "only accepted with status success",
        ),
        ({"status": "success", "outputs": {"default": {"events": "x"}}}, 422, "output default"),
        ({"status": "success", "messages": [{"level": "fatal", "text": "x"}]}, 422, None),
        ({"status": "success", "unknown": 1}, 422, None),
    ]
    for body, status, contains in cases:
        assert_problem(await acct.http.post(url, json=body), status, contains)
    assert_problem(
        await acct.http.post(url, content=b"{", headers={"Content-Type": "application/json"}), 422
    )
    assert_problem(
        await acct.http.post(
            f"/api/v1/requests/{'0' * 8}-0000-0000-0000-{'0' * 12}/state",
            json={"status": "success"},
        ),
        404,
    )
    assert_problem(
        await acct.http.post("/api/v1/requests/not-a-uuid/state", json={"status": "success"}), 422
    )
    assert await row_counts(db) == before


async def test_bad_poll_and_process_queries(wired: dict[str, Any], db: asyncpg.Connection) -> None:
    acct = wired["acct"]
    before = await row_counts(db)
    assert_problem(
        await acct.http.get(f"/api/v1/actors/{wired['co']['name']}/requests", params={"wait": -1}),
        422,
    )
    assert_problem(await acct.http.get("/api/v1/actors/ghost/requests"), 404)
    assert_problem(await acct.http.get("/api/v1/processes", params={"status": "sleeping"}), 422)
    assert_problem(await acct.http.get("/api/v1/processes", params={"cursor": "garbage!"}), 400)
    assert_problem(await acct.http.get("/api/v1/processes/not-a-uuid"), 422)
    assert_problem(
        await acct.http.get(f"/api/v1/processes/{'1' * 8}-1111-1111-1111-{'1' * 12}"), 404
    )
    assert await row_counts(db) == before


async def test_json_body_with_wrong_content_type_header_variants(wired: dict[str, Any]) -> None:
    r = await wired["acct"].http.post(
        f"/api/v1/actors/{wired['em']['name']}/output",
        content=json.dumps(ENVELOPE).encode(),
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 202, r.text
