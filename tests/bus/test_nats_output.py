"""Broker.Output (`app.nats_api.broker`) on its own, against PostgreSQL: an envelope sent in
fragments is assembled row by row, checked, refused or forwarded, on a plain unit of work
(`Work`, as the NATS service runs it) exactly as on an ORM session (as it used to run)."""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from typing import Any

import asyncpg
import pytest
from fastapi import FastAPI
from xbus import xbus_pb2  # type: ignore[import-untyped, unused-ignore]

from app.envelopes.codec import EnvelopeData, EventData, envelope_to_fragments
from app.nats_api import broker, services
from app.store.connection import Unit, Work, connection_lost, driver_connection
from tests.bus.conftest import Bus, chain

pb: Any = xbus_pb2

Units = Callable[[], AbstractAsyncContextManager[Unit]]


@pytest.fixture(params=["work", "session"])
def units(request: pytest.FixtureRequest, app: FastAPI) -> Units:
    db = app.state.xbus.db
    return db.working if request.param == "work" else db.session  # type: ignore[no-any-return]


async def _output(app: FastAPI, units: Units, actor_id: str, req: Any) -> Any:
    state = app.state.xbus
    async with units() as unit:
        return await broker.output(
            unit, state.director, state.settings, state.cache, uuid.UUID(actor_id), req
        )


def _request(fragment: Any, context: tuple[uuid.UUID, str] | None = None, port: str = "") -> Any:
    req = pb.OutputRequest(envelope=fragment, output=port)
    if context is not None:
        req.context.processID = context[0].bytes
        req.context.nodeID = context[1]
    return req


@pytest.fixture
async def emitter(bus: Bus) -> dict[str, Any]:
    acct = await bus.account()
    em = await bus.actor(acct, "emitter")
    wo = await bus.actor(acct, "worker")
    co = await bus.actor(acct, "consumer")
    other = await bus.actor(acct, "emitter")
    graph = chain(em["name"], ("worker", wo["name"]), ("consumer", co["name"]), eventtypes=("a",))
    graph["nodes"][0]["actors"].append(other["name"])
    await bus.pipeline(graph)
    return {"emitter": em, "worker": wo, "other": other, "account": acct}


def _envelope() -> EnvelopeData:
    text = [f"item {n}".encode() * 50 for n in range(12)]
    binary = [bytes(range(256)) * 4 for _ in range(5)]
    return EnvelopeData(
        [EventData("a", "text", text, uuid.uuid4()), EventData("a", "text", binary, uuid.uuid4())],
        uuid.uuid4(),
    )


async def _assert_started(
    db: asyncpg.Connection, data: EnvelopeData, envelope_id: uuid.UUID, emitter_id: str
) -> None:
    """The envelope stored whole (its events, items, counts), and a process started on it."""
    env = await db.fetchrow("SELECT * FROM envelopes WHERE id = $1", envelope_id)
    assert env["status"] == "complete"
    assert env["completed_at"] is not None
    assert env["emitter_id"] == uuid.UUID(emitter_id)
    assert env["event_count"] == 2
    assert env["item_count"] == 17
    assert env["size_bytes"] == sum(len(i) for e in data.events for i in e.items)
    assert env["status_reason"] is None
    events = await db.fetch(
        "SELECT * FROM events WHERE envelope_id = $1 ORDER BY position", envelope_id
    )
    assert [(e["position"], e["type"], e["encoding"]) for e in events] == [
        (0, "a", "text"),
        (1, "a", "base64"),
    ]
    assert [(e["items_received"], e["complete"]) for e in events] == [(12, True), (5, True)]
    assert [e["size_bytes"] for e in events] == [sum(map(len, e.items)) for e in data.events]
    items = await db.fetch(
        "SELECT e.position, i.position AS n, i.data FROM items i JOIN events e "
        "ON e.id = i.event_id WHERE e.envelope_id = $1 ORDER BY 1, 2",
        envelope_id,
    )
    assert [i["data"] for i in items] == [i for e in data.events for i in e.items]
    process = await db.fetchrow(
        "SELECT status FROM processes WHERE trigger_envelope_id = $1", envelope_id
    )
    assert process is not None
    assert process["status"] == "running"


async def test_an_envelope_in_fragments_is_assembled_and_started(
    app: FastAPI, units: Units, emitter: dict[str, Any], db: asyncpg.Connection
) -> None:
    data = _envelope()
    fragments = envelope_to_fragments(data, max_fragment_size=2048)
    assert len(fragments) >= 4
    acks = [await _output(app, units, emitter["emitter"]["id"], _request(f)) for f in fragments]
    assert [a.status for a in acks] == [broker.RECEIVING] * (len(fragments) - 1) + [broker.ACCEPTED]
    envelope_id = uuid.UUID(bytes=bytes(fragments[0].id))
    await _assert_started(db, data, envelope_id, emitter["emitter"]["id"])
    # The same envelope again: it is complete, not receiving.
    again = await _output(app, units, emitter["emitter"]["id"], _request(fragments[0]))
    assert again.status == broker.ERROR
    assert "not receiving" in again.reason
    # Forwarded (no events, last): a process of its own.
    forward = pb.Envelope(id=envelope_id.bytes, last=True)
    done = await _output(app, units, emitter["emitter"]["id"], _request(forward))
    assert done.status == broker.ACCEPTED, done.reason
    assert (
        await db.fetchval(
            "SELECT count(*) FROM processes WHERE trigger_envelope_id = $1", envelope_id
        )
        == 2
    )


