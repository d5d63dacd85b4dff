"""Process control for the operator: one process, or every process a selection matches,
walked newest first in batches of one transaction each (a replay started meanwhile is newer
than the walk, so it is never picked up by the walk itself)."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Literal

from sqlalchemy.ext.asyncio import AsyncSession

from app.bus import control
from app.bus.director import Director, ProcessRow
from app.core.exceptions import Conflict, XbusError
from app.db import Database
from app.ops import repository, selection
from app.ops.progress import Step
from app.ops.schemas import BatchError, BatchResult, ProcessBatch, ReplayBatch
from app.processes import repository as processes_repo
from app.processes.schemas import ProcessRead
from app.processes.service import to_read

Action = Literal["pause", "resume", "cancel", "replay"]
ERRORS_SHOWN = 20


async def apply(
    session: AsyncSession,
    director: Director,
    action: Action,
    process_id: uuid.UUID,
    *,
    operator: str | None,
    pipeline: control.ReplayPipeline = control.ReplayPipeline.SAME,
) -> ProcessRow:
    """One process; for a replay, the new process."""
    if action == "pause":
        return await control.pause(session, director, process_id, operator=operator)
    if action == "resume":
        return await control.resume(session, director, process_id, operator=operator)
    if action == "cancel":
        return await control.cancel(session, director, process_id, operator=operator)
    return await control.replay(session, director, process_id, pipeline=pipeline, operator=operator)


async def apply_and_read(
    session: AsyncSession,
    director: Director,
    action: Action,
    process_id: uuid.UUID,
    *,
    operator: str | None,
    pipeline: control.ReplayPipeline = control.ReplayPipeline.SAME,
) -> ProcessRead:
    process = await apply(
        session, director, action, process_id, operator=operator, pipeline=pipeline
    )
    row = await processes_repo.get_process(session, process.id)
    assert row is not None
    return to_read(row)


async def run_batch(
    db: Database,
    director: Director,
    action: Action,
    body: ProcessBatch | ReplayBatch,
    *,
    batch_size: int,
    operator: str | None,
) -> AsyncIterator[Step[BatchResult]]:
    pipeline = body.pipeline if isinstance(body, ReplayBatch) else control.ReplayPipeline.SAME
    async with db.session() as session:
        conds = await selection.conditions(session, body)
        total = await repository.count_processes(session, conds)
    result = BatchResult(
        action=action,
        dry_run=body.dry_run,
        matched=total,
        changed=0,
        skipped=0,
        failed=0,
        errors=[],
    )
    yield Step("start", total, 0)
    done = 0
    position = None
    while not body.dry_run:
        async with db.session() as session:
            batch = await repository.process_positions(session, conds, position, batch_size)
            for _, process_id in batch:
                try:
                    async with session.begin_nested():
                        await apply(
                            session,
                            director,
                            action,
                            process_id,
                            operator=operator,
                            pipeline=pipeline,
                        )
                    result.changed += 1
                except Conflict as exc:
                    if "process_status" in exc.extra:
                        result.skipped += 1  # a status the action does not apply to
                    else:
                        _failed(result, process_id, exc)
                except XbusError as exc:
                    _failed(result, process_id, exc)
        if not batch:
            break
        position = batch[-1]
        done += len(batch)
        yield Step("progress", max(total, done), done)
    yield Step("end", max(total, done), done, result)


def _failed(result: BatchResult, process_id: uuid.UUID, exc: XbusError) -> None:
    result.failed += 1
    if len(result.errors) < ERRORS_SHOWN:
        result.errors.append(
            BatchError(process_id=process_id, status=exc.status, detail=exc.detail)
        )
