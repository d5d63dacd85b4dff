"""Emission: store the envelope durably, start its process, answer once per idempotency key.
Uploads: an envelope sent in fragments (open, append items per event, close)."""

from __future__ import annotations

import hashlib
import json
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.bus.director import Director, Emitter, Planned, ProcessRow
from app.config import Settings
from app.core.exceptions import Conflict, Forbidden, NotFound, PayloadTooLarge, Unprocessable
from app.envelopes import repository
from app.envelopes.codec import EnvelopeData, EnvelopeFormatError, decode_item
from app.envelopes.group import EmissionGroups
from app.envelopes.schemas import EmissionRead, EventDeclaration
from app.models import Actor, Envelope, Event, Process
from app.models.enums import ActorKind, ActorStatus, EnvelopeStatus
from app.models.ids import new_id
from app.store.connection import Unit, driver_connection

IDEMPOTENCY_KEY_MAX = 255


def body_hash(content_type: str, body: bytes) -> str:
    digest = hashlib.sha256(content_type.encode() + b"\n")
    digest.update(body)
    return digest.hexdigest()


def check_emitter(actor: Emitter) -> None:
    if actor.kind != ActorKind.EMITTER:
        raise Unprocessable(
            f"actor {actor.name!r} is a {actor.kind.value}; only emitters emit envelopes"
        )
    if actor.status != ActorStatus.ENABLED:
        raise Forbidden(f"actor {actor.name!r} is {actor.status.value}")


async def claim_idempotency_key(
    session: Unit, emitter_id: uuid.UUID, key: str, digest: str
) -> tuple[int, dict[str, Any]] | None:
    """Reserve the key for this emission. Returns the stored answer when the key was used
    before with the same body; raises 409 when it was used with another body."""
    if not key or len(key) > IDEMPOTENCY_KEY_MAX:
        raise Unprocessable(f"Idempotency-Key must be 1 to {IDEMPOTENCY_KEY_MAX} characters")
    conn = await driver_connection(session)
    if await conn.fetchval(_CLAIM_KEY, emitter_id, key, digest) is not None:
        return None
    # Used before (or by a concurrent request that has now committed: the insert waited).
    stored = await conn.fetchrow(_STORED_KEY, emitter_id, key)
    if stored["body_hash"] != digest:
        raise Conflict(f"Idempotency-Key {key!r} was already used with a different body")
    if stored["status_code"] == 0:
        raise Conflict(f"an emission with Idempotency-Key {key!r} is still in progress")
    return stored["status_code"], stored["response"]


_CLAIM_KEY = """
INSERT INTO idempotency_keys (emitter_id, key, body_hash, status_code, response)
VALUES ($1, $2, $3, 0, '{}') ON CONFLICT DO NOTHING RETURNING key"""
_STORED_KEY = """
SELECT body_hash, status_code, response FROM idempotency_keys WHERE emitter_id = $1 AND key = $2"""


async def release_idempotency_key(session: Unit, emitter_id: uuid.UUID, key: str) -> None:
    """An emission refused after its key was claimed: the key is free again (as a refused
    single emission leaves it, its transaction rolled back)."""
    conn = await driver_connection(session)
    await conn.execute(
        "DELETE FROM idempotency_keys WHERE emitter_id = $1 AND key = $2 AND status_code = 0",
        emitter_id,
        key,
    )


async def record_idempotent_answer(
    session: Unit, emitter_id: uuid.UUID, key: str, status_code: int, body: dict[str, Any]
) -> None:
    conn = await driver_connection(session)
    await conn.execute(
        "UPDATE idempotency_keys SET status_code = $3, response = $4::jsonb "
        "WHERE emitter_id = $1 AND key = $2",
        emitter_id,
        key,
        status_code,
        json.dumps(body),
    )


async def emit(
    session: Unit,
    director: Director,
    emitter: Emitter,
    envelope: EnvelopeData,
    groups: EmissionGroups | None = None,
) -> EmissionRead:
    """Store a complete envelope and start its process, in the caller's transaction; or,
    with `groups` and an envelope that cannot conflict, in the next group commit (stored
    once this returns; the caller's transaction is committed, and must hold nothing
    else)."""
    planned = await plan_emission(session, director, emitter, envelope)
    if groups is not None and groups.takes(envelope, planned):
        process = await groups.start(emitter, planned, session)
    else:
        process = await start_emission(session, director, emitter, planned)
    return EmissionRead(envelope_id=planned[0].id, process_id=process.id, status=process.status)


async def plan_emission(
    session: Unit,
    director: Director,
    emitter: Emitter,
    envelope: EnvelopeData,
    *,
    check_ids: bool = True,
) -> Planned:
    """A complete envelope routed and its ids checked free, nothing written yet: its rows,
    its event types and its route. XbusError when it is refused (no pipeline, an id taken).
    `check_ids=False` leaves the ids to the write, for a caller whose write is its whole
    transaction: an id taken fails it whole (`start_emission` raises Conflict)."""
    check_emitter(emitter)
    types = list(dict.fromkeys(e.type for e in envelope.events))
    # Routed first: an envelope that no pipeline takes is refused before a byte is written.
    route = await director.route(session, emitter, types)
    if check_ids:
        await repository.check_new_envelope(session, envelope)
    return repository.envelope_rows(envelope, emitter_id=emitter.id), types, route


