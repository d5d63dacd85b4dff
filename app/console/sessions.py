"""Console sessions: an API key is exchanged once for a random session token (the cookie);
the database keeps its SHA-256, the account, a CSRF token, the expiry and the revocation."""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.principal import Principal
from app.core.deps import principal_of_key  # the API's own check of a key
from app.core.exceptions import Forbidden, Unauthorized
from app.models import Account, ConsoleSession
from app.models.enums import AccountStatus

_KEEP_EXPIRED = timedelta(days=7)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class SignedIn:
    principal: Principal
    session_id: str
    csrf_token: str
    expires_at: datetime


def _enabled(principal: Principal) -> Principal:
    if principal.status != AccountStatus.ENABLED:
        raise Forbidden(f"account {principal.name!r} is {principal.status.value}")
    return principal


async def sign_in(session: AsyncSession, key: str, ttl: timedelta) -> tuple[str, SignedIn]:
    """A new session for the account of `key` (refused as the API refuses that key), and the
    token for its cookie (shown nowhere else, stored hashed)."""
    found = await principal_of_key(session, key.strip()) if key.strip() else None
    if found is None:
        raise Unauthorized("the API key is not valid")
    principal, key_expires_at = found
    now = utcnow()
    if key_expires_at is not None and key_expires_at <= now:
        raise Unauthorized("the API key has expired")
    _enabled(principal)
    # Sessions long expired go at each sign-in: the table stays the size of its live ones.
    await session.execute(
        sa.delete(ConsoleSession).where(ConsoleSession.expires_at < now - _KEEP_EXPIRED)
    )
    token = secrets.token_urlsafe(32)
    row = ConsoleSession(
        account_id=principal.account_id,
        token_hash=_hash(token),
        csrf_token=secrets.token_urlsafe(32),
        created_at=now,
        expires_at=now + ttl,
    )
    session.add(row)
    await session.flush()
    return token, SignedIn(principal, str(row.id), row.csrf_token, row.expires_at)


async def current(session: AsyncSession, token: str) -> SignedIn | None:
    """The live session of a cookie: None when unknown, expired, revoked, or when its
    account is no longer enabled."""
    row = (
        await session.execute(
            sa.select(ConsoleSession, Account)
            .join(Account, Account.id == ConsoleSession.account_id)
            .where(ConsoleSession.token_hash == _hash(token))
        )
    ).first()
    if row is None:
        return None
    console_session, account = row
    if console_session.revoked_at is not None or console_session.expires_at <= utcnow():
        return None
    if account.status != AccountStatus.ENABLED:
        return None
    principal = Principal(account.id, account.name, account.type, account.status, account.is_admin)
    return SignedIn(
        principal, str(console_session.id), console_session.csrf_token, console_session.expires_at
    )


async def revoke(session: AsyncSession, token: str) -> None:
    await session.execute(
        sa.update(ConsoleSession)
        .where(ConsoleSession.token_hash == _hash(token), ConsoleSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
