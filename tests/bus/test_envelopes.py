"""Envelope forms: JSON encodings, protobuf OutputRequest, fragment uploads with the stall
rule, large envelopes linked instead of inlined and read in pages."""

from __future__ import annotations

import asyncio
import base64
import uuid
from typing import Any

import asyncpg
import pytest
from xbus import testutils, xbus_pb2

from tests.bus.conftest import Bus, chain
from tests.conftest import assert_problem, row_counts


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"inline_envelope_max_bytes": 4096, "envelope_stall_timeout": 1.0}


@pytest.fixture
async def wired(bus: Bus) -> dict[str, Any]:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"]), eventtypes=("a", "b", "msg")))
    return {"acct": acct, "em": em, "co": co}


async def _consume(wired: dict[str, Any]) -> dict[str, Any]:
    r = await wired["acct"].http.get(f"/api/v1/actors/{wired['co']['name']}/requests")
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def test_all_three_encodings_round_trip(wired: dict[str, Any]) -> None:
    raw = bytes(range(256))
    envelope = {
        "events": [
            {"type": "a", "encoding": "text", "items": ["héllo", ""]},
            {"type": "b", "encoding": "base64", "items": [base64.b64encode(raw).decode()]},
            {"type": "a", "encoding": "json", "items": [{"x": [1, 2.5, None, True]}, "s", 3]},
        ]
    }
    r = await wired["acct"].http.post(f"/api/v1/actors/{wired['em']['name']}/output", json=envelope)
    assert r.status_code == 202, r.text
    got = (await _consume(wired))["inputs"][0]["envelope"]
    assert [e["encoding"] for e in got["events"]] == ["text", "base64", "json"]
    assert got["events"][0]["items"] == ["héllo", ""]
    assert base64.b64decode(got["events"][1]["items"][0]) == raw
    assert got["events"][2]["items"] == [{"x": [1, 2.5, None, True]}, "s", 3]
    assert all(uuid.UUID(e["id"]) for e in got["events"])


