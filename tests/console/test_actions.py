"""The console's actions over plain HTTP, each checked in the database or through the API:
pipeline activate / deactivate / clone, process pause / resume / cancel / replay / ack,
retry now, account create / new key / accept / reject. Each goes through the same service
as its API route, so the API's own tests cover their rules; these check the wiring."""

from __future__ import annotations

import re

import asyncpg
import httpx

from tests.bus.conftest import ENVELOPE, Bus, chain
from tests.console.conftest import ORIGIN, csrf_of
from tests.registrations.helpers import register


async def _post(console: httpx.AsyncClient, url: str, **data: str) -> httpx.Response:
    token = csrf_of((await console.get("/console/")).text)
    return await console.post(url, data={"csrf_token": token, **data}, headers=ORIGIN)


async def test_pipeline_deactivate_activate_clone(
    console: httpx.AsyncClient, bus: Bus, db: asyncpg.Connection
) -> None:
    shop = await bus.account()
    emitter = await bus.actor(shop, "emitter")
    consumer = await bus.actor(shop, "consumer")
    pipeline = await bus.pipeline(chain(emitter["name"], ("consumer", consumer["name"])))
    url = f"/console/pipelines/{pipeline['id']}"
    status = "SELECT status FROM pipelines WHERE id = $1"

    r = await _post(console, f"{url}/status", status="inactive")
    assert r.status_code == 303
    assert await db.fetchval(status, pipeline["id"]) == "inactive"
    r = await _post(console, f"{url}/status", status="active")
    assert r.status_code == 303
    assert await db.fetchval(status, pipeline["id"]) == "active"

    r = await _post(console, f"{url}/clone", version="2")
    assert r.status_code == 303
    clone_id = r.headers["location"].rsplit("/", 1)[1]
    row = await db.fetchrow(
        "SELECT name, version, status, valid FROM pipelines WHERE id = $1", clone_id
    )
    assert dict(row) == {"name": pipeline["name"], "version": "2", "status": "draft", "valid": True}
    page = await console.get(f"/console/pipelines/{clone_id}")
    assert ">2</a>" in page.text  # both versions listed
    # A version the API would refuse is refused here, and nothing is stored.
    r = await _post(console, f"{url}/clone", version="no spaces")
    assert r.status_code == 422
    r = await _post(console, f"{url}/clone", version="2")  # taken
    assert r.status_code == 409
    assert await db.fetchval("SELECT count(*) FROM pipelines") == 2


async def test_process_controls_ack_and_retry_now(
    console: httpx.AsyncClient, bus: Bus, db: asyncpg.Connection
) -> None:
    shop = await bus.account()
    emitter = await bus.actor(shop, "emitter")
    consumer = await bus.actor(shop, "consumer")
    await bus.pipeline(chain(emitter["name"], ("consumer", consumer["name"])))
    r = await shop.http.post(f"/api/v1/actors/{emitter['name']}/output", json=ENVELOPE)
    process_id = r.json()["process_id"]
    url = f"/console/processes/{process_id}"
    status = "SELECT status FROM processes WHERE id = $1"

    # Retry now: a pending request, due at once (answered from the actor's page).
    request_id = await db.fetchval("SELECT id FROM requests WHERE process_id = $1", process_id)
    r = await _post(
        console, f"/console/requests/{request_id}/retry", back=f"/console/actors/{consumer['name']}"
    )
    assert r.status_code == 303
    assert r.headers["location"] == f"/console/actors/{consumer['name']}"

    for action, expected in (("pause", "paused"), ("resume", "running"), ("cancel", "error")):
        r = await _post(console, f"{url}/{action}")
        assert r.status_code == 303, r.text
        assert await db.fetchval(status, process_id) == expected
    # A refused transition is the API's 409, as a page; nothing changes.
    r = await _post(console, f"{url}/pause")
    assert r.status_code == 409
    assert "error" in r.text

    r = await _post(console, f"{url}/ack")
    assert r.status_code == 303
    assert await db.fetchval("SELECT result_acked FROM processes WHERE id = $1", process_id)

    r = await _post(console, f"{url}/replay")
    assert r.status_code == 303
    replay_id = r.headers["location"].rsplit("/", 1)[1]
    assert replay_id != process_id
    assert str(await db.fetchval("SELECT replay_of FROM processes WHERE id = $1", replay_id)) == (
        process_id
    )


