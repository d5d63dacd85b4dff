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
    """Whether `error` says the database is out of reach: a connection that broke, or one
    that could not be made (refused, the server starting or shutting down), also when
    SQLAlchemy wraps it (its cause chain is followed)."""
    seen: BaseException | None = error
    for _ in range(8):  # the wrappers' depth, bounded
        if seen is None:
            return False
        if isinstance(seen, sa_exc.DBAPIError) and seen.connection_invalidated:
            return True
        if isinstance(seen, CONNECTION_LOST) and not isinstance(seen, _CLIENT_MISTAKES):
            return True
        if isinstance(seen, OSError) and _raised_by_the_driver(seen):
            return True  # a socket that could not be opened: refused, or no Unix socket
        seen = seen.__cause__ or seen.__context__
    return False


def _raised_by_the_driver(error: BaseException) -> bool:
    traceback = error.__traceback__
    while traceback is not None:
        module = traceback.tb_frame.f_globals.get("__name__", "")
        if module.startswith(("asyncpg", "sqlalchemy")):
            return True
        traceback = traceback.tb_next
    return False


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
        try:
            await adapted._start_transaction()
        except Exception as error:
            # SQLAlchemy's adapter error, not its DBAPIError: the driver's own (a lost
            # connection, ...) is what the callers and the HTTP layer know how to answer.
            cause = error.__cause__
            known: tuple[type[BaseException], ...] = (asyncpg.PostgresError, *CONNECTION_LOST)
            if cause is not None and isinstance(cause, known):
                raise cause from None
            raise
    return adapted._connection
