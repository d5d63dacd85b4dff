"""Envelope storage: one row per envelope, per event, per item. Large item sets go in with
COPY; reads come back in pages, so no envelope has to fit in memory."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.exceptions import Conflict
from app.envelopes.codec import EnvelopeData, EventData
from app.models import Envelope, Event, Item
from app.models.enums import EnvelopeStatus
from app.models.ids import new_id
from app.store.connection import Unit, driver_connection

_COPY_THRESHOLD = 200


@dataclass(frozen=True, slots=True)
class EventSummary:
    id: uuid.UUID
    position: int
    type: str
    encoding: str
    item_count: int
    size_bytes: int
    complete: bool


async def insert_items(session: Unit, rows: Sequence[tuple[uuid.UUID, int, bytes]]) -> None:
    if not rows:
        return
    conn = await driver_connection(session)
    if len(rows) >= _COPY_THRESHOLD:
        await conn.copy_records_to_table(
            "items", records=rows, columns=["event_id", "position", "data"]
        )
        return
    await conn.executemany("INSERT INTO items (event_id, position, data) VALUES ($1, $2, $3)", rows)


# A complete envelope, its events and (below the COPY threshold) its items: the parts of one
# statement, which the director also joins to the statement that starts the envelope's
# process (one round trip for a whole emission).
STORE_PARTS = """
stored_envelope AS (
    INSERT INTO envelopes (id, emitter_id, process_id, node_id, output, status, event_count,
        item_count, size_bytes, created_at, last_fragment_at, completed_at)
    VALUES ($1::uuid, $2::uuid, $3::uuid, $4::text, $5::text, 'complete', $6::int,
        $7::bigint, $8::bigint, $9::timestamptz, $9::timestamptz, $9::timestamptz)
),
stored_events AS (
    INSERT INTO events (id, envelope_id, position, type, encoding, next_index, items_received,
        item_count, complete, size_bytes)
    SELECT u.id, $1::uuid, u.position, u.type, u.encoding, 2, u.n, u.n, true, u.size
    FROM unnest($10::uuid[], $11::int[], $12::text[], $13::text[], $14::bigint[], $15::bigint[])
        AS u(id, position, type, encoding, n, size)
),
stored_items AS (
    INSERT INTO items (event_id, position, data)
    SELECT * FROM unnest($16::uuid[], $17::bigint[], $18::bytea[])
)"""
STORE_PARAMETERS = 18

_STORE = f"WITH {STORE_PARTS} SELECT 1"


@dataclass(frozen=True, slots=True)
class EnvelopeRows:
    """An envelope as the rows it is stored in: the parameters of STORE_PARTS, and the items
    left for COPY (a large envelope's)."""

    id: uuid.UUID
    parameters: tuple[Any, ...]
    copied: list[tuple[uuid.UUID, int, bytes]]


# Whether the envelope id and any of the event ids the client chose are taken, in one round trip.
_IDS_TAKEN = """
SELECT EXISTS (SELECT 1 FROM envelopes WHERE id = $1::uuid),
    EXISTS (SELECT 1 FROM events WHERE id = ANY($2::uuid[]))"""


async def check_new_envelope(session: Unit, env: EnvelopeData) -> None:
    """Every check before the first write: ids the client chose must be free (a conflict
    leaves nothing behind)."""
    declared = [event.id for event in env.events if event.id is not None]
    if env.id is None and not declared:
        return
    conn = await driver_connection(session, begin=False)
    envelope_taken, event_taken = await conn.fetchrow(_IDS_TAKEN, env.id, declared)
    if envelope_taken:
        raise Conflict(f"envelope {env.id} already exists")
    if event_taken:
        raise Conflict("an event id of this envelope already exists in another envelope")


def envelope_rows(
    env: EnvelopeData,
    *,
    emitter_id: uuid.UUID | None,
    process_id: uuid.UUID | None = None,
    node_id: str | None = None,
    output: str | None = None,
) -> EnvelopeRows:
    envelope_id = env.id or new_id()
    event_ids = [event.id or new_id() for event in env.events]
    items = [
        (event_id, n, data)
        for event_id, event in zip(event_ids, env.events, strict=True)
        for n, data in enumerate(event.items)
    ]
    inline = items if len(items) < _COPY_THRESHOLD else []
    parameters = (
        envelope_id,
        emitter_id,
        process_id,
        node_id,
        output,
        len(env.events),
        env.item_count,
        env.byte_size,
        datetime.now(UTC),
        event_ids,
        list(range(len(env.events))),
        [event.type for event in env.events],
        [event.encoding for event in env.events],
        [len(event.items) for event in env.events],
        [sum(len(i) for i in event.items) for event in env.events],
        [e for e, _, _ in inline],
        [n for _, n, _ in inline],
        [d for _, _, d in inline],
    )
    return EnvelopeRows(envelope_id, parameters, [] if inline else items)


async def store_envelope(
    session: Unit,
    env: EnvelopeData,
    *,
    emitter_id: uuid.UUID | None,
    process_id: uuid.UUID | None = None,
    node_id: str | None = None,
    output: str | None = None,
) -> uuid.UUID:
    """Store a complete envelope whose ids were checked free (`check_new_envelope`); returns
    its id (the client's, or a new one). An id taken since fails with the driver's
    UniqueViolationError."""
    rows = envelope_rows(
        env, emitter_id=emitter_id, process_id=process_id, node_id=node_id, output=output
    )
    conn = await driver_connection(session)
    await conn.execute(_STORE, *rows.parameters)
    await insert_items(session, rows.copied)
    return rows.id


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


async def envelope_events(
    session: Unit, envelope_id: uuid.UUID
) -> list[tuple[int, uuid.UUID, str]] | None:
    """The (position, id, type) of an envelope's events in order; None when there is no
    envelope. Plain SQL: the NATS path reads it on every delivery, also on a `Work`."""
    conn = await driver_connection(session, begin=False)
    rows = await conn.fetch(_ENVELOPE_EVENTS, envelope_id)
    if not rows:
        return None
    return [(row[0], row[1], row[2]) for row in rows if row[1] is not None]


_ENVELOPE_EVENTS = """
SELECT e.position, e.id, e.type FROM envelopes v LEFT JOIN events e ON e.envelope_id = v.id
WHERE v.id = $1 ORDER BY e.position"""

ITEMS_PAGE = 64  # items read at once when an envelope is streamed (~6 MiB of 100 KiB items)


async def items_page(
    session: Unit, envelope_id: uuid.UUID, after: tuple[int, int], limit: int = ITEMS_PAGE
) -> list[tuple[int, int, bytes]]:
    """The next items of an envelope after (event position, item position), in order, as
    (event position, item position, data): keyset pages, so an envelope of any size is
    read a page at a time."""
    conn = await driver_connection(session, begin=False)
    rows = await conn.fetch(_ITEMS_PAGE, envelope_id, after[0], after[1], limit)
    return [(row[0], row[1], row[2]) for row in rows]


_ITEMS_PAGE = """
SELECT e.position, i.position, i.data FROM events e JOIN items i ON i.event_id = e.id
WHERE e.envelope_id = $1 AND (e.position, i.position) > ($2::int, $3::bigint)
ORDER BY e.position, i.position LIMIT $4"""


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


async def mark_stalled(session: AsyncSession, stall_timeout: float) -> int:
    """Receiving envelopes with no fragment for the stall timeout become `stalled`."""
    cutoff = datetime.now(UTC) - timedelta(seconds=stall_timeout)
    result = await session.execute(
        sa.update(Envelope)
        .where(Envelope.status == EnvelopeStatus.RECEIVING, Envelope.last_fragment_at < cutoff)
        .values(
            status=EnvelopeStatus.STALLED,
            status_reason=f"no fragment received for {stall_timeout:g} s",
        )
        .returning(Envelope.id)
    )
    return len(result.all())
