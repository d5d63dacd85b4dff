"""Broker.Output: envelopes arriving over NATS in fragments, assembled in PostgreSQL (each
event's progress is stored, so any replica can take the next fragment), then dispatched
(from an emitter) or kept as a worker's output until it reports success. It runs on a unit
of work without the ORM (`app.nats_api.assembly`'s statements)."""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime
from typing import Any

from xbus import xbus_pb2  # type: ignore[import-untyped, unused-ignore]

from app.actors.access import ActorInfo, actor_info
from app.bus.director import Director
from app.config import Settings
from app.core.exceptions import Conflict, XbusError
from app.envelopes import repository
from app.envelopes import service as emissions
from app.envelopes.codec import (
    EnvelopeData,
    EnvelopeFormatError,
    EventData,
    EventProgress,
    apply_fragment,
    envelope_complete,
)
from app.models.enums import ActorKind, ActorStatus, EnvelopeStatus
from app.nats_api import assembly as sql
from app.nats_api.convert import uuid_of
from app.store.cache import Cache
from app.store.connection import Unit, alone, savepoint

log = logging.getLogger(__name__)
pb: Any = xbus_pb2

RECEIVING, ACCEPTED, ERROR = 1, 2, 3


class OutputRejected(Exception):
    pass


def ack(envelope_id: bytes, status: int, reason: str = "") -> Any:
    return pb.EnvelopeAck(id=envelope_id, status=status, reason=reason)


async def output(
    unit: Unit,
    director: Director,
    settings: Settings,
    cache: Cache,
    actor_id: uuid.UUID,
    request: Any,
) -> Any:
    """Take one fragment; answer an EnvelopeAck. Raises OutputRejected for errors that must
    roll the fragment back (the caller answers ERROR). The actor is read from `cache`, as
    an HTTP emission reads its emitter."""
    fragment = request.envelope
    raw_id = bytes(fragment.id)
    try:
        envelope_id = uuid_of(raw_id, "envelope id")
    except ValueError as exc:
        return ack(raw_id, ERROR, str(exc))
    actor = await actor_info(unit, cache, str(actor_id))
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
        await _check_route(unit, director, actor, fragment)
        whole = await _emit_whole(unit, director, settings, actor, envelope_id, fragment)
        if whole:
            return ack(raw_id, ACCEPTED)

    envelope = await sql.lock_envelope(unit, envelope_id)
    if not fragment.events and not fragment.eventIDs and fragment.last:
        # Forward an envelope the bus already has.
        if envelope is None or envelope.status != EnvelopeStatus.COMPLETE:
            return ack(
                raw_id, ERROR, f"cannot forward envelope {envelope_id}: no such complete envelope"
            )
        return await _complete(unit, director, actor, envelope_id, context, port, raw_id)

    now = datetime.now(UTC)
    if envelope is None:
        envelope = await sql.insert_envelope(unit, envelope_id, actor.id, context, port, now)
        progress: dict[uuid.UUID, EventProgress] = {}
        rows: dict[uuid.UUID, sql.EventRow] = {}  # a new envelope has no event yet
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
    else:
        progress, rows = await sql.lock_events(unit, envelope_id)
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
        rows[new.event_id] = sql.EventRow(len(rows), "text", 0, new=True)
    for event_id, _, data in result.items:
        event = rows[event_id]
        event.size_bytes += len(data)
        if not _is_utf8(data):
            event.encoding = "base64"
    await sql.write_events(unit, envelope_id, progress, rows)
    await repository.insert_items(unit, result.items)
    envelope.item_count += added_items
    envelope.size_bytes += added_bytes
    complete = envelope_complete(progress, declared)
    await sql.update_envelope(unit, envelope, len(rows), now, complete=complete)
    if not complete:
        return ack(raw_id, RECEIVING)
    # Every event of the envelope is in `progress` (locked or new), in position order.
    types = list(dict.fromkeys(state.type for state in progress.values()))
    return await _complete(unit, director, actor, envelope_id, context, port, raw_id, types)


async def _emit_whole(
    unit: Unit,
    director: Director,
    settings: Settings,
    actor: ActorInfo,
    envelope_id: uuid.UUID,
    fragment: Any,
) -> bool:
    """A new envelope whole in its first fragment, from an emitter (python-xbus sends a small
    envelope as one fragment): stored with its process by one statement, as an HTTP
    emission is, instead of assembled (about ten round trips). False, with nothing written,
    when it is not that case: not whole, too large, refused by routing, or an id taken (a
    retry, a forward); the assembly then answers as it always did."""
    progress: dict[uuid.UUID, EventProgress] = {}
    try:
        result = apply_fragment(progress, fragment)
    except EnvelopeFormatError:
        return False
    if not envelope_complete(progress, result.event_ids_declared):
        return False
    items: dict[uuid.UUID, list[bytes]] = {event_id: [] for event_id in progress}
    for event_id, _, data in result.items:
        items[event_id].append(data)
    envelope = EnvelopeData(
        events=[
            EventData(
                type=state.type,
                encoding="text" if all(map(_is_utf8, items[event_id])) else "base64",
                items=items[event_id],
                id=event_id,
            )
            for event_id, state in progress.items()
        ],
        id=envelope_id,
    )
    if (
        envelope.item_count > settings.envelope_max_items
        or envelope.byte_size > settings.envelope_max_bytes
    ):
        return False
    # With no transaction open on the unit, the one write is the whole transaction and its
    # own check of the ids: one taken (a retry, a forward) fails it whole, nothing written,
    # and the assembly answers. Otherwise the ids are checked first, as before.
    single = alone(unit)
    try:
        planned = await emissions.plan_emission(
            unit, director, actor, envelope, check_ids=not single
        )
    except XbusError:
        return False
    if planned[0].copied:
        return False  # many items: assembled, their COPY in the assembly's transaction
    try:
        await emissions.start_emission(unit, director, actor, planned)
    except Conflict:
        if not single:
            raise
        return False
    return True


async def _check_route(unit: Unit, director: Director, actor: ActorInfo, fragment: Any) -> None:
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
        await director.route(unit, actor, types, partial=True)
    except XbusError as exc:
        raise OutputRejected(exc.detail) from None


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


async def _complete(
    unit: Unit,
    director: Director,
    actor: ActorInfo,
    envelope_id: uuid.UUID,
    context: tuple[uuid.UUID, str] | None,
    port: str,
    raw_id: bytes,
    types: list[str] | None = None,
) -> Any:
    """The envelope is complete: a process starts (from an emitter), or it becomes a
    worker's output. `types`: its event types in order when known (else read)."""
    if context is None:
        if actor.kind != ActorKind.EMITTER:
            raise OutputRejected(
                f"actor {actor.name} is a {actor.kind.value}: outputs need a processing context"
            )
        if types is None:
            types = await sql.event_types(unit, envelope_id)
        try:
            async with savepoint(unit):  # a refusal undoes the start alone, not the envelope
                await director.start_process(unit, actor, envelope_id, types)
        except XbusError as exc:
            await sql.mark_error(unit, envelope_id, exc.detail, receiving=False)
            return ack(raw_id, ERROR, exc.detail)
        return ack(raw_id, ACCEPTED)
    process_id, node_id = context
    now = datetime.now(UTC)
    if not await sql.add_output(unit, process_id, node_id, actor.id, port, envelope_id, now):
        raise OutputRejected(
            f"actor {actor.name} has no open request for process {process_id} node {node_id}"
        )
    return ack(raw_id, ACCEPTED)
