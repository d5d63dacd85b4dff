"""The asyncpg connection under a SQLAlchemy session, in the session's transaction.

The hot paths (emit, lease, report) run a handful of hand-written statements: through the
ORM each costs more Python than the database spends on it. They run on the driver
connection the session holds, so a caller mixing ORM work and hot-path statements still
commits (or rolls back) everything at once."""

from __future__ import annotations

from typing import Any

import asyncpg
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

# What a connection that the database dropped (restart, pg_terminate_backend) raises; asyncpg
# says "connection is closed" with a plain InterfaceError, the class of its client-side
# mistakes too (bad arguments), which `connection_lost` tells apart.
CONNECTION_LOST: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.InterfaceError,
    asyncpg.CannotConnectNowError,
    asyncpg.AdminShutdownError,
    # The connection's protocol state is broken (it was told of its end while idle).
    asyncpg.InternalClientError,
    ConnectionError,
)
_CLIENT_MISTAKES = (
    asyncpg.exceptions._base.DataError,
    asyncpg.exceptions._base.ClientConfigurationError,
    asyncpg.exceptions._base.UnsupportedClientFeatureError,
)
# Conflicts PostgreSQL resolves by aborting one transaction: retrying it is the answer.
RETRY_LATER: tuple[type[BaseException], ...] = (asyncpg.TransactionRollbackError,)


def connection_lost(error: BaseException) -> bool:
    if isinstance(error, sa_exc.DBAPIError):
        return bool(error.connection_invalidated)
    return isinstance(error, CONNECTION_LOST) and not isinstance(error, _CLIENT_MISTAKES)


def drop_broken_connections(engine: AsyncEngine) -> None:
    """No ping at each checkout (a round trip per request): a connection already known to
    be closed (asyncpg saw the server go) is replaced as it leaves the pool, for free; one
    that breaks in use fails its request, and its session is invalidated (`lost`)."""

    @event.listens_for(engine.sync_engine.pool, "checkout")
    def _checkout(dbapi_connection: Any, _record: Any, _proxy: Any) -> None:
        if dbapi_connection._connection.is_closed():
            raise sa_exc.DisconnectionError("the connection was closed")


async def lost(session: AsyncSession, error: BaseException) -> None:
    """After `error` in a unit of work: when it says the connection is gone, the session's
    connections are invalidated (closed, not given back to the pool)."""
    if connection_lost(error):
        await session.invalidate()


async def driver_connection(session: AsyncSession, *, begin: bool = True) -> Any:
    """The session's asyncpg connection. With `begin` (the default) a transaction is open on
    it, the one the session commits; without, a statement run before any other autocommits
    on its own (a single statement is its own transaction: no BEGIN/COMMIT round trips)."""
    if session.new or session.dirty or session.deleted:
        await session.flush()  # ORM rows first: hot-path statements may refer to them
    connection = await session.connection()
    fairy = await connection.get_raw_connection()
    adapted: Any = fairy.dbapi_connection
    if begin and adapted._transaction is None:
        # SQLAlchemy's asyncpg adapter opens its transaction lazily, at the first statement
        # it runs itself; open it now, the same way, so that the session's commit ends it.
        await adapted._start_transaction()
    return adapted._connection
