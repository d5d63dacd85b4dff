"""Console sign-in, sessions and CSRF, over plain HTTP: the cookie's flags, expiry and
revocation, and state-changing forms refused without this session's token or from another
origin (refused ones change nothing)."""

from __future__ import annotations

import hashlib
from typing import Any

import asyncpg
import httpx
from fastapi import FastAPI

from tests.bus.conftest import ENVELOPE, Bus, chain
from tests.conftest import ADMIN_KEY
from tests.console.conftest import BASE, ORIGIN, csrf_of, sign_in


def _cookie_header(response: httpx.Response) -> str:
    [header] = [v for k, v in response.headers.multi_items() if k == "set-cookie"]
    return header


async def test_sign_in_sets_a_session_cookie_not_the_key(
    app: FastAPI, db: asyncpg.Connection
) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        r = await c.post(
            "/console/login",
            data={"api_key": ADMIN_KEY, "next": "/console/processes"},
            headers=ORIGIN,
        )
    assert r.status_code == 303
    assert r.headers["location"] == "/console/processes"
    header = _cookie_header(r)
    parts = [p.strip().lower() for p in header.split(";")]
    assert "httponly" in parts
    assert "samesite=strict" in parts
    assert "path=/console" in parts
    assert "secure" not in parts  # plain http here
    token = header.split(";")[0].split("=", 1)[1]
    assert ADMIN_KEY not in header
    row = await db.fetchrow("SELECT token_hash, expires_at, revoked_at FROM console_sessions")
    assert row["token_hash"] == hashlib.sha256(token.encode()).hexdigest()
    assert row["revoked_at"] is None


async def test_cookie_is_secure_over_https(app: FastAPI) -> None:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="https://xbus.test") as c:
        r = await c.post(
            "/console/login",
            data={"api_key": ADMIN_KEY},
            headers={"Origin": "https://xbus.test"},
        )
    assert r.status_code == 303
    assert "secure" in [p.strip().lower() for p in _cookie_header(r).split(";")]


async def test_wrong_key_is_refused_and_stores_nothing(
    app: FastAPI, db: asyncpg.Connection
) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=BASE) as c:
        r = await c.post("/console/login", data={"api_key": "xbk_nope"}, headers=ORIGIN)
        assert r.status_code == 401
        assert "not valid" in r.text
        assert "set-cookie" not in r.headers
        # A sign-in form posted from another site is refused before the key is looked at.
        r = await c.post(
            "/console/login", data={"api_key": ADMIN_KEY}, headers={"Origin": "http://evil.test"}
        )
        assert r.status_code == 403
        assert "set-cookie" not in r.headers
    assert await db.fetchval("SELECT count(*) FROM console_sessions") == 0


