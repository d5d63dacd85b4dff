"""What operators (the admin, or an account for its own actors) do with webhooks: read the
attempt log, retry a waiting request now, disable and enable an actor's webhook."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy.ext.asyncio import AsyncSession

from app.accounts.principal import Principal
from app.accounts.service import Page, page_limit
from app.actors.access import load_owned_actor
from app.bus.director import add_log
from app.bus.notify import actor_key
from app.commit_hooks import notify_after_commit
from app.config import Settings
from app.core.exceptions import BadRequest, Conflict, NotFound
from app.core.pagination import decode_cursor, encode_cursor
from app.models import Actor, ActorRequest
from app.models.enums import LogLevel, RequestChannel, RequestStatus
from app.webhooks import repository as repo
from app.webhooks import store
from app.webhooks.schemas import DeliveryRead, WebhookRead, WebhookState
from app.webhooks.settings import URL_KEY


def utcnow() -> datetime:
    return datetime.now(UTC)


def _read(row: repo.AttemptRow) -> DeliveryRead:
    a = row.attempt
    return DeliveryRead(
        id=a.id,
        request_id=a.request_id,
        process_id=row.process_id,
        node_id=row.node_id,
        actor_id=a.actor_id,
        attempt=a.attempt,
        started_at=a.started_at,
        duration_ms=a.duration_ms,
        status_code=a.status_code,
        outcome=a.outcome,
        error=a.error,
        response_excerpt=a.response_excerpt,
    )


def _after(cursor: str | None) -> int | None:
    if not cursor:
        return None
    [value] = decode_cursor(cursor, 1)
    if not isinstance(value, int) or isinstance(value, bool):
        raise BadRequest("cursor is not one this server handed out")
    return value


async def _page(
    session: AsyncSession,
    settings: Settings,
    flt: repo.AttemptFilter,
    *,
    newest_first: bool,
    cursor: str | None,
    limit: int | None,
) -> Page[DeliveryRead]:
    size = page_limit(limit, settings)
    rows = await repo.list_attempts(
        session, flt, newest_first=newest_first, after=_after(cursor), limit=size + 1
    )
    items = [_read(row) for row in rows[:size]]
    more = len(rows) > size
    return Page(items, encode_cursor([items[-1].id]) if more and items else None)


async def actor_deliveries(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    ref: str,
    flt: repo.AttemptFilter,
    *,
    cursor: str | None,
    limit: int | None,
) -> Page[DeliveryRead]:
    """The actor's attempt log, newest first."""
    actor = await load_owned_actor(session, principal, ref)
    flt.actor_id = actor.id
    return await _page(session, settings, flt, newest_first=True, cursor=cursor, limit=limit)


async def _visible_request(
    session: AsyncSession, principal: Principal, request_id: uuid.UUID, *, for_update: bool
) -> ActorRequest:
    """The admin reaches every request, an account those of its own actors (others: 404)."""
    request = (
        await repo.lock_request(session, request_id)
        if for_update
        else await session.get(ActorRequest, request_id)
    )
    if request is None:
        raise NotFound(f"no request {request_id}")
    if not principal.admin:
        actor = await session.get(Actor, request.actor_id) if request.actor_id else None
        if actor is None or actor.account_id != principal.account_id:
            raise NotFound(f"no request {request_id}")
    return request


async def request_deliveries(
    session: AsyncSession,
    settings: Settings,
    principal: Principal,
    request_id: uuid.UUID,
    *,
    cursor: str | None,
    limit: int | None,
) -> Page[DeliveryRead]:
    """The attempts of one request, oldest first."""
    await _visible_request(session, principal, request_id, for_update=False)
    flt = repo.AttemptFilter(request_id=request_id)
    return await _page(session, settings, flt, newest_first=False, cursor=cursor, limit=limit)


