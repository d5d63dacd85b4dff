"""Mounting the console on the app: its pages and static files, sign-in redirects, and
errors on its paths answered as pages (the API's paths keep problem+json)."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from starlette.exceptions import HTTPException as StarletteHTTPException

from app.console.routes import ROUTERS
from app.console.web import HERE, PREFIX, SignInRequired, render
from app.core.exceptions import XbusError


def _is_console_page(request: Request) -> bool:
    path = request.url.path
    return (path == PREFIX or path.startswith(PREFIX + "/")) and not path.startswith(
        f"{PREFIX}/static/"
    )


async def _on_sign_in(request: Request, exc: Exception) -> Response:
    """No live session: to the sign-in page, and back here after it."""
    target = f"{PREFIX}/login"
    if request.method == "GET" and request.url.path != target:
        here = request.url.path + (f"?{request.url.query}" if request.url.query else "")
        target += "?next=" + quote(here, safe="")
    if request.headers.get("hx-request"):
        # htmx follows this header with a full page load.
        return Response(status_code=200, headers={"HX-Redirect": target})
    return RedirectResponse(target, status_code=303)


def _error_page(exc: Exception) -> tuple[int, str]:
    if isinstance(exc, XbusError):
        return exc.status, exc.detail
    if isinstance(exc, RequestValidationError):
        first = exc.errors()[0] if exc.errors() else {}
        where = ".".join(str(p) for p in first.get("loc", ()))
        return 422, f"{where}: {first.get('msg', 'invalid input')}"
    if isinstance(exc, StarletteHTTPException):
        return exc.status_code, str(exc.detail)
    return 500, "error"


def install(app: FastAPI) -> None:
    for router in ROUTERS:
        app.include_router(router)
    app.mount(f"{PREFIX}/static", StaticFiles(directory=HERE / "static"), name="console-static")
    app.add_exception_handler(SignInRequired, _on_sign_in)
    for kind in (XbusError, RequestValidationError, StarletteHTTPException):
        api_handler = app.exception_handlers[kind]

        async def on_error(request: Request, exc: Exception, api_handler: Any = api_handler) -> Any:
            if not _is_console_page(request):
                return await api_handler(request, exc)
            status, detail = _error_page(exc)
            return render(
                request, "error.html", {"status": status, "detail": detail}, status_code=status
            )

        app.add_exception_handler(kind, on_error)
