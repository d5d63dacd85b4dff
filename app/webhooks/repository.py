"""SQL of webhook delivery: claiming due requests, the attempt log, suspension state."""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.ext.asyncio import AsyncSession

from app.models import Actor, ActorRequest, DeliveryAttempt
from app.models.enums import ActorStatus, AttemptOutcome, RequestChannel, RequestStatus
from app.webhooks.settings import URL_KEY

# Namespace of the per-actor advisory locks taken while claiming (the second key is a hash
# of the actor id): claims for one actor serialise across replicas, so its concurrency holds.
_CLAIM_LOCK = 727300402


@dataclass(frozen=True, slots=True)
class WebhookActor:
    id: uuid.UUID
    name: str
    account_id: uuid.UUID
    enabled: bool
    config: dict[str, str]
    suspended_at: datetime | None
    probe_at: datetime | None


@dataclass(frozen=True, slots=True)
class Quota:
    actor_id: uuid.UUID
    count: int
    max_attempts: int
    lease: float  # seconds


@dataclass(frozen=True, slots=True)
class Claimed:
    id: uuid.UUID
    actor_id: uuid.UUID
    process_id: uuid.UUID
    node_id: str
    attempt: int
    created_at: datetime
    inputs: list[Any]
    lease_expires_at: datetime

    def as_request(self) -> ActorRequest:
        """The leased request as the payload builder reads it (not attached to a session)."""
        return ActorRequest(
            id=self.id,
            process_id=self.process_id,
            node_id=self.node_id,
            actor_id=self.actor_id,
            inputs=self.inputs,
            attempts=self.attempt,
            lease_expires_at=self.lease_expires_at,
        )


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


async def try_lock_actors(session: AsyncSession, ids: Sequence[uuid.UUID]) -> list[uuid.UUID]:
    """The actors whose claim lock this transaction got (others are being claimed by another
    replica right now: skip them this round)."""
    if not ids:
        return []
    rows = await session.execute(
        sa.text(
            "SELECT id FROM unnest(CAST(:ids AS uuid[])) AS t(id) "
            "WHERE pg_try_advisory_xact_lock(:ns, hashtext(id::text))"
        ),
        {"ids": list(ids), "ns": _CLAIM_LOCK},
    )
    return [row[0] for row in rows]


async def in_flight(session: AsyncSession, ids: Sequence[uuid.UUID]) -> dict[uuid.UUID, int]:
    """Webhook requests being sent to these actors now, by any replica."""
    if not ids:
        return {}
    rows = await session.execute(
        sa.select(ActorRequest.actor_id, sa.func.count())
        .where(
            ActorRequest.status == RequestStatus.LEASED,
            ActorRequest.channel == RequestChannel.WEBHOOK,
            ActorRequest.actor_id.in_(ids),
        )
        .group_by(ActorRequest.actor_id)
    )
    return {actor_id: int(count) for actor_id, count in rows if actor_id is not None}


_CLAIM = sa.text(
    """
    WITH quota AS (
        SELECT * FROM unnest(
            CAST(:actor_ids AS uuid[]), CAST(:counts AS int[]),
            CAST(:max_attempts AS int[]), CAST(:leases AS float8[])
        ) AS q(actor_id, k, max_attempts, lease)
    ), picked AS (
        SELECT c.id, q.max_attempts, q.lease FROM quota q
        CROSS JOIN LATERAL (
            SELECT r.id FROM requests r JOIN processes p ON p.id = r.process_id
            JOIN actors a ON a.id = r.actor_id
            WHERE r.actor_id = q.actor_id AND r.channel = 'webhook' AND r.status = 'pending'
              AND r.available_at <= :now AND p.status = 'running'
              -- the dispatcher's view of the actors may be a poll interval old: a webhook
              -- suspended or disabled meanwhile gets nothing
              AND a.webhook_suspended_at IS NULL
            ORDER BY r.available_at, r.created_at
            LIMIT q.k
            FOR UPDATE OF r SKIP LOCKED
        ) c
    )
    UPDATE requests r SET
        status = 'leased', attempts = r.attempts + 1, max_attempts = picked.max_attempts,
        lease_expires_at = CAST(:now AS timestamptz) + make_interval(secs => picked.lease),
        leased_by = :holder, updated_at = :now, leased_at = :now
    FROM picked WHERE r.id = picked.id
    RETURNING r.id, r.actor_id, r.process_id, r.node_id, r.attempts, r.created_at,
        r.inputs, r.lease_expires_at
    """
)

_CLAIM_PROBE = sa.text(
    """
    UPDATE requests r SET
        status = 'leased', attempts = r.attempts + 1, max_attempts = :max_attempts,
        lease_expires_at = CAST(:now AS timestamptz)
            + make_interval(secs => CAST(:lease AS float8)),
        leased_by = :holder, updated_at = :now, leased_at = :now
    WHERE r.id = (
        SELECT r2.id FROM requests r2 JOIN processes p ON p.id = r2.process_id
        WHERE r2.actor_id = :actor_id AND r2.channel = 'webhook' AND r2.status = 'pending'
          AND p.status = 'running'
        ORDER BY r2.created_at
        LIMIT 1
        FOR UPDATE OF r2 SKIP LOCKED
    )
    RETURNING r.id, r.actor_id, r.process_id, r.node_id, r.attempts, r.created_at,
        r.inputs, r.lease_expires_at
    """
)