async def test_protobuf_output_request(wired: dict[str, Any]) -> None:
    fragments = await testutils.make_envelope(("msg", [b"item1", b"item2"]))
    assert len(fragments) == 1
    request = xbus_pb2.OutputRequest(output="default", envelope=fragments[0])
    r = await wired["acct"].http.post(
        f"/api/v1/actors/{wired['em']['name']}/output",
        content=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert r.status_code == 202, r.text
    assert r.json()["envelope_id"] == str(uuid.UUID(bytes=fragments[0].id))
    got = (await _consume(wired))["inputs"][0]["envelope"]
    assert got["events"][0]["type"] == "msg"
    assert got["events"][0]["items"] == ["item1", "item2"]


async def test_protobuf_with_bad_checksum_is_422(
    wired: dict[str, Any], db: asyncpg.Connection
) -> None:
    fragments = await testutils.make_envelope(("msg", [b"item1"]))
    fragments[0].events[0].checksum ^= 1
    request = xbus_pb2.OutputRequest(output="default", envelope=fragments[0])
    before = await row_counts(db)
    r = await wired["acct"].http.post(
        f"/api/v1/actors/{wired['em']['name']}/output",
        content=request.SerializeToString(),
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert_problem(r, 422, "checksum")
    assert await row_counts(db) == before


async def test_upload_in_fragments(wired: dict[str, Any], db: asyncpg.Connection) -> None:
    http = wired["acct"].http
    r = await http.post(
        f"/api/v1/actors/{wired['em']['name']}/envelopes",
        json={"events": [{"type": "msg", "encoding": "json"}, {"type": "a"}]},
    )
    assert r.status_code == 201, r.text
    upload = r.json()
    envelope_id = upload["envelope_id"]
    ev_json, ev_bin = (e["id"] for e in upload["events"])
    for n in range(3):
        r = await http.post(
            f"/api/v1/envelopes/{envelope_id}/events/{ev_json}/items",
            json={"items": [{"n": n}, {"n": n + 10}]},
        )
        assert r.status_code == 200, r.text
    r = await http.post(
        f"/api/v1/envelopes/{envelope_id}/events/{ev_bin}/items",
        content=b"raw text item",
        headers={"Content-Type": "application/octet-stream"},
    )
    assert r.json()["items_received"] == 1
    assert r.json()["envelope_item_count"] == 7
    # Nothing is dispatched before the close.
    assert await db.fetchval("SELECT count(*) FROM processes") == 0
    r = await http.post(f"/api/v1/envelopes/{envelope_id}/close")
    assert r.status_code == 202, r.text
    emission = r.json()
    # A retried close answers the same.
    assert (await http.post(f"/api/v1/envelopes/{envelope_id}/close")).json() == emission
    got = (await _consume(wired))["inputs"][0]["envelope"]
    assert got["events"][0]["items"] == [
        {"n": 0},
        {"n": 10},
        {"n": 1},
        {"n": 11},
        {"n": 2},
        {"n": 12},
    ]
    assert got["events"][1]["items"] == ["raw text item"]
    # Closed: no more items.
    r = await http.post(
        f"/api/v1/envelopes/{envelope_id}/events/{ev_json}/items", json={"items": [1]}
    )
    assert_problem(r, 409, "complete")


async def test_upload_stalls_after_the_timeout(
    wired: dict[str, Any], db: asyncpg.Connection
) -> None:
    http = wired["acct"].http
    upload = (
        await http.post(
            f"/api/v1/actors/{wired['em']['name']}/envelopes", json={"events": [{"type": "msg"}]}
        )
    ).json()
    event_id = upload["events"][0]["id"]
    url = f"/api/v1/envelopes/{upload['envelope_id']}/events/{event_id}/items"
    assert (await http.post(url, json={"items": ["one"]})).status_code == 200
    await asyncio.sleep(2.5)  # stall timeout 1 s; the supervisor runs every second
    before = await row_counts(db)
    assert_problem(await http.post(url, json={"items": ["two"]}), 409, "stalled")
    assert_problem(
        await http.post(f"/api/v1/envelopes/{upload['envelope_id']}/close"), 409, "stalled"
    )
    assert await row_counts(db) == before
    status = await db.fetchval(
        "SELECT status FROM envelopes WHERE id = $1", uuid.UUID(upload["envelope_id"])
    )
    assert status == "stalled"
    assert await db.fetchval("SELECT count(*) FROM processes") == 0


async def test_bad_uploads_store_nothing(wired: dict[str, Any], db: asyncpg.Connection) -> None:
    http = wired["acct"].http
    before = await row_counts(db)
    assert_problem(
        await http.post(f"/api/v1/actors/{wired['em']['name']}/envelopes", json={"events": []}), 422
    )
    assert_problem(
        await http.post(
            f"/api/v1/actors/{wired['em']['name']}/envelopes",
            json={"events": [{"type": "x", "encoding": "zip"}]},
        ),
        422,
    )
    assert_problem(
        await http.post(
            f"/api/v1/actors/{wired['co']['name']}/envelopes", json={"events": [{"type": "x"}]}
        ),
        422,
    )
    assert await row_counts(db) == before
    upload = (
        await http.post(
            f"/api/v1/actors/{wired['em']['name']}/envelopes",
            json={"events": [{"type": "msg", "encoding": "base64"}]},
        )
    ).json()
    before = await row_counts(db)
    url = f"/api/v1/envelopes/{upload['envelope_id']}/events/{upload['events'][0]['id']}/items"
    assert_problem(await http.post(url, json={"items": ["not base64!"]}), 422, "base64")
    assert_problem(await http.post(url, json={"items": []}), 422)
    assert_problem(await http.post(url, content=b"x", headers={"Content-Type": "text/csv"}), 415)
    bogus = f"/api/v1/envelopes/{upload['envelope_id']}/events/{uuid.uuid4()}/items"
    assert_problem(await http.post(bogus, json={"items": ["eA=="]}), 404)
    assert await row_counts(db) == before


async def test_large_envelope_is_linked_and_read_in_pages(wired: dict[str, Any]) -> None:
    items = [f"item-{n:05d}-" + "x" * 100 for n in range(300)]
    r = await wired["acct"].http.post(
        f"/api/v1/actors/{wired['em']['name']}/output",
        json={"events": [{"type": "msg", "items": items}]},
    )
    assert r.status_code == 202
    job = await _consume(wired)
    [inp] = job["inputs"]
    assert inp["inline"] is False
    assert inp["envelope"] is None
    assert inp["item_count"] == 300
    meta = (await wired["acct"].http.get(inp["envelope_url"])).json()
    [event] = meta["events"]
    assert event["item_count"] == 300
    read: list[str] = []
    url = event["items_url"]
    cursor = None
    pages = 0
    while True:
        params = {"limit": 100} | ({"cursor": cursor} if cursor else {})
        page = (await wired["acct"].http.get(url, params=params)).json()
        read.extend(page["items"])
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert read == items
    assert pages >= 3


async def test_hundred_thousand_items(wired: dict[str, Any], db: asyncpg.Connection) -> None:
    items = [str(n) for n in range(100_000)]
    r = await wired["acct"].http.post(
        f"/api/v1/actors/{wired['em']['name']}/output",
        json={"events": [{"type": "msg", "items": items}]},
    )
    assert r.status_code == 202, r.text
    assert await db.fetchval("SELECT count(*) FROM items") == 100_000
    envelope_id = uuid.UUID(r.json()["envelope_id"])
    assert (
        await db.fetchval("SELECT item_count FROM envelopes WHERE id = $1", envelope_id) == 100_000
    )