async def test_refusals_leave_nothing_behind(
    app: FastAPI, units: Units, emitter: dict[str, Any], db: asyncpg.Connection
) -> None:
    fragments = envelope_to_fragments(_envelope(), max_fragment_size=2048)
    envelope_id = uuid.UUID(bytes=bytes(fragments[0].id))
    first = await _output(app, units, emitter["emitter"]["id"], _request(fragments[0]))
    assert first.status == broker.RECEIVING
    # Another emitter's fragment of it.
    taken = await _output(app, units, emitter["other"]["id"], _request(fragments[1]))
    assert taken.status == broker.ERROR
    assert "belongs to another actor" in taken.reason
    # Too many items: the fragment is rolled back whole.
    state = app.state.xbus
    small = state.settings.model_copy(update={"envelope_max_items": 5})
    before = await db.fetchrow(
        "SELECT item_count, size_bytes FROM envelopes WHERE id = $1", envelope_id
    )
    with pytest.raises(broker.OutputRejected, match="would exceed 5 items"):
        async with units() as unit:
            await broker.output(
                unit,
                state.director,
                small,
                state.cache,
                uuid.UUID(emitter["emitter"]["id"]),
                _request(fragments[1]),
            )
    after = await db.fetchrow(
        "SELECT item_count, size_bytes FROM envelopes WHERE id = $1", envelope_id
    )
    assert after == before
    # A forward of an envelope the bus does not have.
    unknown = pb.Envelope(id=uuid.uuid4().bytes, last=True)
    nothing = await _output(app, units, emitter["emitter"]["id"], _request(unknown))
    assert nothing.status == broker.ERROR
    assert "no such complete envelope" in nothing.reason
    # A worker without a processing context.
    with pytest.raises(broker.OutputRejected, match="outputs need a processing context"):
        await _output(app, units, emitter["worker"]["id"], _request(fragments[0]))


async def test_a_workers_output_goes_to_its_open_request(
    app: FastAPI, units: Units, emitter: dict[str, Any], db: asyncpg.Connection
) -> None:
    acct = emitter["account"]
    r = await acct.http.post(
        f"/api/v1/actors/{emitter['emitter']['name']}/output",
        json={"events": [{"type": "a", "items": ["x"]}]},
    )
    assert r.status_code == 202, r.text
    r = await acct.http.get(f"/api/v1/actors/{emitter['worker']['name']}/requests?wait=5")
    assert r.status_code == 200, r.text
    leased = r.json()
    context = (uuid.UUID(leased["process_id"]), leased["node_id"])
    data = EnvelopeData([EventData("b", "text", [b"out"], uuid.uuid4())], uuid.uuid4())
    [fragment] = envelope_to_fragments(data)
    done = await _output(
        app, units, emitter["worker"]["id"], _request(fragment, context, port="result")
    )
    assert done.status == broker.ACCEPTED, done.reason
    envelope_id = uuid.UUID(bytes=bytes(fragment.id))
    outputs = await db.fetchval(
        "SELECT outputs FROM requests WHERE id = $1", uuid.UUID(leased["request_id"])
    )
    assert json.loads(outputs) == {"result": str(envelope_id)}
    env = await db.fetchrow("SELECT * FROM envelopes WHERE id = $1", envelope_id)
    assert (env["process_id"], env["node_id"], env["output"]) == (*context, "result")
    # No open request of that actor on another node: refused, nothing kept.
    [other] = envelope_to_fragments(
        EnvelopeData([EventData("b", "text", [b"x"], uuid.uuid4())], uuid.uuid4())
    )
    with pytest.raises(broker.OutputRejected, match="no open request"):
        await _output(app, units, emitter["worker"]["id"], _request(other, (context[0], "nope")))
    assert (
        await db.fetchval("SELECT 1 FROM envelopes WHERE id = $1", uuid.UUID(bytes=other.id))
        is None
    )


