"""Purges: processes by selection or age, envelopes before a date or unreferenced, logs
before a date.

One connection streams the ids to delete (a server-side cursor: constant memory however many
rows match) into a bounded queue; a few workers, as many as half the connection pool allows,
each delete one batch per transaction, in parallel. What refers to purged rows never blocks
them: dependent rows go with them (ON DELETE CASCADE), references from elsewhere are SET NULL
or plain ids. Each delete checks its conditions again, so a row that changed meanwhile (an
envelope a new replay needs) stays."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, Literal

import sqlalchemy as sa
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from app.config import Settings
from app.db import Database
from app.ops import repository, selection
from app.ops.progress import Step
from app.ops.schemas import EnvelopePurge, LogPurge, ProcessPurge, PurgeResult

log = logging.getLogger(__name__)

Kind = Literal["processes", "envelopes", "logs"]
Delete = Callable[[AsyncSession, list[Any]], Awaitable[int]]

_RETRIES = 5
# SQLSTATEs worth retrying: deadlock (parallel batches cascading into each other's rows),
# serialization failure.
_RETRY_CODES = ("40P01", "40001")


def jobs_for(settings: Settings) -> int:
    """Parallel delete transactions: half the pool (the rest serves the API), one at least."""
    return max(1, min(settings.purge_jobs_max, settings.db_pool_size // 2))


async def purge_processes(
    db: Database, settings: Settings, body: ProcessPurge
) -> AsyncIterator[Step[PurgeResult]]:
    async with db.session() as session:
        conds = await selection.conditions(session, body, older_than=body.older_than)
    ids = repository.ended_process_ids(conds)
    async for step in _purge(
        db, settings, "processes", ids, repository.delete_processes, body.dry_run
    ):
        yield step


async def purge_envelopes(
    db: Database, settings: Settings, body: EnvelopePurge
) -> AsyncIterator[Step[PurgeResult]]:
    conds = repository.envelope_purge_conditions(body.before, body.unreferenced)

    async def delete(session: AsyncSession, ids: list[Any]) -> int:
        return await repository.delete_envelopes(session, ids, conds)

    async for step in _purge(
        db, settings, "envelopes", repository.envelope_ids(conds), delete, body.dry_run
    ):
        yield step


async def purge_logs(
    db: Database, settings: Settings, body: LogPurge
) -> AsyncIterator[Step[PurgeResult]]:
    conds = repository.log_purge_conditions(body.before, body.level)

    async def delete(session: AsyncSession, ids: list[Any]) -> int:
        return await repository.delete_logs(session, ids, conds)

    async for step in _purge(db, settings, "logs", repository.log_ids(conds), delete, body.dry_run):
        yield step


async def _purge(
    db: Database,
    settings: Settings,
    kind: Kind,
    ids: sa.Select[Any],
    delete: Delete,
    dry_run: bool,
) -> AsyncIterator[Step[PurgeResult]]:
    started = time.monotonic()
    jobs = jobs_for(settings)
    batch = settings.purge_batch_size
    async with db.session() as session:
        total = int(await session.scalar(repository.count_of(ids)) or 0)
    yield Step("start", total, 0)
    deleted = 0
    if not dry_run and total:
        async for count in _run(db, ids, delete, batch=batch, jobs=jobs):
            deleted += count
            yield Step("progress", max(total, deleted), deleted)
    result = PurgeResult(
        kind=kind,
        dry_run=dry_run,
        matched=total,
        deleted=deleted,
        jobs=jobs,
        seconds=round(time.monotonic() - started, 3),
    )
    log.info("purged %d %s in %.1f s (%d jobs)", deleted, kind, result.seconds, jobs)
    yield Step("end", max(total, deleted), deleted, result)


async def _run(
    db: Database, ids: sa.Select[Any], delete: Delete, *, batch: int, jobs: int
) -> AsyncIterator[int]:
    """Yields the count each batch deleted, as batches finish."""
    batches: asyncio.Queue[list[Any] | None] = asyncio.Queue(maxsize=jobs * 2)
    # Counts as batches finish, then None when all is done, or the exception that failed it.
    counts: asyncio.Queue[int | BaseException | None] = asyncio.Queue()

    async def produce() -> None:
        async with db.engine.connect() as conn:
            result = await conn.stream(ids.execution_options(yield_per=batch))
            async for rows in result.partitions(batch):
                await batches.put([row[0] for row in rows])
        for _ in range(jobs):
            await batches.put(None)

    async def work() -> None:
        while (chunk := await batches.get()) is not None:
            await counts.put(await _delete_batch(db, delete, chunk))

    tasks = [asyncio.create_task(produce(), name="purge-ids")]
    tasks += [asyncio.create_task(work(), name=f"purge-{n}") for n in range(jobs)]

    async def run_all() -> None:
        try:
            await asyncio.gather(*tasks)
        except Exception as exc:
            await counts.put(exc)
        else:
            await counts.put(None)

    runner = asyncio.create_task(run_all(), name="purge")
    try:
        while (item := await counts.get()) is not None:
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        # On a failure or a client gone, nothing goes on deleting in the background.
        for task in [runner, *tasks]:
            task.cancel()
        for task in [runner, *tasks]:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task


async def _delete_batch(db: Database, delete: Delete, ids: Sequence[Any]) -> int:
    for attempt in range(1, _RETRIES + 1):
        try:
            async with db.session() as session:
                return await delete(session, list(ids))
        except DBAPIError as exc:
            code = getattr(exc.orig, "sqlstate", None) or getattr(
                getattr(exc.orig, "__cause__", None), "sqlstate", None
            )
            if code not in _RETRY_CODES or attempt == _RETRIES:
                raise
            await asyncio.sleep(0.05 * attempt)
    return 0  # not reached
