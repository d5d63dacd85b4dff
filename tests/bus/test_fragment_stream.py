"""Envelopes read for the Xbus protocol a page of items at a time: the fragments cut while
streaming from the database are exactly those of the whole envelope cut in memory, and a
reader resuming at any position gets exactly the fragments it has not seen."""

from __future__ import annotations

import base64
import json
import uuid
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI

from app.envelopes import repository
from app.envelopes.codec import FRAGMENT_SIZE, envelope_to_fragments
from app.nats_api.payload import (
    Reader,
    events_of,
    first_fragment,
    fragments,
    held_envelopes,
    process_request,
    seen,
)
from app.store import processes as store
from tests.bus.conftest import Bus, chain


async def _stored(bus: Bus) -> str:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"]), eventtypes=("a", "b", "c")))
    blob = base64.b64encode(bytes(range(256)) * 40).decode()  # 10 KiB items
    big = base64.b64encode(bytes(range(256)) * 2800).decode()  # 700 KiB: a fragment alone
    envelope = {
        "events": [
            # 150 items (three pages of 64), an empty event, then one big item.
            {"type": "a", "encoding": "base64", "items": [blob] * 150},
            {"type": "b", "encoding": "json", "items": []},
            {"type": "c", "encoding": "base64", "items": [big]},
        ]
    }
    r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=envelope)
    assert r.status_code == 202, r.text
    return str(r.json()["envelope_id"])


async def test_streamed_fragments_are_the_whole_envelope_cut(bus: Bus, app: FastAPI) -> None:
    envelope_id = uuid.UUID(await _stored(bus))
    db = app.state.xbus.db
    async with db.session() as session:
        whole = await repository.load_envelope(session, envelope_id)
        assert whole is not None
        expected = [f.SerializeToString() for f in envelope_to_fragments(whole)]
        events = await events_of(session, envelope_id)
        first, after_first = await first_fragment(session, envelope_id)
    assert len(expected) >= 4  # several fragments, and pages of items in between
    pages_read: list[tuple[int, int]] = []

    async def pages(after: tuple[int, int]) -> list[tuple[int, int, bytes]]:
        pages_read.append(after)
        async with db.session() as session:
            return await repository.items_page(session, envelope_id, after)

    streamed = [f async for f in fragments(events, envelope_id, pages)]
    assert [f.SerializeToString() for f in streamed] == expected
    assert pages_read == [(-1, -1), (0, 63), (0, 127)]  # 151 items: pages of 64, 64, 23
    assert first.SerializeToString() == expected[0]
    assert not after_first.complete

    # A reader at each position gets the rest, each fragment once, the last one complete.
    reader = Reader(envelope_id)
    positions: list[Any] = []
    for fragment in streamed:
        positions.append(reader.past(fragment))
    assert positions[-1].complete
    for k, position in enumerate(positions):
        rest = [f for n, f in enumerate(streamed) if not seen(position, n, f)]
        assert rest == streamed[k + 1 :], k


async def _handed(conn: Any, envelope_ids: list[uuid.UUID], bound: int) -> list[Any]:
    """The envelope rows a lease of a request with these inputs reads (`store.handed`)."""
    statement = "WITH given AS (SELECT 1)" + store.handed(
        "SELECT $1::uuid AS id, $2::text::jsonb AS inputs, now() AS available_at, "
        "now() AS created_at",
        3,
    )
    inputs = [{"name": f"in{n}", "envelope_id": str(e)} for n, e in enumerate(envelope_ids)]
    rows = await conn.fetch(statement, uuid.uuid4(), json.dumps(inputs), bound)
    return [row[4:] for row in rows]


async def test_a_request_cut_from_what_its_lease_read_is_the_one_read_again(
    bus: Bus, app: FastAPI
) -> None:
    """ActorProcessRequest cut from the envelope rows a lease read (`held_envelopes`) is
    byte for byte the one read again page by page; an envelope above the lease's bound, or
    unknown, is not held (read again, as before)."""
    envelope_id = uuid.UUID(await _stored(bus))
    request = SimpleNamespace(
        process_id=uuid.uuid4(),
        node_id="consumer",
        inputs=[{"name": "default", "envelope_id": str(envelope_id)}],
    )
    db = app.state.xbus.db
    async with db.working() as work:
        conn = await work.connection(begin=False)
        whole_bound = 10 * 1024 * 1024
        rows = await _handed(conn, [envelope_id, uuid.uuid4()], whole_bound)
        held = held_envelopes(rows, whole_bound)
        for size in (FRAGMENT_SIZE, 64 * 1024):  # one fragment holds the 150 items, or a few
            read = await process_request(work, request, max_size=size)
            cut = await process_request(work, request, max_size=size, held=held)
            assert cut.SerializeToString() == read.SerializeToString()
        assert list(held) == [envelope_id]  # the unknown envelope is not held
        events, items = held[envelope_id]
        assert [kind for _, _, kind in events] == ["a", "b", "c"]
        assert len(items) == 151
        small = await _handed(conn, [envelope_id], 64 * 1024)
        assert held_envelopes(small, 64 * 1024) == {}
