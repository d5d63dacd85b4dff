"""Account rules: unique names, keys shown once, the bootstrap admin kept usable, and
deleting an account's actors only when asked to."""

from __future__ import annotations

import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Generic, TypeVar

from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import keys
from app.accounts import repository as repo
from app.accounts.schemas import AccountCreate, AccountUpdate
from app.config import Settings
from app.core.exceptions import Conflict, NotFound, Unprocessable
from app.models import Account
from app.models.enums import AccountStatus, AccountType

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Page(Generic[T]):
    items: list[T]
    next_cursor: str | None


def page_limit(limit: int | None, settings: Settings) -> int:
    """The page size asked for, or the default, never more than the configured maximum."""
    return min(limit or settings.page_size_default, settings.page_size_max)


def make_page(
    rows: Sequence[T], limit: int, position: Callable[[T], tuple[datetime, uuid.UUID]]
) -> Page[T]:
    """`rows` holds up to `limit + 1` rows (see repository.keyset)."""
    items = list(rows[:limit])
    if len(rows) > limit and items:
        return Page(items, repo.page_cursor(*position(items[-1])))
    return Page(items, None)


def violated_constraint(exc: IntegrityError) -> str:
    """The name of the constraint a failed statement broke ("" when the driver hides it)."""
    cause = getattr(exc.orig, "__cause__", None)
    return str(getattr(cause, "constraint_name", None) or "")


def check_future(value: datetime | None, field: str) -> None:
    if value is not None and value <= datetime.now(UTC):
        raise Unprocessable(f"{field} must be in the future (got {value.isoformat()})")


async def load_account(session: AsyncSession, ref: str, *, for_update: bool = False) -> Account:
    account = await repo.find_account(session, ref, for_update=for_update)
    if account is None:
        raise NotFound(f"no account {ref!r}")
    return account


def _name_conflict(name: str) -> Conflict:
    return Conflict(f"an account named {name!r} already exists")


async def _flush_named(session: AsyncSession, name: str) -> None:
    try:
        await session.flush()
    except IntegrityError as exc:
        # A concurrent request took the name between our check and our write.
        if violated_constraint(exc) in ("", "uq_accounts_name"):
            raise _name_conflict(name) from exc
        raise Conflict("a concurrent change conflicts with this one; try again") from exc


async def create_account(session: AsyncSession, data: AccountCreate) -> tuple[Account, str]:
    """The new account and its API key (which only its digest remembers)."""
    check_future(data.api_key_expires_at, "api_key_expires_at")
    if await repo.name_taken(session, data.name):
        raise _name_conflict(data.name)
    key = keys.generate_key()
    digest = keys.digest(key)
    account = Account(
        name=data.name,
        type=AccountType(data.type),
        status=AccountStatus(data.status),
        description=data.description,
        is_admin=False,
        api_key_lookup=digest.lookup,
        api_key_hash=digest.hash,
        api_key_expires_at=data.api_key_expires_at,
    )
    session.add(account)
    await _flush_named(session, data.name)
    return account, key


async def list_accounts(
    session: AsyncSession,
    settings: Settings,
    *,
    type: AccountType | None = None,
    status: AccountStatus | None = None,
    name: str | None = None,
    cursor: str | None = None,
    limit: int | None = None,
) -> Page[Account]:
    size = page_limit(limit, settings)
    if name is not None and not repo.storable_ref(name):
        return Page([], None)
    rows = await repo.list_accounts(
        session, type=type, status=status, name=name, cursor=cursor, limit=size
    )
    return make_page(rows, size, lambda a: (a.created_at, a.id))


async def update_account(session: AsyncSession, ref: str, data: AccountUpdate) -> Account:
    account = await load_account(session, ref, for_update=True)
    fields = data.model_fields_set
    new_name = data.name if "name" in fields and data.name != account.name else None
    if account.is_admin:
        if new_name is not None:
            raise Conflict("the bootstrap admin account cannot be renamed")
        if data.status is not None and data.status != "enabled":
            raise Conflict(f"the bootstrap admin account cannot be made {data.status}")
    if new_name is not None:
        if await repo.name_taken(session, new_name):
            raise _name_conflict(new_name)
        account.name = new_name
    if data.description is not None:
        account.description = data.description
    if data.status is not None:
        account.status = AccountStatus(data.status)
    await _flush_named(session, account.name)
    return account


async def delete_account(session: AsyncSession, ref: str, *, confirm: bool) -> None:
    # The row lock also holds back actors being added to the account meanwhile (their
    # foreign key check needs a share lock on it).
    account = await load_account(session, ref, for_update=True)
    if account.is_admin:
        raise Conflict("the bootstrap admin account cannot be deleted")
    actors = await repo.count_actors(session, account.id)
    if actors and not confirm:
        noun = "actor" if actors == 1 else "actors"
        raise Conflict(
            f"account {account.name!r} has {actors} {noun}; deleting the account deletes "
            f"{'it' if actors == 1 else 'them'} too: repeat with ?confirm=true",
            extra={"actors": actors},
        )
    await repo.delete_account(session, account.id)


async def new_api_key(
    session: AsyncSession, ref: str, expires_at: datetime | None
) -> tuple[str, datetime | None]:
    """Replace the account's API key: the old one stops working when this commits."""
    account = await load_account(session, ref, for_update=True)
    if account.is_admin:
        # ensure_admin would put the configured key back at the next start.
        raise Conflict(
            "the bootstrap admin's key comes from XBUS_ADMIN_API_KEY or <data-dir>/admin.key; "
            "change it there and restart"
        )
    check_future(expires_at, "expires_at")
    key = keys.generate_key()
    digest = keys.digest(key)
    account.api_key_lookup = digest.lookup
    account.api_key_hash = digest.hash
    account.api_key_expires_at = expires_at
    try:
        await session.flush()
    except IntegrityError as exc:  # a lookup prefix collision: astronomically unlikely
        raise Conflict("could not store a new key; try again") from exc
    return key, expires_at