async def start_emission(
    session: Unit, director: Director, emitter: Emitter, planned: Planned
) -> ProcessRow:
    """Write a planned envelope with its process (one statement unless its items go by COPY)."""
    rows, types, route = planned
    try:
        return await director.start_process(
            session, emitter, rows.id, types, route=route, envelope=rows
        )
    except asyncpg.UniqueViolationError:
        # Checked free when planned, taken meanwhile by a concurrent emission of the same ids.
        raise Conflict("the envelope or one of its event ids already exists") from None


# ---------------------------------------------------------------------------- uploads
def stall_deadline(envelope: Envelope, settings: Settings) -> datetime:
    return envelope.last_fragment_at + timedelta(seconds=settings.envelope_stall_timeout)


async def open_upload(
    session: AsyncSession,
    emitter: Actor,
    envelope_id: uuid.UUID | None,
    events: list[EventDeclaration],
) -> Envelope:
    check_emitter(emitter)
    if envelope_id is not None and await session.get(Envelope, envelope_id) is not None:
        raise Conflict(f"envelope {envelope_id} already exists")
    ids = [e.id for e in events if e.id is not None]
    if len(ids) != len(set(ids)):
        raise Unprocessable("event ids must be unique")
    if ids and await session.scalar(sa.select(sa.func.count()).where(Event.id.in_(ids))):
        raise Conflict("an event id is already used by another envelope")
    now = datetime.now(UTC)
    envelope = Envelope(
        id=envelope_id or new_id(),
        emitter_id=emitter.id,
        status=EnvelopeStatus.RECEIVING,
        event_count=len(events),
        created_at=now,
        last_fragment_at=now,
    )
    session.add(envelope)
    await session.flush()
    for position, declared in enumerate(events):
        session.add(
            Event(
                id=declared.id or new_id(),
                envelope_id=envelope.id,
                position=position,
                type=declared.type,
                encoding=declared.encoding,
            )
        )
    await session.flush()
    return envelope


async def _receiving(session: AsyncSession, envelope_id: uuid.UUID, settings: Settings) -> Envelope:
    envelope = (
        await session.execute(
            sa.select(Envelope)
            .where(Envelope.id == envelope_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if envelope is None:
        raise NotFound(f"no envelope {envelope_id}")
    if envelope.status == EnvelopeStatus.RECEIVING and datetime.now(UTC) > stall_deadline(
        envelope, settings
    ):
        raise Conflict(
            f"envelope {envelope_id} stalled: no fragment for {settings.envelope_stall_timeout:g} s"
        )
    if envelope.status != EnvelopeStatus.RECEIVING:
        raise Conflict(f"envelope {envelope_id} is {envelope.status.value}, not receiving")
    return envelope


async def append_items(
    session: AsyncSession,
    settings: Settings,
    envelope_id: uuid.UUID,
    event_id: uuid.UUID,
    raw_items: list[Any] | None,
    binary: bytes | None,
) -> tuple[Envelope, Event]:
    envelope = await _receiving(session, envelope_id, settings)
    event = (
        await session.execute(
            sa.select(Event)
            .where(Event.id == event_id, Event.envelope_id == envelope_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if event is None:
        raise NotFound(f"envelope {envelope_id} has no event {event_id}")
    if binary is not None:
        items = [binary]
    else:
        assert raw_items is not None
        try:
            items = [decode_item(v, event.encoding, f"/items/{n}") for n, v in enumerate(raw_items)]
        except EnvelopeFormatError as exc:
            raise Unprocessable(str(exc)) from None
    added_bytes = sum(len(i) for i in items)
    if envelope.item_count + len(items) > settings.envelope_max_items:
        raise PayloadTooLarge(f"the envelope would exceed {settings.envelope_max_items} items")
    if envelope.size_bytes + added_bytes > settings.envelope_max_bytes:
        raise PayloadTooLarge(f"the envelope would exceed {settings.envelope_max_bytes} bytes")
    start = event.items_received
    await repository.insert_items(
        session, [(event.id, start + n, data) for n, data in enumerate(items)]
    )
    event.items_received += len(items)
    event.size_bytes += added_bytes
    envelope.item_count += len(items)
    envelope.size_bytes += added_bytes
    envelope.last_fragment_at = datetime.now(UTC)
    await session.flush()
    return envelope, event


async def close_upload(
    session: AsyncSession,
    director: Director,
    settings: Settings,
    emitter: Actor,
    envelope_id: uuid.UUID,
) -> EmissionRead:
    existing = await session.get(Envelope, envelope_id)
    if existing is not None and existing.status == EnvelopeStatus.COMPLETE:
        # Closing twice answers the same: a retried close must not fail.
        process = (
            await session.execute(
                sa.select(Process).where(Process.trigger_envelope_id == envelope_id)
            )
        ).scalar_one_or_none()
        if process is not None:
            return EmissionRead(
                envelope_id=envelope_id, process_id=process.id, status=process.status
            )
    envelope = await _receiving(session, envelope_id, settings)
    check_emitter(emitter)
    now = datetime.now(UTC)
    await session.execute(
        sa.update(Event)
        .where(Event.envelope_id == envelope_id)
        .values(complete=True, item_count=Event.items_received)
    )
    envelope.status = EnvelopeStatus.COMPLETE
    envelope.completed_at = now
    await session.flush()
    types = await repository.event_types(session, envelope_id)
    started = await director.start_process(session, emitter, envelope_id, types)
    return EmissionRead(envelope_id=envelope_id, process_id=started.id, status=started.status)
