"""The SSRF guard at send time: with private targets not allowed (production's default), a
webhook URL that points at a loopback or private address is refused before anything is sent,
even when it got into the config around the API (or its host's DNS answer changed)."""

from __future__ import annotations

import json
from typing import Any

import asyncpg
import pytest

from tests.bus.conftest import Bus, chain
from tests.webhooks.conftest import FAST, Receiver, emit, finished


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {**FAST, "webhook_allow_private": False}


async def test_a_loopback_url_is_refused_at_send_time(
    bus: Bus, receiver: Receiver, db: asyncpg.Connection
) -> None:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    co = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", co["name"])))
    # The receiver listens on 127.0.0.1: were the guard to let the URL through, it would
    # record the request (and the traffic stays on this machine).
    await db.execute(
        "UPDATE actors SET config = $1::jsonb WHERE id = $2::uuid",
        json.dumps({"http.webhook.url": receiver.url("/hook")}),
        co["id"],
    )
    emission = await emit(acct, em["name"])
    process = await finished(acct.http, emission["process_id"])
    assert process["status"] == "error"
    assert "refused" in process["status_reason"]
    assert "loopback" in process["status_reason"]
    assert "XBUS_WEBHOOK_ALLOW_PRIVATE" in process["status_reason"]
    assert receiver.received == []
    r = await acct.http.get(f"/api/v1/actors/{co['name']}/deliveries")
    [attempt] = r.json()["items"]
    assert attempt["outcome"] == "failure"
    assert attempt["status_code"] is None
    assert attempt["error"].startswith("refused: ")
