"""SQL for accounts, and the keyset paging that account and actor lists share."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import datetime
from typing import Any, TypeVar

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from app.core.exceptions import BadRequest
from app.core.pagination import decode_cursor, encode_cursor
from app.models import Account, Actor
from app.models.enums import AccountStatus, AccountType, ActorStatus

NAME_MAX_LENGTH = 255

SelectT = TypeVar("SelectT", bound=sa.Select[*tuple[Any, ...]])


def as_uuid(ref: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(ref)
    except ValueError:
        return None


def storable_ref(ref: str) -> bool:
    """Whether `ref` can name a stored row at all: PostgreSQL refuses NUL characters and lone
    surrogates in a query parameter, and names are at most 255 characters."""
    if "\x00" in ref or len(ref) > NAME_MAX_LENGTH:
        return False
    try:
        ref.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


# --- keyset paging over (created_at, id) ------------------------------------------------


def page_cursor(created_at: datetime, ident: uuid.UUID) -> str:
    return encode_cursor([created_at.isoformat(), str(ident)])


def after_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    created, ident = decode_cursor(cursor, 2)
    try:
        return datetime.fromisoformat(str(created)), uuid.UUID(str(ident))
    except ValueError:
        raise BadRequest("cursor is not one this server handed out") from None


def keyset(
    query: SelectT,
    created_at: InstrumentedAttribute[datetime],
    ident: InstrumentedAttribute[uuid.UUID],
    cursor: str | None,
    limit: int,
) -> SelectT:
    """One page in (created_at, id) order; it fetches one row more than `limit` so the caller
    knows whether a next page exists."""
    if cursor is not None:
        after = after_cursor(cursor)
        query = query.where(sa.tuple_(created_at, ident) > sa.tuple_(*after))
    return query.order_by(created_at, ident).limit(limit + 1)


# --- accounts ---------------------------------------------------------------------------


async def find_account(
    session: AsyncSession, ref: str, *, for_update: bool = False
) -> Account | None:
    """An account by UUID or by name."""
    ident = as_uuid(ref)
    if ident is None and not storable_ref(ref):
        return None
    cond = Account.id == ident if ident is not None else Account.name == ref
    query = sa.select(Account).where(cond)
    if for_update:
        query = query.with_for_update()
    return (await session.execute(query)).scalar_one_or_none()


async def name_taken(session: AsyncSession, name: str) -> bool:
    query = sa.select(sa.exists().where(Account.name == name))
    return bool((await session.execute(query)).scalar())


async def list_accounts(
    session: AsyncSession,
    *,
    type: AccountType | None,
    status: AccountStatus | None,
    name: str | None,
    cursor: str | None,
    limit: int,
) -> Sequence[Account]:
    query = sa.select(Account)
    if type is not None:
        query = query.where(Account.type == type)
    if status is not None:
        query = query.where(Account.status == status)
    if name is not None:
        query = query.where(Account.name == name)
    query = keyset(query, Account.created_at, Account.id, cursor, limit)
    return (await session.execute(query)).scalars().all()


async def count_actors(session: AsyncSession, account_id: uuid.UUID) -> int:
    query = sa.select(sa.func.count()).select_from(Actor).where(Actor.account_id == account_id)
    return int((await session.execute(query)).scalar_one())


async def delete_account(session: AsyncSession, account_id: uuid.UUID) -> None:
    """Its actors go with it (ON DELETE CASCADE); rows that merely mention them stay."""
    await session.execute(
        sa.delete(Account).where(Account.id == account_id),
        execution_options={"synchronize_session": False},
    )


async def add_account(session: AsyncSession, account: Account) -> None:
    session.add(account)
    await session.flush()


async def set_pending_actors_status(
    session: AsyncSession, account_id: uuid.UUID, status: ActorStatus
) -> int:
    """Decide an account's pending actors (a registration accepted or rejected); actors the
    admin already enabled, disabled or rejected keep their status. The count changed."""
    result = await session.execute(
        sa.update(Actor)
        .where(Actor.account_id == account_id, Actor.status == ActorStatus.PENDING)
        .values(status=status, updated_at=sa.func.now())
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)
