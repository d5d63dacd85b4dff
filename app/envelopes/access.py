"""Who may read an envelope: the admin, the account of the actor that emitted it, and the
accounts whose actors were handed it in a request."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.principal import Principal
from app.core.exceptions import NotFound
from app.models import Actor, ActorRequest, Envelope


async def readable_envelope(
    session: AsyncSession, principal: Principal, envelope_id: object
) -> Envelope:
    try:
        ident = uuid.UUID(str(envelope_id))
    except ValueError:
        raise NotFound(f"no envelope {envelope_id}") from None
    envelope = await session.get(Envelope, ident)
    if envelope is None:
        raise NotFound(f"no envelope {ident}")
    if principal.admin:
        return envelope
    if envelope.emitter_id is not None:
        owner = await session.scalar(
            sa.select(Actor.account_id).where(Actor.id == envelope.emitter_id)
        )
        if owner == principal.account_id:
            return envelope
    handed = await session.scalar(
        sa.select(sa.func.count())
        .select_from(ActorRequest)
        .join(Actor, Actor.id == ActorRequest.actor_id)
        .where(
            Actor.account_id == principal.account_id,
            ActorRequest.inputs.contains([{"envelope_id": str(ident)}]),
        )
    )
    if handed:
        return envelope
    raise NotFound(f"no envelope {ident}")
