"""The statements of Broker.Output (`app.nats_api.broker`), plain SQL on the unit's asyncpg
connection: an envelope arriving in fragments, its events' progress, the open request a
worker's output goes to. Each runs in the unit's transaction (`driver_connection`)."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.envelopes.codec import EventProgress
from app.models.enums import EnvelopeStatus
from app.store.connection import Unit, driver_connection
from app.store.processes import OPEN_REQUEST


@dataclass(slots=True)
class EnvelopeRow:
    """What Output reads and changes of an envelope (locked)."""

    id: uuid.UUID
    emitter_id: uuid.UUID | None
    status: EnvelopeStatus
    declared_event_ids: list[str] | None
    item_count: int
    size_bytes: int


@dataclass(slots=True)
class EventRow:
    """What Output keeps of an event besides its progress."""

    position: int
    encoding: str
    size_bytes: int
    new: bool = False


async def lock_envelope(unit: Unit, envelope_id: uuid.UUID) -> EnvelopeRow | None:
    conn = await driver_connection(unit)
    row = await conn.fetchrow(
        "SELECT id, emitter_id, status, declared_event_ids, item_count, size_bytes "
        "FROM envelopes WHERE id = $1 FOR UPDATE",
        envelope_id,
    )
    if row is None:
        return None
    return EnvelopeRow(
        row["id"],
        row["emitter_id"],
        EnvelopeStatus(row["status"]),
        row["declared_event_ids"],
        row["item_count"],
        row["size_bytes"],
    )


async def insert_envelope(
    unit: Unit,
    envelope_id: uuid.UUID,
    emitter_id: uuid.UUID,
    context: tuple[uuid.UUID, str] | None,
    port: str,
    now: datetime,
) -> EnvelopeRow:
    """A new envelope, receiving (its columns as the ORM model's defaults leave them)."""
    conn = await driver_connection(unit)
    await conn.execute(
        "INSERT INTO envelopes (id, emitter_id, process_id, node_id, output, status, "
        "event_count, item_count, size_bytes, created_at, last_fragment_at) "
        "VALUES ($1, $2, $3, $4, $5, $6, 0, 0, 0, $7, $7)",
        envelope_id,
        emitter_id,
        context[0] if context else None,
        context[1] if context else None,
        port if context else None,
        EnvelopeStatus.RECEIVING.value,
        now,
    )
    return EnvelopeRow(envelope_id, emitter_id, EnvelopeStatus.RECEIVING, None, 0, 0)


async def lock_events(
    unit: Unit, envelope_id: uuid.UUID
) -> tuple[dict[uuid.UUID, EventProgress], dict[uuid.UUID, EventRow]]:
    """The envelope's events in order, locked: their progress, and the rest Output needs."""
    conn = await driver_connection(unit)
    rows = await conn.fetch(
        "SELECT id, position, type, encoding, next_index, items_received, crc, item_count, "
        "complete, checksum, size_bytes FROM events WHERE envelope_id = $1 "
        "ORDER BY position FOR UPDATE",
        envelope_id,
    )
    progress = {}
    events = {}
    for row in rows:
        event_id = uuid.UUID(bytes=row["id"].bytes)
        progress[event_id] = EventProgress(
            event_id=event_id,
            type=row["type"],
            next_index=row["next_index"],
            items_received=row["items_received"],
            crc=row["crc"],
            item_count=row["item_count"],
            complete=row["complete"],
            checksum=row["checksum"],
        )
        events[event_id] = EventRow(row["position"], row["encoding"], row["size_bytes"])
    return progress, events


_INSERT_EVENTS = """
INSERT INTO events (id, envelope_id, position, type, encoding, next_index, items_received,
    crc, item_count, checksum, complete, size_bytes)
SELECT u.id, $1::uuid, u.position, u.type, u.encoding, u.next_index, u.items_received, u.crc,
    u.item_count, u.checksum, u.complete, u.size_bytes
FROM unnest($2::uuid[], $3::int[], $4::text[], $5::text[], $6::bigint[], $7::bigint[],
    $8::bigint[], $9::bigint[], $10::bigint[], $11::bool[], $12::bigint[])
    AS u(id, position, type, encoding, next_index, items_received, crc, item_count, checksum,
        complete, size_bytes)"""

_UPDATE_EVENTS = """
UPDATE events e SET encoding = u.encoding, next_index = u.next_index,
    items_received = u.items_received, crc = u.crc, item_count = u.item_count,
    checksum = u.checksum, complete = u.complete, size_bytes = u.size_bytes
FROM unnest($2::uuid[], $3::text[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bigint[],
    $8::bigint[], $9::bool[], $10::bigint[])
    AS u(id, encoding, next_index, items_received, crc, item_count, checksum, complete,
        size_bytes)
WHERE e.id = u.id AND e.envelope_id = $1"""


async def write_events(
    unit: Unit,
    envelope_id: uuid.UUID,
    progress: dict[uuid.UUID, EventProgress],
    events: dict[uuid.UUID, EventRow],
) -> None:
    """The events as their progress now stands: new ones inserted (an id taken by another
    envelope's event fails, as it did through the ORM), the others updated."""
    new = [(i, progress[i], e) for i, e in events.items() if e.new]
    old = [(i, progress[i], e) for i, e in events.items() if not e.new]
    conn = await driver_connection(unit)
    if new:
        await conn.execute(
            _INSERT_EVENTS,
            envelope_id,
            [i for i, _, _ in new],
            [e.position for _, _, e in new],
            [p.type for _, p, _ in new],
            [e.encoding for _, _, e in new],
            *_progress_columns([p for _, p, _ in new]),
            [e.size_bytes for _, _, e in new],
        )
    if old:
        await conn.execute(
            _UPDATE_EVENTS,
            envelope_id,
            [i for i, _, _ in old],
            [e.encoding for _, _, e in old],
            *_progress_columns([p for _, p, _ in old]),
            [e.size_bytes for _, _, e in old],
        )


def _progress_columns(states: list[EventProgress]) -> list[list[Any]]:
    return [
        [s.next_index for s in states],
        [s.items_received for s in states],
        [s.crc for s in states],
        [s.item_count for s in states],
        [s.checksum for s in states],
        [s.complete for s in states],
    ]


async def update_envelope(
    unit: Unit,
    envelope: EnvelopeRow,
    event_count: int,
    now: datetime,
    *,
    complete: bool,
) -> None:
    """Its counts and progress after a fragment (declared event ids: set once, then kept)."""
    conn = await driver_connection(unit)
    declared = envelope.declared_event_ids
    await conn.execute(
        "UPDATE envelopes SET item_count = $2, size_bytes = $3, event_count = $4, "
        "last_fragment_at = $5, declared_event_ids = COALESCE($6::jsonb, declared_event_ids), "
        "status = CASE WHEN $7 THEN $8 ELSE status END, "
        "completed_at = CASE WHEN $7 THEN $5 ELSE completed_at END "
        "WHERE id = $1",
        envelope.id,
        envelope.item_count,
        envelope.size_bytes,
        event_count,
        now,
        json.dumps(declared) if declared is not None else None,
        complete,
        EnvelopeStatus.COMPLETE.value,
    )


async def event_types(unit: Unit, envelope_id: uuid.UUID) -> list[str]:
    conn = await driver_connection(unit)
    rows = await conn.fetch(
        "SELECT type FROM events WHERE envelope_id = $1 ORDER BY position", envelope_id
    )
    return list(dict.fromkeys(row["type"] for row in rows))


async def mark_error(unit: Unit, envelope_id: uuid.UUID, reason: str, *, receiving: bool) -> None:
    """The envelope in error (with `receiving`, only one still receiving)."""
    conn = await driver_connection(unit, begin=False)
    await conn.execute(
        "UPDATE envelopes SET status = $2, status_reason = $3 "
        "WHERE id = $1 AND ($4::text IS NULL OR status = $4)",
        envelope_id,
        EnvelopeStatus.ERROR.value,
        reason,
        EnvelopeStatus.RECEIVING.value if receiving else None,
    )


_OPEN_REQUEST = """
SELECT id FROM requests
WHERE process_id = $1 AND node_id = $2 AND actor_id = $3 AND status = ANY($4::text[])
ORDER BY created_at DESC LIMIT 1"""


async def open_request(
    unit: Unit, process_id: uuid.UUID, node_id: str, actor_id: uuid.UUID, *, lock: bool = False
) -> uuid.UUID | None:
    """The actor's newest open request on that node of the process (locked with `lock`)."""
    conn = await driver_connection(unit)
    statement = _OPEN_REQUEST + " FOR UPDATE" if lock else _OPEN_REQUEST
    request_id: uuid.UUID | None = await conn.fetchval(
        statement, process_id, node_id, actor_id, [s.value for s in OPEN_REQUEST]
    )
    return request_id


async def add_output(
    unit: Unit,
    process_id: uuid.UUID,
    node_id: str,
    actor_id: uuid.UUID,
    port: str,
    envelope_id: uuid.UUID,
    now: datetime,
) -> bool:
    """The envelope as the `port` output of the actor's open request on that node (the
    newest, locked); False when it has none."""
    request_id = await open_request(unit, process_id, node_id, actor_id, lock=True)
    if request_id is None:
        return False
    conn = await driver_connection(unit)
    await conn.execute(
        "UPDATE requests SET outputs = outputs || jsonb_build_object($2::text, $3::text), "
        "updated_at = $4 WHERE id = $1",
        request_id,
        port,
        str(envelope_id),
        now,
    )
    return True
