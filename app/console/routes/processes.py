"""Processes: the list with the filters of `xbusctl ps` and cursor pages; a process with its
graph coloured by node state, its timeline, log, postmortem and envelopes, live until it
ends; pause / resume / cancel / replay (admin), ack; an envelope's events and items."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.console import queries
from app.console.views import graph_elements, item_view, timeline
from app.console.web import PREFIX, FormUser, User, back_to, parse_uuid, render
from app.core.deps import DirectorDep, Session, SettingsDep, require_admin
from app.core.exceptions import BadRequest, NotFound
from app.envelopes import repository as envelopes_repo
from app.envelopes.access import readable_envelope
from app.models import Pipeline
from app.models.enums import ProcessStatus
from app.ops import control
from app.pipelines import service as pipelines_service
from app.pipelines.graphs import pipeline_graph
from app.processes import repository, service
from app.processes.repository import ProcessFilter
from app.processes.schemas import ProcessDetail

router = APIRouter(prefix=PREFIX, include_in_schema=False)

LOG_PAGE = 200
ENVELOPE_PAGE = 10
ITEM_PAGE = 20


def _time(value: str | None, name: str) -> datetime | None:
    """A `datetime-local` field (UTC) or an RFC 3339 time."""
    if not value:
        return None
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name}: not a date and time: {value!r}") from None
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def _id(value: str | None, name: str) -> uuid.UUID | None:
    if not value:
        return None
    ident = parse_uuid(value.strip())
    if ident is None:
        raise BadRequest(f"{name}: not an id: {value!r}")
    return ident


@router.get("/processes")
async def processes_page(
    request: Request, session: Session, settings: SettingsDep, user: User
) -> Response:
    q = request.query_params
    known = {s.value for s in ProcessStatus}
    statuses = [ProcessStatus(s) for s in q.getlist("status") if s in known]
    flt = ProcessFilter(
        statuses=statuses,
        pipeline_id=_id(q.get("pipeline"), "pipeline"),
        envelope_id=_id(q.get("envelope"), "envelope"),
        created_after=_time(q.get("after"), "after"),
        created_before=_time(q.get("before"), "before"),
    )
    page = await service.list_page(
        session,
        user.principal,
        settings,
        flt,
        emitter=q.get("emitter") or None,
        cursor=q.get("cursor") or None,
    )
    pipelines: Sequence[Any] = []
    if user.admin:
        pipelines, _ = await pipelines_service.list_pipelines(session, limit=settings.page_size_max)
    filters = {k: v for k, v in q.multi_items() if k != "cursor" and v}
    return render(
        request,
        "processes.html",
        {
            "page": page,
            "q": q,
            "statuses": [s.value for s in ProcessStatus],
            "selected": [s.value for s in statuses],
            "pipelines": pipelines,
            "filters": filters,
        },
        user=user,
    )


async def _live(
    session: Session, settings: SettingsDep, user: User, process_id: uuid.UUID
) -> dict[str, Any]:
    row = await service.visible_process(session, user.principal, process_id)
    detail = await service.detail(session, row)
    now = datetime.now(UTC)
    span = (detail.created_at, detail.ended_at or now)
    request_ids = [r.id for n in detail.nodes for r in n.requests]
    attempts = await queries.delivery_attempts(session, request_ids)
    logs = await repository.process_logs(session, process_id, 0, LOG_PAGE + 1)
    return {
        "process": detail,
        "states": {n.node_id: n.status.value for n in detail.nodes},
        "bars": timeline(span, detail.nodes, attempts, settings.request_lease),
        "logs": logs[:LOG_PAGE],
        "logs_more": len(logs) > LOG_PAGE,
        "final": detail.status.final,
        "row": row,
    }


def _graph(detail: ProcessDetail, pipeline: Any, admin: bool) -> list[dict[str, Any]]:
    graph = pipeline_graph(pipeline) if pipeline is not None else None
    if graph is None:
        return []
    states = {n.node_id: n.status.value for n in detail.nodes}
    # Another account's actors on the pipeline are not the caller's to read (the API shows
    # them to the admin only): an account sees its process's nodes and edges.
    return graph_elements(graph, states=states, show_actors=admin)


@router.get("/processes/{process_id}")
async def process_page(
    request: Request,
    process_id: uuid.UUID,
    session: Session,
    settings: SettingsDep,
    user: User,
    envelopes_from: int = 0,
) -> Response:
    live = await _live(session, settings, user, process_id)
    detail: ProcessDetail = live["process"]
    pipeline = None
    if detail.pipeline_id is not None:
        pipeline = await session.get(Pipeline, detail.pipeline_id)
    envelopes = await queries.process_envelopes(
        session, live["row"].process, offset=max(envelopes_from, 0), limit=ENVELOPE_PAGE + 1
    )
    shown = []
    for envelope in envelopes[:ENVELOPE_PAGE]:
        if not user.admin:
            try:
                await readable_envelope(session, user.principal, envelope.id)
            except NotFound:
                continue  # produced by another account's actor, not handed to this one
        shown.append(await _envelope_view(session, envelope, None, -1, 5))
    return render(
        request,
        "process.html",
        {
            **live,
            "elements": _graph(detail, pipeline, user.admin),
            "envelopes": shown,
            "envelopes_from": envelopes_from,
            "envelopes_more": len(envelopes) > ENVELOPE_PAGE,
            "envelope_page": ENVELOPE_PAGE,
        },
        user=user,
    )


@router.get("/processes/{process_id}/live")
async def process_live(
    request: Request, process_id: uuid.UUID, session: Session, settings: SettingsDep, user: User
) -> Response:
    live = await _live(session, settings, user, process_id)
    return render(request, "_process_live.html", live, user=user)


@router.get("/processes/{process_id}/log")
async def process_log(
    request: Request,
    process_id: uuid.UUID,
    session: Session,
    user: User,
    after: int = 0,
) -> Response:
    """The whole log of a process, LOG_PAGE lines at a time (keyset on the entry id)."""
    row = await service.visible_process(session, user.principal, process_id)
    logs = await repository.process_logs(session, process_id, max(after, 0), LOG_PAGE + 1)
    return render(
        request,
        "log.html",
        {
            "process": row.process,
            "logs": logs[:LOG_PAGE],
            "next": logs[LOG_PAGE - 1].id if len(logs) > LOG_PAGE else None,
        },
        user=user,
    )


@router.post("/processes/{process_id}/ack")
async def process_ack(process_id: uuid.UUID, session: Session, user: FormUser) -> Response:
    row = await service.visible_process(session, user.principal, process_id)
    await service.ack_result(session, row.process)
    return back_to(f"{PREFIX}/processes/{process_id}")


async def _control(
    action: control.Action,
    process_id: uuid.UUID,
    session: Session,
    director: DirectorDep,
    user: FormUser,
) -> Response:
    await require_admin(user.principal)
    process = await control.apply(
        session, director, action, process_id, operator=user.principal.name
    )
    return back_to(f"{PREFIX}/processes/{process.id}")


@router.post("/processes/{process_id}/pause")
async def process_pause(
    process_id: uuid.UUID, session: Session, director: DirectorDep, user: FormUser
) -> Response:
    return await _control("pause", process_id, session, director, user)


@router.post("/processes/{process_id}/resume")
async def process_resume(
    process_id: uuid.UUID, session: Session, director: DirectorDep, user: FormUser
) -> Response:
    return await _control("resume", process_id, session, director, user)


@router.post("/processes/{process_id}/cancel")
async def process_cancel(
    process_id: uuid.UUID, session: Session, director: DirectorDep, user: FormUser
) -> Response:
    return await _control("cancel", process_id, session, director, user)


@router.post("/processes/{process_id}/replay")
async def process_replay(
    process_id: uuid.UUID, session: Session, director: DirectorDep, user: FormUser
) -> Response:
    """The new process's page follows."""
    return await _control("replay", process_id, session, director, user)


async def _envelope_view(
    session: Session, envelope: Any, event_id: uuid.UUID | None, after: int, size: int
) -> dict[str, Any]:
    events = await envelopes_repo.list_events(session, envelope.id)
    views: list[dict[str, Any]] = []
    for event in events:
        if event_id is not None and event.id != event_id:
            views.append({"event": event, "items": None, "next": None})
            continue
        rows = await envelopes_repo.item_page(session, event.id, after, size + 1)
        items = [item_view(p, d, event.encoding) for p, d in rows[:size]]
        following = items[-1].position if len(rows) > size and items else None
        views.append({"event": event, "items": items, "next": following})
    return {"envelope": envelope, "events": views}


@router.get("/envelopes/{envelope_id}")
async def envelope_page(
    request: Request,
    envelope_id: str,
    session: Session,
    user: User,
    event: uuid.UUID | None = None,
    after: int = -1,
) -> Response:
    envelope = await readable_envelope(session, user.principal, envelope_id)
    view = await _envelope_view(session, envelope, event, after, ITEM_PAGE)
    return render(request, "envelope.html", view, user=user)