async def claim(
    session: AsyncSession, quotas: Sequence[Quota], now: datetime, holder: str
) -> list[Claimed]:
    """Lease up to each quota's count of due webhook requests of its actor (oldest due
    first), attempts + 1: rows other replicas hold are skipped."""
    if not quotas:
        return []
    rows = await session.execute(
        _CLAIM,
        {
            "actor_ids": [q.actor_id for q in quotas],
            "counts": [q.count for q in quotas],
            "max_attempts": [q.max_attempts for q in quotas],
            "leases": [q.lease for q in quotas],
            "now": now,
            "holder": holder,
        },
    )
    return [Claimed(*row) for row in rows]


async def claim_probe(
    session: AsyncSession, quota: Quota, now: datetime, next_probe: datetime, holder: str
) -> Claimed | None:
    """If the actor's probe is due, move its schedule on and lease its oldest pending
    request (due or not): one replica wins the probe."""
    won = await session.execute(
        sa.update(Actor)
        .where(
            Actor.id == quota.actor_id,
            Actor.webhook_suspended_at.is_not(None),
            Actor.webhook_probe_at <= now,
        )
        .values(webhook_probe_at=next_probe)
        .returning(Actor.id)
        .execution_options(synchronize_session=False)
    )
    if won.first() is None:
        return None
    row = (
        await session.execute(
            _CLAIM_PROBE,
            {
                "actor_id": quota.actor_id,
                "max_attempts": quota.max_attempts,
                "lease": quota.lease,
                "now": now,
                "holder": holder,
            },
        )
    ).first()
    return Claimed(*row) if row is not None else None


async def lock_request(session: AsyncSession, request_id: uuid.UUID) -> ActorRequest | None:
    return (
        await session.execute(
            sa.select(ActorRequest)
            .where(ActorRequest.id == request_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()


async def reschedule(
    session: AsyncSession,
    request_id: uuid.UUID,
    attempt: int,
    available_at: datetime,
    error: str,
    now: datetime,
) -> bool:
    """Back to pending, due at `available_at`, if this attempt still holds the request."""
    result = await session.execute(
        sa.update(ActorRequest)
        .where(
            ActorRequest.id == request_id,
            ActorRequest.status == RequestStatus.LEASED,
            ActorRequest.attempts == attempt,
        )
        .values(
            status=RequestStatus.PENDING,
            available_at=available_at,
            lease_expires_at=None,
            leased_by=None,
            last_error=error,
            updated_at=now,
        )
        .returning(ActorRequest.id)
        .execution_options(synchronize_session=False)
    )
    return result.first() is not None


async def add_attempt(session: AsyncSession, attempt: DeliveryAttempt) -> None:
    session.add(attempt)
    await session.flush()


async def request_attempts(session: AsyncSession, request_id: uuid.UUID) -> list[DeliveryAttempt]:
    rows = await session.execute(
        sa.select(DeliveryAttempt)
        .where(DeliveryAttempt.request_id == request_id)
        .order_by(DeliveryAttempt.id)
    )
    return list(rows.scalars())


async def delivered_since(session: AsyncSession, actor_id: uuid.UUID, after_id: int) -> bool:
    """Did an attempt to this actor get a success answer after attempt `after_id`?"""
    query = sa.select(
        sa.exists().where(
            DeliveryAttempt.actor_id == actor_id,
            DeliveryAttempt.id > after_id,
            DeliveryAttempt.outcome.in_((AttemptOutcome.SUCCESS, AttemptOutcome.RUNNING)),
        )
    )
    return bool(await session.scalar(query))


async def make_due(session: AsyncSession, actor_id: uuid.UUID, now: datetime) -> int:
    """Every pending webhook request of the actor due now (its webhook came back)."""
    result = await session.execute(
        sa.update(ActorRequest)
        .where(
            ActorRequest.actor_id == actor_id,
            ActorRequest.channel == RequestChannel.WEBHOOK,
            ActorRequest.status == RequestStatus.PENDING,
            ActorRequest.available_at > now,
        )
        .values(available_at=now)
        .execution_options(synchronize_session=False)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def set_suspension(
    session: AsyncSession,
    actor_id: uuid.UUID,
    *,
    suspended_at: datetime | None,
    reason: str | None,
    probe_at: datetime | None,
    only_if: sa.ColumnElement[bool] | None = None,
) -> bool:
    query = sa.update(Actor).where(Actor.id == actor_id)
    if only_if is not None:
        query = query.where(only_if)
    result = await session.execute(
        query.values(
            webhook_suspended_at=suspended_at,
            webhook_suspended_reason=reason,
            webhook_probe_at=probe_at,
        )
        .returning(Actor.id)
        .execution_options(synchronize_session=False)
    )
    return result.first() is not None


async def suspend_by_failures(
    session: AsyncSession, actor_id: uuid.UUID, reason: str, now: datetime, probe_at: datetime
) -> bool:
    """Suspend an active webhook (a suspended or disabled one stays as it is)."""
    return await set_suspension(
        session,
        actor_id,
        suspended_at=now,
        reason=reason,
        probe_at=probe_at,
        only_if=Actor.webhook_suspended_at.is_(None),
    )


async def resume_after_failures(session: AsyncSession, actor_id: uuid.UUID) -> bool:
    """Lift a suspension by failures (an operator's disable stays)."""
    return await set_suspension(
        session,
        actor_id,
        suspended_at=None,
        reason=None,
        probe_at=None,
        only_if=Actor.webhook_probe_at.is_not(None),
    )


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