async def test_accounts_create_new_key_accept_reject(
    console: httpx.AsyncClient, client: httpx.AsyncClient, db: asyncpg.Connection
) -> None:
    r = await _post(console, "/console/accounts", name="crm", type="gateway")
    assert r.status_code == 200
    key = re.search(r'id="api-key" readonly value="([^"]+)"', r.text)
    assert key
    whoami = await client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {key[1]}"})
    assert whoami.json()["account"]["name"] == "crm"

    account_id = whoami.json()["account"]["id"]
    r = await _post(console, f"/console/accounts/{account_id}/api-key")
    new_key = re.search(r'id="api-key" readonly value="([^"]+)"', r.text)
    assert new_key
    assert new_key[1] != key[1]
    old = await client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {key[1]}"})
    assert old.status_code == 401
    new = await client.get("/api/v1/whoami", headers={"Authorization": f"Bearer {new_key[1]}"})
    assert new.status_code == 200

    accepted, rejected = await register(client), await register(client)
    page = (await console.get("/console/accounts")).text
    assert accepted["name"] in page
    assert rejected["name"] in page
    r = await _post(console, f"/console/accounts/{accepted['id']}/accept")
    assert r.status_code == 303
    r = await _post(console, f"/console/accounts/{rejected['id']}/reject")
    assert r.status_code == 303
    state = "SELECT status, certificate IS NOT NULL FROM accounts WHERE id = $1"
    assert tuple(await db.fetchrow(state, accepted["id"])) == ("enabled", True)
    assert tuple(await db.fetchrow(state, rejected["id"])) == ("rejected", False)
    # An invalid name is the API's 422, and nothing is created.
    r = await _post(console, "/console/accounts", name="bad name!", type="gateway")
    assert r.status_code == 422
    assert await db.fetchval("SELECT count(*) FROM accounts WHERE name = 'bad name!'") == 0


async def test_pages_render(console: httpx.AsyncClient, bus: Bus) -> None:
    """Every page answers 200 on an empty bus and on one with a process (no template error)."""
    shop = await bus.account()
    emitter = await bus.actor(shop, "emitter")
    consumer = await bus.actor(
        shop, "consumer", config={"http.webhook.url": "http://127.0.0.1:9/h"}
    )
    await bus.pipeline(chain(emitter["name"], ("consumer", consumer["name"])))
    envelope = {
        "events": [
            {"type": "order.created", "encoding": "base64", "items": ["AAECAwQ="]},
            {"type": "order.created", "encoding": "text", "items": ["x" * 5000]},
        ]
    }
    r = await shop.http.post(f"/api/v1/actors/{emitter['name']}/output", json=envelope)
    process_id, envelope_id = r.json()["process_id"], r.json()["envelope_id"]
    for url in (
        "/console/",
        "/console/overview/live",
        "/console/pipelines",
        "/console/processes",
        "/console/processes?status=running&status=done&emitter=nobody&after=2026-01-01T00:00",
        f"/console/processes/{process_id}",
        f"/console/processes/{process_id}/live",
        f"/console/processes/{process_id}/log",
        f"/console/processes/{process_id}/log?after=1",
        f"/console/envelopes/{envelope_id}",
        "/console/postmortems?view=all",
        "/console/actors",
        f"/console/actors/{consumer['name']}",
        "/console/accounts",
    ):
        r = await console.get(url)
        assert r.status_code == 200, (url, r.text[:500])
    page = (await console.get(f"/console/envelopes/{envelope_id}")).text
    assert "00 01 02 03 04" in page  # binary as hex
    assert "5 bytes" in page
    assert "x" * 4096 + " …" in page  # long text cut
    log = (await console.get(f"/console/processes/{process_id}/log")).text
    assert "process started by emitter" in log
    r = await console.get("/console/processes?after=yesterday")
    assert r.status_code == 400
    assert "not a date" in r.text
