"""Operating the bus (admin only): process control, export, purges, postmortem, summaries
and storage statistics."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime
from typing import Annotated, Any

from fastapi import APIRouter, Body, Query, Request
from fastapi.responses import StreamingResponse

from app.core.deps import Admin, DirectorDep, Session, SettingsDep, State
from app.core.errors import Problem
from app.models.enums import LogLevel, PostmortemStatus, ProcessStatus
from app.ops import control, export, postmortem, purge, selection, stats
from app.ops.schemas import (
    BatchResult,
    EnvelopePurge,
    ExportRequest,
    LogPurge,
    PostmortemPage,
    PostmortemUpdate,
    ProcessBatch,
    ProcessPurge,
    ProcessSelection,
    ProcessSummary,
    PurgeResult,
    ReplayBatch,
    ReplayOptions,
    StorageStats,
)
from app.ops.streaming import GZIP, NDJSON, accepts_gzip, answer, guarded, gzipped
from app.processes.schemas import ProcessRead

router = APIRouter(prefix="/api/v1")

_PROGRESS: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The result; with `Accept: application/x-ndjson`, one JSON line per "
        'step instead: `{"event": "start"|"progress"|"end", "total", "done", "result"?}` '
        '(a failure after the start is a last `{"event": "error", "status", "detail"}` line).',
        "content": {NDJSON: {"schema": {"type": "string"}}},
    }
}


# ---------------------------------------------------------------------------- control
@router.post(
    "/processes/{process_id}/pause",
    summary="Pause a running process: nothing more of it is dispatched until it resumes",
    tags=["processes"],
    response_model=ProcessRead,
    responses=Problem.of(401, 403, 404, 409),
)
async def pause_process(
    process_id: uuid.UUID, session: Session, admin: Admin, director: DirectorDep
) -> ProcessRead:
    return await control.apply_and_read(session, director, "pause", process_id, operator=admin.name)


@router.post(
    "/processes/{process_id}/resume",
    summary="Resume a paused process: its pending requests go out again",
    tags=["processes"],
    response_model=ProcessRead,
    responses=Problem.of(401, 403, 404, 409),
)
async def resume_process(
    process_id: uuid.UUID, session: Session, admin: Admin, director: DirectorDep
) -> ProcessRead:
    return await control.apply_and_read(
        session, director, "resume", process_id, operator=admin.name
    )


@router.post(
    "/processes/{process_id}/cancel",
    summary="Cancel a process: it ends in error (reason `canceled`), open requests withdrawn",
    tags=["processes"],
    response_model=ProcessRead,
    responses=Problem.of(401, 403, 404, 409),
)
async def cancel_process(
    process_id: uuid.UUID, session: Session, admin: Admin, director: DirectorDep
) -> ProcessRead:
    return await control.apply_and_read(
        session, director, "cancel", process_id, operator=admin.name
    )


@router.post(
    "/processes/{process_id}/replay",
    summary="Replay an ended process: a new process on the same trigger envelope",
    tags=["processes"],
    status_code=201,
    response_model=ProcessRead,
    responses=Problem.of(401, 403, 404, 409, 422),
)
async def replay_process(
    process_id: uuid.UUID,
    session: Session,
    admin: Admin,
    director: DirectorDep,
    body: Annotated[ReplayOptions | None, Body()] = None,
) -> ProcessRead:
    options = body or ReplayOptions()
    return await control.apply_and_read(
        session, director, "replay", process_id, operator=admin.name, pipeline=options.pipeline
    )


async def _batch(
    request: Request,
    state: State,
    admin: Admin,
    action: control.Action,
    body: ProcessBatch | ReplayBatch,
) -> Any:
    steps = control.run_batch(
        state.db,
        state.director,
        action,
        body,
        batch_size=state.settings.ops_batch_size,
        operator=admin.name,
    )
    return await answer(request, steps)


_BATCH_DOC = (
    "The selection takes the filters of `GET /api/v1/processes` and/or `ids`; without any, "
    "`all: true` is required. Processes are handled newest first, a batch per transaction; "
    "those whose status does not allow the action are skipped and counted."
)


@router.post(
    "/processes/pause",
    summary="Pause every selected running process",
    description=_BATCH_DOC,
    tags=["processes"],
    response_model=BatchResult,
    responses={**_PROGRESS, **Problem.of(401, 403, 422)},
)
async def pause_processes(request: Request, body: ProcessBatch, state: State, admin: Admin) -> Any:
    return await _batch(request, state, admin, "pause", body)


@router.post(
    "/processes/resume",
    summary="Resume every selected paused process",
    description=_BATCH_DOC,
    tags=["processes"],
    response_model=BatchResult,
    responses={**_PROGRESS, **Problem.of(401, 403, 422)},
)
async def resume_processes(request: Request, body: ProcessBatch, state: State, admin: Admin) -> Any:
    return await _batch(request, state, admin, "resume", body)


@router.post(
    "/processes/cancel",
    summary="Cancel every selected running or paused process",
    description=_BATCH_DOC,
    tags=["processes"],
    response_model=BatchResult,
    responses={**_PROGRESS, **Problem.of(401, 403, 422)},
)
async def cancel_processes(request: Request, body: ProcessBatch, state: State, admin: Admin) -> Any:
    return await _batch(request, state, admin, "cancel", body)


@router.post(
    "/processes/replay",
    summary="Replay every selected ended process",
    description=_BATCH_DOC,
    tags=["processes"],
    response_model=BatchResult,
    responses={**_PROGRESS, **Problem.of(401, 403, 422)},
)
async def replay_processes(request: Request, body: ReplayBatch, state: State, admin: Admin) -> Any:
    return await _batch(request, state, admin, "replay", body)


# ---------------------------------------------------------------------------- export
@router.post(
    "/processes/export",
    summary="Export processes as a stream of NDJSON lines (optionally gzip)",
    description=str(ExportRequest.__doc__),
    tags=["operations"],
    response_model=None,
    responses={
        200: {
            "description": "NDJSON lines: `header` (with `total`), `envelope`, `process`, `end`",
            "content": {
                NDJSON: {"schema": {"type": "string"}},
                GZIP: {"schema": {"type": "string", "format": "binary"}},
            },
        },
        **Problem.of(401, 403, 422),
    },
)
async def export_processes(
    request: Request,
    body: ExportRequest,
    session: Session,
    state: State,
    settings: SettingsDep,
    _: Admin,
) -> StreamingResponse:
    chunks = guarded(await export.prepare(session, state.db, settings, body))
    if body.gzip:
        stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
        return StreamingResponse(
            gzipped(chunks),
            media_type=GZIP,
            headers={
                "Content-Disposition": f'attachment; filename="xbus-export-{stamp}.ndjson.gz"'
            },
        )
    if accepts_gzip(request):
        return StreamingResponse(
            gzipped(chunks),
            media_type=NDJSON,
            headers={"Content-Encoding": "gzip", "Vary": "Accept-Encoding"},
        )
    return StreamingResponse(chunks, media_type=NDJSON, headers={"Vary": "Accept-Encoding"})


# ---------------------------------------------------------------------------- purge
@router.post(
    "/processes/purge",
    summary="Delete ended processes by selection or age, with their logs and requests",
    description=str(ProcessPurge.__doc__),
    tags=["operations"],
    response_model=PurgeResult,
    responses={**_PROGRESS, **Problem.of(401, 403, 422)},
)
async def purge_processes(
    request: Request, body: ProcessPurge, state: State, settings: SettingsDep, _: Admin
) -> Any:
    return await answer(request, purge.purge_processes(state.db, settings, body))


@router.post(
    "/envelopes/purge",
    summary="Delete envelopes created before a date and/or no longer referenced",
    description=str(EnvelopePurge.__doc__),
    tags=["operations"],
    response_model=PurgeResult,
    responses={**_PROGRESS, **Problem.of(401, 403, 422)},
)
async def purge_envelopes(
    request: Request, body: EnvelopePurge, state: State, settings: SettingsDep, _: Admin
) -> Any:
    return await answer(request, purge.purge_envelopes(state.db, settings, body))


@router.post(
    "/logs/purge",
    summary="Delete log entries older than a date",
    tags=["operations"],
    response_model=PurgeResult,
    responses={**_PROGRESS, **Problem.of(401, 403, 422)},
)
async def purge_logs(
    request: Request, body: LogPurge, state: State, settings: SettingsDep, _: Admin
) -> Any:
    return await answer(request, purge.purge_logs(state.db, settings, body))


# ---------------------------------------------------------------------------- postmortem
def _query_selection(
    status: list[ProcessStatus] | None,
    pipeline_id: uuid.UUID | None,
    emitter: str | None,
    created_after: datetime | None,
    created_before: datetime | None,
) -> ProcessSelection:
    # Query values are typed by FastAPI already; an unknown emitter selects nothing.
    return ProcessSelection.model_construct(
        status=status,
        pipeline_id=pipeline_id,
        emitter=emitter,
        created_after=created_after,
        created_before=created_before,
        ids=None,
        envelope_id=None,
        group_id=None,
        replay_of=None,
        result_acked=None,
    )


@router.get(
    "/postmortems",
    summary="Processes that failed or warned, newest first, with their logs",
    tags=["postmortem"],
    response_model=PostmortemPage,
    responses=Problem.of(400, 401, 403, 422),
)
async def list_postmortems(
    session: Session,
    settings: SettingsDep,
    _: Admin,
    level: Annotated[list[LogLevel] | None, Query(description="Any of these levels.")] = None,
    status: Annotated[
        list[PostmortemStatus] | None, Query(description="Any of these postmortem statuses.")
    ] = None,
    pipeline_id: uuid.UUID | None = None,
    emitter: Annotated[str | None, Query(description="emitter actor id or name")] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    logs: Annotated[
        int, Query(ge=0, le=1000, description="Log entries per process, oldest first.")
    ] = 20,
    cursor: str | None = None,
    limit: Annotated[int | None, Query(ge=1)] = None,
) -> PostmortemPage:
    wanted = _query_selection(None, pipeline_id, emitter, created_after, created_before)
    conds = await selection.conditions(session, wanted)
    return await postmortem.list_postmortems(
        session,
        conds,
        levels=level or [],
        statuses=status or [],
        cursor=cursor,
        limit=min(limit or settings.page_size_default, settings.page_size_max),
        logs=logs,
    )


@router.patch(
    "/processes/{process_id}/postmortem",
    summary="Set the postmortem status and/or comment of a process",
    tags=["postmortem"],
    response_model=ProcessRead,
    responses=Problem.of(401, 403, 404, 409, 422),
)
async def update_postmortem(
    process_id: uuid.UUID, body: PostmortemUpdate, session: Session, _: Admin
) -> ProcessRead:
    return await postmortem.update_postmortem(session, process_id, body)


# ---------------------------------------------------------------------------- statistics
@router.get(
    "/stats",
    summary="Storage statistics: rows and bytes per kind of stored thing",
    tags=["stats"],
    response_model=StorageStats,
    responses=Problem.of(401, 403),
)
async def storage_stats(session: Session, settings: SettingsDep, _: Admin) -> StorageStats:
    return await stats.storage_stats(session, settings.stats_exact_max_rows)


@router.get(
    "/stats/processes",
    summary="Process counts by status, pipeline, emitter, acknowledgement and postmortem",
    description="Exact counts at the time of the call. Without `created_after` or "
    "`created_before` they are read from counts the bus keeps beside the processes: the cost "
    "does not grow with the number of processes stored. With a created range the processes "
    "in that range are counted one by one (through the index of their creation time): the "
    "cost grows with the processes in the range.",
    tags=["stats"],
    response_model=ProcessSummary,
    responses=Problem.of(401, 403, 422),
)
async def process_summary(
    session: Session,
    _: Admin,
    status: Annotated[list[ProcessStatus] | None, Query()] = None,
    pipeline_id: uuid.UUID | None = None,
    emitter: Annotated[str | None, Query(description="emitter actor id or name")] = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
) -> ProcessSummary:
    wanted = _query_selection(status, pipeline_id, emitter, created_after, created_before)
    return await stats.process_summary(session, wanted)
