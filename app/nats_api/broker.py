"""Broker.Output: envelopes arriving over NATS in fragments, assembled in PostgreSQL (each
event's progress is stored, so any replica can take the next fragment), then dispatched
(from an emitter) or kept as a worker's output until it reports success."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from xbus import xbus_pb2  # type: ignore[import-untyped, unused-ignore]

from app.bus.director import OPEN_REQUEST, Director
from app.config import Settings
from app.core.exceptions import XbusError
from app.envelopes import repository
from app.envelopes.codec import (
    EnvelopeFormatError,
    EventProgress,
    apply_fragment,
    envelope_complete,
)
from app.models import Actor, ActorRequest, Envelope, Event
from app.models.enums import ActorKind, ActorStatus, EnvelopeStatus
from app.nats_api.convert import uuid_of

log = logging.getLogger(__name__)
pb: Any = xbus_pb2

RECEIVING, ACCEPTED, ERROR = 1, 2, 3


class OutputRejected(Exception):
    pass


def ack(envelope_id: bytes, status: int, reason: str = "") -> Any:
    return pb.EnvelopeAck(id=envelope_id, status=status, reason=reason)


async def _open_request(
    session: AsyncSession, process_id: uuid.UUID, node_id: str, actor_id: uuid.UUID
) -> ActorRequest | None:
    return (
        await session.execute(
            sa.select(ActorRequest)
            .where(
                ActorRequest.process_id == process_id,
                ActorRequest.node_id == node_id,
                ActorRequest.actor_id == actor_id,
                ActorRequest.status.in_(OPEN_REQUEST),
            )
            .order_by(ActorRequest.created_at.desc())
            .limit(1)
            .with_for_update()
        )
    ).scalar_one_or_none()


async def _progress(
    session: AsyncSession, envelope_id: uuid.UUID
) -> tuple[dict[uuid.UUID, EventProgress], dict[uuid.UUID, Event]]:
    events = (
        await session.execute(
            sa.select(Event)
            .where(Event.envelope_id == envelope_id)
            .order_by(Event.position)
            .with_for_update()
        )
    ).scalars()
    rows = {e.id: e for e in events}
    progress = {
        e.id: EventProgress(
            event_id=e.id,
            type=e.type,
            next_index=e.next_index,
            items_received=e.items_received,
            crc=e.crc,
            item_count=e.item_count,
            complete=e.complete,
            checksum=e.checksum,
        )
        for e in rows.values()
    }
    return progress, rows


async def output(
    session: AsyncSession, director: Director, settings: Settings, actor_id: uuid.UUID, request: Any
) -> Any:
    """Take one fragment; answer an EnvelopeAck. Raises OutputRejected for errors that must
    roll the fragment back (the caller answers ERROR)."""
    fragment = request.envelope
    raw_id = bytes(fragment.id)
    try:
        envelope_id = uuid_of(raw_id, "envelope id")
    except ValueError as exc:
        return ack(raw_id, ERROR, str(exc))
    actor = await session.get(Actor, actor_id)
    if actor is None or actor.status != ActorStatus.ENABLED:
        return ack(raw_id, ERROR, f"actor {actor_id} is unknown or not enabled")
    port = request.output or "default"
    context = None
    if request.HasField("context") and request.context.processID:
        try:
            context = (
                uuid_of(bytes(request.context.processID), "process id"),
                request.context.nodeID,
            )
        except ValueError as exc:
            return ack(raw_id, ERROR, str(exc))

    if context is None:
        await _check_route(session, director, actor, fragment)

    envelope = (
        await session.execute(
            sa.select(Envelope).where(Envelope.id == envelope_id).with_for_update()
        )
    ).scalar_one_or_none()
    if not fragment.events and not fragment.eventIDs and fragment.last:
        # Forward an envelope the bus already has.
        if envelope is None or envelope.status != EnvelopeStatus.COMPLETE:
            return ack(
                raw_id, ERROR, f"cannot forward envelope {envelope_id}: no such complete envelope"
            )
        return await _complete(session, director, actor, envelope, context, port, raw_id)

    now = datetime.now(UTC)
    if envelope is None:
        envelope = Envelope(
            id=envelope_id,
            emitter_id=actor.id,
            process_id=context[0] if context else None,
            node_id=context[1] if context else None,
            output=port if context else None,
            status=EnvelopeStatus.RECEIVING,
            created_at=now,
            last_fragment_at=now,
        )
        session.add(envelope)
        await session.flush()
    elif envelope.emitter_id != actor.id:
        return ack(raw_id, ERROR, f"envelope {envelope_id} belongs to another actor")
    elif envelope.status == EnvelopeStatus.STALLED:
        return ack(
            raw_id,
            ERROR,
            f"envelope {envelope_id} stalled: no fragment for "
            f"{settings.envelope_stall_timeout:g} s",
        )
    elif envelope.status != EnvelopeStatus.RECEIVING:
        return ack(
            raw_id, ERROR, f"envelope {envelope_id} is {envelope.status.value}, not receiving"
        )

    progress, rows = await _progress(session, envelope_id)
    declared = (
        [uuid.UUID(i) for i in envelope.declared_event_ids] if envelope.declared_event_ids else None
    )
    try:
        result = apply_fragment(progress, fragment, declared=declared)
    except EnvelopeFormatError as exc:
        raise OutputRejected(str(exc)) from None
    if result.event_ids_declared is not None:
        envelope.declared_event_ids = [str(i) for i in result.event_ids_declared]
        declared = result.event_ids_declared
    added_items = len(result.items)
    added_bytes = sum(len(data) for _, _, data in result.items)
    if envelope.item_count + added_items > settings.envelope_max_items:
        raise OutputRejected(f"the envelope would exceed {settings.envelope_max_items} items")
    if envelope.size_bytes + added_bytes > settings.envelope_max_bytes:
        raise OutputRejected(f"the envelope would exceed {settings.envelope_max_bytes} bytes")
    for new in result.new_events:
        event = Event(
            id=new.event_id,
            envelope_id=envelope_id,
            position=len(rows),
            type=new.type,
            encoding="text",
        )
        session.add(event)
        rows[new.event_id] = event
    await session.flush()
    binary = {eid for eid, _, data in result.items if not _is_utf8(data)}
    for event_id, state in progress.items():
        event = rows[event_id]
        event.next_index = state.next_index
        event.items_received = state.items_received
        event.crc = state.crc
        event.item_count = state.item_count
        event.checksum = state.checksum
        event.complete = state.complete
        if event_id in binary:
            event.encoding = "base64"
    for event_id, _, data in result.items:
        rows[event_id].size_bytes += len(data)
    await repository.insert_items(session, result.items)
    envelope.item_count += added_items
    envelope.size_bytes += added_bytes
    envelope.event_count = len(rows)
    envelope.last_fragment_at = now
    if not envelope_complete(progress, declared):
        await session.flush()
        return ack(raw_id, RECEIVING)
    envelope.status = EnvelopeStatus.COMPLETE
    envelope.completed_at = now
    await session.flush()
    return await _complete(session, director, actor, envelope, context, port, raw_id)


async def _check_route(
    session: AsyncSession, director: Director, actor: Actor, fragment: Any
) -> None:
    """An emission is refused at its first fragment that no pipeline can take, before any
    of its items is written (which pipeline takes it is decided when it is complete)."""
    if actor.kind != ActorKind.EMITTER:
        raise OutputRejected(
            f"actor {actor.name} is a {actor.kind.value}: outputs need a processing context"
        )
    types = list(dict.fromkeys(event.type for event in fragment.events if event.type))
    if not types:
        return
    try:
        await director.route(session, actor, types, partial=True)
    except XbusError as exc:
        raise OutputRejected(exc.detail) from None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def _complete(
    session: AsyncSession,
    director: Director,
    actor: Actor,
    envelope: Envelope,
    context: tuple[uuid.UUID, str] | None,
    port: str,
    raw_id: bytes,
) -> Any:
    if context is None:
        if actor.kind != ActorKind.EMITTER:
            raise OutputRejected(
                f"actor {actor.name} is a {actor.kind.value}: outputs need a processing context"
            )
        types = await repository.event_types(session, envelope.id)
        try:
            async with session.begin_nested():
                await director.start_process(session, actor, envelope.id, types)
        except XbusError as exc:
            envelope.status = EnvelopeStatus.ERROR
            envelope.status_reason = exc.detail
            await session.flush()
            return ack(raw_id, ERROR, exc.detail)
        return ack(raw_id, ACCEPTED)
    process_id, node_id = context
    request = await _open_request(session, process_id, node_id, actor.id)
    if request is None:
        raise OutputRejected(
            f"actor {actor.name} has no open request for process {process_id} node {node_id}"
        )
    request.outputs = {**request.outputs, port: str(envelope.id)}
    await session.flush()
    return ack(raw_id, ACCEPTED)
