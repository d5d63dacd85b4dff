"""Process queries: filtered, keyset-paginated lists (newest first) and details."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Actor, ActorRequest, LogEntry, Pipeline, Process, ProcessNode
from app.models.enums import ProcessStatus


@dataclass
class ProcessFilter:
    statuses: list[ProcessStatus] = field(default_factory=list)
    pipeline_id: uuid.UUID | None = None
    emitter_ids: list[uuid.UUID] | None = None
    envelope_id: uuid.UUID | None = None
    group_id: uuid.UUID | None = None
    replay_of: uuid.UUID | None = None
    result_acked: bool | None = None
    created_after: datetime | None = None
    created_before: datetime | None = None
    account_id: uuid.UUID | None = None  # restrict to processes this account's emitters started

    def conditions(self) -> list[sa.ColumnElement[bool]]:
        conds: list[sa.ColumnElement[bool]] = []
        if self.statuses:
            conds.append(Process.status.in_(self.statuses))
        if self.pipeline_id is not None:
            conds.append(Process.pipeline_id == self.pipeline_id)
        if self.emitter_ids is not None:
            conds.append(Process.emitter_id.in_(self.emitter_ids))
        if self.envelope_id is not None:
            conds.append(Process.trigger_envelope_id == self.envelope_id)
        if self.group_id is not None:
            conds.append(Process.group_id == self.group_id)
        if self.replay_of is not None:
            conds.append(Process.replay_of == self.replay_of)
        if self.result_acked is not None:
            conds.append(Process.result_acked.is_(self.result_acked))
        if self.created_after is not None:
            conds.append(Process.created_at >= self.created_after)
        if self.created_before is not None:
            conds.append(Process.created_at < self.created_before)
        if self.account_id is not None:
            owned = sa.select(Actor.id).where(Actor.account_id == self.account_id)
            conds.append(Process.emitter_id.in_(owned))
        return conds


@dataclass(frozen=True, slots=True)
class ProcessRow:
    process: Process
    pipeline_name: str | None
    pipeline_version: str | None
    emitter_name: str | None


def _base() -> sa.Select[Process, str, str, str]:
    return (
        sa.select(Process, Pipeline.name, Pipeline.version, Actor.name)
        .outerjoin(Pipeline, Pipeline.id == Process.pipeline_id)
        .outerjoin(Actor, Actor.id == Process.emitter_id)
    )


async def list_processes(
    session: AsyncSession, flt: ProcessFilter, limit: int, after: tuple[datetime, uuid.UUID] | None
) -> list[ProcessRow]:
    query = _base().where(*flt.conditions())
    if after is not None:
        query = query.where(sa.tuple_(Process.created_at, Process.id) < sa.tuple_(*after))
    query = query.order_by(Process.created_at.desc(), Process.id.desc()).limit(limit)
    rows = await session.execute(query)
    return [ProcessRow(p, pn, pv, en) for p, pn, pv, en in rows]


async def get_process(session: AsyncSession, process_id: uuid.UUID) -> ProcessRow | None:
    row = (
        await session.execute(
            _base().where(Process.id == process_id).execution_options(populate_existing=True)
        )
    ).first()
    if row is None:
        return None
    p, pn, pv, en = row
    return ProcessRow(p, pn, pv, en)


async def process_nodes(session: AsyncSession, process_id: uuid.UUID) -> list[ProcessNode]:
    rows = await session.execute(
        sa.select(ProcessNode)
        .where(ProcessNode.process_id == process_id)
        .order_by(ProcessNode.created_at, ProcessNode.node_id)
        .execution_options(populate_existing=True)
    )
    return list(rows.scalars())


async def process_requests(
    session: AsyncSession, process_id: uuid.UUID
) -> list[tuple[ActorRequest, str | None]]:
    rows = await session.execute(
        sa.select(ActorRequest, Actor.name)
        .outerjoin(Actor, Actor.id == ActorRequest.actor_id)
        .where(ActorRequest.process_id == process_id)
        .order_by(ActorRequest.created_at)
        .execution_options(populate_existing=True)
    )
    return [(r, n) for r, n in rows]


async def process_logs(
    session: AsyncSession, process_id: uuid.UUID, after: int, limit: int
) -> list[LogEntry]:
    rows = await session.execute(
        sa.select(LogEntry)
        .where(LogEntry.process_id == process_id, LogEntry.id > after)
        .order_by(LogEntry.id)
        .limit(limit)
    )
    return list(rows.scalars())
