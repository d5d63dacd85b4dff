"""Requests as actors see them: the payload (inputs inline or linked) shared by HTTP polling
and webhooks."""

from __future__ import annotations

import uuid

from sqlalchemy.ext.asyncio import AsyncSession

from app.envelopes import repository
from app.envelopes.codec import envelope_to_json
from app.models import ActorRequest
from app.requests.schemas import ActorRequestRead, RequestInput


async def request_payload(
    session: AsyncSession, request: ActorRequest, inline_max: int
) -> ActorRequestRead:
    inputs = []
    for entry in request.inputs:
        envelope_id = uuid.UUID(entry["envelope_id"])
        envelope = await repository.get_envelope(session, envelope_id)
        size = envelope.size_bytes if envelope else 0
        count = envelope.item_count if envelope else 0
        body = None
        if envelope is not None and size <= inline_max:
            data = await repository.load_envelope(session, envelope_id)
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
