"""Loading actors by id or name, and who may act on them."""

from __future__ import annotations

import uuid

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.repository import storable_ref
from app.core.deps import Principal
from app.core.exceptions import NotFound
from app.models import Actor


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