async def retry_now(
    session: AsyncSession, principal: Principal, request_id: uuid.UUID
) -> ActorRequest:
    """A pending request (waiting out its backoff) becomes due now. One being delivered or
    ended answers 409: an ended request's process is replayed instead."""
    request = await _visible_request(session, principal, request_id, for_update=True)
    if request.status in (RequestStatus.LEASED, RequestStatus.RUNNING):
        raise Conflict(
            f"request {request_id} is being delivered ({request.status.value}); "
            "its answer or its lease's end comes first"
        )
    if request.status.final:
        raise Conflict(
            f"request {request_id} ended ({request.status.value}); replay its process "
            f"(POST /api/v1/processes/{request.process_id}/replay) to deliver it again"
        )
    if request.channel == RequestChannel.WEBHOOK and request.actor_id is not None:
        actor = await session.get(Actor, request.actor_id)
        if actor is not None and actor.webhook_suspended_at is not None:
            raise Conflict(
                f"the webhook of actor {actor.name!r} is {webhook_state(actor).value} "
                f"({actor.webhook_suspended_reason}); enable it "
                f"(POST /api/v1/actors/{actor.name}/webhook/enable) to deliver its requests"
            )
    now = utcnow()
    if request.available_at > now:
        request.available_at = now
        request.updated_at = now
    if request.actor_id is not None:
        notify_after_commit(session, actor_key(request.actor_id))
    await session.flush()
    return request


def webhook_state(actor: Actor) -> WebhookState:
    if actor.webhook_suspended_at is None:
        return WebhookState.ACTIVE
    if actor.webhook_probe_at is None:
        return WebhookState.DISABLED
    return WebhookState.SUSPENDED


async def _webhook_actor(session: AsyncSession, principal: Principal, ref: str) -> Actor:
    # Not locked here: webhook transactions lock requests before the actor row.
    actor = await load_owned_actor(session, principal, ref)
    if not actor.config.get(URL_KEY):
        raise Conflict(f"actor {actor.name!r} has no webhook (no {URL_KEY} in its config)")
    return actor


async def webhook_view(session: AsyncSession, actor: Actor) -> WebhookRead:
    counts = await repo.pending_counts(session, actor.id)
    return WebhookRead(
        actor_id=actor.id,
        actor_name=actor.name,
        state=webhook_state(actor),
        suspended_at=actor.webhook_suspended_at,
        reason=actor.webhook_suspended_reason,
        next_probe_at=actor.webhook_probe_at,
        pending=counts.get(RequestStatus.PENDING, 0),
        in_flight=counts.get(RequestStatus.LEASED, 0),
        running=counts.get(RequestStatus.RUNNING, 0),
    )


async def get_webhook(session: AsyncSession, principal: Principal, ref: str) -> WebhookRead:
    return await webhook_view(session, await _webhook_actor(session, principal, ref))


async def enable(session: AsyncSession, principal: Principal, ref: str) -> WebhookRead:
    """Deliver again now, whatever suspended or disabled the webhook."""
    actor = await _webhook_actor(session, principal, ref)
    if actor.webhook_suspended_at is not None:
        now = utcnow()
        await store.make_due(session, actor.id, now)
        actor.webhook_suspended_at = None
        actor.webhook_suspended_reason = None
        actor.webhook_probe_at = None
        add_log(
            session,
            LogLevel.NOTICE,
            f"webhook of actor {actor.name} enabled by {principal.name}",
            actor_id=actor.id,
        )
        notify_after_commit(session, actor_key(actor.id))
        await session.flush()
    return await webhook_view(session, actor)


async def disable(session: AsyncSession, principal: Principal, ref: str) -> WebhookRead:
    """Hold every request of the webhook (pending, none failed, no probes) until enabled."""
    actor = await _webhook_actor(session, principal, ref)
    if webhook_state(actor) != WebhookState.DISABLED:
        actor.webhook_suspended_at = utcnow()
        actor.webhook_suspended_reason = f"disabled by {principal.name}"
        actor.webhook_probe_at = None
        add_log(
            session,
            LogLevel.NOTICE,
            f"webhook of actor {actor.name} disabled by {principal.name}",
            actor_id=actor.id,
        )
        await session.flush()
    return await webhook_view(session, actor)
