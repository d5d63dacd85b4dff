"""Actors and webhooks: online, last seen, unresponsive; a webhook's state, attempt log,
open requests with "retry now", enable / disable (the admin, or the actor's account)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response

from app.actors import service
from app.console import queries
from app.console.web import PREFIX, FormUser, User, back_to, render
from app.core.deps import Session, SettingsDep
from app.core.exceptions import BadRequest
from app.webhooks import operations
from app.webhooks import repository as webhooks_repo
from app.webhooks.settings import URL_KEY

router = APIRouter(prefix=PREFIX, include_in_schema=False)


@router.get("/actors")
async def actors_page(
    request: Request,
    session: Session,
    settings: SettingsDep,
    user: User,
    cursor: str | None = None,
) -> Response:
    page = await service.list_actors(session, settings, user.principal, cursor=cursor or None)
    rows = [
        {
            "actor": view.actor,
            "account": view.account_name,
            "webhook": operations.webhook_state(view.actor).value
            if view.actor.config.get(URL_KEY)
            else None,
        }
        for view in page.items
    ]
    return render(
        request, "actors.html", {"rows": rows, "next_cursor": page.next_cursor}, user=user
    )


@router.get("/actors/{ref}")
async def actor_page(
    request: Request,
    ref: str,
    session: Session,
    settings: SettingsDep,
    user: User,
    cursor: str | None = None,
) -> Response:
    view = await service.get_actor(session, user.principal, ref)
    actor = view.actor
    webhook = deliveries = None
    if actor.config.get(URL_KEY):
        webhook = await operations.webhook_view(session, actor)
        deliveries = await operations.actor_deliveries(
            session,
            settings,
            user.principal,
            str(actor.id),
            webhooks_repo.AttemptFilter(),
            cursor=cursor or None,
            limit=None,
        )
    return render(
        request,
        "actor.html",
        {
            "actor": actor,
            "account": view.account_name,
            "webhook": webhook,
            "deliveries": deliveries,
            "open_requests": await queries.pending_requests(session, actor.id),
        },
        user=user,
    )


@router.post("/actors/{ref}/webhook/{action}")
async def webhook_switch(ref: str, action: str, session: Session, user: FormUser) -> Response:
    if action == "enable":
        webhook = await operations.enable(session, user.principal, ref)
    elif action == "disable":
        webhook = await operations.disable(session, user.principal, ref)
    else:
        raise BadRequest(f"no webhook action {action!r}")
    return back_to(f"{PREFIX}/actors/{webhook.actor_name}")


@router.post("/requests/{request_id}/retry")
async def request_retry(
    request_id: uuid.UUID, session: Session, user: FormUser, back: Annotated[str, Form()] = ""
) -> Response:
    await operations.retry_now(session, user.principal, request_id)
    return back_to(back if back.startswith(PREFIX + "/") else f"{PREFIX}/actors")
