from __future__ import annotations

import time
import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query

from app.bus.notify import process_key
from app.core.deps import Caller, Session, SettingsDep, State
from app.core.errors import Problem
from app.core.pagination import decode_cursor, encode_cursor
from app.models.enums import ProcessStatus
from app.processes import repository, service
from app.processes.schemas import LogPage, LogRead, ProcessDetail, ProcessPage, ProcessRead

router = APIRouter(prefix="/api/v1", tags=["processes"])


@router.get(
    "/processes",
    summary="List processes, newest first, with filters and a cursor",
    response_model=ProcessPage,
    responses=Problem.of(400, 401, 403),
)
async def list_processes(
    session: Session,
    caller: Caller,
    settings: SettingsDep,
    status: Annotated[list[ProcessStatus] | None, Query()] = None,
    pipeline_id: uuid.UUID | None = None,
    emitter: Annotated[str | None, Query(description="emitter actor id or name")] = None,
    envelope_id: uuid.UUID | None = None,
    group_id: uuid.UUID | None = None,
    replay_of: uuid.UUID | None = None,
    result_acked: bool | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    cursor: str | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> ProcessPage:
    flt = repository.ProcessFilter(
        statuses=status or [],
        pipeline_id=pipeline_id,
        envelope_id=envelope_id,
        group_id=group_id,
        replay_of=replay_of,
        result_acked=result_acked,
        created_after=created_after,
        created_before=created_before,
    )
    return await service.list_page(
        session, caller, settings, flt, emitter=emitter, cursor=cursor, limit=limit
    )


@router.get(
    "/processes/{process_id}",
    summary="A process with its nodes; ?wait=N waits until it ends",
    response_model=ProcessDetail,
    responses=Problem.of(401, 403, 404, 422),
)
async def get_process(
    process_id: uuid.UUID,
    session: Session,
    caller: Caller,
    settings: SettingsDep,
    state: State,
    wait: Annotated[float, Query(ge=0, description="seconds to wait for a final status")] = 0,
) -> ProcessDetail:
    deadline = time.monotonic() + min(wait, settings.long_poll_max)
    while True:
        row = await service.visible_process(session, caller, process_id)
        remaining = deadline - time.monotonic()
        if row.process.status.final or remaining <= 0:
            return await service.detail(session, row)
        await session.commit()
        await state.notifier.wait(process_key(process_id), min(remaining, 1.0))


@router.get(
    "/processes/{process_id}/logs",
    summary="The log of a process, oldest first",
    response_model=LogPage,
    responses=Problem.of(400, 401, 403, 404),
)
async def get_logs(
    process_id: uuid.UUID,
    session: Session,
    caller: Caller,
    settings: SettingsDep,
    cursor: str | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> LogPage:
    await service.visible_process(session, caller, process_id)
    after = int(decode_cursor(cursor, 1)[0]) if cursor else 0
    size = min(limit or settings.page_size_max, settings.page_size_max)
    entries = await repository.process_logs(session, process_id, after, size + 1)
    more = len(entries) > size
    entries = entries[:size]
    return LogPage(
        items=[
            LogRead(
                id=e.id,
                time=e.time,
                level=e.level,
                text=e.text,
                node_id=e.node_id,
                actor_id=e.actor_id,
                envelope_id=e.envelope_id,
                request_id=e.request_id,
            )
            for e in entries
        ],
        next_cursor=encode_cursor([entries[-1].id]) if more else None,
    )


@router.post(
    "/processes/{process_id}/ack",
    summary="Acknowledge the result of an ended process (sets result_acked)",
    response_model=ProcessRead,
    responses=Problem.of(401, 403, 404, 409),
)
async def ack(process_id: uuid.UUID, session: Session, caller: Caller) -> ProcessRead:
    row = await service.visible_process(session, caller, process_id)
    await service.ack_result(session, row.process)
    return service.to_read(row)
