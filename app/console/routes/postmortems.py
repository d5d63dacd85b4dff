"""Postmortems: the open ones first (new, opened), then the closed; open / close with a
comment (admin, as `PATCH /api/v1/processes/{id}/postmortem`)."""

from __future__ import annotations

import uuid
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import Response
from pydantic import ValidationError

from app.console import queries
from app.console.web import PREFIX, FormUser, User, back_to, render
from app.core.deps import Session, SettingsDep, require_admin
from app.core.exceptions import Unprocessable
from app.models.enums import PostmortemStatus
from app.ops import postmortem
from app.ops.schemas import PostmortemUpdate

router = APIRouter(prefix=PREFIX, include_in_schema=False)

VIEWS = {
    "open": [PostmortemStatus.NEW, PostmortemStatus.OPENED],
    "closed": [PostmortemStatus.CLOSED],
    "all": [],
}


@router.get("/postmortems")
async def postmortems_page(
    request: Request,
    session: Session,
    settings: SettingsDep,
    user: User,
    view: str = "open",
    cursor: str | None = None,
) -> Response:
    statuses = VIEWS.get(view, VIEWS["open"])
    page = await postmortem.list_postmortems(
        session,
        queries.owned(user.principal),
        levels=[],
        statuses=statuses,
        cursor=cursor or None,
        limit=settings.page_size_default,
        logs=3,
    )
    return render(
        request,
        "postmortems.html",
        {"page": page, "view": view if view in VIEWS else "open", "views": list(VIEWS)},
        user=user,
    )


@router.post("/processes/{process_id}/postmortem")
async def postmortem_update(
    process_id: uuid.UUID,
    session: Session,
    user: FormUser,
    status: Annotated[PostmortemStatus | None, Form()] = None,
    comment: Annotated[str | None, Form()] = None,
    back: Annotated[str, Form()] = "",
) -> Response:
    await require_admin(user.principal)
    try:
        data = PostmortemUpdate(status=status, comment=comment)
    except ValidationError as exc:
        raise Unprocessable(str(exc.errors()[0]["msg"])) from None
    await postmortem.update_postmortem(session, process_id, data)
    target = back if back.startswith(PREFIX + "/") else f"{PREFIX}/processes/{process_id}"
    return back_to(target)
