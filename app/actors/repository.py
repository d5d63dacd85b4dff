"""SQL for actors (loading one by id or name lives in app/actors/access.py)."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.repository import as_uuid, keyset
from app.models import Account, Actor
from app.models.enums import ActorKind, ActorStatus


async def name_taken(session: AsyncSession, name: str) -> bool:
    query = sa.select(sa.exists().where(Actor.name == name))
    return bool((await session.execute(query)).scalar())


async def account_name(session: AsyncSession, account_id: uuid.UUID) -> str:
    query = sa.select(Account.name).where(Account.id == account_id)
    return str((await session.execute(query)).scalar_one())


async def add_actor(session: AsyncSession, actor: Actor) -> None:
    session.add(actor)
    await session.flush()


async def list_actors(
    session: AsyncSession,
    *,
    owner_id: uuid.UUID | None,
    account: str | None,
    kind: ActorKind | None,
    status: ActorStatus | None,
    role: str | None,
    name: str | None,
    online: bool | None,
    cursor: str | None,
    limit: int,
) -> Sequence[tuple[Actor, str]]:
    """Actors with their account's name. `owner_id` limits the list to one account (the
    caller's); `account` is the `account_id` filter, an id or an account name."""
    query = sa.select(Actor, Account.name).join(Account, Actor.account_id == Account.id)
    if owner_id is not None:
        query = query.where(Actor.account_id == owner_id)
    if account is not None:
        ident = as_uuid(account)
        query = query.where(Account.id == ident if ident is not None else Account.name == account)
    if kind is not None:
        query = query.where(Actor.kind == kind)
    if status is not None:
        query = query.where(Actor.status == status)
    if role is not None:
        query = query.where(Actor.roles.contains([role]))  # @>, served by the GIN index
    if name is not None:
        query = query.where(Actor.name == name)
    if online is not None:
        query = query.where(Actor.online.is_(online))
    query = keyset(query, Actor.created_at, Actor.id, cursor, limit)
    rows = (await session.execute(query)).all()
    return [(actor, owner) for actor, owner in rows]


async def delete_actor(session: AsyncSession, actor_id: uuid.UUID) -> None:
    """Rows that mention the actor (envelopes, processes, requests, logs, delivery attempts)
    stay: their references are SET NULL or plain ids. Its idempotency keys go with it."""
    await session.execute(
        sa.delete(Actor).where(Actor.id == actor_id),
        execution_options={"synchronize_session": False},
    )
