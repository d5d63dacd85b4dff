"""Building blocks for bus tests, all through the public HTTP API."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from tests.conftest import new_name


@dataclass
class Account:
    id: str
    name: str
    key: str
    http: httpx.AsyncClient


class Bus:
    """Creates accounts, actors and pipelines with the admin client and hands out clients
    that act as those accounts."""

    def __init__(self, app: FastAPI, admin: httpx.AsyncClient) -> None:
        self.app = app
        self.admin = admin
        self.clients: list[httpx.AsyncClient] = []

    async def account(self, name: str | None = None, type_: str = "gateway") -> Account:
        r = await self.admin.post(
            "/api/v1/accounts", json={"name": name or new_name("acct"), "type": type_}
        )
        assert r.status_code == 201, r.text
        body = r.json()
        http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app),
            base_url="http://xbus.test",
            headers={"Authorization": f"Bearer {body['api_key']}"},
        )
        self.clients.append(http)
        return Account(body["id"], body["name"], body["api_key"], http)

    async def actor(
        self,
        account: Account,
        kind: str,
        name: str | None = None,
        roles: list[str] | None = None,
        config: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        body: dict[str, Any] = {
            "name": name or new_name(kind),
            "kind": kind,
            "account_id": account.id,
        }
        if roles:
            body["roles"] = roles
        if config:
            body["config"] = config
        r = await self.admin.post("/api/v1/actors", json=body)
        assert r.status_code == 201, r.text
        result: dict[str, Any] = r.json()
        return result

    async def pipeline(
        self, graph: dict[str, Any] | str, name: str | None = None
    ) -> dict[str, Any]:
        r = await self.admin.post(
            "/api/v1/pipelines",
            json={"name": name or new_name("pipe"), "version": "1", "graph": graph},
        )
        assert r.status_code == 201, r.text
        pipeline: dict[str, Any] = r.json()
        assert pipeline["valid"], pipeline["validation_messages"]
        r = await self.admin.post(
            f"/api/v1/pipelines/{pipeline['id']}/status", json={"status": "active"}
        )
        assert r.status_code == 200, r.text
        return pipeline

    async def close(self) -> None:
        for c in self.clients:
            await c.aclose()


@pytest.fixture
async def bus(app: FastAPI, admin: httpx.AsyncClient) -> AsyncIterator[Bus]:
    b = Bus(app, admin)
    yield b
    await b.close()


def chain(
    emitter: str, *rest: tuple[str, str], eventtypes: tuple[str, ...] = ("order.created",)
) -> dict[str, Any]:
    """A linear graph: emitter -> (kind, actor name) -> ..."""
    nodes: list[dict[str, Any]] = [
        {
            "id": "emit",
            "type": "emitter",
            "actors": [emitter],
            "sourcematch": {"eventtypes": list(eventtypes)},
        }
    ]
    edges = []
    previous = "emit"
    for n, (kind, actor) in enumerate(rest):
        node_id = f"{kind}{n}"
        nodes.append({"id": node_id, "type": kind, "actors": [actor]})
        edges.append(f"{previous}->{node_id}")
        previous = node_id
    return {"nodes": nodes, "edges": edges}


ENVELOPE = {
    "events": [{"type": "order.created", "encoding": "json", "items": [{"id": 1}, {"id": 2}]}]
}


@dataclass
class Leased:
    """One process of emitter -> consumer, its request leased by the consumer."""

    account: Account
    consumer: dict[str, Any]
    process_id: uuid.UUID
    request_id: uuid.UUID
    attempt: int


async def one_leased(bus: Bus) -> Leased:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    consumer = await bus.actor(acct, "consumer")
    await bus.pipeline(chain(em["name"], ("consumer", consumer["name"])))
    r = await acct.http.post(f"/api/v1/actors/{em['name']}/output", json=ENVELOPE)
    process_id = uuid.UUID(r.json()["process_id"])
    r = await acct.http.get(f"/api/v1/actors/{consumer['name']}/requests")
    assert r.status_code == 200, r.text
    leased = r.json()
    return Leased(acct, consumer, process_id, uuid.UUID(leased["request_id"]), leased["attempt"])
