"""Envelope storage: one row per envelope, per event, per item. Large item sets go in with
COPY; reads come back in pages, so no envelope has to fit in memory."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.exceptions import Conflict
from app.envelopes.codec import EnvelopeData, EventData
from app.models import Envelope, Event, Item
from app.models.enums import EnvelopeStatus

_COPY_THRESHOLD = 200
_BATCH = 2000


@dataclass(frozen=True, slots=True)
class EventSummary:
    id: uuid.UUID
    position: int
    type: str
    encoding: str
    item_count: int
    size_bytes: int
    complete: bool


async def insert_items(session: AsyncSession, rows: Sequence[tuple[uuid.UUID, int, bytes]]) -> None:
    if not rows:
        return
    if len(rows) >= _COPY_THRESHOLD:
        conn = await session.connection()
        raw = await conn.get_raw_connection()
        driver = raw.driver_connection
        assert driver is not None
        await driver.copy_records_to_table(
            "items", records=rows, columns=["event_id", "position", "data"]
        )
        return
    await session.execute(
        sa.insert(Item),
        [{"event_id": e, "position": p, "data": d} for e, p, d in rows],
    )


async def store_envelope(
    session: AsyncSession,
    env: EnvelopeData,
    *,
    emitter_id: uuid.UUID | None,
    process_id: uuid.UUID | None = None,
    node_id: str | None = None,
    output: str | None = None,
) -> uuid.UUID:
    """Store a complete envelope; returns its id (the client's, or a new one)."""
    envelope_id = env.id or uuid.uuid4()
    # Every check before the first write: a conflict leaves nothing behind.
    if env.id is not None and await session.get(Envelope, env.id) is not None:
        raise Conflict(f"envelope {env.id} already exists")
    declared = [event.id for event in env.events if event.id is not None]
    if declared:
        existing = await session.scalar(sa.select(sa.func.count()).where(Event.id.in_(declared)))
        if existing:
            raise Conflict("an event id of this envelope already exists in another envelope")
    now = datetime.now(UTC)
    await session.execute(
        sa.insert(Envelope).values(
            id=envelope_id,
            emitter_id=emitter_id,
            process_id=process_id,
            node_id=node_id,
            output=output,
            status=EnvelopeStatus.COMPLETE,
            declared_event_ids=None,
            event_count=len(env.events),
            item_count=env.item_count,
            size_bytes=env.byte_size,
            created_at=now,
            last_fragment_at=now,
            completed_at=now,
        )
    )
    event_rows: list[dict[str, Any]] = []
    items: list[tuple[uuid.UUID, int, bytes]] = []
    for position, event in enumerate(env.events):
        event_id = event.id or uuid.uuid4()
        event_rows.append(
            {
                "id": event_id,
                "envelope_id": envelope_id,
                "position": position,
                "type": event.type,
                "encoding": event.encoding,
                "next_index": 2,
                "items_received": len(event.items),
                "item_count": len(event.items),
                "complete": True,
                "size_bytes": sum(len(i) for i in event.items),
            }
        )
        items.extend((event_id, n, data) for n, data in enumerate(event.items))
    if event_rows:
        await session.execute(sa.insert(Event), event_rows)
    await insert_items(session, items)
    return envelope_id


async def get_envelope(session: AsyncSession, envelope_id: uuid.UUID) -> Envelope | None:
    return await session.get(Envelope, envelope_id)


async def list_events(session: AsyncSession, envelope_id: uuid.UUID) -> list[EventSummary]:
    rows = await session.execute(
        sa.select(Event).where(Event.envelope_id == envelope_id).order_by(Event.position)
    )
    return [
        EventSummary(
            e.id, e.position, e.type, e.encoding, e.items_received, e.size_bytes, e.complete
        )
        for e in rows.scalars()
    ]


async def event_types(session: AsyncSession, envelope_id: uuid.UUID) -> list[str]:
    rows = await session.execute(
        sa.select(Event.type).where(Event.envelope_id == envelope_id).order_by(Event.position)
    )
    return list(dict.fromkeys(rows.scalars()))


async def item_page(
    session: AsyncSession, event_id: uuid.UUID, after: int, limit: int
) -> list[tuple[int, bytes]]:
    rows = await session.execute(
        sa.select(Item.position, Item.data)
        .where(Item.event_id == event_id, Item.position > after)
        .order_by(Item.position)
        .limit(limit)
    )
    return [(p, d) for p, d in rows]


async def iter_items(
    session: AsyncSession, event_id: uuid.UUID, page: int = _BATCH
) -> AsyncIterator[bytes]:
    after = -1
    while True:
        rows = await item_page(session, event_id, after, page)
        for position, data in rows:
            yield data
            after = position
        if len(rows) < page:
            return


async def load_envelope(session: AsyncSession, envelope_id: uuid.UUID) -> EnvelopeData | None:
    """The whole envelope in memory, events and items in one query: only for envelopes known
    to be small."""
    envelope = await session.get(Envelope, envelope_id)
    if envelope is None:
        return None
    rows = await session.execute(
        sa.select(Event.id, Event.type, Event.encoding, Item.data)
        .outerjoin(Item, Item.event_id == Event.id)
        .where(Event.envelope_id == envelope_id)
        .order_by(Event.position, Item.position)
    )
    events: list[EventData] = []
    for event_id, type_, encoding, data in rows:
        if not events or events[-1].id != event_id:
            events.append(EventData(type_, encoding, [], event_id))
        if data is not None:
            events[-1].items.append(data)
    return EnvelopeData(events, envelope.id)
