"""Shared FastAPI dependencies, as `Annotated` aliases.

FastAPI walks every dependency of a route at every request (~20 µs each, cached ones too), so
the ones on the hot routes read the app state from the request rather than through `State`:
an emission, a lease or a report solves three dependencies, not eleven. Their unit of work
on the plain asyncpg pool is opened in the route (`async with state.db.working()`), not by a
generator dependency: FastAPI's machinery for one (an exit stack, a cancel scope, a shielded
exit) cost more than the rest of the route's dependencies together."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Annotated

import sqlalchemy as sa
from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts import keys
from app.accounts.principal import Principal
from app.bus.director import Director
from app.config import Settings
from app.core.errors import Forbidden, Unauthorized
from app.models import Account, SessionToken
from app.models.enums import AccountStatus
from app.state import AppState
from app.store.connection import lost


async def get_state(request: Request) -> AppState:
    return state_of(request)


def state_of(request: Request) -> AppState:
    state: AppState = request.app.state.xbus
    return state


State = Annotated[AppState, Depends(get_state)]


async def get_settings(state: State) -> Settings:
    return state.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_director(state: State) -> Director:
    return state.director


DirectorDep = Annotated[Director, Depends(get_director)]


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    """The request's unit of work: committed once when the route returns, before the response
    is sent (so what a 2xx acknowledges is stored), rolled back on an error."""
    async with state_of(request).db.sessionmaker() as session:
        try:
            yield session
            await session.commit()
        except BaseException as error:
            await lost(session, error)
            await session.rollback()
            raise


# "function" scope: the commit runs when the route returns, before the response goes out. (The
# default scope would commit after the response is sent: a 2xx for what is not stored yet.)
Session = Annotated[AsyncSession, Depends(get_session, scope="function")]


def _presented_key(request: Request) -> str | None:
    header = request.headers.get("authorization")
    if header:
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise Unauthorized("the Authorization header must be `Bearer <api key>`")
        return token.strip()
    key = request.headers.get("xbus-api-key")
    return key.strip() if key else None


async def authenticate(request: Request) -> Principal:
    """Any valid key: 401 when missing, unknown or expired. Keys found are cached (dropped
    on any change of accounts or keys); a key not in the cache is looked up in a session of
    its own."""
    key = _presented_key(request)
    if not key:
        raise Unauthorized("an API key is required (Authorization: Bearer <key> or Xbus-Api-Key)")
    state = state_of(request)
    digest = keys.digest(key)

    async def lookup() -> tuple[Principal, datetime | None] | None:
        async with state.db.sessionmaker() as session:
            try:
                return await principal_of_key(session, key)
            except BaseException as error:
                await lost(session, error)
                raise

    found = await state.cache.get(("principal", digest.hash), lookup)
    if found is None:
        raise Unauthorized("the API key is not valid")
    principal, expires_at = found
    if expires_at is not None and expires_at <= datetime.now(UTC):
        raise Unauthorized("the API key has expired")
    return principal


async def principal_of_key(
    session: AsyncSession, key: str
) -> tuple[Principal, datetime | None] | None:
    """The account a key (or a session token) acts for, and when it expires."""
    digest = keys.digest(key)
    account = (
        await session.execute(sa.select(Account).where(Account.api_key_lookup == digest.lookup))
    ).scalar_one_or_none()
    expires_at = account.api_key_expires_at if account is not None else None
    if account is None or not keys.matches(key, account.api_key_hash):
        # A session token (ClientAPI.GetSessionToken) acts for its account like a key.
        token = (
            await session.execute(
                sa.select(SessionToken).where(SessionToken.lookup == digest.lookup)
            )
        ).scalar_one_or_none()
        if token is None or not keys.matches(key, token.hash):
            return None
        account = await session.get(Account, token.account_id)
        if account is None:
            return None
        expires_at = token.expires_at
    principal = Principal(account.id, account.name, account.type, account.status, account.is_admin)
    return principal, expires_at


AnyKey = Annotated[Principal, Depends(authenticate)]


async def require_enabled(principal: AnyKey) -> Principal:
    if principal.status != AccountStatus.ENABLED:
        raise Forbidden(f"account {principal.name!r} is {principal.status.value}")
    return principal


Caller = Annotated[Principal, Depends(require_enabled)]


async def require_admin(principal: Caller) -> Principal:
    if not principal.admin:
        raise Forbidden("this operation needs the admin key")
    return principal


Admin = Annotated[Principal, Depends(require_admin)]
