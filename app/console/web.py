"""The console's plumbing: templates, the signed-in user of a request, the CSRF and Origin
checks of state-changing requests, and errors answered as pages."""

from __future__ import annotations

import hmac
import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from fastapi import Depends, Request
from fastapi.responses import HTMLResponse, RedirectResponse
from fastapi.templating import Jinja2Templates

from app.accounts.principal import Principal
from app.console import sessions
from app.core.deps import Session
from app.core.exceptions import Forbidden

HERE = Path(__file__).parent
PREFIX = "/console"
COOKIE = "xbus_console"

templates = Jinja2Templates(directory=HERE / "templates")


def _ago(value: datetime | None) -> str:
    if value is None:
        return ""
    seconds = (datetime.now(UTC) - value).total_seconds()
    return duration(seconds) + " ago" if seconds >= 0 else "in " + duration(-seconds)


def duration(seconds: float | None) -> str:
    if seconds is None:
        return ""
    if seconds < 1:
        return f"{seconds * 1000:.0f} ms"
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.0f} d"


def _when(value: datetime | None) -> str:
    return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S") if value else ""


templates.env.filters["ago"] = _ago
templates.env.filters["when"] = _when
templates.env.filters["duration"] = duration
templates.env.filters["tojson_attr"] = lambda value: json.dumps(value, default=str)
templates.env.globals["prefix"] = PREFIX


class SignInRequired(Exception):
    """No live session: the browser goes to the sign-in page (and comes back after)."""


@dataclass(frozen=True, slots=True)
class ConsoleUser:
    principal: Principal
    session_id: str
    csrf_token: str

    @property
    def admin(self) -> bool:
        return self.principal.admin


async def console_user(request: Request, session: Session) -> ConsoleUser:
    token = request.cookies.get(COOKIE)
    signed_in = await sessions.current(session, token) if token else None
    if signed_in is None:
        raise SignInRequired
    return ConsoleUser(signed_in.principal, signed_in.session_id, signed_in.csrf_token)


User = Annotated[ConsoleUser, Depends(console_user)]


def check_origin(request: Request) -> None:
    """A state-changing request must come from a page of this server: its Origin (or, when a
    browser leaves it out, its Referer) names this host."""
    source = request.headers.get("origin") or request.headers.get("referer")
    if not source or source == "null":
        raise Forbidden("the request does not say where it comes from (no Origin or Referer)")
    if urlsplit(source).netloc.lower() != (request.headers.get("host") or "").lower():
        raise Forbidden(f"the request comes from another site ({urlsplit(source).netloc})")


async def form_user(request: Request, user: User) -> ConsoleUser:
    """The signed-in user of a state-changing request, once its CSRF token (form field
    `csrf_token` or header `X-CSRF-Token`) and Origin are checked."""
    check_origin(request)
    form = await request.form()
    token = form.get("csrf_token") or request.headers.get("x-csrf-token") or ""
    if not isinstance(token, str) or not hmac.compare_digest(
        token.encode(), user.csrf_token.encode()
    ):
        raise Forbidden("the form's CSRF token is missing or not this session's; reload the page")
    return user


FormUser = Annotated[ConsoleUser, Depends(form_user)]


def render(
    request: Request,
    name: str,
    context: Mapping[str, Any],
    *,
    user: ConsoleUser | None = None,
    status_code: int = 200,
) -> HTMLResponse:
    values = {"user": user, "path": request.url.path, **context}
    response = templates.TemplateResponse(request, name, values, status_code=status_code)
    # Pages show what the account may see: never kept by a shared cache, nor framed.
    response.headers["Cache-Control"] = "no-store"
    response.headers["X-Frame-Options"] = "DENY"
    response.headers["Content-Security-Policy"] = (
        "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
        "frame-ancestors 'none'; form-action 'self'"
    )
    return response


def back_to(url: str) -> RedirectResponse:
    """After a form: the page again (POST, redirect, GET)."""
    return RedirectResponse(url, status_code=303)


def parse_uuid(value: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(value)
    except ValueError:
        return None
