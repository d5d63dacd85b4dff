"""The overview: figures and the processes-per-minute chart, refreshed by a short poll."""

from __future__ import annotations

from fastapi import APIRouter, Request
from fastapi.responses import Response

from app.console import queries
from app.console.web import PREFIX, User, render
from app.core.deps import Session

router = APIRouter(prefix=PREFIX, include_in_schema=False)


async def _live(session: Session, user: User) -> dict[str, object]:
    return {
        "figures": await queries.overview(session, user.principal),
        "chart": await queries.per_minute(session, user.principal),
    }


@router.get("/")
async def overview_page(request: Request, session: Session, user: User) -> Response:
    return render(request, "overview.html", await _live(session, user), user=user)


@router.get("/overview/live")
async def overview_live(request: Request, session: Session, user: User) -> Response:
    return render(request, "_overview_live.html", await _live(session, user), user=user)
