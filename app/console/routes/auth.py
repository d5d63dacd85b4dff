"""Sign-in with an API key (a session cookie, not the key), sign-out."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Form, Request
from fastapi.responses import RedirectResponse, Response

from app.console import sessions
from app.console.web import COOKIE, PREFIX, FormUser, back_to, check_origin, render
from app.core.deps import Session, SettingsDep
from app.core.exceptions import Forbidden, Unauthorized

router = APIRouter(prefix=PREFIX, include_in_schema=False)


def _safe_next(target: str | None) -> str:
    """Only a console page: never an open redirect to another site."""
    if target and target.startswith(PREFIX + "/") and not target.startswith("//"):
        return target
    return PREFIX + "/"


@router.get("/login")
async def login_page(request: Request, next: str | None = None) -> Response:
    return render(request, "login.html", {"next": _safe_next(next), "error": None})


@router.post("/login")
async def login(
    request: Request,
    session: Session,
    settings: SettingsDep,
    api_key: Annotated[str, Form()] = "",
    next: Annotated[str, Form()] = "",
) -> Response:
    check_origin(request)  # no session yet to hold a CSRF token: the Origin says who asks
    try:
        token, _ = await sessions.sign_in(
            session, api_key, timedelta(seconds=settings.console_session_ttl)
        )
    except (Unauthorized, Forbidden) as exc:
        return render(
            request,
            "login.html",
            {"next": _safe_next(next), "error": exc.detail},
            status_code=exc.status,
        )
    response = RedirectResponse(_safe_next(next), status_code=303)
    response.set_cookie(
        COOKIE,
        token,
        max_age=settings.console_session_ttl,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response


@router.post("/logout")
async def logout(request: Request, session: Session, user: FormUser) -> Response:
    token = request.cookies.get(COOKIE)
    if token:
        await sessions.revoke(session, token)
    response = back_to(f"{PREFIX}/login")
    response.delete_cookie(
        COOKIE,
        path=PREFIX,
        httponly=True,
        samesite="strict",
        secure=request.url.scheme == "https",
    )
    return response
