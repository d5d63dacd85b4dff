"""SQL for registrations: pending accounts that came with a CSR, and their actors."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Account, Actor
from app.models.enums import AccountStatus


async def taken_actor_names(session: AsyncSession, names: Sequence[str]) -> list[str]:
    if not names:
        return []
    query = sa.select(Actor.name).where(Actor.name.in_(list(names))).order_by(Actor.name)
    return list((await session.execute(query)).scalars().all())


async def count_pending_registrations(session: AsyncSession) -> int:
    query = (
        sa.select(sa.func.count())
        .select_from(Account)
        .where(Account.status == AccountStatus.PENDING, Account.csr.is_not(None))
    )
    return int((await session.execute(query)).scalar_one())


async def find_registration(session: AsyncSession, account_id: uuid.UUID) -> Account | None:
    """An account that registered (it sent a CSR), by id."""
    query = sa.select(Account).where(Account.id == account_id, Account.csr_origin.is_not(None))
    return (await session.execute(query)).scalar_one_or_none()


async def account_actors(session: AsyncSession, account_id: uuid.UUID) -> list[Actor]:
    query = (
        sa.select(Actor)
        .where(Actor.account_id == account_id)
        .order_by(Actor.created_at, Actor.name)
    )
    return list((await session.execute(query)).scalars().all())


async def add_registration(session: AsyncSession, account: Account) -> None:
    """The account and its actors (in `account.actors`), in one flush."""
    session.add(account)
    await session.flush()
