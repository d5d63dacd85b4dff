"""From a process selection (the list filters and ids) to SQL conditions."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.actors.access import find_actor
from app.models import Process
from app.ops.schemas import ProcessSelection
from app.processes.repository import ProcessFilter


async def conditions(
    session: AsyncSession, selection: ProcessSelection, *, older_than: timedelta | None = None
) -> list[sa.ColumnElement[bool]]:
    created_before = selection.created_before
    if older_than is not None:
        cutoff = datetime.now(UTC) - older_than
        created_before = min(created_before, cutoff) if created_before else cutoff
    flt = ProcessFilter(
        statuses=list(selection.status or []),
        pipeline_id=selection.pipeline_id,
        envelope_id=selection.envelope_id,
        group_id=selection.group_id,
        replay_of=selection.replay_of,
        result_acked=selection.result_acked,
        created_after=selection.created_after,
        created_before=created_before,
    )
    flt.emitter_ids = await emitter_ids(session, selection)
    conds = flt.conditions()
    if selection.ids is not None:
        conds.append(Process.id.in_(selection.ids))
    return conds


async def emitter_ids(session: AsyncSession, selection: ProcessSelection) -> list[uuid.UUID] | None:
    """The emitter the selection names (by id or name), or None when it names none."""
    if selection.emitter is None:
        return None
    actor = await find_actor(session, selection.emitter)
    # An unknown emitter selects nothing (as the list does), it is not an error.
    return [actor.id] if actor is not None else []
