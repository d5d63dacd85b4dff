"""The console's own reads: the overview's figures and chart, a process's timeline and
envelopes. Each is bounded: counts that could be large stop at `COUNT_CAP` (shown as
"10,000+"), series cover the last hour, lists have a limit; each walks an index (see
bench/console_list.py for the process list on a large history)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.principal import Principal
from app.models import Actor, ActorRequest, DeliveryAttempt, Envelope, Process
from app.models.enums import PostmortemStatus, ProcessStatus, RequestStatus
from app.processes.repository import ProcessFilter
from app.webhooks.settings import URL_KEY

COUNT_CAP = 10_000
CHART_MINUTES = 60


@dataclass
class Overview:
    processes: dict[str, int] = field(default_factory=dict)  # running, paused, error (capped)
    pending_requests: int = 0
    oldest_pending_at: datetime | None = None
    actors_online: int = 0
    actors_unresponsive: int = 0
    actors_total: int = 0
    webhooks_suspended: int = 0
    webhooks_disabled: int = 0
    webhooks_total: int = 0
    open_postmortems: int = 0
    cap: int = COUNT_CAP


def owned(principal: Principal) -> list[sa.ColumnElement[bool]]:
    """Processes the principal may see: the API's rule (ProcessFilter.account_id)."""
    return ProcessFilter(account_id=None if principal.admin else principal.account_id).conditions()


async def _capped(session: AsyncSession, query: sa.Select[Any]) -> int:
    sub = query.limit(COUNT_CAP + 1).subquery()
    return int(await session.scalar(sa.select(sa.func.count()).select_from(sub)) or 0)


async def overview(session: AsyncSession, principal: Principal) -> Overview:
    result = Overview()
    conds = owned(principal)
    for status in (ProcessStatus.RUNNING, ProcessStatus.PAUSED, ProcessStatus.ERROR):
        # ix_processes_status_created_at
        result.processes[status.value] = await _capped(
            session, sa.select(Process.id).where(Process.status == status, *conds)
        )
    # ix_processes_pm (partial: processes with a postmortem)
    result.open_postmortems = await _capped(
        session,
        sa.select(Process.id).where(
            Process.pm_level.is_not(None),
            Process.pm_status.in_((PostmortemStatus.NEW, PostmortemStatus.OPENED)),
            *conds,
        ),
    )
    mine = [] if principal.admin else [Actor.account_id == principal.account_id]
    pending = sa.select(ActorRequest.id).where(ActorRequest.status == RequestStatus.PENDING)
    if mine:
        pending = pending.where(ActorRequest.actor_id.in_(sa.select(Actor.id).where(*mine)))
    # ix_requests_due (partial: pending requests)
    result.pending_requests = await _capped(session, pending)
    oldest = sa.select(sa.func.min(ActorRequest.created_at)).where(
        ActorRequest.status == RequestStatus.PENDING
    )
    if mine:
        oldest = oldest.where(ActorRequest.actor_id.in_(sa.select(Actor.id).where(*mine)))
    result.oldest_pending_at = await session.scalar(oldest)
    # Actors: a table of the bus's endpoints, small by nature.
    has_webhook = Actor.config.has_key(URL_KEY)
    row = (
        await session.execute(
            sa.select(
                sa.func.count(),
                sa.func.count().filter(Actor.online),
                sa.func.count().filter(Actor.unresponsive),
                sa.func.count().filter(has_webhook),
                sa.func.count().filter(
                    has_webhook,
                    Actor.webhook_suspended_at.is_not(None),
                    Actor.webhook_probe_at.is_not(None),
                ),
                sa.func.count().filter(
                    has_webhook,
                    Actor.webhook_suspended_at.is_not(None),
                    Actor.webhook_probe_at.is_(None),
                ),
            ).where(*mine)
        )
    ).one()
    (
        result.actors_total,
        result.actors_online,
        result.actors_unresponsive,
        result.webhooks_total,
        result.webhooks_suspended,
        result.webhooks_disabled,
    ) = (int(v) for v in row)
    return result


async def per_minute(
    session: AsyncSession, principal: Principal, now: datetime | None = None
) -> dict[str, Any]:
    """Processes created in each of the last 60 minutes, by their status now (a range of
    ix_processes_created_at_id)."""
    now = now or datetime.now(UTC)
    end = now.replace(second=0, microsecond=0) + timedelta(minutes=1)
    start = end - timedelta(minutes=CHART_MINUTES)
    minute = sa.func.date_trunc("minute", Process.created_at)
    rows = await session.execute(
        sa.select(minute, Process.status, sa.func.count())
        .where(Process.created_at >= start, *owned(principal))
        .group_by(minute, Process.status)
    )
    labels = [start + timedelta(minutes=i) for i in range(CHART_MINUTES)]
    index = {label: i for i, label in enumerate(labels)}
    series = {status.value: [0] * CHART_MINUTES for status in ProcessStatus}
    for at, status, count in rows:
        i = index.get(at.astimezone(UTC))
        if i is not None:
            series[status.value][i] = int(count)
    return {
        "labels": [label.strftime("%H:%M") for label in labels],
        "series": {k: v for k, v in series.items() if any(v)} or {"done": [0] * CHART_MINUTES},
    }


@dataclass(frozen=True, slots=True)
class AttemptMark:
    request_id: uuid.UUID
    attempt: int
    started_at: datetime
    duration_ms: float | None
    status_code: int | None
    outcome: str
    error: str | None


async def delivery_attempts(
    session: AsyncSession, request_ids: list[uuid.UUID], limit: int = 200
) -> list[AttemptMark]:
    """The webhook attempts of a process's requests (ix on delivery_attempts.request_id)."""
    if not request_ids:
        return []
    rows = await session.execute(
        sa.select(DeliveryAttempt)
        .where(DeliveryAttempt.request_id.in_(request_ids))
        .order_by(DeliveryAttempt.id)
        .limit(limit)
    )
    return [
        AttemptMark(
            a.request_id, a.attempt, a.started_at, a.duration_ms, a.status_code, a.outcome, a.error
        )
        for a in rows.scalars()
    ]


async def process_envelopes(
    session: AsyncSession, process: Process, *, offset: int, limit: int
) -> list[Envelope]:
    """The trigger envelope, then the envelopes the process's workers produced (ix on
    envelopes.process_id), a page at a time."""
    conds = [Envelope.process_id == process.id]
    if process.trigger_envelope_id is not None:
        conds.append(Envelope.id == process.trigger_envelope_id)
    rows = await session.execute(
        sa.select(Envelope)
        .where(sa.or_(*conds))
        .order_by(Envelope.created_at, Envelope.id)
        .offset(offset)
        .limit(limit)
    )
    return list(rows.scalars())


async def pending_requests(
    session: AsyncSession, actor_id: uuid.UUID, limit: int = 50
) -> list[ActorRequest]:
    """An actor's requests not ended yet, oldest first (ix_requests_actor_id)."""
    rows = await session.execute(
        sa.select(ActorRequest)
        .where(
            ActorRequest.actor_id == actor_id,
            ActorRequest.status.in_(
                (RequestStatus.PENDING, RequestStatus.LEASED, RequestStatus.RUNNING)
            ),
        )
        .order_by(ActorRequest.created_at)
        .limit(limit)
    )
    return list(rows.scalars())
