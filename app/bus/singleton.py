"""Duties that must run once across replicas (cancel stalled emissions, mark unresponsive
actors, refresh storage statistics) take a PostgreSQL advisory lock for each pass: the replica
that gets it does the work, the others skip that pass. Nothing else is shared between
replicas, and a replica that dies mid-pass loses its connection and with it the lock."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

log = logging.getLogger(__name__)


def lock_key(name: str) -> int:
    """A stable signed 64-bit advisory lock key for a duty name."""
    digest = hashlib.sha256(f"xbus.singleton:{name}".encode()).digest()
    return int.from_bytes(digest[:8], "big", signed=True)


@contextlib.asynccontextmanager
async def once_across_replicas(engine: AsyncEngine, name: str) -> AsyncIterator[bool]:
    """Yields True when this replica holds the lock for `name` (do the work), False when
    another replica does. The lock lives on a connection of its own, held for the block."""
    key = lock_key(name)
    async with engine.connect() as conn:
        acquired = bool(await conn.scalar(sa.select(sa.func.pg_try_advisory_lock(key))))
        # Session-level lock: it outlives this transaction; end the transaction so the
        # connection holds no snapshot while the work runs elsewhere.
        await conn.commit()
        try:
            yield acquired
        finally:
            if acquired:
                try:
                    await asyncio.shield(_unlock(conn, key))
                except BaseException:
                    # A connection we cannot unlock on must not go back to the pool still
                    # holding the lock: closing it releases the lock.
                    await conn.invalidate()
                    raise


async def _unlock(conn: AsyncConnection, key: int) -> None:
    await conn.scalar(sa.select(sa.func.pg_advisory_unlock(key)))
    await conn.commit()


async def run_periodically(
    engine: AsyncEngine,
    name: str,
    interval: float,
    work: Callable[[], Awaitable[object]],
    *,
    first_delay: float | None = None,
    counted: Callable[[str], object] | None = None,
) -> None:
    """Run `work` every `interval` seconds on whichever replica gets the lock; a failed pass
    is logged and retried at the next interval. `counted` is told how each pass ended:
    "done", "skipped" (another replica held the lock) or "failed"."""
    await asyncio.sleep(interval if first_delay is None else first_delay)
    while True:
        try:
            async with once_across_replicas(engine, name) as leader:
                if leader:
                    await work()
            outcome = "done" if leader else "skipped"
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("duty %s failed; retrying in %g s", name, interval)
            outcome = "failed"
        if counted is not None:
            counted(outcome)
        await asyncio.sleep(interval)
