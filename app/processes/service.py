"""Process reads, access rules and the emitter's acknowledgement."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.principal import Principal
from app.actors.access import find_actor
from app.bus.routing import pipeline_graph
from app.config import Settings
from app.core.exceptions import BadRequest, Conflict, NotFound
from app.core.pagination import decode_cursor, encode_cursor
from app.models import Actor, Pipeline, Process
from app.processes import repository
from app.processes.schemas import NodeRead, Postmortem, ProcessDetail, ProcessPage, ProcessRead
from app.requests.schemas import RequestSummary


def to_read(row: repository.ProcessRow) -> ProcessRead:
    p = row.process
    pm = None
    if p.pm_level is not None and p.pm_status is not None:
        pm = Postmortem(
            level=p.pm_level, status=p.pm_status, comment=p.pm_comment, changed_at=p.pm_changed_at
        )
    return ProcessRead(
        id=p.id,
        status=p.status,
        status_reason=p.status_reason,
        pipeline_id=p.pipeline_id,
        pipeline_name=row.pipeline_name,
        pipeline_version=row.pipeline_version,
        trigger_envelope_id=p.trigger_envelope_id,
        emitter_id=p.emitter_id,
        emitter_name=row.emitter_name,
        group_id=p.group_id,
        replay_of=p.replay_of,
        created_at=p.created_at,
        status_changed_at=p.status_changed_at,
        nodes_state_changed_at=p.nodes_state_changed_at,
        ended_at=p.ended_at,
        result_acked=p.result_acked,
        postmortem=pm,
    )


async def list_page(
    session: AsyncSession,
    principal: Principal,
    settings: Settings,
    flt: repository.ProcessFilter,
    *,
    emitter: str | None = None,
    cursor: str | None = None,
    limit: int | None = None,
) -> ProcessPage:
    """A page of processes, newest first: the admin's of every process, an account's of
    those its emitters started. `emitter` is an actor id or name."""
    flt.account_id = None if principal.admin else principal.account_id
    if emitter is not None:
        actor = await find_actor(session, emitter)
        flt.emitter_ids = [actor.id] if actor is not None else []
    after = None
    if cursor:
        created, ident = decode_cursor(cursor, 2)
        try:
            after = (datetime.fromisoformat(created), uuid.UUID(ident))
        except (TypeError, ValueError):
            raise BadRequest("cursor is not one this server handed out") from None
    size = min(limit or settings.page_size_default, settings.page_size_max)
    rows = await repository.list_processes(session, flt, size + 1, after)
    more = len(rows) > size
    rows = rows[:size]
    next_cursor = None
    if more:
        last = rows[-1].process
        next_cursor = encode_cursor([last.created_at.isoformat(), str(last.id)])
    return ProcessPage(items=[to_read(r) for r in rows], next_cursor=next_cursor)


async def visible_process(
    session: AsyncSession, principal: Principal, process_id: uuid.UUID
) -> repository.ProcessRow:
    """The admin sees every process; an account those its emitters started (others: 404)."""
    row = await repository.get_process(session, process_id)
    if row is None:
        raise NotFound(f"no process {process_id}")
    if principal.admin:
        return row
    owner = None
    if row.process.emitter_id is not None:
        owner = await session.scalar(
            sa.select(Actor.account_id).where(Actor.id == row.process.emitter_id)
        )
    if owner != principal.account_id:
        raise NotFound(f"no process {process_id}")
    return row


async def detail(session: AsyncSession, row: repository.ProcessRow) -> ProcessDetail:
    process = row.process
    types: dict[str, str] = {}
    if process.pipeline_id is not None:
        pipeline = await session.get(Pipeline, process.pipeline_id)
        if pipeline is not None and pipeline.graph:
            types = {n.id: n.type for n in pipeline_graph(pipeline).nodes.values()}
    requests: dict[str, list[RequestSummary]] = {}
    for request, actor_name in await repository.process_requests(session, process.id):
        requests.setdefault(request.node_id, []).append(
            RequestSummary(
                id=request.id,
                node_id=request.node_id,
                actor_id=request.actor_id,
                actor_name=actor_name,
                channel=request.channel,
                status=request.status,
                attempts=request.attempts,
                max_attempts=request.max_attempts,
                created_at=request.created_at,
                ended_at=request.ended_at,
                last_error=request.last_error,
                lease_expires_at=request.lease_expires_at,
                leased_at=request.leased_at,
            )
        )
    nodes = [
        NodeRead(
            node_id=n.node_id,
            type=types.get(n.node_id),
            status=n.status,
            inputs=n.inputs,
            outputs=n.outputs,
            started_at=n.started_at,
            ended_at=n.ended_at,
            requests=requests.get(n.node_id, []),
        )
        for n in await repository.process_nodes(session, process.id)
    ]
    order = list(types)
    nodes.sort(key=lambda n: order.index(n.node_id) if n.node_id in order else len(order))
    return ProcessDetail(**to_read(row).model_dump(), nodes=nodes)


async def ack_result(session: AsyncSession, process: Process) -> None:
    if not process.status.final:
        raise Conflict(
            f"process {process.id} is {process.status.value}; only an ended process is acked"
        )
    process.result_acked = True
    process.status_changed_at = process.status_changed_at or datetime.now(UTC)
    await session.flush()
