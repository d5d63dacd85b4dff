"""The asyncpg connection of a unit of work, in the unit's transaction.

The hot paths (emit, lease, report) run a handful of hand-written statements: through the
ORM each costs more Python than the database spends on it. A unit of work is either a
SQLAlchemy session (they then run on the driver connection the session holds, so a caller
mixing ORM work and hot-path statements still commits or rolls back everything at once), or
a `Work`: a connection of a plain asyncpg pool, with no session at all, which the hot HTTP
routes use (a session costs more Python per request than the statements it carries)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeGuard, TypeVar

import asyncpg
from sqlalchemy import event
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker

from app.commit_hooks import committed, rolled_back

T = TypeVar("T")


class PoolTimeout(ConnectionError):
    """No connection of the pool came free in time (every one busy): the request is answered
    503 with Retry-After, as when the database is out of reach, rather than left waiting."""


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


class TransactionAborted(RuntimeError):
    """A unit's COMMIT found its transaction aborted by an earlier error (PostgreSQL then
    rolls back and answers ROLLBACK): nothing of the unit is stored. Raised instead of the
    silent success a commit would otherwise report; a database error that a caller caught
    and did not raise again is a bug, answered 500, never a 2xx for what was not stored."""


class Work:
    """A unit of work on a connection of an asyncpg pool, without the ORM. The connection is
    taken at the first statement and given back at `commit` or `rollback`; a transaction is
    opened only when a statement needs one (`driver_connection`'s `begin`), so a unit of one
    statement costs no BEGIN or COMMIT. What is to happen after the commit (wake-ups,
    metrics) is kept in `info`, as a session keeps it (`app.commit_hooks`).

    The unit sends its own BEGIN, COMMIT, ROLLBACK and savepoints rather than through
    asyncpg's `Transaction`, to read COMMIT's answer: PostgreSQL answers ROLLBACK to the
    COMMIT of a transaction an error aborted, which asyncpg's `commit()` takes for a success;
    here it raises `TransactionAborted`.

    `sessions` gives the ORM reads a cache may need on a miss (`reading`): they run in a
    short session of their own, on committed data, never for a write."""

    __slots__ = ("_acquire", "_conn", "_open", "_release", "_savepoints", "info", "sessions")

    def __init__(
        self,
        acquire: Callable[[], Awaitable[Any]],
        release: Callable[[Any], Awaitable[None]],
        sessions: async_sessionmaker[AsyncSession],
        info: dict[str, Any],
    ) -> None:
        self._acquire = acquire
        self._release = release
        self.sessions = sessions
        self.info = info
        self._conn: Any = None
        self._open = False  # a transaction is open on the connection
        self._savepoints = 0

    async def connection(self, *, begin: bool = True) -> Any:
        if self._conn is None:
            self._conn = await self._acquire()
        if begin and not self._open:
            await self._conn.execute("BEGIN")
            self._open = True
        return self._conn

    @property
    def in_transaction(self) -> bool:
        return self._open

    async def commit(self) -> None:
        """Commit what is open and give the connection back; then what was kept for after
        the commit runs (statements without a transaction committed on their own)."""
        was_open, self._open = self._open, False
        try:
            if was_open and await self._conn.execute("COMMIT") != "COMMIT":
                raise TransactionAborted(
                    "the transaction was aborted by an earlier error: nothing was stored"
                )
        except BaseException as error:
            rolled_back(self.info)
            await self._give_back(error)
            raise
        await self._give_back(None)
        committed(self.info)

    async def rollback(self) -> None:
        was_open, self._open = self._open, False
        rolled_back(self.info)
        try:
            if was_open:
                await self._conn.execute("ROLLBACK")
        except BaseException as error:
            await self._give_back(error)
            raise
        await self._give_back(None)

    @contextlib.asynccontextmanager
    async def savepoint(self) -> AsyncIterator[None]:
        """A savepoint in the unit's transaction (opened if needed): an error in the block
        undoes the block alone."""
        conn = await self.connection()
        self._savepoints += 1
        name = f"xbus_{self._savepoints}"
        await conn.execute(f"SAVEPOINT {name}")
        try:
            yield
        except BaseException:
            await conn.execute(f"ROLLBACK TO SAVEPOINT {name}")
            raise
        await conn.execute(f"RELEASE SAVEPOINT {name}")

    async def close(self, error: BaseException | None = None) -> None:
        """The end of the unit after `error` (or none): anything open is rolled back; a
        connection that `error` says is lost is closed rather than given back."""
        if error is not None and connection_lost(error) and self._conn is not None:
            _drop(self._conn)
        try:
            await self.rollback()
        except Exception:
            if error is None:
                raise  # otherwise the first error is the one to tell

    async def _give_back(self, error: BaseException | None) -> None:
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if error is not None and connection_lost(error):
            _drop(conn)
        await self._release(conn)


def _drop(conn: Any) -> None:
    """Close a lost connection rather than give it back to the pool as it is (one asyncpg
    already took back when it saw the connection close needs nothing more)."""
    with contextlib.suppress(asyncpg.InterfaceError):
        conn.terminate()


# What the director and the hot-path statements take: a session, or a pooled unit.
Unit = AsyncSession | Work


@contextlib.asynccontextmanager
async def reading(unit: Unit) -> AsyncIterator[AsyncSession]:
    """An ORM session to read with (a cache filling on a miss): the unit itself when it is a
    session; beside a `Work`, a short session of its own (committed data; nothing written)."""
    if isinstance(unit, AsyncSession):
        yield unit
        return
    async with unit.sessions() as session:
        try:
            yield session
        except BaseException as error:
            await lost(session, error)
            raise


@contextlib.asynccontextmanager
async def savepoint(unit: Unit) -> AsyncIterator[None]:
    """A savepoint in the unit's transaction: an error in the block undoes the block alone."""
    if isinstance(unit, AsyncSession):
        async with unit.begin_nested():
            yield
        return
    async with unit.savepoint():
        yield


async def read_with(unit: Unit, read: Callable[[AsyncSession], Awaitable[T]]) -> T:
    """`read` run with an ORM session (`reading`): what a cache calls on a miss."""
    async with reading(unit) as session:
        return await read(session)


async def lost(session: AsyncSession, error: BaseException) -> None:
    """After `error` in a unit of work: when it says the connection is gone, the session's
    connections are invalidated (closed, not given back to the pool)."""
    if connection_lost(error):
        await session.invalidate()


def alone(unit: Unit) -> TypeGuard[Work]:
    """Whether no transaction is open on the unit (a `Work`): its next statement, run with
    `driver_connection(unit, begin=False)`, is a transaction of its own."""
    return isinstance(unit, Work) and not unit.in_transaction


def committed_alone(unit: Unit) -> None:
    """After a write that ran with no transaction open on `unit` (it committed on its own):
    what it left for after the commit (wake-ups, metrics, end listeners) goes out now, so an
    error later in the unit cannot drop it with a rollback."""
    if alone(unit):
        committed(unit.info)


async def driver_connection(session: Unit, *, begin: bool = True) -> Any:
    """The unit's asyncpg connection. With `begin` (the default) a transaction is open on
    it, the one the unit commits; without, a statement run before any other autocommits
    on its own (a single statement is its own transaction: no BEGIN/COMMIT round trips)."""
    if isinstance(session, Work):
        return await session.connection(begin=begin)
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
