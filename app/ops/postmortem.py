"""Postmortem: processes that ended in error or with warnings, each with a record (level,
status new/opened/closed, comment) that operators work through."""

from __future__ import annotations

import uuid
from collections import defaultdict
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.core.exceptions import BadRequest, Conflict, NotFound
from app.core.pagination import decode_cursor, encode_cursor
from app.models import LogEntry, Process
from app.models.enums import LogLevel, PostmortemStatus
from app.ops import repository
from app.ops.schemas import PostmortemEntry, PostmortemPage, PostmortemUpdate
from app.processes import repository as processes_repo
from app.processes.schemas import LogRead, ProcessRead
from app.processes.service import to_read


def _position(cursor: str) -> tuple[datetime, uuid.UUID]:
    created, ident = decode_cursor(cursor, 2)
    try:
        return datetime.fromisoformat(str(created)), uuid.UUID(str(ident))
    except ValueError:
        raise BadRequest("cursor is not one this server handed out") from None


def log_read(entry: LogEntry) -> LogRead:
    return LogRead(
        id=entry.id,
        time=entry.time,
        level=entry.level,
        text=entry.text,
        node_id=entry.node_id,
        actor_id=entry.actor_id,
        envelope_id=entry.envelope_id,
        request_id=entry.request_id,
    )


async def list_postmortems(
    session: AsyncSession,
    conds: list[sa.ColumnElement[bool]],
    *,
    levels: list[LogLevel],
    statuses: list[PostmortemStatus],
    cursor: str | None,
    limit: int,
    logs: int,
) -> PostmortemPage:
    if levels:
        conds = [*conds, Process.pm_level.in_(levels)]
    if statuses:
        conds = [*conds, Process.pm_status.in_(statuses)]
    before = _position(cursor) if cursor else None
    rows = await repository.postmortem_page(session, conds, before, limit + 1)
    more = len(rows) > limit
    rows = rows[:limit]
    by_process: dict[uuid.UUID, list[LogEntry]] = defaultdict(list)
    if logs and rows:
        entries = await repository.first_logs(session, [r.process.id for r in rows], logs + 1)
        for entry in entries:
            if entry.process_id is not None:
                by_process[entry.process_id].append(entry)
    items = [
        PostmortemEntry(
            process=to_read(row),
            logs=[log_read(e) for e in by_process[row.process.id][:logs]],
            logs_truncated=len(by_process[row.process.id]) > logs,
        )
        for row in rows
    ]
    next_cursor = None
    if more and rows:
        last = rows[-1].process
        next_cursor = encode_cursor([last.created_at.isoformat(), str(last.id)])
    return PostmortemPage(items=items, next_cursor=next_cursor)


async def update_postmortem(
    session: AsyncSession, process_id: uuid.UUID, data: PostmortemUpdate
) -> ProcessRead:
    process = (
        await session.execute(
            sa.select(Process)
            .where(Process.id == process_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()
    if process is None:
        raise NotFound(f"no process {process_id}")
    if process.pm_level is None:
        raise Conflict(
            f"process {process_id} has no postmortem record: it neither failed nor warned"
        )
    if data.status is not None:
        process.pm_status = data.status
    if data.comment is not None:
        process.pm_comment = data.comment or None
    process.pm_changed_at = datetime.now(UTC)
    await session.flush()
    row = await processes_repo.get_process(session, process_id)
    assert row is not None
    return to_read(row)
