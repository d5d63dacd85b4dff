"""Requests as actors see them: the payload (inputs inline or linked) shared by HTTP polling
and webhooks."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from app.envelopes.codec import EnvelopeData, EventData, envelope_to_json
from app.requests.schemas import ActorRequestRead, RequestInput

# Envelopes by id: size, item count, and the envelope itself when small enough to inline.
Found = dict[uuid.UUID, tuple[int, int, EnvelopeData | None]]


class HandedOut(Protocol):
    """What the payload needs of a request (an ORM row or a leased one)."""

    id: uuid.UUID
    process_id: uuid.UUID
    node_id: str
    actor_id: uuid.UUID | None
    attempts: int
    inputs: list[Any]

    @property
    def lease_expires_at(self) -> Any: ...


def handed_payloads(
    leased: Sequence[tuple[HandedOut, Sequence[Sequence[Any]]]], inline_max: int
) -> list[ActorRequestRead]:
    """The payloads of requests leased with their envelopes' rows (`Director.lease`):
    an envelope handed to several of them is read from the first one's rows."""
    found: Found = {}
    for _, rows in leased:
        _envelopes(rows, inline_max, found)
    return [_payload(request, found) for request, _ in leased]


def handed_envelopes(rows: Iterable[Sequence[Any]], inline_max: int) -> Found:
    """The envelopes of a `handed` statement's rows (what a lease or claim read)."""
    return _envelopes(rows, inline_max, {})


def _envelopes(rows: Iterable[Sequence[Any]], inline_max: int, found: Found) -> Found:
    """Envelopes from a `handed` statement's envelope rows (envelope id, size, item count,
    event id, type, encoding, item), added to `found`; one already there is not read
    again."""
    known = set(found)
    for envelope_id, size, count, event_id, type_, encoding, data in rows:
        if envelope_id is None or envelope_id in known:
            continue  # a request without inputs; or an envelope read from earlier rows
        if envelope_id not in found:
            inline = EnvelopeData([], envelope_id) if size <= inline_max else None
            found[envelope_id] = (size, count, inline)
        envelope = found[envelope_id][2]
        if envelope is None or event_id is None:
            continue
        events = envelope.events
        if not events or events[-1].id != event_id:
            events.append(EventData(type_, encoding, [], event_id))
        if data is not None:
            events[-1].items.append(data)
    return found


def _payload(request: HandedOut, found: Found) -> ActorRequestRead:
    inputs = []
    for entry in request.inputs:
        envelope_id = uuid.UUID(entry["envelope_id"])
        size, count, data = found.get(envelope_id, (0, 0, None))
        body = envelope_to_json(data) if data is not None else None
        inputs.append(
            RequestInput(
                name=entry["name"],
                envelope_id=envelope_id,
                envelope_url=f"/api/v1/envelopes/{envelope_id}",
                size_bytes=size,
                item_count=count,
                inline=body is not None,
                envelope=body,
            )
        )
    return ActorRequestRead(
        request_id=request.id,
        process_id=request.process_id,
        node_id=request.node_id,
        actor_id=request.actor_id,
        attempt=request.attempts,
        lease_expires_at=request.lease_expires_at,
        inputs=inputs,
    )
