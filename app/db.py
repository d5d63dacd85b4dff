"""The async engine and sessions. One session per request, committed once at the end."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.commit_hooks import NOTIFIER, Publisher
from app.config import Settings
from app.store.connection import drop_broken_connections, lost


def async_url(url: str) -> str:
    """Accept the usual spellings of a PostgreSQL URL and use the asyncpg driver."""
    for prefix in (
        "postgresql+asyncpg://",
        "postgresql+psycopg://",
        "postgresql://",
        "postgres://",
    ):
        if url.startswith(prefix):
            return "postgresql+asyncpg://" + url[len(prefix) :]
    raise ValueError("the database URL must be a postgresql:// URL")


def create_engine(settings: Settings) -> AsyncEngine:
    if settings.database_url is None:
        raise ValueError("no database URL: start the embedded runtime first")
    engine = create_async_engine(
        async_url(settings.database_url),
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_max_overflow,
        # No ping at each checkout (a round trip per request): a connection found broken
        # when used is dropped by the pool, and the request answers 503 (app/core/errors.py).
        connect_args={"server_settings": {"application_name": "xbusd"}},
    )
    drop_broken_connections(engine)
    return engine


class Database:
    def __init__(self, engine: AsyncEngine, notifier: Publisher | None = None) -> None:
        self.engine = engine
        # Sessions carry the notifier so that wake-ups go out after each commit.
        info = {NOTIFIER: notifier} if notifier is not None else {}
        self.sessionmaker = async_sessionmaker(engine, expire_on_commit=False, info=info)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A unit of work: commits when the block ends, rolls back on an exception."""
        async with self.sessionmaker() as session:
            try:
                yield session
                await session.commit()
            except BaseException as error:
                await lost(session, error)
                await session.rollback()
                raise
