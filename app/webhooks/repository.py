"""SQL of webhook delivery read through the ORM: the webhook actors, what a claim returns,
the attempt log and the counts operators read. The statements of the dispatcher's units of
work (claims, outcomes, suspension) are plain SQL, in `app.webhooks.store`."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Actor, ActorRequest, DeliveryAttempt
from app.models.enums import ActorStatus, AttemptOutcome, RequestChannel, RequestStatus
from app.webhooks.settings import URL_KEY


@dataclass(frozen=True, slots=True)
class WebhookActor:
    id: uuid.UUID
    name: str
    account_id: uuid.UUID
    enabled: bool
    config: dict[str, str]
    suspended_at: datetime | None
    probe_at: datetime | None


async def webhook_actors(session: AsyncSession) -> list[WebhookActor]:
    rows = await session.execute(
        sa.select(
            Actor.id,
            Actor.name,
            Actor.account_id,
            Actor.status,
            Actor.config,
            Actor.webhook_suspended_at,
            Actor.webhook_probe_at,
        ).where(Actor.config.has_key(URL_KEY))
    )
    return [
        WebhookActor(i, n, acc, s == ActorStatus.ENABLED, c, sus, probe)
        for i, n, acc, s, c, sus, probe in rows
    ]


async def lock_request(session: AsyncSession, request_id: uuid.UUID) -> ActorRequest | None:
    return (
        await session.execute(
            sa.select(ActorRequest)
            .where(ActorRequest.id == request_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()


async def pending_counts(session: AsyncSession, actor_id: uuid.UUID) -> dict[RequestStatus, int]:
    rows = await session.execute(
        sa.select(ActorRequest.status, sa.func.count())
        .where(
            ActorRequest.actor_id == actor_id,
            ActorRequest.channel == RequestChannel.WEBHOOK,
            ActorRequest.status.in_(
                (RequestStatus.PENDING, RequestStatus.LEASED, RequestStatus.RUNNING)
            ),
        )
        .group_by(ActorRequest.status)
    )
    return {status: int(count) for status, count in rows}


@dataclass
class AttemptFilter:
    actor_id: uuid.UUID | None = None
    request_id: uuid.UUID | None = None
    outcomes: list[AttemptOutcome] | None = None
    status_code: int | None = None
    started_after: datetime | None = None
    started_before: datetime | None = None


@dataclass(frozen=True, slots=True)
class AttemptRow:
    attempt: DeliveryAttempt
    process_id: uuid.UUID | None
    node_id: str | None


async def list_attempts(
    session: AsyncSession, flt: AttemptFilter, *, newest_first: bool, after: int | None, limit: int
) -> list[AttemptRow]:
    query = sa.select(DeliveryAttempt, ActorRequest.process_id, ActorRequest.node_id).outerjoin(
        ActorRequest, ActorRequest.id == DeliveryAttempt.request_id
    )
    if flt.actor_id is not None:
        query = query.where(DeliveryAttempt.actor_id == flt.actor_id)
    if flt.request_id is not None:
        query = query.where(DeliveryAttempt.request_id == flt.request_id)
    if flt.outcomes:
        query = query.where(DeliveryAttempt.outcome.in_(flt.outcomes))
    if flt.status_code is not None:
        query = query.where(DeliveryAttempt.status_code == flt.status_code)
    if flt.started_after is not None:
        query = query.where(DeliveryAttempt.started_at >= flt.started_after)
    if flt.started_before is not None:
        query = query.where(DeliveryAttempt.started_at < flt.started_before)
    if after is not None:
        query = query.where(
            DeliveryAttempt.id < after if newest_first else DeliveryAttempt.id > after
        )
    order = DeliveryAttempt.id.desc() if newest_first else DeliveryAttempt.id
    rows = await session.execute(query.order_by(order).limit(limit))
    return [AttemptRow(a, p, n) for a, p, n in rows]
