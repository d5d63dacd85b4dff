"""Test session: a real PostgreSQL and a real nats-server, started from the embedded packages
(or taken from XBUS_TEST_DATABASE_URL / XBUS_TEST_NATS_URL), migrated once. Each test gets
empty tables and a fresh app with its lifespan running."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import uvicorn
from fastapi import FastAPI

from app import migrations
from app.cli.http_protocol import HttpProtocol
from app.config import Settings, load_settings
from app.main import create_app
from app.models import Base
from app.runtime.nats import EmbeddedNats
from app.runtime.postgres import EmbeddedPostgres

ADMIN_KEY = "xbk_test-admin-key-0123456789"
TEST_DB = "xbus_test"


# What `xbusd serve` logs once its HTTP socket is bound (app/cli/xbusd.py).
_BOUND = re.compile(r"HTTP on http://\S+:(\d+) ")


def bound_port(
    log: Path, proc: subprocess.Popen[bytes], after: int = 0, timeout: float = 60
) -> int:
    """The port an `xbusd serve --port 0` bound, read from its log (from byte `after`, where
    this start's lines begin): no port chosen before the server binds it, so none that
    another process of the machine (a parallel test's server) can take meanwhile. The line
    is logged at INFO by `app.cli.xbusd`: the server must log at that level."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = log.read_bytes()[after:].decode(errors="replace") if log.exists() else ""
        if found := _BOUND.search(text):
            return int(found.group(1))
        assert proc.poll() is None, f"xbusd exited with code {proc.returncode}:\n{text}"
        time.sleep(0.05)
    raise AssertionError(f"xbusd bound no port in {timeout} s:\n{text}")


def _plain(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://")


def _with_database(url: str, database: str) -> str:
    head, sep, query = url.partition("?")
    base = head.rsplit("/", 1)[0]
    return f"{base}/{database}{sep}{query}"


async def _recreate_database(server_url: str, database: str) -> None:
    conn = await asyncpg.connect(_plain(_with_database(server_url, "postgres")))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        await conn.execute(f'CREATE DATABASE "{database}"')
    finally:
        await conn.close()


@pytest.fixture(scope="session")
def runtime_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("runtime")


@pytest.fixture(scope="session")
def pg_server_url(runtime_dir: Path) -> Iterator[str]:
    external = os.environ.get("XBUS_TEST_DATABASE_URL")
    if external:
        yield external
        return
    server = EmbeddedPostgres(runtime_dir)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nats_url(runtime_dir: Path) -> Iterator[str]:
    external = os.environ.get("XBUS_TEST_NATS_URL")
    if external:
        yield external
        return
    server = EmbeddedNats(runtime_dir, "127.0.0.1", 0)
    url = server.start()
    try:
        yield url
    finally:
        server.stop()


@pytest.fixture
def own_nats(tmp_path: Path) -> Iterator[EmbeddedNats]:
    """A nats-server of the test's own (to stop, kill or restart), not the session's."""
    server = EmbeddedNats(tmp_path / "nats-own", "127.0.0.1", 0)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@contextlib.asynccontextmanager
async def served(app: Any, http: type[asyncio.Protocol] = HttpProtocol) -> AsyncIterator[str]:
    """`app` served by uvicorn over real HTTP on a free port of 127.0.0.1, in this event loop
    (its lifespan is the app fixture's: not run again), with xbusd's HTTP protocol unless
    told otherwise; yields its base URL."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, lifespan="off", log_level="warning", access_log=False, http=http)
    server = uvicorn.Server(config)
    task = asyncio.create_task(server.serve(sockets=[sock]))
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 10)
        sock.close()


@pytest.fixture(scope="session")
def database_url(pg_server_url: str) -> str:
    asyncio.run(_recreate_database(pg_server_url, TEST_DB))
    url = _with_database(pg_server_url, TEST_DB)
    migrations.upgrade(url)
    return url


TABLES = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)


@pytest.fixture
async def clean_db(database_url: str) -> None:
    conn = await asyncpg.connect(_plain(database_url))
    try:
        await conn.execute(f"TRUNCATE {TABLES} RESTART IDENTITY CASCADE")
    finally:
        await conn.close()


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    """Override in a test module to change settings for its tests."""
    return {}


@pytest.fixture
def settings(
    database_url: str, nats_url: str, tmp_path: Path, settings_overrides: dict[str, Any]
) -> Settings:
    values: dict[str, Any] = {
        "database_url": database_url,
        "nats_url": nats_url,
        "data_dir": tmp_path / "data",
        "admin_api_key": ADMIN_KEY,
        "migrate_on_start": False,
        "webhook_allow_private": True,
        "db_pool_size": 5,
    }
    values.update(settings_overrides)
    return load_settings(None, **values)


@pytest.fixture
async def app(settings: Settings, clean_db: None) -> AsyncIterator[FastAPI]:
    application = create_app(settings)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def client(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://xbus.test") as c:
        yield c


@pytest.fixture
async def admin(app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(
        transport=transport,
        base_url="http://xbus.test",
        headers={"Authorization": f"Bearer {ADMIN_KEY}"},
    ) as c:
        yield c


@pytest.fixture
async def db(database_url: str) -> AsyncIterator[asyncpg.Connection]:
    """A raw connection to check what is (and is not) stored."""
    conn = await asyncpg.connect(_plain(database_url))
    try:
        yield conn
    finally:
        await conn.close()


# Kept by triggers and rewritten by a background duty at any time (migration 0008): not
# something a request stores; `processes` itself is counted.
DERIVED_TABLES = {"process_counts", "process_count_deltas"}


async def row_counts(conn: asyncpg.Connection) -> dict[str, int]:
    counts = {}
    for table in Base.metadata.sorted_tables:
        if table.name in DERIVED_TABLES:
            continue
        counts[table.name] = await conn.fetchval(f'SELECT count(*) FROM "{table.name}"')
    return counts


def assert_problem(
    response: httpx.Response, status: int, contains: str | None = None
) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json"), response.headers
    body: dict[str, Any] = response.json()
    for key in ("type", "title", "status", "detail"):
        assert key in body, body
    assert body["status"] == status
    if contains is not None:
        assert contains.lower() in body["detail"].lower(), body["detail"]
    return body


def new_name(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:8]}"
