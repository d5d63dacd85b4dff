"""Loading actors by id or name, and who may act on them."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.principal import Principal
from app.accounts.repository import storable_ref
from app.core.exceptions import NotFound
from app.models import Actor
from app.models.enums import ActorKind, ActorStatus
from app.store.cache import Cache
from app.store.connection import Unit, read_with


def _as_uuid(ref: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(ref)
    except ValueError:
        return None


async def find_actor(session: AsyncSession, ref: str, *, for_update: bool = False) -> Actor | None:
    """An actor by UUID or by name."""
    ident = _as_uuid(ref)
    if ident is None and not storable_ref(ref):
        return None  # no stored name holds NUL characters or exceeds 255 characters
    cond = Actor.id == ident if ident is not None else Actor.name == ref
    query = sa.select(Actor).where(cond)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def load_actor(session: AsyncSession, ref: str, *, for_update: bool = False) -> Actor:
    actor = await find_actor(session, ref, for_update=for_update)
    if actor is None:
        raise NotFound(f"no actor {ref!r}")
    return actor


async def load_owned_actor(
    session: AsyncSession, principal: Principal, ref: str, *, for_update: bool = False
) -> Actor:
    """The admin reaches every actor, an account its own; another account's actor answers 404
    as if it did not exist, so names do not leak across accounts."""
    actor = await find_actor(session, ref, for_update=for_update)
    if actor is None or not (principal.admin or actor.account_id == principal.account_id):
        raise NotFound(f"no actor {ref!r}")
    return actor


@dataclass(frozen=True, slots=True)
class ActorInfo:
    """What the hot paths (emit, poll) need of an actor, as cached."""

    id: uuid.UUID
    name: str
    account_id: uuid.UUID
    kind: ActorKind
    status: ActorStatus
    roles: list[str]
    unresponsive: bool
    last_seen: datetime | None

    @classmethod
    def of(cls, actor: Actor) -> ActorInfo:
        return cls(
            actor.id,
            actor.name,
            actor.account_id,
            actor.kind,
            actor.status,
            list(actor.roles),
            actor.unresponsive,
            actor.last_seen,
        )


async def _info(session: AsyncSession, ref: str) -> ActorInfo | None:
    actor = await find_actor(session, ref)
    return ActorInfo.of(actor) if actor is not None else None


async def actor_info(session: Unit, cache: Cache, ref: str) -> ActorInfo | None:
    """An actor by UUID or by name (`find_actor`), from the cache (dropped on any change of
    actors)."""
    return await cache.get(("actor", ref), lambda: read_with(session, lambda orm: _info(orm, ref)))


async def owned_actor_info(
    session: Unit, cache: Cache, principal: Principal, ref: str
) -> ActorInfo:
    """`load_owned_actor` from the cache (dropped on any change of actors)."""
    actor = await actor_info(session, cache, ref)
    if actor is None or not (principal.admin or actor.account_id == principal.account_id):
        raise NotFound(f"no actor {ref!r}")
    return actor
