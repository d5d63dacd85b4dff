"""Envelopes read for the Xbus protocol a page of items at a time: the fragments cut while
streaming from the database are exactly those of the whole envelope cut in memory, and a
reader resuming at any position gets exactly the fragments it has not seen."""

from __future__ import annotations

import base64
import uuid
from typing import Any

from fastapi import FastAPI

from app.envelopes import repository
from app.envelopes.codec import envelope_to_fragments
from app.nats_api.payload import Reader, events_of, first_fragment, fragments, seen
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
