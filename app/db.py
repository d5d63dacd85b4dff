"""The async engine and sessions, and the plain asyncpg pool of the hot routes' units of
work. One unit per request, committed once at the end."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import asyncpg
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)

from app.commit_hooks import NOTIFIER, Publisher
from app.config import Settings
from app.store.connection import PoolTimeout, Work, drop_broken_connections, lost


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


log = logging.getLogger(__name__)

_POOL_CLOSE_GRACE = 10.0
# As SQLAlchemy's pool_timeout: how long a unit waits for a connection of a busy pool.
_ACQUIRE_TIMEOUT = 30.0

# Options of SQLAlchemy's asyncpg dialect that asyncpg.connect does not take.
_DIALECT_ONLY = ("prepared_statement_cache_size", "prepared_statement_name_func", "async_fallback")


async def _json_codecs(connection: Any) -> None:
    """JSON and JSONB as SQLAlchemy's asyncpg dialect sets them on its connections (the
    statements of `app.store` run on either): Python values out, JSON text in."""
    await connection.set_type_codec(
        "json",
        encoder=str.encode,
        decoder=lambda value: json.loads(value.decode()),
        schema="pg_catalog",
        format="binary",
    )
    await connection.set_type_codec(
        "jsonb",
        encoder=lambda value: b"\x01" + value.encode(),  # JSONB's binary format: version 1
        decoder=lambda value: json.loads(value[1:].decode()),
        schema="pg_catalog",
        format="binary",
    )


async def _no_reset(_connection: Any) -> None:
    """A unit gives its connection back with its transaction ended and nothing else set:
    asyncpg's default reset (RESET ALL, UNLISTEN *, ...) would be a round trip per unit."""


class Database:
    def __init__(
        self, engine: AsyncEngine, notifier: Publisher | None = None, pool_size: int = 10
    ) -> None:
        self.engine = engine
        # Sessions carry the notifier so that wake-ups go out after each commit.
        self._info = {NOTIFIER: notifier} if notifier is not None else {}
        self.sessionmaker = async_sessionmaker(engine, expire_on_commit=False, info=self._info)
        # The hot routes' pool, opened at its first use (as the engine's: a database down at
        # start does not stop xbusd from starting).
        self._pool_size = pool_size
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    async def _open_pool(self) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is None:
                _, options = self.engine.dialect.create_connect_args(self.engine.url)
                for name in _DIALECT_ONLY:
                    options.pop(name, None)
                self._pool = await asyncpg.create_pool(
                    min_size=0,
                    max_size=self._pool_size,
                    init=_json_codecs,
                    reset=_no_reset,
                    server_settings={"application_name": "xbusd"},
                    **options,
                )
            return self._pool

    async def _acquire(self) -> Any:
        pool = self._pool or await self._open_pool()
        try:
            return await pool.acquire(timeout=_ACQUIRE_TIMEOUT)
        except TimeoutError:
            raise PoolTimeout(
                f"no database connection came free in {_ACQUIRE_TIMEOUT:g} s "
                f"(XBUS_DB_HOT_POOL_SIZE {self._pool_size}, all in use)"
            ) from None

    async def _release(self, connection: Any) -> None:
        assert self._pool is not None
        await self._pool.release(connection)

    def hot_pool(self) -> tuple[int, int, int]:
        """The hot routes' pool: its most connections, those open now, those idle now."""
        if self._pool is None:
            return self._pool_size, 0, 0
        return self._pool.get_max_size(), self._pool.get_size(), self._pool.get_idle_size()

    def work(self) -> Work:
        """A new unit of work on the pool (`app.store.connection.Work`): commit or close it."""
        return Work(self._acquire, self._release, self.sessionmaker, dict(self._info))

    @asynccontextmanager
    async def working(self) -> AsyncIterator[Work]:
        """A `Work` that commits when the block ends, and rolls back on an exception."""
        work = self.work()
        try:
            yield work
        except BaseException as error:
            await work.close(error)
            raise
        await work.commit()

    async def close(self) -> None:
        """Close the pool and the engine (at shutdown). Connections still taken after a grace
        (a unit never ended) are closed anyway: the pool's close would wait for them."""
        if self._pool is not None:
            try:
                await asyncio.wait_for(self._pool.close(), _POOL_CLOSE_GRACE)
            except TimeoutError:
                log.warning("database connections still in use at shutdown: closed")
                self._pool.terminate()
        await self.engine.dispose()

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
