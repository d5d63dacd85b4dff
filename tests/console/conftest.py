"""Console fixtures: HTTP clients signed in through the sign-in form, and for the browser
tests a real server on a free port and a headless Chromium driven by Playwright."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.bus.conftest import Bus, bus  # noqa: F401  (fixture)
from tests.conftest import ADMIN_KEY, served

BASE = "http://xbus.test"
ORIGIN = {"Origin": BASE}


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf_token" value="([^"]+)"', html)
    assert found, "no CSRF token on the page"
    return found.group(1)


async def sign_in(app: FastAPI, key: str) -> httpx.AsyncClient:
    """A client holding a console session of the account of `key`."""
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE)
    r = await client.post("/console/login", data={"api_key": key}, headers=ORIGIN)
    assert r.status_code == 303, r.text
    return client


@pytest.fixture
async def console(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    client = await sign_in(app, ADMIN_KEY)
    yield client
    await client.aclose()


# --------------------------------------------------------------------------- browser

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
]


def chromium_path() -> str:
    """Debian's chromium: XBUS_TEST_CHROMIUM, or on the PATH (scripts/test installs it)."""
    path = os.environ.get("XBUS_TEST_CHROMIUM") or shutil.which("chromium")
    if not path:
        pytest.fail(
            "chromium not found: `apt-get install -y chromium` (scripts/test does it as root), "
            "or set XBUS_TEST_CHROMIUM"
        )
    return path


@pytest.fixture(scope="session")
def screenshots() -> Path:
    """Where the browser tests save a screenshot of each page: XBUS_CONSOLE_SCREENSHOTS
    (docs/console to refresh the documentation's pictures), else <tmp>/xbus-console-screenshots;
    the run names it at its end."""
    wanted = os.environ.get("XBUS_CONSOLE_SCREENSHOTS")
    # Not under the session's temporary root: scripts/test removes that when it ends.
    where = Path(wanted or Path(tempfile.gettempdir()) / "xbus-console-screenshots")
    where.mkdir(parents=True, exist_ok=True)
    _SCREENSHOTS.append(where)
    return where


_SCREENSHOTS: list[Path] = []


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Say where the screenshots went, at the end of the run."""
    for where in _SCREENSHOTS:
        terminalreporter.write_line(f"console screenshots: {where}")


@pytest.fixture(scope="session")
async def browser() -> AsyncIterator[Any]:
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        chromium = await pw.chromium.launch(
            executable_path=chromium_path(), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield chromium
        finally:
            await chromium.close()


@pytest.fixture
async def live_url(app: FastAPI) -> AsyncIterator[str]:
    """The test's app served over real HTTP on 127.0.0.1 (in this event loop)."""
    async with served(app) as url:
        yield url


@pytest.fixture
async def page(browser: Any) -> AsyncIterator[Any]:
    context = await browser.new_context(viewport={"width": 1360, "height": 900})
    tab = await context.new_page()
    tab.set_default_timeout(15_000)
    try:
        yield tab
    finally:
        await context.close()


def chromium_version() -> str:
    out = subprocess.run([chromium_path(), "--version"], capture_output=True, text=True)
    return out.stdout.strip()
