"""XBUS_CONSOLE_ENABLED=false: no console at all (404), the API as before."""

from __future__ import annotations

from typing import Any

import httpx
import pytest


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"console_enabled": False}


async def test_console_disabled_answers_404(admin: httpx.AsyncClient) -> None:
    for path in ("/console/", "/console/login", "/console/static/console.js"):
        assert (await admin.get(path)).status_code == 404
    assert (await admin.get("/api/v1/whoami")).status_code == 200