async def test_pages_need_a_session(client: httpx.AsyncClient) -> None:
    r = await client.get("/console/processes?status=error")
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login?next=%2Fconsole%2Fprocesses%3Fstatus%3Derror"
    r = await client.get("/console/overview/live", headers={"HX-Request": "true"})
    assert r.headers["hx-redirect"].startswith("/console/login")
    # The API keys do not open the console: only its own session does.
    r = await client.get("/console/", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
    assert r.status_code == 303
    r = await client.get("/console")  # the router's trailing-slash redirect
    assert r.status_code == 307
    assert r.headers["location"].endswith("/console/")
    r = await client.get("/console/login")
    assert r.status_code == 200
    assert 'name="api_key"' in r.text


async def _webhook_actor(bus: Bus) -> dict[str, Any]:
    account = await bus.account()
    return await bus.actor(
        account, "consumer", config={"http.webhook.url": "http://127.0.0.1:9/hook"}
    )


async def test_forms_need_the_session_csrf_token_and_origin(
    app: FastAPI, console: httpx.AsyncClient, bus: Bus, db: asyncpg.Connection
) -> None:
    actor = await _webhook_actor(bus)
    page = await console.get(f"/console/actors/{actor['name']}")
    assert page.status_code == 200
    token = csrf_of(page.text)
    url = f"/console/actors/{actor['name']}/webhook/disable"
    state = "SELECT webhook_suspended_at FROM actors WHERE name = $1"

    for data, headers in [
        ({}, ORIGIN),  # no token
        ({"csrf_token": "not-the-token"}, ORIGIN),  # wrong token
        ({"csrf_token": token}, {"Origin": "http://evil.test"}),  # another site
        ({"csrf_token": token}, {}),  # no Origin nor Referer
    ]:
        r = await console.post(url, data=data, headers=headers)
        assert r.status_code == 403, (data, headers, r.text)
        assert await db.fetchval(state, actor["name"]) is None

    # Another session's token does not do either.
    other = await sign_in(app, ADMIN_KEY)
    other_token = csrf_of((await other.get("/console/actors")).text)
    assert other_token != token
    r = await console.post(url, data={"csrf_token": other_token}, headers=ORIGIN)
    assert r.status_code == 403
    assert await db.fetchval(state, actor["name"]) is None
    await other.aclose()

    # The right token from this origin (or a same-origin Referer) does.
    r = await console.post(url, data={"csrf_token": token}, headers=ORIGIN)
    assert r.status_code == 303, r.text
    assert await db.fetchval(state, actor["name"]) is not None
    r = await console.post(
        f"/console/actors/{actor['name']}/webhook/enable",
        data={"csrf_token": token},
        headers={"Referer": f"{BASE}/console/actors/{actor['name']}"},
    )
    assert r.status_code == 303
    assert await db.fetchval(state, actor["name"]) is None


async def test_sign_out_revokes_the_session(
    console: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    page = await console.get("/console/")
    assert page.status_code == 200
    cookie = console.cookies.get("xbus_console")
    r = await console.post(
        "/console/logout", data={"csrf_token": csrf_of(page.text)}, headers=ORIGIN
    )
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login"
    assert await db.fetchval("SELECT revoked_at FROM console_sessions") is not None
    # The old cookie, presented again, is a dead session.
    console.cookies.set("xbus_console", cookie or "", domain="xbus.test", path="/console")
    r = await console.get("/console/")
    assert r.status_code == 303
    assert r.headers["location"].startswith("/console/login")


async def test_an_expired_session_goes_back_to_sign_in(
    console: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    assert (await console.get("/console/")).status_code == 200
    await db.execute("UPDATE console_sessions SET expires_at = now() - interval '1 second'")
    r = await console.get("/console/")
    assert r.status_code == 303
    assert r.headers["location"].startswith("/console/login")


async def test_a_disabled_account_loses_its_session(
    app: FastAPI, admin: httpx.AsyncClient, bus: Bus
) -> None:
    account = await bus.account()
    client = await sign_in(app, account.key)
    assert (await client.get("/console/")).status_code == 200
    r = await admin.patch(f"/api/v1/accounts/{account.id}", json={"status": "disabled"})
    assert r.status_code == 200
    assert (await client.get("/console/")).status_code == 303
    # ... and cannot sign in again.
    r = await client.post("/console/login", data={"api_key": account.key}, headers=ORIGIN)
    assert r.status_code == 403
    await client.aclose()


async def test_an_account_sees_its_own_and_is_refused_admin_actions(
    app: FastAPI, bus: Bus, console: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    mine, theirs = await bus.account(), await bus.account()
    my_emitter = await bus.actor(mine, "emitter")
    my_consumer = await bus.actor(mine, "consumer")
    their_emitter = await bus.actor(theirs, "emitter")
    their_consumer = await bus.actor(theirs, "consumer")
    await bus.pipeline(chain(my_emitter["name"], ("consumer", my_consumer["name"])))
    await bus.pipeline(
        chain(their_emitter["name"], ("consumer", their_consumer["name"]), eventtypes=("x",))
    )
    r = await mine.http.post(f"/api/v1/actors/{my_emitter['name']}/output", json=ENVELOPE)
    assert r.status_code == 202
    my_process = r.json()["process_id"]
    envelope = {"events": [{"type": "x", "items": ["hi"]}]}
    r = await theirs.http.post(f"/api/v1/actors/{their_emitter['name']}/output", json=envelope)
    assert r.status_code == 202
    their_process = r.json()["process_id"]

    client = await sign_in(app, mine.key)
    page = await client.get("/console/processes")
    assert my_process in page.text
    assert their_process not in page.text
    assert (await client.get(f"/console/processes/{my_process}")).status_code == 200
    assert (await client.get(f"/console/processes/{their_process}")).status_code == 404
    actors = (await client.get("/console/actors")).text
    assert my_consumer["name"] in actors
    assert their_consumer["name"] not in actors
    assert (await client.get(f"/console/actors/{their_consumer['name']}")).status_code == 404
    for page_url in ("/console/pipelines", "/console/accounts"):
        assert (await client.get(page_url)).status_code == 403
    # The admin's actions are refused, with a valid token, and change nothing.
    token = csrf_of((await client.get(f"/console/processes/{my_process}")).text)
    for action in ("pause", "cancel"):
        r = await client.post(
            f"/console/processes/{my_process}/{action}", data={"csrf_token": token}, headers=ORIGIN
        )
        assert r.status_code == 403, r.text
    assert await db.fetchval("SELECT status FROM processes WHERE id = $1", my_process) == "running"
    r = await client.post(
        "/console/accounts",
        data={"csrf_token": token, "name": "sneaky", "type": "gateway"},
        headers=ORIGIN,
    )
    assert r.status_code == 403
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE name = 'sneaky'") == 0
    # The overview counts its own processes only.
    overview = (await client.get("/console/overview/live")).text
    assert 'data-figure="running">1<' in overview
    admin_overview = (await console.get("/console/overview/live")).text
    assert 'data-figure="running">2<' in admin_overview
    await client.aclose()
