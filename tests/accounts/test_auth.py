"""API keys: both headers, 401 vs 403, expiry, hashing at rest, the bootstrap admin."""

from __future__ import annotations

import os
import stat
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import httpx
from fastapi import FastAPI

from app.accounts import keys
from app.config import Settings
from app.main import create_app
from tests.conftest import ADMIN_KEY, assert_problem


async def test_whoami_with_bearer(admin: httpx.AsyncClient) -> None:
    r = await admin.get("/api/v1/whoami")
    assert r.status_code == 200
    body = r.json()
    assert body["admin"] is True
    assert body["account"]["name"] == "admin"
    assert body["account"]["type"] == "user"
    assert body["account"]["status"] == "enabled"


async def test_whoami_with_xbus_api_key_header(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/whoami", headers={"Xbus-Api-Key": ADMIN_KEY})
    assert r.status_code == 200
    assert r.json()["admin"] is True


async def test_missing_key_is_401(client: httpx.AsyncClient) -> None:
    r = await client.get("/api/v1/whoami")
    assert_problem(r, 401, "api key is required")
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_wrong_key_is_401(client: httpx.AsyncClient) -> None:
    assert_problem(
        await client.get("/api/v1/whoami", headers={"Authorization": "Bearer nope"}),
        401,
        "not valid",
    )
    assert_problem(
        await client.get("/api/v1/whoami", headers={"Xbus-Api-Key": ADMIN_KEY + "x"}), 401
    )


async def test_malformed_authorization_is_401(client: httpx.AsyncClient) -> None:
    assert_problem(
        await client.get("/api/v1/whoami", headers={"Authorization": f"Basic {ADMIN_KEY}"}),
        401,
        "Bearer",
    )
    assert_problem(await client.get("/api/v1/whoami", headers={"Authorization": "Bearer "}), 401)


async def _make_account(
    db: asyncpg.Connection, status: str, expires: datetime | None = None
) -> str:
    key = keys.generate_key()
    d = keys.digest(key)
    await db.execute(
        "INSERT INTO accounts (id, name, type, status, api_key_lookup, api_key_hash,"
        " api_key_expires_at) VALUES (gen_random_uuid(), $1, 'gateway', $2, $3, $4, $5)",
        f"acct-{status}-{d.lookup}",
        status,
        d.lookup,
        d.hash,
        expires,
    )
    return key


async def test_key_is_stored_only_as_hash(app: FastAPI, db: asyncpg.Connection) -> None:
    row = await db.fetchrow("SELECT * FROM accounts WHERE name = 'admin'")
    assert row is not None
    assert ADMIN_KEY not in [str(v) for v in row.values()]
    assert row["api_key_hash"] == keys.digest(ADMIN_KEY).hash


async def test_expired_key_is_401(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    key = await _make_account(db, "enabled", datetime.now(UTC) - timedelta(seconds=1))
    assert_problem(
        await client.get("/api/v1/whoami", headers={"Xbus-Api-Key": key}), 401, "expired"
    )


async def test_unexpired_key_works(client: httpx.AsyncClient, db: asyncpg.Connection) -> None:
    key = await _make_account(db, "enabled", datetime.now(UTC) + timedelta(hours=1))
    r = await client.get("/api/v1/whoami", headers={"Xbus-Api-Key": key})
    assert r.status_code == 200
    assert r.json()["admin"] is False


async def test_disabled_account_sees_whoami_but_is_403_elsewhere(
    client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    key = await _make_account(db, "disabled")
    r = await client.get("/api/v1/whoami", headers={"Xbus-Api-Key": key})
    assert r.status_code == 200
    assert r.json()["account"]["status"] == "disabled"
    assert_problem(
        await client.get("/api/v1/actors", headers={"Xbus-Api-Key": key}), 403, "disabled"
    )


async def test_generated_admin_key_file(settings: Settings, clean_db: None, tmp_path: Path) -> None:
    generated = settings.model_copy(update={"admin_api_key": None, "data_dir": tmp_path / "gen"})
    app = create_app(generated)
    async with app.router.lifespan_context(app):
        pass
    key_file = tmp_path / "gen" / "admin.key"
    assert key_file.exists()
    assert stat.S_IMODE(os.stat(key_file).st_mode) == 0o600
    key = key_file.read_text().strip()
    assert key.startswith("xbk_")

    # A second start keeps the same key.
    app = create_app(generated)
    async with (
        app.router.lifespan_context(app),
        httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c,
    ):
        r = await c.get("/api/v1/whoami", headers={"Authorization": f"Bearer {key}"})
        assert r.status_code == 200
        assert r.json()["admin"] is True
    assert key_file.read_text().strip() == key
