"""Webhook operator API: attempt logs, retry now, disable and enable."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.core.deps import Caller, Session, SettingsDep
from app.core.errors import Problem
from app.models.enums import AttemptOutcome
from app.webhooks import operations
from app.webhooks.repository import AttemptFilter
from app.webhooks.schemas import DeliveryPage, RetryRead, WebhookRead

router = APIRouter(prefix="/api/v1", tags=["webhooks"])

ActorRef = Annotated[str, Path(description="An actor id (UUID) or name.")]
Cursor = Annotated[str | None, Query(description="`next_cursor` of the previous page.")]
Limit = Annotated[
    int | None, Query(ge=1, description="Page size (default and maximum are configured).")
]


@router.get(
    "/actors/{actor}/deliveries",
    summary="The webhook attempt log of an actor, newest first",
    response_model=DeliveryPage,
    responses=Problem.of(400, 401, 403, 404, 422),
)
async def list_actor_deliveries(
    actor: ActorRef,
    caller: Caller,
    session: Session,
    settings: SettingsDep,
    outcome: Annotated[
        list[AttemptOutcome] | None, Query(description="Only attempts with these outcomes.")
    ] = None,
    request_id: Annotated[uuid.UUID | None, Query(description="Only this request's.")] = None,
    status_code: Annotated[
        int | None, Query(ge=100, le=599, description="Only answers with this status.")
    ] = None,
    started_after: Annotated[
        datetime | None, Query(description="Only attempts started at or after this time.")
    ] = None,
    started_before: Annotated[
        datetime | None, Query(description="Only attempts started before this time.")
    ] = None,
    cursor: Cursor = None,
    limit: Limit = None,
) -> DeliveryPage:
    flt = AttemptFilter(
        request_id=request_id,
        outcomes=outcome,
        status_code=status_code,
        started_after=started_after,
        started_before=started_before,
    )
    page = await operations.actor_deliveries(
        session, settings, caller, actor, flt, cursor=cursor, limit=limit
    )
    return DeliveryPage(items=page.items, next_cursor=page.next_cursor)


@router.get(
    "/requests/{request_id}/deliveries",
    summary="The webhook attempts of one request, oldest first",
    response_model=DeliveryPage,
    responses=Problem.of(400, 401, 403, 404, 422),
)
async def list_request_deliveries(
    request_id: uuid.UUID,
    caller: Caller,
    session: Session,
    settings: SettingsDep,
    cursor: Cursor = None,
    limit: Limit = None,
) -> DeliveryPage:
    page = await operations.request_deliveries(
        session, settings, caller, request_id, cursor=cursor, limit=limit
    )
    return DeliveryPage(items=page.items, next_cursor=page.next_cursor)


@router.post(
    "/requests/{request_id}/retry",
    summary="Make a pending request (waiting out its backoff) due now",
    description=(
        "A pending request is sent at once (a webhook) or handed to the next poll. A request "
        "being delivered (leased, running) or ended (success, error, canceled) answers 409: "
        "replay the process to deliver an ended one again. A request of a suspended or "
        "disabled webhook answers 409: enable the webhook."
    ),
    response_model=RetryRead,
    responses=Problem.of(401, 403, 404, 409, 422),
)
async def retry_request(request_id: uuid.UUID, caller: Caller, session: Session) -> RetryRead:
    request = await operations.retry_now(session, caller, request_id)
    return RetryRead(
        request_id=request.id,
        channel=request.channel,
        status=request.status,
        available_at=request.available_at,
        attempts=request.attempts,
        max_attempts=request.max_attempts,
    )


@router.get(
    "/actors/{actor}/webhook",
    summary="The state of an actor's webhook (active, suspended, disabled) and its queue",
    response_model=WebhookRead,
    responses=Problem.of(401, 403, 404, 409),
)
async def get_webhook(actor: ActorRef, caller: Caller, session: Session) -> WebhookRead:
    return await operations.get_webhook(session, caller, actor)


@router.post(
    "/actors/{actor}/webhook/enable",
    summary="Enable an actor's webhook: its pending requests are sent now",
    response_model=WebhookRead,
    responses=Problem.of(401, 403, 404, 409),
)
async def enable_webhook(actor: ActorRef, caller: Caller, session: Session) -> WebhookRead:
    return await operations.enable(session, caller, actor)


@router.post(
    "/actors/{actor}/webhook/disable",
    summary="Disable an actor's webhook: its requests wait, unprobed, until it is enabled",
    response_model=WebhookRead,
    responses=Problem.of(401, 403, 404, 409),
)
async def disable_webhook(actor: ActorRef, caller: Caller, session: Session) -> WebhookRead:
    return await operations.disable(session, caller, actor)