async def test_output_goes_on_after_its_connections_were_killed(
    app: FastAPI, emitter: dict[str, Any], db: asyncpg.Connection
) -> None:
    """Broker.Output as the NATS service runs it (a Work of the hot pool): a connection the
    database dropped fails its call (the client gets an error and sends again), is not
    given back, and no acknowledged envelope is lost or started twice."""
    server = services.BrokerServer(app.state.xbus)
    actor_id = emitter["emitter"]["id"]

    async def emit_one() -> Any:
        data = EnvelopeData([EventData("a", "text", [b"x"], uuid.uuid4())], uuid.uuid4())
        [fragment] = envelope_to_fragments(data)
        return await server.Output(actor_id, _request(fragment))

    for _ in range(3):  # connections in the pool
        assert (await emit_one()).status == broker.ACCEPTED

    async def outcome() -> Any:
        try:
            return (await emit_one()).status
        except Exception as exc:  # what the nrpc server answers as an error
            return "lost" if connection_lost(exc) else repr(exc)

    async def kill() -> int:
        killed: int = await db.fetchval(
            "SELECT count(pg_terminate_backend(pid, 10000)) FROM pg_stat_activity "
            "WHERE application_name = 'xbusd' AND pid <> pg_backend_pid()"
        )
        return killed

    outcomes: list[Any] = []
    for _ in range(3):  # calls in flight while their connections are killed
        calls = [asyncio.create_task(outcome()) for _ in range(10)]
        await asyncio.sleep(0.005)
        assert await kill() > 0
        outcomes += await asyncio.gather(*calls)
    after = [await outcome() for _ in range(10)]
    assert set(outcomes) <= {broker.ACCEPTED, "lost"}, outcomes
    assert after == [broker.ACCEPTED] * 10, after  # healed, no restart
    accepted = 3 + outcomes.count(broker.ACCEPTED) + 10
    started = await db.fetchval(
        "SELECT count(*) FROM processes WHERE emitter_id = $1", uuid.UUID(actor_id)
    )
    # Every acknowledged envelope started (one whose commit's answer was lost may have too),
    # none twice.
    assert accepted <= started <= accepted + outcomes.count("lost")
    assert not await db.fetchval(
        "SELECT count(*) FROM (SELECT 1 FROM processes WHERE emitter_id = $1 "
        "GROUP BY trigger_envelope_id HAVING count(*) > 1) twice",
        uuid.UUID(actor_id),
    )


async def test_an_envelope_whole_in_one_fragment_is_stored_with_its_process(
    app: FastAPI, units: Units, emitter: dict[str, Any], db: asyncpg.Connection
) -> None:
    """The usual case (python-xbus sends a small envelope as one fragment) is written as an
    HTTP emission is, envelope and process by one statement: the same rows as assembled.
    What is not new goes on to the assembly and answers as before."""
    data = _envelope()
    [fragment] = envelope_to_fragments(data, max_fragment_size=1 << 20)
    state = app.state.xbus
    sent: list[str] = []

    def log(record: Any) -> None:
        # Not asyncpg's own look at the types of a statement new to the connection.
        if "typeinfo_tree" not in record.query and "'jit'" not in record.query:
            sent.append(record.query)

    async with units() as unit:
        conn = await driver_connection(unit, begin=False)
        conn.add_query_logger(log)
        try:
            done = await broker.output(
                unit,
                state.director,
                state.settings,
                state.cache,
                uuid.UUID(emitter["emitter"]["id"]),
                _request(fragment),
            )
        finally:
            conn.remove_query_logger(log)
    assert done.status == broker.ACCEPTED, done.reason
    if isinstance(unit, Work):
        # The write alone, no transaction: it checks the ids itself (the emitter, the
        # route's pipelines and actors are cached; on a miss, read by a session of their own).
        assert len(sent) == 1, "\n---\n".join(q[:120] for q in sent)
        assert not any(q.lstrip().upper().startswith(("BEGIN", "SAVEPOINT")) for q in sent)
    envelope_id = uuid.UUID(bytes=bytes(fragment.id))
    await _assert_started(db, data, envelope_id, emitter["emitter"]["id"])
    owner = await db.fetchrow(
        "SELECT e.process_id, e.node_id, p.id AS process FROM envelopes e "
        "JOIN processes p ON p.trigger_envelope_id = e.id WHERE e.id = $1",
        envelope_id,
    )
    assert (owner["process_id"], owner["node_id"]) == (owner["process"], "emit")
    # Sent again (a retry): the assembly finds it complete.
    again = await _output(app, units, emitter["emitter"]["id"], _request(fragment))
    assert again.status == broker.ERROR
    assert "not receiving" in again.reason
    # An event id already used by another envelope: refused by the assembly, as before.
    reused = EnvelopeData([EventData("a", "text", [b"x"], data.events[0].id)], uuid.uuid4())
    [taken] = envelope_to_fragments(reused)
    with pytest.raises(asyncpg.UniqueViolationError):
        await _output(app, units, emitter["emitter"]["id"], _request(taken))
    # Whole, but of a type no pipeline takes: refused before anything is written.
    mixed = EnvelopeData(
        [
            EventData("a", "text", [b"x"], uuid.uuid4()),
            EventData("zz", "text", [b"y"], uuid.uuid4()),
        ],
        uuid.uuid4(),
    )
    [unrouted] = envelope_to_fragments(mixed)
    with pytest.raises(broker.OutputRejected, match="no active pipeline takes"):
        await _output(app, units, emitter["emitter"]["id"], _request(unrouted))
    assert await db.fetchval("SELECT 1 FROM envelopes WHERE id = $1", mixed.id) is None
