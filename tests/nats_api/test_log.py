"""Director.Log: an actor's log lines for a process."""

from __future__ import annotations

import uuid

import asyncpg
from xbus import xbus_nrpc, xbus_pb2  # type: ignore[import-untyped, unused-ignore]

from tests.bus.conftest import ENVELOPE, chain
from tests.nats_api.conftest import NatsBus


async def test_a_warning_for_a_process_changes_its_row(
    nats_bus: NatsBus, db: asyncpg.Connection
) -> None:
    """A warning decides how the process ends (a process done with warnings gets a
    postmortem), and an answer decided without the lock checks only the version of the
    process's row and the request's: a warning line is written with the process's row, a
    notice is not."""
    account = await nats_bus.nats_account(
        {"l.emitter": {"kind": "emitter"}, "l.consumer": {"kind": "consumer"}}
    )
    await nats_bus.pipeline(chain("l.emitter", ("consumer", "l.consumer")))
    actor = (await account.http.get("/api/v1/actors/l.consumer")).json()
    emitted = await account.http.post("/api/v1/actors/l.emitter/output", json=ENVELOPE)
    process_id = uuid.UUID(emitted.json()["process_id"])
    client = await nats_bus.connect(account)
    version = "SELECT xmin::text FROM processes WHERE id = $1"

    async def log(level: str, text: str) -> None:
        message = xbus_pb2.ActorLogRequest()
        message.Context.processID = process_id.bytes
        message.Context.nodeID = "consumer0"
        message.messages.add(level=xbus_pb2.LogLevel.Value(level), Text=text)
        await xbus_nrpc.DirectorClient(client.clientconn()).Log(actor["id"], message)

    before = await db.fetchval(version, process_id)
    await log("NOTICE", "working on it")
    assert await db.fetchval(version, process_id) == before
    await log("WARNING", "order 2 has no address")
    assert await db.fetchval(version, process_id) != before
    lines = await db.fetch(
        "SELECT level, text FROM log_entries WHERE process_id = $1 AND actor_id = $2",
        process_id,
        uuid.UUID(actor["id"]),
    )
    assert {(r["level"], r["text"]) for r in lines} == {
        ("notice", "working on it"),
        ("warning", "order 2 has no address"),
    }
