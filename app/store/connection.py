"""The asyncpg connection under a SQLAlchemy session, in the session's transaction.

The hot paths (emit, lease, report) run a handful of hand-written statements: through the
ORM each costs more Python than the database spends on it. They run on the driver
connection the session holds, so a caller mixing ORM work and hot-path statements still
commits (or rolls back) everything at once."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession


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
