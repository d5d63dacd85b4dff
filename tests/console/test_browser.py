"""The console in a real headless Chromium (Debian's, driven by Playwright), against the
test's app served on a free port: sign in, see a pipeline's graph, follow a process to
`done` without reloading, close a failed process's postmortem with a comment, disable and
enable a webhook, and an account that sees only its own. Each page is saved as a
screenshot (see `screenshots` in conftest.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import asyncpg
import httpx

from tests.bus.conftest import ENVELOPE, Bus, chain
from tests.conftest import ADMIN_KEY


async def browser_sign_in(page: Any, url: str, key: str, start: str = "/console/") -> None:
    await page.goto(url + start)
    await page.wait_for_url("**/console/login**")
    await page.fill("input[name=api_key]", key)
    async with page.expect_navigation():
        await page.click("button[type=submit]")
    assert "/console/login" not in page.url


async def shot(page: Any, where: Path, name: str) -> None:
    await page.screenshot(path=str(where / f"{name}.png"), full_page=True)


async def _consume(account_http: httpx.AsyncClient, actor: str, status: str, text: str) -> str:
    r = await account_http.get(f"/api/v1/actors/{actor}/requests?wait=10")
    assert r.status_code == 200, r.text
    request_id: str = r.json()["request_id"]
    level = "notice" if status == "success" else "error"
    r = await account_http.post(
        f"/api/v1/requests/{request_id}/state",
        json={"status": status, "messages": [{"level": level, "text": text}]},
    )
    assert r.status_code == 200, r.text
    return request_id


async def test_admin_sees_the_graph_and_follows_a_process_to_done(
    page: Any, live_url: str, bus: Bus, screenshots: Path
) -> None:
    shop = await bus.account(name="shop")
    orders = await bus.actor(shop, "emitter", name="shop.orders")
    await bus.actor(shop, "worker", name="shop.enrich", roles=["enricher"])
    invoicing = await bus.actor(shop, "consumer", name="shop.invoicing")
    await bus.actor(shop, "consumer", name="shop.archive", roles=["archive"])
    graph = {
        "nodes": [
            {
                "id": "orders",
                "type": "emitter",
                "actors": ["shop.orders"],
                "sourcematch": {"eventtypes": ["order.created"]},
            },
            {"id": "invoicing", "type": "consumer", "actors": ["shop.invoicing"]},
            {"id": "archive", "type": "consumer", "roles": ["archive"], "rolebroadcast": True},
        ],
        "edges": ["orders->invoicing", "orders->archive"],
    }
    pipeline = await bus.pipeline(graph, name="orders")

    await page.goto(live_url + "/console/")
    await page.wait_for_url("**/console/login**")
    await shot(page, screenshots, "login")
    await browser_sign_in(page, live_url, ADMIN_KEY)

    # The pipeline, drawn: three nodes, two edges.
    await page.click("nav >> text=Pipelines")
    await page.wait_for_selector("text=orders")
    await shot(page, screenshots, "pipelines")
    await page.click(f"a[href='/console/pipelines/{pipeline['id']}']")
    await page.wait_for_selector("#graph[data-drawn='3'] canvas")
    drawn = await page.evaluate("document.querySelectorAll('#graph canvas').length")
    assert drawn >= 1
    assert await page.text_content("[data-pipeline-status]") == "active"
    await shot(page, screenshots, "pipeline")

    # An envelope over the API; its process page, open before the consumers answer.
    r = await shop.http.post(f"/api/v1/actors/{orders['name']}/output", json=ENVELOPE)
    assert r.status_code == 202, r.text
    process_id = r.json()["process_id"]
    await page.goto(f"{live_url}/console/processes/{process_id}")
    await page.wait_for_selector("#process-live[data-process-status='running']")
    await page.wait_for_selector("#graph[data-drawn='3']")
    await page.evaluate("window.notReloaded = true")
    await _consume(shop.http, invoicing["name"], "success", "invoice 1 created")
    await _consume(shop.http, "shop.archive", "success", "archived")
    await page.wait_for_selector("#process-live[data-process-status='done']", timeout=20_000)
    assert await page.evaluate("window.notReloaded === true"), "the page was reloaded"
    states = await page.evaluate(
        "JSON.parse(document.getElementById('process-live').dataset.nodeStates)"
    )
    assert states == {"orders": "done", "invoicing": "done", "archive": "done"}
    # The graph drawn at the start is kept through the live updates (hx-preserve).
    assert await page.locator("#graph[data-drawn='3'] canvas").count() >= 1
    timeline = await page.text_content(".timeline")
    assert "shop.invoicing" in timeline
    assert "attempt 1/" in timeline
    assert "invoice 1 created" in await page.text_content("table.log")
    assert '"id": 1' in await page.text_content(".envelope")
    await shot(page, screenshots, "process")

    # The list, filtered by status as `xbusctl ps --status done`.
    await page.goto(f"{live_url}/console/processes?status=done")
    assert process_id in await page.inner_html("#processes")
    await shot(page, screenshots, "processes")

    # One more, left waiting for its consumers: the overview counts it.
    r = await shop.http.post(f"/api/v1/actors/{orders['name']}/output", json=ENVELOPE)
    assert r.status_code == 202
    await page.goto(f"{live_url}/console/")
    await page.wait_for_selector("#per-minute[data-drawn='1']")
    assert await page.text_content("[data-figure='running']") == "1"
    assert await page.text_content("[data-figure='pending']") == "2"
    await shot(page, screenshots, "overview")


async def test_a_failed_process_and_its_postmortem_closed_with_a_comment(
    page: Any, live_url: str, bus: Bus, db: asyncpg.Connection, screenshots: Path
) -> None:
    shop = await bus.account()
    emitter = await bus.actor(shop, "emitter")
    consumer = await bus.actor(shop, "consumer")
    await bus.pipeline(chain(emitter["name"], ("consumer", consumer["name"])))
    r = await shop.http.post(f"/api/v1/actors/{emitter['name']}/output", json=ENVELOPE)
    process_id = r.json()["process_id"]
    await _consume(shop.http, consumer["name"], "error", "customer 42 unknown")

    await browser_sign_in(page, live_url, ADMIN_KEY, "/console/postmortems")
    card = page.locator(f"section.postmortem[data-process-id='{process_id}']")
    await card.wait_for()
    assert "customer 42 unknown" in await card.text_content()
    await shot(page, screenshots, "postmortems")
    await card.locator("textarea[name=comment]").fill("customer created by hand, replayed")
    async with page.expect_navigation():
        await card.locator("button[value=closed]").click()
    # Closed ones leave the list of open ones.
    assert await page.locator(f"section.postmortem[data-process-id='{process_id}']").count() == 0
    row = await db.fetchrow("SELECT pm_status, pm_comment FROM processes WHERE id = $1", process_id)
    assert row["pm_status"] == "closed"
    assert row["pm_comment"] == "customer created by hand, replayed"
    await page.goto(f"{live_url}/console/processes/{process_id}")
    assert await page.text_content("[data-pm-status]") == "error · closed"
    assert "by hand" in await page.text_content("[data-pm-comment]")
    await page.wait_for_selector("#graph[data-drawn='2']")
    await shot(page, screenshots, "process-error")


async def test_disable_and_enable_a_webhook(
    page: Any, live_url: str, bus: Bus, db: asyncpg.Connection, screenshots: Path
) -> None:
    shop = await bus.account()
    emitter = await bus.actor(shop, "emitter", name="shop.web-orders")
    # Nothing listens on port 9: each attempt fails to connect and is retried 10 min later.
    hook = await bus.actor(
        shop,
        "consumer",
        name="shop.crm",
        config={
            "http.webhook.url": "http://127.0.0.1:9/hook",
            "http.webhook.backoff-initial": "600",
        },
    )
    await bus.pipeline(chain(emitter["name"], ("consumer", hook["name"])))
    r = await shop.http.post(f"/api/v1/actors/{emitter['name']}/output", json=ENVELOPE)
    assert r.status_code == 202
    for _ in range(100):
        if await db.fetchval("SELECT count(*) FROM delivery_attempts"):
            break
        await asyncio.sleep(0.1)
    await browser_sign_in(page, live_url, ADMIN_KEY, "/console/actors")
    assert await page.text_content("tr[data-actor='shop.crm'] .badge.wh-active") == "active"
    await shot(page, screenshots, "actors")
    await page.click("a:text-is('shop.crm')")
    await page.wait_for_selector("[data-webhook-state='active']")
    assert "cannot connect" in await page.text_content("#webhook table")  # the failed attempt
    # Retry now: the request waiting out its backoff is due at once, and attempted again.
    async with page.expect_navigation():
        await page.click("button:text-is('Retry now')")
    await page.wait_for_selector("[data-webhook-state='active']")
    for _ in range(100):
        if await db.fetchval("SELECT count(*) FROM delivery_attempts") == 2:
            break
        await asyncio.sleep(0.1)
    await page.reload()
    assert await page.locator("#webhook table tbody tr").count() == 2
    await page.click("#webhook button:text-is('Disable')")
    await page.wait_for_selector("[data-webhook-state='disabled']")
    state = "SELECT webhook_suspended_at IS NOT NULL FROM actors WHERE id = $1"
    assert await db.fetchval(state, hook["id"]) is True
    await shot(page, screenshots, "webhook")
    await page.click("#webhook button:text-is('Enable')")
    await page.wait_for_selector("[data-webhook-state='active']")
    assert await db.fetchval(state, hook["id"]) is False


async def test_an_account_sees_only_its_own(
    page: Any, live_url: str, bus: Bus, screenshots: Path
) -> None:
    mine, theirs = await bus.account(name="shop"), await bus.account(name="warehouse")
    my_emitter = await bus.actor(mine, "emitter", name="shop.orders")
    my_consumer = await bus.actor(mine, "consumer", name="shop.invoicing")
    their_emitter = await bus.actor(theirs, "emitter", name="warehouse.stock")
    their_consumer = await bus.actor(theirs, "consumer", name="warehouse.audit")
    await bus.pipeline(chain(my_emitter["name"], ("consumer", my_consumer["name"])))
    await bus.pipeline(
        chain(their_emitter["name"], ("consumer", their_consumer["name"]), eventtypes=("x",))
    )
    r = await mine.http.post(f"/api/v1/actors/{my_emitter['name']}/output", json=ENVELOPE)
    mine_id = r.json()["process_id"]
    r = await theirs.http.post(
        f"/api/v1/actors/{their_emitter['name']}/output",
        json={"events": [{"type": "x", "items": ["hi"]}]},
    )
    theirs_id = r.json()["process_id"]

    await browser_sign_in(page, live_url, mine.key)
    nav = await page.text_content("header nav")
    assert "Pipelines" not in nav
    assert "Accounts" not in nav
    assert await page.text_content("[data-figure='running']") == "1"
    await shot(page, screenshots, "account-overview")
    await page.click("nav >> text=Processes")
    listing = await page.inner_html("#processes")
    assert mine_id in listing
    assert theirs_id not in listing
    await page.click("nav >> text=Actors")
    actors = await page.inner_html("#actors")
    assert "shop.invoicing" in actors
    assert "warehouse" not in actors
    # A page of someone else's is not found; an admin page is refused.
    response = await page.goto(f"{live_url}/console/processes/{theirs_id}")
    assert response.status == 404
    response = await page.goto(f"{live_url}/console/accounts")
    assert response.status == 403
    # Its own process: no admin controls, but the graph without others' actors.
    await page.goto(f"{live_url}/console/processes/{mine_id}")
    await page.wait_for_selector("#graph[data-drawn='2']")
    assert await page.locator("button:text-is('Cancel')").count() == 0


async def test_accounts_create_shows_the_key_once(
    page: Any, live_url: str, screenshots: Path
) -> None:
    await browser_sign_in(page, live_url, ADMIN_KEY, "/console/accounts")
    await shot(page, screenshots, "accounts")
    await page.fill("input[name=name]", "crm")
    async with page.expect_navigation():
        await page.click("button:text-is('Create')")
    key = await page.input_value("#api-key")
    assert key.startswith("xbk_")
    await shot(page, screenshots, "account-key")
    # The key works: it signs in as that account.
    await page.click("button:text-is('Sign out')")
    await page.wait_for_url("**/console/login")
    await browser_sign_in(page, live_url, key)
    assert "crm" in await page.text_content("header .who")
